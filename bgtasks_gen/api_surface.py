"""The HTTP surface a project's task router answers with, and the move to the common one.

New scaffolds of every queue runner answer with one surface (`api_shape = "common"` in
the state file's [layout]): the same prefix, verbs, paths, JSON bodies, field names and
status words. A project scaffolded before keeps its runner's own routes (no api_shape
recorded), and one moved from arq to taskiq keeps arq's (`api_shape = "arq"`), so its
clients keep working; `bgtasks update --api-shape common` re-renders it onto the common
surface once its clients are ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgtasks_gen.state import COMMON_API_SHAPE

if TYPE_CHECKING:
    from bgtasks_gen.addtask import Project

# the prefix of the common router's routes (the project's own include prefix comes first)
COMMON_PREFIX = "/tasks"
COMMON_EMAIL_ROUTE = f"{COMMON_PREFIX}/send-email"
# the runners with a queue, whose routers take api_shape (builtin's routes only queue)
QUEUE_RUNNERS = ("celery", "arq", "taskiq")
MOVE_COMMAND = f"bgtasks update --api-shape {COMMON_API_SHAPE}"


@dataclass(frozen=True)
class SurfaceChange:
    """What a client of the old surface sends or reads differently on the common one."""

    old: str
    new: str


# per old surface (the runner whose routes the router answers with): what changes
CLIENT_CHANGES: dict[str, tuple[SurfaceChange, ...]] = {
    "celery": (
        SurfaceChange(
            "POST /tasks/process-order/{order_id}", 'POST /tasks/process-order {"order_id"}'
        ),
        SurfaceChange("POST /tasks/long-running?steps=N", 'POST /tasks/long-running {"steps"}'),
        SurfaceChange("DELETE /tasks/cancel/{task_id}", "POST /tasks/cancel/{task_id}?wait="),
        SurfaceChange("cancel answers {task_id, state, action}", "{task_id, cancelled, status}"),
        SurfaceChange('"state": PENDING/RECEIVED', '"status": "queued"'),
        SurfaceChange('"state": STARTED/PROGRESS', '"status": "in_progress"'),
        SurfaceChange('"state": RETRY', '"status": "retrying"'),
        SurfaceChange(
            '"state": SUCCESS/FAILURE/REVOKED',
            '"status": "complete" with "success", and "error" failed/timed_out/'
            "unconfirmed/cancelled",
        ),
    ),
    "arq": (
        SurfaceChange("/arq-tasks/...", "/tasks/..."),
        SurfaceChange('"job_id"', '"task_id" (accepted, status, cancel, 504 bodies)'),
        SurfaceChange("POST /arq-tasks/abort/{job_id}", "POST /tasks/cancel/{task_id}"),
        SurfaceChange('abort answers "aborted"', '"cancelled"'),
        SurfaceChange('"status": "deferred"', '"status": "retrying"'),
        SurfaceChange('"error": "aborted"', '"error": "cancelled"'),
        SurfaceChange('"error": "may_have_been_sent"', '"error": "unconfirmed"'),
        SurfaceChange("accepted answer", 'adds "status_url"'),
    ),
    "taskiq": (
        SurfaceChange("/taskiq-tasks/...", "/tasks/..."),
        SurfaceChange("accepted answer", 'adds "status_url"'),
    ),
}


def api_shape_of(project: Project) -> str:
    """The surface the project's router answers with: "common", or the name of the
    runner whose own routes it keeps (the project's runner when none is recorded)."""
    recorded = str(project.layout.get("api_shape") or "")
    return recorded or project.spec.name


def on_old_surface(project: Project) -> bool:
    """Whether the project's router answers with a queue runner's own (older) routes."""
    return project.spec.name in QUEUE_RUNNERS and api_shape_of(project) != COMMON_API_SHAPE


def move_note(project: Project) -> str | None:
    """One line suggesting the move to the common surface; None when already on it (or
    when the runner has no queue routes)."""
    if not on_old_surface(project):
        return None
    shape = api_shape_of(project)
    return (
        f"the task routes answer with {shape}'s own HTTP surface; `{MOVE_COMMAND}` moves "
        "them onto the one every queue runner shares (clients change: "
        f"{client_changes_line(shape)})"
    )


def client_changes_line(shape: str) -> str:
    """The changes a client of `shape`'s surface makes, as one short phrase."""
    changes = CLIENT_CHANGES.get(shape, ())
    return "; ".join(f"{change.old} -> {change.new}" for change in changes[:3]) + (
        "; ..." if len(changes) > 3 else ""
    )


def router_prefix(runner: str, shape: str, runners: Sequence[str]) -> str:
    """The prefix of `runner`'s router on the common surface, without its slash: "tasks",
    unless a queue runner set up before it in the same project (`runners`, in the order
    they were set up) already answers there; then "<runner>-tasks", so no path is served
    twice. Other surfaces keep their runner's own prefix (the templates know it)."""
    if shape != COMMON_API_SHAPE:
        return ""
    before = runners[: runners.index(runner)] if runner in runners else runners
    if any(other in QUEUE_RUNNERS and other != runner for other in before):
        return f"{runner}-tasks"
    return COMMON_PREFIX.strip("/")


def email_route(spec_email_route: str, shape: str, prefix: str = "") -> str:
    """The path of the email route under the router's own prefix, for `shape`'s surface
    (`spec_email_route`: the runner's own; `prefix`: the common router's, when known)."""
    if shape == COMMON_API_SHAPE:
        return f"/{prefix}/send-email" if prefix else COMMON_EMAIL_ROUTE
    if shape:
        from bgtasks_gen.runners import get_runner

        return get_runner(shape).email_route  # a router answering another runner's routes
    return spec_email_route
