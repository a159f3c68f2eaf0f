"""Which FastAPI app is served, and where the project includes its routers on it.

Every `FastAPI(...)` call is a candidate app object: created at module level, or in a
factory whose result some module binds (`app = create_app()`). The evidence for each
(what serves it, whether it includes routers, whether another app mounts it, whether it
lives in a test or mock module) is ranked in evidence.rank. Routers then go where the
project already includes its own: the factory, the module-level binding, or the mounted
API sub-app that holds them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from bgtasks_gen.discovery import evidence as ev
from bgtasks_gen.discovery.layout import AppLayout
from bgtasks_gen.discovery.served import ServedTarget
from bgtasks_gen.errors import DiscoveryError
from bgtasks_gen.modules import CallSite, Include, ModuleIndex, ModuleInfo
from bgtasks_gen.patch.outline import dotted_name

FASTAPI_CLASSES = frozenset({"fastapi.FastAPI", "fastapi.applications.FastAPI"})
# a module that makes an app calls FastAPI (`FastAPI(`, `fastapi.FastAPI (`) or imports it
# under another name; one that only annotates with it (`app: FastAPI`) is not read
FASTAPI_CALL = re.compile(r"\bFastAPI\s*\(|\bFastAPI\s+as\b")
INCLUDE_CALL = re.compile(r"\.include_router\s*\(")
NOT_SERVED_PARTS = frozenset(
    {"testing", "mock", "mocks", "fake", "fakes", "example", "examples", "fixtures", "scripts"}
)
SERVED_NAMES = ("main", "server", "app", "asgi", "application", "api")
HINT = (
    "say which one with --app-module MODULE[:APP] "
    "(or [tool.fastapi] entrypoint / [tool.bgtasks] app-module in pyproject.toml)"
)


@dataclass(frozen=True)
class Site:
    """A place the app has a name: (module, function or None for module level, name)."""

    info: ModuleInfo
    function: str | None
    name: str

    @property
    def label(self) -> str:
        where = f"{self.function}()" if self.function else self.name
        return f"{self.info.name}:{where}"


@dataclass
class AppObject:
    created: Site  # where FastAPI(...) is called and bound
    call: CallSite
    factory: str | None  # the function returning it, None when created at module level
    factory_params: int = 0
    bindings: list[Site] = field(default_factory=list)  # module-level names bound to it
    # module-level names other modules import it under (`from .application import app`)
    reexports: list[Site] = field(default_factory=list)
    # built in a method (`class Server: def create(self)`): where FastAPI(...) is called
    method: Site | None = None

    @property
    def sites(self) -> list[Site]:
        return [self.created, *self.bindings, *self.reexports]

    def names(self) -> set[str]:
        """Fully qualified names this app object is reachable by."""
        found = {f"{s.info.name}.{s.name}" for s in self.sites if s.function is None}
        if self.factory:
            found.add(f"{self.created.info.name}.{self.factory}")
        return found


def not_served_path(root: Path, path: Path) -> str | None:
    rel = path.relative_to(root)
    lowered = [part.lower() for part in rel.parts]
    name = lowered[-1]
    if set(lowered[:-1]) & NOT_SERVED_PARTS:
        return "lives in a test, mock or example folder"
    if name.startswith(("test_", "mock", "fake", "conftest")) or name.endswith("_test.py"):
        return "lives in a test or mock module"
    return None


class AppFinder:
    def __init__(self, index: ModuleIndex) -> None:
        self.index = index
        self.root = index.root
        self._includes: list[tuple[ModuleInfo, Include]] | None = None
        # per app object: the (module, attr) the strongest evidence names it by
        self.named: dict[int, list[tuple[str, str | None]]] = {}

    def objects(self) -> list[AppObject]:
        objects = []
        for path in self.index.grep(FASTAPI_CALL, "FastAPI"):
            info = self.index.load(path)
            for call in info.calls:
                if info.resolve(call.callee) not in FASTAPI_CLASSES:
                    continue
                if call.function is None:
                    if call.target:
                        objects.append(AppObject(Site(info, None, call.target), call, None))
                    continue
                function = info.functions.get(call.function)
                if function is None:
                    continue
                returns = call.target is None or call.target in function.returned_names
                site = Site(info, call.function, call.target or "")
                obj = AppObject(site, call, call.function if returns else None)
                obj.factory_params = function.required_params
                if returns:
                    obj.bindings = self._bindings(info, call.function)
                objects.append(obj)
            objects += self._built_in_methods(info)
        for obj in objects:
            obj.reexports = self._reexports(obj)
        return objects

    def _reexports(self, obj: AppObject) -> list[Site]:
        """Module-level imports of the app's names elsewhere, followed through chains
        (`pkg/apps/__init__.py` re-exporting it, `main.py` importing it from there)."""
        names = {f"{s.info.name}.{s.name}": s.name for s in obj.sites if s.function is None}
        found: list[Site] = []
        seen = set(names)
        while names:
            fresh: dict[str, str] = {}
            for path in self.index.importers(set(names.values())):
                if not_served_path(self.root, path):
                    continue
                info = self.index.load(path)
                for local, target in info.imports.items():
                    qualified = f"{info.name}.{local}"
                    if target in names and qualified not in seen:
                        seen.add(qualified)
                        fresh[qualified] = local
                        found.append(Site(info, None, local))
            names = fresh
        return found

    def _built_in_methods(self, info: ModuleInfo) -> list[AppObject]:
        """Apps a class method builds and returns, bound at module level by a call of it
        (`app = Server().create()`, `app = Server.build()`): the binding is the app."""
        if not any(cls for cls in info.classes):
            return []
        tree = self.index.tree(info)
        built: dict[tuple[str, str], tuple[ast.Call, str]] = {}  # (class, method) -> call
        for statement in tree.body:
            if not isinstance(statement, ast.ClassDef):
                continue
            for method in statement.body:
                if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                found = _returned_fastapi(info, method)
                if found is not None:
                    built[(statement.name, method.name)] = found
        objects = []
        for statement in tree.body:
            target, value = _binding(statement)
            if target is None or not isinstance(value, ast.Call):
                continue
            func = value.func
            if not isinstance(func, ast.Attribute):
                continue
            owner = func.value.func if isinstance(func.value, ast.Call) else func.value
            key = (dotted_name(owner), func.attr)
            if key not in built:
                continue
            call, variable = built[key]
            keywords = tuple(k.arg for k in call.keywords if k.arg)
            site = CallSite(variable or None, "FastAPI", keywords, None, call.lineno)
            obj = AppObject(Site(info, None, target), site, None)
            obj.method = Site(info, f"{key[0]}.{key[1]}", variable)
            objects.append(obj)
        return objects

    def _bindings(self, info: ModuleInfo, factory: str) -> list[Site]:
        """Module-level `x = factory()` anywhere in the project."""
        qualified = f"{info.name}.{factory}"
        pattern = re.compile(rf"\b{re.escape(factory)}\s*\(")
        found = []
        for path in self.index.grep(pattern, factory):
            other = self.index.load(path)
            for call in other.calls:
                if (
                    call.function is None
                    and call.target
                    and other.resolve(call.callee) == qualified
                ):
                    found.append(Site(other, None, call.target))
        return found

    def includes(self) -> list[tuple[ModuleInfo, Include]]:
        if self._includes is None:
            self._includes = [
                (info, include)
                for path in self.index.grep(INCLUDE_CALL, "include_router")
                for info in [self.index.load(path)]
                for include in info.includes
            ]
        return self._includes

    def includes_on(self, obj: AppObject) -> dict[Site, list[Include]]:
        """The project's include_router calls on this app, by the site they use."""
        found: dict[Site, list[Include]] = {}
        names = obj.names()
        created = obj.created
        for info, include in self.includes():
            if include.function is not None:
                if (
                    info is created.info
                    and include.function == created.function
                    and include.receiver == created.name
                ):
                    found.setdefault(created, []).append(include)
                continue
            qualified = info.resolve(include.receiver)
            if qualified in names:
                found.setdefault(Site(info, None, include.receiver), []).append(include)
        return found

    def mounted(self, obj: AppObject, objects: list[AppObject]) -> AppObject | None:
        """The app that mounts this one (`app.mount("/api", api_app)`), if any."""
        names = obj.names()
        for other in objects:
            if other is obj:
                continue
            for site in other.sites:
                for function, receiver, mounted in site.info.mounts:
                    if receiver == site.name and function == site.function:
                        if site.info.resolve(mounted) in names:
                            return other
        return None

    def choose(
        self, override: str | None, entrypoint: str | None, served: list[ServedTarget]
    ) -> AppLayout:
        objects = self.objects()
        if not objects:
            raise DiscoveryError(
                "no FastAPI(...) app found in any module of the project "
                "(tests and virtual environments excluded)",
                "point bgtasks at it with --app-module MODULE[:APP]",
            )
        candidates = []
        for obj in objects:
            candidate = ev.Candidate(obj, obj.created.label)
            self._weigh(candidate, objects, override, entrypoint, served)
            candidates.append(candidate)
        if override and not any(c.score >= ev.OVERRIDE // 2 for c in candidates):
            raise DiscoveryError(
                f"the app override {override!r} names no FastAPI app "
                f"(found: {', '.join(sorted(c.label for c in candidates))})",
                "give MODULE:APP as you would import it, e.g. app.main:app",
            )
        best = ev.rank(candidates, "FastAPI app is the one served", HINT)
        if best is None:
            excluded = "; ".join(c.summary() for c in candidates)
            raise DiscoveryError(f"no FastAPI app that could be the served one: {excluded}", HINT)
        return self._layout(best, objects, follow_mounts=not override)

    def _weigh(
        self,
        candidate: ev.Candidate[AppObject],
        objects: list[AppObject],
        override: str | None,
        entrypoint: str | None,
        served: list[ServedTarget],
    ) -> None:
        obj = candidate.value
        named: list[tuple[str, str | None]] = []
        if override and self._matches(obj, *_split(override)):
            candidate.add(ev.OVERRIDE, f"the app module override ({override})")
            named.append(_split(override))
        if entrypoint and self._matches(obj, *_split(entrypoint)):
            candidate.add(ev.CONFIGURED, f"[tool.fastapi] entrypoint = {entrypoint!r}")
            named.append(_split(entrypoint))
        for target in served:
            if self._matches(obj, target.module, target.attr):
                candidate.add(ev.SERVED, target.source)
                named.append((target.module, target.attr))
                break
        self.named[id(obj)] = named
        if any(site.function is None for site in obj.sites):
            candidate.add(ev.MODULE_LEVEL, "bound at module level")
        includes = sum(len(v) for v in self.includes_on(obj).values())
        if includes:
            candidate.add(ev.INCLUDES + min(includes, 10), f"includes {includes} router(s)")
        if obj.created.info.name.rpartition(".")[2] in SERVED_NAMES:
            candidate.add(5, f"module named {obj.created.info.name.rpartition('.')[2]}")
        parent = self.mounted(obj, objects)
        if parent is not None:
            candidate.add(ev.MOUNTED, f"mounted by {parent.created.label}")
        reason = not_served_path(self.root, obj.created.info.path)
        if reason:
            candidate.add(ev.EXCLUDED, reason)

    def _matches(self, obj: AppObject, module: str, attr: str | None) -> bool:
        for site in obj.sites:
            if site.function is None and site.info.name == module and attr in (None, site.name):
                return True
        return bool(obj.factory and obj.created.info.name == module and attr in (None, obj.factory))

    def _layout(
        self, chosen: ev.Candidate[AppObject], objects: list[AppObject], follow_mounts: bool
    ) -> AppLayout:
        obj = chosen.value
        target = obj
        note = ""
        own = self.includes_on(obj)
        if follow_mounts:
            # a main app that mounts an API sub-app (`app.mount("/api/v1", api)`) holding
            # more of the project's routers than itself (a health check, say): routers
            # go on the sub-app, under its prefix and its dependencies
            subs = [o for o in objects if o is not obj and self.mounted(o, objects) is obj]
            with_routers = [o for o in subs if _count(self.includes_on(o)) > _count(own)]
            if len(with_routers) == 1:
                target = with_routers[0]
                own = self.includes_on(target)
                note = (
                    f"the router goes on {target.created.label}, the sub-app "
                    f"{obj.created.label} mounts, which holds the project's routers"
                )
        site = self._include_site(target, own)
        if not site.name:
            raise DiscoveryError(
                f"{target.created.info.path.relative_to(self.root)}:{target.call.line}: the app "
                "is returned directly (`return FastAPI(...)`), so there is no name to include "
                "a router on",
                "bind it first (`app = FastAPI(...)`, then `return app`) and run again",
            )
        served, import_site, is_factory = self._served(obj)
        keywords, pattern = _shared_keywords(own.get(site, []))
        created = target.method or target.created
        rel = created.info.path.relative_to(self.root)
        return AppLayout(
            module=site.info.name,
            path=site.info.path,
            app_var=site.name,
            factory=site.function,
            uses_on_event=any(s.info.uses_on_event for s in target.sites),
            has_lifespan="lifespan" in target.call.keywords,
            found_by=f"{chosen.because}: {rel}:{target.call.line}",
            served=served,
            import_module=import_site[0],
            import_name=import_site[1],
            import_is_factory=is_factory,
            created_module=created.info.name,
            created_path=created.info.path,
            created_var=created.name,
            created_factory=target.factory,
            include_keywords=keywords,
            include_note="; ".join(n for n in (note, pattern) if n),
            mounted_in=obj.created.label if target is not obj else "",
        )

    def _include_site(self, obj: AppObject, own: dict[Site, list[Include]]) -> Site:
        """Where the project includes its routers on this app; where it is made if nowhere."""
        if own:
            return max(own, key=lambda s: (len(own[s]), s.function is not None))
        return obj.created

    def _served(self, obj: AppObject) -> tuple[str, tuple[str, str], bool]:
        """The run target (module:attr), and what `from X import Y` gives the app object.

        A module-level binding is named whenever there is one: serving the factory with
        `--factory` would build a second app without what the module adds to the first
        (its includes, its `@app.on_event` handlers), and fails when it takes arguments.
        """
        bindings = [s for s in obj.sites if s.function is None and s.name]
        if bindings:
            named = self.named.get(id(obj), [])

            def preference(site: Site) -> tuple[bool, bool, bool, str]:
                evidence = any(site.info.name == m and a in (None, site.name) for m, a in named)
                conventional = site.info.name.rpartition(".")[2] in SERVED_NAMES
                imported = site in obj.reexports
                return (not evidence, imported, not conventional, site.info.name)

            site = min(bindings, key=preference)
            return f"{site.info.name}:{site.name}", (site.info.name, site.name), False
        module = obj.created.info.name
        factory = obj.factory or obj.created.function or ""
        return f"{module}:{factory} --factory", (module, factory), True


def _count(includes: dict[Site, list[Include]]) -> int:
    return sum(len(found) for found in includes.values())


def _split(target: str) -> tuple[str, str | None]:
    module, _, attr = target.partition(":")
    return module, attr.removesuffix("()") or None


def _shared_keywords(includes: list[Include]) -> tuple[tuple[tuple[str, str], ...], str]:
    """prefix= and dependencies= that every one of the project's includes passes the same."""
    if not includes:
        return (), ""
    shared: list[tuple[str, str]] = []
    seen: list[str] = []
    for keyword in ("prefix", "dependencies"):
        values = {dict(i.keywords).get(keyword) for i in includes}
        if len(values) == 1 and None not in values:
            value = values.pop()
            assert value is not None
            shared.append((keyword, value))
            seen.append(f"{keyword}={value}")
        elif any(v is not None for v in values):
            listed = ", ".join(sorted(repr(v) if v is not None else "none" for v in values))
            seen.append(f"the project's includes differ in {keyword} ({listed}): not copied")
    if shared:
        note = "included like the project's own routers: " + ", ".join(
            f"{k}={v}" for k, v in shared
        )
        rest = [s for s in seen if "differ" in s]
        return tuple(shared), "; ".join([note, *rest])
    return (), "; ".join(seen)


def _binding(statement: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """(name, value) of a module-level `name = value` or `name: T = value`."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        if isinstance(statement.targets[0], ast.Name):
            return statement.targets[0].id, statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target.id, statement.value
    return None, None


def _returned_fastapi(
    info: ModuleInfo, method: ast.FunctionDef | ast.AsyncFunctionDef
) -> tuple[ast.Call, str] | None:
    """The FastAPI(...) call a method returns, and the name it binds it to ("" if none)."""
    returned = {
        node.value.id
        for node in ast.walk(method)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Name)
    }
    for node in ast.walk(method):
        target, value = (None, None)
        if isinstance(node, ast.Assign | ast.AnnAssign):
            target, value = _binding(node)
        elif isinstance(node, ast.Return):
            value = node.value
        if not isinstance(value, ast.Call):
            continue
        if info.resolve(dotted_name(value.func)) not in FASTAPI_CLASSES:
            continue
        if isinstance(node, ast.Return):
            return value, ""
        if target in returned:
            return value, target or ""
    return None
