"""``SRC/BUCKET`` and ``DST/BUCKET``: which instance (or folder) and which bucket.

The bucket is what follows the last ``/``. What precedes it is, in this order: an
``http://``/``https://`` URL (an API base path such as ``https://host/reduct`` is kept); the
name of an alias; for a source only, a local folder (a data folder, or a complete backup's
folder ``<target>/<backup-id>/`` whose ``data/`` is read). Anything else is an error that
names the choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.hotcopy.aliases import AliasError, AliasStore, validate_url


@dataclass(frozen=True, slots=True)
class Location:
    """A resolved copy end: a URL with its token, or a local folder."""

    bucket: str
    url: str | None = None
    token: str = ""
    folder: Path | None = None


def resolve(
    text: str, aliases: AliasStore, *, allow_folder: bool, token: str | None = None
) -> Location:
    """Resolve ``text``; AliasError with a clear message when it names nothing usable.

    ``token`` (from ``--src-token``/``--dst-token``) overrides the alias's token.
    """
    where, sep, bucket = text.rstrip("/").rpartition("/")
    if not sep or not where or not bucket or bucket in (".", ".."):
        raise AliasError(f"{text!r} must look like ALIAS/BUCKET, URL/BUCKET or FOLDER/BUCKET")
    if where.startswith(("http://", "https://")):
        if where.count("/") < 2 or where.endswith("//"):
            raise AliasError(f"{text!r}: the URL has no host")
        return Location(bucket, url=validate_url(where), token=token or "")
    if "/" not in where and where not in (".", ".."):
        known = aliases.load()
        if where in known:
            alias = known[where]
            return Location(bucket, url=alias.url, token=alias.token if token is None else token)
    if allow_folder and Path(where).is_dir():
        return Location(bucket, folder=Path(where))
    if "/" not in where and not Path(where).exists():
        aliases.get(where)  # raises: unknown alias, with the list of known ones
    choice = "an alias, a URL or a local folder" if allow_folder else "an alias or a URL"
    raise AliasError(f"{text!r}: {where!r} is not {choice}")
