"""The `recovery` command line: thin commands over the library (`main`), plain-text
renderings of its results (`render`), and `recovery demo` (`demo`)."""

from .main import main

__all__ = ["main"]
