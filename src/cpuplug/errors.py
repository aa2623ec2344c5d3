"""The one exception root of cpuplug.

Every error the project raises on purpose derives from :class:`CpuplugError`, so
a CLI or daemon can catch exactly the errors it understands and let real bugs
surface as bugs.
"""

from __future__ import annotations


class CpuplugError(Exception):
    """Root of every error cpuplug raises deliberately."""


class UsageError(CpuplugError):
    """The caller asked for something malformed (bad flag, bad value); exit code 2."""
