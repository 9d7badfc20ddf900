-- profile: full
-- `forget`'s writes through the owner's functions (login_etl_forget_lock,
-- login_etl_forget_begin, login_etl_forget_rows): the erase role loses
-- INSERT on the erasure list and on the erased users' tokens, and the
-- table-level DELETE on user_logins (which also let it LOCK the table in
-- ACCESS EXCLUSIVE mode). A user's rows are deleted only once the
-- transaction that listed them (and wrote forget_begun) is committed:
-- begun_in, that transaction's id, checked with pg_xact_status. Entries
-- listed before this migration count as committed.
-- Only when missing: each ALTER TABLE takes ACCESS EXCLUSIVE on the list
-- every write reads, even one that changes nothing (tests/it/stalls.rs).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'user_logins_erased'::regclass
                   AND attname = 'begun_in' AND NOT attisdropped) THEN
        ALTER TABLE user_logins_erased ADD COLUMN begun_in xid8;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                   WHERE d.adrelid = 'user_logins_erased'::regclass AND a.attname = 'begun_in') THEN
        ALTER TABLE user_logins_erased ALTER COLUMN begun_in SET DEFAULT pg_current_xact_id();
    END IF;
END
$$;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT g.role_name FROM user_logins_roles g JOIN pg_roles p ON p.rolname = g.role_name
             WHERE g.kind = 'erase' LOOP
        EXECUTE format('REVOKE DELETE ON user_logins FROM %I', r.role_name);
        EXECUTE format('REVOKE INSERT ON user_logins_erased FROM %I', r.role_name);
        EXECUTE format('REVOKE INSERT (user_key, key_version) ON user_logins_erased FROM %I', r.role_name);
        EXECUTE format('REVOKE INSERT ON user_logins_erasure_tokens FROM %I', r.role_name);
        EXECUTE format('REVOKE INSERT (user_key, kind, token) ON user_logins_erasure_tokens FROM %I', r.role_name);
    END LOOP;
END
$$;
