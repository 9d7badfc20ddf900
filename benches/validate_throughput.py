#!/usr/bin/env python3
"""`make bench-validate`: `login-etl validate`'s throughput on JSON Lines of
message bodies, beside the parser's own cost, one core.

Writes VALIDATE_BENCH_LINES bodies (default 2,000,000: realistic logins from
`login-etl gen-events`, every 10th invalid) to a file, then times
`login-etl validate FILE` (release build, output to /dev/null) three times
and prints the median: lines per second, and nanoseconds per line beside
criterion's per-record parse time of benches/transform.rs (`per_record/parse`)
if given in PARSE_NS. The gap between the two is validate's own work:
reading the lines and writing one verdict each.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "login-etl"
LINES = int(os.environ.get("VALIDATE_BENCH_LINES", "2000000"))


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "login-etl"], cwd=ROOT, check=True)
    event = subprocess.run([str(BINARY), "gen-events", "--count", "10000", "--invalid-every", "10", "--seed", "7"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    bodies = [m["body"].replace("\n", " ") for m in json.loads(event.stdout)["Records"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bodies.jsonl"
        with open(path, "w") as f:
            for i in range(LINES):
                f.write(bodies[i % len(bodies)] + "\n")
        size = path.stat().st_size
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            done = subprocess.run([str(BINARY), "validate", str(path)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
            runs.append(time.perf_counter() - started)
            assert done.returncode in (0, 1), done.stderr
        took = statistics.median(runs)
    print(f"validate: {LINES:,} lines ({size / 1e6:.0f} MB) in {took:.2f} s (median of 3): "
          f"{LINES / took:,.0f} lines/s, {took / LINES * 1e9:.0f} ns/line, one core of {cpu()}")  # fmt: skip
    if parse_ns := os.environ.get("PARSE_NS"):
        print(f"validate: the parser alone (criterion per_record/parse) {parse_ns} ns/body: "
              f"validate's own work {took / LINES * 1e9 - float(parse_ns):.0f} ns/line")  # fmt: skip
    print(f"validate: {done.stderr.strip()}")


if __name__ == "__main__":
    main()
