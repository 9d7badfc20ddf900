-- roles: ingest
-- The function's write of a batch by INSERT in one server-side function,
-- whose plans each server connection keeps.
--
-- Before it the write sent the check (login_etl_check_write) and an
-- unnamed `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO NOTHING`,
-- parsed and planned again for every batch: a named statement would keep
-- its plan, but a transaction-mode pooler (RDS Proxy, PgBouncer) may hand
-- the next transaction to another server connection, where the name does
-- not exist. A PL/pgSQL function's plans are kept by the server connection
-- that ran it, under no name the client holds, so they survive the pooler
-- (docs/performance.md, "A batch of 10 against its floor").
--
-- The caller's rights (the ingest role's INSERT on user_logins); the check
-- is login_etl_check_write, with the owner's. The same SQLSTATEs as the
-- statements it replaces (LE001, LE002 from the check; the row's own from
-- the INSERT). Returns the rows inserted (ON CONFLICT skipped the others).
--
-- It takes one array per column of the contract's list
-- (src/contract/columns.rs), filled in where this file is read
-- (`{{...}}`): a column added there is a new overload, made by the next
-- migrate (the previous release's stays until the release after). A
-- list's column (`defects`, text[]) comes as the text of its array, since
-- unnest cannot take an array of arrays, and is cast back. The twelve
-- columns of before `defects`, which 0.1.0's binaries called, were retired
-- by migrations/0025_retired.sql.
--
-- The overload 0.2.0's binaries call (the contract's thirteen columns of
-- before `user_tag`) is written out below it: a database this release
-- made (not migrated from 0.2.0) has it too, so the previous release's
-- function goes on ingesting after a rollback (docs/upgrade.md;
-- tests/test_dist.py). Its rows have no tag.
CREATE OR REPLACE FUNCTION login_etl_write(
    known bigint, key_version integer, checked_from integer, {{array_arguments}})
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted bigint;
BEGIN
    PERFORM login_etl_check_write(known, key_version, checked_from);
    -- No index named: every unique index of the partition a row lands in
    -- arbitrates (src/ingest/sink/insert.rs).
    INSERT INTO user_logins_rows ({{columns}})
    SELECT {{select_list}} FROM unnest({{array_names}}) AS r({{columns}})
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    RETURN v_inserted;
END
$$;

CREATE OR REPLACE FUNCTION login_etl_write(
    known bigint, key_version integer, checked_from integer, message_ids varchar[], user_ids varchar[],
    device_types varchar[], masked_ips varchar[], masked_device_ids varchar[], locales varchar[],
    app_versions integer[], app_version_texts varchar[], create_dates date[], sent_ats timestamptz[],
    key_versions smallint[], defectss text[], extras jsonb[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted bigint;
BEGIN
    PERFORM login_etl_check_write(known, key_version, checked_from);
    -- 0.2.0's text columns as the narrow row stores them (migrations/0028).
    INSERT INTO user_logins_rows
    SELECT n.* FROM unnest(message_ids, user_ids, device_types, masked_ips, masked_device_ids, locales,
        app_versions, app_version_texts, create_dates, sent_ats, key_versions, defectss, extras)
        AS r(message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version,
             app_version_text, create_date, sent_at, key_version, defects, extra)
    CROSS JOIN LATERAL login_etl_narrow_row(r.message_id, r.user_id, r.device_type, r.masked_ip,
        r.masked_device_id, r.locale, r.app_version, r.app_version_text, r.create_date, r.sent_at,
        r.key_version, NULL, r.defects::text[], r.extra) AS n
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    RETURN v_inserted;
END
$$;
