"""Backups on S3 (``s3://bucket/prefix``) through ``backends/s3.py`` (issue 12 §1).

Layout under the prefix::

    objects/<sha256>                 file contents, stored once whatever backup holds them
    backups/<id>/started             written first: a backup without a manifest is incomplete
    backups/<id>/manifest.json       written last (one PUT: atomic); maps each file to its object

Incremental by content addressing: a file whose SHA-256 is already an object is not uploaded
again, so a backup costs its new bytes. Deleting a backup removes its manifest, then every
object no remaining manifest refers to (objects newer than an unfinished backup's start are
spared: that backup may be about to name them; it also re-checks its objects before its
manifest goes up). The endpoint and region may be given in the URL
(``?endpoint=http://127.0.0.1:9000&region=us-east-1``); credentials come from boto3's usual
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, config files, instance role).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from appliance import metrics
from appliance.backup import folder as ft
from appliance.backup import manifest as mf
from appliance.backup.files import copy_prefix, digest_prefix, walk_files
from appliance.backup.snapshot import Staged, finalize, is_wal, manifest_of
from appliance.engine import fs_ops
from appliance.errors import InternalError, NotFound, UnprocessableEntity
from backends.errors import BackendError, ObjectNotFound
from backends.s3 import S3Backend

OBJECTS = "objects/"
BACKUPS = "backups/"
ARCHIVE = "archive/"


class S3Target:
    """Backups under one S3 prefix."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        self.name = backend.name

    @classmethod
    def from_url(cls, url: str) -> S3Target:
        """Parse ``s3://bucket/prefix?endpoint=…&region=…`` and build the backend."""
        parsed = urlparse(url)
        if not parsed.netloc:
            raise UnprocessableEntity(f"Backup target {url}: no bucket (s3://bucket/prefix)")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise UnprocessableEntity(f"Backup target {url}: unknown option(s) {sorted(unknown)}")
        backend = S3Backend.from_settings(
            query.get("endpoint"), parsed.netloc, query.get("region"), None, None,
            prefix=parsed.path.strip("/"),
        )
        count_requests(backend.client)
        return cls(backend)

    # --- reading ------------------------------------------------------------------------------

    def _ids(self) -> dict[str, set[str]]:
        """Backup id → the names under ``backups/<id>/``."""
        found: dict[str, set[str]] = {}
        for info in self._call(lambda: list(self.backend.list(BACKUPS))):
            parts = info.key[len(BACKUPS) :].split("/", 1)
            if len(parts) == 2 and mf.ID_PATTERN.match(parts[0]):
                found.setdefault(parts[0], set()).add(parts[1])
        return found

    def _call(self, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except ObjectNotFound:
            raise
        except BackendError as exc:
            raise InternalError(f"backup target {self.name}: {exc}") from exc

    def _manifest(self, backup: str) -> mf.Manifest | None:
        key = f"{BACKUPS}{backup}/{mf.MANIFEST_NAME}"
        try:
            data = self._call(lambda: self.backend.read(key))
        except ObjectNotFound:
            return None
        return mf.decode(data, f"{self.name}{key}")

    def list_backups(self) -> list[ft.BackupInfo]:
        """Every backup under the prefix, oldest first."""
        infos = []
        for backup, names in sorted(self._ids().items()):
            if mf.MANIFEST_NAME not in names:
                infos.append(ft.BackupInfo(backup, False, 0, 0, 0, 0, None, "incomplete: no manifest"))
                continue
            try:
                m = self._manifest(backup)
            except Exception as exc:  # noqa: BLE001 - list shows the damage, goes on
                infos.append(ft.BackupInfo(backup, False, 0, 0, 0, 0, None, str(exc)))
                continue
            assert m is not None
            infos.append(ft.BackupInfo(m.id, True, m.cut_us, m.bytes, m.new_bytes, len(m.files), m.buckets))
        return infos

    def load(self, backup: str) -> mf.Manifest:
        """The manifest of a complete backup (404 if missing or incomplete)."""
        found = self._manifest(mf.check_id(backup))
        if found is None:
            raise NotFound(f"Backup '{backup}' is not found (or incomplete) in {self.name}")
        return found

    @staticmethod
    def _object(manifest: mf.Manifest, record: mf.FileRecord) -> str:
        objects = manifest.extra.get("objects")
        if not isinstance(objects, dict) or record.path not in objects:
            raise InternalError(f"manifest of {manifest.id} names no object for {record.path}")
        return OBJECTS + str(objects[record.path])

    def fetch(self, manifest: mf.Manifest, record: mf.FileRecord, dst: Path) -> None:
        """Download one file of a backup into ``dst``."""
        key = self._object(manifest, record)
        try:
            self._call(lambda: self.backend.download(key, dst))
        except ObjectNotFound:
            raise InternalError(f"backup {manifest.id}: object {key} of {record.path} is missing") from None

    def verify(self, backup: str) -> ft.VerifyReport:
        """Download the backup, check every file against the manifest, scrub it."""
        report = ft.VerifyReport(backup)
        found = self.load(backup)
        with tempfile.TemporaryDirectory(prefix="appliance-verify-") as tmp:
            data = Path(tmp) / mf.DATA_DIR
            for record in found.files:
                report.files += 1
                dst = data / record.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fetch(found, record, dst)
                except InternalError as exc:
                    report.problems.append(f"file {record.path}: {exc.message}")
                    continue
                ft.check_file(report, record, dst)
            return ft.scrub_into(report, data)

    # --- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """No lock object on S3: one writer per prefix (the deployment's job); see the GC."""
        yield

    def publish(
        self, staged: Staged, *, instance: str, generation: int, buckets: list[str] | None
    ) -> mf.Manifest:
        """Finalize the cut locally, upload the objects S3 does not have, then the manifest."""
        backend = self.backend
        present = {i.key[len(OBJECTS) :] for i in self._call(lambda: list(backend.list(OBJECTS)))}
        started = json.dumps({"id": staged.id, "cut_us": staged.cut_us}).encode()
        self._call(lambda: backend.write(f"{BACKUPS}{staged.id}/started", started))
        out = staged.root.with_name(staged.id + ".out")
        fs_ops.remove_tree(out)
        known: dict[str, tuple[int, int, int, str]] = {}  # rel -> inode, size, crc, sha
        for rel, size in staged.files:
            src = staged.root / rel
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not is_wal(rel):
                crc, sha = digest_prefix(src, size)
                if sha in present:
                    fs_ops.hard_link(src, dst)  # never uploaded; finalize writes no data file
                    known[rel] = (dst.stat().st_ino, size, crc, sha)
                    continue
            copy_prefix(src, dst, size)
        finalize(out)
        records: list[mf.FileRecord] = []
        objects: dict[str, str] = {}
        new_bytes = 0
        for rel, path in walk_files(out):
            st = path.stat()
            seen = known.get(rel)
            if seen is not None and seen[0] == st.st_ino:
                _, size, crc, sha = seen
            else:
                size = st.st_size
                crc, sha = digest_prefix(path, size)
                if sha not in present:
                    self._call(lambda: backend.upload(OBJECTS + sha, path))  # noqa: B023
                    present.add(sha)
                    new_bytes += size
            records.append(mf.FileRecord(rel, size, crc, sha))
            objects[rel] = sha
        # A deletion running meanwhile may have collected an object we rely on: re-check.
        now = {i.key[len(OBJECTS) :] for i in self._call(lambda: list(backend.list(OBJECTS)))}
        for rel, sha in objects.items():
            if sha not in now:
                path = out / rel
                if known.get(rel, (None,))[0] == path.stat().st_ino:
                    path.unlink()
                    copy_prefix(staged.root / rel, path, known[rel][1])
                self._call(lambda: backend.upload(OBJECTS + sha, path))  # noqa: B023
        result = manifest_of(
            staged, instance, generation, buckets, records, new_bytes, objects=objects
        )
        self._call(lambda: backend.write(f"{BACKUPS}{staged.id}/{mf.MANIFEST_NAME}", result.encode()))
        fs_ops.remove_tree(out)
        fs_ops.remove_tree(staged.root)
        return result

    def _remove(self, backup: str) -> None:
        self._call(lambda: self.backend.delete(f"{BACKUPS}{backup}/{mf.MANIFEST_NAME}"))
        self._call(lambda: self.backend.delete_prefix(f"{BACKUPS}{backup}/"))

    def _collect(self) -> int:
        """Delete objects no complete manifest names (sparing those an unfinished backup may name)."""
        referenced: set[str] = set()
        unfinished_since = None
        for info in self.list_backups():
            if info.complete:
                objects = self.load(info.id).extra.get("objects", {})
                referenced.update(objects.values())  # type: ignore[union-attr]
        for info in self._call(lambda: list(self.backend.list(BACKUPS))):
            if info.key.endswith("/started"):
                backup = info.key[len(BACKUPS) :].split("/", 1)[0]
                if self._manifest(backup) is None:
                    since = info.mtime
                    unfinished_since = since if unfinished_since is None else min(since, unfinished_since)
        removed = 0
        for info in self._call(lambda: list(self.backend.list(OBJECTS))):
            sha = info.key[len(OBJECTS) :]
            if sha in referenced:
                continue
            if unfinished_since is not None and info.mtime >= unfinished_since - 5:
                continue
            self._call(lambda: self.backend.delete(info.key))  # noqa: B023
            removed += 1
        return removed

    def delete(self, backup: str) -> None:
        """Remove one backup and the objects only it used."""
        names = self._ids().get(mf.check_id(backup))
        if not names:
            raise NotFound(f"Backup '{backup}' is not found in {self.name}")
        self._remove(backup)
        self._collect()

    def apply_retention(self, keep_last: int, max_age: float, keep: str) -> list[str]:
        """The same policy as a folder target, then one object collection."""
        doomed = ft.retention_victims(self.list_backups(), keep_last, max_age, time.time_ns() // 1000, keep)
        for backup in sorted(doomed):
            self._remove(backup)
        if doomed:
            self._collect()
        return sorted(doomed)

    def put_archive(self, name: str, path: Path) -> None:
        """Store one journal segment under ``archive/``."""
        self._call(lambda: self.backend.upload(ARCHIVE + name, path))

    def list_archive(self) -> list[str]:
        """Names of the archived journal segments."""
        return [i.key[len(ARCHIVE) :] for i in self._call(lambda: list(self.backend.list(ARCHIVE)))]

    def get_archive(self, name: str) -> bytes:
        """The bytes of one archived segment."""
        return self._call(lambda: self.backend.read(ARCHIVE + name))  # type: ignore[no-any-return]

    def delete_archive(self, name: str) -> None:
        """Remove one archived segment."""
        self._call(lambda: self.backend.delete(ARCHIVE + name))

    def close(self) -> None:
        """Close the S3 client."""
        self.backend.close()


def count_requests(client: Any) -> None:
    """Feed ``reduct_s3_requests``/``reduct_s3_errors`` from a boto3 client's own events
    (``backends/`` may not import ``appliance``, so the hook is attached here)."""

    def after_call(event_name: str, http_response: Any = None, **_: Any) -> None:
        status = getattr(http_response, "status_code", 500)
        # 404 answers "not there yet" (the dedup checks of every backup): not a failure
        metrics.s3_request(event_name.rsplit(".", 1)[-1], ok=status < 400 or status == 404)

    def after_error(event_name: str, **_: Any) -> None:  # no answer: connection, timeout
        metrics.s3_request(event_name.rsplit(".", 1)[-1], ok=False)

    client.meta.events.register("after-call.s3", after_call)
    client.meta.events.register("after-call-error.s3", after_error)
