"""`python -m recovery` runs the CLI."""

from .cli import main

main()
