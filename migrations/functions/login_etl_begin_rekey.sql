-- roles: rotate
-- profile: full
-- The switch of rotate-key binaries from before login_etl_switch_key (kept
-- for them until a migration retires it), run as the owner so the rotate
-- role needs no table lock of its own. In one moment (the caller's lock_timeout
-- bounds every wait): it waits for the forget steps in flight (their
-- key_version lock) and the write transactions in flight (SHARE ROW
-- EXCLUSIVE on the parent only), refuses while an erasure is unfinished,
-- moves the erasure list to the next version with the user keys the caller
-- computed (old_keys[i] becomes new_keys[i]; all of them, or nothing), sets
-- the version, and audits the start. Every write after it is checked
-- against the new version, so no row is stored under the old key again.
CREATE OR REPLACE FUNCTION login_etl_begin_rekey(to_version smallint, old_keys text[], new_keys text[], caller text,
    masking_check text, erasure_check text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_state user_logins_key_state%ROWTYPE;
    v_moved bigint;
    v_unfinished bigint;
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
    PERFORM login_etl_armed(to_version, login_etl_begin_rekey.masking_check, login_etl_begin_rekey.erasure_check);
    SELECT count(DISTINCT user_key) INTO v_unfinished FROM (
        SELECT user_key FROM user_logins_erasure_tokens UNION ALL SELECT user_key FROM user_logins_pii_vault_held) u;
    IF EXISTS (SELECT 1 FROM user_logins_pii_vault WHERE aad_version = 1) THEN
        RAISE EXCEPTION 'vault entries of the form bound to their token remain'
            USING ERRCODE = 'LE005',
                  HINT = 'run login-etl vault-upgrade as the reveal role, then rotate-key';
    END IF;
    IF v_unfinished > 0 THEN
        RAISE EXCEPTION '% erasures (login-etl forget) are unfinished', v_unfinished
            USING ERRCODE = 'LE003',
                  HINT = 'run login-etl forget again for those users (login-etl audit shows their forget_begun records without a forget), then rotate-key';
    END IF;
    UPDATE user_logins_erased e SET user_key = m.new_key, key_version = to_version
        FROM unnest(old_keys, new_keys) AS m(old_key, new_key)
        WHERE e.user_key = m.old_key AND e.key_version = to_version - 1;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM user_logins_erased WHERE key_version <> to_version) THEN
        RAISE EXCEPTION 'the erasure list changed while the new user keys were computed'
            USING ERRCODE = '40001';
    END IF;
    UPDATE user_logins_key_state SET version = to_version, rekey_from = to_version - 1,
        changed_at = now(), rekey_rows = 0, rekey_vault = 0,
        masking_check = login_etl_begin_rekey.masking_check,
        erasure_check = login_etl_begin_rekey.erasure_check;
    INSERT INTO user_logins_pii_audit (action, caller_arn, detail)
        VALUES ('rekey_begun', caller, jsonb_build_object('from_version', to_version - 1,
                'to_version', to_version, 'erasures_rekeyed', v_moved));
END
$$;
