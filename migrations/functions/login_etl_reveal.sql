-- roles: reveal
-- profile: full
-- The second step of `login-etl reveal` (src/privacy/reveal.rs): the vault
-- entries of a ticket login_etl_reveal_request made, each with its wrapped
-- data key, in the ticket's order (no entry: NULLs). Refused (LE011) unless
-- the ticket is the calling database role's, unused, at most ten minutes
-- old, and its transaction, with the audit records, is committed: the
-- caller's current transaction never reads what it audited itself, so no
-- ROLLBACK or SAVEPOINT takes a record back after the entries left. The
-- reveal role holds no privilege on the vault, its keys, the tickets or
-- the audit trail; who then decrypted what is CloudTrail's record of each
-- KMS Decrypt.
CREATE OR REPLACE FUNCTION login_etl_reveal(ticket bigint)
RETURNS TABLE(kind text, token text, key_id text, nonce bytea, ciphertext bytea, wrapped_key bytea,
              aad_version smallint, key_version smallint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_t record;
BEGIN
    SELECT r.* INTO v_t FROM user_logins_reveal_tickets r WHERE r.id = ticket FOR UPDATE;
    IF NOT FOUND OR v_t.requested_by <> session_user THEN
        RAISE EXCEPTION USING ERRCODE = 'LE011',
            MESSAGE = format('reveal ticket %s is not one this role requested', ticket);
    END IF;
    IF pg_xact_status(v_t.requested_in) IS DISTINCT FROM 'committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'LE011',
            MESSAGE = format('the audit records of reveal ticket %s are not committed: request it in a transaction of its own, commit, then read it', ticket);
    END IF;
    IF v_t.used_at IS NOT NULL OR v_t.requested_at < now() - interval '10 minutes' THEN
        RAISE EXCEPTION USING ERRCODE = 'LE011',
            MESSAGE = format('reveal ticket %s was used already, or is older than ten minutes: request another', ticket);
    END IF;
    UPDATE user_logins_reveal_tickets SET used_at = now() WHERE id = ticket;
    RETURN QUERY
        SELECT m.k, m.t, e.key_id::text, e.nonce, e.ciphertext, k.wrapped_key, e.aad_version, coalesce(m.v, e.key_version)
        FROM unnest(v_t.kinds, v_t.tokens, v_t.versions) WITH ORDINALITY AS m(k, t, v, n)
        LEFT JOIN user_logins_pii_vault e ON e.kind = m.k AND e.token = m.t
        LEFT JOIN user_logins_vault_keys k ON k.key_id = e.key_id
        ORDER BY m.n;
END
$$;
