-- roles: none
-- A row inserted into the view user_logins (INSTEAD OF INSERT, made by
-- migrations/0028), as login_etl_narrow_row stores it: the previous
-- release's function, whose INSERT or COPY names user_logins, goes on
-- ingesting through the upgrade's cutover (a write waiting for its lock
-- then finds the view), and a writer granted INSERT on the table before
-- the narrow row (the grant moved to the view). The owner's rights: INSERT
-- on the view is what lets a role store a login this way. A row already
-- there is skipped and not counted, as ON CONFLICT DO NOTHING would. A
-- row without a message id (an upstream writer's) gets one, as the
-- upgrade gave the rows before it (src/table/schema/narrow.rs).
CREATE OR REPLACE FUNCTION login_etl_write_through()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_inserted bigint;
BEGIN
    INSERT INTO user_logins_rows
    SELECT n.* FROM login_etl_narrow_row(coalesce(NEW.message_id, 'upstream-' || gen_random_uuid()), NEW.user_id, NEW.device_type, NEW.masked_ip,
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
