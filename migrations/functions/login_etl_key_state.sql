-- roles: all
-- The key's state, readable by every login-etl role without a grant on
-- the table.
CREATE OR REPLACE FUNCTION login_etl_key_state(OUT version smallint, OUT rekey_from smallint,
    OUT masking_check varchar, OUT erasure_check varchar, OUT erasure_derived boolean)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT version, rekey_from, masking_check, erasure_check, erasure_derived FROM user_logins_key_state
$$;
