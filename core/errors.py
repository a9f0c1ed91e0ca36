"""The one base of every error whose message is meant for a person.

`str()` of a `UserError` is one human sentence: the worker stores it on the job row, the pages show it
in an error box and the CLIs print it after "error: ". Anything else that escapes is a bug and is shown
as such. Cancellation is deliberately not an error: `Cancelled` is a separate root.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure a person can act on; `str()` is one sentence."""


class Cancelled(Exception):  # noqa: N818 - a stop that was asked for, not a failure
    """Work stopped because somebody asked it to (a cancel button, Ctrl-C of a job)."""
