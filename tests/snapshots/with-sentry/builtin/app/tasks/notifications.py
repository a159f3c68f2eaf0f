"""Jobs for FastAPI's BackgroundTasks, each isolated so that one failure cannot stop
the others queued by the same request.

BackgroundTasks run in the web process after the response is sent: they are lost when
the process stops or is redeployed, never retried, and the tasks of one request run one
after another. When you need durability, retries, status or scheduling, use a queue
instead (`bgtasks init --runner celery` or `--runner arq`).
"""

import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

from starlette.concurrency import run_in_threadpool

from app.tasks import error_reporting

P = ParamSpec("P")

# A child of "uvicorn.error": uvicorn configures only its own loggers, so a
# logger of the app's own prints nothing under plain `uvicorn`. This one uses
# uvicorn's level and handlers there, and the root logger's elsewhere.
logger = logging.getLogger(f"uvicorn.error.{__name__}")


def safely(func: Callable[P, object]) -> Callable[P, Coroutine[Any, Any, None]]:
    """Wrap a job, `def` or `async def`, so that an exception is logged instead of
    stopping the other jobs.

    Starlette runs the background tasks of a response one after another and stops at the
    first one that raises; nothing retries them. The wrapper is a coroutine function, so
    Starlette awaits it on the event loop: a coroutine job is awaited there, a plain one
    runs in the thread pool as Starlette would run it (never blocking the loop).
    """

    @functools.wraps(func)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        name = getattr(func, "__qualname__", type(func).__name__)
        result: object
        try:
            if inspect.iscoroutinefunction(func):
                result = func(*args, **kwargs)
            else:
                result = await run_in_threadpool(func, *args, **kwargs)
            # A coroutine, or what a callable object's async __call__ returned.
            if inspect.isawaitable(result):
                await result
        except Exception:
            # Reported by Sentry's logging integration, tagged with the job's name and
            # an id of its run; its arguments are searched for and replaced
            with error_reporting.task_scope(name, uuid.uuid4().hex, args, kwargs):
                # The name only: a repr of the arguments would log addresses and text.
                logger.exception("background job %s failed", name)

    return run


def process_notification(user_id: int, message: str) -> None:
    """Handle one notification (store it, fan it out, ...): replace with your logic."""
    logger.info("notification for user %s (%d characters)", user_id, len(message))
