"""Start ``python -m appliance`` as a real process on a free loopback port, for the e2e tier."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

READY_TIMEOUT_SECONDS = 30.0
# ReductStore 1.21 (and so `python -m appliance`) refuses to start without one of these.
AUTH_CHOICE_NAMES = ("RS_API_TOKEN", "RS_INIT_API_TOKEN", "RS_DISABLE_AUTH")


def server_environ(extra: dict[str, str] | None = None, *, choose_auth: bool = True) -> dict[str, str]:
    """The environment of a spawned appliance: this process's without any ``RS_*`` name, plus
    ``extra``; with ``choose_auth`` and no auth variable in ``extra``, ``RS_DISABLE_AUTH=true``
    (the explicit choice a standalone instance needs; a test that sets a token keeps it)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    env.update(extra or {})
    if choose_auth and not any(name in env for name in AUTH_CHOICE_NAMES):
        env["RS_DISABLE_AUTH"] = "true"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One appliance process with its own data folder, log file and port."""

    def __init__(
        self,
        data_path: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        max_open_files: int | None = None,
        cwd: Path | None = None,
    ):
        self.data_path = data_path
        self.max_open_files = max_open_files  # `ulimit -n` of the process, when given
        # `python -m` puts its working folder first on the path: a benchmark runs another
        # checkout of the appliance by starting it there.
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_path.parent / f"appliance-{self.port}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> ServerProcess:
        """Spawn the process; by default wait until /api/v1/ready answers 200."""
        base = {
            "RS_HOST": "127.0.0.1",
            "RS_PORT": str(self.port),
            "RS_DATA_PATH": str(self.data_path),
            "RS_LOG_LEVEL": "INFO",
        }
        env = server_environ({**base, **self.extra_env})
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance"], env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=self._limit_open_files if self.max_open_files else None, cwd=self.cwd,
        )
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def _limit_open_files(self) -> None:
        """In the child before exec: soft and hard RLIMIT_NOFILE = ``max_open_files``."""
        limit = int(self.max_open_files or 0)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def open_files(self) -> int:
        """How many file descriptors the process holds right now (Linux /proc)."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS, path: str = "/api/v1/ready") -> None:
        """Poll until ``path`` answers 200; fail with the log if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the process and wait for a graceful exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.logs()}") from None
        return int(self.proc.returncode)
