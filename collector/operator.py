"""``runlab``: the operator CLI — push signed experiments, follow them, read results (see collector/ops/)."""

from __future__ import annotations

import sys

from collector.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
