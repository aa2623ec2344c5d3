"""What the host itself allows right now, measured the way the guest's ``stress`` works.

The guest's throughput claims (more vCPUs → more work) only mean something when the
host has free cores; tests gate on this and benchmarks print guest scaling next to it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

from cpuplug.guest.userland import STRESS_CHUNK


def host_hash_rate(threads: int, seconds: float) -> float:
    """MiB/s of plain host threads hashing as ``stress`` does (SHA-256 of
    ``STRESS_CHUNK`` bytes, which releases the GIL)."""
    buf = os.urandom(STRESS_CHUNK)
    done = [0] * threads
    deadline = time.perf_counter() + seconds

    def hog(i: int) -> None:
        while time.perf_counter() < deadline:
            hashlib.sha256(buf).digest()
            done[i] += 1

    pool = [threading.Thread(target=hog, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) * STRESS_CHUNK / (1 << 20) / (time.perf_counter() - t0)
