-- roles: none
-- profile: full
-- A user key enters the list at the database's key version only: a
-- `forget` from before key versions (its keys are of version 1) is refused
-- once a rotation has begun, instead of listing a key nothing matches.
CREATE OR REPLACE FUNCTION login_etl_erased_current_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_version smallint := coalesce((SELECT s.version FROM login_etl_key_state() s), 1);
BEGIN
    IF NEW.key_version = 0 THEN
        RAISE EXCEPTION 'this login-etl forget predates key versions: run the current one (its user key could match nothing the function computes)'
            USING ERRCODE = 'LE001';
    END IF;
    IF NEW.key_version <> v_version THEN
        RAISE EXCEPTION 'a user key of masking-key version % cannot join the erasure list at version %: this login-etl forget predates key versions; run the current one', NEW.key_version, v_version
            USING ERRCODE = 'LE001';
    END IF;
    RETURN NEW;
END
$$;
