"""``python -m agent`` = ``runlab-agent``."""

import sys

from agent.cli import main

sys.exit(main())
