#!/usr/bin/env python3
"""`make bench` step [5/5]: `login-etl poll`'s throughput in messages/s at
concurrency 1, 2 and 4, against LocalStack's SQS and the local PostgreSQL,
beside what the emulator itself serves to a consumer that does nothing
(receive 10 + delete 10, the same number of workers): where the two are
close, the emulator is the limit, not login-etl.

Each run: a fresh queue holding N messages (sent before the clock starts),
the consumer started, the clock stopped when every row is in and the queue
is empty. The consumer's own start (schema check, first long poll) is
inside the figure; it is under a second.

Beside each rate, the consumer's CPU per 1,000 messages: the user and
system time of the `login-etl poll` process (/proc/PID/stat) when every row
is in, divided by the messages. It counts login-etl's own work (validation,
masking, the write, the SQS client), not the emulator's, so it does not
depend on how fast LocalStack answers. The consumer runs on a runtime of
one worker thread per CPU (`--threads`, default), built with the release profile.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "localstack"))
import stack  # noqa: E402

N = int(os.environ.get("POLL_BENCH_MESSAGES", "2000"))
RUN = f"bench{os.getpid()}"


def emulator_rate(queues: stack.Stack, workers: int) -> float:
    """Messages/s LocalStack serves to `workers` consumers that only receive and delete."""
    done = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal done
        sqs = stack.client("sqs")
        while True:
            got = sqs.receive_message(QueueUrl=queues.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            if not got:
                return
            sqs.delete_message_batch(QueueUrl=queues.queue_url,
                                     Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])  # fmt: skip
            with lock:
                done += len(got)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / (time.monotonic() - started - 1.0)  # minus the last, empty 1 s poll


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ours = not stack.localstack_running()
    if ours:
        subprocess.run([str(ROOT / "localstack" / "up.sh")], check=True, timeout=180)
    # The CPU column is the release build's (the debug build's is several
    # times higher): built here, and packaged in place of make demo's.
    subprocess.run(["cargo", "build", "--release", "--bin", "login-etl"], cwd=ROOT,
                   env={**os.environ, **stack.HOST_BUILD_ENV}, check=True)  # fmt: skip
    os.environ["LOGIN_ETL_PREBUILT"] = str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "login-etl")
    stack.build()
    dbname = f"login_etl_{RUN}"
    stack.drop_database(dbname)
    stack.create_database(dbname)
    stack.prepare_database(dbname)
    messages = stack.generate(N, 0, seed=5)
    # One masking key for every run: the database records the first one's
    # check value and refuses any other (key_mismatch), as in production.
    key = secrets.token_hex(32)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())  # fmt: skip
    print(f"{N} valid messages per run; {os.cpu_count()} cores, {cpu}; LocalStack and PostgreSQL on this machine")
    print(f"{'concurrency':>11}  {'login-etl poll':>15}  {'emulator alone':>15}  {'ratio':>6}  {'poll CPU per 1,000':>18}")
    try:
        for concurrency in (1, 2, 4):
            q = stack.make_queues(f"login-etl-{RUN}-c{concurrency}", dbname, visibility=30)
            stack.psql(stack.db_url(dbname), "TRUNCATE user_logins")
            stack.send(q, messages)
            c = stack.Consumer(q, key, ROOT / "target" / f"{RUN}-c{concurrency}.log",
                               "--concurrency", str(concurrency))  # fmt: skip
            started = time.monotonic()
            c.start()
            try:
                stack.wait_for("every row", lambda: stack.row_count(dbname) >= N and sum(stack.queue_depth(q.queue_url)) == 0,
                               timeout=600)  # fmt: skip
                took = time.monotonic() - started
                assert c.proc is not None
                used = cpu_seconds(c.proc.pid)
            finally:
                c.kill()
            ours_rate = N / took
            stack.send(q, messages)
            raw = emulator_rate(q, concurrency)
            print(f"{concurrency:>11}  {ours_rate:>11.0f} m/s  {raw:>11.0f} m/s  {ours_rate / raw:>6.2f}"
                  f"  {used / N * 1_000_000:>15.0f} ms", flush=True)  # fmt: skip
            stack.delete_queues(q)
    finally:
        stack.drop_database(dbname)
        if ours:
            subprocess.run([str(ROOT / "localstack" / "down.sh")], check=False, timeout=60)
    print("ratio near 1: the emulator is the limit (each receive and delete is an HTTP call to LocalStack's Python);")
    print("well below 1: login-etl's own work (validation, masking, the write) is.")
    print("poll CPU per 1,000: user + system time of the consumer process per 1,000 messages (its own work,")
    print("whatever the emulator's speed); the cores it needs for a rate R m/s: R / 1,000 x that figure / 1 s.")


if __name__ == "__main__":
    main()
