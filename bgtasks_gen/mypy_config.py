"""The mypy override a project's own mypy configuration needs for an untyped runner.

Celery ships no type information (no `py.typed`), so plain `mypy` on a project that
imports it stops at "missing library stubs". When the project configures mypy, bgtasks
adds an `ignore_missing_imports` override for exactly those packages to that
configuration, the way its owner would write it; a project without a mypy
configuration is left alone (its own command line decides).

Strict mode asks more of code built on an untyped library than the library allows:
celery's task decorator and base classes are `Any`, kombu's functions are unannotated.
The generated modules (and only those) get a second override that turns off the three
checks that cannot pass there (subclassing Any, untyped decorators, untyped calls).
"""

from __future__ import annotations

import configparser
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.plan import read_existing

# the order mypy itself looks for its configuration in a project root
CONFIG_FILES = ("mypy.ini", ".mypy.ini", "pyproject.toml", "setup.cfg")


@dataclass(frozen=True)
class MypyOverride:
    path: str  # relative to the project root
    old: str
    new: str
    note: str


def _patterns(packages: Sequence[str]) -> list[str]:
    # mypy's `pkg.*` matches the package itself and every submodule
    return [f"{name}.*" for name in packages]


@dataclass(frozen=True)
class _Settings:
    """What one configuration file says about missing imports, whatever its format."""

    ignore_all: bool  # `ignore_missing_imports` for every module
    # the module patterns of each override that ignores missing imports
    ignoring: tuple[tuple[str, ...], ...]

    def missing(self, packages: Sequence[str]) -> list[str]:
        """The packages no setting covers yet (a `pkg.*` or `*` pattern covers `pkg`)."""
        if self.ignore_all:
            return []
        covered = {
            package
            for package in packages
            for patterns in self.ignoring
            if f"{package}.*" in patterns or "*" in patterns
        }
        return [package for package in packages if package not in covered]


def _toml_settings(data: Mapping[str, object]) -> _Settings | None:
    """[tool.mypy] and its [[tool.mypy.overrides]]; None when there is no [tool.mypy]."""
    tool = data.get("tool")
    mypy = tool.get("mypy") if isinstance(tool, dict) else None
    if not isinstance(mypy, dict):
        return None
    overrides = mypy.get("overrides", [])
    ignoring = []
    for override in overrides if isinstance(overrides, list) else []:
        if not isinstance(override, dict) or override.get("ignore_missing_imports") is not True:
            continue
        modules = override.get("module")
        names = [modules] if isinstance(modules, str) else modules
        if isinstance(names, list):
            ignoring.append(tuple(name for name in names if isinstance(name, str)))
    return _Settings(mypy.get("ignore_missing_imports") is True, tuple(ignoring))


def _ini_settings(text: str, main: str) -> _Settings | None:
    """[mypy] and its [mypy-pattern,...] sections; None when there is no [mypy]."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    if not parser.has_section(main):
        return None
    ignoring = tuple(
        tuple(p.strip() for p in section[len(main) + 1 :].split(","))
        for section in parser.sections()
        if section.startswith(f"{main}-")
        and parser.getboolean(section, "ignore_missing_imports", fallback=False)
    )
    return _Settings(parser.getboolean(main, "ignore_missing_imports", fallback=False), ignoring)


# what strict mode asks of code built on an untyped library, turned off for that code
RELAXED = ("disallow_subclassing_any", "disallow_untyped_decorators", "disallow_untyped_calls")


def _toml_list(names: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def _toml_block(packages: Sequence[str], generated: Sequence[str], newline: str) -> str:
    lines = [
        "",
        "[[tool.mypy.overrides]]",
        f"# {', '.join(packages)}: no type information shipped (no py.typed)",
        f"module = {_toml_list(_patterns(packages))}",
        "ignore_missing_imports = true",
    ]
    if generated:
        lines += [
            "",
            "[[tool.mypy.overrides]]",
            f"# the modules bgtasks generated: {', '.join(packages)}'s decorators and base "
            "classes are untyped",
            f"module = {_toml_list(generated)}",
            *(f"{flag} = false" for flag in RELAXED),
        ]
    return newline.join(lines) + newline


def _ini_block(
    section_prefix: str, packages: Sequence[str], generated: Sequence[str], newline: str
) -> str:
    lines = [
        "",
        f"# {', '.join(packages)}: no type information shipped (no py.typed)",
        f"[{section_prefix}-{','.join(_patterns(packages))}]",
        "ignore_missing_imports = True",
    ]
    if generated:
        lines += [
            "",
            f"# the modules bgtasks generated: {', '.join(packages)}'s decorators and base "
            "classes are untyped",
            f"[{section_prefix}-{','.join(generated)}]",
            *(f"{flag} = False" for flag in RELAXED),
        ]
    return newline.join(lines) + newline


def plan_mypy_override(
    root: Path,
    packages: Sequence[str],
    edited: Mapping[str, str] | None = None,
    generated: Sequence[str] = (),
) -> MypyOverride | None:
    """The edit that lets the project's own mypy configuration accept `packages`, or None
    (no untyped packages, no mypy configuration, or already covered). `edited`: files
    other steps of the same plan already changed (their new text is the starting point);
    `generated`: module patterns of the generated code that imports `packages`."""
    if not packages:
        return None
    edited = edited or {}
    for rel in CONFIG_FILES:
        old = edited.get(rel, read_existing(root, rel))
        if old is None:
            continue
        newline = "\r\n" if "\r\n" in old else "\n"
        ending = "" if not old or old.endswith(("\n", "\r")) else newline
        if rel == "pyproject.toml":
            try:
                settings = _toml_settings(tomllib.loads(old))
            except tomllib.TOMLDecodeError:
                continue
        else:
            settings = _ini_settings(old, "mypy")
        if settings is None:
            continue  # this file does not configure mypy: mypy would look further
        missing = settings.missing(packages)
        if not missing:
            return None
        if rel == "pyproject.toml":
            block = _toml_block(missing, generated, newline)
        else:
            block = _ini_block("mypy", missing, generated, newline)
        new = old + ending + block
        if rel == "pyproject.toml":
            try:
                tomllib.loads(new)
            except tomllib.TOMLDecodeError:
                # `overrides = [...]` written inline cannot take another table
                note = (
                    f"{rel}: add an override for {', '.join(missing)} "
                    "(ignore_missing_imports) to your mypy overrides: they ship no types"
                )
                return MypyOverride(rel, old, old, note)
        note = f"{rel}: mypy override for {', '.join(missing)} (no type information shipped)"
        return MypyOverride(rel, old, new, note)
    return None
