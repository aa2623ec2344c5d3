"""The image builder's error: one type, whose message is the one line a user sees."""

from __future__ import annotations

from cpuplug.errors import CpuplugError


class ImageError(CpuplugError):
    """An image could not be built or found; the message says what to install or run."""
