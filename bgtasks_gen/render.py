"""Render the copier template for one runner into {output path: text}.

A built-in runner's folder is templates/<name>/ of the shipped template; a plugin's spec
names a folder of its own (RunnerSpec.templates), rendered as part of a copy of the
shipped template so that it can include the shared `_partials/`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from bgtasks_gen.errors import BadInput, BgtasksError
from bgtasks_gen.runners.base import RunnerSpec

ANSWERS_FILE = ".bgtasks-answers.yml"


def templates_dir() -> Path:
    """The template folder: inside the installed wheel, or beside the package in a checkout."""
    shipped = Path(str(resources.files("bgtasks_gen") / "templates"))
    if (shipped / "copier.yml").is_file():
        return shipped
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if (checkout / "copier.yml").is_file():
        return checkout
    raise BgtasksError(
        "the bgtasks templates are missing from this installation",
        "reinstall bgtasks (the wheel ships a templates/ folder inside bgtasks_gen)",
    )


def snippets_dir(spec: RunnerSpec) -> Path:
    """The folder of the runner's add-task snippets."""
    if spec.snippets is not None:
        return Path(spec.snippets)
    return templates_dir() / "_snippets" / spec.name


@contextmanager
def _template_root(spec: RunnerSpec) -> Iterator[Path]:
    """The copier template to render: the shipped one, or for a plugin a copy of its
    copier.yml and _partials/ with the plugin's folder as <name>/."""
    shipped = templates_dir()
    if spec.templates is None:
        yield shipped
        return
    import yaml

    folder = Path(spec.templates)
    if not folder.is_dir():
        raise BadInput(
            f"the {spec.name} runner's template folder {folder} does not exist",
            "fix the plugin's RunnerSpec(templates=...): an absolute path to a folder with "
            "tasks/, routes/ and tests/",
        )
    with tempfile.TemporaryDirectory(prefix="bgtasks-template-") as tmp:
        root = Path(tmp)
        config = yaml.safe_load((shipped / "copier.yml").read_text(encoding="utf-8"))
        config["runner"]["choices"] = [*config["runner"].get("choices", []), spec.name]
        # the plugin's brokers are answers too (the engine checked them against its spec)
        brokers = config["broker"].get("choices", [])
        config["broker"]["choices"] = [*brokers, *(b for b in spec.brokers if b not in brokers)]
        config["broker"]["when"] = True
        (root / "copier.yml").write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
        shutil.copytree(shipped / "_partials", root / "_partials")
        ignore = shutil.ignore_patterns("__pycache__", "*.py[co]")
        shutil.copytree(folder, root / spec.name, ignore=ignore)
        yield root


def render_runner(spec: RunnerSpec, context: Mapping[str, object]) -> dict[str, str]:
    """Run copier on the runner's template with every answer given; return the files it
    produced.

    copier is imported here, not at module level, and only when the same render is not
    in the cache (render_cache.py): importing it costs more than half a second.
    """
    from bgtasks_gen.render_cache import cached_render, render_key

    _require_working_directory()
    with _template_root(spec) as template:
        key = render_key(template, spec.name, context)
        return cached_render(key, lambda: _run_copier(template, context))


def _run_copier(template: Path, context: Mapping[str, object]) -> dict[str, str]:
    import copier

    with tempfile.TemporaryDirectory(prefix="bgtasks-render-") as tmp:
        copier.run_copy(
            str(template),
            tmp,
            data=dict(context),
            defaults=True,
            quiet=True,
            overwrite=True,
            # the one "unsafe" feature used is copier.yml's _jinja_extensions, naming our
            # own `py` filter; the copier.yml is always ours (a plugin's folder is
            # rendered under a copy of it), so no template can add tasks of its own
            unsafe=True,
        )
        out = Path(tmp)
        files = {}
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != ANSWERS_FILE:
                files[path.relative_to(out).as_posix()] = path.read_text(encoding="utf-8")
        return files


def _require_working_directory() -> None:
    # copier resolves the current folder; one deleted under the shell would otherwise
    # end in a traceback from deep inside it.
    try:
        os.getcwd()
    except FileNotFoundError:
        raise BgtasksError(
            "the current folder no longer exists",
            "cd into an existing folder (the project, for one) and run the command again",
        ) from None
