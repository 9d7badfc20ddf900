-- roles: all
-- The key version an audit record is written under (the default of
-- user_logins_pii_audit.key_version, migrations/0009): every role that
-- writes audit records calls it.
CREATE OR REPLACE FUNCTION login_etl_current_key_version() RETURNS smallint
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT coalesce((SELECT version FROM user_logins_key_state), 1::smallint)
$$;
