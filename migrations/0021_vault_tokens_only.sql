-- profile: full
-- The vault's tokens and the erasure list's user keys are tokens only (64
-- lowercase hex characters): a re-key chunk given anything else is refused
-- by the row's check. NOT VALID: existing entries are not scanned. A length
-- and a negated class, not the regex '^[0-9a-f]{64}$' (the same values
-- pass, at a fraction of the cost: see migrations/0020_tokens_only.sql);
-- a schema with the regex form gets this one.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_pii_vault'::regclass
               AND conname = 'user_logins_pii_vault_token_only'
               AND pg_get_constraintdef(oid) NOT LIKE '%octet_length%') THEN
        ALTER TABLE user_logins_pii_vault DROP CONSTRAINT user_logins_pii_vault_token_only;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_pii_vault'::regclass
                   AND conname = 'user_logins_pii_vault_token_only') THEN
        ALTER TABLE user_logins_pii_vault ADD CONSTRAINT user_logins_pii_vault_token_only
            CHECK (octet_length(token) = 64 AND token !~ '[^0-9a-f]') NOT VALID;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_erased'::regclass
               AND conname = 'user_logins_erased_key_only'
               AND pg_get_constraintdef(oid) NOT LIKE '%octet_length%') THEN
        ALTER TABLE user_logins_erased DROP CONSTRAINT user_logins_erased_key_only;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_erased'::regclass
                   AND conname = 'user_logins_erased_key_only') THEN
        ALTER TABLE user_logins_erased ADD CONSTRAINT user_logins_erased_key_only
            CHECK (octet_length(user_key) = 64 AND user_key !~ '[^0-9a-f]') NOT VALID;
    END IF;
END
$$;
