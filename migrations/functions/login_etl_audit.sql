-- roles: erase, upgrade
-- profile: full
-- The audit records a role writes of its own work, and only those: `forget`
-- its start and end (the erase role), `vault-upgrade` its re-sealing (the
-- upgrade role), each kind checked against the caller's registered kind
-- (user_logins_roles). The roles hold no INSERT on the audit trail, so a
-- stolen credential cannot write a record of another kind (a reveal that
-- did not happen, another operator's erasure). `detail` gets the database
-- role that called, which the database vouches for.
CREATE OR REPLACE FUNCTION login_etl_audit(action text, caller text, user_key text, rows_deleted bigint,
    vault_entries_deleted bigint, detail jsonb)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_kind text := (SELECT r.kind FROM user_logins_roles r WHERE r.role_name = session_user);
    v_id bigint;
BEGIN
    IF NOT (v_kind = 'erase' AND action IN ('forget_begun', 'forget')
            OR v_kind = 'upgrade' AND action = 'vault_upgrade') THEN
        RAISE EXCEPTION 'the role % (registered as %) may not write audit records of the kind %',
            session_user, coalesce(v_kind, 'nothing'), action
            USING ERRCODE = '42501',
                  HINT = 'run the role''s login-etl grants again as the tables'' owner: it registers the role''s kind';
    END IF;
    IF caller IS NULL OR length(caller) = 0 THEN
        RAISE EXCEPTION 'an audit record names its caller' USING ERRCODE = '22023';
    END IF;
    INSERT INTO user_logins_pii_audit (action, caller_arn, user_key, rows_deleted, vault_entries_deleted, detail)
        VALUES (login_etl_audit.action, caller, login_etl_audit.user_key, login_etl_audit.rows_deleted,
                login_etl_audit.vault_entries_deleted,
                coalesce(login_etl_audit.detail, '{}'::jsonb) || jsonb_build_object('db_role', session_user::text))
        RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
