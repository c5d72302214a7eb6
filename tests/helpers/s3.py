"""A local S3: moto's server as a subprocess on a free loopback port, found by every
client through the standard AWS variables."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

HOST = "127.0.0.1"
START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, endpoint: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {process.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto_server, yield its endpoint URL, stop that process (and only it)."""
    port = _free_port()
    program = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    process = subprocess.Popen([program, "-H", HOST, "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{HOST}:{port}"
    try:
        _wait_until_up(process, endpoint)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def environment(endpoint: str) -> dict[str, str]:
    """What a user sets to reach an S3 endpoint; the metadata lookup is off so a missing
    credential never waits on a cloud instance service."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def upload_folder(client, folder: str, bucket: str, prefix: str) -> None:
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=handle.read())


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Name -> bytes of every object directly under `prefix`, "folder" markers left
    out: pyarrow writes an empty `prefix/` object when it deletes a file there (a resume
    removes the old dataset manifest), to keep the folder it emulates; listings of
    files never include it."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) + 1:]
            if not name:
                continue
            found[name] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found
