#!/usr/bin/env bash
# The narrow row's online upgrade, measured before it is built
# (docs/narrow-row.md): in SQL alone, on a database of its own, with
# today's columns (`wide`, partitioned by create_date as user_logins is)
# and layout C (`narrow`, partitioned by sent_at, keyed (sent_at,
# message_id), tokens as bytea). Prints:
#   - the backfill: old rows converted in chunks, rows/s and WAL a row;
#   - bytes a row on disk, each table;
#   - the mirror: a batch written to the old parent with the statement
#     triggers that copy each insert, re-key and delete to the new one,
#     against the same batch without them (taking turns, server time);
#   - the cutover: renaming the old parent and making the view, in ms;
#   - a day read through the view (hex tokens, text ids) against the old
#     parent, and whether the view prunes by create_date (it cannot).
# NARROW_ROWS rows (default 400,000) over two days. Needs a PostgreSQL at
# PG_ADMIN_URL (default: the local server); makes and drops its database.
set -euo pipefail
url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
rows=${NARROW_ROWS:-400000}
db=login_etl_narrow_row_$$
psql "$url" -qc "CREATE DATABASE $db"
trap 'psql "$url" -qc "DROP DATABASE IF EXISTS $db"' EXIT
dburl=${url%/*}/$db
run() { psql "$dburl" -qX -v ON_ERROR_STOP=1 "$@" 2>&1 | sed -n -e 's/^.*NOTICE:  //p' -e '/ERROR/p'; }

run <<SQL
SET client_min_messages = notice;
-- user_logins's columns and key today (migrations/0001 to 0027).
CREATE TABLE wide(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date,
    message_id varchar(128), app_version_text varchar(32), sent_at timestamptz,
    key_version smallint NOT NULL DEFAULT 1, extra jsonb, defects text[], user_tag bigint,
    CONSTRAINT tokens_only CHECK ((masked_ip IS NULL OR (octet_length(masked_ip) = 64 AND masked_ip !~ '[^0-9a-f]'))
        AND (masked_device_id IS NULL OR (octet_length(masked_device_id) = 64 AND masked_device_id !~ '[^0-9a-f]'))))
    PARTITION BY RANGE (create_date);
CREATE TABLE wide_d0 PARTITION OF wide FOR VALUES FROM ('2026-11-26') TO ('2026-11-27');
CREATE TABLE wide_d1 PARTITION OF wide FOR VALUES FROM ('2026-11-27') TO ('2026-11-28');
CREATE TABLE wide_d2 PARTITION OF wide FOR VALUES FROM ('2026-11-28') TO ('2026-11-29');
CREATE UNIQUE INDEX wide_key ON wide (sent_at, message_id, create_date);
-- Layout C (benches/floor.rs's floor_lean, with user_tag): fixed widths
-- first, widest first; the ids' text only where they are no canonical
-- UUID, the version's only where app_version does not render back to it.
CREATE TABLE narrow(sent_at timestamptz NOT NULL, user_tag bigint, app_version integer,
    key_version smallint NOT NULL DEFAULT 1, message_id uuid, user_uuid uuid, masked_ip bytea,
    masked_device_id bytea, device_type varchar(32), locale varchar(32), app_version_text varchar(32),
    user_text varchar(128), message_id_text varchar(128), defects text[], extra jsonb,
    CONSTRAINT tokens_only CHECK ((masked_ip IS NULL OR octet_length(masked_ip) = 32)
        AND (masked_device_id IS NULL OR octet_length(masked_device_id) = 32)))
    PARTITION BY RANGE (sent_at);
CREATE TABLE narrow_d0 PARTITION OF narrow FOR VALUES FROM ('2026-11-26 00:00+00') TO ('2026-11-27 00:00+00') WITH (fillfactor = 100);
CREATE TABLE narrow_d1 PARTITION OF narrow FOR VALUES FROM ('2026-11-27 00:00+00') TO ('2026-11-28 00:00+00') WITH (fillfactor = 100);
CREATE TABLE narrow_d2 PARTITION OF narrow FOR VALUES FROM ('2026-11-28 00:00+00') TO ('2026-11-29 00:00+00') WITH (fillfactor = 100);
CREATE UNIQUE INDEX narrow_key ON narrow (sent_at, message_id) WITH (fillfactor = 100);
-- A canonical lowercase UUID, by one translate (no regex: a bounded
-- repetition costs PostgreSQL's engine about 16 µs a value).
CREATE FUNCTION canonical(t text) RETURNS boolean LANGUAGE sql IMMUTABLE
    RETURN translate(t, '0123456789abcdef', '0000000000000000') = '00000000-0000-0000-0000-000000000000';
CREATE FUNCTION rendered(v integer) RETURNS text LANGUAGE sql IMMUTABLE
    RETURN v / 1000000 || '.' || v / 1000 % 1000 || '.' || v % 1000;
-- One old row as a new one: a row from before login-etl (no message id,
-- no sent_at) at its day's midnight.
CREATE VIEW converted AS SELECT w.create_date AS day,
    coalesce(w.sent_at, w.create_date::timestamp AT TIME ZONE 'UTC') AS sent_at, w.user_tag,
    w.app_version, w.key_version,
    CASE WHEN canonical(w.message_id) THEN w.message_id::uuid ELSE md5(w.message_id)::uuid END AS message_id,
    CASE WHEN canonical(w.user_id) THEN w.user_id::uuid END AS user_uuid,
    decode(w.masked_ip, 'hex') AS masked_ip, decode(w.masked_device_id, 'hex') AS masked_device_id,
    w.device_type, w.locale,
    CASE WHEN w.app_version_text IS DISTINCT FROM rendered(w.app_version) OR w.message_id IS NULL
         THEN w.app_version_text END AS app_version_text,
    CASE WHEN NOT canonical(w.user_id) THEN w.user_id END AS user_text,
    CASE WHEN NOT canonical(w.message_id) THEN w.message_id END AS message_id_text,
    w.defects, w.extra
  FROM wide w;
-- What readers see: today's columns and types. sent_at as stored (a row
-- from before login-etl shows its day's midnight): an expression over it
-- would keep a filter on it from pruning partitions.
CREATE VIEW readable AS SELECT
    coalesce(n.user_text, n.user_uuid::text)::varchar(128) AS user_id, n.device_type,
    encode(n.masked_ip, 'hex')::varchar(256) AS masked_ip,
    encode(n.masked_device_id, 'hex')::varchar(256) AS masked_device_id, n.locale, n.app_version,
    (n.sent_at AT TIME ZONE 'UTC')::date AS create_date,
    coalesce(n.message_id_text, n.message_id::text)::varchar(128) AS message_id,
    CASE WHEN n.message_id IS NULL THEN n.app_version_text
         ELSE coalesce(n.app_version_text, rendered(n.app_version)) END::varchar(32) AS app_version_text,
    n.sent_at,
    n.key_version, n.extra, n.defects, n.user_tag
  FROM narrow n;
-- Rows as the function writes them (SQS ids, 9 in 10 user ids UUIDs, one
-- version in 20 with a suffix), over two days; rows from before
-- login-etl are left out of the timing (none in a deployment since 0.1).
INSERT INTO wide (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date,
    message_id, app_version_text, sent_at, key_version)
SELECT CASE WHEN g % 10 = 0 THEN 'user-' || g % 5000 ELSE md5('u' || g % 50000)::uuid::text END,
    CASE WHEN g % 2 = 0 THEN 'ios' ELSE 'android' END,
    encode(sha256(('ip' || g % 70000)::bytea), 'hex'), encode(sha256(('d' || g % 60000)::bytea), 'hex'),
    'en_US', 4002000 + g % 7, (t AT TIME ZONE 'UTC')::date, gen_random_uuid()::text,
    '4.2.' || g % 7 || CASE WHEN g % 20 = 0 THEN '-beta' ELSE '' END, t, 1
FROM generate_series(1, $rows) g,
    LATERAL (SELECT '2026-11-26 00:00+00'::timestamptz + (g * interval '2 days') / $rows AS t) s;
VACUUM ANALYZE wide;
SQL

echo "backfill of $rows rows, chunks of 50,000 by sent_at (new parent's key order):"
run <<'SQL'
SET client_min_messages = notice;
DO $$
DECLARE lo timestamptz; hi timestamptz; t0 timestamptz; w0 pg_lsn; n bigint := 0; k bigint;
        last timestamptz; step interval;
BEGIN
  SELECT min(sent_at), max(sent_at) INTO lo, last FROM wide;
  step := (last - lo) / (SELECT count(*) FROM wide) * 50000;
  t0 := clock_timestamp(); w0 := pg_current_wal_insert_lsn();
  WHILE lo <= last LOOP
    hi := lo + step;
    INSERT INTO narrow SELECT sent_at, user_tag, app_version, key_version, message_id, user_uuid,
        masked_ip, masked_device_id, device_type, locale, app_version_text, user_text,
        message_id_text, defects, extra
      FROM converted WHERE sent_at >= lo AND sent_at < hi
        AND day BETWEEN (lo AT TIME ZONE 'UTC')::date AND (hi AT TIME ZONE 'UTC')::date
      ORDER BY sent_at, message_id
      ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS k = ROW_COUNT; n := n + k; lo := hi;
  END LOOP;
  RAISE NOTICE '  % rows in % s: % rows/s, % B of WAL a row', n,
    round(extract(epoch FROM clock_timestamp() - t0)::numeric, 1),
    round(n / extract(epoch FROM clock_timestamp() - t0)),
    round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), w0) / n);
END $$;
SQL

run <<'SQL'
SET client_min_messages = notice;
VACUUM ANALYZE narrow;
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT t, (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(t)) AS bytes,
                  (SELECT count(*) FROM wide) AS n
             FROM unnest(ARRAY['wide', 'narrow']::regclass[]) AS t LOOP
    RAISE NOTICE 'on disk (heap and key index): % % B a row', rpad(r.t::text, 7), round(r.bytes / r.n);
  END LOOP;
END $$;
SQL

echo "the mirror: a batch into the old parent, with the triggers / without (server time, median of 7 turns):"
run <<'SQL'
SET client_min_messages = notice;
CREATE TABLE wide_bare (LIKE wide INCLUDING ALL) PARTITION BY RANGE (create_date);
CREATE TABLE wide_bare_d2 PARTITION OF wide_bare FOR VALUES FROM ('2026-11-28') TO ('2026-11-29');
CREATE FUNCTION mirror_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO narrow SELECT coalesce(w.sent_at, w.create_date::timestamp AT TIME ZONE 'UTC'), w.user_tag,
      w.app_version, w.key_version,
      CASE WHEN canonical(w.message_id) THEN w.message_id::uuid ELSE md5(w.message_id)::uuid END,
      CASE WHEN canonical(w.user_id) THEN w.user_id::uuid END,
      decode(w.masked_ip, 'hex'), decode(w.masked_device_id, 'hex'), w.device_type, w.locale,
      CASE WHEN w.app_version_text IS DISTINCT FROM rendered(w.app_version) OR w.message_id IS NULL
           THEN w.app_version_text END,
      CASE WHEN NOT canonical(w.user_id) THEN w.user_id END,
      CASE WHEN NOT canonical(w.message_id) THEN w.message_id END, w.defects, w.extra
    FROM new_rows w ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$;
-- A re-key and an erasure, by key (the old key holds the new one's).
CREATE FUNCTION mirror_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE narrow n SET masked_ip = decode(w.masked_ip, 'hex'), masked_device_id = decode(w.masked_device_id, 'hex'),
      key_version = w.key_version, user_tag = w.user_tag
    FROM new_rows w
    WHERE n.sent_at = w.sent_at
      AND n.message_id = CASE WHEN canonical(w.message_id) THEN w.message_id::uuid ELSE md5(w.message_id)::uuid END;
  RETURN NULL;
END $$;
CREATE FUNCTION mirror_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM narrow n USING old_rows w
    WHERE n.sent_at = w.sent_at
      AND n.message_id = CASE WHEN canonical(w.message_id) THEN w.message_id::uuid ELSE md5(w.message_id)::uuid END;
  RETURN NULL;
END $$;
CREATE TRIGGER mirror_insert AFTER INSERT ON wide REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mirror_insert();
CREATE TRIGGER mirror_update AFTER UPDATE ON wide REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mirror_update();
CREATE TRIGGER mirror_delete AFTER DELETE ON wide REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mirror_delete();
-- A batch as login_etl_write inserts it: unnest of one array a column.
CREATE FUNCTION batch(target regclass, n int, seed int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format($f$INSERT INTO %s (user_id, device_type, masked_ip, masked_device_id, locale, app_version,
      create_date, message_id, app_version_text, sent_at, key_version)
    SELECT u, 'ios', ip, dv, 'en_US', 4002000, '2026-11-28', m, '4.2.0', t, 1
    FROM unnest(ARRAY(SELECT gen_random_uuid()::text FROM generate_series(1, $1)),
                ARRAY(SELECT md5('u' || g)::uuid::text FROM generate_series(1, $1) g),
                ARRAY(SELECT encode(sha256(('i' || g + $2)::bytea), 'hex') FROM generate_series(1, $1) g),
                ARRAY(SELECT encode(sha256(('d' || g + $2)::bytea), 'hex') FROM generate_series(1, $1) g),
                ARRAY(SELECT '2026-11-28 12:00+00'::timestamptz + (g + $2) * interval '1 microsecond'
                      FROM generate_series(1, $1) g)) AS r(m, u, ip, dv, t)
    ON CONFLICT DO NOTHING$f$, target) USING n, seed;
END $$;
DO $$
DECLARE n int; turn int; t0 timestamptz; bare float8[]; mirrored float8[]; ratios float8[];
        seed int := 10000000; b float8; m float8;
BEGIN
  FOREACH n IN ARRAY ARRAY[10, 1000] LOOP
    bare := '{}'; mirrored := '{}'; ratios := '{}';
    FOR turn IN 1..7 LOOP
      seed := seed + 100000; t0 := clock_timestamp();
      FOR k IN 1..(20000 / n) LOOP PERFORM batch('wide_bare', n, seed + k * n); END LOOP;
      b := extract(epoch FROM clock_timestamp() - t0) * 1e6 / 20000;
      seed := seed + 100000; t0 := clock_timestamp();
      FOR k IN 1..(20000 / n) LOOP PERFORM batch('wide', n, seed + k * n); END LOOP;
      m := extract(epoch FROM clock_timestamp() - t0) * 1e6 / 20000;
      bare := bare || b; mirrored := mirrored || m; ratios := ratios || m / b;
    END LOOP;
    RAISE NOTICE '  % rows a batch: % µs a row without, % with: %x', n,
      round((SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(bare) x)::numeric, 2),
      round((SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(mirrored) x)::numeric, 2),
      round((SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(ratios) x)::numeric, 2);
  END LOOP;
END $$;
DO $$
DECLARE k bigint; t0 timestamptz;
BEGIN
  t0 := clock_timestamp();
  UPDATE wide SET masked_ip = encode(sha256(masked_ip::bytea), 'hex'), key_version = 2
    WHERE create_date = '2026-11-27' AND sent_at < '2026-11-27 01:00+00';
  GET DIAGNOSTICS k = ROW_COUNT;
  IF k = 0 OR (SELECT count(*) FROM narrow WHERE key_version = 2) <> k THEN
    RAISE EXCEPTION 'the re-key was not mirrored';
  END IF;
  DELETE FROM wide WHERE create_date = '2026-11-27' AND sent_at < '2026-11-27 00:10+00';
  IF (SELECT count(*) FROM wide) <> (SELECT count(*) FROM narrow) THEN
    RAISE EXCEPTION 'the erasure was not mirrored';
  END IF;
  RAISE NOTICE '  a re-key of % rows and an erasure mirrored in % ms', k,
    round(extract(epoch FROM clock_timestamp() - t0)::numeric * 1000);
END $$;
SQL

echo "the cutover (catalog work under ACCESS EXCLUSIVE):"
run <<'SQL'
SET client_min_messages = notice;
DO $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
  LOCK TABLE wide IN ACCESS EXCLUSIVE MODE;
  DROP TRIGGER mirror_insert ON wide; DROP TRIGGER mirror_update ON wide; DROP TRIGGER mirror_delete ON wide;
  ALTER TABLE wide RENAME TO wide_retired;
  ALTER VIEW readable RENAME TO user_logins;
  RAISE NOTICE '  % ms', round(extract(epoch FROM clock_timestamp() - t0)::numeric * 1000, 1);
END $$;
SQL

echo "a day read (count, distinct tokens), median of 5, and the partitions each plan reads:"
run <<'SQL'
SET client_min_messages = notice;
DO $$
DECLARE q text; t0 timestamptz; times float8[];
BEGIN
  FOREACH q IN ARRAY ARRAY[
    $q$SELECT count(*), count(DISTINCT masked_ip) FROM wide_retired WHERE create_date = '2026-11-27'$q$,
    $q$SELECT count(*), count(DISTINCT masked_ip) FROM user_logins WHERE create_date = '2026-11-27'$q$,
    $q$SELECT count(*), count(DISTINCT masked_ip) FROM user_logins WHERE sent_at >= '2026-11-27 00:00+00' AND sent_at < '2026-11-28 00:00+00'$q$]
  LOOP
    times := '{}';
    FOR k IN 1..5 LOOP
      t0 := clock_timestamp(); EXECUTE q; times := times || extract(epoch FROM clock_timestamp() - t0) * 1000;
    END LOOP;
    RAISE NOTICE '  % ms: %', round((SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x)::numeric, 1), q;
  END LOOP;
END $$;
SQL
for q in "FROM user_logins WHERE create_date = '2026-11-27'" "FROM user_logins WHERE sent_at >= '2026-11-27 00:00+00' AND sent_at < '2026-11-28 00:00+00'"; do
  echo "  partitions read, $q: $(psql "$dburl" -qAtX -c "EXPLAIN SELECT count(*) $q" | grep -o 'narrow_d[0-9]' | sort -u | tr '\n' ' ')"
done
