"""What waits in taskiq's queue, for the dashboard and the metrics route."""

import time
from typing import Any

from app.tasks.taskiq_app import broker

# The stream's waiting entries and the id (its time in ms) of the first: KEYS the
# stream, ARGV the consumer group. Entries read but not acknowledged are running.
WAITING_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    return {0, ''}
end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #info, 2 do
        fields[info[i]] = info[i + 1]
    end
    if fields['name'] == ARGV[1] then
        local after = '(' .. fields['last-delivered-id']
        local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
        local lag = fields['lag'] or redis.call('XLEN', KEYS[1])
        return {lag, first[1] and first[1][1] or ''}
    end
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
return {redis.call('XLEN', KEYS[1]), first[1] and first[1][1] or ''}
"""


async def queue_depths(redis: Any) -> list[dict[str, Any]]:
    """The stream's tasks waiting for a worker, and how long the first has waited.
    RedisError when Redis does not answer."""
    waiting, first = await redis.eval(
        WAITING_SCRIPT, 1, broker.queue_name, broker.consumer_group_name
    )
    first_id = first.decode() if isinstance(first, bytes) else str(first)
    oldest = None
    if int(waiting) and first_id:
        oldest = max(0.0, time.time() - int(first_id.split("-")[0]) / 1000)
    depth = int(waiting)
    return [{"name": broker.queue_name, "depth": depth, "oldest_seconds": oldest}]
