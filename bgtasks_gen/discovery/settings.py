"""Which settings class is in force for the served app, and how the app reaches it.

Candidates are the project's accessors of a pydantic `BaseSettings` subclass:
- a module-level instance (`settings = Settings()`, or `settings = get_settings()`);
- a function that returns the instance (`return Settings()`, `s = Settings(); return s`,
  under a cache decorator or not);
- a function that chooses among several settings classes at run time
  (`return environments[env]()`, `-> AppSettings`): the class to patch is then the
  nearest base the chosen classes share in the project, so every environment gets the
  fields.
A function that merely builds a Settings to read one value (`get_redis()`) is not one.
Ranked by whether the served app's import closure reaches them and how widely the
project uses them; classes with no accessor are the fallback.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.discovery import evidence as ev
from bgtasks_gen.discovery.apps import not_served_path
from bgtasks_gen.discovery.layout import SettingsLayout
from bgtasks_gen.errors import DiscoveryError
from bgtasks_gen.modules import ModuleIndex, ModuleInfo
from bgtasks_gen.patch.outline import dotted_name

SETTINGS_ROOTS_V2 = frozenset(
    {"pydantic_settings.BaseSettings", "pydantic_settings.main.BaseSettings"}
)
SETTINGS_ROOTS_V1 = frozenset({"pydantic.BaseSettings", "pydantic.env_settings.BaseSettings"})
HINT = (
    "say which one with --settings-module MODULE[:CLASS] "
    "(or [tool.bgtasks] settings-module in pyproject.toml)"
)
MAX_DEPTH = 20
# an instance a factory of another class reads to choose what to build (a bootstrap)
BOOTSTRAP = -40
# a class whose env_prefix names the one subsystem it configures (AuthSettings, AUTH_)
SUBSYSTEM = -30
# the bases of each top-level class (top-level statements start at column 0): up to the
# colon ending the header, PEP 695 type parameters (`class A[T: int](Base)`) skipped
CLASS_BASES = re.compile(r"^class\s+\w+\s*(?:\[[^\]]*\])?\s*\(([^:]*)", re.MULTILINE)


def _words(names: set[str]) -> str:
    return "|".join(sorted(map(re.escape, names)))


def _spellings(text: str, names: set[str]) -> set[str]:
    """The names, and what the module imports them as (`Settings as AppSettings`)."""
    aliases = re.findall(rf"\b(?:{_words(names)})\s+as\s+(\w+)", text)
    return names | set(aliases)


def derives_by_text(text: str, names: set[str]) -> bool:
    """Whether a top-level class of this text names one of `names` in its bases: what a
    module must hold to define a subclass of them, decided without parsing it."""
    bases = " ".join(CLASS_BASES.findall(text))
    return re.search(rf"\b(?:{_words(_spellings(text, names))})\b", bases) is not None


def may_access_by_text(text: str, names: set[str]) -> bool:
    """Whether a module can hold an accessor of the settings classes `names`: it calls one
    (`Settings()`, under an alias too), annotates a return with one (`-> Settings`), or
    names two of them (a choice among classes at run time). The many modules that only
    import the class to annotate a parameter (`settings: Settings = Depends(...)`) are
    decided without parsing them."""
    spelled = _words(_spellings(text, names))
    if len(set(re.findall(rf"\b(?:{spelled})\b", text))) >= 2:
        return True
    return re.search(rf"\b(?:{spelled})\s*\(|->[^:]*\b(?:{spelled})\b", text) is not None


@dataclass(frozen=True)
class Accessor:
    info: ModuleInfo  # where the accessor is defined
    name: str  # `settings` or `get_settings`
    kind: str  # "instance" | "factory" | "class"
    cls: str  # qualified name of the class to patch
    how: str


class SettingsFinder:
    def __init__(self, index: ModuleIndex) -> None:
        self.index = index
        self._roots: dict[str, str | None] = {}
        self._classes: list[str] | None = None
        self._qualified: dict[str, str | None] = {}

    # the classes ------------------------------------------------------------------------
    def settings_root(self, qualified: str, depth: int = 0) -> str | None:
        """The pydantic BaseSettings a class derives from, or None if it is not settings."""
        if qualified in SETTINGS_ROOTS_V1 | SETTINGS_ROOTS_V2:
            return qualified
        if depth > MAX_DEPTH:
            return None
        if qualified not in self._roots:
            self._roots[qualified] = None
            for base in self.bases(qualified):
                root = self.settings_root(base, depth + 1)
                if root:
                    self._roots[qualified] = root
                    break
        return self._roots[qualified]

    def bases(self, qualified: str) -> list[str]:
        located = self.index.locate(qualified)
        if located is None:
            return []
        info, name = located
        cls = info.classes.get(name)
        return [info.resolve(b) for b in cls.bases] if cls else []

    def classes(self) -> list[str]:
        """Every settings class of the project: direct BaseSettings subclasses first, then
        (found by name, a fixpoint) the classes that derive from those."""
        if self._classes is None:
            found: list[str] = []
            names = {"BaseSettings"}
            read: set[str] = set()
            while True:
                pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
                # a module without a class deriving from one of the names is not read
                # (nor marked read: a later round, with more names, looks again)
                fresh = [
                    p
                    for p in self.index.grep(pattern, any_of=names)
                    if str(p) not in read and derives_by_text(self.index.text(p), names)
                ]
                if not fresh:
                    break
                for path in fresh:
                    read.add(str(path))
                    info = self.index.load(path)
                    for name in info.classes:
                        qualified = f"{info.name}.{name}"
                        if qualified not in found and self.settings_root(qualified):
                            found.append(qualified)
                            names.add(name)
            self._classes = found
        return self._classes

    def ancestors(self, qualified: str) -> list[str]:
        """The project's settings classes `qualified` derives from, nearest first."""
        order: list[str] = []
        queue = [qualified]
        while queue:
            current = queue.pop(0)
            for base in self.bases(current):
                if base not in order and self.index.locate(base) and self.settings_root(base):
                    order.append(base)
                    queue.append(base)
        return order

    def common_base(self, classes: list[str]) -> str | None:
        """The nearest project settings class every one of `classes` is or derives from."""
        if not classes:
            return None
        lines = [[c, *self.ancestors(c)] for c in classes]
        for candidate in lines[0]:
            if all(candidate in line for line in lines[1:]):
                return candidate
        return None

    def qualified_class(self, info: ModuleInfo, written: str | None) -> str | None:
        if not written:
            return None
        qualified = info.resolve(written)
        if qualified not in self._qualified:
            self._qualified[qualified] = self._settings_class(qualified)
        return self._qualified[qualified]

    def _settings_class(self, qualified: str) -> str | None:
        located = self.index.locate(qualified)
        if located is None:
            return None
        where, name = located
        full = f"{where.name}.{name}"
        return full if name in where.classes and self.settings_root(full) else None

    # the accessors ----------------------------------------------------------------------
    def accessors(self) -> list[Accessor]:
        classes = self.classes()
        if not classes:
            return []
        names = {c.rpartition(".")[2] for c in classes}
        pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
        found: list[Accessor] = []
        factories: dict[str, str] = {}  # qualified factory -> class
        modules = [
            self.index.load(p)
            for p in self.index.grep(pattern, any_of=names)
            if may_access_by_text(self.index.text(p), names)
        ]
        for info in modules:
            found += self._module_level_choices(info)
            for function in info.functions.values():
                # several classes built in its returns first: the first call is one of them
                cls = self._returned_built(info, function.name) or self._returned_class(
                    info, function.name
                )
                if cls:
                    factories[f"{info.name}.{function.name}"] = cls[0]
                    found.append(Accessor(info, function.name, "factory", cls[0], cls[1]))
            for call in info.calls:
                if call.function is None and call.target:
                    cls_name = self.qualified_class(info, call.callee)
                    if cls_name:
                        found.append(
                            Accessor(
                                info, call.target, "instance", cls_name, "module-level instance"
                            )
                        )
        # `settings = get_settings()`: an instance of the factory's class
        for info in modules + [self.index.load(p) for p in self._factory_users(factories)]:
            for call in info.calls:
                qualified = info.resolve(call.callee)
                if call.function is None and call.target and qualified in factories:
                    accessor = Accessor(
                        info,
                        call.target,
                        "instance",
                        factories[qualified],
                        f"module-level instance from {call.callee}()",
                    )
                    if accessor not in found:
                        found.append(accessor)
        return found

    def _factory_users(self, factories: dict[str, str]) -> list[Path]:
        if not factories:
            return []
        names = {f.rpartition(".")[2] for f in factories}
        pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\s*\(")
        return self.index.grep(pattern, any_of=names)

    def _returned_class(self, info: ModuleInfo, function: str) -> tuple[str, str] | None:
        """The settings class a function returns an instance of, and how that was seen."""
        facts = info.functions[function]
        for call in info.calls:
            if call.function != function:
                continue
            cls = self.qualified_class(info, call.callee)
            if cls and (call.target is None or call.target in facts.returned_names):
                return cls, f"{function}() returns a {cls.rpartition('.')[2]}"
        # a returned call of something that is not a settings class: `return config()`
        other = facts.returns_other_call or any(
            call.function == function and call.target is None for call in info.calls
        )
        if not other and not facts.returned_names:
            return None
        # chosen at run time: `return environments[env]()`, `config = X; return config()`
        referenced = [
            c for c in (self.qualified_class(info, name) for name in sorted(facts.referenced)) if c
        ]
        annotated = self.qualified_class(info, facts.return_annotation)
        if annotated and (other or len(referenced) > 1):
            return annotated, f"{function}() -> {annotated.rpartition('.')[2]}"
        if len(referenced) > 1 and other:
            base = self.common_base(referenced)
            if base:
                chosen = ", ".join(c.rpartition(".")[2] for c in referenced)
                return base, (
                    f"{function}() chooses among {chosen} at run time; their common "
                    f"base {base.rpartition('.')[2]} gets the fields"
                )
        return None

    def _tree(self, info: ModuleInfo) -> ast.Module:
        return self.index.tree(info)

    def _built(self, info: ModuleInfo, expression: ast.expr) -> list[str]:
        """The project's settings classes an expression instantiates: `A() if x else B()`,
        `{"dev": A, "prod": B}[env]()`."""
        found: list[str] = []
        for node in ast.walk(expression):
            if not isinstance(node, ast.Call):
                continue
            names = [dotted_name(node.func)]
            if isinstance(node.func, ast.Subscript):
                names = [
                    dotted_name(n) for n in ast.walk(node.func.value) if isinstance(n, ast.expr)
                ]
            for name in names:
                cls = self.qualified_class(info, name) if name else None
                if cls and cls not in found:
                    found.append(cls)
        return found

    def _chosen(self, built: list[str], annotation: str | None) -> str | None:
        """The class to patch for an object built as one of `built`: the annotated class
        when they all derive from it, else their nearest common base."""
        if annotation and all(annotation in (c, *self.ancestors(c)) for c in built):
            return annotation
        return self.common_base(built)

    def _returned_built(self, info: ModuleInfo, function: str) -> tuple[str, str] | None:
        """What a factory returns when it builds one of several classes in its return
        statements (`return Prod() if production else Dev()`, one `return` per branch)."""
        tree = self._tree(info)
        if "return" not in info.source:
            return None
        node = next(
            (
                n
                for n in tree.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
            ),
            None,
        )
        if node is None:
            return None
        built: list[str] = []
        returns = [n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value]
        for item in sorted(returns, key=lambda n: (n.lineno, n.col_offset)):
            assert item.value is not None
            built += [c for c in self._built(info, item.value) if c not in built]
        if len(built) < 2:
            return None
        annotated = self.qualified_class(info, info.functions[function].return_annotation)
        cls = self._chosen(built, annotated)
        if cls is None:
            return None
        chosen = ", ".join(c.rpartition(".")[2] for c in built)
        return cls, (
            f"{function}() builds {chosen}; {cls.rpartition('.')[2]}, which they all "
            "are, gets the fields"
        )

    def _module_level_choices(self, info: ModuleInfo) -> list[Accessor]:
        """`settings = Prod() if production else Dev()` at module level."""
        tree = self._tree(info)
        found = []
        for statement in tree.body:
            target: ast.expr | None = None
            annotation: ast.expr | None = None
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, value = statement.targets[0], statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                target, value, annotation = statement.target, statement.value, statement.annotation
            else:
                continue
            if not isinstance(target, ast.Name) or (
                isinstance(value, ast.Call) and dotted_name(value.func)
            ):
                continue  # a plain call: the CallSite rules see it
            built = self._built(info, value)
            if len(built) < 2:
                continue
            written = dotted_name(annotation) if annotation is not None else None
            cls = self._chosen(built, self.qualified_class(info, written))
            if cls:
                chosen = ", ".join(c.rpartition(".")[2] for c in built)
                how = f"module-level instance of one of {chosen}, chosen at run time"
                found.append(Accessor(info, target.id, "instance", cls, how))
        return found

    # the choice -------------------------------------------------------------------------
    def choose(
        self,
        override: str | None,
        closure: set[str],
        app_modules: list[ModuleInfo],
    ) -> SettingsLayout | None:
        """The settings in force; None when the project has no settings class at all."""
        wanted_module, _, wanted_name = (override or "").partition(":")
        accessors = self.accessors()
        candidates = []
        imported_by_app = {target for info in app_modules for target in info.imports.values()}
        for accessor in accessors:
            candidate = ev.Candidate(accessor, f"{accessor.info.name}.{accessor.name}")
            candidate.add(1 if accessor.kind == "factory" else 2, accessor.how)
            if override:
                if self._overridden(accessor, wanted_module, wanted_name):
                    candidate.add(ev.OVERRIDE, f"the settings module override ({override})")
                else:
                    candidate.add(ev.EXCLUDED, "not the one the override names")
            if accessor.info.name in closure:
                candidate.add(ev.REACHED, "the served app's imports reach it")
            if f"{accessor.info.name}.{accessor.name}" in imported_by_app:
                candidate.add(ev.IMPORTED_BY_APP, "the app module imports it")
            users = self._users(accessor)
            if users:
                candidate.add(min(users, 10), f"used by {users} module(s)")
            chooser = self._consulted_by(accessor, accessors)
            if chooser:
                candidate.add(BOOTSTRAP, f"read by {chooser}() to build the settings it returns")
            scope = self._subsystem(accessor)
            if scope:
                candidate.add(SUBSYSTEM, scope)
            reason = not_served_path(self.index.root, accessor.info.path)
            if reason:
                candidate.add(ev.EXCLUDED, reason)
            candidates.append(candidate)
        best = self._rank(candidates)
        if best is not None:
            accessor = best.value
            how = f"{accessor.how}, and {best.because}"
            if override:
                how = f"the settings module override ({override})"
            return self.layout(accessor.cls, accessor.info.name, accessor.name, accessor.kind, how)
        return self._without_accessor(override, closure)

    def _rank(self, candidates: list[ev.Candidate[Accessor]]) -> ev.Candidate[Accessor] | None:
        try:
            return ev.rank(candidates, "settings object the app uses", HINT)
        except DiscoveryError:
            # tied accessors of one class (an instance and its factory) are one answer
            top = max(c.score for c in candidates)
            tied = [c for c in candidates if c.score == top]
            if len({c.value.cls for c in tied}) == 1:
                return sorted(tied, key=lambda c: (c.value.kind != "instance", c.label))[0]
            raise

    def _consulted_by(self, accessor: Accessor, accessors: list[Accessor]) -> str | None:
        """The factory, of another settings class, that reads this instance to decide what
        to build (`bootstrap = Bootstrap()`, then `get_settings()` checks bootstrap.env)."""
        if accessor.kind != "instance":
            return None
        qualified = f"{accessor.info.name}.{accessor.name}"
        for other in accessors:
            if other.kind != "factory" or other.cls == accessor.cls:
                continue
            facts = other.info.functions.get(other.name)
            if facts is None:
                continue
            for name in facts.referenced:
                if other.info.resolve(name) == qualified:
                    return other.name
        return None

    def _subsystem(self, accessor: Accessor) -> str | None:
        """Why a class configures one part of the app only: its env_prefix names it
        (`AuthSettings` reading `AUTH_*`), and that is not the project's own name."""
        located = self.index.locate(accessor.cls)
        if located is None:
            return None
        info, name = located
        prefix = info.classes[name].config.get("env_prefix")
        if not isinstance(prefix, str):
            return None
        scope = prefix.strip("_").lower()
        stem = re.sub(r"(settings|config|configuration)$", "", name.lower()).strip("_")
        package = info.name.split(".")[0].lower()
        if not scope or scope != stem or scope == package:
            return None
        return f"configures one part only (env_prefix={prefix!r})"

    def _overridden(self, accessor: Accessor, module: str, name: str) -> bool:
        class_module, _, class_name = accessor.cls.rpartition(".")
        if module not in (accessor.info.name, class_module):
            return False
        return not name or name in (accessor.name, class_name)

    def _users(self, accessor: Accessor) -> int:
        """How many modules import the accessor by name: read from the text, not parsed
        (in a large project every module may import `settings`)."""
        module = re.escape(accessor.info.name)
        name = re.escape(accessor.name)
        pattern = re.compile(
            rf"^\s*from\s+{module}\s+import\s+(\([^)]*|[^\n]*)\b{name}\b", re.MULTILINE
        )
        return len(self.index.grep(pattern, accessor.name))

    def _without_accessor(self, override: str | None, closure: set[str]) -> SettingsLayout | None:
        wanted_module, _, wanted_name = (override or "").partition(":")
        classes = [
            c
            for c in self.classes()
            if (not override or c.rpartition(".")[0] == wanted_module)
            and (not wanted_name or c.rpartition(".")[2] == wanted_name)
            and not not_served_path(self.index.root, self._path(c))
        ]
        if override and not classes:
            raise DiscoveryError(
                f"no pydantic BaseSettings subclass in module {wanted_module}"
                + (f" named {wanted_name}" if wanted_name else ""),
                "point --settings-module at the module (and class) that defines it",
            )
        if not classes:
            return None
        bases = {b for c in classes for b in self.bases(c)}
        leaves = [c for c in classes if c not in bases]
        reached = [c for c in leaves if c.rpartition(".")[0] in closure] or leaves
        if len(reached) == 1:
            module, _, name = reached[0].rpartition(".")
            return self.layout(
                reached[0], module, name, "class", "the only BaseSettings leaf class"
            )
        base = self.common_base(reached)
        if base:
            module, _, name = base.rpartition(".")
            chosen = ", ".join(c.rpartition(".")[2] for c in reached)
            return self.layout(
                base, module, name, "class", f"the common base of {chosen}, none instantiated"
            )
        raise DiscoveryError(
            f"several Settings classes and none is instantiated: {', '.join(sorted(reached))}",
            "say which one with --settings-module MODULE:CLASS",
        )

    def _path(self, qualified: str) -> Path:
        located = self.index.locate(qualified)
        assert located is not None
        return located[0].path

    # the layout -------------------------------------------------------------------------
    def layout(
        self, qualified: str, access_module: str, access_name: str, kind: str, how: str
    ) -> SettingsLayout:
        located = self.index.locate(qualified)
        assert located is not None  # settings_root() already found it
        info, class_name = located
        lineage = [f"{info.name}.{class_name}", *self.ancestors(f"{info.name}.{class_name}")]
        fields: list[str] = []
        types: dict[str, tuple[str, str | None]] = {}
        config: dict[str, object] = {}
        for cls_name in lineage:
            where = self.index.locate(cls_name)
            if where is None:
                continue
            cls = where[0].classes[where[1]]
            fields.extend(f for f in cls.fields if f not in fields)
            for name, typed in cls.field_types.items():
                types.setdefault(name, typed)
            for key, value in cls.config.items():
                config.setdefault(key, value)
        named = [f for f in fields if f != "model_config" and any(c.isalpha() for c in f)]
        upper = sum(f.isupper() for f in named)
        root = self.settings_root(qualified) or ""
        cls = info.classes[class_name]
        prefix = config.get("env_prefix")
        return SettingsLayout(
            module=info.name,
            path=info.path,
            class_name=class_name,
            access_module=access_module,
            access_name=access_name,
            access_kind=kind,
            fields=tuple(fields),
            upper_case=bool(named) and upper * 2 >= len(named),
            pydantic_v1=root in SETTINGS_ROOTS_V1,
            found_by=f"{how}: class {class_name} at "
            f"{info.path.relative_to(self.index.root)}:{cls.line}",
            field_types=types,
            env_prefix=prefix if isinstance(prefix, str) else "",
            case_sensitive=config.get("case_sensitive") is True,
        )
