"""``cpuplug acpi tables`` and ``cpuplug acpi dump``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpuplug.acpi import tables as t
from cpuplug.acpi import virt
from cpuplug.acpi.virt import TABLE_ORDER, MachineConfig, build_machine_tables
from cpuplug.cli import main


def tables_cmd(out: Path, *extra: str) -> list[str]:
    return ["acpi", "tables", "--out", str(out), *extra]


def test_tables_writes_the_machine_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "dir"
    assert main(tables_cmd(out, "--smp", "cpus=2,maxcpus=8")) == 0
    expected = build_machine_tables(MachineConfig(cpus=2, maxcpus=8))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.dat" for n in TABLE_ORDER)
    for name, blob in expected.blobs.items():
        assert (out / f"{name}.dat").read_bytes() == blob
    stdout = capsys.readouterr().out
    assert f"RSDP at {expected.rsdp_address:#x}" in stdout
    assert "2 of 8 vCPUs plugged, mode acpi" in stdout


def test_tables_mode_and_bare_smp(tmp_path: Path) -> None:
    assert main(tables_cmd(tmp_path, "--smp", "3", "--mode", "online-offline")) == 0
    madt = t.parse_table((tmp_path / "APIC.dat").read_bytes())
    assert isinstance(madt, t.Madt)
    assert [(g.uid, g.flags) for g in madt.gicc] == [(0, 1), (1, 1), (2, 1)]


def test_tables_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["acpi", "tables"]) == 0
    madt = t.parse_table((tmp_path / "acpi-tables" / "APIC.dat").read_bytes())
    assert isinstance(madt, t.Madt)
    assert [g.flags for g in madt.gicc] == [1] + [8] * 7  # cpus=1,maxcpus=8, ACPI mode


def test_tables_base_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(tables_cmd(tmp_path, "--base", "0x40001000")) == 0
    assert "RSDP at 0x40001000" in capsys.readouterr().out
    rsdp = t.parse_table((tmp_path / "RSDP.dat").read_bytes())
    assert isinstance(rsdp, t.Rsdp) and rsdp.xsdt_address == 0x40001030


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smp", "cpus=9,maxcpus=8"], "--smp: cpus=9 exceeds maxcpus=8"),
        (["--smp", "maxcpus=600"], "exceeds this machine's 512"),
        (["--smp", "banana"], "cannot parse 'banana'"),
        (["--base", "0x40000008"], "not 16-byte aligned"),
        (["--base", "0x1000"], "do not fit in RAM"),
    ],
)
def test_tables_bad_values_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(tables_cmd(out, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpuplug: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written when the request is bad


def test_tables_out_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(tables_cmd(target)) == 2
    assert "not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_tables_bad_mode_is_an_argparse_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(tables_cmd(tmp_path, "--mode", "sometimes"))
    assert exc.value.code == 2


# --------------------------------------------------------------------------
# dump


@pytest.fixture
def written(tmp_path: Path) -> Path:
    assert main(tables_cmd(tmp_path, "--smp", "cpus=2,maxcpus=20")) == 0
    return tmp_path


def test_dump_summarises_every_table(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    files = [str(written / f"{n}.dat") for n in TABLE_ORDER]
    assert main(["acpi", "dump", *files]) == 0
    out = capsys.readouterr().out
    for name in TABLE_ORDER:
        assert f"{name}.dat: {name}  length" in out
    assert out.count("checksum OK") == len(TABLE_ORDER)
    assert "revision 5  OEM 'CPUPLG' 'CPUPLUG ' 0x1" in out  # MADT header fields
    assert "GICC  uid 0  mpidr 0x0  flags 0x1 (Enabled)" in out
    assert "GICC  uid 17  mpidr 0x101  flags 0x8 (Online Capable)" in out
    assert out.count("GICC  uid") == 20
    assert "GICD  base 0x8000000  GIC version 3" in out
    assert "GICR  base 0x80a0000  length 0x280000" in out
    assert "(HW_REDUCED_ACPI)" in out and "PSCI_COMPLIANT|PSCI_USE_HVC" in out
    assert "interface type 3  registers 0x9000000" in out


def test_dump_lists_the_dsdt_namespace(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["acpi", "dump", str(written / "DSDT.dat")]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    entries = {line[0]: " ".join(line[1:]) for line in lines if line and line[0].startswith("\\")}
    assert entries["\\_SB_.CPUS.CSCN"] == "Method(0, Serialized)"
    assert entries["\\_SB_.CPUS.CSTA"] == "Method(1, Serialized)"
    assert entries["\\_SB_.PRES._HID"] == "Name = EisaId('PNP0A06')"
    assert entries["\\_SB_.PRES.CPLK"] == "Mutex(sync level 0)"
    assert entries["\\_SB_.PRES.PRST"] == "OperationRegion(SystemMemory, 0x90c0000, 0xc)"
    assert entries["\\_SB_.PRES.CPEN"] == "Field of PRST, bit 32, 1 bits"
    assert entries["\\_SB_.PRES.CDAT"] == "Field of PRST, bit 64, 32 bits"
    assert entries["\\_SB_.CPUS.C013"] == "Device"  # hex names: vCPU 19
    assert entries["\\_SB_.CPUS.C013._UID"] == "Name = 0x13"
    assert entries["\\_SB_.GED_._HID"] == "Name = 'ACPI0013'"


def test_dump_reads_qemus_tables(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = vectors / "x86-q35-cphp"
    assert main(["acpi", "dump", str(base / "APIC.dat"), str(base / "DSDT.dat")]) == 0
    out = capsys.readouterr().out
    assert out.count("type 0x00  8 bytes (no layout; kept raw)") == 4  # four local APICs
    assert "\\_SB_.PCI0.PRES.CINS" in out and "\\_SB_.CPUS.C003" in out


def test_dump_reports_bad_files_and_goes_on(
    written: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    bad_sum = tmp_path / "badsum.dat"
    data = bytearray((written / "GTDT.dat").read_bytes())
    data[60] ^= 0xFF
    bad_sum.write_bytes(bytes(data))
    truncated = tmp_path / "trunc.dat"
    madt = bytearray((written / "APIC.dat").read_bytes())
    last = len(madt) - 16  # the GICR entry, last in the table
    madt[last + 1] = 0x20  # claims 32 bytes: runs past the end
    madt[9] = 0
    madt[9] = -sum(madt) & 0xFF
    truncated.write_bytes(bytes(madt))
    garbage_aml = tmp_path / "garbage.dat"
    garbage_aml.write_bytes(t.Sdt("SSDT", b"\x10\xff\xff\xff").build())
    missing = tmp_path / "missing.dat"
    files = [bad_sum, truncated, garbage_aml, missing, written / "XSDT.dat"]
    assert main(["acpi", "dump", *map(str, files)]) == 1
    captured = capsys.readouterr()
    assert "badsum.dat: GTDT" in captured.out and "checksum BAD" in captured.out
    assert "XSDT.dat: XSDT" in captured.out  # the good file after the bad ones
    err = captured.err.splitlines()
    assert len(err) == 3 and "Traceback" not in captured.err
    assert err[0] == (
        f"cpuplug: error: {truncated}: APIC: at byte {last:#x}: subtable type 0x0e"
        " of 32 bytes runs 16 bytes past the end of the table"
    )
    assert err[1].startswith(f"cpuplug: error: {garbage_aml}: SSDT: AML does not decode")
    assert err[2].startswith(f"cpuplug: error: {missing}:")


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("cpuplug")
    assert script.exists(), "package not installed into this venv"
    done = subprocess.run(
        [str(script), "acpi", "tables", "--smp", "cpus=1,maxcpus=2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [str(script), "acpi", "dump", str(tmp_path / "APIC.dat")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "GICC  uid 1  mpidr 0x1  flags 0x8 (Online Capable)" in done.stdout
    bad = subprocess.run(
        [str(script), "acpi", "tables", "--smp", "cpus=0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "cpuplug: error: --smp: cpus and maxcpus must be at least 1"


# ----------------------------------------------------------------------------- bad input
# Regression tests for faults found by driving ``cpuplug acpi`` the way a careless or
# hostile user would (QA, formerly tests/e2e/test_qa_bad_input.py).

MAX_TABLE_FILE = 64 << 20  # cpuplug.acpi.cli's bound on what ``acpi dump`` reads


def test_acpi_dump_of_an_endless_file_is_an_error_not_a_memory_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``acpi dump /dev/zero`` read until MemoryError; the read is now bounded."""
    huge = tmp_path / "huge"
    with huge.open("wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_TABLE_FILE + 1)
    xsdt = tmp_path / "XSDT.dat"
    xsdt.write_bytes(virt.build_machine_tables(virt.MachineConfig()).blobs["XSDT"])
    assert main(["acpi", "dump", str(huge), str(xsdt)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"cpuplug: error: {huge}: larger than 64 MiB, too large to be an ACPI table"
    ]
    assert out.startswith(f"{xsdt}: XSDT")  # the good file after it is still dumped


def test_acpi_dump_does_not_send_a_files_control_bytes_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spcr = bytearray(virt.build_machine_tables(virt.MachineConfig()).blobs["SPCR"])
    spcr[0:4] = b"\x1b[2J"  # "clear screen" as a table signature
    table = tmp_path / "odd.dat"
    table.write_bytes(bytes(spcr))
    short = tmp_path / "short.dat"
    short.write_bytes(b"\x1b]0;owned\x07" + bytes(30))
    assert main(["acpi", "dump", str(table), str(short)]) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out and "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2J" in out and "\\x1b]0;" in err


def test_acpi_tables_with_an_empty_out_does_not_write_into_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out "$DIR"`` with DIR unset was ``Path("")`` = ``.``: tables landed in the cwd."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["acpi", "tables", "--out", ""])
    assert info.value.code == 2
    assert "empty directory name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``cpuplug acpi dump DSDT.dat | head -1`` ended in a BrokenPipeError traceback."""
    dsdt = tmp_path / "DSDT.dat"
    config = virt.MachineConfig.from_smp("cpus=1,maxcpus=512")
    dsdt.write_bytes(virt.build_machine_tables(config).blobs["DSDT"])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpuplug", "acpi", "dump", str(dsdt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.read(5) == str(dsdt).encode()[:5]
        proc.stdout.close()  # far more output than a pipe buffer is still to come
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + 13
        assert err == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
