"""One command-line style for `python -m core`, `python -m db` and `python -m jobs`.

Exit codes: 0 done; 1 failed (one line `error: <sentence>` on stderr, no traceback); 2 bad usage
(argparse) or, for `predict`, some inputs refused; 130 interrupted or cancelled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from core.errors import Cancelled, UserError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_FAILURE


def run_command(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one sub-command: a `UserError` becomes its sentence on stderr and exit 1."""
    try:
        return int(handler(args) or EXIT_OK)
    except UserError as exc:
        return fail(str(exc))
    except (Cancelled, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
