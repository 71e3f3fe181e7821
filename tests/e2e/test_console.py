"""The web console in a real browser: headless Chromium driven by Selenium against a real server.

Skipped (with the reason) only where Chromium or its driver is not installed; `.ci/run`
installs Debian's `chromium` and `chromium-driver`.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.e2e.test_tls import self_signed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "console-secret"
PNG_1X1 = (  # a valid 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WAIT_S = 15.0

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "no Chromium here: install Debian's `chromium` and `chromium-driver` "
        "(apt-get install -y chromium chromium-driver) to run the browser tests",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only once Chromium is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def browser(downloads: Path, *, insecure: bool = False) -> Any:
    """Headless Chromium saving downloads into ``downloads``."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    if insecure:
        options.add_argument("--ignore-certificate-errors")  # the test's self-signed certificate
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    return driver


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """A browser, quit after the test."""
    (tmp_path / "downloads").mkdir()
    driver = browser(tmp_path / "downloads")
    yield driver
    driver.quit()


def wait_for(driver: Any, css: str, timeout: float = WAIT_S) -> WebElement:
    """The first visible element matching ``css``."""
    return WebDriverWait(driver, timeout).until(  # type: ignore[no-any-return]
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def wait_text(driver: Any, css: str, text: str, timeout: float = WAIT_S) -> None:
    """Wait until the element at ``css`` contains ``text``."""
    WebDriverWait(driver, timeout).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
    )


def sign_in(driver: Any, url: str, token: str) -> None:
    """Open the console and sign in with ``token``."""
    driver.get(url)
    wait_for(driver, "#token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-button").click()
    wait_text(driver, "#main", "Dashboard")


def test_console_sign_in_bucket_record_download_remove(tmp_path: Path, chrome: Any) -> None:
    env = {
        "RS_API_TOKEN": TOKEN,
        "RS_API_BASE_PATH": "/base/",
        "RS_INSTANCE_NAME": "edge-7",
        "RS_ACCESS_LOG": "true",
        "RS_BUCKET_1_NAME": "provisioned",  # shown read-only
    }
    server = ServerProcess(tmp_path / "data", env=env).start(wait_ready=False)
    try:
        server.wait_ready(path="/base/api/v1/ready")
        api = server.url + "/base/api/v1"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # `/` of the base path leads to the console, which is served from the package.
        r = httpx.get(server.url + "/base/", follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == "/base/ui/"

        # A wrong token is refused with the server's own message, and nothing is kept.
        chrome.get(server.url + "/base/ui/")
        wait_for(chrome, "#token").send_keys("wrong")
        chrome.find_element(By.CSS_SELECTOR, "#sign-in-button").click()
        wait_text(chrome, "#sign-in-error", "Invalid token")
        assert chrome.execute_script("return sessionStorage.length") == 0

        sign_in(chrome, server.url + "/base/ui/", TOKEN)
        wait_text(chrome, "#main", "edge-7")
        chrome.save_screenshot(str(tmp_path / "dashboard.png"))
        assert "token: init-token" in chrome.find_element(By.CSS_SELECTOR, "#who").text

        # Create a bucket in the console.
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="buckets"]').click()
        wait_for(chrome, "#new-bucket-name").send_keys("console-test")
        chrome.find_element(
            By.CSS_SELECTOR, "#create-bucket [name=quota_type] option[value=FIFO]"
        ).click()
        chrome.find_element(By.CSS_SELECTOR, "#create-bucket [name=quota_size]").send_keys("10MB")
        chrome.find_element(By.CSS_SELECTOR, "#create-bucket-button").click()
        wait_text(chrome, "#main h1", "console-test")
        settings = httpx.get(api + "/b/console-test", headers=auth).json()["settings"]
        assert settings["quota_type"] == "FIFO" and settings["quota_size"] == 10_000_000
        # Change a setting on the bucket's page.
        records = chrome.find_element(By.CSS_SELECTOR, "#bucket-settings [name=max_block_records]")
        records.clear()
        records.send_keys("500")
        chrome.find_element(By.CSS_SELECTOR, "#bucket-settings button[type=submit]").click()
        wait_text(chrome, "#bucket-settings .msg", "saved")
        settings = httpx.get(api + "/b/console-test", headers=auth).json()["settings"]
        assert settings["max_block_records"] == 500 and settings["quota_size"] == 10_000_000

        # Write a record through the API and find it in the console.
        payload = json.dumps({"temperature": 21.5, "unit": "C"}).encode()
        ts = 1_700_000_000_123_456
        r = httpx.post(
            f"{api}/b/console-test/sensors/room-1?ts={ts}",
            content=payload,
            headers={
                **auth,
                "Content-Type": "application/json",
                "x-reduct-label-site": "lab, north",
            },
        )
        assert r.status_code == 200
        png = base64.b64decode(PNG_1X1)
        r = httpx.post(
            f"{api}/b/console-test/sensors/room-1?ts={ts + 1}",
            content=png,
            headers={**auth, "Content-Type": "image/png"},
        )
        assert r.status_code == 200
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="buckets"]').click()
        row = wait_for(chrome, 'tr[data-bucket="console-test"]')
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[2] == "2" and cells[6] == "FIFO 10 MB"  # records; size counts metadata too
        row.find_element(By.CSS_SELECTOR, "a").click()
        link = wait_for(chrome, 'tr[data-entry="sensors/room-1"] a')
        link.click()
        row = wait_for(chrome, f'tr[data-ts="{ts}"]')
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[0] == str(ts)
        assert cells[1] == "2023-11-14T22:13:20.123456Z"
        assert cells[2] == f"{len(payload)} B"
        assert cells[3] == "application/json"
        assert cells[4] == "site=lab, north"

        # A time range that excludes it finds nothing.
        stop = chrome.find_element(By.CSS_SELECTOR, "#range [name=stop]")
        chrome.execute_script("arguments[0].value = '2020-01-01T00:00:00'", stop)
        chrome.find_element(By.CSS_SELECTOR, "#range button").click()
        wait_text(chrome, "#records-box", "No records in this range")
        chrome.execute_script("arguments[0].value = ''", stop)
        chrome.find_element(By.CSS_SELECTOR, "#range button").click()
        wait_for(chrome, f'button[data-preview="{ts}"]').click()
        wait_text(chrome, "#preview-text", '"temperature": 21.5')
        chrome.find_element(By.CSS_SELECTOR, f'button[data-preview="{ts + 1}"]').click()
        image = wait_for(chrome, "#preview img.preview")
        WebDriverWait(chrome, WAIT_S).until(
            lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 1
        )

        # Download it: the file holds exactly the stored bytes.
        chrome.find_element(By.CSS_SELECTOR, f'button[data-download="{ts}"]').click()
        downloads = tmp_path / "downloads"
        deadline = time.monotonic() + WAIT_S
        files: list[Path] = []
        while time.monotonic() < deadline:
            # Chromium writes a hidden temporary file (or *.crdownload) and renames it at the end.
            files = [
                f
                for f in downloads.iterdir()
                if not f.name.startswith(".") and not f.name.endswith(".crdownload")
            ]
            if files:
                break
            time.sleep(0.1)
        assert [f.name for f in files] == [f"console-test-sensors_room-1-{ts}.json"]
        assert files[0].read_bytes() == payload
        chrome.save_screenshot(str(tmp_path / "records.png"))

        # Remove the bucket: the typed confirmation must match before OK is possible.
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="buckets"]').click()
        wait_for(chrome, 'button[data-remove="console-test"]').click()
        ok = wait_for(chrome, "#dialog-ok")
        confirm = chrome.find_element(By.CSS_SELECTOR, "#confirm-name")
        confirm.send_keys("console-tes")
        assert not ok.is_enabled()
        confirm.send_keys("t")
        assert ok.is_enabled()
        ok.click()
        WebDriverWait(chrome, WAIT_S).until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, 'tr[data-bucket="console-test"]')
        )
        assert httpx.get(api + "/b/console-test", headers=auth).status_code == 404
        # The provisioned bucket is listed read-only: no Remove button.
        row = wait_for(chrome, 'tr[data-bucket="provisioned"]')
        assert "provisioned" in row.text and "read-only" in row.text
        assert not row.find_elements(By.CSS_SELECTOR, "button")

        # Panels for endpoints this server may not have degrade to a sentence.
        chrome.get(server.url + "/base/ui/#/backups")
        wait_text(chrome, "#main", "Backups")
        chrome.get(server.url + "/base/ui/#/replications")
        wait_text(chrome, "#main", "Replication")
        wait_for(chrome, "#replications-empty, #replications-absent, #replications")
        shown_errors = (
            "return [...document.querySelectorAll('#main .error')].map(e => e.textContent).join('')"
        )
        assert chrome.execute_script(shown_errors) == ""

        # Tokens: created, its value shown once, then listed with its permissions.
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="tokens"]').click()
        wait_for(chrome, "#new-token-name").send_keys("reader")
        chrome.find_element(By.CSS_SELECTOR, "#create-token [name=read]").send_keys(
            "logs, sensor-*"
        )
        chrome.find_element(By.CSS_SELECTOR, "#create-token button").click()
        value = wait_for(chrome, "#token-value").text
        assert value.startswith("reader-")
        r = httpx.get(api + "/me", headers={"Authorization": f"Bearer {value}"})
        assert r.status_code == 200 and r.json()["permissions"]["read"] == ["logs", "sensor-*"]
        chrome.find_element(By.CSS_SELECTOR, "#dialog-ok").click()
        wait_text(chrome, 'tr[data-token="reader"]', "read: logs, sensor-*")
        chrome.save_screenshot(str(tmp_path / "tokens.png"))

        # Signing out forgets the token.
        chrome.find_element(By.CSS_SELECTOR, "#sign-out").click()
        wait_for(chrome, "#token")
        assert chrome.execute_script("return sessionStorage.length") == 0
    except Exception:
        chrome.save_screenshot(str(tmp_path / "failure.png"))  # what the browser showed
        (tmp_path / "failure.html").write_text(chrome.page_source)
        raise
    finally:
        server.kill()


def test_console_over_tls_with_auth_disabled(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = {"RS_CERT_PATH": str(cert), "RS_CERT_KEY_PATH": str(key), "RS_DISABLE_AUTH": "true"}
    server = ServerProcess(tmp_path / "data", env=env).start(wait_ready=False)
    (tmp_path / "downloads").mkdir()
    driver = browser(tmp_path / "downloads", insecure=True)
    try:
        url = f"https://127.0.0.1:{server.port}"
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/api/v1/ready", verify=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        driver.get(url + "/ui/")
        # No sign-in with authentication off: straight to the dashboard.
        wait_text(driver, "#main", "Dashboard")
        assert "authentication off" in driver.find_element(By.CSS_SELECTOR, "#who").text
        assert not driver.find_element(By.CSS_SELECTOR, "#sign-in").is_displayed()
        driver.find_element(By.CSS_SELECTOR, 'a[data-view="tokens"]').click()
        wait_text(driver, "#main", "Authentication is disabled on this server")
    finally:
        driver.quit()
        server.kill()


def _reopen(driver: Any, view: str) -> None:
    """Re-render ``view`` from the API (the console's own navigation link)."""
    driver.find_element(By.CSS_SELECTOR, 'a[data-view="dashboard"]').click()
    wait_text(driver, "#main", "Dashboard")
    driver.find_element(By.CSS_SELECTOR, f'a[data-view="{view}"]').click()


def _row_cells(driver: Any, css: str) -> list[str]:
    return [c.text for c in wait_for(driver, css).find_elements(By.TAG_NAME, "td")]


def test_console_replication_and_backup_panels(tmp_path: Path, chrome: Any) -> None:
    """The replication and backup panels against the real endpoints: a task to a second
    running instance is created, watched (state, pending records), paused and removed; a
    backup is made, listed and verified, all from the console."""
    dst_token = "mirror-secret"
    dst = ServerProcess(tmp_path / "dst", env={"RS_API_TOKEN": dst_token}).start()
    src = ServerProcess(tmp_path / "src", env={
        "RS_API_TOKEN": TOKEN, "RS_BACKUP_TARGET": str(tmp_path / "bk"),
        "RS_REPLICATION_TIMEOUT": "1",
    }).start()
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        dst_auth = {"Authorization": f"Bearer {dst_token}"}
        api, dst_api = src.url + "/api/v1", dst.url + "/api/v1"
        assert httpx.post(api + "/b/src", headers=auth).status_code == 200
        assert httpx.post(dst_api + "/b/mirror", headers=dst_auth).status_code == 200

        def write(ts: int) -> None:
            r = httpx.post(f"{api}/b/src/sensor?ts={ts}", content=b"reading", headers=auth)
            assert r.status_code == 200

        def mirrored() -> int:
            r = httpx.get(dst_api + "/b/mirror", headers=dst_auth)
            return sum(e["record_count"] for e in r.json()["entries"])

        sign_in(chrome, src.url + "/ui/", TOKEN)
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="replications"]').click()
        wait_for(chrome, "#replications-empty")
        form = wait_for(chrome, "#create-replication")
        for name, text in (("name", "to-mirror"), ("src_bucket", "src"), ("dst_host", dst.url),
                           ("dst_bucket", "mirror"), ("dst_token", dst_token)):
            form.find_element(By.CSS_SELECTOR, f"[name={name}]").send_keys(text)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        cells = _row_cells(chrome, 'tr[data-replication="to-mirror"]')
        assert cells[0] == "to-mirror" and cells[1] == f"src → {dst.url}/ mirror"
        assert cells[2].startswith("enabled") and cells[3] == "0"
        settings = httpx.get(api + "/replications/to-mirror", headers=auth).json()["settings"]
        assert settings["dst_host"] == dst.url + "/" and settings["dst_bucket"] == "mirror"

        # Records written at the source reach the destination; the panel shows it.
        for ts in (1, 2, 3):
            write(ts)
        deadline = time.monotonic() + WAIT_S
        while mirrored() < 3:
            assert time.monotonic() < deadline, "records not replicated"
            time.sleep(0.2)
        _reopen(chrome, "replications")
        cells = _row_cells(chrome, 'tr[data-replication="to-mirror"]')
        assert "active" in cells[2] and "inactive" not in cells[2]
        assert cells[3] == "0" and " ok, 0 errored" in cells[4] and not cells[4].startswith("0 ok")

        # Paused: new records wait at the source, and the panel counts them.
        row = wait_for(chrome, 'tr[data-replication="to-mirror"]')
        row.find_element(By.XPATH, ".//button[text()='Pause']").click()
        wait_text(chrome, 'tr[data-replication="to-mirror"] td:nth-child(3)', "paused")
        assert httpx.get(api + "/replications/to-mirror", headers=auth).json()["info"]["mode"] == "paused"
        for ts in (4, 5):
            write(ts)
        _reopen(chrome, "replications")
        cells = _row_cells(chrome, 'tr[data-replication="to-mirror"]')
        assert cells[2].startswith("paused") and cells[3] == "2"
        chrome.save_screenshot(str(tmp_path / "replications.png"))
        assert mirrored() == 3

        # Resumed: the waiting records go out.
        row = wait_for(chrome, 'tr[data-replication="to-mirror"]')
        row.find_element(By.XPATH, ".//button[text()='Resume']").click()
        wait_text(chrome, 'tr[data-replication="to-mirror"] td:nth-child(3)', "enabled")
        deadline = time.monotonic() + WAIT_S
        while mirrored() < 5:
            assert time.monotonic() < deadline, "records not replicated after resume"
            time.sleep(0.2)
        _reopen(chrome, "replications")
        assert _row_cells(chrome, 'tr[data-replication="to-mirror"]')[3] == "0"

        # Edited: only `sensor` entries now; the token typed at creation is kept.
        row = wait_for(chrome, 'tr[data-replication="to-mirror"]')
        row.find_element(By.XPATH, ".//button[text()='Edit']").click()
        entries = wait_for(chrome, "#dialog-body [name=entries]")
        entries.send_keys("sensor")
        chrome.find_element(By.CSS_SELECTOR, "#dialog-ok").click()
        WebDriverWait(chrome, WAIT_S).until(
            lambda d: httpx.get(api + "/replications/to-mirror", headers=auth).json()[
                "settings"]["entries"] == ["sensor"])
        write(6)
        deadline = time.monotonic() + WAIT_S
        while mirrored() < 6:  # still authorised at the destination
            assert time.monotonic() < deadline, "records not replicated after the edit"
            time.sleep(0.2)

        # Removed from the console.
        row = wait_for(chrome, 'tr[data-replication="to-mirror"]')
        row.find_element(By.XPATH, ".//button[text()='Remove']").click()
        wait_for(chrome, "#dialog-ok").click()
        wait_for(chrome, "#replications-empty")
        assert httpx.get(api + "/replications/to-mirror", headers=auth).status_code == 404

        # Backups: none yet, one made from the console, listed, verified.
        chrome.find_element(By.CSS_SELECTOR, 'a[data-view="backups"]').click()
        wait_for(chrome, "#backups-empty")
        assert chrome.find_element(By.CSS_SELECTOR, "#backup-target").text == (
            f"Target: {tmp_path / 'bk'}")
        assert "null" not in chrome.find_element(By.CSS_SELECTOR, "#main").text.split("\n")
        chrome.find_element(By.CSS_SELECTOR, "#create-backup").click()
        wait_text(chrome, "#backup-result", "made")
        made = httpx.get(api + "/backups", headers=auth).json()["backups"]
        assert len(made) == 1 and made[0]["complete"]
        backup_id = made[0]["id"]
        assert backup_id in chrome.find_element(By.CSS_SELECTOR, "#backup-result").text
        cells = _row_cells(chrome, f'tr[data-backup="{backup_id}"]')
        assert cells[0] == backup_id and cells[2] == "yes" and cells[5] == "all"
        row = wait_for(chrome, f'tr[data-backup="{backup_id}"]')
        row.find_element(By.XPATH, ".//button[text()='Verify']").click()
        wait_text(chrome, "#backup-result", "sound")
        result = chrome.find_element(By.CSS_SELECTOR, "#backup-result").text
        report = httpx.post(f"{api}/backups/{backup_id}/verify", headers=auth).json()
        assert report["ok"] and report["records"] >= 5  # `src` and `$system` records
        assert f"{backup_id}: sound: {report['files']} files, {report['records']} records" in result
        chrome.save_screenshot(str(tmp_path / "backups.png"))
        shown_errors = (
            "return [...document.querySelectorAll('#main .error')].map(e => e.textContent).join('')"
        )
        assert chrome.execute_script(shown_errors) == ""
    except Exception:
        chrome.save_screenshot(str(tmp_path / "failure.png"))
        (tmp_path / "failure.html").write_text(chrome.page_source)
        raise
    finally:
        src.kill()
        dst.kill()
