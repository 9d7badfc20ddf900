-- roles: none
-- A row inserted into the view user_logins (INSTEAD OF INSERT, made by
-- migrations/0028), as login_etl_narrow_row stores it: the previous
-- release's function, whose INSERT or COPY names user_logins, goes on
-- ingesting through the upgrade's cutover (a write waiting for its lock
-- then finds the view) and after a rollback. The caller's rights (the
-- ingest role's INSERT on user_logins_rows). A row already there is
-- skipped and not counted, as ON CONFLICT DO NOTHING would.
CREATE OR REPLACE FUNCTION login_etl_write_through()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted bigint;
BEGIN
    INSERT INTO user_logins_rows
    SELECT n.* FROM login_etl_narrow_row(NEW.message_id, NEW.user_id, NEW.device_type, NEW.masked_ip,
        NEW.masked_device_id, NEW.locale, NEW.app_version, NEW.app_version_text, NEW.create_date,
        NEW.sent_at, NEW.key_version, NEW.user_tag, NEW.defects, NEW.extra) AS n
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted = 0 THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
