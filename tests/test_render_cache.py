"""The render cache: the same template and answers give the stored files, without copier;
anything that decides a render changes the key; a broken cache is only a miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.render_cache import cache_dir, cached_render, render_key

REPO = Path(__file__).resolve().parents[1]


def template(tmp_path: Path) -> Path:
    root = tmp_path / "template"
    (root / "celery").mkdir(parents=True)
    (root / "arq").mkdir()
    (root / "_partials").mkdir()
    (root / "copier.yml").write_text("_subdirectory: '{{ runner }}'\n")
    (root / "celery" / "a.py.jinja").write_text("x = {{ x }}\n")
    (root / "arq" / "b.py.jinja").write_text("y = 1\n")
    (root / "_partials" / "p.jinja").write_text("z\n")
    return root


def test_the_key_follows_what_decides_the_render(tmp_path: Path) -> None:
    root = template(tmp_path)
    first = render_key(root, "celery", {"x": 1})
    assert render_key(root, "celery", {"x": 1}) == first
    assert render_key(root, "celery", {"x": 2}) != first
    (root / "arq" / "b.py.jinja").write_text("y = 2\n")  # another runner's folder
    assert render_key(root, "celery", {"x": 1}) == first
    (root / "_partials" / "p.jinja").write_text("z2\n")  # shared partials take part
    second = render_key(root, "celery", {"x": 1})
    assert second != first
    (root / "celery" / "a.py.jinja").write_text("x = {{ x }}  # changed\n")
    assert render_key(root, "celery", {"x": 1}) not in (first, second)


def test_a_stored_render_is_returned_and_a_broken_one_renders_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGTASKS_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[int] = []

    def render() -> dict[str, str]:
        calls.append(1)
        return {"a.py": f"x = {len(calls)}\n"}

    assert cached_render("k", render) == {"a.py": "x = 1\n"}
    assert cached_render("k", render) == {"a.py": "x = 1\n"}
    assert len(calls) == 1
    (cache_dir() / "k.json").write_text("{not json")
    assert cached_render("k", render) == {"a.py": "x = 2\n"}
    assert json.loads((cache_dir() / "k.json").read_text()) == {"a.py": "x = 2\n"}


def test_an_unwritable_cache_is_only_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BGTASKS_CACHE_DIR", str(blocker / "cache"))  # under a file
    assert cached_render("k", lambda: {"a": "b"}) == {"a": "b"}


# the plan of `init` on the example, and whether copier was imported to make it
PLAN = """
import json, sys
from pathlib import Path
from bgtasks_gen.scaffold import plan_init
plan = plan_init(Path(sys.argv[1]), "celery")
print(json.dumps({"copier": "copier" in sys.modules,
                  "files": {c.path: c.new for c in plan.changes}}))
"""


def test_a_second_plan_of_the_same_project_is_the_same_without_copier(tmp_path: Path) -> None:
    env = {**os.environ, "BGTASKS_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", PLAN, str(REPO / "examples" / "layered")],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=120,
                check=True,
            ).stdout.splitlines()[-1]
        )
        for _ in range(2)
    ]
    assert runs[0]["copier"] is True
    assert runs[1]["copier"] is False
    assert runs[1]["files"] == runs[0]["files"]
    assert len(runs[0]["files"]) > 10
