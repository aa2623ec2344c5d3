"""This machine's DSDT (docs/contract.md §2): CPU hotplug AML, GED, power button, UART, agent.

The CPU hotplug part is QEMU's ``build_cpus_aml`` (hw/acpi/cpu.c, the "batched
CNEW scan" generation; docs/contract.md §2) written with our builder, with one
arm64 change the reverted QEMU 9.2 series also made: flag bit 5 ``CPRS``
("present") and a ``CSTA`` that answers 0x0D for a present-but-disabled vCPU,
because an arm64 guest must never see a possible vCPU's Present bit change.
:func:`cpus_device` keeps QEMU's exact shape as a parameter (``present_bit=False``,
any resource path, any CPU count) so the tests can hold our methods byte for byte
against the AML in QEMU's real x86 DSDT.

Names are written the way QEMU writes them: the register fields and the mutex by
absolute path (``\\_SB.PRES.CSEL``), a vCPU from the container's methods by its
bare NameSeg (found by the ACPI search rules, as iasl leaves it).

The AML does not depend on the hotplug mode; the MADT is what differs (§2, §9).
"""

from __future__ import annotations

from typing import Protocol

from cpuplug.acpi import virt
from cpuplug.acpi.aml.builder import (
    Acquire,
    And,
    Arg,
    Break,
    Debug,
    DefinitionBlock,
    DerefOf,
    Device,
    EisaId,
    Field,
    If,
    Increment,
    Index,
    Integer,
    Interrupt,
    LAnd,
    LEqual,
    LLess,
    Local,
    Memory32Fixed,
    Method,
    MethodCall,
    Mutex,
    Name,
    NamedField,
    NameRef,
    Node,
    Notify,
    One,
    OperationRegion,
    Package,
    Release,
    ReservedField,
    ResourceTemplate,
    Return,
    Scope,
    Store,
    String,
    TableIds,
    While,
    Zero,
)
from cpuplug.acpi.aml.nodes import FieldElement
from cpuplug.acpi.aml.opcodes import ACCESS_TYPES, REGION_SPACES, UPDATE_RULES
from cpuplug.acpi.errors import AmlError
from cpuplug.cpuhp_abi import (
    CMD_GET_NEXT_EVENT,
    CMD_OST_EVENT,
    CMD_OST_STATUS,
    FLAG_PRESENT,
    GED_EVT_CPU_HOTPLUG,
    GED_EVT_PWR_DOWN,
    NOTIFY_POWER_BUTTON,
    PRES_FIELDS,
    CpuSta,
    OstSource,
    PresField,
)

__all__ = [
    "CPU_SCAN_METHOD",
    "CPU_STATUS_METHOD",
    "DSDT_IDS",
    "build_dsdt",
    "cpu_device_name",
    "cpus_device",
    "dsdt_block",
    "ged_device",
    "pres_device",
]

DSDT_IDS = TableIds()  # the same ids as every other table of this machine
DSDT_REVISION = 2  # 64-bit integers

CPUS_PATH = "\\_SB.CPUS"
PRES_PATH = "\\_SB.PRES"
CPU_SCAN_METHOD = CPUS_PATH + ".CSCN"
CPU_STATUS_METHOD = CPUS_PATH + ".CSTA"
PWRB_PATH = "\\_SB.PWRB"

CNEW_SIZE = 255
"""QEMU's batch: an ACPI 1.0 Package(255) of vCPUs found with a pending insert."""

_SYSTEM_MEMORY = REGION_SPACES["SystemMemory"]

_FIELD_ACCESS = {
    1: (ACCESS_TYPES["ByteAcc"], UPDATE_RULES["WriteAsZeros"]),
    4: (ACCESS_TYPES["DWordAcc"], UPDATE_RULES["Preserve"]),
}
"""Register width -> (access type, update rule) of the Field that holds its fields.

QEMU's choices: the flags are written one bit at a time and every other bit that
reads as 1 would act when written back (eject!), so that Field writes zeros
around the bit; the 32-bit registers are always written whole.
"""

_PRES_NAMES = frozenset(f.name for f in PRES_FIELDS)
"""The field names the CPU methods may use: a typo fails the build, not the guest."""


class _Config(Protocol):
    """What :func:`build_dsdt` needs of a machine (``virt.MachineConfig`` has it)."""

    @property
    def maxcpus(self) -> int: ...

    @property
    def mode(self) -> str: ...


def cpu_device_name(index: int) -> str:
    """``C`` + three upper-case **hex** digits: C000 ... C009, C00A, ... C1FF."""
    if not 0 <= index <= 0xFFF:
        raise AmlError(f"vCPU index {index} has no 3-hex-digit device name")
    return f"C{index:03X}"


def _int(value: int) -> Integer:
    return Integer(int(value))  # a plain int, never the enum member it may come from


def _pres_fields(*, present_bit: bool) -> tuple[Field, ...]:
    """The register block's Fields, built from ``cpuhp_abi.PRES_FIELDS``.

    One Field per access width, in ascending width (QEMU's order: the byte-wide
    flags and command, then the 32-bit selector and data), each field at its
    declared bit position with reserved runs over the gaps.
    """
    fields = [f for f in PRES_FIELDS if present_bit or f.flag != FLAG_PRESENT]
    out: list[Field] = []
    for width in sorted({f.width for f in fields}):
        access, update = _FIELD_ACCESS[width]
        group = sorted((f for f in fields if f.width == width), key=lambda f: f.first_bit)
        elements = _field_elements(group)
        out.append(Field("PRST", elements, access, False, update))
    return tuple(out)


def _field_elements(fields: list[PresField]) -> tuple[FieldElement, ...]:
    elements: list[FieldElement] = []
    bit = 0
    for f in fields:
        if f.first_bit < bit:
            raise AmlError(f"register field {f.name} overlaps the one before it")
        if f.first_bit > bit:
            elements.append(ReservedField(f.first_bit - bit))
        elements.append(NamedField(f.name, f.bits))
        bit = f.first_bit + f.bits
    return tuple(elements)


def pres_device(
    *,
    path: str = PRES_PATH,
    base: int = virt.CPUHP_BASE,
    length: int = virt.CPUHP_SIZE,
    present_bit: bool = True,
) -> Device:
    """``\\_SB.PRES``: the register block of docs/contract.md §3 as fields, and the lock CPLK."""
    return Device(
        path,
        (
            Name("_HID", EisaId("PNP0A06")),
            Name("_UID", String("CPU Hotplug resources")),
            Mutex("CPLK", 0),
            Name("_CRS", ResourceTemplate(Memory32Fixed(base, length))),
            OperationRegion("PRST", _SYSTEM_MEMORY, _int(base), _int(length)),
            *_pres_fields(present_bit=present_bit),
        ),
    )


def cpus_device(
    count: int,
    *,
    res: str = PRES_PATH,
    present_bit: bool = True,
    remove_after_insert: bool = True,
    boot_cpu: int = 0,
    path: str = CPUS_PATH,
) -> Device:
    """``\\_SB.CPUS``: the processor container, its five methods and ``count`` vCPUs.

    ``res`` is the path of the register device; ``present_bit`` selects our CSTA
    (0x0F / 0x0D / 0) over upstream QEMU's (0x0F / 0); ``remove_after_insert``
    our CSCN fix for a vCPU with both events pending (see :func:`_scan_body`).
    With both False this is QEMU's AML exactly.
    """
    if not 1 <= count <= 0x1000:
        raise AmlError(f"cannot describe {count} vCPUs")

    def reg(field: str) -> NameRef:
        if field not in _PRES_NAMES:
            raise AmlError(f"{field} is not a field of the CPU hotplug register block")
        return NameRef(f"{res}.{field}")

    lock = NameRef(f"{res}.CPLK")
    acquire = Acquire(lock, 0xFFFF)
    release = Release(lock)

    ctfy = Method(
        "CTFY",
        2,
        False,
        0,
        tuple(
            If(LEqual(Arg(0), _int(i)), (Notify(NameRef(cpu_device_name(i)), Arg(1)),))
            for i in range(count)
        ),
    )

    status: list[Node] = [Store(Zero, Local(0))]
    if present_bit:
        status.append(
            If(
                LEqual(reg("CPEN"), One),
                (Store(_int(CpuSta.PRESENT_ENABLED), Local(0)),),
                (
                    If(
                        LEqual(reg("CPRS"), One),
                        (Store(_int(CpuSta.PRESENT_DISABLED), Local(0)),),
                    ),
                ),
            )
        )
    else:
        status.append(
            If(LEqual(reg("CPEN"), One), (Store(_int(CpuSta.PRESENT_ENABLED), Local(0)),))
        )
    csta = Method(
        "CSTA",
        1,
        True,
        0,
        (acquire, Store(Arg(0), reg("CSEL")), *status, release, Return(Local(0))),
    )

    cej0 = Method(
        "CEJ0",
        1,
        True,
        0,
        (acquire, Store(Arg(0), reg("CSEL")), Store(One, reg("CEJ0")), release),
    )

    cscn = Method(
        "CSCN", 0, True, 0, (acquire, *_scan_body(count, reg, remove_after_insert), release)
    )

    cost = Method(
        "COST",
        4,
        True,
        0,
        (
            acquire,
            Store(Arg(0), reg("CSEL")),
            Store(_int(CMD_OST_EVENT), reg("CCMD")),
            Store(Arg(1), reg("CDAT")),
            Store(_int(CMD_OST_STATUS), reg("CCMD")),
            Store(Arg(2), reg("CDAT")),
            release,
        ),
    )

    cpus = tuple(_cpu_device(i, boot=i == boot_cpu) for i in range(count))
    return Device(
        path,
        (
            Name("_HID", String("ACPI0010")),
            Name("_CID", EisaId("PNP0A05")),
            ctfy,
            csta,
            cej0,
            cscn,
            cost,
            *cpus,
        ),
    )


def _scan_body(count: int, reg: _RegFn, remove_after_insert: bool) -> tuple[Node, ...]:
    """QEMU's CSCN loop (since 5.2): queue inserts in CNEW, notify removes at once.

    Locals: 0 has_event, 1 num_added, 2 queue index, 3 uid, 4 has_job, 5 rescan.

    Where QEMU hangs (our reading of its CSCN in hw/acpi/cpu.c): a vCPU with an insert *and*
    a remove pending (``device_add`` then ``device_del`` before the guest scanned)
    gets only its insert handled (``If CINS ... Else If CRMV``); the remove waits
    for the next GED event, which may never come because both pulses were taken as
    one interrupt, so ``device_del`` never completes. With ``remove_after_insert``
    such a vCPU sets ``rescan``: once the batch's Device Checks are out (and its
    insert cleared) the scan restarts from vCPU 0 and finds the remove, so OSPM
    sees Device Check then Eject Request, in that order, in the same run.
    """
    cnew = NameRef("CNEW")
    has_event, num_added, idx, uid, has_job, rescan = (Local(i) for i in range(6))
    queue: tuple[Node, ...] = (
        Store(uid, Index(cnew, num_added)),
        Increment(num_added),
        Store(One, has_event),
    )
    if remove_after_insert:
        queue += (If(LEqual(reg("CRMV"), One), (Store(One, rescan),)),)
    inner = While(
        LAnd(LEqual(has_event, One), LLess(uid, _int(count))),
        (
            Store(Zero, has_event),
            Store(uid, reg("CSEL")),
            Store(_int(CMD_GET_NEXT_EVENT), reg("CCMD")),  # next vCPU with an event, from uid
            If(LLess(reg("CDAT"), uid), (Break(),)),  # wrapped around: scan done
            If(LEqual(num_added, _int(CNEW_SIZE)), (Store(One, has_job), Break())),
            Store(reg("CDAT"), uid),
            If(
                LEqual(reg("CINS"), One),
                queue,
                (
                    If(
                        LEqual(reg("CRMV"), One),
                        (
                            MethodCall("CTFY", (uid, _int(OstSource.EJECT_REQUEST))),
                            Store(One, reg("CRMV")),
                            Store(One, has_event),
                        ),
                    ),
                ),
            ),
            Increment(uid),
        ),
    )
    notify_added = While(
        LLess(idx, num_added),
        (
            Store(DerefOf(Index(cnew, idx)), uid),
            MethodCall("CTFY", (uid, _int(OstSource.DEVICE_CHECK))),
            Store(uid, Debug()),
            Store(uid, reg("CSEL")),
            Store(One, reg("CINS")),  # clear the insert event
            Increment(idx),
        ),
    )
    outer: tuple[Node, ...] = (
        Store(Zero, has_job),
        Store(One, has_event),
        Store(Zero, num_added),
        inner,
        Store(Zero, idx),
        notify_added,
    )
    start: tuple[Node, ...] = (Store(Zero, uid), Store(One, has_job))
    if remove_after_insert:
        start = (Store(Zero, rescan), *start)
        outer += (
            If(
                LEqual(rescan, One),
                (Store(Zero, rescan), Store(Zero, uid), Store(One, has_job)),
            ),
        )
    return (
        Name("CNEW", Package((), CNEW_SIZE)),
        *start,
        While(LEqual(has_job, One), outer),
    )


class _RegFn(Protocol):
    def __call__(self, field: str, /) -> NameRef: ...


def _cpu_device(index: int, *, boot: bool) -> Device:
    uid = _int(index)
    body: list[Node] = [
        Name("_HID", String("ACPI0007")),
        Name("_UID", uid),
        Method("_STA", 0, True, 0, (Return(MethodCall("CSTA", (uid,))),)),
    ]
    if not boot:  # the boot vCPU cannot be ejected (QEMU omits its _EJ0 too)
        body.append(Method("_EJ0", 1, False, 0, (MethodCall("CEJ0", (uid,)),)))
    body.append(Method("_OST", 3, True, 0, (MethodCall("COST", (uid, Arg(0), Arg(1), Arg(2))),)))
    return Device(cpu_device_name(index), tuple(body))


def ged_device(
    *,
    base: int = virt.GED_BASE,
    gsi: int = virt.GED_GSI,
    cpu_scan: str | None = CPU_SCAN_METHOD,
    power_button: str | None = PWRB_PATH,
) -> Device:
    """``\\_SB.GED`` (ACPI0013): the event selector and ``_EVT``, as QEMU's build_ged_aml.

    ``_EVT`` reads ESEL once (the read clears it, docs/contract.md §4) and tests each event bit
    in QEMU's order (power-down, then CPU hotplug); the CPU bit runs the scan.
    """
    events: list[Node] = []
    sel = Local(0)
    if power_button is not None:
        bit = _int(GED_EVT_PWR_DOWN)
        notify = Notify(NameRef(power_button), _int(NOTIFY_POWER_BUTTON))
        events.append(If(LEqual(And(sel, bit), bit), (notify,)))
    if cpu_scan is not None:
        bit = _int(GED_EVT_CPU_HOTPLUG)
        events.append(If(LEqual(And(sel, bit), bit), (MethodCall(cpu_scan, ()),)))
    return Device(
        "GED",
        (
            Name("_HID", String("ACPI0013")),
            Name("_UID", String("GED")),
            Name(
                "_CRS",
                ResourceTemplate(Interrupt((gsi,), consumer=True, edge=True)),
            ),
            OperationRegion("EREG", _SYSTEM_MEMORY, _int(base), _int(virt.GED_SIZE)),
            Field(
                "EREG",
                (NamedField("ESEL", 32),),
                ACCESS_TYPES["DWordAcc"],
                False,
                UPDATE_RULES["WriteAsZeros"],
            ),
            Method("_EVT", 1, True, 0, (Store(NameRef("ESEL"), sel), *events)),
        ),
    )


def _uart_device() -> Device:
    """The PL011 console as QEMU virt describes it (``COM0``, ARMH0011)."""
    return Device(
        "COM0",
        (
            Name("_HID", String("ARMH0011")),
            Name("_UID", Zero),
            Name(
                "_CRS",
                ResourceTemplate(
                    Memory32Fixed(virt.UART_BASE, virt.UART_SIZE),
                    Interrupt((virt.UART_GSI,), consumer=True),
                ),
            ),
        ),
    )


def _agent_device() -> Device:
    """The agent channel (virtio-vsock's role): the guest finds it by ``_HID``."""
    return Device(
        "AGNT",
        (
            Name("_HID", String("CPAG0001")),
            Name("_UID", Zero),
            Name(
                "_CRS",
                ResourceTemplate(Memory32Fixed(virt.AGENT_CHANNEL_BASE, virt.AGENT_CHANNEL_SIZE)),
            ),
        ),
    )


def _power_button() -> Device:
    return Device("PWRB", (Name("_HID", String("PNP0C0C")), Name("_UID", Zero)))


def dsdt_block(config: _Config) -> DefinitionBlock:
    """The DSDT as a node tree (what :func:`build_dsdt` encodes)."""
    maxcpus = config.maxcpus
    if not isinstance(maxcpus, int) or not 1 <= maxcpus <= virt.MAX_CPUS:
        raise AmlError(f"maxcpus must be in 1..{virt.MAX_CPUS}, got {maxcpus!r}")
    scope = Scope(
        "\\_SB",
        (
            _uart_device(),
            _agent_device(),
            _power_button(),
            pres_device(path="PRES"),
            cpus_device(maxcpus, path="CPUS"),
            ged_device(),
        ),
    )
    return DefinitionBlock("DSDT", (scope,), DSDT_REVISION, DSDT_IDS)


def build_dsdt(config: _Config) -> bytes:
    """The whole DSDT table (header, AML, checksum) for this machine (docs/contract.md §2)."""
    return dsdt_block(config).encode()
