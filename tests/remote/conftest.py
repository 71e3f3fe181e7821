"""Fixtures of the S3 tier: a moto server on 127.0.0.1, a fault proxy, appliance processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.e2e.server import ServerProcess
from tests.remote.faultproxy import FaultProxy

BUCKET = "appliance-remote"
REGION = "us-east-1"
DUMMY = "testing"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto S3 server on a free loopback port with one bucket."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    admin = boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id=DUMMY,
        aws_secret_access_key=DUMMY,
    )
    admin.create_bucket(Bucket=BUCKET)
    admin.close()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of moto (no fault until told)."""
    fault_proxy = FaultProxy(int(moto_url.rsplit(":", 1)[1])).start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.stop()


def s3_env(endpoint: str, cache: Path, prefix: str, **extra: str) -> dict[str, str]:
    """The ``RS_REMOTE_*`` environment of one appliance on ``prefix``."""
    env = {
        "RS_REMOTE_BACKEND_TYPE": "s3",
        "RS_REMOTE_BUCKET": BUCKET,
        "RS_REMOTE_ENDPOINT": endpoint,
        "RS_REMOTE_REGION": REGION,
        "RS_REMOTE_ACCESS_KEY": DUMMY,
        "RS_REMOTE_SECRET_KEY": DUMMY,
        "RS_REMOTE_CACHE_PATH": str(cache),
        "RS_REMOTE_PREFIX": prefix,
        "RS_REMOTE_SYNC_INTERVAL": "1s",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.update(extra)
    return env


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix: tests sharing the moto bucket never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Processes a test starts; each is killed at the end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()
