"""SIGKILL at every rename of `migrate --to arq|celery|taskiq` from a builtin scaffold: the
next run ends in exactly the tree an uninterrupted move leaves (the harness of
test_crash.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_crash import (
    Command,
    _assert_recovers,
    _killed_copies,
    _need_strace,  # noqa: F401 - the module's autouse fixture: skip or fail without strace
    _reference,
)

MOVES = {
    target: Command(lambda p, t=target: ["migrate", str(p), "--to", t], initialised_with="builtin")
    for target in ("arq", "celery", "taskiq")
}


@pytest.mark.parametrize("target", list(MOVES))
def test_sigkill_at_every_rename_of_a_builtin_move_converges(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no render cache: a cache write is a rename of its own, made by the first run only,
    # which would shift the positions of the write's renames between runs
    unusable = tmp_path / "no-cache"
    unusable.write_text("a file, not a folder: the cache is skipped\n")
    monkeypatch.setenv("BGTASKS_CACHE_DIR", str(unusable))
    command = MOVES[target]
    reference = _reference(command, tmp_path)
    # builtin's modules are deleted between the renames: undo puts them back, finishing
    # removes them
    assert reference.renames > 10
    for position, project in _killed_copies(
        reference.before, command.args, range(1, reference.renames + 1), tmp_path / "killed"
    ):
        where = f"builtin -> {target}, killed at rename {position}"
        _assert_recovers(command, project, reference, where)
    print(f"builtin -> {target}: killed at each of {reference.renames} renames")
