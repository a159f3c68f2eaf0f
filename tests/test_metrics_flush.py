"""The web process's batched metric counts (task_board's `_flush_later`): while Redis is
down the counts are kept, the flush backs off instead of trying every FLUSH_SECONDS, the
outage is logged once, and the counts are written whole when Redis answers again.

Runs the generated module (the with-metrics snapshot) in the runner's environment with a
fake Redis client: what is under test is the module's own retry logic, not Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "with-metrics" / "taskiq"
PYTHON = ROOT / ".venvs" / "taskiq" / "bin" / "python"

DRIVER = r"""
import asyncio, json, logging, time
from app.tasks import taskiq_inbox as board

board.FLUSH_SECONDS = 0.01
board.FLUSH_BACKOFF_MAX_SECONDS = 0.08
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger(board.__name__ + ".metrics").addHandler(Keep())
logging.getLogger(board.__name__ + ".metrics").setLevel(logging.INFO)

class Pipe:
    def __init__(self, client):
        self.client = client
        self.ops = []
    async def __aenter__(self):
        return self
    async def __aexit__(self, *exc):
        return False
    def hincrby(self, key, field, count):
        self.ops.append((key, field, count))
    async def execute(self):
        self.client.tries.append(time.monotonic())
        if self.client.down:
            raise ConnectionError("redis is down")
        for key, field, count in self.ops:
            self.client.written[field] = self.client.written.get(field, 0) + count

class Client:
    def __init__(self):
        self.down = True
        self.tries = []
        self.written = {}
    def pipeline(self, transaction=True):
        return Pipe(self)

async def main():
    client = Client()
    for _ in range(3):
        board.count_queued(client, "send_email")
    await asyncio.sleep(0.6)  # down: tries back off to the cap
    tries_down = list(client.tries)
    board.count_queued(client, "send_email")
    client.down = False
    for _ in range(100):
        if not board._unsent:
            break
        await asyncio.sleep(0.02)
    gaps = [b - a for a, b in zip(tries_down, tries_down[1:])]
    print(json.dumps({"tries_down": len(tries_down), "gaps": gaps,
                      "written": client.written, "unsent": len(board._unsent),
                      "records": records}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `bash .ci/setup-venvs`")
    project = tmp_path_factory.mktemp("flush") / "shop"
    shutil.copytree(SNAPSHOT, project)
    done = subprocess.run(
        [str(PYTHON), "-c", DRIVER], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_redis_outage_backs_off_instead_of_retrying_every_flush(
    outcome: dict[str, object],
) -> None:
    gaps = outcome["gaps"]
    assert isinstance(gaps, list) and len(gaps) >= 3
    # at a fixed 0.01 s a 0.6 s outage would be ~60 tries; doubling to a 0.08 s cap is ~10
    assert int(str(outcome["tries_down"])) <= 15
    assert gaps[-1] > 2 * gaps[0]


def test_the_outage_is_logged_once_and_its_end_once(outcome: dict[str, object]) -> None:
    records = outcome["records"]
    assert isinstance(records, list)
    levels = [level for level, _ in records]
    assert levels.count("WARNING") == 1
    assert levels.count("INFO") == 1 and levels.index("WARNING") < levels.index("INFO")


def test_no_count_is_lost_across_the_outage(outcome: dict[str, object]) -> None:
    written = outcome["written"]
    assert isinstance(written, dict) and list(written.values()) == [4]
    (field,) = written
    assert field.startswith("send_email") and field.endswith("queued")
    assert outcome["unsent"] == 0
