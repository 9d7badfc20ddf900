-- roles: none
-- profile: full
-- Append-only still: an UPDATE gets through only when it changes nothing
-- but the token, the user key and a version that grows (the re-key's).
CREATE OR REPLACE FUNCTION login_etl_audit_rekey_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.action = OLD.action AND NEW.caller_arn = OLD.caller_arn
       AND NEW.kind IS NOT DISTINCT FROM OLD.kind AND NEW.data_key_id IS NOT DISTINCT FROM OLD.data_key_id
       AND NEW.rows_deleted IS NOT DISTINCT FROM OLD.rows_deleted
       AND NEW.vault_entries_deleted IS NOT DISTINCT FROM OLD.vault_entries_deleted
       AND NEW.detail IS NOT DISTINCT FROM OLD.detail
       AND NEW.key_version > coalesce(OLD.key_version, 0) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only (a re-key may only move a token or user key to a newer version)', TG_TABLE_NAME;
END
$$;
