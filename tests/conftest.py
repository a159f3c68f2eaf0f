from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# `init` resolves the dependencies with pip against the package index; the suite runs
# without it, except where a test sets the timeout itself (tests/test_resolve.py,
# tests/e2e/test_init_proves_e2e.py)
os.environ.setdefault("BGTASKS_RESOLVE_TIMEOUT", "0")
# rendered templates are cached (render_cache.py): the suite's own cache, never the user's
os.environ.setdefault("BGTASKS_CACHE_DIR", tempfile.mkdtemp(prefix="bgtasks-test-cache-"))

# the snapshot trees hold scaffolded projects' own test files: data here, not tests
collect_ignore = ["snapshots"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-snapshots",
        action="store_true",
        help="rewrite tests/snapshots/ from the current templates instead of comparing",
    )


# The longest files, started first: two processes each take whole files (--dist
# loadfile), so a long file collected last would run alone at the end of the run.
LONGEST_FIRST = (
    "test_crash.py",
    "e2e/test_fifty_tasks.py",
    "e2e/test_celery_reliability_e2e.py",
    "e2e/test_next_steps_e2e.py",
    "e2e/test_day_one_e2e.py",
    "e2e/test_celery_e2e.py",
    "e2e/test_taskiq_e2e.py",
    "e2e/test_scale_out_e2e.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        for position, tail in enumerate(LONGEST_FIRST):
            if path.endswith("/tests/" + tail):
                return position
        return len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


def invoke(*args: str) -> tuple[int, str]:
    """Run the bgtasks CLI in-process; (exit code, output)."""
    from typer.testing import CliRunner

    from bgtasks_gen.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def partial_module(name: str, imports: str, **context: Any) -> types.ModuleType:
    """templates/_partials/<name>.py.jinja rendered with `context` after `imports`, as
    a module of its own (dataclasses look their class's module up in sys.modules)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / "templates"))
    source = environment.get_template(f"_partials/{name}.py.jinja").render(**context)
    suffix = "_".join(f"{key}_{value}" for key, value in sorted(context.items()))
    module = types.ModuleType(f"generated_{name}_{suffix}")
    sys.modules[module.__name__] = module
    exec(compile(imports + source, f"{name}.py", "exec"), module.__dict__)
    return module


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
