"""Discovery's entry points, where the rest of bgtasks imports them from."""

from bgtasks_gen.discovery import (
    AppLayout,
    Overrides,
    ProjectLayout,
    SettingsLayout,
    discover,
    present_runners,
    project_index,
)

__all__ = [
    "AppLayout",
    "Overrides",
    "ProjectLayout",
    "SettingsLayout",
    "discover",
    "present_runners",
    "project_index",
]
