-- roles: rotate
-- profile: full
-- rotate-key's switch (src/privacy/rekey/switch.rs), run as the owner so
-- the rotate role needs no table lock of its own. In one moment
-- (the caller's lock_timeout bounds every wait), and only what cannot
-- happen apart from it: it waits for the forget steps in flight (their
-- key_version lock) and the write transactions in flight (SHARE ROW
-- EXCLUSIVE on the parent only), refuses while an erasure is unfinished
-- (two small tables) or the vault holds entries of the old form (a probe
-- of the partial index user_logins_pii_vault_form1, which `login-etl
-- migrate` builds online), sets the version and audits the start. Every
-- write after it is checked against the new version, so no row is stored
-- under the old key again. The erasure list is re-keyed after it, in
-- chunks (login_etl_rekey_erased_chunk), while writers check a user at
-- both versions (src/ingest/sink: the list's rekey_from): nothing that scales
-- with the vault or the list holds the lock (login_etl_begin_rekey, kept
-- for rotate-key binaries from before, did both under it).
CREATE OR REPLACE FUNCTION login_etl_switch_key(to_version smallint, caller text,
    masking_check text, erasure_check text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
    v_unfinished bigint;
    v_form1 boolean;
    v_seqscan text := current_setting('enable_seqscan');
BEGIN
    PERFORM login_etl_hold_lock('key_version', true);  -- forget's (src/privacy/forget)
    LOCK TABLE ONLY user_logins_rows IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_state FROM user_logins_key_state FOR UPDATE;
    IF v_state.rekey_from IS NOT NULL OR v_state.version <> to_version - 1 THEN
        RAISE EXCEPTION 'the key is at version % (re-keying: %), not % ready to move to %',
            v_state.version, v_state.rekey_from IS NOT NULL, to_version - 1, to_version
            USING ERRCODE = '55000';
    END IF;
    -- Only a rotation the tables' owner armed, with these keys' check values.
    PERFORM login_etl_armed(to_version, login_etl_switch_key.masking_check, login_etl_switch_key.erasure_check);
    IF login_etl_relation('user_logins_drain') IS NOT NULL THEN
        RAISE EXCEPTION 'maintain is moving a swapped-out DEFAULT partition''s rows back into user_logins'
            USING ERRCODE = 'LE007',
                  HINT = 'its rows are out of the re-key''s sight until then: let login-etl maintain finish, then rotate-key';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = login_etl_relation('user_logins_pii_vault_form1')
                   AND indisvalid AND indisready) THEN
        RAISE EXCEPTION 'the vault''s index of entries of the old form (user_logins_pii_vault_form1) is missing'
            USING ERRCODE = 'LE006',
                  HINT = 'run login-etl migrate (it builds the index online), then rotate-key';
    END IF;
    -- A probe of the partial index, whatever the statistics say (a scan
    -- of the vault here would hold every write up).
    PERFORM set_config('enable_seqscan', 'off', true);
    v_form1 := EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE aad_version = 1);
    PERFORM set_config('enable_seqscan', v_seqscan, true);
    IF v_form1 THEN
        RAISE EXCEPTION 'vault entries of the form bound to their token remain'
            USING ERRCODE = 'LE005',
                  HINT = 'run login-etl vault-upgrade as the reveal role, then rotate-key';
    END IF;
    SELECT count(DISTINCT user_key) INTO v_unfinished FROM (
        SELECT user_key FROM user_logins_erasure_tokens UNION ALL SELECT user_key FROM user_logins_pii_vault_held) u;
    IF v_unfinished > 0 THEN
        RAISE EXCEPTION '% erasures (login-etl forget) are unfinished', v_unfinished
            USING ERRCODE = 'LE003',
                  HINT = 'run login-etl forget again for those users (login-etl audit shows their forget_begun records without a forget), then rotate-key';
    END IF;
    UPDATE user_logins_key_state SET version = to_version, rekey_from = to_version - 1,
        changed_at = now(), rekey_rows = 0, rekey_vault = 0,
        masking_check = login_etl_switch_key.masking_check,
        erasure_check = login_etl_switch_key.erasure_check;
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey_begun', caller, jsonb_build_object('from_version', to_version - 1,
                'to_version', to_version));
END
$$;
