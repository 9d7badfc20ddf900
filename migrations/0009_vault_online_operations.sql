-- profile: full
-- What lets rotate-key and forget run beside live ingest, in the full
-- profile's tables (the DEFAULT partition's drains: 0008_online_operations.sql). Applied after
-- it, idempotent.

-- The switch (login_etl_switch_key) refuses while the vault holds entries
-- of the old form, with a probe of this index instead of a scan of the
-- vault under its lock. On an empty vault it is made here, in a moment; on
-- one with entries, `login-etl migrate` builds it online (CONCURRENTLY,
-- which a transaction cannot run: src/table/schema/mod.rs).
DO $$
BEGIN
    IF to_regclass('user_logins_pii_vault_form1') IS NULL
       AND NOT EXISTS (SELECT 1 FROM user_logins_pii_vault) THEN
        CREATE INDEX user_logins_pii_vault_form1 ON user_logins_pii_vault (kind) WHERE aad_version = 1;
    END IF;
END
$$;

-- The audit trail keeps tokens (reveal) and user keys (forget): they are
-- re-keyed with everything else, so that no stored token can be computed
-- with a retired key alone. Each record names its version
-- (login_etl_current_key_version); records from before this column have
-- none, and their version is the one of their time.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'user_logins_pii_audit'::regclass
                   AND attname = 'key_version' AND NOT attisdropped) THEN
        ALTER TABLE user_logins_pii_audit ADD COLUMN key_version smallint;
    END IF;
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'user_logins_pii_audit'::regclass AND a.attname = 'key_version')
       IS DISTINCT FROM 'login_etl_current_key_version()' THEN
        ALTER TABLE user_logins_pii_audit ALTER COLUMN key_version SET DEFAULT login_etl_current_key_version();
    END IF;
END
$$;

-- Append-only still: an UPDATE gets through only when it changes nothing
-- but the token, the user key and a version that grows (the re-key's).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_pii_audit_append_only'
               AND tgrelid = to_regclass('user_logins_pii_audit')) THEN
        DROP TRIGGER user_logins_pii_audit_append_only ON user_logins_pii_audit;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_pii_audit_rekey_only'
                   AND tgrelid = to_regclass('user_logins_pii_audit')) THEN
        CREATE TRIGGER user_logins_pii_audit_rekey_only
            BEFORE UPDATE ON user_logins_pii_audit
            FOR EACH ROW EXECUTE FUNCTION login_etl_audit_rekey_only();
        CREATE TRIGGER user_logins_pii_audit_no_delete
            BEFORE DELETE OR TRUNCATE ON user_logins_pii_audit
            FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only();
    END IF;
END
$$;
