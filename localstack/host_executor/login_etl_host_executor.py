"""A LocalStack Lambda runtime executor that runs a function's `bootstrap` as a
host process, for machines without a Docker engine.

LocalStack's stock executor starts a container per execution environment and
puts its own runtime-init inside it; that init serves the Lambda Runtime API to
the function and reports back to LocalStack. This plugin does the same job in
the LocalStack process itself:

* `start()` opens a Runtime API server on 127.0.0.1 (a free port), starts
  `<code>/bootstrap` with LocalStack's environment for the function plus
  `AWS_LAMBDA_RUNTIME_API`, and returns once the bootstrap asks for its first
  invocation (`GET .../invocation/next`): that is the end of Lambda's init phase.
* `invoke()` hands the event to the waiting `next` request and blocks until the
  bootstrap posts `.../response` or `.../error`, or the function timeout passes
  (then the process is killed, as Lambda does, and the error says so). The
  bootstrap's stdout/stderr of that invocation go back to LocalStack, which
  stores them in CloudWatch Logs.
* If the bootstrap exits (crash, panic, timeout kill), the next invocation starts
  it again: a fresh init, like a new execution environment in Lambda.

Selected with `LAMBDA_RUNTIME_EXECUTOR=host` once this package is installed in
LocalStack's venv (`make localstack-up` does both).

With `LOGIN_ETL_DB_ADDRESS` set in LocalStack's environment (make test-dist
sets it), every function gets `PGHOSTADDR` at that address: what a VPC's
DNS does for an RDS endpoint's name, which the host's cannot resolve.

Limits, on purpose (this is a test harness, not a sandbox):
* no isolation: the bootstrap runs as the LocalStack user, sees the host's
  filesystem and network, and shares its /tmp;
* no memory limit (`MemorySize` is only passed on as an environment variable);
* the bootstrap must be built for the host's CPU: an arm64 package on an x86_64
  host makes the function `Failed` with a message saying so;
* `provided.*` runtimes with a `bootstrap` file in the package, and `python3.*`
  runtimes (login_etl_python_runtime.py, with LocalStack's own Python and its
  boto3: what the release template's inline copier needs), are supported.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from plux import Plugin

LOG = logging.getLogger(__name__)

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
# ELF e_machine values of the two Lambda architectures.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}
PYTHON_RUNTIME = Path(__file__).with_name("login_etl_python_runtime.py")
HOST_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
STOP_GRACE_SECONDS = 2.0


class HostRuntimeExecutorPlugin(Plugin):
    """Entry point: `LAMBDA_RUNTIME_EXECUTOR=host`."""

    namespace = "localstack.lambda.runtime_executor"
    name = "host"

    def load(self, *args, **kwargs):
        return _executor_class()


def elf_machine(path: Path) -> str | None:
    """The CPU an ELF executable is built for, or None if it is not ELF (a script)."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    little_endian = header[5] == 1
    machine = int.from_bytes(header[18:20], "little" if little_endian else "big")
    return ELF_MACHINES.get(machine, f"ELF machine 0x{machine:x}")


@dataclass
class _Invocation:
    request_id: str
    body: bytes
    function_arn: str
    trace_id: str
    deadline_ms: int
    log_offset: int
    result: Future = field(default_factory=Future)


def _executor_class():
    # LocalStack modules are imported only when LocalStack loads the plugin.
    from localstack.services.lambda_.invocation.executor_endpoint import StatusErrorException
    from localstack.services.lambda_.invocation.lambda_models import InvocationResult
    from localstack.services.lambda_.invocation.runtime_executor import (
        LambdaRuntimeException,
        RuntimeExecutor,
    )

    def error_payload(error_type: str, message: str) -> bytes:
        return json.dumps({"errorType": error_type, "errorMessage": message}).encode()

    class HostRuntimeExecutor(RuntimeExecutor):
        """One execution environment = one bootstrap process + one Runtime API server."""

        def __init__(self, id: str, function_version) -> None:
            super().__init__(id=id, function_version=function_version)
            self._env: dict[str, str] = {}
            self._process: subprocess.Popen | None = None
            self._server: ThreadingHTTPServer | None = None
            self._pending: queue.Queue[_Invocation | None] = queue.Queue()
            self._in_flight: dict[str, _Invocation] = {}
            self._ready = threading.Event()
            self._init_error: bytes | None = None
            self._stopped = threading.Event()
            self._lock = threading.Lock()
            log_dir = Path(tempfile.gettempdir()) / "login-etl-host-executor"
            log_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = log_dir / f"{id}.log"

        # -- lifecycle --------------------------------------------------------

        def start(self, env_vars: dict[str, str]) -> None:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
            self._server.daemon_threads = True
            threading.Thread(
                target=self._server.serve_forever, name=f"runtime-api-{self.id}", daemon=True
            ).start()
            code = Path(self.function_version.config.code.get_unzipped_code_location())
            # Only the function's own environment: nothing of LocalStack's (its
            # credentials, its config) leaks into the process.
            self._env = {k: str(v) for k, v in env_vars.items() if v is not None}
            self._env.update(
                AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{self._server.server_address[1]}",
                LAMBDA_TASK_ROOT=str(code),
                LAMBDA_RUNTIME_DIR=str(code),
                PATH=os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            )
            if os.environ.get("LOGIN_ETL_DB_ADDRESS"):
                self._env.setdefault("PGHOSTADDR", os.environ["LOGIN_ETL_DB_ADDRESS"])
            self._command = [str(code / "bootstrap")]
            if str(getattr(self.function_version.config, "runtime", "") or "").startswith("python"):
                self._command = [sys.executable, str(PYTHON_RUNTIME)]
                self._env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
            self._spawn()

        def _spawn(self) -> None:
            """Start the bootstrap and wait for its first `next` (end of init)."""
            code = Path(self._env["LAMBDA_TASK_ROOT"])
            # A fresh queue per process: a `next` of a dead process that is still
            # parked on the old queue must not take this process's invocations.
            old, self._pending = self._pending, queue.Queue()
            old.put(None)
            self._ready.clear()
            self._init_error = None
            log = open(self._log_path, "ab")
            try:
                self._process = subprocess.Popen(
                    self._command,
                    cwd=code,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as one
                )
            finally:
                log.close()
            LOG.info("host executor %s: started bootstrap pid %s", self.id, self._process.pid)
            while not self._ready.wait(0.02):
                rc = self._process.poll()
                if self._stopped.is_set():
                    raise LambdaRuntimeException("execution environment stopped during init")
                if rc is not None or self._init_error is not None:
                    tail = self._log_tail()
                    message = (
                        f"bootstrap exited with status {rc} during init"
                        if rc is not None
                        else "bootstrap reported an init error"
                    )
                    LOG.warning("host executor %s: %s; last output:\n%s", self.id, message, tail)
                    payload = self._init_error or error_payload(
                        "Runtime.ExitError", f"{message}. Last output: {tail}"
                    )
                    self._kill()
                    raise StatusErrorException(message, payload=payload)

        def stop(self) -> None:
            self._stopped.set()
            self._kill()
            self._pending.put(None)  # release a waiting `next`
            with self._lock:
                for inv in self._in_flight.values():
                    if not inv.result.done():
                        inv.result.cancel()
            if self._server:
                self._server.shutdown()
                self._server.server_close()

        def _kill(self) -> None:
            proc = self._process
            if proc is None or proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

        # -- invocations ------------------------------------------------------

        def invoke(self, payload: dict[str, str]):
            if self._process is None or self._process.poll() is not None:
                LOG.info("host executor %s: bootstrap is not running; starting it again", self.id)
                self._spawn()
            timeout = int(self.function_version.config.timeout)
            inv = _Invocation(
                request_id=payload["invoke-id"],
                body=payload["payload"].encode(),
                function_arn=payload["invoked-function-arn"],
                trace_id=payload.get("trace-id", ""),
                deadline_ms=int((time.time() + timeout) * 1000),
                log_offset=self._log_size(),
            )
            with self._lock:
                self._in_flight[inv.request_id] = inv
            self._pending.put(inv)
            try:
                while True:
                    try:
                        return inv.result.result(timeout=0.1)
                    except FutureTimeout:
                        pass
                    if time.time() * 1000 >= inv.deadline_ms:
                        # Lambda kills the runtime of a timed-out invocation; so do we.
                        self._kill()
                        error = ("Sandbox.Timedout", f"Task timed out after {timeout}.00 seconds")
                    elif (rc := self._process.poll()) is not None:
                        error = ("Runtime.ExitError", f"bootstrap exited with status {rc} during the invocation")
                    else:
                        continue
                    LOG.warning("host executor %s: %s", self.id, error[1])
                    return InvocationResult(
                        inv.request_id,
                        error_payload(*error),
                        is_error=True,
                        logs=self._logs_since(inv.log_offset),
                    )
            finally:
                with self._lock:
                    self._in_flight.pop(inv.request_id, None)

        def _complete(self, request_id: str, body: bytes, is_error: bool) -> bool:
            with self._lock:
                inv = self._in_flight.get(request_id)
            if inv is None or inv.result.done():
                return False
            inv.result.set_result(
                InvocationResult(request_id, body, is_error=is_error, logs=self._logs_since(inv.log_offset))
            )
            return True

        # -- logs ---------------------------------------------------------------

        def _log_size(self) -> int:
            try:
                return self._log_path.stat().st_size
            except FileNotFoundError:
                return 0

        def _logs_since(self, offset: int) -> str:
            # The bootstrap writes its log lines before it posts the response,
            # so they are in the file by the time we read it.
            try:
                with open(self._log_path, "rb") as f:
                    f.seek(offset)
                    return f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return ""

        def _log_tail(self, limit: int = 2000) -> str:
            return self._logs_since(max(0, self._log_size() - limit))

        def get_logs(self) -> str:
            return self._logs_since(0)

        # -- addresses ------------------------------------------------------------

        def get_address(self) -> str:
            return "127.0.0.1"

        def get_endpoint_from_executor(self) -> str:
            # The process runs on the host, where LocalStack listens on 127.0.0.1.
            return "127.0.0.1"

        def get_runtime_endpoint(self) -> str:
            from localstack import config

            return f"http://127.0.0.1:{config.GATEWAY_LISTEN[0].port}/_localstack_lambda/{self.id}"

        # -- versions -------------------------------------------------------------

        @classmethod
        def prepare_version(cls, function_version) -> None:
            code = function_version.config.code
            if not code:
                raise LambdaRuntimeException("the host executor runs zip packages only, not images")
            code.prepare_for_execution()
            if str(getattr(function_version.config, "runtime", "") or "").startswith("python"):
                module = function_version.config.handler.rsplit(".", 1)[0]
                if not (Path(code.get_unzipped_code_location()) / f"{module}.py").is_file():
                    raise LambdaRuntimeException(f"the package has no {module}.py for the handler {function_version.config.handler}")
                return
            bootstrap = Path(code.get_unzipped_code_location()) / "bootstrap"
            if not bootstrap.is_file():
                raise LambdaRuntimeException(
                    "the package has no 'bootstrap' file: the host executor runs provided.* runtimes only"
                )
            machine = elf_machine(bootstrap)
            if machine is not None and machine != HOST_MACHINE:
                raise LambdaRuntimeException(
                    f"bootstrap is built for {machine} but this host is {HOST_MACHINE}: "
                    f"package a bootstrap built for the host (see docs/development.md, section LocalStack)"
                )
            bootstrap.chmod(0o755)

        @classmethod
        def cleanup_version(cls, function_version) -> None:
            pass

        @classmethod
        def validate_environment(cls) -> bool:
            return True

    return HostRuntimeExecutor


def _handler_for(executor) -> type[BaseHTTPRequestHandler]:
    """The Lambda Runtime API, as the bootstrap's runtime client calls it."""

    class RuntimeApiHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real Runtime API

        def log_message(self, format, *args):  # quiet: LocalStack logs enough
            LOG.debug("runtime api %s: " + format, executor.id, *args)

        def _reply(self, status: HTTPStatus, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            if self.path != f"{RUNTIME_API_PREFIX}/invocation/next":
                return self._reply(HTTPStatus.NOT_FOUND, b'{"errorMessage":"unknown path"}')
            executor._ready.set()
            inv = executor._pending.get()
            if inv is None:  # stopping
                self.close_connection = True
                return self._reply(HTTPStatus.GONE, b'{"errorMessage":"environment stopped"}')
            self._reply(
                HTTPStatus.OK,
                inv.body,
                {
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
                    "Lambda-Runtime-Trace-Id": inv.trace_id,
                },
            )

        def do_POST(self):
            body = self._body()
            parts = self.path[len(RUNTIME_API_PREFIX) :].strip("/").split("/")
            if parts == ["init", "error"]:
                executor._init_error = body
                return self._reply(HTTPStatus.ACCEPTED, b'{"status":"OK"}')
            if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                if executor._complete(parts[1], body, is_error=parts[2] == "error"):
                    return self._reply(HTTPStatus.ACCEPTED, b'{"status":"OK"}')
                return self._reply(HTTPStatus.BAD_REQUEST, b'{"errorMessage":"unknown or finished request id"}')
            return self._reply(HTTPStatus.NOT_FOUND, b'{"errorMessage":"unknown path"}')

    return RuntimeApiHandler
