-- roles: all
-- Whether a drain is under way, and how many began: what forget compares
-- before and after its deletes, without a grant on the table.
CREATE OR REPLACE FUNCTION login_etl_drain_state(OUT draining boolean, OUT generation bigint)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT login_etl_relation('user_logins_drain') IS NOT NULL,
           coalesce((SELECT max(id) FROM user_logins_default_drains), 0)
$$;
