"""What the user sees: one status word per file, diffs on request, next steps; or JSON."""

from __future__ import annotations

import difflib
import json
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from bgtasks_gen.plan import Action, FileChange, Plan

if TYPE_CHECKING:
    from bgtasks_gen.errors import BgtasksError

STYLES = {
    Action.CREATE: "green",
    Action.PATCH: "yellow",
    Action.IDENTICAL: "dim",
    Action.CONFLICT: "bold red",
    Action.OVERWRITE: "magenta",
    Action.KEPT: "cyan",
    Action.DELETE: "red",
}

# Piped or redirected output is read by programs (grep, git apply, a CI log): it is never
# cut or wrapped at a terminal's width.
UNBOUNDED_WIDTH = 10_000


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNBOUNDED_WIDTH
    return console


out = _console(stderr=False)
err = _console(stderr=True)


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
        _show_diffs(plan)
    for note in plan.notes:
        out.print(f"  [dim]note:[/dim] {escape(note)}")
    if plan.nothing_to_do:
        out.print("[green]nothing to do[/green]: the project is already up to date")
    elif dry_run:
        out.print(f"[bold]dry run[/bold]: {escape(would_change(plan))}; nothing written")
    elif written:
        out.print(f"[green]done[/green]: {len(plan.writes)} file(s) written")
    if written and plan.next_steps:
        out.print("\n[bold]Next steps[/bold], in order")
        for step in plan.next_steps:
            command, hash_, why = step.partition("  # ")
            comment = f"  [dim]# {escape(why)}[/dim]" if hash_ else ""
            out.print(f"  $ {escape(command)}{comment}")


def would_change(plan: Plan) -> str:
    """The dry-run summary: the files a run would write and, apart, the conflicts that
    would stop it (they are why `--check` fails even when no file would be written)."""
    summary = f"{len(plan.writes)} file(s) would change"
    conflicts = plan.conflicts
    if conflicts:
        paths = ", ".join(c.path for c in conflicts)
        summary += f" and {len(conflicts)} conflict(s) would stop the run ({paths})"
    return summary


def patch_text(change: FileChange) -> str:
    """The change as a git-style patch that `git apply` and `patch -p1` take: a header per
    file (so an empty file is created or deleted too; without the mode line `git apply`
    would leave a deleted file behind, empty) and the no-newline marker where it applies."""
    created, removed = change.old is None, change.removes
    old = (change.old or "").splitlines(keepends=True)
    new = [] if removed else change.new.splitlines(keepends=True)
    before = "/dev/null" if created else f"a/{change.path}"
    after = "/dev/null" if removed else f"b/{change.path}"
    lines = list(difflib.unified_diff(old, new, before, after))
    if not lines and not (created or removed):
        return ""
    header = f"diff --git a/{change.path} b/{change.path}\n"
    if created:
        header += "new file mode 100644\n"
    elif removed:
        header += "deleted file mode 100644\n"
    body = []
    for line in lines:
        if line.endswith("\n"):
            body.append(line)
        else:
            body.append(f"{line}\n\\ No newline at end of file\n")
    return header + "".join(body)


def _show_diffs(plan: Plan) -> None:
    """What would be written, as one patch that applies; then, apart and indented so no
    patch tool takes them, what bgtasks would write into files it leaves alone."""
    applied = [c for c in plan.changes if c.writes and not c.path.startswith(BOOKKEEPING)]
    shown = [
        c for c in plan.changes if c.action in (Action.KEPT, Action.CONFLICT) and c.old != c.new
    ]
    for change in applied:
        text = patch_text(change)
        if not text:
            continue
        if out.is_terminal:
            out.print(Syntax(text, "diff", theme="ansi_dark", word_wrap=True))
        else:
            out.file.write(text)
    for change in shown:
        out.print(f"  [dim]{change.action.value}, not written: what bgtasks would write[/dim]")
        text = "".join(f"    {line}" for line in patch_text(change).splitlines(keepends=True))
        out.print(escape(text), end="")


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
