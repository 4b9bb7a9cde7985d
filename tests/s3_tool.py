"""Talks to the test's S3 server (moto) with boto3, the way an independent client would.

Usage: s3_tool.py ENDPOINT COMMAND ARGS...
  mkbucket BUCKET             create a bucket
  list BUCKET PREFIX          JSON list of {"key", "size", "etag"} under PREFIX
  mirror BUCKET PREFIX DEST   download every object under PREFIX into DEST (keys relative to PREFIX); prints the list
  uploads BUCKET              JSON list of {"key", "upload_id"}: multipart uploads begun and not completed
  put BUCKET KEY TEXT         write an object
  delete BUCKET KEY           remove an object
"""
import json
import os
import sys

import boto3

endpoint, cmd, *args = sys.argv[1:]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
    region_name="us-east-1",
)


def listing(bucket, prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out.append({"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')})
    return out


if cmd == "mkbucket":
    s3.create_bucket(Bucket=args[0])
    print("[]")
elif cmd == "list":
    print(json.dumps(listing(args[0], args[1])))
elif cmd == "mirror":
    bucket, prefix, dest = args
    objs = listing(bucket, prefix)
    for o in objs:
        rel = o["key"][len(prefix):].lstrip("/") or os.path.basename(o["key"])
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o["key"], path)
    print(json.dumps(objs))
elif cmd == "uploads":
    r = s3.list_multipart_uploads(Bucket=args[0])
    print(json.dumps([{"key": u["Key"], "upload_id": u["UploadId"]} for u in r.get("Uploads", [])]))
elif cmd == "put":
    s3.put_object(Bucket=args[0], Key=args[1], Body=args[2].encode())
    print("[]")
elif cmd == "delete":
    s3.delete_object(Bucket=args[0], Key=args[1])
    print("[]")
else:
    sys.exit(f"unknown command {cmd}")
