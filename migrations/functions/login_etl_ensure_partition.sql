-- roles: maintain
-- Makes the partition that holds `for_day` unless one does: the granularity's
-- period, clipped so that it never overlaps a partition that covers part
-- of it. Rows of that period waiting in the DEFAULT partition move into
-- it, in the same transaction. The new table is attached, not created as
-- PARTITION OF: ATTACH takes SHARE UPDATE EXCLUSIVE on user_logins, which
-- ingest's ROW EXCLUSIVE does not wait for (CREATE ... PARTITION OF takes
-- ACCESS EXCLUSIVE). Returns the partition made and the rows moved; no row
-- when `for_day` was covered already. Runs as the table's owner, for the
-- maintain role (EXECUTE only); serialized with itself and migrate by the
-- migration's lock (user_logins_locks), so concurrent runs are safe.
CREATE OR REPLACE FUNCTION login_etl_ensure_partition(for_day date)
RETURNS TABLE(created text, moved bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_unit text;
    v_lo date;
    v_hi date;
    v_name text;
    v_moved bigint := 0;
BEGIN
    PERFORM login_etl_hold_lock('migration', true);
    IF EXISTS (SELECT 1 FROM login_etl_partitions() p
               WHERE NOT p.is_default AND (p.lo IS NULL OR p.lo <= for_day) AND p.hi > for_day) THEN
        RETURN;
    END IF;
    SELECT granularity INTO v_unit FROM user_logins_partitioning;
    v_lo := date_trunc(coalesce(v_unit, 'day'), for_day::timestamp)::date;
    v_hi := (date_trunc(coalesce(v_unit, 'day'), for_day::timestamp) + ('1 ' || coalesce(v_unit, 'day'))::interval)::date;
    SELECT greatest(v_lo, max(p.hi)) INTO v_lo FROM login_etl_partitions() p
        WHERE NOT p.is_default AND p.hi <= for_day;
    SELECT least(v_hi, min(p.lo)) INTO v_hi FROM login_etl_partitions() p
        WHERE NOT p.is_default AND p.lo > for_day;
    v_name := 'user_logins_p' || to_char(v_lo, 'YYYYMMDD');
    -- In user_logins's schema, named: pg_catalog comes first in this
    -- function's search path, and an unqualified CREATE would aim there.
    EXECUTE format('CREATE TABLE %s.%I (LIKE user_logins_rows INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 100)',
                   (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'user_logins'::regclass), v_name);
    -- Lets ATTACH skip the scan of the new table.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (sent_at IS NOT NULL AND sent_at >= %L AND sent_at < %L)',
                   v_name, v_name || '_bounds', v_lo::timestamp AT TIME ZONE 'UTC', v_hi::timestamp AT TIME ZONE 'UTC');
    -- No insert may reach the DEFAULT partition between the move and the
    -- ATTACH's scan of it (a row of the new partition's days there would
    -- fail the ATTACH): writes routed there wait for this transaction.
    LOCK TABLE user_logins_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('WITH m AS (DELETE FROM user_logins_default WHERE sent_at >= %L AND sent_at < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM m', v_lo::timestamp AT TIME ZONE 'UTC', v_hi::timestamp AT TIME ZONE 'UTC', v_name);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE user_logins_rows ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', v_name,
                   v_lo::timestamp AT TIME ZONE 'UTC', v_hi::timestamp AT TIME ZONE 'UTC');
    created := v_name;
    moved := v_moved;
    RETURN NEXT;
END
$$;

-- login_etl_ensure_partition(date), unless the DEFAULT partition holds
-- more than `max_move` rows: making a partition scans the DEFAULT one
-- under a lock its writes wait for, and moves the day's rows under it.
-- Then it only says so (one row, created NULL) and maintain swaps.
CREATE OR REPLACE FUNCTION login_etl_ensure_partition(for_day date, max_move bigint)
RETURNS TABLE(created text, moved bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
BEGIN
    PERFORM login_etl_hold_lock('migration', true);
    IF EXISTS (SELECT 1 FROM login_etl_partitions() p
               WHERE NOT p.is_default AND (p.lo IS NULL OR p.lo <= for_day) AND p.hi > for_day) THEN
        RETURN;
    END IF;
    IF login_etl_default_size(max_move) > max_move THEN
        created := NULL;
        moved := NULL;
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM login_etl_ensure_partition(for_day);
END
$$;
