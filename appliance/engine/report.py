"""What startup recovery and the offline scrub found and did: a list of ``Problem`` lines.

Both ``Storage.recovery`` (a ``RecoveryReport``) and ``engine.check.check`` (a ``CheckReport``)
collect the same ``Problem`` records, so the operator sees one vocabulary of ``kind`` values:

    settings_missing, settings_corrupt, not_a_bucket, not_an_entry, index_missing,
    index_corrupt, index_mismatch, wal_corrupt, wal_torn, descriptor_missing,
    descriptor_corrupt, descriptor_extra, data_missing, data_short, data_orphan,
    rewrite_pending, payload_corrupt, entry_failed, bucket_failed
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: what, where (file and byte offset), and what was done about it."""

    kind: str
    path: str
    offset: int | None
    message: str
    action: str = "none"

    def render(self) -> str:
        """One human-readable line."""
        where = self.path if self.offset is None else f"{self.path} @ {self.offset}"
        return f"{self.kind}: {where}: {self.message} [{self.action}]"


@dataclass
class RecoveryReport:
    """Problems found and actions taken; empty when the data was clean."""

    problems: list[Problem] = field(default_factory=list)

    def add(
        self, kind: str, path: object, message: str, action: str = "none", offset: int | None = None
    ) -> Problem:
        """Record (and log) one problem."""
        problem = Problem(kind, str(path), offset, message, action)
        self.problems.append(problem)
        log.warning(
            "storage problem: %s",
            problem.render(),
            extra={"kind": kind, "file": str(path), "offset": offset},
        )
        return problem

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    def kinds(self) -> set[str]:
        """The distinct problem kinds (handy in tests and summaries)."""
        return {p.kind for p in self.problems}

    def render(self) -> str:
        """One line per problem, then a summary line."""
        lines = [p.render() for p in self.problems]
        lines.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)
