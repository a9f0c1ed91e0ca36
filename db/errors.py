"""Errors of the persistence layer meant for users: `str()` of each is one human sentence."""

from __future__ import annotations

from core.errors import UserError


class DbUserError(UserError):
    """Base of the errors the UI may show as they are."""


class StaleReviewError(DbUserError):
    """A save was based on a version of a review (or adjudication) that is no longer the stored one."""

    def __init__(
        self, image_label: str, expected_version: int | None, stored_version: int | None, what: str = "review"
    ) -> None:
        self.image_label = image_label
        self.expected_version = expected_version
        self.stored_version = stored_version
        self.what = what
        opened = "no saved version" if expected_version is None else f"version {expected_version}"
        stored = "it was deleted" if stored_version is None else f"it is now at version {stored_version}"
        super().__init__(
            f"Someone changed this {what} since you opened it ({image_label}: you opened {opened}, "
            f"{stored}). Your input is kept; reload to see their version."
        )


class InvalidLabelError(DbUserError, ValueError):
    """A label that cannot be saved as it is (e.g. No Finding together with a finding)."""


class NotAllowedError(DbUserError, PermissionError):
    """The user's role does not allow the action."""


class NotFoundError(DbUserError, LookupError):
    """A referenced row does not exist."""


class UserExistsError(DbUserError, ValueError):
    """A username that is already taken."""
