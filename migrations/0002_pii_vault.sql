-- profile: full
-- The PII vault (optional: used when the function runs with VAULT_KMS_KEY_ID).
-- Applied with 0001, idempotent. See src/privacy/vault.rs and README "Can the PII be
-- recovered?".

-- KMS-wrapped data keys; key_id is derived from the wrapped bytes, so a
-- second insert of the same key is a no-op.
CREATE TABLE IF NOT EXISTS user_logins_vault_keys(
    key_id      varchar(32) PRIMARY KEY,
    kms_key_id  varchar(2048) NOT NULL,
    wrapped_key bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per distinct (kind, token): the original value under AES-256-GCM,
-- with associated data binding it to its kind and token.
CREATE TABLE IF NOT EXISTS user_logins_pii_vault(
    -- COLLATE "C": tokens are hex, and byte order makes the primary key's
    -- inserts and lookups about a third cheaper than a linguistic collation.
    kind        varchar(16) COLLATE "C" NOT NULL CHECK (kind IN ('ip', 'device_id')),
    token       varchar(64) COLLATE "C" NOT NULL,
    -- The data key (user_logins_vault_keys.key_id), written in the same
    -- transaction. No FOREIGN KEY: its per-row check cost more than the
    -- encryption itself on a 10,000-record batch (benches/batch_pg.rs).
    key_id      varchar(32) NOT NULL,
    nonce       bytea NOT NULL CHECK (octet_length(nonce) = 12),
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, token)
);
