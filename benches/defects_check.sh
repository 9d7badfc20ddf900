#!/usr/bin/env bash
# The cost of user_logins_defects_codes_only (migrations/0027): COPY of
# 200,000 rows, each with defects, into a table of three of user_logins's
# columns without the check and with it, taking turns, five runs each;
# prints each side's times in ms. Needs a PostgreSQL at PG_ADMIN_URL
# (default: the local server); makes and drops a database of its own.
set -euo pipefail
url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=login_etl_defects_check_$$
file=$(mktemp -u /tmp/defects_rows.XXXXXX)
psql "$url" -qc "CREATE DATABASE $db"
trap 'psql "$url" -qc "DROP DATABASE IF EXISTS $db"; rm -f "$file"' EXIT
dburl=${url%/*}/$db
psql "$dburl" -q <<SQL
CREATE TABLE src AS SELECT 'm' || g AS message_id, 'u' || (g % 1000) AS user_id,
  CASE WHEN g % 2 = 0 THEN '{ip.port,app_version.suffix}'::text[] ELSE '{os_name.not_scalar}'::text[] END AS defects
  FROM generate_series(1, 200000) g;
COPY src TO '$file' (FORMAT binary);
CREATE TABLE plain (message_id text, user_id text, defects text[]);
CREATE TABLE checked (LIKE plain);
-- migrations/0027_defects_codes_only.sql's check
ALTER TABLE checked ADD CONSTRAINT c CHECK (defects IS NULL
    OR (cardinality(defects) BETWEEN 1 AND 32
        AND array_position(defects, NULL) IS NULL
        AND octet_length(array_to_string(defects, ',')) <= 2048
        AND array_to_string(defects, ',')
            ~ '^[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+(?:,[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+)*$'));
SQL
for _ in 1 2 3 4 5; do
  for t in plain checked; do
    psql "$dburl" -qc "TRUNCATE $t"
    s=$(date +%s%N)
    psql "$dburl" -qc "COPY $t FROM '$file' (FORMAT binary)"
    echo "$t $(( ($(date +%s%N) - s) / 1000000 ))"
  done
done | awk '{a[$1] = a[$1] " " $2} END {for (k in a) print k ":" a[k] " ms"}'
