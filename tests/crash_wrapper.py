"""Run the bgtasks command line with a pause in its write phase, so a test can signal a
real bgtasks process while a write is half done. Test code only: never shipped.

    python tests/crash_wrapper.py N MARKER ARGS...

After the Nth os.replace of the run, MARKER is created and the process sleeps (at most
PAUSE_SECONDS) inside that os.replace call: a signal sent then arrives between two file
replacements, exactly where bgtasks must undo what it already did.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_SECONDS = 30


def install_pause(after: int, marker: Path) -> None:
    real_replace = os.replace
    calls = 0

    def replace_then_pause(src: str | Path, dst: str | Path) -> None:
        nonlocal calls
        real_replace(src, dst)
        calls += 1
        if calls == after:
            marker.touch()
            time.sleep(PAUSE_SECONDS)

    os.replace = replace_then_pause  # type: ignore[assignment]


def main() -> None:
    after, marker, *args = sys.argv[1:]
    install_pause(int(after), Path(marker))
    from bgtasks_gen.cli import main as bgtasks

    sys.argv = ["bgtasks", *args]
    bgtasks()


if __name__ == "__main__":
    main()
