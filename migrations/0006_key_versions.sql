-- profile: all
-- Masking-key versions (login-etl rotate-key, src/privacy/rekey/). Applied
-- with 0001 to 0005 (and by `migrate --prepare`), idempotent. The key state
-- is in every profile (the function checks its keys against it); what the
-- full profile's tables add for versions is in 0007_vault_key_versions.sql.
--
-- Every stored token carries the version of the key chain it was computed
-- under (src/privacy/masking.rs): version n is HMAC(kₙ, token of version
-- n-1). The database holds the current version; every write checks it
-- (functions/login_etl_check_write.sql), so a function that still holds an
-- older key cannot commit a row under it once a rotation has begun.

-- The current version, and the rotation under way (rekey_from set while
-- rotate-key re-keys what was stored under rekey_from).
CREATE TABLE IF NOT EXISTS user_logins_key_state(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     smallint NOT NULL DEFAULT 1 CHECK (version >= 1),
    rekey_from  smallint CHECK (rekey_from = version - 1),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- What the re-key under way has done, in the transactions that did it
    -- (so a run that was killed and a rerun add up exactly).
    rekey_rows  bigint NOT NULL DEFAULT 0,
    rekey_vault bigint NOT NULL DEFAULT 0,
    -- Check values of the current version's keys: HMAC(key chain, a fixed
    -- label), set by the first program that uses them (the function,
    -- forget, rotate-key) and compared by every later one, so that a
    -- secret replaced instead of appended to, or a forget given the wrong
    -- erasure key, is refused instead of silently writing tokens or user
    -- keys that match nothing stored.
    masking_check varchar(64) COLLATE "C",
    erasure_check varchar(64) COLLATE "C",
    -- The erasure list was written before erasure keys existed, with user
    -- keys derived from the masking key: the function keeps deriving them
    -- (and forget needs the masking key) whatever ERASURE_KEY says.
    erasure_derived boolean NOT NULL DEFAULT false
);
-- erasure_derived: an erasure list from before key versions (the full
-- profile's, migrations/0003) keeps user keys derived from the masking
-- key. A masking-only database has no list (read only where it exists).
DO $$
DECLARE
    v_derived boolean := false;
BEGIN
    IF to_regclass('user_logins_erased') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM user_logins_erased)' INTO v_derived;
    END IF;
    INSERT INTO user_logins_key_state (singleton, erasure_derived)
        VALUES (true, v_derived) ON CONFLICT DO NOTHING;
END
$$;

