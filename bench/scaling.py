"""How add-task and init scale with the project.

- `add-task` on projects that already have 10, 100 and 500 tasks (arq runner, layered
  example): whole-process time of adding one more;
- `init` on a settings module of 100, 1,000 and 5,000 lines;
- `init --dry-run` on a synthetic project of 2,000 Python files, 20 of them in syntax
  newer than the interpreter (Python 3.14's `except A, B:`), the app importing a tenth.
Each figure is the median of several runs (min and max beside it); growth is the ratio
between consecutive sizes, measured in the same run.

    .venv/bin/python bench/scaling.py [--runs N] [--runner arq]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import BGTASKS, EXAMPLES, row, table, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bgtasks_gen.addtask import plan_add_task  # noqa: E402
from bgtasks_gen.apply import apply  # noqa: E402
from bgtasks_gen.scaffold import plan_init  # noqa: E402


def project_with_tasks(dest: Path, runner: str, count: int) -> Path:
    shutil.copytree(EXAMPLES / "layered", dest)
    apply(plan_init(dest, runner))
    for index in range(count):
        args = [f"value_{index}:int"] if index % 2 else []
        apply(plan_add_task(dest, f"task_{index:04d}", args=args, route=bool(index % 3)))
    return dest


def settings_of(lines: int) -> str:
    fields = [f"    FIELD_{i:05d}: str = 'value {i}'" for i in range(lines - 8)]
    return (
        '"""Settings."""\n\nfrom pydantic_settings import BaseSettings\n\n\n'
        "class Settings(BaseSettings):\n" + "\n".join(fields) + "\n\n\nsettings = Settings()\n"
    )


def big_project(dest: Path, files: int = 2000, newer: int = 20) -> Path:
    """The layered example plus `files` modules in 40 packages: routers, services and
    models importing each other, the way a large service grows."""
    shutil.copytree(EXAMPLES / "layered", dest)
    domain = dest / "app" / "domain"
    domain.mkdir()
    (domain / "__init__.py").write_text("")
    packages = 40
    per = files // packages
    newer_syntax = "KeyError, ValueError:"  # Python 3.14: no parentheses needed
    for p in range(packages):
        folder = domain / f"area_{p:02d}"
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for m in range(per):
            index = p * per + m
            body = [
                "import logging",
                f"from app.domain.area_{p:02d} import module_{(m + 1) % per:03d} as sibling",
                "from app.core.config import settings",
                "",
                "logger = logging.getLogger(__name__)",
                "",
                "",
                f"class Model{index}:",
                "    name: str = 'x'",
                "",
                "    def parquet_path(self) -> str:",
                "        return f'{settings.DATABASE_URL}/{self.name}.parquet'",
                "",
                "",
                "def load() -> object:",
                "    try:",
                "        return sibling",
                "    except " + (newer_syntax if index < newer else "(KeyError, ValueError):"),
                "        return None",
            ]
            (folder / f"module_{m:03d}.py").write_text("\n".join(body) + "\n")
    main = dest / "app" / "main.py"
    imports = "".join(
        f"from app.domain.area_{p:02d} import module_000 as area_{p:02d}  # noqa: F401\n"
        for p in range(0, packages, 4)
    )
    main.write_text(imports + main.read_text())
    return dest


def growth(medians: list[float], sizes: list[int]) -> str:
    parts = []
    for (a, b), (sa, sb) in zip(
        zip(medians, medians[1:], strict=False), zip(sizes, sizes[1:], strict=False), strict=False
    ):
        parts.append(f"{sa}->{sb} ({sb / sa:.0f}x size): {b / a:.2f}x time")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runner", default="arq")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows, medians, sizes = [], [], [10, 100, 500]
        for count in sizes:
            base = project_with_tasks(Path(tmp) / f"p{count}", args.runner, count)
            work = Path(tmp) / f"w{count}"

            def reset(base: Path = base, work: Path = work) -> None:
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)

            cmd = [*BGTASKS, "add-task", "one_more", "--arg", "x:int", "-p", str(work)]
            times = timed(cmd, setup=reset, runs=args.runs)
            medians.append(statistics.median(times))
            lines = (
                sum(1 for _ in (base / "app/tasks/arq_tasks.py").open())
                if args.runner == "arq"
                else 0
            )
            rows.append(
                row(f"add-task with {count} tasks ({lines} lines in the tasks module)", times)
            )
        table(f"add-task ({args.runner} runner)", rows)
        print(f"\ngrowth: {growth(medians, sizes)}")

        rows, medians, sizes = [], [], [100, 1000, 5000]
        for lines in sizes:
            base = Path(tmp) / f"s{lines}"
            shutil.copytree(EXAMPLES / "layered", base)
            (base / "app/core/config.py").write_text(settings_of(lines))
            work = Path(tmp) / f"sw{lines}"

            def reset(base: Path = base, work: Path = work) -> None:
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)

            cmd = [*BGTASKS, "init", str(work), "--runner", args.runner]
            times = timed(cmd, setup=reset, runs=args.runs)
            medians.append(statistics.median(times))
            rows.append(row(f"init, settings module of {lines} lines", times))
        table(f"init ({args.runner} runner)", rows)
        print(f"\ngrowth: {growth(medians, sizes)}")

        big = big_project(Path(tmp) / "big")
        count = sum(1 for _ in big.rglob("*.py"))
        cmd = [*BGTASKS, "init", str(big), "--runner", args.runner, "--dry-run"]
        times = timed(cmd, runs=args.runs)
        table(
            f"init --dry-run on a large project ({args.runner} runner)",
            [row(f"{count} Python files, 20 in Python 3.14 syntax", times)],
        )


if __name__ == "__main__":
    main()
