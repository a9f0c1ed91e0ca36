"""`python -m core ...`: the command-line entry point (see core/cli/main.py)."""

import sys

from core.cli.main import main

sys.exit(main())
