"""What startup recovery and the offline scrub found and did: a list of ``Problem`` lines.

Both ``Storage.recovery`` (a ``RecoveryReport``) and ``engine.check.check`` (a ``CheckReport``)
collect the same ``Problem`` records, so the operator sees one vocabulary of ``kind`` values:

    settings_missing, settings_corrupt, not_a_bucket, not_an_entry, index_missing,
    index_corrupt, index_mismatch, wal_corrupt, wal_torn, descriptor_missing,
    descriptor_corrupt, descriptor_extra, data_missing, data_short, data_orphan,
    rewrite_pending, removal_pending, payload_corrupt, entry_failed, bucket_failed

Each problem is either *damage* or a *crash leftover* (``Problem.crash_leftover``): what an
ordinary crash (SIGKILL, OOM kill) leaves behind and recovery is designed to clean up, judged
from evidence in the files, never from the kind alone:

- ``wal_torn``: a WAL segment ends inside its header or a frame (an append cut short). A frame
  or header whose checksum, magic or length is wrong is ``wal_corrupt``: damage.
- ``index_mismatch``, ``descriptor_extra``: an intact index lags intact descriptors (a crash
  between a descriptor write and the index write); rebuilt from the descriptors.
- ``data_orphan``: a data file with no descriptor and no WAL that the intact index does not
  list either (a new block whose first write never reached the WAL, or a dropped block whose
  files were being deleted). Listed in the index, orphaned by a corrupt (not torn) WAL, or with
  no readable index: damage.
- ``rewrite_pending``: a record-removal rewrite interrupted midway (an unreadable commit
  marker is damage).
- ``removal_pending``: a bucket or entry folder in ``.removing`` (its removal was committed by
  a rename; deleting the files was cut short). Never visible as a bucket or entry.

Leftovers are logged at INFO, damage at WARNING, and the summary line keeps them apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath

log = logging.getLogger(__name__)


# Crash-leftover kinds grouped for the summary line; both index kinds count once per entry
# folder (one index rebuilt), the others once per file.
_LEFTOVER_CATEGORY = {
    "wal_torn": "wal",
    "index_mismatch": "index",
    "descriptor_extra": "index",
    "data_orphan": "orphan",
    "rewrite_pending": "rewrite",
    "removal_pending": "removal",
}
# category -> (singular, plural, what repair did, what repair would do)
_LEFTOVER_PHRASES = {
    "wal": ("torn WAL tail", "torn WAL tails", "truncated", "to truncate"),
    "index": ("index", "indexes", "rebuilt", "to rebuild"),
    "orphan": ("unfinished data file", "unfinished data files", "set aside", "to set aside"),
    "rewrite": ("interrupted rewrite", "interrupted rewrites", "completed", "to complete"),
    "removal": ("unfinished removal", "unfinished removals", "finished", "to finish"),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: what, where (file and byte offset), what was done, and whether it is damage."""

    kind: str
    path: str
    offset: int | None
    message: str
    action: str = "none"
    crash_leftover: bool = False

    def render(self) -> str:
        """One human-readable line."""
        where = self.path if self.offset is None else f"{self.path} @ {self.offset}"
        tag = " (crash leftover)" if self.crash_leftover else ""
        return f"{self.kind}{tag}: {where}: {self.message} [{self.action}]"


@dataclass
class RecoveryReport:
    """Problems found and actions taken; empty when the data was clean."""

    problems: list[Problem] = field(default_factory=list)

    def add(
        self,
        kind: str,
        path: object,
        message: str,
        action: str = "none",
        offset: int | None = None,
        *,
        crash_leftover: bool = False,
    ) -> Problem:
        """Record (and log: INFO for a crash leftover, WARNING for damage) one problem."""
        if crash_leftover and kind not in _LEFTOVER_CATEGORY:
            raise ValueError(f"{kind} is never a crash leftover")
        problem = Problem(kind, str(path), offset, message, action, crash_leftover)
        self.problems.append(problem)
        log.log(
            logging.INFO if crash_leftover else logging.WARNING,
            "%s: %s",
            "crash leftover" if crash_leftover else "storage problem",
            problem.render(),
            extra={"kind": kind, "file": str(path), "offset": offset},
        )
        return problem

    @property
    def ok(self) -> bool:
        """True when nothing was found (neither damage nor crash leftovers)."""
        return not self.problems

    @property
    def damage(self) -> list[Problem]:
        """The problems that are not crash leftovers."""
        return [p for p in self.problems if not p.crash_leftover]

    @property
    def damaged(self) -> bool:
        """True when anything beyond crash leftovers was found."""
        return any(not p.crash_leftover for p in self.problems)

    def kinds(self) -> set[str]:
        """The distinct problem kinds (handy in tests and summaries)."""
        return {p.kind for p in self.problems}

    def leftover_summary(self) -> str | None:
        """One line about the crash leftovers (None without any), e.g. "recovered after an
        unclean shutdown: 2 torn WAL tails truncated, 1 index rebuilt"."""
        leftovers = [p for p in self.problems if p.crash_leftover]
        if not leftovers:
            return None
        found: dict[str, set[str]] = {}
        for problem in leftovers:
            category = _LEFTOVER_CATEGORY[problem.kind]
            # Index kinds name the index or a descriptor: either way one index per entry folder.
            key = str(PurePath(problem.path).parent) if category == "index" else problem.path
            found.setdefault(category, set()).add(key)
        repaired = all(p.action != "none" for p in leftovers)
        parts = []
        for category, (one, many, done, todo) in _LEFTOVER_PHRASES.items():
            count = len(found.get(category, ()))
            if count:
                parts.append(f"{count} {one if count == 1 else many} {done if repaired else todo}")
        head = (
            "recovered after an unclean shutdown"
            if repaired
            else "left by an unclean shutdown (startup or check --repair recovers them)"
        )
        return f"{head}: {', '.join(parts)}"

    def verdict(self) -> str:
        """``OK``, ``<n> problem(s) (damage)``, or ``no damage`` (crash leftovers only)."""
        if self.ok:
            return "OK"
        damage = self.damage
        return f"{len(damage)} problem(s) (damage)" if damage else "no damage"

    def render(self) -> str:
        """One line per problem, the crash-leftover summary if any, then the verdict."""
        lines = [p.render() for p in self.problems]
        leftovers = self.leftover_summary()
        if leftovers:
            lines.append(leftovers)
        lines.append("OK: no problems found" if self.ok else self.verdict())
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)
