"""From container CPU limits to a vCPU count: the formula of docs/contract.md §8, as pure functions.

This is Kata's Go runtime in dynamic mode (``calculateSandboxCPUs`` +
``RoundUpNumVCPUs`` in Kata's ``src/runtime/virtcontainers``), with two deliberate departures:

* Arithmetic is exact (:class:`fractions.Fraction` over the integer quota and
  period), not float32.  Kata's float32 sum of ten 0.1-CPU containers comes out as
  1.0000001 and is rounded up to one vCPU too many; here it is exactly 1.
* A malformed cpuset is rejected where it enters (:func:`parse_cpu_list` raises a
  :class:`UsageError`) instead of silently zeroing the whole workload as Kata's
  ``cpuset.Parse`` error path does.

Nothing here does I/O, so the table test in ``tests/runtime/test_sizing.py`` can pin
every example of docs/contract.md §8.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from cpuplug import agent_protocol
from cpuplug.errors import UsageError

DOCKER_PERIOD = 100_000
"""Docker's ``--cpus X`` means period 100 ms and quota X·period (docs/contract.md §8)."""

MAX_PERIOD = 1_000_000
"""Linux accepts cpu.max periods in [1 ms, 1 s]; we only insist on > 0 and <= 1 s."""


@dataclass(frozen=True)
class ContainerCpu:
    """One container's CPU limits, as OCI ``linux.resources.cpu`` carries them.

    ``quota``/``period`` may be missing (None); ``cpuset`` is a Linux cpu list
    string (``""`` = none).  A stopped container does not count (Kata skips
    ``StateStopped``).
    """

    quota: int | None = None
    period: int | None = None
    cpuset: str = ""
    stopped: bool = False

    def share(self) -> Fraction:
        """quota/period when both are usable (quota >= 0, period > 0), else 0."""
        if self.quota is None or self.period is None:
            return Fraction(0)
        if self.quota < 0 or self.period <= 0:
            return Fraction(0)
        return Fraction(self.quota, self.period)


@dataclass(frozen=True)
class Sizing:
    """The answer of :func:`vcpu_target`, with enough detail to explain itself."""

    target: int
    """vCPUs the sandbox should have, clamped to [1, maxvcpus]."""
    wanted: int
    """ceil(workload + default_vcpus) before clamping."""
    workload: Fraction
    """Summed quota/period, or the summed cpuset sizes when no quota counts."""
    warning: str | None
    """Set when clamping changed the answer (a warning, never a failure)."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse a Linux cpu list (``"0-2,4"``) given by a user; ``""`` is the empty set.

    The wire format's parser (:func:`cpuplug.agent_protocol.parse_cpu_list`) is the
    one implementation; here its EINVAL becomes a :class:`UsageError` so
    ``--cpuset-cpus 3-1`` fails at the command line with exit code 2 rather than
    deep in a resize.
    """
    try:
        return agent_protocol.parse_cpu_list(text)
    except agent_protocol.CpuListError as exc:
        raise UsageError(f"invalid cpu list {text!r}: {exc.message.split(': ', 1)[-1]}") from None


format_cpu_list = agent_protocol.format_cpu_list
"""The canonical Linux form of a cpu set (``"0-2,5"``), from the wire format module."""


def parse_cpus(text: str) -> Fraction:
    """Parse docker's ``--cpus`` value (a non-negative decimal) exactly.

    ``Fraction("1.5")`` is exact, so ``--cpus 1.2`` becomes quota 120000 and not
    119999.99…; ``-1``, ``abc``, ``nan`` and ``inf`` are usage errors.
    """
    try:
        if "/" in text or "_" in text or not text.isascii():
            raise ValueError(text)  # Fraction() would take '1_0' and fullwidth digits
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"invalid --cpus value {text!r}: expected a number like 1.5") from None
    if value < 0:
        raise UsageError(f"invalid --cpus value {text!r}: must not be negative")
    return value


def cpus_to_quota(cpus: Fraction, period: int = DOCKER_PERIOD) -> tuple[int, int]:
    """Docker's conversion: quota = cpus·period (rounded to the nearest µs)."""
    if period <= 0:
        raise UsageError(f"cpu period must be > 0, got {period}")
    return round(cpus * period), period


def exact(value: Fraction | float | int) -> Fraction:
    """A float as the decimal its user wrote: 0.1 → 1/10, not the binary approximation."""
    if isinstance(value, Fraction):
        return value
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def workload(containers: Iterable[ContainerCpu]) -> Fraction:
    """Sum quota/period over non-stopped containers; if 0, the summed cpuset sizes.

    Cpusets are summed (not unioned) and only used when no container contributes
    quota, as Kata's ``calculateSandboxCPUs`` does.
    """
    share = Fraction(0)
    cpuset_count = 0
    for c in containers:
        if c.stopped:
            continue
        share += c.share()
        cpuset_count += len(parse_cpu_list(c.cpuset))
    return share if share != 0 else Fraction(cpuset_count)


def vcpu_target(
    containers: Iterable[ContainerCpu], default_vcpus: Fraction | float, max_vcpus: int
) -> Sizing:
    """The sandbox's vCPU target: ceil(workload + default_vcpus), clamped to [1, max].

    Fractions are summed first and rounded up once at the end (pod 0.5 + 2.5 → 4,
    not 5).  Clamping at ``max_vcpus`` returns a warning rather than failing,
    because the cgroup quota can still be applied (Kata: "cgroups still can be
    updated").
    """
    if max_vcpus < 1:
        raise UsageError(f"maxvcpus must be >= 1, got {max_vcpus}")
    work = workload(containers)
    wanted = math.ceil(work + exact(default_vcpus))
    target = min(max(wanted, 1), max_vcpus)
    warning = None
    if target < wanted:
        warning = (
            f"wanted {wanted} vCPUs but the sandbox maximum is {max_vcpus}; "
            f"using {max_vcpus} (the CPU quota still applies)"
        )
    return Sizing(target=target, wanted=wanted, workload=work, warning=warning)


@dataclass(frozen=True)
class BootTopology:
    """What the VMM is started with: ``--smp cpus=boot,maxcpus=maxcpus``."""

    boot: int
    maxcpus: int


def boot_topology(
    containers: Iterable[ContainerCpu],
    default_vcpus: Fraction | float,
    max_vcpus: int,
    static: bool,
) -> tuple[BootTopology, Sizing]:
    """How to start a sandbox's VM, and the target it should reach.

    Dynamic mode boots ``ceil(default_vcpus)`` vCPUs with ``max_vcpus`` slots and
    hot-adds up to the target after the container is created (as Kata does).
    Static mode (``static_sandbox_resource_mgmt``) boots at the target with
    ``maxcpus`` equal to it, so there is no room to hotplug and updates change the
    quota only.
    """
    sizing = vcpu_target(containers, default_vcpus, max_vcpus)
    if static:
        return BootTopology(sizing.target, sizing.target), sizing
    boot = min(max(math.ceil(exact(default_vcpus)), 1), max_vcpus)
    return BootTopology(boot, max_vcpus), sizing
