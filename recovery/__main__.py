"""`python -m recovery` runs the CLI."""

from .cli.main import main

main()
