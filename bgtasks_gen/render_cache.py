"""Rendered templates kept by the hash of everything that decides them.

Importing copier costs more than half a second (its interactive prompts come with it),
and `init --dry-run` then `init`, or `check` after `init`, render the same template with
the same answers. The key covers the template files, the answers, bgtasks' own Jinja
filters and the installed copier and Jinja2 (their files' sizes and times), so any
change renders afresh. The cache lives in BGTASKS_CACHE_DIR, else the user's cache
folder; it is only an optimisation: a cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

CACHE_VARIABLE = "BGTASKS_CACHE_DIR"
KEEP = 64  # renders kept; the oldest go first
# bump when what is stored changes shape
FORMAT = "1"


def cache_dir() -> Path:
    chosen = os.environ.get(CACHE_VARIABLE, "").strip()
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base) / "bgtasks" / "render"


def _installed(package: str) -> str:
    """Where a package is installed and when its entry module last changed: an upgrade
    changes it, without importing the package."""
    spec = importlib.util.find_spec(package)
    origin = spec.origin if spec is not None else None
    if not origin:
        return f"{package}:missing"
    stat = os.stat(origin)
    return f"{package}:{origin}:{stat.st_size}:{stat.st_mtime_ns}"


def render_key(template: Path, folder: str, context: Mapping[str, object]) -> str:
    """The hash of one render: the runner's folder, the shared files beside it, the
    answers, and what renders them."""
    digest = hashlib.sha256(FORMAT.encode())
    filters = Path(__file__).with_name("template_filters.py")
    digest.update(filters.read_bytes())
    for package in ("copier", "jinja2"):
        digest.update(_installed(package).encode())
    # copier.yml, the shared folders (_partials/...) and this runner's own: another
    # runner's folder takes no part in this render, and is not even walked
    taking_part = [
        top
        for top in sorted(template.iterdir())
        if top.name in (folder, "copier.yml") or top.name.startswith("_")
    ]
    for top in taking_part:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            rel = path.relative_to(template)
            if path.is_file() and "__pycache__" not in rel.parts:
                digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(context, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def cached_render(key: str, render: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The stored render for `key`, else `render()` stored under it."""
    folder = cache_dir()
    entry = folder / f"{key}.json"
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and all(isinstance(v, str) for v in stored.values()):
            os.utime(entry)  # recently used: kept longest
            return {str(k): v for k, v in stored.items()}
    except FileNotFoundError:
        pass
    except ValueError:
        with contextlib.suppress(OSError):
            entry.unlink()  # a write cut short: a JSON object never parses from half of one
    except OSError:
        pass  # an unreadable cache is a miss
    files = render()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # created exclusively, not renamed into place: a reader of an entry still being
        # written sees a miss, and a second writer of the same render steps aside
        with entry.open("x", encoding="utf-8") as out:
            json.dump(files, out)
        _prune(folder)
    except OSError:
        pass
    return files


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
