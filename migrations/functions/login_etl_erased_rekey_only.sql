-- roles: none
-- profile: full
-- The erasure list is append-only: an UPDATE gets through only when it
-- changes nothing but user_key and moves key_version up by one (rotate-key's),
-- so nobody takes a user off the list.
CREATE OR REPLACE FUNCTION login_etl_erased_rekey_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = OLD.seq AND NEW.erased_at = OLD.erased_at
       AND NEW.key_version = OLD.key_version + 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only (a re-key may only move a user key to the next version)', TG_TABLE_NAME;
END
$$;
