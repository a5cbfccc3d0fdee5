"""Bytes stored under each demo run's model, read from the S3 store with boto3.

usage: sizes.py RUNS.json      prints {run_id: bytes} as JSON
"""
import json
import os
import sys

import boto3
import mlflow


def sizes(logged):
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    out = {}
    for r in logged["runs"]:
        location = mlflow.get_logged_model(r["model_id"]).artifact_location
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        total = 0
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            total += sum(o["Size"] for o in page.get("Contents", []))
        out[r["run_id"]] = total
    return out


if __name__ == "__main__":
    print(json.dumps(sizes(json.load(open(sys.argv[1])))))
