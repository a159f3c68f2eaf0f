"""What `bgtasks adopt` records of each task so that `remove-task` can undo it.

Under [adopted.<task>] in the state file, beside source, runner and queue_name:
- `code_digest`: the digest of the task's code in the adopted module as adopt wrote it
  (an edited task is not removed without --force);
- `call_1`, `call_2`, ...: one per call that now queues the task, each a JSON object
  in a string (the state file keeps plain values): the file, the `add_task(...)` call
  exactly as it was written, the digest of the enqueue that replaced it (of its syntax
  tree: a reformatted line is the same call, an edited one is not), and the import of
  the called function adopt dropped ("" when it stayed).

A call whose record would be longer than the state file takes is left out, and the
task marked `undo_incomplete`: remove-task refuses it rather than lose that call.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from bgtasks_gen.patch.definitions import definition_code
from bgtasks_gen.state import MAX_TEXT, digest

DIGEST_KEY = "code_digest"
CALL_PREFIX = "call_"
INCOMPLETE_KEY = "undo_incomplete"


@dataclass(frozen=True)
class CallUndo:
    """One call adopt rewrote: enough to put it back."""

    file: str
    original: str  # the `<tasks>.add_task(...)` call as it was
    queued: str  # the digest of the enqueue that replaced it (call_digest)
    binding: str  # the import of the function adopt dropped, "" when none was

    def to_text(self) -> str:
        fields = {
            "file": self.file,
            "call": self.original,
            "enqueue": self.queued,
            "import": self.binding,
        }
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> CallUndo | None:
        try:
            fields = json.loads(text)
        except ValueError:
            return None
        if not isinstance(fields, dict):
            return None
        values = [fields.get(key) for key in ("file", "call", "enqueue", "import")]
        if not all(isinstance(value, str) for value in values):
            return None
        file, original, queued, binding = (str(value) for value in values)
        return cls(file, original, queued, binding)


def call_digest(code: str) -> str:
    """The digest of an expression's syntax tree (an `await` one too): the same for the
    expression reformatted, another for it edited; "" when it does not parse."""
    try:
        tree = ast.parse(f"async def _():\n    return (\n{code}\n)\n")
    except SyntaxError:
        return ""
    function = tree.body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    returned = function.body[0]
    assert isinstance(returned, ast.Return) and returned.value is not None
    return digest(ast.dump(returned.value))


def task_digest(module: str, name: str) -> str:
    """The digest of the task's definition (its decorator too) in the adopted module."""
    return digest(definition_code(module, [name]) or "")


def add_call_record(record: MutableMapping[str, object], undo: CallUndo) -> None:
    """Add the call to the task's record, under the first free `call_<n>`."""
    text = undo.to_text()
    if len(text) > MAX_TEXT:
        record[INCOMPLETE_KEY] = True
        return
    number = 1
    while f"{CALL_PREFIX}{number}" in record:
        number += 1
    record[f"{CALL_PREFIX}{number}"] = text


def recorded_calls(record: Mapping[str, object]) -> list[CallUndo] | None:
    """The task's calls, in the order adopt moved them; None when the record cannot
    undo the task (written before adopt kept these, or incomplete, or damaged)."""
    if record.get(INCOMPLETE_KEY) or not isinstance(record.get(DIGEST_KEY), str):
        return None
    keys = sorted(
        (key for key in record if key.startswith(CALL_PREFIX)),
        key=lambda key: (
            int(key.removeprefix(CALL_PREFIX) or 0)
            if key.removeprefix(CALL_PREFIX).isdigit()
            else 0
        ),
    )
    calls = []
    for key in keys:
        value = record[key]
        found = CallUndo.from_text(value) if isinstance(value, str) else None
        if found is None:
            return None
        calls.append(found)
    return calls or None
