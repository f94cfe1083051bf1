"""Placeholder until its issue lands."""

import sys


def main() -> int:
    """Say what is missing and exit 2."""
    print("cleaner: not yet built", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
