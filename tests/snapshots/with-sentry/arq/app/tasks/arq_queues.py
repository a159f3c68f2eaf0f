"""What waits in arq's queue, for the dashboard and the metrics route."""

import time
from typing import Any

from arq.constants import default_queue_name

from app.tasks.arq_worker import WorkerSettings


def queue_name() -> str:
    """The queue the workers read (WorkerSettings.queue_name, else arq's default)."""
    return str(getattr(WorkerSettings, "queue_name", None) or default_queue_name)


async def queue_depths(client: Any) -> list[dict[str, Any]]:
    """The jobs due now in the queue (a sorted set by due time: later ones are
    deferred) and how long the first of them has waited. RedisError when Redis does
    not answer."""
    queue = queue_name()
    now_ms = time.time() * 1000
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zrange(queue, 0, 0, withscores=True)
        due, oldest = await pipe.execute()
    waited = (now_ms - oldest[0][1]) / 1000 if oldest and due else None
    return [{"name": queue, "depth": int(due), "oldest_seconds": waited}]
