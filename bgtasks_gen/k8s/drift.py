"""Manifests on disk against what the project implies now.

Only what the project decides is compared: which files exist (a runner with or without a
scheduler), each container's command and grace period, the setting names of the
ConfigMap and Secret, and every trigger's type and queue keys. Replicas, resources,
images and values are the user's to change.
"""

from __future__ import annotations

from typing import Any

import yaml

from bgtasks_gen.addtask import Project
from bgtasks_gen.k8s.facts import read_facts
from bgtasks_gen.k8s.manifests import render_manifests

# trigger metadata naming what is counted (targets and thresholds are the user's)
QUEUE_KEYS = ("listName", "stream", "consumerGroup", "queueName", "databaseIndex")


def k8s_drift(project: Project, folder: str = "deploy/k8s") -> list[str]:
    """One message per manifest that no longer matches; none when the folder is absent."""
    prefix = folder.strip("/")
    root = project.root / prefix
    if not root.is_dir():
        return []
    facts = read_facts(project)
    expected = render_manifests(facts)
    problems: list[str] = []
    for name, text in expected.items():
        shown = f"{prefix}/{name}"
        path = root / name
        if not path.is_file():
            problems.append(f"{shown}: missing (the {facts.runner} project needs it)")
            continue
        try:
            on_disk = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
            problems.append(f"{shown}: cannot be read as YAML ({type(error).__name__})")
            continue
        wanted = yaml.safe_load(text)
        problems += [f"{shown}: {p}" for p in _compare(wanted, on_disk, facts.queue.broker)]
    for path in sorted(root.glob("*-deployment.yaml")):
        if path.name not in expected:
            problems.append(
                f"{prefix}/{path.name}: the {facts.runner} project has no such process "
                "(take it out, and out of kustomization.yaml)"
            )
    return problems


def _compare(wanted: Any, actual: Any, broker: str) -> list[str]:
    if not isinstance(actual, dict) or actual.get("kind") != wanted.get("kind"):
        return [f"is not a {wanted.get('kind')}"]
    kind = wanted["kind"]
    if kind == "ScaledObject":
        return _compare_triggers(wanted, actual, broker)
    if kind in ("ConfigMap", "Secret"):
        return _compare_names(wanted, actual)
    if kind == "Deployment":
        return _compare_containers(wanted, actual)
    if kind == "Kustomization":
        missing = sorted(set(wanted.get("resources", [])) - set(actual.get("resources") or []))
        return [f"resources lack {', '.join(missing)}"] if missing else []
    return []


def _compare_triggers(wanted: dict[str, Any], actual: dict[str, Any], broker: str) -> list[str]:
    def counted(body: dict[str, Any]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
        triggers = (body.get("spec") or {}).get("triggers") or []
        return [
            (
                str(t.get("type")),
                tuple((k, str(v)) for k, v in (t.get("metadata") or {}).items() if k in QUEUE_KEYS),
            )
            for t in triggers
            if isinstance(t, dict)
        ]

    want, have = counted(wanted), counted(actual)
    if want == have:
        return []
    want_types = sorted({t for t, _ in want})
    have_types = sorted({t for t, _ in have})
    if want_types != have_types:
        return [
            f"triggers are {', '.join(have_types) or 'none'} but the {broker} broker "
            f"needs {', '.join(want_types)}"
        ]
    problems = []
    for key in QUEUE_KEYS:
        read = [dict(m)[key] for _, m in have if key in dict(m)]
        needed = [dict(m)[key] for _, m in want if key in dict(m)]
        if read == needed:
            continue
        stale = [value for value in read if value not in needed]
        fresh = [value for value in needed if value not in read]
        what = _what(key)
        if stale and fresh:
            problems.append(
                f"trigger reads {what} {_names(stale)} but the settings route tasks to "
                f"{what} {_names(fresh)}"
            )
        elif fresh:
            problems.append(f"no trigger reads {what} {_names(fresh)}")
        else:
            problems.append(f"trigger reads {what} {_names(stale)}, which nothing uses")
    return problems


def _what(key: str) -> str:
    return {
        "listName": "list",
        "stream": "stream",
        "consumerGroup": "consumer group",
        "queueName": "queue",
        "databaseIndex": "Redis database",
    }[key]


def _names(values: list[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _compare_names(wanted: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    def names(body: dict[str, Any]) -> set[str]:
        return set(body.get("data") or {}) | set(body.get("stringData") or {})

    missing = sorted(names(wanted) - names(actual))
    if not missing:
        return []
    return [f"lacks {', '.join(missing)} (the settings class reads them by these names)"]


def _compare_containers(wanted: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    def pod(body: dict[str, Any]) -> dict[str, Any]:
        return ((body.get("spec") or {}).get("template") or {}).get("spec") or {}

    problems = []
    want_pod, have_pod = pod(wanted), pod(actual)
    have_containers = {c.get("name"): c for c in have_pod.get("containers") or []}
    for container in want_pod.get("containers", []):
        have = have_containers.get(container["name"])
        if have is None:
            problems.append(f"has no container {container['name']!r}")
        elif have.get("command") != container["command"]:
            runs = " ".join(map(str, have.get("command") or []))
            problems.append(
                f"container {container['name']!r} runs {runs!r}, the project now runs "
                f"{' '.join(container['command'])!r}"
            )
    grace = want_pod.get("terminationGracePeriodSeconds")
    have_grace = have_pod.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(have_grace, int) or have_grace < grace):
        problems.append(
            f"terminationGracePeriodSeconds is {have_grace}, below the {grace} s the "
            "worker's shutdown timeout needs"
        )
    return problems
