"""Unix socket paths a VMM listens on: one rule for every listener (QMP, agent).

Both the QMP server and the agent channel bind a unix socket at a user-given
path. Whether an existing file there may be replaced is decided in one place,
here, so the two listeners cannot drift apart (QA found the agent channel still
unlinking a live socket after QMP had stopped doing so).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from cpuplug.errors import UsageError


def claim_socket_path(path: str, what: str) -> None:
    """Make ``path`` free for a listening unix socket, refusing what is not ours to take.

    A stale socket file (nobody accepts on it: a crashed VMM's) is removed, as
    QEMU does. QEMU also unlinks a *live* socket and binds over it, so a second
    VMM given the same path silently cuts the first one off from its management
    (and removes the path when it exits); cpuplug refuses instead. A regular file
    or directory at the path is the user's and is never removed. Raises
    :class:`UsageError` naming the socket role ``what``.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot use {what} socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
        raise UsageError(f"{what} socket path {path} is {kind}; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listening: stale
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except BlockingIOError:  # listening, backlog full: very much alive
        pass
    except OSError as exc:
        raise UsageError(f"cannot use {what} socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise UsageError(f"{what} socket {path} is in use by another process")
