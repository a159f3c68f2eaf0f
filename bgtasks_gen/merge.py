"""Three-way merge of text by lines (diff3): base, ours (the user's), theirs (new render).

Changes that touch different lines of the base merge cleanly; changes to the same lines
merge only if both sides made the same change, otherwise they are a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

Change = tuple[int, int, list[str], str]  # base start, base end, replacement, side


@dataclass(frozen=True)
class MergeResult:
    text: str
    conflicts: list[int]  # 1-based line numbers, in the base, where a conflict starts

    @property
    def clean(self) -> bool:
        return not self.conflicts


def _changes(base: list[str], other: list[str], side: str) -> list[Change]:
    matcher = SequenceMatcher(None, base, other, autojunk=False)
    return [
        (i1, i2, other[j1:j2], side)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def _overlaps(group_start: int, group_end: int, change: Change) -> bool:
    start, end = change[0], change[1]
    if start < group_end:
        return True
    # two edits at the same point (an insertion next to an edit) cannot be ordered safely
    return start == group_end and (start == end or group_start == group_end)


def _side_version(base: list[str], start: int, end: int, changes: list[Change]) -> list[str]:
    """The lines base[start:end] become with one side's changes (all inside the range)."""
    out: list[str] = []
    position = start
    for change_start, change_end, replacement, _ in sorted(changes, key=lambda c: c[:2]):
        out.extend(base[position:change_start])
        out.extend(replacement)
        position = change_end
    out.extend(base[position:end])
    return out


def merge3(
    base: str,
    ours: str,
    theirs: str,
    *,
    markers: bool = False,
    labels: tuple[str, str] = ("yours", "bgtasks"),
) -> MergeResult:
    base_lines = base.splitlines(keepends=True)
    ours_lines = ours.splitlines(keepends=True)
    theirs_lines = theirs.splitlines(keepends=True)
    changes = sorted(
        _changes(base_lines, ours_lines, "ours") + _changes(base_lines, theirs_lines, "theirs"),
        key=lambda c: (c[0], c[1]),
    )
    groups: list[list[Change]] = []
    for change in changes:
        if groups:
            group = groups[-1]
            start = min(c[0] for c in group)
            end = max(c[1] for c in group)
            if _overlaps(start, end, change):
                group.append(change)
                continue
        groups.append([change])

    out: list[str] = []
    conflicts: list[int] = []
    position = 0
    for group in groups:
        start = min(c[0] for c in group)
        end = max(c[1] for c in group)
        out.extend(base_lines[position:start])
        mine = [c for c in group if c[3] == "ours"]
        new = [c for c in group if c[3] == "theirs"]
        ours_version = _side_version(base_lines, start, end, mine)
        theirs_version = _side_version(base_lines, start, end, new)
        if not mine:
            out.extend(theirs_version)
        elif not new or ours_version == theirs_version:
            out.extend(ours_version)
        else:
            conflicts.append(start + 1)
            if markers:
                out.append(f"<<<<<<< {labels[0]}\n")
                out.extend(_terminated(ours_version))
                out.append("=======\n")
                out.extend(_terminated(theirs_version))
                out.append(f">>>>>>> {labels[1]}\n")
            else:
                out.extend(ours_version)
        position = end
    out.extend(base_lines[position:])
    return MergeResult("".join(out), conflicts)


def _terminated(lines: list[str]) -> list[str]:
    if lines and not lines[-1].endswith("\n"):
        return [*lines[:-1], lines[-1] + "\n"]
    return lines
