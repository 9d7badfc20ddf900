#!/usr/bin/env bash
# Where a batch of 10's database time goes above its floor: the server's
# CPU per transaction (the backend's utime + stime over 6 s of a 9 s
# pgbench run, one client) of the function's statements, written out with
# the rows as literals, against the floor's `BEGIN; INSERT; COMMIT`, and of
# the same statements with one guard taken away in a copy of the database
# each. Taking turns, RUNS rounds (default 4); prints each variant's
# figures in µs and their median. The literals cost the parser more than
# the function's binary parameters do: compare the variants with each
# other, and the bench (benches/floor.rs, FLOOR_TEN_ONLY) for the ratio.
# Run from the repository's root. Needs login-etl built
# (target/debug/login-etl) and a PostgreSQL at PG_ADMIN_URL on this machine
# (default: the local server, a URL without parameters; /proc is read);
# makes and drops databases of its own.
set -euo pipefail
shopt -s inherit_errexit
export PSQLRC=/dev/null
url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
runs=${RUNS:-4}
base=login_etl_ten_cpu_$$
dir=$(mktemp -d /tmp/ten_rows_cpu.XXXXXX)
variants="full no_checks no_check_call no_settings"
cleanup() {
  for v in $variants; do psql "$url" -qc "DROP DATABASE IF EXISTS ${base}_$v WITH (FORCE)" || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
dburl() { echo "${url%/*}/${base}_$1"; }
psql "$url" -qc "CREATE DATABASE ${base}_full"
DATABASE_URL=$(dburl full) MASKING_KEY=$(printf 'ab%.0s' {1..32}) "${CARGO_TARGET_DIR:-target}/debug/login-etl" migrate > /dev/null
psql "$(dburl full)" -qc "CREATE TABLE floor_plain (LIKE user_logins_rows); ALTER TABLE floor_plain ADD UNIQUE (sent_at, message_id)"
for v in no_checks no_check_call no_settings; do
  psql "$url" -qc "CREATE DATABASE ${base}_$v TEMPLATE ${base}_full"
done
psql "$(dburl no_checks)" -qc "ALTER TABLE user_logins_rows DROP CONSTRAINT user_logins_rows_tokens_only, \
  DROP CONSTRAINT user_logins_rows_extra_scalars, DROP CONSTRAINT user_logins_rows_defects_codes_only"
psql "$(dburl no_check_call)" -Atc "SELECT pg_get_functiondef(oid) FROM pg_proc WHERE proname = 'login_etl_write' \
  AND pronargs = 18" | sed '/PERFORM login_etl_check_write/d' > "$dir/no_check_call.sql"
grep -q 'INSERT INTO user_logins_rows' "$dir/no_check_call.sql" || {
  echo "no login_etl_write of 18 arguments (the contract's columns changed?): update this script's write" >&2
  exit 1
}
psql "$(dburl no_check_call)" -q -v ON_ERROR_STOP=1 -f "$dir/no_check_call.sql"
if psql "$(dburl no_check_call)" -Atc "SELECT prosrc FROM pg_proc WHERE proname = 'login_etl_write' AND pronargs = 18" \
  | grep -q login_etl_check_write; then
  echo "the write function still calls login_etl_check_write: no variant without it" >&2
  exit 1
fi
psql "$(dburl no_settings)" -qc "DO \$\$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc \
  WHERE proname IN ('login_etl_write', 'login_etl_check_write') LOOP EXECUTE format('ALTER FUNCTION %s RESET ALL', f); END LOOP; END \$\$"

# The scripts: 10 rows of the shape the floor bench writes, sent_at now()
# plus a microsecond each (a fresh key every transaction).
python3 - "$dir" <<'PY'
import os, sys, uuid
d, n = sys.argv[1], 10
mids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
uids = [str(uuid.uuid4()) for _ in range(n)]
ips = [os.urandom(32).hex() for _ in range(n)]
devs = [os.urandom(32).hex() for _ in range(n)]
arr = lambda vals, ty: "'{" + ",".join('"%s"' % v for v in vals) + "}'::" + ty
nulls = lambda ty: "array_fill(NULL::%s, ARRAY[%d])" % (ty, n)
sent = "ARRAY[" + ",".join("now() + interval '%d microsecond'" % i for i in range(n)) + "]"
args = [sent, nulls("bigint"), arr([1002003] * n, "int[]"), arr([1] * n, "smallint[]"),
        arr(mids, "uuid[]"), arr(uids, "uuid[]"), arr(["\\\\x" + t for t in ips], "bytea[]"),
        arr(["\\\\x" + t for t in devs], "bytea[]"), arr(["ios"] * n, "varchar[]"),
        arr(["en_US"] * n, "varchar[]"), nulls("varchar"), nulls("varchar"), nulls("varchar"),
        nulls("text"), nulls("jsonb")]
# src/ingest/sink/tx.rs's BEGIN (begin_sql) and COMMIT_SQL, insert.rs's write.
begin = ("BEGIN ISOLATION LEVEL READ COMMITTED\\; SET LOCAL statement_timeout = 5000\\; "
         "SET LOCAL lock_timeout = 5000\\; SELECT pg_catalog.set_config('synchronous_commit', 'on', true) "
         "WHERE pg_catalog.current_setting('synchronous_commit') OPERATOR(pg_catalog.=) 'off'\\; "
         "SET LOCAL search_path = pg_catalog, public, pg_temp\\; "
         "LOCK TABLE ONLY user_logins_rows IN ROW EXCLUSIVE MODE;")
write = "SELECT login_etl_write(0, 1, 1, " + ", ".join(args) + ");"
commit = "COMMIT\\; SELECT pg_snapshot_xmax(pg_current_snapshot())::text;"
open(d + "/function.sql", "w").write("\n".join([begin, write, commit]) + "\n")
cols = ("sent_at, user_tag, app_version, key_version, message_id, user_id, masked_ip, masked_device_id, "
        "device_type, locale, app_version_text, user_id_text, message_id_text, defects, extra")
rows = ", ".join("(now() + interval '%d microsecond', NULL, 1002003, 1, '%s', '%s', '\\x%s', '\\x%s', "
                 "'ios', 'en_US', NULL, NULL, NULL, NULL, NULL)" % (i, mids[i], uids[i], ips[i], devs[i])
                 for i in range(n))
open(d + "/floor.sql", "w").write("BEGIN\\; INSERT INTO floor_plain (" + cols + ") VALUES " + rows + "\\; COMMIT;\n")
PY

# The backend's CPU per transaction of script $1 in database $2, counted
# by the rows the run added.
cpu_per_tx() {
  local db; db=$(dburl "$2")
  local rows="SELECT (SELECT count(*) FROM user_logins_rows) + (SELECT count(*) FROM floor_plain)"
  pgbench "$db" -n -T 9 -f "$dir/$1.sql" > "$dir/run.out" 2>&1 &
  bench=$!
  # (This runs in a subshell, where the cleanup's trap does not: stop
  # pgbench here.)
  fail() { kill "$bench" 2> /dev/null || true; echo "$1" >&2; cat "$dir/run.out" >&2; exit 1; }
  # pgbench's first connection only looks around and closes: take the
  # backend that is there once the row count is read, and still there at
  # the end of the window.
  local pid="" stat r1 r2 c1 c2
  while :; do
    kill -0 "$bench" 2> /dev/null || fail "pgbench ended before its backend was found"
    pid=$(psql "$db" -Atc "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' \
      AND datname = current_database() ORDER BY backend_start DESC LIMIT 1")
    r1=$(psql "$db" -Atc "$rows")
    if [ -n "$pid" ] && read -ra stat < "/proc/$pid/stat" 2> /dev/null; then
      break
    fi
  done
  c1=$((stat[13] + stat[14]))
  sleep 6  # a measuring window, not a synchronisation: pgbench runs on
  r2=$(psql "$db" -Atc "$rows")
  read -ra stat < "/proc/$pid/stat" || fail "backend $pid ended before the window did"
  c2=$((stat[13] + stat[14]))
  wait "$bench" || fail "pgbench failed"
  [ $((r2 - r1)) -ge 10 ] || fail "no transaction in the window"
  echo $(( (c2 - c1) * 1000000 / $(getconf CLK_TCK) / ((r2 - r1) / 10) ))
}

pairs="floor:full function:full function:no_checks function:no_check_call function:no_settings"
declare -A seen
for _ in $(seq "$runs"); do
  for pair in $pairs; do
    seen[$pair]="${seen[$pair]:-} $(cpu_per_tx "${pair%%:*}" "${pair#*:}")"
  done
done
echo "server CPU per transaction of 10 rows, µs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
for pair in $pairs; do
  median=$(tr ' ' '\n' <<< "${seen[$pair]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-36s %s (median %s)\n' "$pair" "${seen[$pair]# }" "$median"
done
