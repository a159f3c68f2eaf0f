"""libcst edits of the user's modules. Each is a pure `source -> source` function that
returns its input unchanged when the edit is already there (safe to re-run)."""
