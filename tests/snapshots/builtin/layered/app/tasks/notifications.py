"""Jobs for FastAPI's BackgroundTasks, each isolated so that one failure cannot stop
the others queued by the same request.

BackgroundTasks run in the web process after the response is sent: they are lost when
the process stops or is redeployed, never retried, and the tasks of one request run one
after another. When you need durability, retries, status or scheduling, use a queue
instead (`bgtasks init --runner celery` or `--runner arq`).
"""

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

logger = logging.getLogger(__name__)


def safely(func: Callable[P, object]) -> Callable[P, None]:
    """Wrap a job so that an exception is logged instead of stopping the other jobs.

    Starlette runs the background tasks of a response one after another and stops at the
    first one that raises; nothing retries them.
    """

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            func(*args, **kwargs)
        except Exception:
            logger.exception("background job %s failed", func.__name__)

    return run


def process_notification(user_id: int, message: str) -> None:
    """Handle one notification (store it, fan it out, ...): replace with your logic."""
    logger.info("notification for user %s (%d characters)", user_id, len(message))
