"""The state file (.bgtasks.toml) at the project root: what bgtasks generated there.

Later commands (add-task, update, check) read it to know the runner, the layout and the
pristine content hash of every generated file. It is read in one place, read_state, which
validates every value before returning: the file is in the user's repository, so a merge
gone wrong or a hostile pull request can put anything in it, and its paths and module
names decide which files bgtasks reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NoReturn

from bgtasks_gen import __version__
from bgtasks_gen.errors import BadInput

if TYPE_CHECKING:
    from bgtasks_gen.runners.base import RunnerSpec

STATE_FILE = ".bgtasks.toml"
BASE_DIR = ".bgtasks/base"  # pristine copies of the generated files, for `update`

HEADER = (
    "# Written by bgtasks: what it generated in this project, so later commands can\n"
    "# build on it. Commit it with your code; edit only if you know why.\n"
)

# Bounds far above any real project (bench/scaling.py goes to 500 tasks) and low enough
# that a tampered file is refused at once instead of keeping a command busy for minutes.
MAX_STATE_BYTES = 16 * 1024 * 1024
MAX_TEXT = 1000
MAX_FILES = 1000
MAX_TASKS = 5000
MAX_ARGS = 64
BROKERS = ("redis", "rabbitmq")
# the HTTP surface new scaffolds of every queue runner answer with (the same paths, verbs,
# bodies and field names); a project scaffolded before it keeps its runner's own shape
COMMON_API_SHAPE = "common"


# [layout] key: the router's module when init could not give it the runner's own name
# (a module of the project's has it); absent when it is the runner's own
ROUTER_FILE = "router_file"


def scaffolded_spec(spec: RunnerSpec, layout: Mapping[str, object]) -> RunnerSpec:
    """`spec` as the project scaffolded with it uses it: the router module under the name
    its state's `layout` records. Every command that loads a scaffolded project reads the
    runner's spec through here, so all of them find the same router."""
    recorded = layout.get(ROUTER_FILE)
    if isinstance(recorded, str) and recorded and recorded != spec.router_file:
        return replace(spec, router_file=recorded)
    return spec


def _brokers() -> tuple[str, ...]:
    """BROKERS, and any other broker a runner plugin takes."""
    from bgtasks_gen.runners import available_runners

    found = [b for spec in available_runners() for b in spec.brokers]
    return tuple(dict.fromkeys([*BROKERS, *found]))


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_state(
    runners: list[str],
    layout: Mapping[str, object],
    files: Mapping[str, str],
    tasks: Mapping[str, Mapping[str, object]] | None = None,
    adopted: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """The state file's text; keys are sorted so the same state gives the same bytes.

    `adopted`: the tasks `bgtasks adopt` wrote (task -> its source function, runner and
    queue name), apart from `tasks`, whose entries add-task renders again."""
    lines = [HEADER, f"version = {_toml_value(__version__)}"]
    lines.append(f"runner = {_toml_value(runners[-1])}")
    lines.append(f"runners = {_toml_value(runners)}")
    lines += ["", "[layout]"]
    lines += [f"{key} = {_toml_value(layout[key])}" for key in sorted(layout)]
    lines += ["", "[files]"]
    lines += [f"{_toml_value(path)} = {_toml_value(files[path])}" for path in sorted(files)]
    for name in sorted(tasks or {}):
        lines += ["", f"[tasks.{name}]"]
        task = (tasks or {})[name]
        lines += [f"{key} = {_toml_value(task[key])}" for key in sorted(task)]
    for name in sorted(adopted or {}):
        lines += ["", f"[adopted.{name}]"]
        record = (adopted or {})[name]
        lines += [f"{key} = {_toml_value(record[key])}" for key in sorted(record)]
    return "\n".join(lines) + "\n"


def read_state(root: Path) -> dict[str, object]:
    """The project's state, validated; {} when the project has none."""
    root = root.resolve()
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    if not path.resolve().is_relative_to(root):
        raise BadInput(
            f"{path} is a link to a file outside the project",
            f"replace the link with the project's own {STATE_FILE}",
        )
    with path.open("rb") as handle:
        raw = handle.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        raise BadInput(
            f"{path} is larger than {MAX_STATE_BYTES // (1024 * 1024)} MB: not a state "
            "file bgtasks wrote",
            _HINT,
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid TOML: {exc}", _HINT) from exc
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively; the state file
        # bgtasks writes nests two levels deep
        raise BadInput(
            f"{path} is not a state file bgtasks wrote: its values nest too deeply to read",
            _HINT,
        ) from None
    _StateCheck(root, path).run(data)
    return data


def project_path_problem(root: Path, rel: str) -> str | None:
    """Why `rel` is not a path inside the project (None when it is one): it must be
    relative, without `..`, and must not lead out of the project through a link.
    `root` is resolved."""
    if not rel or CONTROL.search(rel) or "\\" in rel:
        return "is not a relative POSIX path"
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        return "is an absolute path; it must be relative to the project"
    if ".." in pure.parts:
        return "contains '..'; it must stay inside the project"
    if not (root / pure).resolve().is_relative_to(root):
        return "leads outside the project through a link"
    return None


def outside_through_link(root: Path, target: Path) -> Path | None:
    """Where `target` really leads when a link takes it out of the project `root`; None
    when it stays inside. A link loop counts as leading out: it leads nowhere readable."""
    try:
        resolved = target.resolve()
        inside = resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return target
    return None if inside else resolved


def refuse_link_outside(root: Path, target: Path) -> None:
    """Planning reads and writes nothing through a link that leaves the project: what a
    --dry-run shows, `--check` compares and a write does must be the same decision."""
    resolved = outside_through_link(root, target)
    if resolved is not None:
        raise BadInput(
            f"{target} resolves to {resolved}, outside the project",
            "bgtasks neither reads nor writes through links that leave the project; replace "
            "the link with a file of the project's own; nothing was written",
        )


_HINT = f"restore {STATE_FILE} from version control, or delete it and run `bgtasks init` again"


def _shown(value: str) -> str:
    """A value quoted for a message, cut short: never a 10 MB line in the terminal."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


class _StateCheck:
    """Every key of the state file, checked once: the first problem is refused naming
    its key, before anything the file names is read."""

    def __init__(self, root: Path, path: Path) -> None:
        self.root = root
        self.path = path

    def refuse(self, key: str, problem: str) -> NoReturn:
        raise BadInput(f"{self.path}: {key} {problem}", _HINT)

    def run(self, data: dict[str, object]) -> None:
        from bgtasks_gen.runners import runner_names

        names = runner_names()
        runner = self.text("runner", data.get("runner"))
        if runner not in names:
            self.refuse("runner", f"is {_shown(runner)}, not one of {', '.join(names)}")
        if "version" in data:
            self.text("version", data["version"])
        if "runners" in data:
            runners = self.array("runners", data["runners"], len(names))
            for index, name in enumerate(runners):
                if self.text(f"runners[{index}]", name) not in names:
                    self.refuse(f"runners[{index}]", f"is not one of {', '.join(names)}")
        layout = self.table("layout", data.get("layout"), MAX_TEXT)
        self.layout(layout, runner)
        if "files" in data:
            self.files(self.table("files", data["files"], MAX_FILES))
        if "tasks" in data:
            self.tasks(self.table("tasks", data["tasks"], MAX_TASKS))
        if "adopted" in data:
            self.adopted(self.table("adopted", data["adopted"], MAX_TASKS))

    # -- value shapes

    def text(self, key: str, value: object) -> str:
        if not isinstance(value, str):
            self.refuse(key, f"must be a string, not {_type_name(value)}")
        if len(value) > MAX_TEXT:
            self.refuse(key, f"is {len(value):,} characters long (at most {MAX_TEXT})")
        if CONTROL.search(value):
            self.refuse(key, "contains control characters")
        return value

    def flag(self, key: str, value: object) -> None:
        if not isinstance(value, bool):
            self.refuse(key, f"must be true or false, not {_type_name(value)}")

    def number(self, key: str, value: object, low: int, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.refuse(key, f"must be a whole number, not {_type_name(value)}")
        if not low <= value <= high:
            self.refuse(key, f"is {value}, outside {low}..{high}")

    def array(self, key: str, value: object, most: int) -> list[object]:
        if not isinstance(value, list):
            self.refuse(key, f"must be an array, not {_type_name(value)}")
        if len(value) > most:
            self.refuse(key, f"has {len(value):,} items (at most {most})")
        return value

    def table(self, key: str, value: object, most: int) -> dict[str, object]:
        if not isinstance(value, dict):
            self.refuse(key, f"must be a table, not {_type_name(value)}")
        if len(value) > most:
            self.refuse(key, f"has {len(value):,} entries (at most {most})")
        return value

    def scalar(self, key: str, value: object) -> None:
        """A key this version does not know: kept as it is, so it must be small."""
        if isinstance(value, str):
            self.text(key, value)
        elif not isinstance(value, bool | int):
            self.refuse(key, f"must be a string, number or boolean, not {_type_name(value)}")

    def dotted(self, key: str, value: object) -> list[str]:
        from bgtasks_gen.modules import check_module_path

        parts = self.text(key, value).split(".")
        if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            self.refuse(key, f"is {_shown(str(value))}, not a dotted module name")
        try:
            check_module_path(str(value), key)
        except BadInput as error:
            raise BadInput(f"{self.path}: {error.message}", _HINT) from None
        return parts

    def inside(self, key: str, rel: str) -> None:
        problem = project_path_problem(self.root, rel)
        if problem:
            self.refuse(key, f"{_shown(rel)} {problem}")

    # -- the tables

    def layout(self, layout: dict[str, object], runner: str) -> None:
        from bgtasks_gen.runners import get_runner

        for required in ("tasks_module", "routes_module"):
            if required not in layout:
                self.refuse("layout", f"has no {required}")
        source = "."
        if "source_root" in layout:
            source = self.text("layout.source_root", layout["source_root"])
            self.inside("layout.source_root", source)
        tests = "tests"
        if "tests_dir" in layout:
            tests = self.text("layout.tests_dir", layout["tests_dir"])
            self.inside("layout.tests_dir", tests)
        folders = {}
        for key in ("tasks_module", "routes_module"):
            parts = self.dotted(f"layout.{key}", layout[key])
            folders[key] = PurePosixPath(source, *parts).as_posix()
            self.inside(f"layout.{key}", folders[key])
        for key in ("settings", "app"):
            if key in layout:
                module, _, name = self.text(f"layout.{key}", layout[key]).partition(":")
                parts = self.dotted(f"layout.{key}", module)
                if name and not name.isidentifier():
                    self.refuse(f"layout.{key}", f"names {_shown(name)}, not an identifier")
                for candidate in (f"{'/'.join(parts)}.py", f"{'/'.join(parts)}/__init__.py"):
                    self.inside(f"layout.{key}", PurePosixPath(source, candidate).as_posix())
        for key in ("pydantic_v1", "legacy_typing"):
            if key in layout:
                self.flag(f"layout.{key}", layout[key])
        brokers = _brokers()
        if "broker" in layout and self.text("layout.broker", layout["broker"]) not in brokers:
            self.refuse("layout.broker", f"is not one of {', '.join(brokers)}")
        if "api_shape" in layout:
            # "common" (one HTTP surface for every queue runner), or the runner whose
            # own routes an older or migrated router keeps answering with
            from bgtasks_gen.runners import runner_names

            shape = self.text("layout.api_shape", layout["api_shape"])
            if shape != COMMON_API_SHAPE and shape not in runner_names():
                self.refuse(
                    "layout.api_shape",
                    f"is {_shown(shape)}, not {COMMON_API_SHAPE!r} nor a runner's name",
                )
        if "features" in layout:
            from bgtasks_gen.features import FEATURES

            for index, value in enumerate(self.array("layout.features", layout["features"], 32)):
                if self.text(f"layout.features[{index}]", value) not in FEATURES:
                    self.refuse(f"layout.features[{index}]", "is not a feature bgtasks knows")
        if ROUTER_FILE in layout:
            key = f"layout.{ROUTER_FILE}"
            if len(self.dotted(key, layout[ROUTER_FILE])) != 1:
                self.refuse(key, "must be a module name without dots")
        known = {"source_root", "tests_dir", "tasks_module", "routes_module", "settings", "app"}
        known |= {"pydantic_v1", "legacy_typing", "broker", "api_shape", "features", ROUTER_FILE}
        for key, value in layout.items():
            if key not in known:
                self.scalar(f"layout.{key}", value)
        # the files later commands edit, found from the layout, must stay inside too
        spec = scaffolded_spec(get_runner(runner), layout)
        generated = [f"{tests}/{spec.test_file}"]
        generated.append(f"{folders['tasks_module']}/{spec.tasks_file}")
        generated.append(f"{folders['routes_module']}/{spec.router_file}.py")
        if spec.worker_file:
            generated.append(f"{folders['tasks_module']}/{spec.worker_file}")
        for rel in generated:
            self.inside("layout", PurePosixPath(rel).as_posix())

    def files(self, files: dict[str, object]) -> None:
        self.inside("files", BASE_DIR)
        for rel, value in files.items():
            key = _key("files", rel)
            self.text(key, rel)
            self.inside(key, rel)
            self.inside(key, f"{BASE_DIR}/{rel}.base")
            if not DIGEST.fullmatch(self.text(key, value)):
                self.refuse(key, "must be a sha256 digest of the file")

    def tasks(self, tasks: dict[str, object]) -> None:
        from bgtasks_gen.runners import runner_names
        from bgtasks_gen.task_request import parse_arg, parse_cron, validate_name

        names = runner_names()

        limits = {
            "every": (0, 10**9),
            "order": (0, 10**9),
            "retries": (0, 100),
            "timeout": (1, 24 * 3600),
        }
        for name, options in tasks.items():
            where = _key("tasks", name)
            try:
                validate_name(self.text(where, name))
            except BadInput as error:
                self.refuse(where, f"is not a task name ({error.message})")
            task = self.table(where, options, MAX_TEXT)
            for key, value in task.items():
                if key == "args":
                    for index, arg in enumerate(self.array(f"{where}.args", value, MAX_ARGS)):
                        try:
                            parse_arg(self.text(f"{where}.args[{index}]", arg))
                        except BadInput as error:
                            self.refuse(f"{where}.args[{index}]", f"is invalid: {error.message}")
                elif key == "cron":
                    expression = self.text(f"{where}.cron", value)
                    try:
                        if expression:
                            parse_cron(expression)
                    except BadInput as error:
                        self.refuse(f"{where}.cron", f"is invalid: {error.message}")
                elif key in limits:
                    self.number(f"{where}.{key}", value, *limits[key])
                elif key == "route":
                    self.flag(f"{where}.route", value)
                elif key == "hash":
                    if not DIGEST.fullmatch(self.text(f"{where}.hash", value)):
                        self.refuse(f"{where}.hash", "must be a sha256 digest")
                elif key == "runner":
                    if self.text(f"{where}.runner", value) not in names:
                        self.refuse(f"{where}.runner", f"is not one of {', '.join(names)}")
                else:
                    self.scalar(f"{where}.{key}", value)

    def adopted(self, adopted: dict[str, object]) -> None:
        """[adopted.<task>]: source = the project's dotted function, runner, queue_name."""
        from bgtasks_gen.runners import runner_names

        for name, record in adopted.items():
            where = _key("adopted", name)
            if not (self.text(where, name).isidentifier() and not keyword.iskeyword(name)):
                self.refuse(where, "is not a Python identifier")
            for key, value in self.table(where, record, MAX_TEXT).items():
                if key == "source":
                    self.dotted(f"{where}.source", value)
                elif key == "runner":
                    if self.text(f"{where}.runner", value) not in runner_names():
                        self.refuse(f"{where}.runner", "is not a runner bgtasks knows")
                else:
                    self.scalar(f"{where}.{key}", value)


def _key(table: str, name: str) -> str:
    """How a message names the key `name` of `table`, as TOML would spell it (cut short)."""
    if name.isidentifier() and len(name) <= 60:
        return f"{table}.{name}"
    return f"{table}.{json.dumps(name if len(name) <= 60 else name[:57] + '...')}"


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
