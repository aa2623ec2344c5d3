"""This machine's DSDT: shape, QEMU's own AML byte for byte, and ACPICA as the judge."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TypeVar

import pytest

from cpuplug.acpi import virt
from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml.builder import (
    And,
    Device,
    Integer,
    Interrupt,
    LEqual,
    Local,
    Memory32Fixed,
    Method,
    MethodCall,
    NameRef,
    Notify,
    Store,
    String,
)
from cpuplug.acpi.aml.decoder import decode_table
from cpuplug.acpi.aml.nodes import walk
from cpuplug.acpi.aml.resources import EndTag, parse_resources
from cpuplug.acpi.dsdt import build_dsdt, cpu_device_name, cpus_device, dsdt_block, pres_device
from cpuplug.acpi.errors import AmlError
from cpuplug.acpi.tables import Sdt
from cpuplug.acpi.virt import MachineConfig
from cpuplug.cpuhp_abi import HotplugMode

SIZES = (1, 8, 300, 512)


NodeT = TypeVar("NodeT", bound=n.Node)


def child(parent: n.Node, cls: type[NodeT], name: str) -> NodeT:
    body = getattr(parent, "body", ())
    for item in body:
        if isinstance(item, cls) and getattr(item, "name", None) == n.normalize_name(name):
            return item
    raise LookupError(name)


def name_value(device: n.Node, name: str) -> n.Node:
    found = child(device, n.Name, name)
    assert isinstance(found, n.Name)
    return found.value


@pytest.fixture(scope="module")
def dsdts() -> dict[int, bytes]:
    return {m: build_dsdt(MachineConfig(cpus=1, maxcpus=m)) for m in SIZES}


def sb(raw: bytes) -> n.Scope:
    block = decode_table(raw)
    (scope,) = block.body
    assert isinstance(scope, n.Scope) and scope.name == "\\_SB_"
    return scope


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize("maxcpus", SIZES)
def test_header_and_round_trip(dsdts: dict[int, bytes], maxcpus: int) -> None:
    raw = dsdts[maxcpus]
    sdt = Sdt.parse(raw)  # checks length and checksum
    assert sdt.signature == "DSDT" and sdt.revision == 2
    assert sdt.ids.oem_id == "CPUPLG"
    assert decode_table(raw).encode() == raw
    assert decode_table(raw) == dsdt_block(MachineConfig(cpus=1, maxcpus=maxcpus))


def test_mode_and_boot_cpus_do_not_change_the_aml() -> None:
    base = build_dsdt(MachineConfig(cpus=1, maxcpus=8))
    assert build_dsdt(MachineConfig(cpus=8, maxcpus=8, mode=HotplugMode.ONLINE_OFFLINE)) == base
    assert build_dsdt(MachineConfig(cpus=3, maxcpus=8)) == base


def test_size_grows_linearly_with_maxcpus(dsdts: dict[int, bytes]) -> None:
    per_cpu = (len(dsdts[512]) - len(dsdts[300])) / 212
    assert 60 < per_cpu < 120  # a Device + 3 methods + a CTFY branch per vCPU


@pytest.mark.parametrize("bad", [0, 513, -1])
def test_bad_maxcpus_is_refused(bad: int) -> None:
    class Cfg:
        maxcpus = bad
        mode = "acpi"

    with pytest.raises(AmlError):
        build_dsdt(Cfg())


# ---------------------------------------------------------------- devices


def test_vcpu_devices_are_named_in_hex(dsdts: dict[int, bytes]) -> None:
    cpus = child(sb(dsdts[512]), Device, "CPUS")
    names = [d.name for d in cpus.body if isinstance(d, Device)]
    assert names == [f"C{i:03X}" for i in range(512)]
    assert "C00A" in names and "C1FF" in names and "C010" in names
    assert cpu_device_name(10) == "C00A"
    with pytest.raises(AmlError):
        cpu_device_name(0x1000)


def test_vcpu_device_contents(dsdts: dict[int, bytes]) -> None:
    cpus = child(sb(dsdts[300]), Device, "CPUS")
    for i in (0, 1, 10, 299):
        dev = child(cpus, Device, cpu_device_name(i))
        assert name_value(dev, "_HID") == String("ACPI0007")
        assert name_value(dev, "_UID") == Integer(i)
        sta = child(dev, Method, "_STA")
        assert sta == Method("_STA", 0, True, 0, (n.Return(MethodCall("CSTA", (Integer(i),))),))
        ost = child(dev, Method, "_OST")
        assert isinstance(ost, Method) and ost.argc == 3
        assert ost.body == (MethodCall("COST", (Integer(i), n.Arg(0), n.Arg(1), n.Arg(2))),)
        has_ej0 = any(isinstance(x, Method) and x.name == "_EJ0" for x in dev.body)
        assert has_ej0 == (i != 0)  # the boot vCPU cannot be ejected


def test_pres_registers_match_spec_section_3(dsdts: dict[int, bytes]) -> None:
    pres = child(sb(dsdts[8]), Device, "PRES")
    region = child(pres, n.OperationRegion, "PRST")
    assert region == n.OperationRegion("PRST", 0, Integer(0x090C0000), Integer(12))
    assert child(pres, n.Mutex, "CPLK") == n.Mutex("CPLK", 0)
    crs = name_value(pres, "_CRS")
    assert isinstance(crs, n.Buffer)
    assert parse_resources(crs.data) == [Memory32Fixed(0x090C0000, 12), EndTag()]
    layout: dict[str, tuple[int, int, int, int]] = {}
    for f in (x for x in pres.body if isinstance(x, n.Field)):
        bit = 0
        for element in f.elements:
            if isinstance(element, n.NamedField):
                layout[element.name] = (bit, element.bits, f.access_type, f.update_rule)
            if isinstance(element, n.NamedField | n.ReservedField):
                bit += element.bits
    byte_acc, dword_acc, preserve, write_zeros = 1, 3, 0, 2
    assert layout == {
        "CPEN": (32, 1, byte_acc, write_zeros),
        "CINS": (33, 1, byte_acc, write_zeros),
        "CRMV": (34, 1, byte_acc, write_zeros),
        "CEJ0": (35, 1, byte_acc, write_zeros),
        "CEJF": (36, 1, byte_acc, write_zeros),
        "CPRS": (37, 1, byte_acc, write_zeros),  # bit 5: present
        "CCMD": (40, 8, byte_acc, write_zeros),
        "CSEL": (0, 32, dword_acc, preserve),
        "CDAT": (64, 32, dword_acc, preserve),
    }


def test_csta_answers_present_disabled_with_0x0d() -> None:
    csta = child(cpus_device(2), Method, "CSTA")
    assert isinstance(csta, Method)
    (branch,) = [x for x in csta.body if isinstance(x, n.If)]
    assert branch.predicate == LEqual(NameRef("\\_SB.PRES.CPEN"), Integer(1))
    assert branch.body == (Store(Integer(0x0F), Local(0)),)
    assert branch.else_body == (
        n.If(LEqual(NameRef("\\_SB.PRES.CPRS"), Integer(1)), (Store(Integer(0x0D), Local(0)),)),
    )


def test_ged_device(dsdts: dict[int, bytes]) -> None:
    ged = child(sb(dsdts[8]), Device, "GED")
    assert name_value(ged, "_HID") == String("ACPI0013")
    assert name_value(ged, "_UID") == String("GED")
    crs = name_value(ged, "_CRS")
    assert isinstance(crs, n.Buffer)
    assert parse_resources(crs.data)[0] == Interrupt((41,), consumer=True, edge=True)
    assert child(ged, n.OperationRegion, "EREG") == n.OperationRegion(
        "EREG", 0, Integer(0x09080000), Integer(4)
    )
    evt = child(ged, Method, "_EVT")
    assert isinstance(evt, Method) and evt.argc == 1 and evt.serialized
    sel = Local(0)
    assert evt.body == (
        Store(NameRef("ESEL"), sel),
        n.If(
            LEqual(And(sel, Integer(2)), Integer(2)),
            (Notify(NameRef("\\_SB.PWRB"), Integer(0x80)),),
        ),
        n.If(LEqual(And(sel, Integer(8)), Integer(8)), (MethodCall("\\_SB.CPUS.CSCN", ()),)),
    )


def test_uart_agent_and_power_button(dsdts: dict[int, bytes]) -> None:
    scope = sb(dsdts[8])
    uart = child(scope, Device, "COM0")
    assert name_value(uart, "_HID") == String("ARMH0011")
    crs = name_value(uart, "_CRS")
    assert isinstance(crs, n.Buffer)
    assert parse_resources(crs.data)[:2] == [
        Memory32Fixed(virt.UART_BASE, 0x1000),
        Interrupt((33,)),
    ]
    agent = child(scope, Device, "AGNT")
    assert name_value(agent, "_HID") == String("CPAG0001")
    crs = name_value(agent, "_CRS")
    assert isinstance(crs, n.Buffer)
    assert parse_resources(crs.data)[0] == Memory32Fixed(0x0A000000, 0x1000)
    assert name_value(child(scope, Device, "PWRB"), "_HID") == String("PNP0C0C")


# ---------------------------------------------------------------- QEMU's AML, byte for byte


@pytest.fixture(scope="module")
def qemu_cpus() -> Device:
    raw = (
        Path(__file__).resolve().parents[1] / "data/x86-q35-cphp/DSDT.dat"
    ).read_bytes()
    for node in walk(decode_table(raw).body):
        if isinstance(node, Device) and node.name == "\\_SB_.CPUS":
            return node
    raise LookupError("CPUS")


@pytest.mark.parametrize("method", ["CTFY", "CSTA", "CEJ0", "CSCN", "COST"])
def test_methods_are_qemus_own(qemu_cpus: Device, method: str) -> None:
    """QEMU 7.2's build_cpus_aml output (4 possible CPUs, register device at
    \\_SB.PCI0.PRES): ours, given the same parameters, is identical."""
    ours = cpus_device(
        4, res="\\_SB.PCI0.PRES", present_bit=False, remove_after_insert=False, path="\\_SB.CPUS"
    )
    theirs = child(qemu_cpus, Method, method)
    mine = child(ours, Method, method)
    assert mine == theirs
    assert mine.encode() == theirs.encode()


def test_container_ids_are_qemus(qemu_cpus: Device) -> None:
    ours = cpus_device(4, res="\\_SB.PCI0.PRES", present_bit=False)
    for name in ("_HID", "_CID"):
        assert name_value(ours, name) == name_value(qemu_cpus, name)


def test_pres_fields_are_qemus_plus_cprs() -> None:
    fields = [x for x in pres_device(present_bit=False).body if isinstance(x, n.Field)]
    raw = (
        Path(__file__).resolve().parents[1] / "data/x86-q35-cphp/DSDT.dat"
    ).read_bytes()
    assert all(f.encode() in raw for f in fields)


# ---------------------------------------------------------------- ACPICA


def _disassemble(iasl: str, raw: bytes, tmp_path: Path, name: str) -> str:
    table = tmp_path / f"{name}.dat"
    table.write_bytes(raw)
    done = subprocess.run(
        [iasl, "-d", str(table)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Error" not in output and "Warning" not in output, output
    return (tmp_path / f"{name}.dsl").read_text()


@pytest.mark.acpica
@pytest.mark.parametrize("maxcpus", SIZES)
def test_iasl_disassembles_cleanly(
    iasl: str, dsdts: dict[int, bytes], maxcpus: int, tmp_path: Path
) -> None:
    dsl = _disassemble(iasl, dsdts[maxcpus], tmp_path, f"dsdt{maxcpus}")
    last = f"C{maxcpus - 1:03X}"
    for expected in (
        "Device (PRES)",
        "Device (CPUS)",
        "Device (GED)",
        "Device (PWRB)",
        "Device (AGNT)",
        'Name (_HID, "ARMH0011")',
        "CPRS,   1",
        "Name (CNEW, Package (0xFF) {})",
        "Method (CSCN, 0, Serialized)",
        "Method (_EVT, 1, Serialized)",
        "\\_SB.CPUS.CSCN ()",
        "Notify (\\_SB.PWRB, 0x80)",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000029,",
        f"Device ({last})",
        f"Notify ({last}, Arg1)",
    ):
        assert expected in dsl, expected
    assert f"Device (C{maxcpus:03X})" not in dsl
    assert dsl.count("Method (_EJ0, 1, NotSerialized)") == maxcpus - 1


@pytest.mark.acpica
def test_iasl_recompiles_our_disassembly_to_the_same_bytes(
    iasl: str, dsdts: dict[int, bytes], tmp_path: Path
) -> None:
    """iasl, compiling the ASL it read out of our table, writes exactly our AML
    (names as written: -on keeps iasl from shortening namepaths)."""
    _disassemble(iasl, dsdts[8], tmp_path, "dsdt8")
    done = subprocess.run(
        [iasl, "-on", "-p", "again", "dsdt8.dsl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "again.aml").read_bytes()[36:] == dsdts[8][36:]


@pytest.mark.acpica
def test_iasl_optimized_namepaths_decode_and_resolve(
    iasl: str, dsdts: dict[int, bytes], tmp_path: Path
) -> None:
    """iasl's own (optimizing) build of our ASL uses ^-prefixed paths
    (^^PRES.CPLK from inside a method); we decode and re-encode it exactly."""
    _disassemble(iasl, dsdts[8], tmp_path, "dsdt8")
    done = subprocess.run(
        [iasl, "-p", "opt", "dsdt8.dsl"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    raw = (tmp_path / "opt.aml").read_bytes()
    block = decode_table(raw)
    assert block.encode() == raw
    paths = {x.path for x in walk(block.body) if isinstance(x, NameRef)}
    assert "^^PRES.CPLK" in paths
    calls = [x for x in walk(block.body) if isinstance(x, MethodCall)]
    assert {(c.path, len(c.args)) for c in calls} >= {("CTFY", 2), ("CSTA", 1), ("COST", 4)}


@pytest.mark.acpica
def test_acpiexec_loads_and_runs_csta(
    acpiexec: str, dsdts: dict[int, bytes], tmp_path: Path
) -> None:
    table = tmp_path / "dsdt.dat"
    table.write_bytes(dsdts[8])
    done = subprocess.run(
        [acpiexec, "-b", "evaluate \\_SB.CPUS.CSTA 0; evaluate \\_SB.CPUS.CSCN", str(table)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert "Evaluation of \\_SB.CPUS.CSTA returned" in output, output
    # CSCN returns nothing; with no event pending its loop ends at once
    assert "No object was returned from evaluation of \\_SB.CPUS.CSCN" in output, output
    assert "AE_" not in output.replace("AE_OK", ""), output


# ---------------------------------------------------------------- CSCN, run


class _Mmio:
    """The VMM's real register block behind the SystemMemory region handler."""

    def __init__(self, block: object, base: int) -> None:
        self.block = block
        self.base = base

    def read(self, addr: int, width_bits: int) -> int:
        return int(self.block.read(addr - self.base, width_bits // 8))  # type: ignore[attr-defined]

    def write(self, addr: int, width_bits: int, value: int) -> None:
        self.block.write(addr - self.base, width_bits // 8, value)  # type: ignore[attr-defined]


def _machine(dsdt: bytes, maxcpus: int) -> tuple[object, list[tuple[str, int]], object]:
    from cpuplug.acpi.interp import Interpreter
    from cpuplug.vmm.cpuhp import CpuHotplugBlock

    block = CpuHotplugBlock([virt.mpidr(i) for i in range(maxcpus)])
    block.plug(0, None, hotplugged=False)
    it = Interpreter()
    it.map_region("SystemMemory", _Mmio(block, virt.CPUHP_BASE))
    notes: list[tuple[str, int]] = []
    it.on_notify(lambda path, value: notes.append((path, value)))
    it.load(dsdt)
    return it, notes, block


def _qemu_style_dsdt(maxcpus: int) -> bytes:
    from cpuplug.acpi.aml.builder import DefinitionBlock, Scope

    block = dsdt_block(MachineConfig(cpus=1, maxcpus=maxcpus))
    (scope,) = block.body
    assert isinstance(scope, Scope)
    body = tuple(
        cpus_device(maxcpus, path="CPUS", remove_after_insert=False)
        if isinstance(x, Device) and x.name == "CPUS"
        else x
        for x in scope.body
    )
    return DefinitionBlock("DSDT", (Scope(scope.name, body),), block.revision, block.ids).encode()


def test_cscn_notifies_inserts_and_removes() -> None:
    it, notes, block = _machine(build_dsdt(MachineConfig(cpus=1, maxcpus=8)), 8)
    for i in (2, 3):
        block.plug(i, f"cpu-{i}", hotplugged=True)  # type: ignore[attr-defined]
    it.evaluate("\\_SB.CPUS.CSCN")  # type: ignore[attr-defined]
    assert notes == [("\\_SB.CPUS.C002", 1), ("\\_SB.CPUS.C003", 1)]
    assert not any(block.slot_state(i).inserting for i in range(8))  # type: ignore[attr-defined]
    assert it.evaluate("\\_SB.CPUS.CSTA", 2) == 0x0F  # type: ignore[attr-defined]
    assert it.evaluate("\\_SB.CPUS.CSTA", 5) == 0x0D  # type: ignore[attr-defined]
    notes.clear()
    block.request_unplug(3)  # type: ignore[attr-defined]
    it.evaluate("\\_SB.CPUS.CSCN")  # type: ignore[attr-defined]
    assert notes == [("\\_SB.CPUS.C003", 3)]


def test_insert_and_remove_pending_together_are_both_handled_in_one_scan() -> None:
    """QEMU's CSCN handles only the insert of a vCPU that also has a remove pending
    (device_add then device_del before the guest scanned); if the two GED pulses
    were taken as one interrupt the remove waits forever. Ours rescans."""
    added = [("\\_SB.CPUS.C002", 1), ("\\_SB.CPUS.C005", 1)]
    for dsdt, expected in (
        (_qemu_style_dsdt(8), added),
        (build_dsdt(MachineConfig(cpus=1, maxcpus=8)), [*added, ("\\_SB.CPUS.C002", 3)]),
    ):
        it, notes, block = _machine(dsdt, 8)
        block.plug(2, "cpu-2", hotplugged=True)  # type: ignore[attr-defined]
        block.request_unplug(2)  # type: ignore[attr-defined]
        block.plug(5, "cpu-5", hotplugged=True)  # type: ignore[attr-defined]
        it.evaluate("\\_SB.CPUS.CSCN")  # type: ignore[attr-defined]
        assert notes == expected  # Device Check before Eject Request, one run
        still_removing = block.slot_state(2).removing  # type: ignore[attr-defined]
        assert still_removing == (expected == added)  # QEMU leaves the remove pending
        assert not block.slot_state(2).inserting and not block.slot_state(5).inserting  # type: ignore[attr-defined]
