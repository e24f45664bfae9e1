"""The `recovery` command line: thin commands over the library, one module per command
group (`capture`, `journal`, `undo`, `snapshot`, `approval`, `runbook`, `ops`) on what
they share (`common`), gathered by the `main` group; plain-text renderings of library
results (`render`), and `recovery demo` (`demo`)."""

from .main import main

__all__ = ["main"]
