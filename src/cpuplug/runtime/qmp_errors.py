"""The QMP layer's errors, in a module that imports nothing heavy.

:mod:`cpuplug.runtime.qmp_client` needs ``asyncio`` and ``qemu.qmp`` (~35 ms to
import), but most code that names these errors only catches them: the
orchestration (:mod:`cpuplug.runtime.sandbox`) does, in every command, including
``ps`` and ``exec`` which never open a QMP connection.  Declaring the classes here
lets it do so without loading the client (issue 8 §4); ``qmp_client`` re-exports
them, so either import path names the same class.
"""

from __future__ import annotations

from cpuplug.errors import CpuplugError


class QmpError(CpuplugError):
    """Talking to the VMM over QMP failed."""


class VmmUnreachable(QmpError):
    """No QMP server answered at the socket (VMM not started, or gone before we came)."""


class VmmGone(QmpError):
    """The QMP connection dropped: the VMM exited or was killed."""


class QmpCommandError(QmpError):
    """The VMM answered a command with an error (``class`` and ``desc`` kept)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command} failed: {desc} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpTimeout(QmpError):
    """A QMP command or event wait took longer than its bound."""
