"""A python3.x Lambda runtime for the host executor: the Runtime API loop that
Lambda's Python images run (awslambdaric), as much of it as an inline
CloudFormation function needs (the release template's copier). It imports
`_HANDLER` (module.function) from LAMBDA_TASK_ROOT, takes each event from
`invocation/next`, and posts the handler's result, or its error, back.

Started by the host executor with LocalStack's own Python, which has boto3
as Lambda's Python runtimes do."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import urllib.request

BASE = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"


class Context:
    def __init__(self, request_id: str, deadline_ms: int, arn: str) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def post(path: str, body: bytes) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{BASE}/{path}", data=body, method="POST")).close()


def error(e: BaseException) -> bytes:
    return json.dumps({"errorType": type(e).__name__, "errorMessage": str(e),
                       "stackTrace": traceback.format_exception(e)}).encode()  # fmt: skip


def main() -> None:
    sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
    module, function = os.environ["_HANDLER"].rsplit(".", 1)
    try:
        handler = getattr(importlib.import_module(module), function)
    except Exception as e:
        traceback.print_exc()
        post("init/error", error(e))
        sys.exit(1)
    while True:
        with urllib.request.urlopen(f"{BASE}/invocation/next") as r:
            request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
            context = Context(request_id, int(r.headers["Lambda-Runtime-Deadline-Ms"]),
                              r.headers["Lambda-Runtime-Invoked-Function-Arn"])  # fmt: skip
            event = json.loads(r.read() or b"null")
        try:
            result = handler(event, context)
        except Exception as e:
            traceback.print_exc()
            post(f"invocation/{request_id}/error", error(e))
            continue
        post(f"invocation/{request_id}/response", json.dumps(result).encode())


if __name__ == "__main__":
    main()
