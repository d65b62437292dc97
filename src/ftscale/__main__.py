"""`python -m ftscale` is the `ftscale` command."""

from ftscale.cli import main

main()
