"""CLI latency: whole-process times of `bgtasks --help`, `init --dry-run` and `init`
per runner on a fresh copy of an example, plus the import-time breakdown of `--help`.

    .venv/bin/python bench/cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BGTASKS, fresh_copy, row, table, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bgtasks_gen.runners import available_runners  # noqa: E402


def import_breakdown() -> list[tuple[int, str]]:
    """Cumulative import time (µs) of the biggest top-level imports of `bgtasks --help`."""
    code = (
        "from bgtasks_gen.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative, name = line.split(":", 1)[1].split("|")
        if not name[1:].startswith(" "):  # top level: no extra indentation
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:12]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rows = [row("bgtasks --help", timed([*BGTASKS, "--help"], runs=args.runs))]
    with tempfile.TemporaryDirectory() as tmp:
        for runner in (spec.name for spec in available_runners()):
            dest = Path(tmp) / f"{runner}-project"
            setup = fresh_copy("layered", dest)
            for flag, label in (("--dry-run", "init --dry-run"), (None, "init")):
                cmd = [*BGTASKS, "init", str(dest), "--runner", runner] + ([flag] if flag else [])
                rows.append(
                    row(f"{label} --runner {runner}", timed(cmd, setup=setup, runs=args.runs))
                )
    table("Whole-process wall time (layered example, fresh copy each run)", rows)

    print("\n### `bgtasks --help` imports (cumulative µs, largest first)\n")
    print("| module | cumulative µs |\n| --- | --- |")
    for cumulative, name in import_breakdown():
        print(f"| {name} | {cumulative} |")
    loaded = (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom bgtasks_gen.cli import app\ntry:\n    app(['--help'])\n"
                "except SystemExit:\n    pass\n"
                "heavy = [m for m in ('libcst', 'jinja2', 'copier') if m in sys.modules]\n"
                "print(','.join(heavy) or 'none')",
            ],
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    print(f"\nheavy modules loaded by --help: {loaded}")


if __name__ == "__main__":
    main()
