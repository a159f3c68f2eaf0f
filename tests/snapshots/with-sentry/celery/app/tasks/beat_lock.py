"""One `celery beat` at a time: a second one stands by instead of doubling every run.

The scheduler that holds a Redis lock (a key with a TTL it refreshes on every tick)
sends the due tasks; any other waits on standby, tries again every LOCK_RETRY_SECONDS
and takes over when the holder stops (it releases the lock) or dies (the lock expires
after LOCK_TTL seconds). Without Redis no beat sends anything: a schedule run late is
better than one run twice.

Each firing is also claimed in Redis before it is sent (its due time, per entry): a
standby that takes over right after the holder sent a slot finds that slot claimed
and skips it, instead of sending it again from its own, older view of the schedule.
"""

import logging
import os
import socket
import time
import uuid
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import schedule as interval_schedule
from redis.exceptions import RedisError

from app.tasks import celery_inbox, registry

logger = logging.getLogger(__name__)

LOCK_NAME = "beat:app.tasks"
LOCK_TTL = 30
# The holder refreshes the lock at least this often, well within LOCK_TTL.
LOCK_REFRESH_SECONDS = 5
LOCK_RETRY_SECONDS = 5
SLOT_KEY = "beat-slot:app.tasks"
# how long a claimed slot is remembered (an entry firing less often than this is
# compared with nothing, as when the schedule is new)
SLOT_MEMORY_SECONDS = 8 * 24 * 60 * 60

# Claim a firing: refused when the entry's last claimed slot is less than `gap`
# seconds before this one (the same firing, or one of the same period). KEYS: the
# entry's slot key. ARGV: slot (epoch seconds), gap, memory seconds.
_CLAIM_SLOT = """
local last = tonumber(redis.call('GET', KEYS[1]) or '')
local slot, gap = tonumber(ARGV[1]), tonumber(ARGV[2])
if last and slot < last + gap then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


class SingleBeatScheduler(PersistentScheduler):
    """celery's default scheduler, sending only while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock_token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holds_lock = False
        self.told_waiting = False
        # "alive" on the task board while this beat holds the lock (it sends)
        self.heartbeat = celery_inbox.Heartbeat(
            celery_inbox.SCHEDULERS_KEY, self.lock_token
        )
        self.last_heartbeat = 0.0
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lock():
            return LOCK_RETRY_SECONDS
        return min(float(super().tick(*args, **kwargs)), LOCK_REFRESH_SECONDS)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        # only the firing this scheduler claims first is sent, by whichever beat
        if self._claim_slot(entry):
            super().apply_entry(entry, producer=producer)

    def _claim_slot(self, entry: ScheduleEntry) -> bool:
        schedule = entry.schedule
        # the time this firing was due: celery's own estimate from the last run
        due = schedule.now() + schedule.remaining_estimate(entry.last_run_at)
        if isinstance(schedule, interval_schedule):
            # one firing per period, whichever beat's clock it was computed on
            gap = schedule.run_every.total_seconds() * 0.9
        else:
            gap = 1.0  # crontab, solar: slots are distinct times
        key = f"{registry.KEY_PREFIX}:{SLOT_KEY}:{entry.name}"
        try:
            claimed = registry.client().eval(
                _CLAIM_SLOT, 1, key, f"{due.timestamp():.3f}", gap, SLOT_MEMORY_SECONDS
            )
        except RedisError:
            logger.warning("beat: Redis unreachable, %s not sent", entry.name)
            return False
        if not claimed:
            logger.info("beat: %s at %s was sent already; skipped", entry.name, due)
        return bool(claimed)

    def close(self) -> None:
        self.heartbeat.stop()
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
        if held:
            self._say_alive()
        return held

    def _say_alive(self) -> None:
        # at most every HEARTBEAT_SECONDS (tick runs every LOCK_REFRESH_SECONDS or less)
        now = time.monotonic()
        if now - self.last_heartbeat < celery_inbox.HEARTBEAT_SECONDS:
            return
        self.last_heartbeat = now
        try:
            celery_inbox.heartbeat(
                registry.client(), celery_inbox.SCHEDULERS_KEY, self.lock_token
            )
        except RedisError:
            logger.warning("beat: could not say it is alive on the task board")
