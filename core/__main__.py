"""`python -m core ...`: the command-line entry point (see core/cli.py)."""

import sys

from core.cli import main

sys.exit(main())
