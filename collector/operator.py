"""``runlab``: the operator CLI (fleet control and reports arrive with the fleet-control work)."""

from __future__ import annotations

import argparse
import sys

from runlab import __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="runlab", description="runlab operator CLI.")
    p.add_argument("--version", action="version", version=f"runlab {__version__}")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
