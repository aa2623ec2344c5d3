"""The GED event selector: read-to-clear, edge pulse per event, and its races."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.cpuhp_abi import GED_EVT_CPU_HOTPLUG, GED_EVT_PWR_DOWN
from cpuplug.errors import CpuplugError
from cpuplug.vmm.ged import GedError, GenericEventDevice


class PulseCounter:
    """The interrupt line: counts pulses and lets a consumer wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.sem = threading.Semaphore(0)
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1
        self.sem.release()


def test_event_bits_match_qemu() -> None:
    assert GED_EVT_PWR_DOWN == 0x2
    assert GED_EVT_CPU_HOTPLUG == 0x8
    assert issubclass(GedError, CpuplugError)
    assert GenericEventDevice.SIZE == 4


def test_raise_ors_and_pulses_and_read_clears() -> None:
    irq = PulseCounter()
    ged = GenericEventDevice(irq)
    ged.raise_event(GED_EVT_CPU_HOTPLUG)
    ged.raise_event(GED_EVT_PWR_DOWN)
    assert irq.count == 2
    assert ged.read(0, 4) == 0xA
    assert ged.read(0, 4) == 0
    assert irq.count == 2  # reads do not pulse


def test_other_widths_and_offsets_read_zero_without_clearing() -> None:
    ged = GenericEventDevice(PulseCounter())
    ged.raise_event(GED_EVT_CPU_HOTPLUG)
    for offset, size in ((0, 1), (0, 2), (0, 8), (1, 1), (2, 2), (4, 4), (-1, 4)):
        assert ged.read(offset, size) == 0
    assert ged.pending == GED_EVT_CPU_HOTPLUG
    assert ged.read(0, 4) == GED_EVT_CPU_HOTPLUG


def test_writes_are_ignored() -> None:
    ged = GenericEventDevice(PulseCounter())
    ged.raise_event(GED_EVT_CPU_HOTPLUG)
    for size in (1, 2, 4, 8):
        ged.write(0, size, 0)
        ged.write(0, size, 0xFFFF_FFFF)
    assert ged.read(0, 4) == GED_EVT_CPU_HOTPLUG


@pytest.mark.parametrize("bits", [0, -8, 0x1, 0x20, 0x8 | 0x100, True, "8"])
def test_unsupported_bits_are_refused_without_pulse(bits: object) -> None:
    irq = PulseCounter()
    ged = GenericEventDevice(irq)
    with pytest.raises(GedError):
        ged.raise_event(bits)  # type: ignore[arg-type]
    assert irq.count == 0
    assert ged.pending == 0


def test_event_raised_during_the_handler_repulses_and_is_seen_next_time() -> None:
    """QEMU pitfall 4: an event between the ESEL read and the end of _EVT is not lost."""
    irq = PulseCounter()
    ged = GenericEventDevice(irq)
    in_handler = threading.Event()
    raised = threading.Event()
    seen: list[int] = []

    def host() -> None:
        assert in_handler.wait(timeout=5)
        ged.raise_event(GED_EVT_CPU_HOTPLUG)
        raised.set()

    def guest() -> None:
        for interrupt in range(2):
            assert irq.sem.acquire(timeout=5)
            seen.append(ged.read(0, 4))  # Local0 = ESEL
            if interrupt == 0:
                in_handler.set()  # ... CSCN is running when the host raises again
                assert raised.wait(timeout=5)

    threads = [threading.Thread(target=host), threading.Thread(target=guest)]
    ged.raise_event(GED_EVT_CPU_HOTPLUG)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert seen == [GED_EVT_CPU_HOTPLUG, GED_EVT_CPU_HOTPLUG]
    assert irq.count == 2
    assert ged.pending == 0


def test_concurrent_raisers_lose_no_event() -> None:
    """Many host threads raise while a guest consumes pulses: every pulse is paired
    with an OR that happened before it, so after the last pulse nothing is pending."""
    irq = PulseCounter()
    ged = GenericEventDevice(irq)
    per_thread, raisers = 300, 4
    total = per_thread * raisers
    reads: list[int] = []

    def raiser(bit: int) -> None:
        for _ in range(per_thread):
            ged.raise_event(bit)

    def guest() -> None:
        for _ in range(total):
            assert irq.sem.acquire(timeout=10)
            reads.append(ged.read(0, 4))

    bits = [GED_EVT_CPU_HOTPLUG, GED_EVT_PWR_DOWN] * (raisers // 2)
    threads = [threading.Thread(target=raiser, args=(b,)) for b in bits]
    threads.append(threading.Thread(target=guest))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert irq.count == total
    assert ged.pending == 0
    seen = 0
    for value in reads:
        seen |= value
    assert seen == GED_EVT_CPU_HOTPLUG | GED_EVT_PWR_DOWN


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(-8, 16), st.integers(-(2**64), 2**64)),
            st.integers(0, 9),
            st.integers(-(2**70), 2**70),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_random_accesses_never_crash_and_valid_use_still_works(
    ops: list[tuple[int, int, int, bool]],
) -> None:
    irq = PulseCounter()
    ged = GenericEventDevice(irq)
    for offset, size, value, is_write in ops:
        if is_write:
            ged.write(offset, size, value)
        else:
            assert 0 <= ged.read(offset, size) <= 0xFFFF_FFFF
    ged.read(0, 4)
    ged.raise_event(GED_EVT_CPU_HOTPLUG)
    assert ged.read(0, 4) == GED_EVT_CPU_HOTPLUG
    assert irq.count == 1
