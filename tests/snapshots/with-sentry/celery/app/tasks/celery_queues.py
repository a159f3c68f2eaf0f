"""What waits in the Celery app's queues, for the dashboard and the metrics route."""

import asyncio
from typing import Any

import redis.asyncio

from app.core.config import settings
from app.tasks.celery_app import SOCKET_TIMEOUT, celery_app

# kombu keeps a Redis queue's messages of priority 3, 6 and 9 in lists of their own
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
_broker_clients: dict[Any, redis.asyncio.Redis] = {}


def queue_names() -> list[str]:
    """The default queue and every queue the app declares."""
    names = [str(celery_app.conf.task_default_queue)]
    for queue in celery_app.conf.task_queues or ():
        if queue.name not in names:
            names.append(str(queue.name))
    return names


async def queue_depths() -> list[dict[str, Any]]:
    """Messages waiting in each queue (Celery's messages carry no time they were sent:
    the oldest one's age is not known). RedisError when the broker does not answer."""
    loop = asyncio.get_running_loop()
    client = _broker_clients.get(loop)
    if client is None:
        client = _broker_clients[loop] = redis.asyncio.Redis.from_url(
            str(settings.CELERY_BROKER_URL),
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
    names = queue_names()
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(name + suffix)
        lengths = await pipe.execute()
    per = len(PRIORITY_SUFFIXES)
    return [
        {
            "name": name,
            "depth": sum(lengths[index * per : (index + 1) * per]),
            "oldest_seconds": None,
        }
        for index, name in enumerate(names)
    ]
