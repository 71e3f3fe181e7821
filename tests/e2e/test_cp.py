"""``appliance alias`` and ``appliance cp`` between two running instances (issue 12 §3).

Two real processes with authentication on, a source filled and checked with reduct-py, the
real CLI in between. Each test copies into its own destination bucket, so the two servers are
shared by the whole module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reduct import BucketSettings, Client, QuotaType, RecordBatch

from tests.e2e.server import ServerProcess, free_port

pytestmark = pytest.mark.integration

SRC_TOKEN = "src-secret-token"
DST_TOKEN = "dst-secret-token"
BASE_TS = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
STEP_US = 1_000_000
ENTRIES = ("cam/front", "cam/back", "imu", "logs")
COUNT = 30
BIG_TS = BASE_TS + 100 * STEP_US
BIG_SIZE = 3 * 1024 * 1024 + 7  # crosses read-batch and chunk boundaries
SETTINGS = BucketSettings(quota_type=QuotaType.FIFO, quota_size=500_000_000, max_block_records=16)
SUMMARY = re.compile(r"copied (\d+) record\(s\), skipped (\d+), failed (\d+)")

Record = tuple[bytes, dict[str, str], str]


def payload(entry: str, i: int) -> bytes:
    """A deterministic payload, different per entry and record (some empty)."""
    return (f"{entry}:{i}:".encode() * ((i * 37) % 90))[: (i * 53) % 700]


def model() -> dict[tuple[str, int], Record]:
    """What the source bucket holds: ``{(entry, ts): (payload, labels, content type)}``."""
    data: dict[tuple[str, int], Record] = {}
    for entry in ENTRIES:
        for i in range(COUNT):
            labels = {
                "i": str(i),
                "parity": "even" if i % 2 == 0 else "odd",
                "kind": entry.split("/")[0],
            }
            if i % 5 == 0:
                labels["note"] = "a,b"  # a value with a comma travels quoted
            ctype = "text/plain" if entry == "logs" else "application/octet-stream"
            data[(entry, BASE_TS + i * STEP_US)] = (payload(entry, i), labels, ctype)
    data[("cam/front", BIG_TS)] = (
        bytes(range(256)) * (BIG_SIZE // 256) + b"x" * (BIG_SIZE % 256),
        {"big": "yes"},
        "image/raw",
    )
    return data


async def fill(url: str, bucket: str, records: dict[tuple[str, int], Record]) -> None:
    """Create ``bucket`` with SETTINGS and write ``records`` with reduct-py batches."""
    async with Client(url, api_token=SRC_TOKEN) as client:
        target = await client.create_bucket(bucket, SETTINGS, exist_ok=True)
        # v2 batches: reduct-py's v1 batch writer would not quote the value "a,b".
        batch = RecordBatch()
        for (entry, ts), (data, labels, ctype) in sorted(records.items()):
            batch.add(entry, ts, data, content_type=ctype, labels=labels)
        assert await target.write_record_batch(batch) == {}


async def dump(url: str, token: str, bucket: str) -> dict[tuple[str, int], Record]:
    """Every record of ``bucket`` read back with reduct-py."""
    found: dict[tuple[str, int], Record] = {}
    async with Client(url, api_token=token) as client:
        target = await client.get_bucket(bucket)
        for info in await target.get_entry_list():
            async for record in target.query(info.name):
                found[(info.name, record.timestamp)] = (
                    await record.read_all(),
                    dict(record.labels),
                    record.content_type,
                )
    return found


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A source and a destination instance, each with its own token."""
    root = tmp_path_factory.mktemp("cp")
    (root / "src").mkdir()
    (root / "dst").mkdir()
    src = ServerProcess(root / "src" / "data", env={"RS_API_TOKEN": SRC_TOKEN}).start()
    dst = ServerProcess(root / "dst" / "data", env={"RS_API_TOKEN": DST_TOKEN}).start()
    yield src, dst
    src.kill()
    dst.kill()


@pytest.fixture(scope="module")
def source(pair: tuple[ServerProcess, ServerProcess]) -> dict[tuple[str, int], Record]:
    """The source bucket ``data``, filled once for the module."""
    records = model()
    asyncio.run(fill(pair[0].url, "data", records))
    return records


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, pair: tuple[ServerProcess, ServerProcess]
) -> dict[str, str]:
    """An environment whose config folder has the aliases ``src`` and ``dst``.

    Written through the library (the ``alias`` CLI has its own test): one interpreter start
    less per alias and test.
    """
    from appliance.hotcopy.aliases import AliasStore

    folder = tmp_path_factory.mktemp("config")
    store = AliasStore(folder / "appliance")
    store.add("src", pair[0].url, SRC_TOKEN)
    store.add("dst", pair[1].url, DST_TOKEN)
    return {"XDG_CONFIG_HOME": str(folder)}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m appliance ARGS`` with a clean RS_* environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """(copied, skipped, failed) from the summary line."""
    match = SUMMARY.search(result.stdout)
    assert match, result.stdout + result.stderr
    copied, skipped, failed = (int(g) for g in match.groups())
    return copied, skipped, failed


async def test_cp_copies_everything_identically_and_a_rerun_copies_nothing(
    pair: tuple[ServerProcess, ServerProcess],
    source: dict[tuple[str, int], Record],
    config: dict[str, str],
) -> None:
    result = cli("cp", "src/data", "dst/full", "--parallel", "3", env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == (len(source), 0, 0)
    assert "with the source's settings" in result.stderr
    assert f"copying 4 entr(ies), at most {len(source)} record(s)" in result.stderr
    assert await dump(pair[1].url, DST_TOKEN, "full") == source
    async with Client(pair[1].url, api_token=DST_TOKEN) as client:
        settings = await (await client.get_bucket("full")).get_settings()
    assert (settings.quota_type, settings.quota_size, settings.max_block_records) == (
        QuotaType.FIFO,
        500_000_000,
        16,
    )
    again = cli("cp", "src/data", "dst/full", env=config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again) == (0, len(source), 0)
    assert await dump(pair[1].url, DST_TOKEN, "full") == source


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


FILTERS = {
    "start-stop-us": (
        ["--start", str(BASE_TS + 5 * STEP_US), "--stop", str(BASE_TS + 12 * STEP_US)],
        lambda e, ts, labels: BASE_TS + 5 * STEP_US <= ts < BASE_TS + 12 * STEP_US,
    ),
    "start-iso": (
        ["--start", _iso(BASE_TS + 25 * STEP_US)],
        lambda e, ts, labels: ts >= BASE_TS + 25 * STEP_US,
    ),
    "entries-glob-and-exclusion": (
        ["--entries", "cam/*,!cam/back", "--entries", "log*"],
        lambda e, ts, labels: e in ("cam/front", "logs"),
    ),
    "entries-double-star": (["--entries", "**"], lambda e, ts, labels: True),
    "include": (
        ["--include", "parity=even", "--include", "kind=cam"],
        lambda e, ts, labels: labels.get("parity") == "even" and labels.get("kind") == "cam",
    ),
    "exclude": (["--exclude", "note=a,b"], lambda e, ts, labels: labels.get("note") != "a,b"),
    "when": (
        ["--when", json.dumps({"&i": {"$gte": 20}})],
        lambda e, ts, labels: "i" in labels and int(labels["i"]) >= 20,
    ),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
async def test_cp_filters_select_exactly_the_matching_records(
    name: str,
    pair: tuple[ServerProcess, ServerProcess],
    source: dict[tuple[str, int], Record],
    config: dict[str, str],
) -> None:
    args, keep = FILTERS[name]
    bucket = "f-" + name
    result = cli("cp", "src/data", f"dst/{bucket}", *args, env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {k: v for k, v in source.items() if keep(k[0], k[1], v[1])}
    assert expected and len(expected) < len(source) or name == "entries-double-star"
    assert summary(result) == (len(expected), 0, 0)
    assert await dump(pair[1].url, DST_TOKEN, bucket) == expected


async def test_cp_limit_counts_per_entry_after_label_filters(
    pair: tuple[ServerProcess, ServerProcess],
    source: dict[tuple[str, int], Record],
    config: dict[str, str],
) -> None:
    result = cli(
        "cp", "src/data", "dst/limited", "--limit", "4", "--include", "parity=odd", env=config
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = await dump(pair[1].url, DST_TOKEN, "limited")
    for entry in ENTRIES:
        odd = sorted(
            ts for (e, ts), v in source.items() if e == entry and v[1].get("parity") == "odd"
        )
        assert sorted(ts for e, ts in got if e == entry) == odd[:4]


async def test_cp_from_last_continues_after_the_newest_destination_record(
    pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    first = {("e", BASE_TS + i): (b"%d" % i, {}, "application/octet-stream") for i in range(10)}
    await fill(pair[0].url, "grow", first)
    assert summary(cli("cp", "src/grow", "dst/grow", env=config)) == (10, 0, 0)
    newer = {("e", BASE_TS + i): (b"%d" % i, {}, "application/octet-stream") for i in range(10, 15)}
    belated = {("e", BASE_TS - 5): (b"old", {}, "application/octet-stream")}
    await fill(pair[0].url, "grow", {**newer, **belated})
    result = cli("cp", "src/grow", "dst/grow", "--from-last", env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == (5, 0, 0)  # nothing re-sent, the belated record is before the cut
    assert await dump(pair[1].url, DST_TOKEN, "grow") == {**first, **newer}


async def test_cp_counts_records_the_destination_refuses_and_exits_1(
    pair: tuple[ServerProcess, ServerProcess],
    source: dict[tuple[str, int], Record],
    config: dict[str, str],
) -> None:
    async with Client(pair[1].url, api_token=DST_TOKEN) as client:
        await client.create_bucket(
            "tiny", BucketSettings(quota_type=QuotaType.HARD, quota_size=4000)
        )
    result = cli("cp", "src/data", "dst/tiny", "--entries", "imu", env=config)
    assert result.returncode == 1, result.stdout + result.stderr
    copied, skipped, failed = summary(result)
    assert copied > 0 and failed > 0 and copied + failed == COUNT
    assert "Quota of 'tiny' exceeded" in result.stderr


def test_cp_with_a_bad_token_fails_clearly(
    pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    result = cli("cp", f"{pair[0].url}/data", "dst/x", "--src-token", "wrong", env=config)
    assert result.returncode == 1
    assert "401" in result.stderr and "Invalid token" in result.stderr
    result = cli("cp", "src/data", f"{pair[1].url}/x", "--dst-token", "wrong", env=config)
    assert result.returncode == 1
    assert "destination" in result.stderr and "401" in result.stderr


def test_cp_unknown_alias_and_unreachable_url(config: dict[str, str]) -> None:
    result = cli("cp", "nowhere/data", "dst/x", env=config)
    assert result.returncode == 2
    assert "unknown alias 'nowhere'" in result.stderr and "dst, src" in result.stderr
    same = cli("cp", "dst/x", "dst/x", env=config)
    assert same.returncode == 2 and "the same bucket" in same.stderr
    result = cli("cp", f"http://127.0.0.1:{free_port()}/data", "dst/x", env=config)
    assert result.returncode == 1
    assert "source http://127.0.0.1" in result.stderr and "ConnectError" in result.stderr


def test_alias_file_is_private_and_tokens_are_masked(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert (
        cli(
            "alias",
            "add",
            "edge",
            "--url",
            "http://127.0.0.1:8383/",
            "--token",
            "very-secret-token",
            env=env,
        ).returncode
        == 0
    )
    path = tmp_path / "cfg" / "appliance" / "aliases.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    listing = cli("alias", "ls", env=env)
    assert "edge" in listing.stdout and "http://127.0.0.1:8383" in listing.stdout
    assert "very-secret-token" not in listing.stdout and "ve***" in listing.stdout
    duplicate = cli("alias", "add", "edge", "--url", "http://x:1", env=env)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    assert cli("alias", "rm", "edge", env=env).returncode == 0
    assert "edge" not in cli("alias", "ls", env=env).stdout
    missing = cli("alias", "rm", "edge", env=env)
    assert missing.returncode == 2 and "unknown alias 'edge'" in missing.stderr
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "alias",
            "add",
            "lab",
            "--url",
            "http://h:1",
            "--token",
            "-",
        ],
        input="from-stdin\n",
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert 'token = "from-stdin"' in path.read_text()


async def test_cp_from_a_stopped_data_folder_and_from_a_backup_folder(
    tmp_path: Path, pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    (tmp_path / "edge").mkdir()
    edge = ServerProcess(tmp_path / "edge" / "data", env={"RS_API_TOKEN": SRC_TOKEN}).start()
    records = {k: v for k, v in model().items() if k[0] in ("imu", "logs")}
    try:
        await fill(edge.url, "local", records)
    finally:
        assert edge.stop() == 0  # a clean stop compacts every WAL into the block files
    folder = tmp_path / "edge" / "data"
    result = cli("cp", f"{folder}/local", "dst/from-folder", env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WAL" not in result.stderr
    assert summary(result) == (len(records), 0, 0)
    assert await dump(pair[1].url, DST_TOKEN, "from-folder") == records
    # A backup folder as issue 12 §1 lays it out: <target>/<id>/ with a manifest and data/.
    backup = tmp_path / "backups" / "20240101T000000Z"
    backup.mkdir(parents=True)
    folder.rename(backup / "data")
    incomplete = cli("cp", f"{backup}/local", "dst/from-backup", env=config)
    assert incomplete.returncode == 1 and "incomplete" in incomplete.stderr
    (backup / "manifest.json").write_text("{}")
    result = cli("cp", f"{backup}/local", "dst/from-backup", "--include", "parity=odd", env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    odd = {k: v for k, v in records.items() if v[1]["parity"] == "odd"}
    assert await dump(pair[1].url, DST_TOKEN, "from-backup") == odd


MAXRSS = re.compile(r"maxrss_kib (\d+)")
PEAK_PROBE = (
    "import resource, sys\n"
    "from appliance.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def cp_peak_kib(*args: str, env: dict[str, str]) -> int:
    """Run ``appliance cp ARGS`` in a fresh interpreter; its peak resident memory in KiB."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    base.update(env)
    result = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, "cp", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = MAXRSS.search(result.stderr)
    assert match, result.stderr
    return int(match.group(1))


@pytest.mark.slow
def test_cp_streams_a_large_record_without_holding_it(
    pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    import hashlib

    import httpx

    size = 96 * 1024 * 1024
    chunk = bytes(range(256)) * 4096  # 1 MiB
    src = httpx.Client(
        base_url=pair[0].url + "/api/v1",
        headers={"Authorization": f"Bearer {SRC_TOKEN}"},
        timeout=120,
    )
    with src:
        src.post("/b/huge").raise_for_status()
        src.post(
            "/b/huge/e",
            params={"ts": 1},
            content=iter([chunk] * (size // len(chunk))),
            headers={"content-length": str(size)},
        ).raise_for_status()
        src.post("/b/huge/e", params={"ts": 2}, content=b"tiny").raise_for_status()
    small = cp_peak_kib("src/huge", "dst/huge-baseline", "--start", "2", env=config)  # "tiny" only
    peak = cp_peak_kib("src/huge", "dst/huge", env=config)
    # Held whole even once, the record alone would add 96 MiB to the peak.
    assert peak - small < 32 * 1024, (small, peak)
    digest = hashlib.sha256()
    dst = httpx.Client(
        base_url=pair[1].url + "/api/v1",
        headers={"Authorization": f"Bearer {DST_TOKEN}"},
        timeout=120,
    )
    with dst, dst.stream("GET", "/b/huge/e", params={"ts": 1}) as answer:
        assert answer.status_code == 200
        for part in answer.iter_bytes():
            digest.update(part)
    assert digest.hexdigest() == hashlib.sha256(chunk * (size // len(chunk))).hexdigest()


def test_cp_from_an_https_instance_with_its_self_signed_certificate(
    tmp_path: Path, pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    import time

    import httpx

    from tests.e2e.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    (tmp_path / "tls").mkdir()
    tls = ServerProcess(
        tmp_path / "tls" / "data", env={"RS_CERT_PATH": str(cert), "RS_CERT_KEY_PATH": str(key)}
    ).start(wait_ready=False)
    url = f"https://127.0.0.1:{tls.port}"
    try:
        with httpx.Client(base_url=url + "/api/v1", verify=str(cert), timeout=5) as https:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if https.get("/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, tls.logs()
                time.sleep(0.1)
            https.post("/b/tls").raise_for_status()
            for ts in (1, 2, 3):
                https.post(
                    "/b/tls/e", params={"ts": ts}, content=b"secret-%d" % ts
                ).raise_for_status()
        refused = cli("cp", f"{url}/tls", "dst/over-tls", env=config)
        assert refused.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
        result = cli("cp", f"{url}/tls", "dst/over-tls", "--ca-cert", str(cert), env=config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary(result) == (3, 0, 0)
    finally:
        tls.kill()


async def test_cp_copies_the_attachments_of_copied_entries(
    pair: tuple[ServerProcess, ServerProcess], config: dict[str, str]
) -> None:
    async with Client(pair[0].url, api_token=SRC_TOKEN) as client:
        bucket = await client.create_bucket("att", exist_ok=True)
        await bucket.write("cam", b"frame", timestamp=BASE_TS)
        await bucket.write("imu", b"sample", timestamp=BASE_TS)
        await bucket.write_attachments("cam", {"calibration": {"fx": 1.5}, "model": "v2"})
        await bucket.remove_attachments("cam", ["model"])  # a tombstone: not copied
        await bucket.write_attachments("imu", {"axes": ["x", "y"]})
    result = cli("cp", "src/att", "dst/att", "--entries", "cam", env=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == (2, 0, 0)  # the record and the live attachment
    async with Client(pair[1].url, api_token=DST_TOKEN) as client:
        copied = await client.get_bucket("att")
        assert await copied.read_attachments("cam") == {"calibration": {"fx": 1.5}}
        assert [e.name for e in await copied.get_entry_list()] == ["cam"]
    assert summary(cli("cp", "src/att", "dst/att", "--entries", "cam", env=config)) == (0, 2, 0)
    plain = cli("cp", "src/att", "dst/att-plain", "--no-attachments", env=config)
    assert summary(plain) == (2, 0, 0)  # cam and imu records, no attachments
