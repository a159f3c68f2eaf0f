"""The Grafana dashboard `--with metrics` writes beside the run files: one panel per
metric the generated `{prefix}/metrics` route serves, in PromQL over a Prometheus data
source chosen at import (the `DS_PROMETHEUS` input)."""

from __future__ import annotations

import json
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# (title, unit, expressions with their legends): what an operator looks at first
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Tasks per second, by state",
        "ops",
        (("sum by (state) (rate(bgtasks_tasks_total[5m]))", "{{state}}"),),
    ),
    (
        "Failures per second, by task",
        "ops",
        (('sum by (task) (rate(bgtasks_tasks_total{state="failed"}[5m]))', "{{task}}"),),
    ),
    (
        "Run duration, 95th percentile, by task",
        "s",
        (
            (
                "histogram_quantile(0.95, sum by (task, le) "
                "(rate(bgtasks_task_duration_seconds_bucket[5m])))",
                "{{task}}",
            ),
        ),
    ),
    ("Tasks waiting, by queue", "short", (("bgtasks_queue_depth", "{{queue}}"),)),
    (
        "Oldest waiting task, by queue",
        "s",
        (("bgtasks_oldest_queued_seconds", "{{queue}}"),),
    ),
    (
        "Enqueue errors per second, by reason",
        "ops",
        (("sum by (reason) (rate(bgtasks_enqueue_errors_total[5m]))", "{{reason}}"),),
    ),
)


def _panel(index: int, title: str, unit: str, targets: tuple[tuple[str, str], ...]) -> Any:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard_json(runner: str) -> str:
    """The dashboard for a project on `runner`, as Grafana imports it."""
    document = {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
            }
        ],
        "title": f"Background tasks ({runner})",
        "uid": f"bgtasks-{runner}",
        "tags": ["bgtasks", runner],
        "timezone": "utc",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS)],
    }
    return json.dumps(document, indent=2) + "\n"
