"""KEDA triggers per runner and broker: which scaler reads which keys or queue.

How each KEDA scaler counts (pkg/scalers in KEDA 2.x):
- `redis`: one key, through a script that picks the command by the key's type: LLEN
  for a list, ZCARD for a sorted set (SCARD, HLEN for sets and hashes), LLEN (0) for a
  key that does not exist.
- `redis-streams` with `lagCount`: XINFO GROUPS on the stream, the named group's `lag`
  (entries not yet delivered to it; Redis 7+); XLEN while the group does not exist yet,
  0 while the stream does not.
- `rabbitmq` over amqp: a passive queue declare, its message count (ready messages).
"""

from __future__ import annotations

from dataclasses import dataclass

from bgtasks_gen.k8s.facts import K8sFacts

# Tasks waiting per worker replica the autoscaler aims at
TASKS_PER_WORKER = 10


@dataclass(frozen=True)
class Trigger:
    type: str
    metadata: dict[str, str]
    why: str  # one comment line above the trigger


def worker_triggers(facts: K8sFacts) -> list[Trigger]:
    queue = facts.queue
    target = str(TASKS_PER_WORKER)
    database = str(queue.redis_database)
    if facts.runner == "celery" and queue.broker == "redis":
        return [
            Trigger(
                "redis",
                {"listName": key, "listLength": target, "databaseIndex": database},
                f"LLEN of the list kombu keeps for queue {_queue_of(key, queue.queues)!r}"
                + ("" if key in queue.queues else " at one of its priority steps"),
            )
            for key in queue.redis_lists
        ]
    if facts.runner == "arq":
        return [
            Trigger(
                "redis",
                {"listName": queue.queues[0], "listLength": target, "databaseIndex": database},
                f"arq's queue {queue.queues[0]!r} is a sorted set: KEDA's redis scaler "
                "reads it with ZCARD (its script picks the command by the key's type), "
                "which counts jobs waiting, deferred (retries) and running",
            )
        ]
    if facts.runner == "taskiq" and queue.broker == "redis":
        return [
            Trigger(
                "redis-streams",
                {
                    "stream": queue.stream,
                    "consumerGroup": queue.consumer_group,
                    "lagCount": target,
                    "databaseIndex": database,
                },
                "the consumer group's lag: tasks on the stream not yet delivered to a "
                "worker (XINFO GROUPS, Redis 7+)",
            )
        ]
    # RabbitMQ (celery, taskiq): the queue's ready messages, quorum or classic alike
    return [
        Trigger(
            "rabbitmq",
            {"protocol": "amqp", "mode": "QueueLength", "value": target, "queueName": name},
            f"messages ready in RabbitMQ queue {name!r} (a passive declare over AMQP)",
        )
        for name in queue.queues
    ]


def trigger_auth_parameters(facts: K8sFacts) -> list[tuple[str, str]]:
    """(KEDA parameter, key of the autoscaler Secret) pairs the triggers authenticate
    with: a Redis scaler takes host:port and password apart, RabbitMQ's takes the URL."""
    if facts.queue.broker == "rabbitmq":
        return [("host", "host")]
    return [("address", "address"), ("password", "password")]


def _queue_of(key: str, queues: tuple[str, ...]) -> str:
    """The queue a (priority-suffixed) list key belongs to: the longest name it starts with."""
    return max((name for name in queues if key.startswith(name)), key=len, default=key)
