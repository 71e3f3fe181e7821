"""Entry selection for multi-entry queries: the ``entries`` list of ``POST /io/{bucket}/q`` (§5.4).

* ``None``, ``[]`` or a list containing ``"*"`` selects every entry except ``$meta`` entries;
  so does a list made only of exclusions;
* an item equal to an entry name selects that entry — the only way to select a ``$meta``
  entry (``a/$meta``);
* an item without ``/`` whose only ``*`` is the last character is a prefix match on the whole
  name (``sen*`` selects ``sensor`` and ``sensor/a``);
* otherwise the item is matched segment by segment on ``/`` (a leading ``/`` is ignored):
  ``*`` matches any run of characters inside one segment, a ``**`` segment any number of
  segments, at least one when it ends the pattern (``a/**`` is everything below ``a``);
  ``a/x/y*`` selects ``a/x/y`` but not ``a/x/y/$meta``;
* items starting with ``!`` exclude what the rest of the item would select.

Globs never select ``$meta`` entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from appliance.engine.names import is_meta_entry

__all__ = ["matches", "select_entries"]



@lru_cache(maxsize=256)
def _segment_regex(segment: str) -> re.Pattern[str]:
    return re.compile("[^/]*".join(re.escape(part) for part in segment.split("*")))


def _match_segments(pattern: Sequence[str], name: Sequence[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # Any number of whole segments; a trailing ``**`` needs at least one, as in gitignore
        # (``a/**`` is everything below ``a``, not ``a`` itself).
        first = 1 if not rest else 0
        return any(_match_segments(rest, name[skip:]) for skip in range(first, len(name) + 1))
    if not name or not _segment_regex(head).fullmatch(name[0]):
        return False
    return _match_segments(rest, name[1:])


def matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` (without ``!``) selects the entry ``name``."""
    if pattern == name:
        return True
    if is_meta_entry(name):
        return False  # $meta entries are only ever selected by their exact name
    glob = pattern.lstrip("/")
    if "/" not in glob and glob.endswith("*") and "*" not in glob[:-1]:
        return name.startswith(glob[:-1])
    return _match_segments(glob.split("/"), name.split("/"))


def select_entries(patterns: Sequence[str] | None, names: Iterable[str]) -> list[str]:
    """The entries of ``names`` selected by ``patterns``, sorted by name."""
    includes = [p for p in patterns or () if not p.startswith("!")]
    excludes = [p[1:] for p in patterns or () if p.startswith("!")]
    select_all = not includes or "*" in includes

    selected = []
    for name in set(names):
        if select_all and not is_meta_entry(name):
            chosen = True
        else:
            chosen = any(matches(pattern, name) for pattern in includes)
        if chosen and not any(matches(pattern, name) for pattern in excludes):
            selected.append(name)
    return sorted(selected)
