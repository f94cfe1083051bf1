"""What every peer script shares: its common options and how it reports.

The scripts run as ``python bench/peers/<peer>_noop.py`` under the bench
virtualenv, so this sibling module is importable from their directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the options the harness passes to every peer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser


def report(peer: str, result: dict[str, Any], completed: int, jobs: int, ok: bool) -> int:
    """Print the result as one JSON line; the exit status says whether all jobs ran."""
    print(json.dumps(result))
    if not ok:
        print(f"{peer}: {completed} of {jobs} finished", file=sys.stderr)
        return 1
    return 0
