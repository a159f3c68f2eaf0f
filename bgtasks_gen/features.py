"""Optional parts of a scaffold, chosen with `--with`/`--without` at init or update.

A feature that is off writes nothing and adds no package; once on, it is recorded in the
state file's [layout] (`features = [...]`) so later runs of update, check and migrate keep
it without the option being repeated.
"""

from __future__ import annotations

from collections.abc import Iterable

from bgtasks_gen.errors import BadInput
from bgtasks_gen.runners.base import SettingsField

# name -> what it adds, as `--help` and errors say it
FEATURES: dict[str, str] = {
    "k8s": "a kustomize base under deploy/k8s/: web, worker and scheduler Deployments, "
    "probes, a PodDisruptionBudget and KEDA autoscaling on the queue's real keys",
    "dashboard": "one page under the task router ({prefix}/dashboard): queues, runs with "
    "their progress, recent outcomes, the failed-task inbox with replay and discard, "
    "schedules, worker and scheduler health",
    "metrics": "a Prometheus route under the task router ({prefix}/metrics): tasks by "
    "state, run durations, queue depth and age, enqueue errors, counted across every "
    "worker and web process; a Grafana dashboard for them in deploy/grafana/",
    "otel": "OpenTelemetry traces across the queue: the request, its enqueue, the task's "
    "run and its SMTP send in one trace (W3C trace context carried with each message), "
    "trace and span ids on log records; configured by the standard OTEL_* variables",
    "sentry": "errors to Sentry from the web process and the workers, each task's tagged "
    "with its name and id, its arguments never sent; on once the sentry_dsn setting is set",
}
# the packages a feature adds to the project's dependencies
FEATURE_PACKAGES: dict[str, tuple[str, ...]] = {
    "otel": (
        "opentelemetry-api>=1.30,<2",
        "opentelemetry-sdk>=1.30,<2",
        "opentelemetry-exporter-otlp-proto-http>=1.30,<2",
    ),
    "sentry": ("sentry-sdk>=2,<3",),
}
# the settings fields a feature reads, patched into the project's settings class like
# the runner's own (the project's spelling and env prefix); they stay when it goes
FEATURE_FIELDS: dict[str, tuple[SettingsField, ...]] = {
    # empty: error reporting is off
    "sentry": (
        SettingsField(
            "sentry_dsn",
            "str",
            '""',
            (),
            "Error reporting (background tasks)",
            optional=True,  # an existing `SENTRY_DSN: str | None = None` serves
        ),
    ),
}
# features that only make sense for a runner with a worker process
WORKER_FEATURES = frozenset({"k8s", "dashboard", "metrics"})
# on at init unless --without names them (update keeps what the project has)
DEFAULT_FEATURES = ("dashboard",)


def feature_fields(features: Iterable[str]) -> tuple[SettingsField, ...]:
    """The settings fields the chosen features read, in the order they are chosen."""
    return tuple(field for name in features for field in FEATURE_FIELDS.get(name, ()))


def split_names(values: Iterable[str]) -> list[str]:
    """`--with a,b --with c` as ["a", "b", "c"]: blanks dropped, order kept, no repeats."""
    names = [part.strip().lower() for value in values for part in value.split(",")]
    return list(dict.fromkeys(name for name in names if name))


def choose_features(
    recorded: Iterable[str],
    add: Iterable[str],
    remove: Iterable[str],
    *,
    runner: str,
    defaults: Iterable[str] = (),
) -> tuple[str, ...]:
    """The features of this run: the recorded ones and `defaults` (an init's
    DEFAULT_FEATURES), plus --with, minus --without; an unknown name, or one given both
    ways, is refused before anything is read."""
    adding, removing = split_names(add), split_names(remove)
    for name in adding + removing:
        if name not in FEATURES:
            raise BadInput(
                f"unknown feature {name!r}",
                f"choose among: {', '.join(sorted(FEATURES))}",
            )
    both = sorted(set(adding) & set(removing))
    if both:
        raise BadInput(f"{', '.join(both)} given to both --with and --without", "keep one")
    if runner == "builtin":
        needless = sorted(set(adding) & WORKER_FEATURES)
        if needless:
            raise BadInput(
                f"--with {','.join(needless)} needs a worker process, and the builtin runner "
                "runs tasks inside the web process",
                "choose a queue runner (--runner celery, arq or taskiq)",
            )
    chosen = [name for name in [*recorded, *defaults] if name in FEATURES and name not in removing]
    if runner == "builtin":  # recorded for a queue runner this project moved away from
        chosen = [name for name in chosen if name not in WORKER_FEATURES]
    return tuple(sorted(set(chosen) | set(adding)))


def features_help() -> str:
    return "; ".join(f"{name}: {text}" for name, text in sorted(FEATURES.items()))
