"""Named instances for ``appliance cp``: ``<config>/appliance/aliases.toml``.

The file holds tokens, so it is written with mode 0600 inside a folder with mode 0700, and
replaced atomically (tmp file, fsync, rename): a crash never leaves half a file. Format::

    [aliases.edge]
    url = "http://10.0.0.5:8383"
    token = "secret"

The config folder is ``$XDG_CONFIG_HOME/appliance`` (``~/.config/appliance`` by default); the
CLI resolves it and passes it in, nothing here reads the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backends.durability import fsync_fd, replace, write_all

FILE_NAME = "aliases.toml"
FILE_MODE = 0o600
FOLDER_MODE = 0o700
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class AliasError(Exception):
    """A bad alias name or URL, a missing alias, or an unreadable alias file."""


@dataclass(frozen=True, slots=True)
class Alias:
    """One named instance: where it is and the token to use."""

    name: str
    url: str
    token: str = ""

    @property
    def masked_token(self) -> str:
        """The token for display: never more than its first two characters."""
        if not self.token:
            return "-"
        return self.token[:2] + "***" if len(self.token) > 8 else "***"


def validate_url(url: str) -> str:
    """``url`` without a trailing slash; AliasError unless it is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AliasError(f"URL {url!r} must look like http://host:port or https://host")
    return url.rstrip("/")


class AliasStore:
    """The alias file of one config folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / FILE_NAME

    def load(self) -> dict[str, Alias]:
        """Every alias by name (none when the file does not exist)."""
        try:
            raw = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise AliasError(f"alias file {self.path} can't be read: {exc}") from exc
        aliases = {}
        for name, item in (raw.get("aliases") or {}).items():
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise AliasError(f"alias file {self.path}: alias {name!r} has no url")
            aliases[name] = Alias(name, item["url"], str(item.get("token") or ""))
        return aliases

    def get(self, name: str) -> Alias:
        """The alias ``name``; AliasError naming the known ones if there is none."""
        aliases = self.load()
        if name not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise AliasError(
                f"unknown alias {name!r} (known: {known}); add it with "
                f"`appliance alias add {name} --url URL --token TOKEN`"
            )
        return aliases[name]

    def add(self, name: str, url: str, token: str, *, replace_existing: bool = False) -> Alias:
        """Store a new alias (AliasError if it exists, unless ``replace_existing``)."""
        if not _NAME.match(name):
            raise AliasError(f"alias name {name!r} may contain only letters, digits, '-' and '_'")
        aliases = self.load()
        if name in aliases and not replace_existing:
            raise AliasError(f"alias {name!r} already exists; remove it first or use --force")
        alias = Alias(name, validate_url(url), token)
        aliases[name] = alias
        self._save(aliases)
        return alias

    def remove(self, name: str) -> None:
        """Forget the alias ``name`` (AliasError if there is none)."""
        aliases = self.load()
        self.get(name)  # the same message as cp's for an unknown name
        del aliases[name]
        self._save(aliases)

    def _save(self, aliases: dict[str, Alias]) -> None:
        self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        # The folder may predate us with a looser mode; it is ours, so tighten it.
        os.chmod(self.folder, FOLDER_MODE)
        lines = []
        for alias in sorted(aliases.values(), key=lambda a: a.name):
            # json.dumps of a str is a valid TOML basic string (same escapes, ASCII only).
            lines += [
                f"[aliases.{alias.name}]",
                f"url = {json.dumps(alias.url)}",
                f"token = {json.dumps(alias.token)}",
                "",
            ]
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # a stale tmp file may have kept a looser mode
                write_all(fd, ["\n".join(lines).encode()])
                fsync_fd(fd)
            finally:
                os.close(fd)
            replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
