"""What the proofs cost `bgtasks init`: the same init with and without them, side by side.

    .venv/bin/python bench/init_proof.py [--runs 3]

Projects: examples/layered, and the same with 300 more modules (a big tree for discovery).
Columns: `--no-verify` (plan and write), resolve (pip against the package index, for the
project's Python), resolve + serve (the app served once in .venvs/arq's interpreter,
behind a private redis-server). pip's HTTP cache is warm after the first run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BGTASKS, EXAMPLES, REPO, private_redis  # noqa: E402


def big_copy(dest: Path, modules: int) -> Path:
    """examples/layered plus `modules` small modules in 30 packages."""
    shutil.copytree(EXAMPLES / "layered", dest)
    for index in range(modules):
        package = dest / "app" / f"area{index % 30}"
        package.mkdir(exist_ok=True)
        (package / "__init__.py").touch()
        (package / f"module{index}.py").write_text(
            "from app.core.config import settings\n\n\n"
            f"def handler_{index}() -> str:\n    return str(settings)\n"
        )
    return dest


def run_init(source: Path, work: Path, args: list[str], env: dict[str, str]) -> float:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    started = time.perf_counter()
    result = subprocess.run(
        [*BGTASKS, "init", str(work), "--runner", "arq", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"init {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    if "--no-verify" not in args and "dependencies resolve with pip" not in result.stdout:
        raise SystemExit(f"resolution did not run to the end:\n{result.stdout}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    python = REPO / ".venvs" / "arq" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="bgtasks-init-proof-") as folder:
        root = Path(folder)
        projects = {
            "examples/layered": EXAMPLES / "layered",
            "layered + 300 modules": big_copy(root / "big", 300),
        }
        print("| project | --no-verify s | resolve s | resolve + serve s |")
        print("| --- | --- | --- | --- |")
        for label, source in projects.items():
            work = root / "work"
            with private_redis(work) as (_, env):
                env = {**env, "BGTASKS_RESOLVE_TIMEOUT": "60"}
                env.pop("PYTHONPATH", None)  # init sets the project's own for the serve
                plain = os.environ | {"BGTASKS_RESOLVE_TIMEOUT": "60"}
                columns = [
                    (["--no-verify"], plain),
                    ([], plain),
                    (["--python", str(python)], env),
                ]
                medians = []
                for args, environment in columns:
                    times = [run_init(source, work, args, environment) for _ in range(options.runs)]
                    medians.append(statistics.median(times))
            print(f"| {label} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")


if __name__ == "__main__":
    main()
