"""`login-etl poll` against LocalStack's SQS (real visibility timeouts and
redrive) and the local PostgreSQL, as an operator runs it: the README's
database roles (the consumer connects as the ingest role), JSON logs at
WARN, the DLQ found from the queue's RedrivePolicy, the PII vault on.

Run by `make e2e` (part of `make test`), in the same pytest session as
tests/test_localstack_e2e.py (one LocalStack, conftest.py). Every consumer
process is stopped by PID, also when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "localstack"))
import stack  # noqa: E402

RUN = f"poll{os.getpid()}"
LOGS = ROOT / "target" / "poll-tests"
# A batch's time limit and the grace period after SIGTERM, short for the test.
FAST_STOP = ["--batch-timeout", "5", "--grace-period", "10"]
# SQS's slowness, each way, in the slow-SQS heartbeat test (its docstring).
SLOW_SQS_DELAY_S = 0.85


@pytest.fixture
def consumers():
    """Consumers a test starts; each killed by PID at the end."""
    started: list[stack.Consumer] = []
    yield started
    for c in started:
        c.kill()


def queues_and_database(kind: str, **queue_options) -> stack.Stack:
    dbname = f"login_etl_{RUN}_{kind}"
    stack.drop_database(dbname)
    stack.create_database(dbname)
    stack.prepare_database(dbname)  # the README's deploy sequence: roles, schema, grants
    return stack.make_queues(f"login-etl-{RUN}-{kind}", dbname, **queue_options)


@pytest.fixture
def standard_queues(localstack):
    q = queues_and_database("std", visibility=5, max_receive=5)
    yield q
    stack.delete_queues(q)
    stack.drop_database(q.dbname)


@pytest.fixture
def fifo_queues(localstack):
    q = queues_and_database("fifo", fifo=True, visibility=5, max_receive=5)
    yield q
    stack.delete_queues(q)
    stack.drop_database(q.dbname)


@pytest.fixture
def outage_queues(localstack):
    # As the Lambda outage test: a 2 s visibility and maxReceiveCount 6 would
    # dead-letter a message after about 14 s without the backoff.
    q = queues_and_database("outage", visibility=2, max_receive=6)
    yield q
    stack.delete_queues(q)
    stack.drop_database(q.dbname)


def table(q: stack.Stack) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in stack.psql(stack.db_url(q.dbname),
                        "SELECT message_id, user_id, masked_ip, masked_device_id, app_version_text FROM user_logins"):  # fmt: skip
        assert r[0] not in out, f"message {r[0]} has two rows"
        out[r[0]] = r[1:]
    return out


def drained(q: stack.Stack, rows: int, dead: int) -> bool:
    return (sum(stack.queue_depth(q.queue_url)) == 0 and stack.row_count(q.dbname) >= rows
            and sum(stack.queue_depth(q.dlq_url)) >= dead)  # fmt: skip


def test_kill_9_and_sigterm_lose_nothing_and_double_nothing(standard_queues, consumers):
    """300 messages (every 10th invalid): the consumer is killed with SIGKILL
    mid-run, restarted and stopped with SIGTERM mid-run, restarted again and
    stopped with SIGTERM once the queue is empty. Every valid message is
    exactly one row with the right HMACs, every invalid one is in the DLQ
    once with its reason, each SIGTERM exits 0 within the grace period."""
    q = standard_queues
    key = secrets.token_bytes(32)
    messages = stack.generate(300, 10, seed=2201)
    valid = [m for m in messages if m.valid]
    invalid = [m for m in messages if not m.valid]
    stack.send(q, messages)
    c = stack.Consumer(q, key.hex(), LOGS / f"{RUN}-kill.log", "--concurrency", "2", "--threads", "3",
                       *FAST_STOP, env={"VAULT_KMS_KEY_ID": stack.vault_key()})  # fmt: skip
    consumers.append(c)

    c.start()
    stack.wait_for("the first rows", lambda: stack.row_count(q.dbname) >= 60, timeout=60)
    c.kill()  # SIGKILL, mid-run: batches in flight, deletes not sent
    at_kill = stack.row_count(q.dbname)

    c.start()
    stack.wait_for("more rows", lambda: stack.row_count(q.dbname) >= at_kill + 60, timeout=60)
    rc, took = c.stop(signal.SIGTERM)
    assert rc == 0 and took < 10, f"SIGTERM mid-run: exit {rc} after {took:.1f} s (grace 10 s)"

    c.start()
    stack.wait_for("the queue drained", lambda: drained(q, len(valid), len(invalid)), timeout=120)
    # The queue may have drained before this run started (the one before
    # took the last batch): once the process catches SIGTERM, one during its
    # cold start or when idle ends it cleanly alike.
    stack.wait_for("SIGTERM caught", c.catches, timeout=30)
    rc, took = c.stop(signal.SIGTERM)
    assert rc == 0 and took < 10, f"SIGTERM when idle: exit {rc} after {took:.1f} s"
    print(f"\npoll: {len(messages)} messages; SIGKILL at {at_kill} rows; final SIGTERM exit after {took:.1f} s")

    rows = table(q)
    assert set(rows) == {m.message_id for m in valid}, "every valid message is exactly one row, no other"
    for m in valid:
        body = json.loads(m.body)
        user_id, masked_ip, masked_device, version = rows[m.message_id]
        assert user_id == body["user_id"] and version == body["app_version"]
        assert masked_ip == stack.token(key, stack.canonical_ip(body["ip"])), m.message_id
        assert masked_device == stack.token(key, body["device_id"].strip()), m.message_id

    copies = stack.dead_letters(q)
    by_source: dict[str, list[dict]] = {}
    for d in copies:
        by_source.setdefault(stack.dead_letter_attribute(d, "source_message_id"), []).append(d)
    assert set(by_source) == {m.message_id for m in invalid}, "every reject in the DLQ, nothing else"
    for m in invalid:
        for d in by_source[m.message_id]:
            assert stack.dead_letter_attribute(d, "rejection_code") == m.expect.removeprefix("reject:")
            assert not any(v in d["Body"] for v in stack.pii_in(m.body)), "the copy is masked"
    # A standard DLQ copy is at least once: SIGKILL between a DLQ send and the
    # delete sends it again on redelivery (same source_message_id, to
    # deduplicate by). Only a batch in flight at the kill can do that:
    # 2 batches of 10.
    extra = len(copies) - len(invalid)
    print(f"poll: {extra} reject(s) copied twice to the DLQ (in flight at the SIGKILL)")
    assert extra <= 20

    vault = int(stack.psql(stack.db_url(q.dbname), "SELECT count(*) FROM user_logins_pii_vault")[0][0])
    assert vault > 0, "the PII vault is written by the consumer too"
    # Metrics as in Lambda: EMF documents on stdout, kept at WARN.
    docs = [d for d in c.emf_documents() if d.get("message") == "batch processed"]
    assert docs and all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "LoginEtl" for d in docs)
    totals = c.metric_totals()
    # A batch whose COMMIT landed just before SIGKILL is counted again as duplicates.
    assert totals["RowsInserted"] <= len(valid) <= totals["RowsInserted"] + totals["Duplicates"]
    assert not any('"level":"ERROR"' in line for line in c.lines()), "no error line"


def test_fifo_order_is_kept_within_each_group_with_several_batches_in_flight(fifo_queues, consumers):
    q = fifo_queues
    key = secrets.token_bytes(32)
    groups = ["alpha", "beta", "gamma", "delta"]
    messages = stack.generate(80, 0, seed=2202)
    for i, m in enumerate(messages):
        m.group = groups[i % len(groups)]
    (bad,) = [m for m in stack.generate(2, 2, seed=1) if not m.valid]
    bad.group = "alpha"
    messages.insert(41, bad)  # mid-group: the group goes on after its DLQ copy
    stack.send(q, messages)
    c = stack.Consumer(q, key.hex(), LOGS / f"{RUN}-fifo.log", "--concurrency", "4", *FAST_STOP)
    consumers.append(c)
    c.start()
    stack.wait_for("the FIFO queue drained", lambda: drained(q, len(messages) - 1, 1), timeout=120)
    rc, _ = c.stop(signal.SIGTERM)
    assert rc == 0
    inserted = [r[0] for r in stack.psql(stack.db_url(q.dbname),
                                         "SELECT coalesce(message_id_text, message_id::text) FROM user_logins_rows "
                                         "ORDER BY xmin::text::bigint, ctid")]  # fmt: skip
    assert sorted(inserted) == sorted(m.message_id for m in messages if m.valid)
    for g in groups:
        sent = [m.message_id for m in messages if m.group == g and m.valid]
        assert [i for i in inserted if i in set(sent)] == sent, f"group {g} out of order"
    copies = stack.dead_letters(q)
    assert [stack.dead_letter_attribute(d, "source_message_id") for d in copies] == [bad.message_id]


def break_database(dbname: str) -> None:
    """The database itself refuses its roles (connection limit 0, every
    non-superuser session ended): what an exhausted or failing-over server
    does, not a cut wire."""
    url = stack.db_url(dbname)
    stack.psql(url, f'ALTER DATABASE "{dbname}" CONNECTION LIMIT 0')
    stack.psql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid() "
                    "AND usename <> current_user")  # fmt: skip


def mend_database(dbname: str) -> None:
    stack.psql(stack.db_url(dbname), f'ALTER DATABASE "{dbname}" CONNECTION LIMIT -1')


OUTAGE_S = 20


def test_an_outage_while_polling_dead_letters_nothing_valid_and_readiness_follows_the_database(
    outage_queues, consumers
):
    """Readiness comes once the database and the queue answered, goes when
    the database refuses connections, and comes back with it. The outage
    outlasts maxReceiveCount visibility timeouts: the backoff holds the
    messages, nothing valid reaches the DLQ, every row lands after it."""
    q = outage_queues
    port = stack.free_port()
    key = secrets.token_bytes(32)
    # LOGIN_ETL_E2E_NO_BACKOFF=1: the "before" figures (the test then fails).
    base = "0" if os.environ.get("LOGIN_ETL_E2E_NO_BACKOFF") == "1" else "2"
    c = stack.Consumer(q, key.hex(), LOGS / f"{RUN}-outage.log", "--health-addr", f"127.0.0.1:{port}", *FAST_STOP,
                       env={"BACKOFF_BASE_SECONDS": base, "BACKOFF_MAX_SECONDS": "16"})  # fmt: skip
    consumers.append(c)
    c.start()
    stack.wait_for("ready", lambda: stack.health(port)[0] == 200, timeout=30)
    assert stack.health(port, "/livez")[0] == 200

    messages = stack.generate(10, 10, seed=2203)
    valid = [m for m in messages if m.valid]
    break_database(q.dbname)
    try:
        stack.send(q, messages)
        went = stack.wait_for("not ready", lambda: stack.health(port)[0] == 503, timeout=20)
        status, body = stack.health(port)
        assert status == 503 and body["database"].startswith("down"), body
        time.sleep(max(0.0, OUTAGE_S - went))
    finally:
        mend_database(q.dbname)
    back = stack.wait_for("ready again", lambda: stack.health(port)[0] == 200, timeout=30)
    rows_s = stack.wait_for("every row", lambda: stack.row_count(q.dbname) >= len(valid), timeout=60)
    stack.wait_for("the queue drained", lambda: drained(q, len(valid), len(messages) - len(valid)), timeout=60)
    rc, _ = c.stop(signal.SIGTERM)
    dead = stack.dead_letters(q)
    print(f"\npoll outage {OUTAGE_S} s: not ready after {went:.1f} s, ready again {back:.1f} s after recovery, "
          f"last row {back + rows_s:.1f} s after recovery; {len(dead)} in the DLQ")  # fmt: skip
    # SQS moves a message as it is; the function's copy names its source.
    assert not [d for d in dead if d["Body"] in {m.body for m in valid}
                or stack.dead_letter_attribute(d, "source_message_id") in {m.message_id for m in valid}], "nothing valid in the DLQ"  # fmt: skip
    assert len(dead) == len(messages) - len(valid)
    assert set(table(q)) == {m.message_id for m in valid}
    assert rc == 0
    failed = [d for d in c.emf_documents() if d.get("message") == "batch failed"]
    # Every valid record of a failed batch was backed off. A batch can hold
    # only the reject (its DLQ copy sent, nothing to back off): in 1 run
    # of about 10 LocalStack handed it out alone.
    assert failed and sum(d["RecordsBackedOff"] for d in failed) > 0, "the backoff held the messages"
    # (backed off, or its visibility change not confirmed in time: then
    # redelivered after the visibility timeout, still nothing lost).
    assert all(d["RecordsBackedOff"] + d["VisibilityChangesFailed"] == d["RecordsReceived"] - d["Rejected"]
               for d in failed), failed  # fmt: skip


def test_the_heartbeat_keeps_a_slow_batch_invisible_until_it_is_written(outage_queues, consumers):
    """A batch blocked three times its 2 s visibility timeout (an admin holds
    an exclusive lock on the table) is not redelivered to the second worker
    meanwhile: each message is received once and written once."""
    blocked_batch_is_received_once(outage_queues, consumers, "heartbeat")


def test_the_heartbeat_keeps_its_leases_when_sqs_answers_slowly(outage_queues, consumers):
    """The same, with every byte between the consumer and SQS held 0.85 s
    each way: SQS answering slowly, as LocalStack does on a busy machine
    (what made this test's sibling flaky). A heartbeat timed from the
    answers (renew a third of the visibility after the last answer) let
    every lease run out by 0.37 s (1.7 s of round trip plus 0.67 s of beat),
    and the messages went to the other worker: 10 receives of 5 in 3 runs
    of 4 (4 of 4 at 0.9 s). Timed from the sending of the granting call, with the
    renewals not waiting for each other, the first renewal reaches SQS
    1.7 s into the lease (0.3 s to spare) and each later one 0.67 s after
    the one before."""
    link = stack.SlowLink(stack.ENDPOINT, SLOW_SQS_DELAY_S)
    try:
        c = blocked_batch_is_received_once(outage_queues, consumers, "slow-sqs",
                                           {"AWS_ENDPOINT_URL": link.endpoint})  # fmt: skip
    finally:
        link.close()
    late = [line for line in c.lines() if "was confirmed within the visibility timeout" in line]
    assert not late, late


def blocked_batch_is_received_once(q: stack.Stack, consumers, name: str, env: dict | None = None) -> stack.Consumer:
    key = secrets.token_bytes(32)
    c = stack.Consumer(q, key.hex(), LOGS / f"{RUN}-{name}.log", "--concurrency", "2",
                       "--batch-timeout", "15", "--grace-period", "20", env=env)  # fmt: skip
    consumers.append(c)
    # The lock is held until the test lets go of it, not for a fixed time:
    # a lock that ran out before the consumer had received the batch (a
    # slow long poll, a busy machine) let the batch through at once, and
    # the wait for it in flight never saw it (an earlier flake).
    lock = subprocess.Popen(["psql", stack.db_url(q.dbname), "-qX", "-v", "ON_ERROR_STOP=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        lock.stdin.write("BEGIN; LOCK TABLE user_logins_rows IN ACCESS EXCLUSIVE MODE;\n")
        lock.stdin.flush()
        stack.wait_for("the lock", lambda: stack.psql(stack.db_url(q.dbname),
                       "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                       "WHERE c.relname = 'user_logins_rows' AND l.mode = 'AccessExclusiveLock' AND l.granted")[0][0] == "1",
                       timeout=10)  # fmt: skip
        messages = stack.generate(5, 0, seed=2204)
        # Sent before the consumer starts, so its first receive finds them
        # all: sent to two workers already long-polling, LocalStack could
        # hand each one message, both block on the lock, and the other three
        # waited in the queue until both batches ran out of time and backed
        # off (7 receives of 5 in 1 run of 20 under load; another flake).
        stack.send(q, messages)
        c.start()
        stack.wait_for("the batch received", lambda: stack.queue_depth(q.queue_url) == (0, len(messages)), timeout=20)
        # While the batch is blocked, three times its visibility timeout:
        # never visible again (SQS would hand it to the other worker).
        visible_seen = 0
        blocked_until = time.monotonic() + 6
        while time.monotonic() < blocked_until:
            visible_seen = max(visible_seen, stack.queue_depth(q.queue_url)[0])
            time.sleep(0.2)
        lock.stdin.write("COMMIT;\n")
        lock.stdin.close()
        written_by = time.monotonic() + 60
        while stack.row_count(q.dbname) < len(messages):
            assert time.monotonic() < written_by, "the batch was not written within 60 s of the lock's release"
            visible_seen = max(visible_seen, stack.queue_depth(q.queue_url)[0])
            time.sleep(0.2)
    finally:
        if not lock.stdin.closed:
            lock.stdin.close()
        lock.wait(timeout=30)
    rc, _ = c.stop(signal.SIGTERM)
    assert rc == 0
    assert set(table(q)) == {m.message_id for m in messages}
    totals = c.metric_totals()
    print(f"\npoll {name}: {totals.get('RecordsReceived', 0):.0f} receives of {len(messages)} messages, "
          f"longest batch {max(d['BatchDurationMs'] for d in c.emf_documents() if 'BatchDurationMs' in d)} ms")  # fmt: skip
    assert max(d["BatchDurationMs"] for d in c.emf_documents() if "BatchDurationMs" in d) > 4000, "the lock held the batch"
    assert not [d for d in c.emf_documents() if d.get("BatchFailed")], "no batch ran out of time"
    assert visible_seen == 0, f"{visible_seen} message(s) visible again while their batch was in flight"
    assert totals["RecordsReceived"] == len(messages) and totals["Duplicates"] == 0, "no redelivery while in flight"
    assert sum(stack.queue_depth(q.dlq_url)) == 0
    return c


def printed_statements(output: str, **arns: str) -> list[dict]:
    """The policy statements the template prints in `output` for an
    existing queue (docs/existing-queue.md), its `${...}` filled in."""
    text = (ROOT / "template.yaml").read_text().split(f"\n  {output}:\n", 1)[1]
    value = "[{" + text.split("[{", 1)[1].split("}]", 1)[0] + "}]"
    for name, arn in arns.items():
        value = value.replace("${%s}" % name, arn)
    assert "${" not in value, value
    return json.loads(" ".join(value.split()))


def test_doctor_holds_the_queues_redrive_against_the_backoff_and_finds_its_dlq(standard_queues):
    """`login-etl doctor --queue-url`: queues whose policies leave them open
    (to other readers, to plain HTTP, the DLQ to SQS's redrive) are named,
    each with the stack output whose statements close them, and with those
    statements nothing is; the fixture's queue's 5 s visibility
    timeout is under what the function needs, named with the fix; its
    redrive (maxReceiveCount 5,
    the default backoff) rides out far less than 30 minutes of outage, named
    with the count that would; with that count, nothing; without a
    RedrivePolicy, named; its dead-letter queue deleted, named by its ARN;
    each with exit 1, no finding on the database. A receive Deny that
    exempts a principal besides the consumer (an SSO role) is open, and
    named; with deploy principals given, a policy that does not refuse
    SetQueueAttributes and AddPermission to the rest is named. Without a
    database configured, the queue alone is checked."""
    q = standard_queues
    sqs = stack.client("sqs")
    arn_of = lambda url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]  # noqa: E731
    queue_arn, dlq_arn = arn_of(q.queue_url), arn_of(q.dlq_url)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA")}, **stack.LOCAL_ENV,
           "AWS_REGION": stack.REGION, "DATABASE_URL": stack.role_url(q.dbname, "migrate")}  # fmt: skip
    bootstrap = stack.BUILD_DIR / "LoginEtlFunction" / "bootstrap"

    role = "arn:aws:iam::000000000000:role/login-etl-function"

    def doctor(*flags: str, environ: dict | None = None) -> tuple[int, list[dict]]:
        out = subprocess.run([str(bootstrap), "doctor", "--json", "--queue-url", q.queue_url, "--function-role-arn", role,
                              *flags], env=environ or env, capture_output=True, text=True, timeout=60)  # fmt: skip
        report = json.loads(out.stdout)
        assert "queue" in report["checks"], out.stdout + out.stderr
        assert [f for f in report["findings"] if f["check"] != "queue"] == [], report
        return out.returncode, [f for f in report["findings"] if f["check"] == "queue"]

    code, found = doctor()
    opened = {(f["subject"], f["problem"].split(":")[0], f["fix"].split("statements of the stack's output ")[-1].split()[0])
              for f in found if "its policy" in f["problem"]}  # fmt: skip
    receive, tls, move = ("its policy does not refuse ReceiveMessage to other principals",
                          "its policy does not refuse requests without TLS (aws", "its policy does not refuse sqs")  # fmt: skip
    assert opened == {(q.queue_url, receive, "ExistingQueuePolicyStatements"), (q.queue_url, tls, "ExistingQueuePolicyStatements"),
                      (q.dlq_url, receive, "ExistingDlqPolicyStatements"), (q.dlq_url, tls, "ExistingDlqPolicyStatements"),
                      (q.dlq_url, move, "ExistingDlqPolicyStatements")}, found  # fmt: skip
    # What the stack prints for these queues closes them.
    for url, output, arns in ((q.queue_url, "ExistingQueuePolicyStatements", {"ExistingQueueArn": queue_arn, "LoginEtlRole.Arn": role}),
                              (q.dlq_url, "ExistingDlqPolicyStatements", {"ExistingDlqArn": dlq_arn, "LoginEtlRole.Arn": role, "Consumer": role})):  # fmt: skip
        policy = {"Version": "2012-10-17", "Statement": printed_statements(output, **arns)}
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    code, found = doctor()
    assert not [f for f in found if "its policy" in f["problem"]], found
    # The queue alone: no database configured, nothing else examined.
    queue_only = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "DB_SECRET_ID", "PGHOST")}
    assert doctor(environ=queue_only) == (code, found)
    # An SSO role exempted beside the function's: open to it, named.
    sso = "arn:aws:iam::000000000000:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123"
    kept_policy = sqs.get_queue_attributes(QueueUrl=q.queue_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    widened = json.loads(kept_policy)
    for st in widened["Statement"]:
        if st.get("Condition", {}).get("StringNotEquals", {}).get("aws:PrincipalArn") == role and "sqs:ReceiveMessage" in st["Action"]:
            st["Condition"]["StringNotEquals"]["aws:PrincipalArn"] = [role, sso]
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={"Policy": json.dumps(widened)})
    code, found = doctor()
    [exempts] = [f for f in found if "its policy" in f["problem"]]
    assert f"exempts {sso} besides {role}" in exempts["problem"] and exempts["subject"] == q.queue_url, exempts
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={"Policy": kept_policy})
    # With deploy principals: the printed statements leave rewriting open.
    code, found = doctor("--deploy-principal-arn", "arn:aws:iam::000000000000:role/ci-deploy")
    rewrite = {(f["subject"], f["problem"].split(" to principals")[0]) for f in found if "rewrites this policy" in f["problem"]}
    assert rewrite == {(u, f"its policy does not refuse sqs:{a}") for u in (q.queue_url, q.dlq_url)
                       for a in ("SetQueueAttributes", "AddPermission")}, found  # fmt: skip
    # The fixture's 5 s visibility is under what the function (30 s, the
    # default) needs: named, with the setting that fixes it.
    [visibility] = [f for f in found if "visibility timeout is 5 s" in f["problem"]]
    assert "VisibilityTimeout=210" in visibility["fix"], visibility
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={"VisibilityTimeout": "210"})
    code, found = doctor()
    assert code == 1 and len(found) == 1 and "maxReceiveCount 5" in found[0]["problem"], found
    enough = int(found[0]["fix"].split("maxReceiveCount to ")[1].split()[0])
    assert enough > 5
    policy = lambda n: json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": n})  # noqa: E731
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={"RedrivePolicy": policy(enough)})
    assert doctor() == (0, [])
    # Held to the stack's own count (its output QueueMinReceiveCount, what
    # its setup holds an existing queue to): named, with that count.
    code, found = doctor("--min-receive-count", str(enough + 4))
    assert code == 1 and len(found) == 1 and f"maxReceiveCount is {enough}" in found[0]["problem"], found
    assert f'\\"maxReceiveCount\\":\\"{enough + 4}\\"' in found[0]["fix"], found[0]["fix"]
    assert doctor("--min-receive-count", str(enough)) == (0, [])
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={"RedrivePolicy": ""})
    code, found = doctor()
    assert code == 1 and "no RedrivePolicy" in found[0]["problem"], found
    # A policy whose dead-letter queue was deleted after it was set.
    gone = sqs.create_queue(QueueName=f"{q.dbname}-gone-dlq")["QueueUrl"]
    gone_arn = sqs.get_queue_attributes(QueueUrl=gone, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=q.queue_url, Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": gone_arn, "maxReceiveCount": enough})})  # fmt: skip
    sqs.delete_queue(QueueUrl=gone)
    code, found = doctor()
    assert code == 1 and len(found) == 1, found
    assert found[0]["subject"] == gone_arn and "dead-letter queue was not found" in found[0]["problem"], found
