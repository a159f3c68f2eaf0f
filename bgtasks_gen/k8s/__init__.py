"""Kubernetes manifests for a scaffolded project: a kustomize base with KEDA autoscaling
on the queue keys the generated code really uses (`--with k8s`)."""

from __future__ import annotations

from bgtasks_gen.addtask import Project
from bgtasks_gen.k8s.drift import k8s_drift
from bgtasks_gen.k8s.facts import read_facts
from bgtasks_gen.k8s.manifests import render_manifests

DEFAULT_FOLDER = "deploy/k8s"


def k8s_files(project: Project, folder: str = DEFAULT_FOLDER) -> dict[str, str]:
    """Project-relative posix path -> file text (LF, ending with a newline)."""
    prefix = folder.strip("/")
    rendered = render_manifests(read_facts(project))
    return {f"{prefix}/{name}": text for name, text in rendered.items()}


__all__ = ["DEFAULT_FOLDER", "k8s_drift", "k8s_files"]
