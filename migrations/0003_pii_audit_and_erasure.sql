-- profile: full
-- The vault's audit trail and the erasure list (login-etl reveal, forget,
-- audit). Applied with 0001 and 0002, idempotent. See src/privacy/reveal.rs and
-- README "Can the PII be recovered?".

-- One row per value revealed and per user erased, written in the same
-- transaction as the read or the delete: no audit row, no reveal. Append
-- only: the reveal and erase roles may INSERT (login-etl grants), nobody
-- may UPDATE or DELETE (the trigger below refuses even the owner).
CREATE TABLE IF NOT EXISTS user_logins_pii_audit(
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                    timestamptz NOT NULL DEFAULT clock_timestamp(),
    action                varchar(16) NOT NULL CHECK (action IN ('reveal', 'forget')),
    -- The caller's identity as AWS knows it (STS GetCallerIdentity), never $USER.
    caller_arn            varchar(2048) NOT NULL,
    -- reveal: what was read.
    kind                  varchar(16),
    token                 varchar(64),
    data_key_id           varchar(32),
    -- forget: a keyed hash of the user id (never the id), and what went.
    user_key              varchar(64),
    rows_deleted          bigint,
    vault_entries_deleted bigint
);

DO $$
BEGIN
    -- 0009 replaces it (a re-key may move a token or user key to the next
    -- version): not again here.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('user_logins_pii_audit')
                   AND tgname IN ('user_logins_pii_audit_append_only', 'user_logins_pii_audit_rekey_only')) THEN
        CREATE TRIGGER user_logins_pii_audit_append_only
            BEFORE UPDATE OR DELETE OR TRUNCATE ON user_logins_pii_audit
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
    END IF;
END
$$;

-- Users erased by login-etl forget, by a keyed hash of the user id (HMAC
-- under a key derived from the masking key, src/privacy/masking.rs): a message of
-- theirs that arrives later is not stored. `seq` versions the list: the
-- function keeps the list in memory and only checks, in each write, that
-- it has not grown since.
CREATE TABLE IF NOT EXISTS user_logins_erased(
    user_key  varchar(64) COLLATE "C" PRIMARY KEY,
    seq       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- Append-only too: a user taken off the list would stay skipped by warm
-- functions (the version would not change), so nobody may.
DO $$
BEGIN
    -- 0007 replaces it (a re-key may update a user key): not again here.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('user_logins_erased')
                   AND tgname IN ('user_logins_erased_append_only', 'user_logins_erased_rekey_only')) THEN
        CREATE TRIGGER user_logins_erased_append_only
            BEFORE UPDATE OR DELETE OR TRUNCATE ON user_logins_erased
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
    END IF;
END
$$;

