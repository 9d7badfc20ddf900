"""The release's files, copied into the stack's own bucket: the root template's
custom resource (release/templates.py inlines this file into it, under
CloudFormation's 4,096 characters for inline code). Each file is downloaded
from the release's URL and checked against the SHA-256 the template pins
before it is put: no function runs code, and no nested stack a template,
that the release did not build.

Anyone allowed lambda:InvokeFunction on the function can send the same JSON
as CloudFormation, so nothing of the request decides what is done: the
bucket, the URL and the files come from the function's environment (set by
the template). A request is answered only at CloudFormation's response
bucket for this region and stack; a Create or Update copies the pinned
files, as a real one would; a Delete acts only in CloudFormation's own
phases of one, read from the stack's status."""
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import boto3

class Refused(Exception):
    pass


def download(url):
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise Refused(f"{url} answered HTTP {e.code}: ReleaseUrl must serve this release's files")
    except (urllib.error.URLError, OSError) as e:
        raise Refused(f"cannot reach {url} ({e}): it runs outside the VPC: it needs the internet, or a ReleaseUrl it reaches")


def cloudformations(url, stack):
    u = urllib.parse.urlsplit(url)
    emulator = urllib.parse.urlsplit(os.environ.get("AWS_ENDPOINT_URL", ""))
    if emulator.hostname and (u.scheme, u.hostname, u.port) == (emulator.scheme, emulator.hostname, emulator.port):
        return True
    region = os.environ["AWS_REGION"]
    bucket = "cloudformation-custom-resource-response-" + region.replace("-", "")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    hosts = {f"{bucket}.s3.{domain}", f"{bucket}.s3.{region}.{domain}", f"{bucket}.s3-{region}.{domain}"}
    # CloudFormation keys each answer <StackId>|<LogicalResourceId>|<RequestId>.
    key = urllib.parse.unquote(u.path.lstrip("/"))
    return u.scheme == "https" and u.port in (None, 443) and u.hostname in hosts and key.startswith(stack + "|")


def answer(event, status, physical, reason="", data=None):
    body = json.dumps({"Status": status, "Reason": reason[:2000], "PhysicalResourceId": physical,
                       "StackId": event["StackId"], "RequestId": event["RequestId"],
                       "LogicalResourceId": event["LogicalResourceId"], "Data": data or {}}).encode()
    put = urllib.request.Request(event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""})
    urllib.request.urlopen(put, timeout=60).close()


# A copy's physical id and keys: a prefix of its files' names and digests.
def where(bucket, files):
    prefix = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return f"{bucket}/{prefix}", {f["Role"]: f"{prefix}/{f['Name']}" for f in files}


def handler(event, context):
    stack, bucket, base = os.environ["STACK_ID"], os.environ["BUCKET"], os.environ.get("RELEASE_URL", "")
    files = json.loads(os.environ["FILES"])
    if not cloudformations(str(event.get("ResponseURL")), stack):
        return print("not answered: ResponseURL is not CloudFormation's for this stack")
    physical, keys = where(bucket, files)
    try:
        if event["StackId"] != stack or event["LogicalResourceId"] != "ReleaseFiles":
            raise Refused("this function serves its own stack's ReleaseFiles only")
        s3 = boto3.client("s3")
        props = event.get("ResourceProperties", {})
        if event["RequestType"] == "Delete":
            gone = event.get("PhysicalResourceId", "")
            status = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
            # CloudFormation deletes in two phases: the stack's end (the
            # bucket goes: empty it all) and an update's cleanup (a copy
            # no longer used). Any other Delete is not CloudFormation's.
            if status in ("DELETE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS"):
                drop = ""
            elif status.endswith("CLEANUP_IN_PROGRESS") and gone.startswith(bucket + "/") and gone != physical:
                drop = gone[len(bucket) + 1:] + "/"
            else:
                raise Refused(f"a copy goes in a delete or an update's cleanup only, not {status}")
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=drop).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=o["Key"])
            return answer(event, "SUCCESS", gone or physical)
        if props.get("Files", files) != files:
            # A rollback's Update, sent before the function's environment
            # is: the earlier copy, kept until the cleanup, is named again.
            physical, keys = where(bucket, props["Files"])
            return answer(event, "SUCCESS", physical, data=keys)
        if not base:
            raise Refused("no release URL built in: give ReleaseUrl=<a folder holding the release's files>")
        for f in files:
            url = base.rstrip("/") + "/" + f["Name"]
            body = download(url)
            got = hashlib.sha256(body).hexdigest()
            if got != f["Sha256"]:
                raise Refused(f"{url} has SHA-256 {got}, the template pins {f['Sha256']}: not the file of the "
                              f"release the template came from; set ReleaseUrl to that release's files")
            s3.put_object(Bucket=bucket, Key=keys[f["Role"]], Body=body)
            print(f"copied {url} ({len(body)} bytes, as pinned)")
        answer(event, "SUCCESS", physical, data=keys)
    except Exception as e:
        print(f"{event.get('RequestType')} failed: {e}")
        answer(event, "FAILED", event.get("PhysicalResourceId") or physical, reason=str(e))
