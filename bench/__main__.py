"""`python -m bench`: run the benchmark (see bench/cli.py for the options)."""

from bench.cli import main

main()
