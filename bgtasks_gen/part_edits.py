"""Which parts of an added task were edited since add-task wrote them (remove-task asks
before it deletes anything).

The task function is compared with the hash the state file recorded when it was written.
The other parts (route, body model, test, schedule and registration entries) are compared
with what add-task writes for the options the state file recorded: a snippet is a pure
function of those options, so any difference is an edit. A part that is gone counts as
unedited: removing the rest deletes nothing of the user's.
"""

from __future__ import annotations

from bgtasks_gen.patch import schedule
from bgtasks_gen.patch.definitions import definition_code, definition_names
from bgtasks_gen.patch.outline import SourceSyntaxError
from bgtasks_gen.state import digest


def _normalised(code: str) -> str:
    return code.replace("\r\n", "\n")


def body_hash(code: str) -> str:
    """The hash add-task records for a task function (newlines as written, LF)."""
    return digest(_normalised(code))


def edited_body(source: str, name: str, recorded_hash: str | None, snippet: str) -> bool:
    current = definition_code(source, [name])
    if current is None:
        return False
    if recorded_hash is None:  # a state file from before the hash was recorded
        return _normalised(current) != _normalised(definition_code(snippet, [name]) or "")
    return body_hash(current) != recorded_hash


def as_written(source: str | None, snippet: str) -> str:
    """The snippet's definitions as they stand in `source`, edits included: once added, a
    task is the user's to change. The snippet itself where one of them is not there (or
    `source` does not parse), as add-task would write it."""
    if source is None:
        return snippet
    try:
        current = definition_code(source, definition_names(snippet))
    except SourceSyntaxError:
        return snippet
    return snippet if current is None else current


def edited_definitions(source: str, snippet: str) -> bool:
    """Does a definition of the snippet stand in `source` with other code?"""
    for name in definition_names(snippet):
        current = definition_code(source, [name])
        written = definition_code(snippet, [name]) or ""
        if current is not None and _normalised(current).rstrip() != _normalised(written).rstrip():
            return True
    return False


def entry_code(source: str, kind: str, name: str) -> str | None:
    """The lines of the schedule/registration entry naming `name`, or None: what
    schedule.remove_entry would delete (one block of whole lines). Read from the entry's
    own span: a diff of the text before and after cannot tell where a run of identical
    entries' lines (`func(` ... `),`) starts."""
    return schedule.entry_lines(source, kind, name)


def _squashed(code: str) -> str:
    # the entry is re-indented to its literal when inserted, and its last comma is the
    # literal's business: neither is an edit
    return "".join(code.split()).rstrip(",")


def _entry_tokens(code: str) -> list[str] | None:
    """The entry's tokens with what a formatter may change taken out: whitespace and
    line breaks, the quotes of a string, a trailing comma before a closing bracket.
    Comments stay: one the user added is an edit. None when it does not tokenize."""
    import ast
    import io
    import tokenize

    skipped = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skipped |= {tokenize.ENDMARKER}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code.strip()).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    words = []
    for token in tokens:
        if token.type in skipped:
            continue
        text = token.string
        if token.type == tokenize.STRING:
            try:
                text = repr(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                pass
        words.append(text)
    return [
        word
        for index, word in enumerate(words)
        if not (word == "," and (index + 1 == len(words) or words[index + 1] in ")]}"))
    ]


def edited_entry(source: str, kind: str, name: str, snippet: str) -> bool:
    current = entry_code(source, kind, name)
    if current is None:
        return False
    # a project's ruff may have restyled it in place (its quote style): still as written
    tokens = _entry_tokens(current), _entry_tokens(snippet)
    if None not in tokens:
        return tokens[0] != tokens[1]
    return _squashed(current) != _squashed(snippet)
