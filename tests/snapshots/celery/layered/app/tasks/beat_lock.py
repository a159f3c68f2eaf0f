"""One `celery beat` at a time: a second one stands by instead of doubling every run.

The scheduler that holds a Redis lock (a key with a TTL it refreshes on every tick)
sends the due tasks; any other waits on standby, tries again every LOCK_RETRY_SECONDS
and takes over when the holder stops (it releases the lock) or dies (the lock expires
after LOCK_TTL seconds). Without Redis no beat sends anything: a schedule run late is
better than one run twice.
"""

import logging
import os
import socket
import uuid
from typing import Any

from celery.beat import PersistentScheduler
from redis.exceptions import RedisError

from app.tasks import registry

logger = logging.getLogger(__name__)

LOCK_NAME = "beat:app.tasks"
LOCK_TTL = 30
# The holder refreshes the lock at least this often, well within LOCK_TTL.
LOCK_REFRESH_SECONDS = 5
LOCK_RETRY_SECONDS = 5


class SingleBeatScheduler(PersistentScheduler):
    """celery's default scheduler, sending only while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holds_lock = False
        self.told_waiting = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lock():
            return LOCK_RETRY_SECONDS
        return min(float(super().tick(*args, **kwargs)), LOCK_REFRESH_SECONDS)

    def close(self) -> None:
        if self.holds_lock:
            try:
                registry.release_lock(LOCK_NAME, self.lock_token)
                logger.info("beat: released the beat lock")
            except RedisError:
                logger.warning("beat: could not release the lock; it expires by itself")
            self.holds_lock = False
        super().close()

    def _hold_lock(self) -> bool:
        try:
            held = registry.take_lock(LOCK_NAME, self.lock_token, LOCK_TTL)
            holder = None if held else registry.lock_holder(LOCK_NAME)
        except RedisError:
            logger.warning("beat: Redis unreachable, sending nothing until it is back")
            self.holds_lock = False
            return False
        if held and not self.holds_lock:
            logger.info("beat: took the beat lock (%s); sending tasks", self.lock_token)
            self.told_waiting = False
        elif not held and self.holds_lock:
            logger.warning("beat: lost the beat lock to %s; standing by", holder)
            self.told_waiting = True
        elif not held and not self.told_waiting:
            logger.warning(
                "beat: another beat (%s) holds the beat lock; standing by",
                holder,
            )
            self.told_waiting = True
        self.holds_lock = held
        return held
