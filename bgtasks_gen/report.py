"""What the user sees: one status word per file, diffs on request, next steps; or JSON."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from bgtasks_gen.plan import Action, Plan

if TYPE_CHECKING:
    from bgtasks_gen.errors import BgtasksError

STYLES = {
    Action.CREATE: "green",
    Action.PATCH: "yellow",
    Action.IDENTICAL: "dim",
    Action.CONFLICT: "bold red",
    Action.OVERWRITE: "magenta",
    Action.KEPT: "cyan",
}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


BOOKKEEPING = ".bgtasks/"  # pristine copies for `update`: one summary line, not a row each


def show_plan(plan: Plan, *, dry_run: bool, diff: bool, written: bool) -> None:
    bookkeeping = [c for c in plan.changes if c.path.startswith(BOOKKEEPING)]
    for change in plan.changes:
        if change.path.startswith(BOOKKEEPING):
            continue
        word = change.action.value
        note = f"  [dim]({escape(change.note)})[/dim]" if change.note else ""
        out.print(f"  [{STYLES[change.action]}]{word:>10}[/]  {escape(change.path)}{note}")
    moving = [c for c in bookkeeping if c.writes]
    if moving:
        out.print(
            f"  [dim]{'update':>10}  {BOOKKEEPING} ({len(moving)} pristine copies kept for "
            "`bgtasks update`)[/dim]"
        )
    if diff:
        for change in plan.changes:
            if change.path.startswith(BOOKKEEPING):
                continue
            text = change.diff()
            if text and change.action is not Action.IDENTICAL:
                out.print(Syntax(text, "diff", theme="ansi_dark", word_wrap=True))
    for note in plan.notes:
        out.print(f"  [dim]note:[/dim] {escape(note)}")
    if plan.nothing_to_do:
        out.print("[green]nothing to do[/green]: the project is already up to date")
    elif dry_run:
        out.print(f"[bold]dry run[/bold]: {len(plan.writes)} file(s) would change; nothing written")
    elif written:
        out.print(f"[green]done[/green]: {len(plan.writes)} file(s) written")
    if written and plan.next_steps:
        out.print("\n[bold]Next steps[/bold]")
        for step in plan.next_steps:
            out.print(f"  $ {escape(step)}")


def plan_json(plan: Plan, *, mode: str, written: bool) -> None:
    payload = {
        "mode": mode,
        "written": written,
        "nothing_to_do": plan.nothing_to_do,
        "files": [{"path": c.path, "action": c.action.value, "note": c.note} for c in plan.changes],
        "conflicts": [c.path for c in plan.conflicts],
        "notes": plan.notes,
        "next_steps": plan.next_steps,
    }
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def show_error(error: BgtasksError, *, as_json: bool) -> None:
    if as_json:
        payload = {"error": error.message, "hint": error.hint, "exit_code": int(error.exit_code)}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    err.print(f"[bold red]error:[/bold red] {escape(error.message)}")
    if error.hint:
        err.print(f"[dim]hint:[/dim] {escape(error.hint)}")
