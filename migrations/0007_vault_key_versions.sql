-- profile: full
-- Masking-key versions in the full profile's tables (the key state itself:
-- 0006_key_versions.sql). Applied after it, idempotent.

-- Each row's version (user_logins.key_version) is added by 0001, which
-- alone touches user_logins: this file also runs beside an old version's
-- writes (`migrate --prepare`), where the table takes no lock but a short,
-- retried one (src/table/schema/convert.rs).

-- The vault's entries carry their token's version too, and the form of
-- their associated data: 1 binds the ciphertext to its token (entries
-- written before this version), 2 to its kind and the entry's own nonce,
-- so rotate-key can re-key the token without decrypting (src/privacy/vault.rs).
-- The erasure list is re-keyed in place, one version at a time: the
-- append-only trigger lets an UPDATE through only when it changes nothing
-- but user_key and moves key_version up by one (rotate-key's), so nobody
-- takes a user off the list. The entries from before are version 1; a new
-- one names its version, and one that does not (a forget from before key
-- versions: its user key may be derived where the function's is not) gets
-- 0, which the trigger refuses.
-- Each ALTER only when it changes something: ALTER TABLE takes ACCESS
-- EXCLUSIVE even when it changes nothing, and every write reads the
-- erasure list (this file also runs beside live ingest).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('user_logins_pii_vault', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault', 'aad_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault_held', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_vault_held', 'aad_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_erased', 'key_version', 'smallint NOT NULL DEFAULT 1'),
        ('user_logins_pii_audit', 'detail', 'jsonb')) AS v(t, col, decl)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(c.t)
                       AND attname = c.col AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE %I ADD COLUMN %I %s', c.t, c.col, c.decl);
        END IF;
    END LOOP;
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'user_logins_erased'::regclass AND a.attname = 'key_version') IS DISTINCT FROM '0' THEN
        ALTER TABLE user_logins_erased ALTER COLUMN key_version SET DEFAULT 0;
    END IF;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_erased_append_only'
               AND tgrelid = to_regclass('user_logins_erased')) THEN
        DROP TRIGGER user_logins_erased_append_only ON user_logins_erased;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_erased_rekey_only'
                   AND tgrelid = to_regclass('user_logins_erased')) THEN
        CREATE TRIGGER user_logins_erased_rekey_only
            BEFORE UPDATE ON user_logins_erased
            FOR EACH ROW EXECUTE FUNCTION login_etl_erased_rekey_only();
        CREATE TRIGGER user_logins_erased_no_delete
            BEFORE DELETE OR TRUNCATE ON user_logins_erased
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
        CREATE TRIGGER user_logins_erased_current_version
            BEFORE INSERT ON user_logins_erased
            FOR EACH ROW EXECUTE FUNCTION login_etl_erased_current_version();
    END IF;
END
$$;

-- rotate-key audits its start and its end, with what it did in `detail`
-- (the column is added above); vault-upgrade (the reveal role) audits its
-- re-sealing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'user_logins_pii_audit'::regclass
                     AND conname = 'user_logins_pii_audit_action_check'
                     AND pg_get_constraintdef(oid) LIKE '%vault_upgrade%') THEN
        ALTER TABLE user_logins_pii_audit DROP CONSTRAINT IF EXISTS user_logins_pii_audit_action_check;
        ALTER TABLE user_logins_pii_audit ADD CONSTRAINT user_logins_pii_audit_action_check
            CHECK (action IN ('reveal', 'forget', 'forget_begun', 'rekey_begun', 'rekey', 'vault_upgrade'));
    END IF;
END
$$;
