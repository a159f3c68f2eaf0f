from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# the snapshot trees hold scaffolded projects' own test files: data here, not tests
collect_ignore = ["snapshots"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-snapshots",
        action="store_true",
        help="rewrite tests/snapshots/ from the current templates instead of comparing",
    )


def invoke(*args: str) -> tuple[int, str]:
    """Run the bgtasks CLI in-process; (exit code, output)."""
    from typer.testing import CliRunner

    from bgtasks_gen.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create a small project from {relative path: text}."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return root


def is_subsequence(original: list[Any], patched: list[Any]) -> bool:
    """Every item of `original` appears in `patched`, in the same order."""
    remaining = iter(patched)
    return all(any(item == other for other in remaining) for item in original)


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under root with the hash of its bytes: to prove nothing changed."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def example(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a bundled example project into tmp_path and return its folder."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(EXAMPLES / name, dest)
        return dest

    return copy
