"""Signals as runc's ``kill`` takes them, and the ones a shim passes on to its process."""

from __future__ import annotations

import signal

from cpuplug.oci.state import OciError

NOT_FORWARDED = frozenset(
    {
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGCHLD,  # about the shim's own children
        signal.SIGPIPE,  # the shim's own broken pipe (its reader left)
        signal.SIGURG,
        signal.SIGPROF,
        signal.SIGWINCH,  # a resize: ResizeTerminal, not a signal
        signal.SIGSEGV,  # faults of the shim itself keep their default action
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGSYS,
        signal.SIGABRT,
        signal.SIGCONT,  # job control of the shim itself (pause/resume freeze and thaw it)
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    }
)
FORWARDED = tuple(
    s
    for s in range(1, signal.SIGRTMAX + 1)
    if s not in NOT_FORWARDED and s in signal.valid_signals()
)
"""What a shim passes on to the container's process (runc's foreground forwarding too):
every signal but the shim's own faults and job control, and what only concerns it."""


def parse_signal(text: str) -> int:
    """``9``, ``KILL``, ``SIGKILL`` (any case), ``RTMIN+3`` -> its number; runc's error else."""
    word = text.strip()
    if word.isdecimal():
        number = int(word)
        if number in signal.valid_signals() and number > 0:
            return number
        raise OciError(f"unknown signal {text!r}")
    name = word.upper().removeprefix("SIG")
    if name.startswith("RTMIN+") and name[6:].isdecimal():
        number = signal.SIGRTMIN + int(name[6:])
    elif name.startswith("RTMAX-") and name[6:].isdecimal():
        number = signal.SIGRTMAX - int(name[6:])
    else:
        try:
            return int(signal.Signals["SIG" + name])
        except KeyError:
            raise OciError(f"unknown signal {text!r}") from None
    if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
        raise OciError(f"unknown signal {text!r}")
    return int(number)
