"""Real processes on S3 (moto's server on 127.0.0.1): the storage class of the objects, the
secret key never shown, and boto3's default credential chain when no key is set."""

from __future__ import annotations

from pathlib import Path

import boto3
import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.remote.conftest import BUCKET, DUMMY, REGION, s3_env
from tests.remote.test_s3_process import check, settled, start, write

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "s3cr3t-never-shown-4711"


async def test_storage_class_secret_masking_and_the_default_credential_chain(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    env = s3_env(
        moto_url, tmp_path / "a", prefix,
        RS_REMOTE_DEFAULT_STORAGE_CLASS="standard_ia", RS_REMOTE_SECRET_KEY=SECRET,
    )
    server = start(servers, tmp_path / "a", env)
    acked = await write(server.url, range(1, 13))
    await settled(server.url)
    shown = [
        httpx.get(f"{server.url}{path}", timeout=10).text
        for path in ("/api/v1/info", "/metrics")
    ]
    assert server.stop() == 0
    assert all(SECRET not in text for text in [*shown, server.logs()])
    assert "RS_REMOTE_SECRET_KEY" in server.logs()  # the startup table has the row, masked

    admin = boto3.client(
        "s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id=DUMMY,
        aws_secret_access_key=DUMMY,
    )
    try:
        keys = [
            item["Key"]
            for page in admin.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=f"{prefix}r/b/e/"
            )
            for item in page.get("Contents", ())
        ]
        classes = {
            key: admin.head_object(Bucket=BUCKET, Key=key).get("StorageClass", "STANDARD")
            for key in keys
        }
    finally:
        admin.close()
    blocks = {key: cls for key, cls in classes.items() if key.endswith(".blk")}
    others = {key: cls for key, cls in classes.items() if not key.endswith(".blk")}
    assert len(blocks) >= 3 and set(blocks.values()) == {"STANDARD_IA"}
    # Metadata (index, descriptors, settings) keeps the default, as ReductStore does.
    assert others and set(others.values()) == {"STANDARD"}

    # No RS_REMOTE_ACCESS_KEY/SECRET_KEY: boto3's chain (here the AWS_* environment) applies.
    chain = s3_env(moto_url, tmp_path / "b", prefix, AWS_ACCESS_KEY_ID=DUMMY,
                   AWS_SECRET_ACCESS_KEY=DUMMY)
    del chain["RS_REMOTE_ACCESS_KEY"], chain["RS_REMOTE_SECRET_KEY"]
    fresh = start(servers, tmp_path / "b", chain)
    await check(fresh.url, acked)  # a new node with an empty cache reads every block back
    fresh.stop()
