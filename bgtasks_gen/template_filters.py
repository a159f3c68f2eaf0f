"""The one way a value read from the user's project enters generated Python.

A value (an environment variable name, a dotted path, a default) is written as a Python
literal by `python_literal`, the `py` filter of every template environment, or escaped by
`python_text` (`py_text`) to stand inside a literal the template writes itself. Copier's
environment gets them through `PythonLiteralExtension` (named in templates/copier.yml's
`_jinja_extensions`), add-task's plain jinja2 one through `add_filters`.

A name the generated code uses as code (a settings field, a module, the app object)
cannot be quoted: it is checked once, where the template context is built, by
`require_identifier` / `require_dotted`, and a project whose name would not read back as
itself is refused.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from bgtasks_gen.errors import BadInput

if TYPE_CHECKING:
    from jinja2 import Environment

# what an environment variable name can portably be: shells, compose files and
# .env files all read these without quoting
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def python_literal(value: object) -> str:
    """`value` as Python source that evaluates back to exactly it.

    Strings get double quotes (ruff's default style, which the templates follow) unless
    the text holds a double quote and no single one, as ruff itself would write it;
    every character that is not printable (line breaks, NUL, U+2028, ...) is escaped.
    """
    if isinstance(value, str):
        return _string_literal(value)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    # a template author's mistake, never a project's: no literal would read back as it
    raise TypeError(f"no Python literal for {type(value).__name__} value {value!r}")


def python_text(value: str) -> str:
    """`value` escaped to stand inside a double-quoted string literal the template writes
    around it ("...{{ x | py_text }}..." or a docstring): it reads back as exactly the
    text and cannot end the literal. Never inside an f-string, where braces are code."""
    return _escaped(value, '"')


def _string_literal(text: str) -> str:
    quote = "'" if '"' in text and "'" not in text else '"'
    return quote + _escaped(text, quote) + quote


def _escaped(text: str, quote: str) -> str:
    out = []
    for char in text:
        if char == "\\" or char == quote:
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])  # \n, \x00, \u2028, \ud800, ...
    return "".join(out)


def __getattr__(name: str) -> object:
    # copier imports the extension by its dotted path; built on first use so that the
    # commands that only check names never import jinja2
    if name == "PythonLiteralExtension":
        return _literal_extension()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _literal_extension() -> type:
    from jinja2.ext import Extension

    class PythonLiteralExtension(Extension):
        """Registers the `py` filter in copier's environment (see copier.yml)."""

        def __init__(self, environment: Environment) -> None:
            super().__init__(environment)
            add_filters(environment)

    return PythonLiteralExtension


def add_filters(environment: Environment) -> None:
    """Give a jinja2 environment the filters the templates use."""
    environment.filters["py"] = python_literal
    environment.filters["py_text"] = python_text
    environment.filters["import_order"] = import_order


def import_order(lines: list[str]) -> list[str]:
    """Import statements (a wrapped `from m import (...)` is one item) in the order ruff's
    isort rules keep them within a section: plain `import` first, then by module, then,
    for several statements from one module, by the first name each imports."""
    return sorted(lines, key=_import_key)


def _import_key(line: str) -> tuple[int, str, str, tuple[int, str]]:
    words = line.replace("(", " ").replace(",", " ").split()
    module = words[1]
    first_name = words[3] if words[0] == "from" and len(words) > 3 else ""
    return (0 if words[0] == "import" else 1, module.lower(), module, _member_key(first_name))


def _member_key(name: str) -> tuple[int, str]:
    # ruff's order-by-type: CONSTANTS, then Classes, then everything else
    if name.isupper() and len(name) > 1:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return (kind, name.lower())


def is_identifier(name: str) -> bool:
    """A plain ASCII Python name that reads back as itself: Python folds identifiers with
    NFKC (a fullwidth `ｏｓ` is `os`), so only names NFKC leaves unchanged are taken."""
    return (
        name.isascii()
        and unicodedata.normalize("NFKC", name) == name
        and name.isidentifier()
        and not keyword.iskeyword(name)
    )


def require_identifier(name: str, what: str, source: Path | str) -> str:
    """`name`, or BadInput naming the file it was read from."""
    if not is_identifier(name):
        raise BadInput(
            f"{what} {name!r} in {source} is not a plain Python name",
            "bgtasks writes it into generated code as a name: rename it to ASCII letters, "
            "digits and underscores (not starting with a digit, not a keyword)",
        )
    return name


def require_dotted(dotted: str, what: str, source: Path | str, *, relative: bool = False) -> str:
    """A dotted module path whose every part is a plain name (leading dots when
    `relative`), or BadInput naming the file it was read from."""
    bare = dotted.lstrip(".") if relative else dotted
    if not bare or not all(is_identifier(part) for part in bare.split(".")):
        raise BadInput(
            f"{what} {dotted!r} in {source} is not a valid dotted Python module name",
            "every part must be an ASCII Python name (letters, digits, underscores, "
            "not starting with a digit, not a keyword)",
        )
    return dotted


def require_env_prefix(prefix: str, source: Path | str) -> str:
    """A settings env_prefix that, before a field's name, makes an environment variable
    name bgtasks can write into code, compose files and shell lines as it is; else
    BadInput naming the file it was read from."""
    if prefix and not ENV_NAME.fullmatch(prefix):
        raise BadInput(
            f"the settings' env_prefix {prefix!r} in {source} does not make environment "
            "variable names bgtasks can use",
            "use an env_prefix of ASCII letters, digits and underscores, not starting with "
            'a digit (e.g. env_prefix="APP_"): a variable named otherwise cannot be set '
            "from a shell or a compose file",
        )
    return prefix
