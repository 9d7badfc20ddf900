"""The release's files, copied into the stack's own bucket: the root template's
custom resource (release/templates.py inlines this file into it, so it stays
small). Each file is downloaded from ReleaseUrl and checked against the
SHA-256 the template pins before it is put: no function runs code, and no
nested stack a template, that the release did not build. Delete removes them."""
import hashlib
import json
import urllib.error
import urllib.request

import boto3


class Refused(Exception):
    pass


def download(url):
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise Refused(f"{url} answered HTTP {e.code}: set ReleaseUrl to where this release's files are served")
    except (urllib.error.URLError, OSError) as e:
        raise Refused(f"cannot reach {url} ({e}): this function runs outside the VPC and needs the internet, or a ReleaseUrl it reaches")


def answer(event, status, physical, reason="", data=None):
    body = json.dumps({"Status": status, "Reason": reason[:2000], "PhysicalResourceId": physical,
                       "StackId": event["StackId"], "RequestId": event["RequestId"],
                       "LogicalResourceId": event["LogicalResourceId"], "Data": data or {}}).encode()
    put = urllib.request.Request(event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""})
    urllib.request.urlopen(put, timeout=60).close()


def handler(event, context):
    props = event["ResourceProperties"]
    bucket, files = props["Bucket"], props["Files"]
    # Keys under a prefix of the files' names and digests: another release
    # (or CPU) is another prefix, and the old one is removed by the Delete
    # CloudFormation sends for it after the update.
    prefix = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    physical = f"{bucket}/{prefix}"
    try:
        s3 = boto3.client("s3")
        if event["RequestType"] == "Delete":
            if event.get("PhysicalResourceId") == physical:
                for f in files:
                    try:
                        s3.delete_object(Bucket=bucket, Key=f"{prefix}/{f['Name']}")
                    except s3.exceptions.NoSuchBucket:
                        pass
            return answer(event, "SUCCESS", event.get("PhysicalResourceId") or physical)
        base = props["BaseUrl"].rstrip("/") + "/"
        data = {}
        for f in files:
            url = base + f["Name"]
            body = download(url)
            got = hashlib.sha256(body).hexdigest()
            if got != f["Sha256"]:
                raise Refused(f"{url} has SHA-256 {got}, and this template pins {f['Sha256']}: it is not the file "
                              f"of the release the template came from. Set ReleaseUrl to that release's files")
            key = f"{prefix}/{f['Name']}"
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            print(f"copied {url} ({len(body)} bytes, SHA-256 as pinned) to s3://{bucket}/{key}")
            data[f["Role"]] = key
        answer(event, "SUCCESS", physical, data=data)
    except Exception as e:
        print(f"{event['RequestType']} failed: {e}")
        answer(event, "FAILED", event.get("PhysicalResourceId") or physical, reason=str(e))
