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
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

ERROR_KEY = "__error__"


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


# The fields arq reads from every record, and what each must be. arq trusts them: a
# job try or enqueue time that is not a number, or a function name that is not a
# string, raises inside the worker's own loop and stops the worker (and the next one
# that picks the job up, once its in-progress lock expires).
_RECORD_FIELDS: dict[str, Callable[[object], bool]] = {
    "f": lambda value: isinstance(value, str),
    "a": lambda value: isinstance(value, list),
    "k": lambda value: isinstance(value, dict),
    "t": lambda value: value is None or _is_int(value),
    "et": _is_int,
}
# and those of a result record ("s" marks one)
_RESULT_FIELDS: dict[str, Callable[[object], bool]] = {
    "s": lambda value: isinstance(value, bool),
    "st": _is_int,
    "ft": _is_int,
}


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq job_deserializer: a JSON object with the fields arq expects, or an error.

    Refuses an old pickle, a record that is not JSON, and one with a missing or
    mistyped field. arq turns any error into DeserializationError: the worker
    logs it, records the job as failed and drops it, and goes on with the next job.
    """
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("an arq record must be a JSON object")
    fields = {**_RECORD_FIELDS, **(_RESULT_FIELDS if "s" in data else {})}
    for name, valid in fields.items():
        if name not in data:
            raise ValueError(f"arq record without its {name!r} field")
        if not valid(data[name]):
            raise ValueError(f"arq record with a malformed {name!r} field")
    return data


def error_kind(result: object) -> str:
    """What a failed job's stored result says, in words safe to show to API clients."""
    name = result.get(ERROR_KEY) if isinstance(result, dict) else None
    if name == asyncio.CancelledError.__name__:
        return "aborted"
    if name == TimeoutError.__name__:
        return "timed_out"
    return "failed"
