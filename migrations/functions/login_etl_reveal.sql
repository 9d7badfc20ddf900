-- roles: reveal
-- profile: full
-- `login-etl reveal`'s read (src/privacy/reveal.rs): the vault entries of
-- the tokens it names (`kinds`, `tokens`), or of every token of `user_id`'s
-- rows, each with its wrapped data key, and one audit record per token,
-- written by the same statement. The reveal role holds no privilege on the
-- vault, its keys or the audit trail: no entry leaves the database without
-- its record, and the role writes no record of its own choosing. The
-- record names `caller` (the AWS principal the command says it runs as,
-- from STS) and, in `detail`, the database role that called (which the
-- database vouches for); who then decrypted what is CloudTrail's record of
-- each KMS Decrypt, the authority on that. A token the vault does not hold
-- still gets its record.
CREATE OR REPLACE FUNCTION login_etl_reveal(kinds text[], tokens text[], user_id varchar, caller text)
RETURNS TABLE(kind text, token text, key_id text, nonce bytea, ciphertext bytea, wrapped_key bytea,
              aad_version smallint, key_version smallint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    t record;
    v record;
    v_version smallint;
BEGIN
    IF login_etl_reveal.caller IS NULL OR length(login_etl_reveal.caller) = 0 THEN
        RAISE EXCEPTION 'a reveal names its caller' USING ERRCODE = '22023';
    END IF;
    FOR t IN
        SELECT m.k, m.t, NULL::smallint AS version FROM unnest(kinds, tokens) AS m(k, t)
            WHERE login_etl_reveal.user_id IS NULL
        UNION ALL
        SELECT DISTINCT x.k, x.t, x.version FROM user_logins u
            CROSS JOIN LATERAL (VALUES ('ip', u.masked_ip, u.key_version),
                                       ('device_id', u.masked_device_id, u.key_version)) AS x(k, t, version)
            WHERE login_etl_reveal.user_id IS NOT NULL AND u.user_id = login_etl_reveal.user_id AND x.t IS NOT NULL
    LOOP
        SELECT e.key_id, e.nonce, e.ciphertext, k.wrapped_key, e.aad_version, e.key_version INTO v
            FROM user_logins_pii_vault e JOIN user_logins_vault_keys k USING (key_id)
            WHERE e.kind = t.k AND e.token = t.t;
        -- The token's version, so that rotate-key re-keys the record from
        -- it; a token nothing stored knows has none, and the record keeps
        -- that it matched nothing, not the token (it may be a retired key's).
        v_version := coalesce(t.version, v.key_version);
        INSERT INTO user_logins_pii_audit (action, caller_arn, kind, token, data_key_id, key_version, detail)
            VALUES ('reveal', caller, t.k, CASE WHEN v_version IS NOT NULL THEN t.t END, v.key_id,
                    coalesce(v_version, login_etl_current_key_version()),
                    jsonb_build_object('db_role', session_user::text)
                      || CASE WHEN v_version IS NULL THEN '{"token_matched": false}'::jsonb ELSE '{}'::jsonb END);
        kind := t.k;
        token := t.t;
        key_id := v.key_id;
        nonce := v.nonce;
        ciphertext := v.ciphertext;
        wrapped_key := v.wrapped_key;
        aad_version := v.aad_version;
        key_version := v_version;
        RETURN NEXT;
    END LOOP;
END
$$;
