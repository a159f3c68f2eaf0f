"""Discovery and `--help` on a big project, against what importing bgtasks costs.

    .venv/bin/python bench/discovery.py [--runs 7] [--runner builtin] [--before DIR]

Writes the synthetic ~1,800-file project of big_project.py, then times, the commands of
one repetition run one after another so a busy machine slows them all alike (medians):
- `import bgtasks_gen.cli`, and every module `init` imports (bgtasks' own and its
  libraries: libcst, jinja2, rich, ...), the floor of any `init`;
- `bgtasks init --dry-run --no-verify --no-deps` (BGTASKS_RESOLVE_TIMEOUT=0: offline) on
  the big project, and its ratio to that floor (goal: at most 2.5x), once with an empty
  render cache (copier imported and run) and once with the cache a first run filled;
- `bgtasks --help` against `python -c "import typer"` (goal: at most 1.5x).
`--before DIR` times the same with the bgtasks_gen package found in DIR (an older
checkout: `git archive HEAD bgtasks_gen templates | tar -x -C DIR`), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import EXAMPLES, REPO
from big_project import write_project

# which modules `init` imports, listed by running it once on the small example
_IMPORTED_BY_INIT = """
import json, shutil, sys, tempfile
from pathlib import Path
from bgtasks_gen.cli import app
work = Path(tempfile.mkdtemp()) / "project"
shutil.copytree(sys.argv[1], work)
try:
    app(["init", str(work), "--runner", sys.argv[2], "--dry-run", "--no-verify", "--no-deps"])
except SystemExit:
    pass
shutil.rmtree(work.parent)
ours = sorted(m for m in sys.modules if m.startswith("bgtasks_gen"))
print(json.dumps(ours))
"""

# what discovery read: files summarised (parsed) and lowered from newer syntax
_DISCOVERY_COUNTS = """
import sys
from pathlib import Path
from bgtasks_gen.discovery import discover, project_index
index = project_index(Path(sys.argv[1]))
discover(Path(sys.argv[1]), index=index)
lowered = getattr(index, "lowered", None)
print(len(index._cache), "?" if lowered is None else len(lowered), "libcst" in sys.modules)
"""


# run outside the repository: Python puts the current folder first on sys.path, which
# would shadow the bgtasks_gen that PYTHONPATH names
OUTSIDE = Path(tempfile.gettempdir())


def _env(source: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(source),
        "BGTASKS_RESOLVE_TIMEOUT": "0",
        "NO_COLOR": "1",
    }


def _run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=OUTSIDE)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def _init_imports(source: Path, runner: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY_INIT, str(EXAMPLES / "layered"), runner],
        capture_output=True,
        text=True,
        env=_env(source),
        cwd=OUTSIDE,
    )
    if result.returncode != 0:
        raise SystemExit(f"listing init's imports failed:\n{result.stderr}")
    modules: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return "import " + ", ".join(modules)


def _counts(source: Path, project: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _DISCOVERY_COUNTS, str(project)],
        capture_output=True,
        text=True,
        env=_env(source),
        cwd=OUTSIDE,
    )
    if result.returncode != 0:
        return f"discovery failed: {result.stderr.strip().splitlines()[-1]}"
    parsed, lowered, libcst = result.stdout.split()
    return f"{parsed} modules summarised, {lowered} lowered, libcst imported: {libcst}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--runner", default="builtin")
    parser.add_argument("--before", type=Path, help="a folder holding an older bgtasks_gen")
    args = parser.parse_args()
    sources = {"now": REPO}
    if args.before:
        sources = {"before": args.before.resolve(), **sources}
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "big"
        files = write_project(project)
        commands: dict[tuple[str, str], list[str]] = {}
        for label, source in sources.items():
            commands[(label, "import cli")] = [python, "-c", "import bgtasks_gen.cli"]
            commands[(label, "import init's modules")] = [
                python,
                "-c",
                _init_imports(source, args.runner),
            ]
            commands[(label, "init --dry-run, first render")] = [
                python,
                "-m",
                "bgtasks_gen",
                "init",
                str(project),
                "--runner",
                args.runner,
                "--dry-run",
                "--no-verify",
                "--no-deps",
            ]
            commands[(label, "init --dry-run")] = commands[(label, "init --dry-run, first render")]
            commands[(label, "--help")] = [python, "-m", "bgtasks_gen", "--help"]
        commands[("", "import typer")] = [python, "-c", "import typer"]
        times: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
        # rendered templates are cached by content (render_cache.py): "first render" runs
        # with an empty cache each time (copier imported and run), "init --dry-run" with
        # the cache its first run filled, as a second command on the same project finds it
        warm = Path(tmp) / "render-cache"
        for _ in range(args.runs):
            for key, cmd in commands.items():
                source = sources.get(key[0], REPO)
                cold = Path(tempfile.mkdtemp(dir=tmp))
                cache = cold if key[1].endswith("first render") else warm / key[0]
                env = {**_env(source), "BGTASKS_CACHE_DIR": str(cache)}
                if key[1] == "init --dry-run" and not cache.exists():
                    _run(cmd, env)  # fills the cache; not timed
                times[key].append(_run(cmd, env))
        median = {key: statistics.median(found) * 1000 for key, found in times.items()}

        print(f"\n### Big project: {files} files, runner {args.runner}, {args.runs} runs\n")
        print("| code | command | median ms | min ms | max ms |\n| --- | --- | --- | --- | --- |")
        for key, found in times.items():
            ms = [t * 1000 for t in found]
            print(f"| {key[0]} | {key[1]} | {median[key]:.0f} | {min(ms):.0f} | {max(ms):.0f} |")
        print(
            "\n| code | init --dry-run / init's imports (goal <= 2.5): first render, cached "
            "| --help / import typer (goal <= 1.5) | discovery read |\n| --- | --- | --- | --- |"
        )
        for label, source in sources.items():
            floor = median[(label, "import init's modules")]
            first = median[(label, "init --dry-run, first render")] / floor
            cached = median[(label, "init --dry-run")] / floor
            helped = median[(label, "--help")] / median[("", "import typer")]
            print(
                f"| {label} | {first:.2f}x, {cached:.2f}x | {helped:.2f}x "
                f"| {_counts(source, project)} |"
            )


if __name__ == "__main__":
    main()
