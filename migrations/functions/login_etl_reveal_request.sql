-- roles: reveal
-- profile: full
-- The first step of `login-etl reveal` (src/privacy/reveal.rs): one audit
-- record per token it names (`kinds`, `tokens`, or every token of
-- `user_id`'s rows) and a ticket listing them (user_logins_reveal_tickets),
-- written in the caller's transaction; returns the ticket. Nothing is read
-- from the vault here: login_etl_reveal hands the entries out only in a
-- later transaction, once this one has committed, so a reveal that rolls
-- back its records reveals nothing. The record names `caller` (the AWS
-- principal the command says it runs as, from STS) and, in `detail`, the
-- database role that asked (which the database vouches for) and the
-- ticket. A token the vault does not hold still gets its record.
CREATE OR REPLACE FUNCTION login_etl_reveal_request(kinds text[], tokens text[], user_id varchar, caller text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    t record;
    v record;
    v_version smallint;
    v_ticket bigint;
    v_kinds text[] := '{}';
    v_tokens text[] := '{}';
    v_versions smallint[] := '{}';
BEGIN
    IF login_etl_reveal_request.caller IS NULL OR length(login_etl_reveal_request.caller) = 0 THEN
        RAISE EXCEPTION 'a reveal names its caller' USING ERRCODE = '22023';
    END IF;
    INSERT INTO user_logins_reveal_tickets (kinds, tokens, versions) VALUES ('{}', '{}', '{}')
        RETURNING id INTO v_ticket;
    FOR t IN
        SELECT m.k, m.t, NULL::smallint AS version FROM unnest(kinds, tokens) AS m(k, t)
            WHERE login_etl_reveal_request.user_id IS NULL
        UNION ALL
        SELECT DISTINCT x.k, x.t, x.version FROM user_logins u
            CROSS JOIN LATERAL (VALUES ('ip', u.masked_ip, u.key_version),
                                       ('device_id', u.masked_device_id, u.key_version)) AS x(k, t, version)
            WHERE login_etl_reveal_request.user_id IS NOT NULL AND u.user_id = login_etl_reveal_request.user_id
              AND x.t IS NOT NULL
    LOOP
        SELECT e.key_id, e.key_version INTO v
            FROM user_logins_pii_vault e WHERE e.kind = t.k AND e.token = t.t;
        -- The token's version, so that rotate-key re-keys the record from
        -- it; a token nothing stored knows has none, and the record keeps
        -- that it matched nothing, not the token (it may be a retired key's).
        v_version := coalesce(t.version, v.key_version);
        INSERT INTO user_logins_pii_audit (action, caller_arn, kind, token, data_key_id, key_version, detail)
            VALUES ('reveal', caller, t.k, CASE WHEN v_version IS NOT NULL THEN t.t END, v.key_id,
                    coalesce(v_version, login_etl_current_key_version()),
                    jsonb_build_object('db_role', session_user::text, 'ticket', v_ticket)
                      || CASE WHEN v_version IS NULL THEN '{"token_matched": false}'::jsonb ELSE '{}'::jsonb END);
        v_kinds := v_kinds || t.k::text;
        v_tokens := v_tokens || t.t::text;
        v_versions := v_versions || v_version;
    END LOOP;
    UPDATE user_logins_reveal_tickets SET kinds = v_kinds, tokens = v_tokens, versions = v_versions
        WHERE id = v_ticket;
    RETURN v_ticket;
END
$$;
