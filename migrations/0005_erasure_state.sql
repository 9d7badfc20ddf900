-- profile: full
-- What `login-etl forget` keeps between its steps, so that a run that
-- stops anywhere finishes on the next (src/privacy/reveal.rs), and the audit of its
-- start. Applied with 0001 to 0004 (and by `migrate --prepare`, which
-- leaves user_logins alone), idempotent.

-- The tokens of the rows it deleted, written by the DELETE itself.
CREATE TABLE IF NOT EXISTS user_logins_erasure_tokens(
    user_key    varchar(64) COLLATE "C" NOT NULL,
    kind        varchar(16) COLLATE "C" NOT NULL,
    token       varchar(64) COLLATE "C" NOT NULL,
    PRIMARY KEY (user_key, kind, token)
);

-- Vault entries `login-etl forget` took out of the vault while it checks
-- whether anyone else's row still uses them: it puts back those in use and
-- deletes the rest (src/privacy/reveal.rs). Keyed by the erased user's key, so a
-- forget that stopped half way finishes on its next run.
CREATE TABLE IF NOT EXISTS user_logins_pii_vault_held(
    user_key    varchar(64) COLLATE "C" NOT NULL,
    kind        varchar(16) COLLATE "C" NOT NULL,
    token       varchar(64) COLLATE "C" NOT NULL,
    key_id      varchar(32) NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (user_key, kind, token)
);

-- forget audits its start (forget_begun, in the transaction that puts the
-- user on the erasure list) and its end (forget, with the counts).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'user_logins_pii_audit'::regclass
                     AND conname = 'user_logins_pii_audit_action_check'
                     AND pg_get_constraintdef(oid) LIKE '%forget_begun%') THEN
        ALTER TABLE user_logins_pii_audit DROP CONSTRAINT IF EXISTS user_logins_pii_audit_action_check;
        ALTER TABLE user_logins_pii_audit ADD CONSTRAINT user_logins_pii_audit_action_check
            CHECK (action IN ('reveal', 'forget', 'forget_begun'));
    END IF;
END
$$;
