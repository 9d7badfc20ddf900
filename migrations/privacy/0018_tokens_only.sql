-- The vault's tokens and the erasure list's user keys are tokens only (64
-- lowercase hex characters): a re-key chunk given anything else is refused
-- by the row's check. NOT VALID: existing entries are not scanned.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_pii_vault'::regclass
                   AND conname = 'user_logins_pii_vault_token_only') THEN
        ALTER TABLE user_logins_pii_vault ADD CONSTRAINT user_logins_pii_vault_token_only
            CHECK (token ~ '^[0-9a-f]{64}$') NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'user_logins_erased'::regclass
                   AND conname = 'user_logins_erased_key_only') THEN
        ALTER TABLE user_logins_erased ADD CONSTRAINT user_logins_erased_key_only
            CHECK (user_key ~ '^[0-9a-f]{64}$') NOT VALID;
    END IF;
END
$$;
