-- roles: none
-- profile: full
-- Refuses every UPDATE, DELETE or TRUNCATE of the table it guards (the
-- audit trail, the erasure list, the record of what rotations re-keyed):
-- not even the owner may.
CREATE OR REPLACE FUNCTION login_etl_audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
