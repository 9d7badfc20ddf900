-- roles: ingest
-- The write check, in every write transaction of the function (inside
-- login_etl_write, or as a statement of its own beside a COPY), after its
-- ROW EXCLUSIVE lock on user_logins: LE002 when the key version is not
-- the batch's (a rotation began: the function reloads its keys and re-keys
-- the batch), LE001 when the erasure list changed since the version
-- `known` the batch was filtered with, and LE001 while rotate-key moves
-- the list from an older version than the one the batch's users were
-- looked up at (`checked_from`). It reads the key state once: the
-- three-argument login_etl_refuse_erased it replaces read it twice, which
-- made the check a fifth of a batch of 10's time above its floor
-- (docs/performance.md). Owner's rights (it reads the key state and the
-- erasure list's versions, and says nothing but whether the write may
-- go).
CREATE OR REPLACE FUNCTION login_etl_check_write(known bigint, key_version integer, checked_from integer)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_state record;
BEGIN
    SELECT coalesce(k.version, 1) AS version, k.rekey_from,
           coalesce((SELECT max(e.seq) FROM user_logins_erased e), 0) AS listed
        INTO v_state FROM (SELECT 1) AS one LEFT JOIN user_logins_key_state k ON true;
    IF v_state.version <> key_version THEN
        RAISE EXCEPTION USING ERRCODE = 'LE002',
            MESSAGE = format('the masking key is at version %s in the database, the batch was masked at version %s: reload the key and re-key the batch', v_state.version, key_version);
    END IF;
    IF v_state.listed <> known THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = 'the erasure list changed (login-etl forget): reload it and filter the batch again';
    END IF;
    IF v_state.rekey_from IS NOT NULL AND checked_from > v_state.rekey_from
       AND EXISTS (SELECT 1 FROM user_logins_erased e WHERE e.key_version < checked_from) THEN
        RAISE EXCEPTION USING ERRCODE = 'LE001',
            MESSAGE = format('rotate-key is moving the erasure list from key version %s and this write checked users at version %s only: reload the list (a function from before this check: deploy the current version)', v_state.rekey_from, checked_from);
    END IF;
END
$$;
