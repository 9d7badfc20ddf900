#!/usr/bin/env bash
# make demo-watch: the main job without LocalStack. The function under
# cargo lambda watch on 127.0.0.1:PORT against DATABASE_URL (make migrate,
# the target's prerequisite, applied the schema), invoked with every events/ file and a generated batch of 1,000;
# then the log's summary, the masked rows, and a replay that must not add
# a row. The watch is stopped on every exit.
set -euo pipefail
: "${DATABASE_URL:?}" "${KEY_FILE:?}" "${PORT:?}"
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m[%s/6] %s\033[0m\n' "$1" "$2"; }
invoke() { cargo lambda invoke login-etl --invoke-address 127.0.0.1 --invoke-port "$PORT" --output-format json --data-file "$1"; }
rows() { psql "$DATABASE_URL" -qAtc 'SELECT count(*) FROM user_logins'; }

step 1 "building the function"
cargo build --quiet --bin login-etl --example gen_events
step 2 "starting cargo lambda watch on 127.0.0.1:$PORT"
log=$(mktemp -t login-etl-demo.XXXXXX.log)
DATABASE_URL="$DATABASE_URL" MASKING_KEY="$(cat "$KEY_FILE")" setsid cargo lambda watch \
  --invoke-address 127.0.0.1 --invoke-port "$PORT" > "$log" 2>&1 < /dev/null &
watch_pid=$!
trap 'kill -TERM -- -$watch_pid 2> /dev/null || true; wait $watch_pid 2> /dev/null || true; echo "stopped cargo lambda watch (pid $watch_pid)"' EXIT
# Its port answering is what "started" means; a dot a second meanwhile.
for _ in $(seq 1 60); do (exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null && break; sleep 1; printf '.'; done
(exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null || { echo "watch did not start; its log:"; cat "$log"; exit 1; }

step 3 "invoking the function with each file in events/ (user_logins has $(rows) rows)"
cargo run --quiet --example gen_events -- --count 1000 --invalid-every 40 --seed $RANDOM > target/demo-1000.json 2> /dev/null
for f in events/*.json target/demo-1000.json; do
  n=$(jq '.Records | length' "$f" 2> /dev/null || echo "?")
  printf '\n--> %s (records: %s)\n' "$f" "$n"
  if out=$(invoke "$f" 2>&1); then
    echo "$out" | jq -c '{batchItemFailures: (.batchItemFailures | length), ids: [.batchItemFailures[].itemIdentifier][0:4]}'
  else
    echo "invocation error (expected for sqs-malformed.json):"; echo "$out" | grep -v '^\s*$' | head -4
  fi
done
step 4 "the function's log: one summary line per batch, then rejections by reason"
grep -o 'batch processed.*' "$log" || true
grep -o 'record rejected.* code=[a-z_.]*' "$log" | grep -o 'code=.*' | sort | uniq -c | sort -rn || true
step 5 "rows in user_logins (masked; newest first)"
psql "$DATABASE_URL" -P pager=off -c "SELECT left(message_id, 8) AS msg, left(user_id, 8) AS user_id, device_type,
  left(masked_ip, 12) || '…' AS masked_ip, left(masked_device_id, 12) || '…' AS masked_device_id, locale,
  app_version, app_version_text, create_date FROM user_logins ORDER BY sent_at DESC LIMIT 12"
psql "$DATABASE_URL" -P pager=off -c "SELECT count(*) AS rows, count(DISTINCT message_id) AS messages,
  count(DISTINCT masked_ip) AS distinct_ips, count(*) FILTER (WHERE locale IS NULL) AS null_locales FROM user_logins"
step 6 "invoking events/sqs-mixed.json again: the row count must not change"
a=$(rows); invoke events/sqs-mixed.json > /dev/null; b=$(rows)
echo "rows before: $a, after: $b"; test "$a" = "$b"
echo; echo "demo done. Inspect with: psql $DATABASE_URL"
