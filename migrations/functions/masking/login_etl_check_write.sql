-- roles: ingest
-- login_etl_check_write in the masking-only profile (the full profile's:
-- ../login_etl_check_write.sql, made in its place by `migrate --profile
-- full`): the same signature, codes and messages, without an erasure list
-- to check. LE002 when the key version is not the batch's (a rotation
-- began); LE001 when the batch was filtered against an erasure list
-- (`known` > 0) this database does not keep, which only a function of the
-- full profile beside a database moved back could send.
CREATE OR REPLACE FUNCTION login_etl_check_write(known bigint, key_version integer, checked_from integer)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_version integer := coalesce((SELECT k.version FROM user_logins_key_state k), 1);
BEGIN
    IF v_version <> key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the batch was masked at version %s: reload the key and re-key the batch', v_version, key_version);
    END IF;
    IF known <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the erasure list changed (this database keeps none: the masking-only profile): reload it and filter the batch again';
    END IF;
END
$$;
