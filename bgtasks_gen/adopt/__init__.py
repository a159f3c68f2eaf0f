"""`bgtasks adopt`'s analysis: a project's own BackgroundTasks jobs, found and judged.

scan.py finds every `add_task` call on a route's BackgroundTasks and resolves what it
runs; movable.py decides whether each can move to a queue worker, and why not. Nothing
here writes a file.
"""

from bgtasks_gen.adopt.movable import REASON_CODES, Problem, judge
from bgtasks_gen.adopt.scan import (
    AddTaskCall,
    AdoptionScan,
    SkippedFile,
    Target,
    TargetParam,
    TypeRef,
    UnusedParam,
    scan_project,
)

__all__ = [
    "REASON_CODES",
    "AddTaskCall",
    "AdoptionScan",
    "Problem",
    "SkippedFile",
    "Target",
    "TargetParam",
    "TypeRef",
    "UnusedParam",
    "judge",
    "scan_project",
]
