-- The life of the partitioned user_logins: its granularity, the DEFAULT
-- partition, and the functions `login-etl maintain` (premake, retention)
-- calls. Applied with 0001 to 0003, idempotent. See src/maintain.rs and docs/operations.md
-- "Partitions and retention".

-- How wide a partition is: chosen once, by `login-etl migrate
-- --partition-interval` (day unless given). One row.
CREATE TABLE IF NOT EXISTS user_logins_partitioning(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    granularity varchar(8) NOT NULL CHECK (granularity IN ('day', 'week', 'month'))
);

-- Catches a row whose day has no partition yet, so no row is ever refused
-- for want of one. `login-etl maintain` reports its rows (metric
-- DefaultPartitionRows, alarmed) and moves them into their own partition.
CREATE TABLE IF NOT EXISTS user_logins_default PARTITION OF user_logins DEFAULT;

-- The partitions of user_logins with their bounds (lo NULL: MINVALUE, the
-- table an upgrade converted), from the catalog: needs no privilege.
-- rows_estimate is pg_class.reltuples (as of the last ANALYZE), 0 if unknown.
CREATE OR REPLACE FUNCTION login_etl_partitions()
RETURNS TABLE(name text, lo date, hi date, is_default boolean, rows_estimate bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(b FROM 'FROM \(''([0-9-]+)''\)')::date,
           substring(b FROM 'TO \(''([0-9-]+)''\)')::date,
           b = 'DEFAULT',
           greatest(c.reltuples, 0)::bigint
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
    WHERE i.inhparent = 'user_logins'::regclass
    ORDER BY 2 NULLS FIRST, 1
$$;

-- Makes the partition that holds `for_day` unless one does: the granularity's
-- period, clipped so that it never overlaps a partition that covers part
-- of it. Rows of that period waiting in the DEFAULT partition move into
-- it, in the same transaction. The new table is attached, not created as
-- PARTITION OF: ATTACH takes SHARE UPDATE EXCLUSIVE on user_logins, which
-- ingest's ROW EXCLUSIVE does not wait for (CREATE ... PARTITION OF takes
-- ACCESS EXCLUSIVE). Returns the partition made and the rows moved; no row
-- when `for_day` was covered already. Runs as the table's owner, for the
-- maintain role (EXECUTE only); serialized with itself and migrate by the
-- migration's advisory lock, so concurrent runs are safe.
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
    PERFORM pg_advisory_xact_lock(5498692050214016076);
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
    EXECUTE format('CREATE TABLE %I (LIKE user_logins INCLUDING DEFAULTS)', v_name);
    -- Lets ATTACH skip the scan of the new table.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (create_date IS NOT NULL AND create_date >= %L AND create_date < %L)',
                   v_name, v_name || '_bounds', v_lo, v_hi);
    -- No insert may reach the DEFAULT partition between the move and the
    -- ATTACH's scan of it (a row of the new partition's days there would
    -- fail the ATTACH): writes routed there wait for this transaction.
    LOCK TABLE user_logins_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('WITH m AS (DELETE FROM user_logins_default WHERE create_date >= %L AND create_date < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM m', v_lo, v_hi, v_name);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE user_logins ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);
    created := v_name;
    moved := v_moved;
    RETURN NEXT;
END
$$;

-- Detaches `part` if every row it can hold is older than `cutoff` (its
-- upper bound is at or before it); NULL when it did nothing, else the
-- partition's estimated rows. `login_etl_drop_detached` drops it, in a
-- transaction of its own, so that this one holds its lock for the catalog
-- change only: no scan, no file removal, whatever the partition's size.
-- DETACH ... CONCURRENTLY is refused while a DEFAULT partition exists, so
-- this is a plain DETACH: its ACCESS EXCLUSIVE lock on user_logins is
-- waited for at most lock_timeout (the caller retries). A cutoff after
-- today (UTC) is refused: retention keeps today at least.
CREATE OR REPLACE FUNCTION login_etl_drop_partition(part text, cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    IF cutoff > (now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'a retention cutoff after today (%) would drop current rows', cutoff
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(5498692050214016076);
    SELECT p.rows_estimate INTO v_rows FROM login_etl_partitions() p
        WHERE p.name = part AND NOT p.is_default AND p.hi <= cutoff;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE format('ALTER TABLE user_logins DETACH PARTITION %I', part);
    RETURN v_rows;
END
$$;

-- Drops the tables `login_etl_drop_partition` detached (also those a run
-- that stopped between the two left): named like a partition (or like the
-- table an upgrade converted, user_logins_legacy), carrying its bounds
-- constraint, attached to nothing. Returns their names.
CREATE OR REPLACE FUNCTION login_etl_drop_detached()
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_name text;
BEGIN
    PERFORM pg_advisory_xact_lock(5498692050214016076);
    FOR v_name IN SELECT c.relname::text FROM pg_class c
                  JOIN pg_constraint k ON k.conrelid = c.oid AND k.conname = c.relname || '_bounds'
                  WHERE c.relname ~ '^user_logins_(p[0-9]{8}|legacy)$' AND c.relkind = 'r' AND NOT c.relispartition
                    AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'user_logins'::regclass) LOOP
        EXECUTE format('DROP TABLE %I', v_name);
        RETURN NEXT v_name;
    END LOOP;
END
$$;

-- What waits in the DEFAULT partition, by day (small: rows land there only
-- while their partition is missing; when it is not, one core, so that the
-- writes beside the scan keep the other).
CREATE OR REPLACE FUNCTION login_etl_default_days()
RETURNS TABLE(day date, row_count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET max_parallel_workers_per_gather = 0 AS $$
    SELECT create_date, count(*) FROM user_logins_default GROUP BY 1 ORDER BY 1
$$;

-- Deletes the DEFAULT partition's rows older than `cutoff` (past
-- retention: they get no partition). Returns how many.
CREATE OR REPLACE FUNCTION login_etl_purge_default(cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    IF cutoff > (now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'a retention cutoff after today (%) would delete current rows', cutoff
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM user_logins_default WHERE create_date < cutoff OR create_date IS NULL;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Functions are executable by PUBLIC unless revoked: these run as the
-- owner, so only the roles `login-etl grants --role maintain` names may.
REVOKE ALL ON FUNCTION login_etl_ensure_partition(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_drop_partition(text, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_default_days() FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_purge_default(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION login_etl_drop_detached() FROM PUBLIC;

-- SECURITY DEFINER functions resolve names in a fixed search_path: this
-- schema (where only the owner may create: the partitions they make land
-- there), the catalog, and pg_temp last (a caller's temporary table must
-- never stand in for one of ours).
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['login_etl_ensure_partition(date)', 'login_etl_drop_partition(text, date)',
                             'login_etl_drop_detached()', 'login_etl_default_days()', 'login_etl_purge_default(date)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_catalog, pg_temp', f, current_schema());
    END LOOP;
END
$$;

-- Copies the table and column privileges of `src` to `dst` (the upgrade
-- of an unpartitioned user_logins: the roles granted on the old table keep
-- them on the new parent).
CREATE OR REPLACE FUNCTION login_etl_copy_grants(src regclass, dst regclass)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.privilege_type, a.grantee
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
             WHERE c.oid = src AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON %s TO %s', g.privilege_type, dst,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT att.attname, a.privilege_type, a.grantee
             FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
             WHERE att.attrelid = src AND NOT att.attisdropped LOOP
        EXECUTE format('GRANT %s (%I) ON %s TO %s', g.privilege_type, g.attname, dst,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
END
$$;

