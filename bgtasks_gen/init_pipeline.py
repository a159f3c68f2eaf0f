"""`bgtasks init` in five stages, data passed from each to the next:

    discover  init_discover.discover_init  -> Discovered (app, settings, features)
    plan      scaffold.plan_init           -> Plan (every change, in memory)
    resolve   resolve.resolve              -> Verdict (the patched dependencies install?)
    write     apply.apply                  -> the files, all or nothing (cli._finish)
    verify    verify.prove_written         -> Served (the app serves the new routes?)

`prepare` runs the first three under the project lock; the CLI writes the plan (or
shows it, for --dry-run/--check) and, when `Prepared.interpreter` names the project's
environment, calls `verify.prove_written` on what was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bgtasks_gen.errors import BadInput

if TYPE_CHECKING:
    from bgtasks_gen.discovery import Overrides
    from bgtasks_gen.plan import Plan
    from bgtasks_gen.project_env import Interpreter


@dataclass(frozen=True)
class InitRequest:
    """What the user asked `init` for."""

    root: Path
    runner: str
    broker: str = "redis"
    overrides: Overrides | None = None
    force: bool = False
    with_deps: bool = True
    with_features: Sequence[str] = ()
    without_features: Sequence[str] = ()
    prove: bool = True  # resolve before writing, serve after (not --no-verify/--check)
    writes: bool = True  # not --dry-run: there will be written files to serve
    python: Path | None = None  # --python: the environment to serve in


@dataclass(frozen=True)
class Prepared:
    plan: Plan
    # the project's environment to serve the written app in; None: not proven here
    interpreter: Interpreter | None = None


def prepare(request: InitRequest) -> Prepared:
    """discover -> plan -> resolve. A set of packages that cannot install together is
    refused (BadInput naming both requirements) before anything is written."""
    from bgtasks_gen.nextsteps import with_doctor_step
    from bgtasks_gen.resolve import resolution_request, resolve
    from bgtasks_gen.scaffold import plan_init
    from bgtasks_gen.verify import project_interpreter

    plan = plan_init(
        request.root,
        request.runner,
        broker=request.broker,
        overrides=request.overrides,
        force=request.force,
        with_deps=request.with_deps,
        with_features=request.with_features,
        without_features=request.without_features,
    )
    if not (request.prove and plan.writes):
        return Prepared(plan)
    if request.with_deps:
        verdict = resolve(resolution_request(plan))
        if verdict.refuses:
            raise BadInput(verdict.message, verdict.hint)
        if verdict.message:
            plan.notes.append(verdict.message)
    if not request.writes:
        return Prepared(plan)
    found = project_interpreter(plan.root, request.python)
    if found is None:
        # no environment to serve in: the next steps say how to prove it once installed
        plan.next_steps = with_doctor_step(plan.next_steps)
    return Prepared(plan, found)
