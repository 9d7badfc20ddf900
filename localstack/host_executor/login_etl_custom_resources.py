"""CloudFormation's side of a Lambda-backed custom resource, for LocalStack's
community edition (which has none: custom resources are a paid feature).

For each Create, Update and Delete of a `Custom::*` resource this provider
does what CloudFormation does: it makes a pre-signed S3 PUT URL (in
LocalStack's S3), invokes the `ServiceToken` function asynchronously with
the request (`RequestType`, `ResponseURL`, `StackId`, `RequestId`,
`LogicalResourceId`, `PhysicalResourceId`, `ResourceProperties`,
`OldResourceProperties`), waits for the function's answer to appear at
that URL, and reads it: `SUCCESS` makes the resource, its `Data` keys its
attributes (`Fn::GetAtt`); `FAILED` fails the stack operation with the
answer's `Reason`. No answer within the timeout fails it too, as
CloudFormation's hour would.

Registered for `AWS::CloudFormation::CustomResource` (LocalStack maps every
`Custom::*` type to it) through the entry point in pyproject.toml.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from localstack import config
from localstack.aws.connect import connect_to
from localstack.services.cloudformation.resource_provider import (
    CloudFormationResourceProviderPlugin,
    OperationStatus,
    ProgressEvent,
    ResourceProvider,
    ResourceRequest,
)

LOG = logging.getLogger(__name__)

BUCKET = "login-etl-cfn-responses"
# Seconds to wait for the function's answer (CloudFormation waits an hour).
ANSWER_TIMEOUT = float(os.environ.get("LOGIN_ETL_CUSTOM_RESOURCE_TIMEOUT", "600"))


class CustomResourceProvider(ResourceProvider[dict]):
    TYPE = "AWS::CloudFormation::CustomResource"
    SCHEMA = {
        "typeName": TYPE,
        "primaryIdentifier": ["/properties/PhysicalResourceId"],
        "properties": {"PhysicalResourceId": {"type": "string"}},
    }

    def create(self, request: ResourceRequest[dict]) -> ProgressEvent[dict]:
        return self._ask(request, "Create")

    def update(self, request: ResourceRequest[dict]) -> ProgressEvent[dict]:
        return self._ask(request, "Update")

    def delete(self, request: ResourceRequest[dict]) -> ProgressEvent[dict]:
        return self._ask(request, "Delete")

    def read(self, request: ResourceRequest[dict]) -> ProgressEvent[dict]:
        raise NotImplementedError

    def _ask(self, request: ResourceRequest[dict], kind: str) -> ProgressEvent[dict]:
        properties = {k: v for k, v in (request.desired_state or {}).items() if k != "PhysicalResourceId"}
        previous = request.previous_state or {}
        s3 = request.aws_client_factory.s3
        try:
            s3.create_bucket(Bucket=BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        key = f"{request.stack_name}/{request.logical_resource_id}/{uuid.uuid4()}"
        # Signed for the origin the functions' SDK is pointed at (their
        # AWS_ENDPOINT_URL, the host executor's 127.0.0.1): the setup
        # function answers CloudFormation's bucket only, here that origin.
        functions_s3 = connect_to(
            region_name=request.region_name, endpoint_url=f"http://127.0.0.1:{config.GATEWAY_LISTEN[0].port}"
        ).s3
        url = functions_s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=7200)
        event = {
            "RequestType": kind,
            "ServiceToken": properties.get("ServiceToken"),
            "ResponseURL": url,
            "StackId": request.stack_id,
            "RequestId": str(uuid.uuid4()),
            "LogicalResourceId": request.logical_resource_id,
            "ResourceType": request.resource_type,
            "ResourceProperties": _strings(properties),
        }
        if kind != "Create":
            event["PhysicalResourceId"] = previous.get("PhysicalResourceId") or (request.desired_state or {}).get(
                "PhysicalResourceId", ""
            )
        if kind == "Update":
            event["OldResourceProperties"] = _strings({k: v for k, v in previous.items() if k != "PhysicalResourceId"})
        # Kept beside the answers, without its URL: what a test replays as
        # CloudFormation's next request (stack.replay_custom_resource).
        s3.put_object(
            Bucket=BUCKET,
            Key=f"requests/{request.stack_name}/{request.logical_resource_id}/{time.time_ns()}-{kind}.json",
            Body=json.dumps({k: v for k, v in event.items() if k != "ResponseURL"}).encode(),
        )
        request.aws_client_factory.lambda_.invoke(
            FunctionName=properties["ServiceToken"], InvocationType="Event", Payload=json.dumps(event).encode()
        )
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            try:
                body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                break
            except s3.exceptions.NoSuchKey:
                if time.monotonic() > deadline:
                    return ProgressEvent(
                        status=OperationStatus.FAILED,
                        resource_model={},
                        message=f"{request.logical_resource_id}: no answer from its function within {ANSWER_TIMEOUT:.0f} s",
                    )
                time.sleep(0.5)  # CloudFormation, too, reads the answer when it is there
        answer = json.loads(body)
        LOG.info("custom resource %s %s: %s", request.logical_resource_id, kind, answer.get("Status"))
        if answer.get("Status") != "SUCCESS":
            return ProgressEvent(status=OperationStatus.FAILED, resource_model={}, message=answer.get("Reason", ""))
        model = {**properties, **(answer.get("Data") or {}), "PhysicalResourceId": answer["PhysicalResourceId"]}
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model if kind != "Delete" else {})


def _strings(value):
    """As CloudFormation passes properties: every scalar a string."""
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


class CustomResourceProviderPlugin(CloudFormationResourceProviderPlugin):
    name = "AWS::CloudFormation::CustomResource"

    def __init__(self):
        self.factory: type[ResourceProvider] | None = None

    def load(self):
        self.factory = CustomResourceProvider
