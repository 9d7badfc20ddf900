-- roles: ingest
-- A batch's INSERT transaction as one statement, the only one of its
-- transaction: the extended protocol's Sync commits it (src/ingest/sink/
-- insert.rs). Its BEGIN's statements (src/ingest/sink/tx.rs, begin_sql),
-- the write (login_etl_write) and the xid floor COMMIT_SQL reads after
-- COMMIT, without a statement or a ReadyForQuery of their own: each
-- ReadyForQuery is a flush of the server's output and a wake-up of the
-- function, which made a batch of 10 1.5x its floor's time (docs/history/
-- performance-batch-of-10.md). A write with vault entries, or recounting
-- after a lost reply, keeps the framed transaction (login_etl_write).
--
-- What BEGIN pinned, it pins or refuses:
-- * READ COMMITTED: the write check must see what committed while the
--   LOCK waited (a `login-etl forget`). A transaction at another level (a
--   default_transaction_isolation the role stored after the function
--   connected) is refused with LE016 before anything is read; the
--   function writes that connection's batches framed from then on, and
--   logs that `login-etl doctor` names the setting and its fix.
-- * lock_timeout and a durable COMMIT, as SET LOCAL would: they last to
--   the end of the transaction, past this function (no SET clause of its
--   own names them).
-- * the check after the lock on user_logins_rows, for forget's order:
--   the INSERT's own lock (ROW EXCLUSIVE on the parent, taken before it
--   writes a row), so the check follows the INSERT. A check that refuses
--   rolls the rows back with the statement; a LOCK statement before the
--   INSERT cost a batch of 10 5 % (docs/history/performance-batch-of-10.md).
-- * the search path: its own, pinned like every owner's function's; the
--   caller names the function and every type by schema.
-- A statement's own statement_timeout cannot be set from inside it: this
-- transaction's is the role's, if the role stores one. Its lock waits
-- are bounded by the lock_timeout set here, and its rows are few: a range
-- of a COPY's size (200 rows or more) is written framed, whose
-- statement_timeout bounds it.
--
-- Returns {the rows inserted, the xid floor}: one value, not a row (a row
-- type's result goes through a function scan and a tuplestore). The floor
-- is read after the INSERT, inside the transaction, and kept past this
-- transaction's own xid: a row with a newer xmin was written by a
-- transaction that took its xid after it (src/ingest/sink/tx.rs,
-- XidFloor). The caller's rights, as login_etl_write's.
CREATE OR REPLACE FUNCTION login_etl_write_tx(
    bound_ms integer, known bigint, key_version integer, checked_from integer, {{array_arguments}})
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'LE016',
            MESSAGE = format('the write ran at isolation level %s, and it needs READ COMMITTED: a default_transaction_isolation stored for the role since it connected (login-etl doctor names it and its fix)', current_setting('transaction_isolation'));
    END IF;
    PERFORM set_config('lock_timeout', bound_ms::text, true);
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    -- No index named: every unique index of the partition a row lands in
    -- arbitrates (src/ingest/sink/insert.rs).
    INSERT INTO user_logins_rows ({{columns}})
    SELECT {{select_list}} FROM unnest({{array_names}}) AS r({{columns}})
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    PERFORM login_etl_check_write(known, key_version, checked_from);
    RETURN ARRAY[v_inserted,
                 greatest(pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                          pg_current_xact_id_if_assigned()::text::bigint + 1)];
END
$$;
