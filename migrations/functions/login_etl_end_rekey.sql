-- roles: rotate
-- profile: full
-- rotate-key's end, once its walk of the rows (src/privacy/rekey/) is done: it
-- checks that no vault entry, erasure-list entry or audit record is left
-- under the old version, ends the re-key (forget may run again) and audits
-- it with the counts of every run that took part.
CREATE OR REPLACE FUNCTION login_etl_end_rekey(caller text, seconds double precision)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
BEGIN
    SELECT * INTO v_state FROM user_logins_key_state FOR UPDATE;
    IF v_state.rekey_from IS NULL THEN
        RETURN;
    END IF;
    -- Rows of a swapped-out DEFAULT partition were out of the walk's sight
    -- (migrations/0008 keeps a swap and a switch apart; this is the check).
    IF login_etl_relation('user_logins_drain') IS NOT NULL THEN
        RAISE EXCEPTION 'a swapped-out DEFAULT partition (user_logins_drain) holds rows the re-key did not walk'
            USING ERRCODE = 'LE007',
                  HINT = 'let login-etl maintain finish moving them back, then run login-etl rotate-key again';
    END IF;
    -- Every row walked: a rotation that walked none cannot end (a scan of
    -- the table, once per rotation, beside the walk's own).
    IF EXISTS (SELECT 1 FROM user_logins WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'rows under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'vault entries under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_erased WHERE key_version < v_state.version) THEN
        RAISE EXCEPTION 'erasure-list entries under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM user_logins_pii_audit WHERE key_version < v_state.version
               AND (token IS NOT NULL OR user_key IS NOT NULL)) THEN
        RAISE EXCEPTION 'audit records under key version % remain', v_state.rekey_from
            USING ERRCODE = '55000';
    END IF;
    UPDATE user_logins_key_state SET rekey_from = NULL, changed_at = now();
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey', caller, jsonb_build_object('from_version', v_state.rekey_from,
                'to_version', v_state.version, 'rows_rekeyed', v_state.rekey_rows,
                'vault_entries_rekeyed', v_state.rekey_vault,
                'erasures_rekeyed', (SELECT count(*) FROM user_logins_erased),
                'started_at', v_state.changed_at, 'seconds_this_run', seconds));
END
$$;
