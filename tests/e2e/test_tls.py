"""TLS: RS_CERT_PATH + RS_CERT_KEY_PATH serve HTTPS through Hypercorn; half a pair is refused."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.server import ServerProcess, free_port, server_environ

pytestmark = pytest.mark.integration


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server = ServerProcess(
        tmp_path / "data", env={"RS_CERT_PATH": str(cert_path), "RS_CERT_KEY_PATH": str(key_path)}
    ).start(wait_ready=False)
    url = f"https://127.0.0.1:{server.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(url + "/api/v1/ready", verify=str(cert_path), timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.1)
        with httpx.Client(base_url=url, verify=str(cert_path), timeout=10) as https:
            assert https.post("/api/v1/b/tls").status_code == 200
            assert https.post("/api/v1/b/tls/e?ts=1", content=b"secret").status_code == 200
            assert https.get("/api/v1/b/tls/e?ts=1").content == b"secret"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/api/v1/alive", timeout=2)  # no plain HTTP
        assert "listening on https://" in server.logs()
    finally:
        server.kill()


@pytest.mark.parametrize("missing", ["RS_CERT_KEY_PATH", "RS_CERT_PATH"])
def test_tls_half_configured_or_missing_file_stops_startup(tmp_path: Path, missing: str) -> None:
    cert_path, key_path = self_signed(tmp_path)
    env = server_environ()
    env.update({"RS_DATA_PATH": str(tmp_path / "data"), "RS_HOST": "127.0.0.1", "RS_PORT": str(free_port())})
    env.update({"RS_CERT_PATH": str(cert_path), "RS_CERT_KEY_PATH": str(key_path)})
    env.pop(missing)
    result = subprocess.run([sys.executable, "-m", "appliance"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "RS_CERT_PATH and RS_CERT_KEY_PATH must be set together" in result.stderr
    env[missing] = str(tmp_path / "nope.pem")
    result = subprocess.run([sys.executable, "-m", "appliance"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"invalid setting {missing}=" in result.stderr and "file not found" in result.stderr
