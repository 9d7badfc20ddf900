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
    INSERT INTO user_logins ({{columns}})
    SELECT {{select_list}} FROM unnest({{array_names}}) AS r({{columns}})
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    RETURN v_inserted;
END
$$;
