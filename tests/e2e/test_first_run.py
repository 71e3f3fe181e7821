"""What a new operator meets on the first run: the authentication choice, one-line configuration
errors before any table, a readable startup table, reason phrases, the access log, /metrics, and
`appliance check` next to a running instance."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess, server_environ

pytestmark = pytest.mark.integration
CHOICE = "set RS_API_TOKEN, RS_INIT_API_TOKEN or RS_DISABLE_AUTH=true"


def appliance(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m appliance ARGS`` with exactly ``env`` as its RS_* environment."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=server_environ(env, choose_auth=False),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused start (nothing on stdout, no table anywhere)."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert "effective configuration" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, f"appliance: authentication is not configured: {CHOICE}"),
        ({"RS_API_TOKEN": "a", "RS_INIT_API_TOKEN": "b"}, "must not both be set"),
        ({"RS_API_TOKEN": "change-me"}, "RS_API_TOKEN: 'change-me' is the example placeholder"),
        (
            {"RS_INIT_API_TOKEN": "change-me"},
            "RS_INIT_API_TOKEN: 'change-me' is the example placeholder",
        ),
        ({"RS_DISABLE_AUTH": "maybe"}, "invalid setting RS_DISABLE_AUTH='maybe'"),
        (
            {"RS_DISABLE_AUTH": "true", "RS_CERT_PATH": "/nope.pem"},
            "RS_CERT_PATH and RS_CERT_KEY_PATH must be set together",
        ),
    ],
)
def test_refused_start_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    line = one_line_exit_2(appliance(env={**env, "RS_DATA_PATH": str(tmp_path / "data")}))
    assert expected in line
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_first_run_table_warnings_reason_phrase_access_log_metrics_and_check(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "RS_INIT_API_TOKEN": "first-secret",
        "RS_ACCESS_LOG": "true",
        "RS_EXT_PATH": "/opt/ext",
        "RS_PROT": "1",
        "RS_ENGINE_MIN_FREE_SPACE": "64MiB",
    }
    server = ServerProcess(data, env=env).start()
    try:
        auth = {"Authorization": "Bearer first-secret"}
        logs = server.logs()
        table = logs[logs.index("effective configuration") :]
        assert "| RS_ENGINE_MIN_FREE_SPACE" in table and "64MiB" in table
        assert "64MB " in table  # RS_DEFAULTS_BUCKET_MAX_BLOCK_SIZE, not 64000000
        assert f"{socket.gethostname()} (host name)" in table
        assert "RS_INIT_API_TOKEN" in table and "first-secret" not in logs
        assert "RS_EXT_PATH is a ReductStore setting this appliance does not support" in logs
        assert "did you mean RS_CERT_PATH" not in logs
        assert "unknown setting RS_PROT is ignored (did you mean RS_PORT?)" in logs

        # RS_INIT_API_TOKEN: an ordinary init-token (not provisioned), saved in .auth.
        me = httpx.get(server.url + "/api/v1/me", headers=auth).json()
        assert me["name"] == "init-token" and me["is_provisioned"] is False
        assert (data / ".auth").exists()

        # The status line carries the reason phrase.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/v1/alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200 OK\r\n")
        r = httpx.get(server.url + "/api/v1/info")
        assert r.status_code == 401 and r.reason_phrase == "Unauthorized"

        # /metrics: protected like /info.
        assert httpx.get(server.url + "/metrics").status_code == 401
        text = httpx.get(server.url + "/metrics", headers=auth).text
        assert (
            'reduct_http_requests_total{method="GET",route="/api/v1/info",status="401"} 1.0' in text
        )

        # The access log: one line per request.
        assert '"GET /api/v1/info HTTP/1.1" 401' in server.logs()

        # `appliance check` next to the running instance: --repair refuses, naming it.
        check_env = {"RS_DISABLE_AUTH": "true"}
        result = appliance("check", "--data", str(data), "--repair", env=check_env)
        assert result.returncode == 2
        assert "refusing to repair" in result.stderr
        assert (
            f"appliance serve (STANDALONE, port {server.port}) pid {server.proc.pid}"
            in result.stderr
        )  # type: ignore[union-attr]
        result = appliance("check", "--data", str(data), env=check_env)
        assert "the report may be inconsistent" in result.stderr
        assert result.returncode == 0, result.stdout + result.stderr
        result = appliance("check", "--data", str(data), "--repair", "--force", env=check_env)
        assert "the report may be inconsistent" in result.stderr and result.returncode == 0
    finally:
        assert server.stop() == 0
    # Stopped: the folder is free again.
    result = appliance("check", "--data", str(data), "--repair", env={})
    assert result.returncode == 0 and "in use" not in result.stderr, result.stderr


def test_server_does_not_open_a_folder_under_repair(tmp_path: Path) -> None:
    from appliance.inuse import InUseLock

    data = tmp_path / "data"
    data.mkdir()
    lock = InUseLock(data)
    assert lock.acquire(exclusive=True, who="appliance check --repair pid 1 on test")
    try:
        server = ServerProcess(data).start(wait_ready=False)
        assert server.proc is not None
        assert server.proc.wait(timeout=30) == 1
        assert "it is locked by appliance check --repair pid 1 on test" in server.logs()
    finally:
        lock.release()
