"""``cpuplug acpi``: write this machine's ACPI tables, and read any ACPI table back.

``cpuplug acpi tables`` writes exactly the bytes the VMM puts in guest RAM (one
file per table, named by signature, as ``acpidump``/``acpixtract`` do), so the
tables can be judged by outside tools such as ACPICA's ``iasl -d``.
``cpuplug acpi dump`` is the reader: a summary per table, every GICC of a MADT,
and the namespace an AML table declares.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cpuplug.acpi import tables as t
from cpuplug.acpi import virt
from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml.builder import eisa_id_text
from cpuplug.acpi.aml.decoder import decode_definition_block
from cpuplug.acpi.aml.opcodes import REGION_SPACE_NAMES
from cpuplug.acpi.errors import AcpiError
from cpuplug.errors import CpuplugError, UsageError

DEFAULT_SMP = "cpus=1,maxcpus=8"
DEFAULT_OUT = "acpi-tables"
MAX_TABLE_FILE = 64 << 20
"""Largest file ``acpi dump`` reads (64 MiB; real DSDTs are well under 1 MiB): the
read is bounded so that ``acpi dump /dev/zero`` is an error, not a MemoryError."""


def add_parser(subparsers: Any) -> None:
    """Register ``cpuplug acpi tables`` and ``cpuplug acpi dump``."""
    acpi = subparsers.add_parser(
        "acpi",
        help="build and inspect ACPI tables",
        description="Build this machine's ACPI tables, or dump any ACPI table file.",
    )
    sub = acpi.add_subparsers(dest="acpi_command", required=True, metavar="ACTION")

    tables = sub.add_parser(
        "tables",
        help="write the machine's ACPI tables as SIGNATURE.dat files",
        description=(
            "Write RSDP, XSDT, FACP, APIC, GTDT, SPCR and DSDT for a machine, exactly as "
            "the VMM places them in guest RAM."
        ),
    )
    tables.add_argument(
        "--smp",
        default=DEFAULT_SMP,
        help=f"QEMU-style topology, e.g. 'cpus=2,maxcpus=8' or '2' (default {DEFAULT_SMP})",
    )
    tables.add_argument(
        "--mode",
        choices=virt.MODES,
        default="acpi",
        help="hotplug mode: MADT flags per docs/contract.md §2 (default acpi)",
    )
    tables.add_argument(
        "--out",
        type=_directory,
        default=Path(DEFAULT_OUT),
        help=f"directory to write into, created if missing (default ./{DEFAULT_OUT})",
    )
    tables.add_argument(
        "--base",
        type=_address,
        default=None,
        help="guest-physical address of the tables (default: top 2 MiB of RAM)",
    )
    tables.set_defaults(func=run_tables)

    dump = sub.add_parser(
        "dump",
        help="summarise ACPI table files",
        description="Print a summary of each ACPI table file; the namespace of DSDT/SSDT.",
    )
    dump.add_argument("files", nargs="+", type=Path, metavar="FILE")
    dump.set_defaults(func=run_dump)


def _directory(text: str) -> Path:
    # Path("") is ".": an unset shell variable (--out "$DIR") would write into
    # the current directory.
    if not text:
        raise argparse.ArgumentTypeError("empty directory name")
    return Path(text)


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not an address: {text!r}")
    return value


# --------------------------------------------------------------------------
# cpuplug acpi tables


def run_tables(args: argparse.Namespace) -> int:
    """Build everything first, then write: a bad option leaves the directory untouched."""
    config = virt.MachineConfig.from_smp(args.smp, mode=args.mode)
    built = virt.build_machine_tables(config, args.base)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, blob in built.blobs.items():
            _write_atomically(out / f"{name}.dat", blob)
    except OSError as exc:
        raise CpuplugError(f"cannot write tables to {out}: {exc.strerror or exc}") from None
    print(
        f"{config.cpus} of {config.maxcpus} vCPUs plugged, mode {config.mode}; "
        f"RSDP at {built.rsdp_address:#x}"
    )
    for name, blob in built.blobs.items():
        print(f"  {out / (name + '.dat')}  {len(blob):6d} bytes at {built.addresses[name]:#x}")
    return 0


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------
# cpuplug acpi dump


def run_dump(args: argparse.Namespace) -> int:
    """Summarise each file; a bad file is reported and the others still dumped."""
    status = 0
    for path in args.files:
        try:
            data = read_table_file(path)
        except OSError as exc:
            print(f"cpuplug: error: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        except CpuplugError as exc:
            print(f"cpuplug: error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        try:
            lines, ok = describe(data)
        except AcpiError as exc:
            print(f"cpuplug: error: {path}: {printable(str(exc))}", file=sys.stderr)
            status = 1
            continue
        _emit(sys.stdout, path, [printable(line) for line in lines])
        if not ok:
            status = 1
    return status


def read_table_file(path: Path) -> bytes:
    """The file's bytes, at most :data:`MAX_TABLE_FILE` of them (``CpuplugError`` beyond)."""
    with path.open("rb") as handle:
        data = handle.read(MAX_TABLE_FILE + 1)
    if len(data) > MAX_TABLE_FILE:
        raise CpuplugError(f"larger than {MAX_TABLE_FILE >> 20} MiB, too large to be an ACPI table")
    return data


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``).

    Signatures and AML names come from the file being dumped: a garbage file must
    not be able to send escape sequences to the user's terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _emit(stream: TextIO, path: Path, lines: list[str]) -> None:
    print(f"{path}: {lines[0]}", file=stream)
    for line in lines[1:]:
        print(f"  {line}", file=stream)


def describe(data: bytes) -> tuple[list[str], bool]:
    """Summary lines for one table and whether its checksum(s) are right.

    The checksum is reported rather than enforced, so a table with a wrong one
    can still be inspected; every structural fault raises an ``AcpiError``.
    """
    table = t.parse_table(data, verify_checksum=False)
    if isinstance(table, t.Rsdp):
        ok = t.checksum_ok(data[: t.Rsdp.V1_SIZE]) and (table.revision < 2 or t.checksum_ok(data))
        head = (
            f"RSDP  length {len(data)}  revision {table.revision}  OEM {table.oem_id!r}  "
            f"checksum {'OK' if ok else 'BAD'}"
        )
        return [head, f"XSDT at {table.xsdt_address:#x}  RSDT at {table.rsdt_address:#x}"], ok
    ok = t.checksum_ok(data)
    ids = table.ids
    head = (
        f"{table.signature}  length {len(data)}  revision {table.revision}  "
        f"OEM {ids.oem_id!r} {ids.oem_table_id!r} {ids.oem_revision:#x}  "
        f"creator {ids.creator_id!r} {ids.creator_revision:#x}  "
        f"checksum {'OK' if ok else 'BAD'}"
    )
    return [head, *_details(table)], ok


def _details(table: t.AnyTable) -> Iterator[str]:
    if isinstance(table, t.Xsdt):
        for i, address in enumerate(table.entries):
            yield f"entry {i}: {address:#x}"
    elif isinstance(table, t.Fadt):
        yield (
            f"flags {table.flags:#x}{' (HW_REDUCED_ACPI)' if table.hw_reduced else ''}  "
            f"ARM boot flags {table.arm_boot_arch:#x} ({_arm_boot(table.arm_boot_arch)})  "
            f"minor version {table.minor_version}"
        )
        yield f"DSDT at {table.dsdt_address:#x} (X_DSDT {table.x_dsdt:#x}, DSDT {table.dsdt:#x})"
    elif isinstance(table, t.Madt):
        yield from _madt_lines(table)
    elif isinstance(table, t.Gtdt):
        yield (
            f"timers: secure EL1 {table.secure_el1_gsiv}, non-secure EL1 "
            f"{table.nonsecure_el1_gsiv}, virtual {table.virtual_timer_gsiv}, non-secure EL2 "
            f"{table.nonsecure_el2_gsiv}; {table.platform_timer_count} platform timers"
        )
    elif isinstance(table, t.Spcr):
        gas = table.base_address
        yield (
            f"interface type {table.interface_type}  registers {gas.address:#x} "
            f"(space {gas.space_id}, {gas.bit_width} bits)  interrupt {table.interrupt}"
        )
    elif isinstance(table, t.Sdt) and table.signature in ("DSDT", "SSDT"):
        yield from _namespace_lines(table)


def _arm_boot(flags: int) -> str:
    names = []
    if flags & t.ARM_PSCI_COMPLIANT:
        names.append("PSCI_COMPLIANT")
    if flags & t.ARM_PSCI_USE_HVC:
        names.append("PSCI_USE_HVC")
    return "|".join(names) or "none"


_GICC_FLAG_NAMES = (
    (t.GICC_ENABLED, "Enabled"),
    (t.GICC_ONLINE_CAPABLE, "Online Capable"),
    (t.GICC_PERF_IRQ_EDGE, "PerfIRQ edge"),
    (t.GICC_VGIC_IRQ_EDGE, "VGIC IRQ edge"),
    (t.GICC_NON_COHERENT, "GICR non-coherent"),
)


def _madt_lines(madt: t.Madt) -> Iterator[str]:
    for entry in madt.entries:
        if isinstance(entry, t.Gicc):
            names = [name for bit, name in _GICC_FLAG_NAMES if entry.flags & bit]
            yield (
                f"GICC  uid {entry.uid}  mpidr {entry.mpidr:#x}  flags {entry.flags:#x}"
                f" ({', '.join(names) or 'disabled'})"
            )
        elif isinstance(entry, t.Gicd):
            yield f"GICD  base {entry.base_address:#x}  GIC version {entry.version}"
        elif isinstance(entry, t.Gicr):
            yield f"GICR  base {entry.base_address:#x}  length {entry.region_length:#x}"
        elif isinstance(entry, t.GicIts):
            yield f"ITS   id {entry.its_id}  base {entry.base_address:#x}"
        else:
            yield f"type {entry.type:#04x}  {len(entry.body) + 2} bytes (no layout; kept raw)"


def _namespace_lines(table: t.Sdt) -> Iterator[str]:
    """The named objects the table declares at load time, one per line, by absolute path.

    Method bodies are not entered: their named objects exist only while the
    method runs. A table whose AML does not decode shows the error in place of
    the namespace (its header is still summarised).
    """
    try:
        terms = decode_definition_block(table.body, base=t.HEADER_SIZE)
    except AcpiError as exc:
        raise AcpiError(f"{table.signature}: AML does not decode: {exc}") from None
    yield "namespace:"
    for path, what in _walk(terms, ()):
        yield f"  {_display(path):<24} {what}"


def _absolute(name: str, scope: tuple[str, ...]) -> tuple[str, ...]:
    prefix, segs = n.split_name(name)
    if prefix == "\\":
        return segs
    up = len(prefix)
    base = scope[: len(scope) - up] if up <= len(scope) else ()
    return base + segs


def _display(path: tuple[str, ...]) -> str:
    return "\\" + ".".join(path)


_Container = n.Scope | n.Device | n.Processor | n.ThermalZone | n.PowerResource


def _walk(terms: Sequence[n.Node], scope: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    for term in terms:
        if isinstance(term, _Container):
            path = _absolute(term.name, scope)
            if not isinstance(term, n.Scope):
                yield path, type(term).__name__
            yield from _walk(term.body, path)
        elif isinstance(term, n.If):
            yield from _walk(term.body, scope)
            yield from _walk(term.else_body or (), scope)
        elif isinstance(term, n.Method):
            flags = ", Serialized" if term.serialized else ""
            yield _absolute(term.name, scope), f"Method({term.argc}{flags})"
        elif isinstance(term, n.Name):
            yield _absolute(term.name, scope), f"Name = {_value(term.name, term.value)}"
        elif isinstance(term, n.Mutex):
            yield _absolute(term.name, scope), f"Mutex(sync level {term.sync_level})"
        elif isinstance(term, n.Event):
            yield _absolute(term.name, scope), "Event"
        elif isinstance(term, n.OperationRegion):
            space = REGION_SPACE_NAMES.get(term.space, f"space {term.space:#x}")
            where, size = _value("", term.offset), _value("", term.length)
            yield _absolute(term.name, scope), f"OperationRegion({space}, {where}, {size})"
        elif isinstance(term, n.Field | n.IndexField | n.BankField):
            owner = term.index if isinstance(term, n.IndexField) else term.region
            bit = 0
            for element in term.elements:
                if isinstance(element, n.NamedField):
                    yield (
                        _absolute(element.name, scope),
                        f"Field of {owner}, bit {bit}, {element.bits} bits",
                    )
                bit += element.bits if isinstance(element, n.NamedField | n.ReservedField) else 0
        elif isinstance(term, n.Alias):
            yield _absolute(term.alias, scope), f"Alias of {term.source}"


def _value(name: str, value: n.Node) -> str:
    if isinstance(value, n.Integer):
        if name.endswith(("_HID", "_CID")) and value.value >> 32 == 0:
            eisa = _eisa_id(value.value)
            if eisa:
                return f"EisaId({eisa!r})"
        return f"{value.value:#x}"
    if isinstance(value, n.String):
        return repr(value.value)
    if isinstance(value, n.Buffer):
        return f"Buffer({len(value.data)} bytes)"
    if isinstance(value, n.Package):
        return f"Package({len(value.elements)} elements)"
    return type(value).__name__


def _eisa_id(value: int) -> str | None:
    """The text of a compressed EISA id (``EisaId("PNP0A06")``), or ``None`` if it is not one."""
    if value >> 32 or value & 0x80:  # the vendor half's top bit is always 0
        return None
    text = eisa_id_text(value)
    return text if all("A" <= c <= "Z" for c in text[:3]) else None
