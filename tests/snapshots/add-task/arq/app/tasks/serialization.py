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


def serialize(data: dict[str, Any]) -> bytes:
    """arq job_serializer: the job (or result) record as compact UTF-8 JSON."""
    return json.dumps(data, default=_encode, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq job_deserializer: refuses anything but a JSON object (e.g. an old pickle)."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("an arq record must be a JSON object")
    return data


def error_kind(result: object) -> str:
    """What a failed job's stored result says, in words safe to show to API clients."""
    name = result.get(ERROR_KEY) if isinstance(result, dict) else None
    if name == asyncio.CancelledError.__name__:
        return "aborted"
    if name == TimeoutError.__name__:
        return "timed_out"
    return "failed"
