-- roles: ingest
-- profile: full
-- (Called by the three-argument login_etl_refuse_erased; goes with it, in
-- the first release after 0.3.0.)
-- Whether the erasure list holds a key older than `v` (the writer's role
-- reads user_key and seq only; this tells nothing else).
CREATE OR REPLACE FUNCTION login_etl_erased_below(v smallint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.key_version < v)
$$;
