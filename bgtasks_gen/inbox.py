"""`bgtasks failed`: the failed-task inbox, read and acted on from the project folder.

The inbox lives in the project's Redis and its code is the project's own generated
module (`<tasks package>.<runner>_inbox`): list, show, replay and discard run that module
in the project's interpreter, with the project's settings read as its processes read
them (environment, then .env), the way `doctor` asks. Nothing of bgtasks needs to be
importable there: the request goes in as JSON, the answer comes back as one marked line.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgtasks_gen.errors import BadInput
from bgtasks_gen.project_env import (
    ProbeFailed,
    find_interpreter,
    load_stack_project,
    process_environment,
    script_of,
)

ANSWER_MARKER = "BGTASKS-INBOX:"
QUEUE_RUNNERS = ("celery", "arq", "taskiq")
TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class InboxRequest:
    action: str  # "list", "show", "replay" or "discard"
    entry_id: str = ""
    task: str = ""  # list: only this task's entries
    limit: int = 20
    offset: int = 0
    force: bool = False  # replay: again, although it was replayed before


def _inbox_main(raw_request: str) -> None:
    """Runs in the project's interpreter: one inbox action, its answer as JSON."""
    import asyncio
    import importlib
    import json
    import sys

    request = json.loads(raw_request)

    async def act() -> dict[str, Any]:
        inbox = importlib.import_module(request["module"])
        client = inbox.async_client()
        try:
            action = request["action"]
            if action == "list":
                task = request["task"] or None
                entries, total, dropped = await inbox.page(
                    client, request["offset"], request["limit"], task
                )
                return {"entries": entries, "total": total, "dropped": dropped}
            found = await inbox.entry(client, request["id"])
            if found is None:
                return {"error": "not_found"}
            if action == "show":
                return {"entry": inbox.public(found)}
            if action == "discard":
                await inbox.discard(client, request["id"])
                return {"discarded": request["id"]}
            try:
                new_id = await inbox.replay(request["id"], force=request["force"])
            except inbox.ReplayRefused as refused:
                return {"error": "already_replayed", "replayed_as": refused.earlier}
            except ValueError as error:
                return {"error": "not_replayable", "reason": str(error)}
            return {"replayed": request["id"], "task_id": new_id}
        finally:
            await client.aclose()

    try:
        answer = asyncio.run(act())
    except Exception as error:  # noqa: BLE001 - reported, with its type, to the CLI
        answer = {"error": "failed", "reason": f"{type(error).__name__}: {error}"}
    sys.stdout.write("BGTASKS-INBOX:" + json.dumps(answer, default=str) + "\n")


def run_inbox(root: Path, request: InboxRequest, python: Path | None = None) -> dict[str, Any]:
    """Run `request` against the project's inbox; BadInput for a project without one,
    ProbeFailed when the project's interpreter cannot answer."""
    project = load_stack_project(root)
    if project.spec.name not in QUEUE_RUNNERS:
        raise BadInput(
            f"this project runs {project.spec.name}, which has no failed-task inbox "
            "(BackgroundTasks keeps nothing after a failure)",
            "the inbox comes with the queue runners: celery, arq or taskiq",
        )
    # the generated module, in the project's tasks package (one per runner)
    module = f"{project.tasks_module}.{project.spec.name}_inbox"
    module_file = project.source_root / Path(*module.split(".")).with_suffix(".py")
    if not module_file.is_file():
        raise BadInput(
            f"{module_file.relative_to(project.root)} is missing: the inbox is generated "
            "with the runner",
            "run `bgtasks update` to write it",
        )
    interpreter = find_interpreter(project.root, python)
    payload = {
        "module": module,
        "action": request.action,
        "id": request.entry_id,
        "task": request.task,
        "limit": request.limit,
        "offset": request.offset,
        "force": request.force,
    }
    env = process_environment(project)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    command = [str(interpreter.path), "-c", script_of(_inbox_main), json.dumps(payload)]
    try:
        result = subprocess.run(
            command,
            cwd=project.source_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(
            f"the inbox did not answer within {TIMEOUT_SECONDS:.0f} s",
            "is the project's Redis reachable? (`bgtasks doctor`)",
        ) from None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(ANSWER_MARKER):
            answer: dict[str, Any] = json.loads(line.removeprefix(ANSWER_MARKER))
            return answer
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise ProbeFailed(
        f"{interpreter.path} could not read the inbox (exit {result.returncode}): {last}",
        "run it in the project's environment (--python), with its packages installed",
    )


def inbox_error(answer: dict[str, Any], entry_id: str) -> BadInput | None:
    """The answer's refusal as one message with a hint, or None when it succeeded."""
    error = answer.get("error")
    if error is None:
        return None
    if error == "not_found":
        return BadInput(
            f"no failed task {entry_id!r} in the inbox",
            "`bgtasks failed list` shows what is kept (entries past the retention are gone)",
        )
    if error == "already_replayed":
        return BadInput(
            f"{entry_id} was replayed already, as {answer.get('replayed_as')}",
            "pass --force to queue it once more",
        )
    if error == "not_replayable":
        return BadInput(str(answer.get("reason")), "discard it once read")
    return BadInput(
        f"the inbox failed: {answer.get('reason')}",
        "check the project's Redis settings with `bgtasks doctor`",
    )
