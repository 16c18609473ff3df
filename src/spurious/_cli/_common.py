"""What every sub-command shares: the common options and how a summary is printed.

Imported by ``spurious.cli`` and by every ``spurious._cli.<stage>`` plugin (so no plugin imports the
CLI entry point back).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["common_options", "emit"]


def common_options(p: argparse.ArgumentParser) -> None:
    """``--json``, ``-v`` and ``--no-progress``: every sub-command has them."""
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def emit(args: argparse.Namespace, summary: dict[str, Any], lines: Sequence[str]) -> None:
    """Print ``summary`` as JSON with ``--json``, else the human ``lines``, on the summary stream."""
    out = summary_stream(args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str), file=out)
    else:
        for line in lines:
            print(line, file=out)


def summary_stream(args: argparse.Namespace) -> TextIO:
    """Where the summary goes: the real stdout (while a command runs, ``sys.stdout`` is stderr; see ``cli._run``)."""
    return getattr(args, "summary_stream", None) or sys.stdout
