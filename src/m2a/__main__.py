"""`python -m m2a` runs the `m2a` command."""

from m2a.cli import main

main()
