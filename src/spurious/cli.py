"""Command line: ``spurious <stage> ...`` (also ``python -m spurious``).

The console script's entry point; the parser and every sub-command live in :mod:`spurious._cli`.
"""

from spurious._cli._main import build_parser, main

__all__ = ["build_parser", "main"]
