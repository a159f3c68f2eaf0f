import os
import sys

# `python -m` puts the current folder first on sys.path: run from inside a project, its
# top-level modules would shadow bgtasks' own imports and so run. Only bgtasks'
# environment is imported from (bgtasks_gen itself is already loaded by now).
if sys.path and not sys.flags.safe_path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    del sys.path[0]

from bgtasks_gen.cli import main  # noqa: E402

main()
