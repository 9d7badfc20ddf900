-- roles: ingest
-- profile: full
-- The check of the two-argument login_etl_refuse_erased, under a name of
-- its own (the three-argument form calls it). Goes with it, in the first
-- release after 0.3.0.
CREATE OR REPLACE FUNCTION login_etl_refuse_erased_at(known bigint, key_version integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    current_version smallint := (SELECT s.version FROM login_etl_key_state() s);
BEGIN
    IF coalesce(current_version, 1) <> key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the batch was masked at version %s: reload the key and re-key the batch', coalesce(current_version, 1), key_version);
    END IF;
    IF coalesce((SELECT max(seq) FROM user_logins_erased), 0) <> known THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the erasure list changed (login-etl forget): reload it and filter the batch again';
    END IF;
END
$$;
