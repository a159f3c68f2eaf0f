"""JSON for arq jobs and results, used by the worker AND by the web app's pool.

arq's default is pickle: reading a job or a result unpickles it, so anyone who can write
to Redis could run code in the worker and in the API. JSON can only carry data.

A failed job's result is an exception; it is stored as {"__error__": "<class name>"}
(never its message, which may hold addresses or secrets). arq's own Job.result() and
Job.abort() then raise SerializationError instead of the exception: read
Job.result_info() and use error_kind() below instead.
"""

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

logger = logging.getLogger(__name__)

ERROR_KEY = "__error__"
# arq_tasks.EmailMayHaveBeenSent, by name: this module never imports the tasks
MAY_HAVE_BEEN_SENT = "EmailMayHaveBeenSent"


def _encode(value: object) -> object:
    if isinstance(value, BaseException):
        return {ERROR_KEY: type(value).__name__}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# one encoder for every record: json.dumps would build a new one per job
_ENCODER = json.JSONEncoder(default=_encode, separators=(",", ":"))


def serialize(data: dict[str, Any]) -> bytes:
    """arq job_serializer: the job (or result) record as compact UTF-8 JSON."""
    return _ENCODER.encode(data).encode()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A time in ms since 1970 that arq can turn into a datetime: from 1970 up to the
# year 3000 (10**20 ms would raise inside arq's loop and stop the worker).
MAX_TIME_MS = 32_503_680_000_000
# A job's try count: arq compares and stores it, a small number in any real job.
MAX_JOB_TRY = 2**31


def _is_time(value: object) -> bool:
    return _is_int(value) and isinstance(value, int) and 0 <= value <= MAX_TIME_MS


def _is_try(value: object) -> bool:
    if value is None:  # what enqueue_job stores for a new job
        return True
    return _is_int(value) and isinstance(value, int) and 0 <= value <= MAX_JOB_TRY


# The fields arq reads from every record, and what each must be. arq trusts them: a
# job try or enqueue time that is not a number (or one out of range), or a function
# name that is not a string, raises inside the worker's own loop and stops the worker
# (and the next one that picks the job up, once its in-progress lock expires).
_RECORD_FIELDS: dict[str, Callable[[object], bool]] = {
    "f": lambda value: isinstance(value, str),
    "a": lambda value: isinstance(value, list),
    "k": lambda value: isinstance(value, dict),
    "t": _is_try,
    "et": _is_time,
}
# and those of a result record ("s" marks one)
_RESULT_FIELDS: dict[str, Callable[[object], bool]] = {
    "s": lambda value: isinstance(value, bool),
    "st": _is_time,
    "ft": _is_time,
}


# At most this much of a refused record is kept with the error (the failed-task
# inbox keeps it for an operator to read)
MAX_REFUSED_BYTES = 4_096


class RecordRefused(ValueError):
    """A record arq could not use; says why, never what the record holds. `raw`: the
    record's first MAX_REFUSED_BYTES (for the failed-task inbox, never for a log),
    `size` its whole size."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.raw = bytes(raw[:MAX_REFUSED_BYTES])
        self.size = len(raw)


def _refuse(raw: bytes, reason: str) -> RecordRefused:
    # the size, not the content: a record holds a job's arguments
    logger.error("refused an arq record (%d bytes): %s", len(raw), reason)
    return RecordRefused(reason, raw)


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq job_deserializer: a JSON object with the fields arq expects, or an error.

    Refuses an old pickle, a record that is not JSON, and one with a missing,
    mistyped or out-of-range field, and logs why (with the record's size). arq turns
    any error into DeserializationError: the worker logs it, records the job as failed
    and drops it, and goes on with the next job.
    """
    try:
        data = json.loads(raw)
    except ValueError:  # also not UTF-8, or digits beyond Python's limit
        raise _refuse(raw, "not JSON") from None
    except RecursionError:
        raise _refuse(raw, "nested too deeply") from None
    if not isinstance(data, dict):
        raise _refuse(raw, "not a JSON object")
    fields = {**_RECORD_FIELDS, **(_RESULT_FIELDS if "s" in data else {})}
    for name, valid in fields.items():
        if name not in data:
            raise _refuse(raw, f"no {name!r} field")
        if not valid(data[name]):
            raise _refuse(raw, f"malformed or out-of-range {name!r} field")
    return data


def error_kind(result: object) -> str:
    """What a failed job's stored result says, in words safe to show to API clients."""
    name = result.get(ERROR_KEY) if isinstance(result, dict) else None
    if name == asyncio.CancelledError.__name__:
        return "aborted"
    if name == TimeoutError.__name__:
        return "timed_out"
    if name == MAY_HAVE_BEEN_SENT:
        return "may_have_been_sent"
    return "failed"
