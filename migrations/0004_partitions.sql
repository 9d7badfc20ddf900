-- The life of the partitioned user_logins: its granularity, the DEFAULT
-- partition, and the functions `login-etl maintain` (premake, retention)
-- and `login-etl forget` (the vault entries it holds back) call. Applied
-- with 0001 to 0003, idempotent. See src/maintain.rs and docs/operations.md
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '100ms' AS $$
DECLARE
    v_unit text;
    v_lo date;
    v_hi date;
    v_name text;
    v_moved bigint := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(5494251782888264780);
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
    EXECUTE format('WITH m AS (DELETE FROM user_logins_default WHERE create_date >= %L AND create_date < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM m', v_lo, v_hi, v_name);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE user_logins ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);
    created := v_name;
    moved := v_moved;
    RETURN NEXT;
END
$$;

-- Detaches and drops `part` if every row it can hold is older than
-- `cutoff` (its upper bound is at or before it); NULL when it did nothing,
-- else the partition's estimated rows. DETACH ... CONCURRENTLY is refused
-- while a DEFAULT partition exists, so this is a plain DETACH: its ACCESS
-- EXCLUSIVE lock on user_logins is waited for at most lock_timeout (the
-- caller retries), and held for the catalog change only: no scan, no
-- rewrite, whatever the partition's size.
CREATE OR REPLACE FUNCTION login_etl_drop_partition(part text, cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(5494251782888264780);
    SELECT p.rows_estimate INTO v_rows FROM login_etl_partitions() p
        WHERE p.name = part AND NOT p.is_default AND p.hi <= cutoff;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE format('ALTER TABLE user_logins DETACH PARTITION %I', part);
    EXECUTE format('DROP TABLE %I', part);
    RETURN v_rows;
END
$$;

-- What waits in the DEFAULT partition, by day (small: rows land there only
-- while their partition is missing).
CREATE OR REPLACE FUNCTION login_etl_default_days()
RETURNS TABLE(day date, row_count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT create_date, count(*) FROM user_logins_default GROUP BY 1 ORDER BY 1
$$;

-- Deletes the DEFAULT partition's rows older than `cutoff` (past
-- retention: they get no partition). Returns how many.
CREATE OR REPLACE FUNCTION login_etl_purge_default(cutoff date)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '100ms' AS $$
DECLARE
    v_rows bigint;
BEGIN
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

-- Vault entries `login-etl forget` took out of the vault while it checks
-- whether anyone else's row still uses them: it puts back those in use and
-- deletes the rest (src/reveal.rs). Keyed by the erased user's key, so a
-- forget that stopped half way finishes on its next run.
CREATE TABLE IF NOT EXISTS user_logins_pii_vault_held(
    user_key    varchar(64) COLLATE "C" NOT NULL,
    kind        varchar(16) COLLATE "C" NOT NULL,
    token       varchar(64) COLLATE "C" NOT NULL,
    key_id      varchar(32) NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (user_key, kind, token)
);

-- forget audits its start (forget_begun, in the transaction that puts the
-- user on the erasure list) and its end (forget, with the counts).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'user_logins_pii_audit'::regclass
                     AND conname = 'user_logins_pii_audit_action_check'
                     AND pg_get_constraintdef(oid) LIKE '%forget_begun%') THEN
        ALTER TABLE user_logins_pii_audit DROP CONSTRAINT IF EXISTS user_logins_pii_audit_action_check;
        ALTER TABLE user_logins_pii_audit ADD CONSTRAINT user_logins_pii_audit_action_check
            CHECK (action IN ('reveal', 'forget', 'forget_begun'));
    END IF;
END
$$;
