"""The CPU hotplug ABI is declared once (``cpuplug.cpuhp_abi``) and every side follows it.

The DSDT's register fields, the VMM's register block, the GED bits on both sides, the
``_STA`` answers and the ``_OST`` codes are each checked against the one declaration,
and no other module may declare such a constant again.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cpuplug import cpuhp_abi as abi
from cpuplug.acpi import virt
from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml.decoder import decode_table
from cpuplug.acpi.aml.opcodes import ACCESS_TYPES
from cpuplug.acpi.dsdt import build_dsdt, pres_device
from cpuplug.acpi.interp import Interpreter
from cpuplug.cpuhp_abi import CpuSta, OstEjectStatus, OstSource, OstStatus
from cpuplug.vmm.cpuhp import CpuHotplugBlock, OstInfo
from cpuplug.vmm.ged import GenericEventDevice

SRC = Path(__file__).resolve().parent.parent / "src" / "cpuplug"

_ACCESS_WIDTH = {ACCESS_TYPES["ByteAcc"]: 1, ACCESS_TYPES["DWordAcc"]: 4}


def _layout(fields: list[n.Field]) -> set[tuple[str, int, int, int]]:
    """(name, first bit, bits, access width in bytes) of every named field."""
    out = set()
    for field in fields:
        bit = 0
        for element in field.elements:
            if isinstance(element, n.NamedField):
                out.add((element.name, bit, element.bits, _ACCESS_WIDTH[field.access_type]))
            if isinstance(element, n.NamedField | n.ReservedField):
                bit += element.bits
    return out


def _declared(*, present_bit: bool = True) -> set[tuple[str, int, int, int]]:
    return {
        (f.name, f.first_bit, f.bits, f.width)
        for f in abi.PRES_FIELDS
        if present_bit or f.flag != abi.FLAG_PRESENT
    }


def _pres(device: n.Node) -> list[n.Field]:
    return [x for x in n.walk(device) if isinstance(x, n.Field) and x.region == "PRST"]


# ----------------------------------------------------------------- the register block


@pytest.mark.parametrize("maxcpus", [1, 8, 512])
def test_the_dsdts_pres_fields_are_the_declared_layout(maxcpus: int) -> None:
    table = decode_table(build_dsdt(virt.MachineConfig(cpus=1, maxcpus=maxcpus)))
    pres = [x for x in n.walk(table.body) if isinstance(x, n.Device) and x.name == "PRES"]
    assert len(pres) == 1
    assert _layout(_pres(pres[0])) == _declared()
    regions = [x for x in n.walk(pres[0]) if isinstance(x, n.OperationRegion)]
    assert [r.length for r in regions] == [n.Integer(abi.BLOCK_SIZE)]


def test_qemus_shape_drops_only_the_present_bit() -> None:
    assert _layout(_pres(pres_device(present_bit=False))) == _declared(present_bit=False)
    assert "CPRS" not in {name for name, *_ in _layout(_pres(pres_device(present_bit=False)))}


def test_every_register_has_one_width_and_the_block_ends_with_the_last() -> None:
    assert abi.BLOCK_SIZE == 12 == virt.CPUHP_SIZE == CpuHotplugBlock.SIZE
    spans = sorted((o, o + w) for o, w in abi.REGISTER_WIDTHS.items())
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    flags = [f.flag for f in abi.PRES_FIELDS if f.flag]
    assert len(set(flags)) == len(flags) and all(f & (f - 1) == 0 for f in flags)
    assert all(f.offset in abi.REGISTER_WIDTHS for f in abi.PRES_FIELDS)


def test_the_vmm_block_answers_at_the_declared_offsets_and_widths() -> None:
    arch_ids = [0, 0x1_2345_6789]
    reports: list[OstInfo] = []
    block = CpuHotplugBlock(arch_ids, on_ost=reports.append)
    block.plug(1, "cpu-1", hotplugged=True)
    width = abi.REGISTER_WIDTHS

    block.write(abi.OFFSET_SELECTOR, width[abi.OFFSET_SELECTOR], 1)
    flags = block.read(abi.OFFSET_FLAGS, width[abi.OFFSET_FLAGS])
    assert flags == abi.FLAG_ENABLED | abi.FLAG_INSERT | abi.FLAG_PRESENT

    block.write(abi.OFFSET_COMMAND, width[abi.OFFSET_COMMAND], abi.CMD_GET_CPU_ID)
    assert block.read(abi.OFFSET_DATA, width[abi.OFFSET_DATA]) == 0x2345_6789
    assert block.read(abi.OFFSET_DATA2, width[abi.OFFSET_SELECTOR]) == 0x1

    block.write(abi.OFFSET_FLAGS, width[abi.OFFSET_FLAGS], abi.FLAG_INSERT)
    assert block.read(abi.OFFSET_FLAGS, 1) == abi.FLAG_ENABLED | abi.FLAG_PRESENT

    block.write(abi.OFFSET_COMMAND, 1, abi.CMD_OST_EVENT)
    block.write(abi.OFFSET_DATA, 4, OstSource.DEVICE_CHECK)
    block.write(abi.OFFSET_COMMAND, 1, abi.CMD_OST_STATUS)
    block.write(abi.OFFSET_DATA, 4, OstStatus.SUCCESS)
    assert reports == [OstInfo(1, "cpu-1", OstSource.DEVICE_CHECK, OstStatus.SUCCESS)]

    block.write(abi.OFFSET_COMMAND, 1, abi.CMD_GET_CPU_ID)
    block.write(abi.OFFSET_COMMAND, 1, max(abi.COMMANDS) + 1)  # unknown: ignored
    assert block.read(abi.OFFSET_DATA, 4) == 0x2345_6789


# ------------------------------------------------------------- _STA, GED, _OST end to end


class _Bus:
    """The two MMIO devices of the machine that the DSDT's regions address."""

    def __init__(self, block: CpuHotplugBlock, ged: GenericEventDevice) -> None:
        self.devices = ((virt.CPUHP_BASE, block), (virt.GED_BASE, ged))

    def _find(self, addr: int) -> tuple[int, CpuHotplugBlock | GenericEventDevice]:
        for base, device in self.devices:
            if base <= addr < base + device.SIZE:
                return base, device
        raise AssertionError(f"no device at {addr:#x}")

    def read(self, addr: int, width_bits: int) -> int:
        base, device = self._find(addr)
        return device.read(addr - base, width_bits // 8)

    def write(self, addr: int, width_bits: int, value: int) -> None:
        base, device = self._find(addr)
        device.write(addr - base, width_bits // 8, value)


def _machine(
    maxcpus: int = 4, on_ost: Callable[[OstInfo], None] | None = None
) -> tuple[Interpreter, CpuHotplugBlock, GenericEventDevice, list[tuple[str, int]]]:
    block = CpuHotplugBlock([virt.mpidr(i) for i in range(maxcpus)], on_ost=on_ost)
    block.plug(0, None, hotplugged=False)
    ged = GenericEventDevice(lambda: None)
    it = Interpreter()
    it.map_region("SystemMemory", _Bus(block, ged))
    notes: list[tuple[str, int]] = []
    it.on_notify(lambda path, value: notes.append((path, value)))
    it.load(build_dsdt(virt.MachineConfig(cpus=1, maxcpus=maxcpus)))
    return it, block, ged, notes


def test_sta_bits_and_answers_have_distinct_names() -> None:
    assert abi.STA_BIT_ENABLED == 0x02  # the bit ...
    assert int(CpuSta.PRESENT_ENABLED) == 0x0F == abi.STA_DEFAULT  # ... is not the answer
    assert int(CpuSta.PRESENT_DISABLED) == 0x0D == CpuSta.PRESENT_ENABLED & ~abi.STA_BIT_ENABLED
    assert int(CpuSta.NOT_PRESENT) == 0
    assert CpuSta.PRESENT_DISABLED & abi.STA_BIT_PRESENT


def test_a_vcpus_sta_is_a_declared_answer() -> None:
    it, block, _, _ = _machine()
    block.plug(2, "cpu-2", hotplugged=True)
    answers = [it.evaluate(f"\\_SB.CPUS.C{i:03X}._STA") for i in range(4)]
    assert answers == [CpuSta.PRESENT_ENABLED, CpuSta.PRESENT_DISABLED,
                       CpuSta.PRESENT_ENABLED, CpuSta.PRESENT_DISABLED]  # fmt: skip


def test_the_vmms_ged_bits_run_the_dsdts_handlers() -> None:
    it, block, ged, notes = _machine()
    block.plug(3, "cpu-3", hotplugged=True)
    ged.raise_event(abi.GED_EVT_CPU_HOTPLUG)
    it.evaluate("\\_SB.GED._EVT", virt.GED_GSI)
    assert notes == [("\\_SB.CPUS.C003", OstSource.DEVICE_CHECK)]

    notes.clear()
    block.request_unplug(3)
    ged.raise_event(abi.GED_EVT_CPU_HOTPLUG)
    it.evaluate("\\_SB.GED._EVT", virt.GED_GSI)
    assert notes == [("\\_SB.CPUS.C003", OstSource.EJECT_REQUEST)]

    notes.clear()
    ged.raise_event(abi.GED_EVT_PWR_DOWN)
    it.evaluate("\\_SB.GED._EVT", virt.GED_GSI)
    assert notes == [("\\_SB.PWRB", abi.NOTIFY_POWER_BUTTON)]


def test_the_dsdts_ost_reaches_the_vmm_as_declared() -> None:
    reports: list[OstInfo] = []
    it, block, _, _ = _machine(on_ost=reports.append)
    block.plug(1, "cpu-1", hotplugged=True)
    it.evaluate("\\_SB.CPUS.C001._OST", OstSource.EJECT_REQUEST, OstEjectStatus.DEVICE_BUSY, b"")
    assert reports == [OstInfo(1, "cpu-1", 0x03, 0x82)]


# -------------------------------------------------------------------------------- _OST


def test_ost_text_uses_the_specifications_words_for_the_source() -> None:
    assert abi.ost_text(OstSource.EJECT_REQUEST, 0x82) == "0x82 (device busy)"
    assert abi.ost_text(OstSource.OSPM_EJECT, 0x80) == (
        "0x80 (device ejection not supported by OSPM)"
    )
    # the same number means something else for another source
    assert abi.ost_text(OstSource.OSPM_INSERTION, 0x80) == "0x80 (device insertion in progress)"
    assert abi.ost_text(OstSource.OSPM_SHUTDOWN, 0x80) == "0x80 (OS shutdown request denied)"
    assert abi.ost_text(OstSource.DEVICE_CHECK, 0x80) == "0x80 (unknown status)"
    assert abi.ost_text(OstSource.DEVICE_CHECK, 0x01) == "0x01 (non-specific failure)"
    assert abi.ost_text(3, 0x00) == "0x00 (success)"
    assert abi.ost_text(3, 0x05) == "0x05 (reserved status)"
    assert abi.ost_text(OstSource.OSPM_INSERTION, 0x95) == (
        "0x95 (insertion failure, resources unavailable: memory, interrupts)"
    )


def test_ost_codes_are_plain_numbers_with_texts() -> None:
    assert (OstSource.EJECT_REQUEST, OstSource.OSPM_EJECT) == (0x03, 0x103)
    # lookup by value; mypy reads the members' (value, text) __new__ as the call signature
    assert OstEjectStatus(0x84) is OstEjectStatus.IN_PROGRESS  # type: ignore[call-arg]
    assert f"{OstEjectStatus.IN_PROGRESS}" == "132"  # formats as the number, for logs
    for codes in (OstSource, OstStatus, OstEjectStatus, abi.OstInsertStatus,
                  abi.OstShutdownStatus):  # fmt: skip
        texts = [code.text for code in codes]
        assert len(set(texts)) == len(texts) and all(texts)


# --------------------------------------------------------------------- declared once

_ABI_NAME = re.compile(r"_?(STA|OST|GED_EVT|GED_EVENT|FLAG|OFFSET|CMD|NOTIFY_POWER)_\w+")

_NOT_YET_SWITCHED: set[Path] = set()
"""The runtime is being rewritten; it switches to ``cpuplug.cpuhp_abi`` then, and leaves here."""


def _module_constants(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def test_no_other_module_declares_a_hotplug_abi_constant() -> None:
    exported = set(abi.__all__)
    found = [
        f"{path.relative_to(SRC)}: {name}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "cpuhp_abi.py" and path not in _NOT_YET_SWITCHED
        for name in _module_constants(path)
        if name in exported or _ABI_NAME.fullmatch(name)
    ]
    assert found == []
