-- profile: full
-- The vault's guards of 0011 (the role registry: 0011_insiders.sql), in
-- the full profile. Applied after it, idempotent.

-- An entry's last_seen never moves back and never past today (UTC),
-- whoever writes it (login_etl_vault_last_seen): the roles of versions
-- before login_etl_store_vault may still update it. The WHEN clauses keep
-- the trigger function out of every write that obeys.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'user_logins_pii_vault_seen_forward'
                   AND tgrelid = 'user_logins_pii_vault'::regclass) THEN
        CREATE TRIGGER user_logins_pii_vault_seen_forward
            BEFORE UPDATE OF last_seen ON user_logins_pii_vault FOR EACH ROW
            WHEN (NEW.last_seen < OLD.last_seen OR NEW.last_seen > (now() AT TIME ZONE 'UTC')::date)
            EXECUTE FUNCTION login_etl_vault_last_seen();
        CREATE TRIGGER user_logins_pii_vault_seen_today
            BEFORE INSERT ON user_logins_pii_vault FOR EACH ROW
            WHEN (NEW.last_seen > (now() AT TIME ZONE 'UTC')::date)
            EXECUTE FUNCTION login_etl_vault_last_seen();
    END IF;
END
$$;

-- maintain's purge finds the entries past retention through this index
-- (login_etl_purge_vault(date, integer)). On an empty vault it is made
-- here; on one with entries, `login-etl migrate` builds it online
-- (CONCURRENTLY), like user_logins_pii_vault_form1.
DO $$
BEGIN
    IF to_regclass('user_logins_pii_vault_last_seen') IS NULL
       AND NOT EXISTS (SELECT 1 FROM user_logins_pii_vault) THEN
        CREATE INDEX user_logins_pii_vault_last_seen ON user_logins_pii_vault (last_seen);
    END IF;
END
$$;
