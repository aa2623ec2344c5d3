"""ACPICA's ``acpiexec`` as the outside judge of the interpreter.

acpiexec has no hardware behind operation regions: it simulates each region as RAM
filled with one byte value (``-fv``), keeping what AML writes. :class:`SimulatedRam`
does the same on our side, so both interpreters see identical registers and must
return identical results - for QEMU's DSDT, for ours, and for a batch of random
integer programs (arithmetic, logic, loops) in 32- and 64-bit tables.
"""

from __future__ import annotations

import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cpuplug.acpi import virt
from cpuplug.acpi.aml import builder as b
from cpuplug.acpi.dsdt import build_dsdt
from cpuplug.acpi.interp import Interpreter

pytestmark = pytest.mark.acpica


class SimulatedRam:
    """acpiexec's region simulation: every byte reads ``fill`` until AML writes it."""

    def __init__(self, fill: int) -> None:
        self.fill = fill
        self.mem: dict[int, int] = {}

    def read(self, addr: int, width_bits: int) -> int:
        data = bytes(self.mem.get(addr + i, self.fill) for i in range(width_bits // 8))
        return int.from_bytes(data, "little")

    def write(self, addr: int, width_bits: int, value: int) -> None:
        for i, byte in enumerate(value.to_bytes(width_bits // 8, "little")):
            self.mem[addr + i] = byte


@dataclass
class AcpiexecRun:
    results: list[Any]
    """One entry per ``evaluate`` command, in order (a :class:`Failed` on AML errors)."""
    object_count: int


@dataclass(frozen=True)
class Failed:
    status: str


_EVAL = re.compile(r"^Evaluating (\S+)$")
_RETURNED = re.compile(r"^Evaluation of (\S+) returned object")
_FAILED = re.compile(r"^Evaluation of (\S+) failed with status (\w+)")
_COUNT = re.compile(r"Namespace contains (\d+) \(0x[0-9A-F]+\) objects")


def _parse_object(lines: list[str], pos: int) -> tuple[Any, int]:
    """One object of acpiexec's result dump starting at ``lines[pos]``."""
    text = lines[pos].strip()
    if text.startswith("[Integer] = "):
        return int(text.split("= ", 1)[1], 16), pos + 1
    if text.startswith("[String] Length"):
        return text.split("= ", 1)[1][1:-1], pos + 1
    if text.startswith("[Buffer] Length"):
        length = int(text.split()[2], 16)
        data: list[int] = []
        line = text.split("= ", 1)[1]
        while True:
            hexpart = line.split(":", 1)[1].split("//")[0]
            data.extend(int(x, 16) for x in hexpart.split())
            pos += 1
            if len(data) >= length or pos >= len(lines) or ":" not in lines[pos]:
                break
            line = lines[pos]
        return bytes(data[:length]), pos
    if text.startswith("[Package] Contains"):
        count = int(text.split()[2])
        pos += 1
        items = []
        for _ in range(count):
            item, pos = _parse_object(lines, pos)
            items.append(item)
        return items, pos
    raise AssertionError(f"unparsed acpiexec output: {text!r}")


def run_acpiexec(
    acpiexec: str, table: bytes, commands: list[str], tmp_path: Path, fill: int = 0
) -> AcpiexecRun:
    path = tmp_path / "table.dat"
    path.write_bytes(table)
    # Commands go through stdin (the interactive prompt): ``-b`` caps its command
    # line at 1023 characters.
    proc = subprocess.run(
        [acpiexec, "-fv", f"{fill:#x}", str(path)],
        input="".join(f"{c}\n" for c in commands) + "quit\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stdout.splitlines()
    results: list[Any] = []
    count = -1
    pos = 0
    pending = False
    while pos < len(lines):
        line = lines[pos]
        if m := _COUNT.search(line):
            count = int(m.group(1))
        if _EVAL.match(line):
            if pending:
                results.append(None)  # the previous method returned nothing
            pending = True
        elif _RETURNED.match(line):
            value, pos = _parse_object(lines, pos + 1)
            results.append(value)
            pending = False
            continue
        elif m := _FAILED.match(line):
            results.append(Failed(m.group(2)))
            pending = False
        pos += 1
    if pending:
        results.append(None)
    assert len(results) == len(commands), proc.stdout[-3000:] + proc.stderr[-2000:]
    return AcpiexecRun(results, count)


def ours(table: bytes, calls: list[tuple[str, tuple[int, ...]]], fill: int = 0) -> list[Any]:
    it = Interpreter()
    it.load(table)
    ram = SimulatedRam(fill)
    it.map_region("SystemMemory", ram)
    it.map_region("SystemIO", ram)
    return [it.evaluate(path, *args) for path, args in calls]


def commands(calls: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    return [" ".join(["evaluate", path, *(f"{a:#x}" for a in args)]) for path, args in calls]


@pytest.mark.parametrize("fill", [0x00, 0x21, 0xFF])
def test_qemu_dsdt_results_match_acpiexec(
    acpiexec: str, vectors: Path, tmp_path: Path, fill: int
) -> None:
    table = (vectors / "x86-q35-cphp" / "DSDT.dat").read_bytes()
    calls: list[tuple[str, tuple[int, ...]]] = [
        *(("\\_SB.CPUS.CSTA", (i,)) for i in range(4)),
        ("\\_SB.CPUS.C002._STA", ()),
        ("\\_S5_", ()),
        ("\\_SB.CPUS.C003._MAT", ()),
        ("\\_SB.PCI0.PRES._UID", ()),
        ("\\_SB.HPET._STA", ()),
        ("\\_SB.PCI0.PCEJ", (1, 3)),
    ]
    judge = run_acpiexec(acpiexec, table, commands(calls), tmp_path, fill)
    assert ours(table, calls, fill) == judge.results
    # The sanity of the comparison itself: the fill value reached CSTA's CPEN read.
    assert judge.results[0] == (0x0F if fill & 1 else 0)


@pytest.mark.parametrize("fill", [0x00, 0x20, 0x21])
def test_our_dsdt_results_match_acpiexec(acpiexec: str, tmp_path: Path, fill: int) -> None:
    table = build_dsdt(virt.MachineConfig(cpus=1, maxcpus=8))
    calls: list[tuple[str, tuple[int, ...]]] = [
        *(("\\_SB.CPUS.CSTA", (i,)) for i in range(0, 8, 3)),
        ("\\_SB.CPUS.C005._STA", ()),
        ("\\_SB.CPUS.C005._UID", ()),
        ("\\_SB.CPUS.C005._HID", ()),
        ("\\_SB.GED._CRS", ()),
        ("\\_SB.PRES._CRS", ()),
        ("\\_SB.CPUS.CSCN", ()),
    ]
    judge = run_acpiexec(acpiexec, table, commands(calls), tmp_path, fill)
    assert ours(table, calls, fill) == judge.results
    # CPEN (bit 0) and CPRS (bit 5) select all three CSTA answers across the fills.
    assert judge.results[0] == {0x00: 0, 0x20: 0x0D, 0x21: 0x0F}[fill]


def test_namespace_sizes_match_acpiexec(acpiexec: str, vectors: Path, tmp_path: Path) -> None:
    for table in (
        (vectors / "x86-q35-cphp" / "DSDT.dat").read_bytes(),
        build_dsdt(virt.MachineConfig(cpus=1, maxcpus=64)),
    ):
        it = Interpreter()
        it.load(table)
        judge = run_acpiexec(acpiexec, table, [], tmp_path)
        assert len(list(it.walk())) == judge.object_count


# ------------------------------------------------------------------ random integer programs

_OPS2 = [b.Add, b.Subtract, b.Multiply, b.And, b.Or, b.Xor, b.Nand, b.Nor]
_LOGIC = [b.LEqual, b.LLess, b.LGreater, b.LAnd, b.LOr]


def _expr(rng: random.Random, depth: int) -> b.Node:
    if depth == 0 or rng.random() < 0.25:
        choice = rng.randrange(4)
        if choice == 0:
            return b.Integer(
                rng.choice([0, 1, 2, 0xFF, 0xFFFF_FFFF, 2**64 - 1, rng.randrange(2**64)])
            )
        if choice == 1:
            return b.Integer(rng.randrange(300))
        return b.Local(rng.randrange(3)) if choice == 2 else b.Arg(rng.randrange(2))
    kind = rng.randrange(6)
    x, y = _expr(rng, depth - 1), _expr(rng, depth - 1)
    if kind == 0:
        return rng.choice(_OPS2)(x, y)
    if kind == 1:
        return rng.choice(_LOGIC)(x, y)
    if kind == 2:
        return rng.choice([b.ShiftLeft, b.ShiftRight])(x, b.Integer(rng.randrange(70)))
    if kind == 3:
        return b.Mod(x, b.Or(y, b.One))
    if kind == 4:
        return b.Not(x)
    return b.LNot(x)


def _program(rng: random.Random, name: str) -> b.Method:
    body: list[b.Node] = [b.Store(b.Arg(i % 2), b.Local(i)) for i in range(3)]
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.4:
            counter = b.Local(7)
            body += [
                b.Store(b.Zero, counter),
                b.While(
                    b.LLess(counter, b.Integer(rng.randrange(1, 6))),
                    (b.Increment(counter), b.Store(_expr(rng, 2), b.Local(rng.randrange(3)))),
                ),
            ]
        else:
            body.append(
                b.If(
                    _expr(rng, 2),
                    (b.Store(_expr(rng, 3), b.Local(rng.randrange(3))),),
                    (b.Decrement(b.Local(rng.randrange(3))),),
                )
            )
    body.append(b.Return(_expr(rng, 3)))
    return b.Method(name, 2, False, 0, tuple(body))


@pytest.mark.parametrize("revision", [1, 2])
def test_random_integer_programs_match_acpiexec(
    acpiexec: str, tmp_path: Path, revision: int
) -> None:
    rng = random.Random(20260925 + revision)
    methods = [_program(rng, f"P{i:03d}") for i in range(60)]
    table = b.DefinitionBlock("DSDT", tuple(methods), revision=revision).encode()
    calls: list[tuple[str, tuple[int, ...]]] = [
        (f"\\P{i:03d}", (rng.randrange(2**32), rng.choice([0, 1, 7, rng.randrange(2**32)])))
        for i in range(60)
    ]
    judge = run_acpiexec(acpiexec, table, commands(calls), tmp_path)
    assert not any(isinstance(r, Failed) for r in judge.results)
    assert ours(table, calls) == judge.results


def _results(*values: b.Node) -> tuple[b.Node, ...]:
    """Return several values: AML package elements must be constants, so the
    results are stored one by one into a Package held in Local7."""
    pkg = b.Local(7)
    stores = [b.Store(v, b.Index(pkg, b.Integer(i))) for i, v in enumerate(values)]
    return (b.Store(b.Package((), count=len(values)), pkg), *stores, b.Return(pkg))


def test_assorted_operators_match_acpiexec(acpiexec: str, tmp_path: Path) -> None:
    S, Bf, I = b.String, b.Buffer, b.Integer  # noqa: E741
    L0, L1 = b.Local(0), b.Local(1)
    cases: dict[str, tuple[b.Node, ...]] = {
        "TOBC": _results(b.ToBCD(I(1234)), b.FromBCD(I(0x5678))),
        "FSB_": _results(
            b.FindSetLeftBit(I(0x80)), b.FindSetRightBit(I(0x80)), b.FindSetLeftBit(I(0))
        ),
        "CONC": _results(
            b.Concatenate(S("ab"), S("cd")), b.Concatenate(Bf(b"\x01"), Bf(b"\x02\x03"))
        ),
        "MID_": _results(
            b.Mid(S("abcdef"), I(2), I(3)), b.Mid(Bf(b"\x01\x02\x03\x04"), I(1), I(10))
        ),
        "TOIN": _results(
            b.ToInteger(S("0x1F")), b.ToInteger(S("123")), b.ToInteger(Bf(b"\x01\x02"))
        ),
        "TOBU": _results(b.ToBuffer(S("ab")), b.ToBuffer(I(0x0102))),
        "TOST": (b.Return(b.ToString(Bf(b"abc\x00def"), b.Ones)),),
        "SIZE": (
            b.Store(S("hello"), L0),
            b.Store(Bf(b"\x00" * 7), L1),
            *_results(b.SizeOf(L0), b.SizeOf(L1)),
        ),
        "OBJT": (
            b.Store(S("x"), L0),
            b.Store(b.Package((I(1),)), L1),
            *_results(b.ObjectType(L0), b.ObjectType(L1), b.ObjectType(b.NameRef("\\_SB_"))),
        ),
        "DIVI": (b.Divide(I(100), I(7), L0, L1), *_results(L0, L1)),
        "MTCH": (b.Return(b.Match(b.Package((I(1), I(5), I(9), I(5))), 1, I(5), 0, I(0), I(2))),),
        "MTC2": (b.Return(b.Match(b.Package((I(1), I(5))), 5, I(7), 0, I(0), I(0))),),
        "CNDR": _results(b.CondRefOf(b.NameRef("\\_SB_")), b.CondRefOf(b.NameRef("\\NOPE"))),
        "SCMP": _results(
            b.LLess(S("abc"), S("abd")),
            b.LGreater(S("b"), S("abc")),
            b.LEqual(Bf(b"\x01\x02"), Bf(b"\x01\x02")),
        ),
        "RFOF": (
            b.Store(I(5), L0),
            b.Store(b.RefOf(L0), L1),
            b.Return(b.Add(b.DerefOf(L1), I(1))),
        ),
        "BUFX": (
            b.Store(Bf(b"\x10\x20\x30"), L0),
            b.Store(I(0x99), b.Index(L0, I(1))),
            b.Return(L0),
        ),
    }
    methods = [b.Method(name, 0, False, 0, body) for name, body in cases.items()]
    table = b.DefinitionBlock("DSDT", tuple(methods), revision=2).encode()
    calls: list[tuple[str, tuple[int, ...]]] = [(f"\\{name}", ()) for name in cases]
    judge = run_acpiexec(acpiexec, table, commands(calls), tmp_path)
    mine = ours(table, calls)
    mismatches = {
        name: (m, j) for name, m, j in zip(cases, mine, judge.results, strict=True) if m != j
    }
    assert mismatches == {}
