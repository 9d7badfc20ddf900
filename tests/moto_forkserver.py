"""moto servers for the Rust tests, forked from one warm process.

Each test wants a moto of its own (its queues, secrets and keys apart from
every other test's), and a cold `moto_server` spends about a second of CPU
importing moto, Flask and botocore's service models before it serves. This
process imports them once, listens on a Unix socket, and for each client
forks a child that serves on a fresh 127.0.0.1 port: state is per process,
so each child is as separate as a server of its own, and starts in
milliseconds. The client reads one line, "<port> <pid>", and closes its
connection when it is done (tests/common/moto.rs): the child watches it and
exits, which closes the child's end in turn (the client waits for that).

    python tests/moto_forkserver.py SOCKET_PATH
"""

import os
import signal
import socket
import sys
import threading

from werkzeug.serving import make_server

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

def warm() -> None:
    """One request to each service the tests call: imported (and their
    botocore models loaded) here, once, instead of in every child on its
    first request."""
    from werkzeug.test import Client

    client = Client(DomainDispatcherApplication(create_backend_app))
    for service, target in (("sqs", "AmazonSQS.ListQueues"), ("secretsmanager", "secretsmanager.ListSecrets"),
                            ("kms", "TrentService.ListKeys"), ("sts", None)):
        auth = f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
        headers = {"Authorization": auth, "Content-Type": "application/x-amz-json-1.0" if target else "application/x-www-form-urlencoded"}
        if target:
            headers["X-Amz-Target"] = target
            client.post("/", headers=headers, data="{}")
        else:
            client.post("/", headers=headers, data="Action=GetCallerIdentity&Version=2011-06-15")


def serve_child(conn: socket.socket) -> None:
    # moto's ids (keys, ARNs' suffixes, receipt handles) come from its own
    # random generator: reseeded, or every fork would draw the same ones.
    from moto.moto_api._internal import mock_random

    mock_random.seed()
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.port)  # what moto writes into queue URLs
    conn.sendall(f"{server.port} {os.getpid()}\n".encode())

    def watch() -> None:  # the client closed its end (or died): stop
        conn.recv(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    server.serve_forever()


def main() -> None:
    path = sys.argv[1]
    warm()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Listening before the socket has its name: a client that sees the
    # file can connect (tests/with-moto-forkserver waits for it).
    bound = f"{path}.{os.getpid()}"
    listener.bind(bound)
    listener.listen(64)
    os.rename(bound, path)
    print(f"moto fork server on {path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            child = os.fork()
        except OSError as e:  # no process to spare now: this client fails, the next may not
            print(f"fork failed: {e}", file=sys.stderr, flush=True)
            conn.close()
            continue
        if child == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                serve_child(conn)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    main()
