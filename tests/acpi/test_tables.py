"""Fixed-layout ACPI tables: layouts against the spec, round trips, checksums, hostile input."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpuplug.acpi import tables as t
from cpuplug.acpi import virt
from cpuplug.acpi.errors import TableError
from cpuplug.acpi.tables import parse_table
from cpuplug.acpi.virt import MachineConfig, build_machine_tables
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import UsageError

# --------------------------------------------------------------------------
# Helpers


def fix_checksum(data: bytes | bytearray) -> bytes:
    """Recompute an SDT's checksum after a deliberate mutation."""
    buf = bytearray(data)
    buf[9] = 0
    buf[9] = -sum(buf) & 0xFF
    return bytes(buf)


def sample_madt() -> t.Madt:
    return t.Madt(
        entries=(
            t.Gicd(base_address=0x0800_0000, version=3),
            t.Gicc(uid=0, mpidr=0, flags=t.GICC_ENABLED, cpu_interface_number=0),
            t.Gicc(uid=1, mpidr=0x101, flags=t.GICC_ONLINE_CAPABLE, performance_gsiv=23),
            t.Gicr(base_address=0x080A_0000, region_length=0x4_0000),
            t.GicIts(its_id=7, base_address=0x0808_0000),
            t.RawEntry(0x7F, b"\x01\x02\x03"),
        ),
        ids=t.TableIds(oem_id="ABC", oem_table_id="XYZ", oem_revision=9),
    )


def sample_tables() -> list[t.Rsdp | t.Xsdt | t.Fadt | t.Madt | t.Gtdt | t.Spcr | t.Sdt]:
    return [
        t.Rsdp(xsdt_address=0x4FE0_0030),
        t.Rsdp(revision=0, rsdt_address=0x1234),
        t.Xsdt(entries=(0x1000, 0x2000, 0xFFFF_FFFF_FFFF_FFF0)),
        t.Xsdt(),
        t.Fadt(x_dsdt=0x4FE0_1000),
        t.Fadt(
            x_dsdt=1,
            reset_reg=t.GenericAddress(1, 8, 0, 1, 0xCF9),
            hypervisor_vendor_id=0x1122334455667788,
            extra=b"future",
        ),
        sample_madt(),
        t.Madt(),
        t.Gtdt(secure_el1_gsiv=29, nonsecure_el1_gsiv=30, virtual_timer_gsiv=27),
        t.Gtdt(platform_timer_count=1, platform_timer_offset=96, rest=b"\x00\x14" + bytes(18)),
        t.Spcr(base_address=t.GenericAddress(0, 32, 0, 3, 0x0900_0000), interrupt=33),
        t.Spcr(rest=b"\x01\x02\x03\x04"),
        t.Sdt("DSDT", b"\x10\x05\\_SB_"),
        t.Sdt("SSDT", b"", revision=1),
        t.Sdt("OEM1", b"opaque"),
    ]


# --------------------------------------------------------------------------
# Layouts are the ACPI specification's (offsets and sizes from ACPI 6.5; QEMU's hw/acpi/aml-build.c)


def test_fadt_layout_matches_acpi_6_5() -> None:
    layout = t.Fadt.LAYOUT
    assert layout.size == 276
    assert layout.offset_of("dsdt") == 40
    assert layout.offset_of("flags") == 112
    assert layout.offset_of("reset_reg") == 116
    assert layout.offset_of("arm_boot_arch") == 129
    assert layout.offset_of("minor_version") == 131
    assert layout.offset_of("x_dsdt") == 140
    assert layout.offset_of("sleep_status_reg") == 256
    assert layout.offset_of("hypervisor_vendor_id") == 268


def test_gicc_layout_matches_acpi() -> None:
    layout = t.Gicc.LAYOUT
    assert layout.size == 80
    assert layout.offset_of("cpu_interface_number") == 4
    assert layout.offset_of("uid") == 8
    assert layout.offset_of("flags") == 12
    assert layout.offset_of("parked_address") == 24
    assert layout.offset_of("gicr_base_address") == 60
    assert layout.offset_of("mpidr") == 68
    assert layout.offset_of("efficiency_class") == 76
    assert layout.offset_of("spe_overflow_gsiv") == 78


def test_other_layout_sizes() -> None:
    assert t.Gicd.LAYOUT.size == 24
    assert t.Gicr.LAYOUT.size == 16
    assert t.GicIts.LAYOUT.size == 20
    assert t.Gtdt.LAYOUT.size == 96
    assert t.Gtdt.LAYOUT.offset_of("nonsecure_el2_gsiv") == 72
    assert t.Spcr.LAYOUT.size == 80
    assert t.Spcr.LAYOUT.offset_of("interrupt") == 54
    assert t.Spcr.LAYOUT.offset_of("pci_device_id") == 64
    assert t.Rsdp.LAYOUT.size == 36
    assert t.Rsdp.LAYOUT.offset_of("xsdt_address") == 24
    assert t.Madt.LAYOUT.size == 44


def test_fadt_defaults_are_hw_reduced_psci_hvc() -> None:
    data = t.Fadt(x_dsdt=0x4000_1000).build()
    assert len(data) == 276
    assert data[8] == 6 and data[131] == 5  # FADT 6.5
    (flags,) = struct.unpack_from("<I", data, 112)
    assert flags & (1 << 20)
    (arm_boot,) = struct.unpack_from("<H", data, 129)
    assert arm_boot == 0b11
    (x_dsdt,) = struct.unpack_from("<Q", data, 140)
    assert x_dsdt == 0x4000_1000
    assert t.Fadt.parse(data).dsdt_address == 0x4000_1000


def test_gicc_bytes_at_spec_offsets() -> None:
    entry = t.Gicc(uid=0x1234, mpidr=0x0A0B, flags=t.GICC_ONLINE_CAPABLE)
    raw = entry.build()
    assert raw[:2] == b"\x0b\x50"
    assert struct.unpack_from("<IIQ", raw, 8)[:2] == (0x1234, 8)
    assert struct.unpack_from("<Q", raw, 68)[0] == 0x0A0B


# --------------------------------------------------------------------------
# Round trips and checksums


@pytest.mark.parametrize("table", sample_tables(), ids=lambda x: type(x).__name__)
def test_build_parse_round_trip(table: t.AnyTable) -> None:
    data = table.build()
    parsed = parse_table(data)
    assert parsed == table
    assert parsed.signature == table.signature
    assert parsed.build() == data


@pytest.mark.parametrize("table", sample_tables(), ids=lambda x: type(x).__name__)
def test_checksums_are_right(table: t.AnyTable) -> None:
    data = table.build()
    if isinstance(table, t.Rsdp):
        assert sum(data[:20]) & 0xFF == 0
        if table.revision >= 2:
            assert sum(data) & 0xFF == 0 and len(data) == 36
        else:
            assert len(data) == 20
    else:
        assert sum(data) & 0xFF == 0
        assert struct.unpack_from("<I", data, 4)[0] == len(data)
        assert data[:4].decode() == table.signature


def test_madt_views_and_order() -> None:
    madt = parse_table(sample_madt().build())
    assert isinstance(madt, t.Madt)
    assert madt.signature == "APIC"
    assert [g.uid for g in madt.gicc] == [0, 1]
    assert [g.mpidr for g in madt.gicc] == [0, 0x101]
    assert [g.flags for g in madt.gicc] == [1, 8]
    assert madt.gicc[0].enabled and not madt.gicc[0].online_capable
    assert madt.gicc[1].online_capable and not madt.gicc[1].enabled
    assert madt.gicd is not None and madt.gicd.base_address == 0x0800_0000
    assert [r.base_address for r in madt.gicr] == [0x080A_0000]
    assert [i.its_id for i in madt.its] == [7]
    assert [e.type for e in madt.entries] == [0x0C, 0x0B, 0x0B, 0x0E, 0x0F, 0x7F]
    assert madt.entries[-1] == t.RawEntry(0x7F, b"\x01\x02\x03")


def test_longer_gicc_keeps_its_extra_bytes() -> None:
    # ACPI 6.5's GICC is 82 bytes (TRBE interrupt); the 2 extra bytes survive.
    entry = t.Gicc(uid=3, mpidr=3, flags=1, extra=b"\x17\x00")
    madt = t.Madt(entries=(entry,))
    data = madt.build()
    assert data[45] == 82
    assert parse_table(data) == madt


def test_short_ids_are_space_padded_and_round_trip() -> None:
    ids = t.TableIds(oem_id="BOCHS", oem_table_id="BXPC")
    assert ids.oem_id == "BOCHS " and ids.oem_table_id == "BXPC    "
    table = t.Xsdt(ids=ids)
    assert parse_table(table.build()) == table


def test_lists_are_stored_as_tuples() -> None:
    madt = t.Madt(entries=[t.Gicd(base_address=1)])  # type: ignore[arg-type]
    assert isinstance(madt.entries, tuple)
    assert madt == t.Madt(entries=(t.Gicd(base_address=1),))
    hash(t.Xsdt(entries=[1, 2]))  # type: ignore[arg-type]  # frozen and hashable


def test_shapes_of_values_checked_on_build() -> None:
    with pytest.raises(TableError) as err:
        t.Madt(entries=(t.Gicc(uid=1 << 32, mpidr=0, flags=1),)).build()
    assert "uid" in str(err.value) and err.value.table == "APIC"
    with pytest.raises(TableError):
        t.Xsdt(ids=t.TableIds(oem_id="TOOLONGID")).build()
    with pytest.raises(TableError):
        t.Xsdt(ids=t.TableIds(oem_id="\u20ac")).build()
    with pytest.raises(TableError):
        t.Xsdt(entries=(-1,)).build()
    with pytest.raises(TableError):
        t.Sdt("TOOLONG")
    with pytest.raises(TableError):
        t.Madt(entries=(t.RawEntry(3, bytes(300)),)).build()


def test_legacy_fadt_round_trips_and_refuses_fields_beyond_it() -> None:
    fadt = t.Fadt(revision=3, legacy_length=244, flags=0, arm_boot_arch=0, minor_version=0)
    data = fadt.build()
    assert len(data) == 244
    assert parse_table(data) == fadt
    with pytest.raises(TableError) as err:
        t.Fadt(legacy_length=244, hypervisor_vendor_id=1, minor_version=0).build()
    assert err.value.offset == 268


# --------------------------------------------------------------------------
# Tables written by real systems


@pytest.mark.parametrize("name", ["FACP", "APIC", "DSDT"])
def test_qemu_x86_tables_parse_and_rebuild_exactly(vectors: Path, name: str) -> None:
    data = (vectors / "x86-q35-cphp" / f"{name}.dat").read_bytes()
    table = parse_table(data)
    assert table.signature == name
    assert table.build() == data


def test_qemu_x86_madt_local_apics_are_raw_entries(vectors: Path) -> None:
    madt = parse_table((vectors / "x86-q35-cphp" / "APIC.dat").read_bytes())
    assert isinstance(madt, t.Madt)
    lapics = [e for e in madt.entries if isinstance(e, t.RawEntry) and e.type == 0]
    assert len(lapics) == 4  # -smp 1,maxcpus=4: one LAPIC per possible CPU
    assert [e.body[2] & 1 for e in lapics] == [1, 0, 0, 0]  # only CPU 0 enabled
    assert madt.gicc == []


def test_qemu_x86_fadt_is_a_legacy_length(vectors: Path) -> None:
    fadt = parse_table((vectors / "x86-q35-cphp" / "FACP.dat").read_bytes())
    assert isinstance(fadt, t.Fadt)
    assert fadt.legacy_length == 244 and fadt.revision == 3
    assert fadt.dsdt_address != 0 and not fadt.hw_reduced


# --------------------------------------------------------------------------
# Malformed input: one error type, naming table and offset


def test_short_input() -> None:
    with pytest.raises(TableError) as err:
        parse_table(b"APIC\x10\x00")
    assert err.value.table == "APIC" and err.value.offset == 6
    with pytest.raises(TableError):
        parse_table(b"")


def test_length_field_must_match() -> None:
    data = t.Xsdt(entries=(1,)).build()
    with pytest.raises(TableError) as err:
        parse_table(data + b"\0")
    assert (err.value.table, err.value.offset) == ("XSDT", 4)
    with pytest.raises(TableError):
        parse_table(data[:-1])
    lying = bytearray(data)
    struct.pack_into("<I", lying, 4, 1000)
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(lying))
    assert "length field says 1000" in str(err.value)


def test_bad_checksum() -> None:
    data = bytearray(t.Gtdt().build())
    data[50] ^= 1
    with pytest.raises(TableError) as err:
        parse_table(bytes(data))
    assert (err.value.table, err.value.offset) == ("GTDT", 9)
    assert "checksum" in str(err.value)
    # A dumper may still look at it.
    assert parse_table(bytes(data), verify_checksum=False).signature == "GTDT"


def test_rsdp_checksums_both_verified() -> None:
    data = bytearray(t.Rsdp(xsdt_address=0x1000).build())
    bad_first = bytearray(data)
    bad_first[9] ^= 0x20
    with pytest.raises(TableError) as err:
        parse_table(bytes(bad_first))
    assert (err.value.table, err.value.offset) == ("RSDP", 8)
    bad_ext = bytearray(data)
    bad_ext[25] ^= 1
    with pytest.raises(TableError) as err:
        parse_table(bytes(bad_ext))
    assert err.value.offset == 32
    with pytest.raises(TableError):
        parse_table(bytes(data[:30]))


def test_truncated_subtable() -> None:
    data = bytearray(sample_madt().build())
    # Claim the last subtable is longer than what is left.
    last = len(data) - 5
    assert data[last] == 0x7F
    data[last + 1] = 9
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(data))
    assert (err.value.table, err.value.offset) == ("APIC", last)
    assert "past the end" in str(err.value)


def test_subtable_length_below_header() -> None:
    data = bytearray(sample_madt().build())
    data[45] = 1  # first subtable (GICD) length 1
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(data))
    assert (err.value.table, err.value.offset) == ("APIC", 45)
    data[45] = 0
    with pytest.raises(TableError):
        parse_table(fix_checksum(data))


def test_known_subtable_shorter_than_its_layout() -> None:
    body = bytes([0x0B, 40]) + bytes(38)  # an ACPI 5.0-sized GICC
    data = t.Madt().build()[:44] + body
    buf = bytearray(data)
    struct.pack_into("<I", buf, 4, len(buf))
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(buf))
    assert err.value.offset == 45 and "GICC" in str(err.value)


def test_dangling_subtable_header_byte() -> None:
    buf = bytearray(t.Madt().build() + b"\x0b")
    struct.pack_into("<I", buf, 4, len(buf))
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(buf))
    assert err.value.offset == 44


def test_xsdt_entry_area_must_be_whole_entries() -> None:
    buf = bytearray(t.Xsdt(entries=(1,)).build() + b"\0\0\0")
    struct.pack_into("<I", buf, 4, len(buf))
    with pytest.raises(TableError) as err:
        parse_table(fix_checksum(buf))
    assert (err.value.table, err.value.offset) == ("XSDT", 36)


def test_gtdt_platform_timers_must_lie_inside() -> None:
    data = t.Gtdt(platform_timer_count=1, platform_timer_offset=500).build()
    with pytest.raises(TableError) as err:
        parse_table(data)
    assert err.value.offset == 92


def test_typed_parse_refuses_other_signature() -> None:
    with pytest.raises(TableError):
        t.Madt.parse(t.Gtdt().build())


# --------------------------------------------------------------------------
# Property tests: hostile bytes only ever raise TableError, and whatever
# parses rebuilds to the very same bytes.

_VALID = [tbl.build() for tbl in sample_tables()] + [
    blob
    for name, blob in build_machine_tables(
        MachineConfig(cpus=2, maxcpus=20), dsdt=t.Sdt("DSDT", b"\x10\x05\\_SB_").build()
    ).blobs.items()
]


def _parse_or_table_error(data: bytes) -> None:
    try:
        table = parse_table(data)
    except TableError as exc:
        assert isinstance(exc.offset, int) and exc.table
        return
    assert table.build() == data


@settings(max_examples=400, deadline=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_table_error(data: bytes) -> None:
    _parse_or_table_error(data)


@settings(max_examples=300, deadline=200)
@given(st.sampled_from(("RSD PTR ", "XSDT", "FACP", "APIC", "GTDT", "SPCR", "DSDT")), st.binary())
def test_random_bodies_behind_real_signatures(signature: str, body: bytes) -> None:
    raw = bytearray(signature.encode() + body)
    if len(raw) >= 8 and signature != "RSD PTR ":
        struct.pack_into("<I", raw, 4, len(raw))
    if len(raw) >= 10 and signature != "RSD PTR ":
        raw = bytearray(fix_checksum(raw))
    _parse_or_table_error(bytes(raw))


@settings(max_examples=500, deadline=300)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
    st.booleans(),
    st.integers(-3, 3),
)
def test_mutated_valid_tables_only_raise_table_error(
    data: bytes, edits: list[tuple[int, int]], refix: bool, resize: int
) -> None:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    if resize > 0:
        buf += bytes(resize)
    elif resize < 0:
        del buf[resize:]
    if refix and len(buf) >= 10 and buf[:8] != b"RSD PTR ":
        buf = bytearray(fix_checksum(buf))
    _parse_or_table_error(bytes(buf))


# --------------------------------------------------------------------------
# This machine (cpuplug.acpi.virt): memory map, topology, the table set


_TEST_DSDT = t.Sdt("DSDT", b"\x10\x05\\_SB_").build()


def test_mpidr_follows_virt_gicv3_clustering() -> None:
    assert [virt.mpidr(i) for i in (0, 1, 15, 16, 17, 122, 511)] == [
        0x0,
        0x1,
        0xF,
        0x100,
        0x101,
        0x70A,
        0x1F0F,
    ]
    assert all(virt.cpu_index_of_mpidr(virt.mpidr(i)) == i for i in range(virt.MAX_CPUS))
    assert virt.cpu_index_of_mpidr(0x10) is None  # Aff0 >= 16 never used
    assert virt.cpu_index_of_mpidr(0x2000) is None  # beyond 512 vCPUs
    assert virt.cpu_index_of_mpidr(0x1_0000) is None  # Aff2 set
    with pytest.raises(UsageError):
        virt.mpidr(512)


@pytest.mark.parametrize(
    ("maxcpus", "expected"),
    [
        (1, [(0x080A_0000, 0x2_0000)]),
        (123, [(0x080A_0000, 0xF6_0000)]),
        (124, [(0x080A_0000, 0xF6_0000), (0x40_0000_0000, 0x2_0000)]),
        (512, [(0x080A_0000, 0xF6_0000), (0x40_0000_0000, 389 * 0x2_0000)]),
    ],
)
def test_gicr_regions_cover_exactly_the_frames(
    maxcpus: int, expected: list[tuple[int, int]]
) -> None:
    regions = virt.gicr_regions(maxcpus)
    assert regions == expected
    frames = {virt.gicr_frame_address(i) for i in range(maxcpus)}
    assert len(frames) == maxcpus
    for frame in frames:
        assert any(base <= frame and frame + 0x2_0000 <= base + size for base, size in regions)
    assert sum(size for _, size in regions) == maxcpus * 0x2_0000
    assert regions[-1][1] <= virt.GICR_REGION2_SIZE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus": 0, "maxcpus": 4}, "cpus must be in 1..maxcpus"),
        ({"cpus": 5, "maxcpus": 4}, "cpus must be in 1..maxcpus"),
        ({"cpus": 1, "maxcpus": 513}, "maxcpus must be in 1..512"),
        ({"cpus": 1, "maxcpus": 0}, "maxcpus must be in 1..512"),
        ({"cpus": True, "maxcpus": 4}, "cpus must be an integer"),
        ({"cpus": 1, "maxcpus": 4, "mode": "hot"}, "mode must be one of"),
        ({"cpus": 1, "maxcpus": 4, "ram_size": 1 << 20}, "ram_size"),
    ],
)
def test_machine_config_refuses_bad_shapes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(virt.MachineConfigError, match=message) as err:
        virt.MachineConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err.value, UsageError)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("smp", "cpus", "maxcpus"),
    [
        ("2", 2, 2),
        ("cpus=2,maxcpus=8", 2, 8),
        ("2,maxcpus=8", 2, 8),
        ("maxcpus=8", 8, 8),
        ("cores=8", 8, 8),
        ("cpus=3,cores=8", 3, 8),
        ("cpus=1,maxcpus=512,sockets=1,clusters=1,threads=1", 1, 512),
        (" cpus = 4 , maxcpus = 6 ", 4, 6),
    ],
)
def test_smp_parsing_like_qemu(smp: str, cpus: int, maxcpus: int) -> None:
    config = virt.MachineConfig.from_smp(smp)
    assert (config.cpus, config.maxcpus) == (cpus, maxcpus)


@pytest.mark.parametrize(
    "smp",
    [
        "",
        "0",
        "x",
        "cpus=-1",
        "cpus=2,maxcpus=1",
        "maxcpus=513",
        "cpus=1,cpus=2",
        "sockets=2,cores=4",
        "threads=2",
        "cores=4,maxcpus=8",
        "nodes=2",
        "2,3",
    ],
)
def test_smp_parsing_errors_are_one_line_usage_errors(smp: str) -> None:
    with pytest.raises(UsageError) as err:
        virt.MachineConfig.from_smp(smp)
    assert str(err.value).startswith("--smp") and "\n" not in str(err.value)


def _walk(tables: virt.MachineTables) -> list[tuple[int, t.AnyTable]]:
    def read(address: int, length: int) -> bytes:
        offset = address - tables.base_address
        assert offset >= 0 and offset + length <= len(tables.image), hex(address)
        return tables.image[offset : offset + length]

    return t.read_tables(read, tables.rsdp_address)


@pytest.mark.parametrize("mode", ["acpi", "online-offline"])
@pytest.mark.parametrize(("cpus", "maxcpus"), [(1, 1), (2, 8), (123, 124), (8, 512)])
def test_machine_tables_found_from_the_rsdp(mode: str, cpus: int, maxcpus: int) -> None:
    config = virt.MachineConfig.from_smp(f"cpus={cpus},maxcpus={maxcpus}", mode=mode)
    tables = virt.build_machine_tables(config, dsdt=_TEST_DSDT)
    found = _walk(tables)
    assert [tbl.signature for _, tbl in found] == list(virt.TABLE_ORDER)
    for address, tbl in found:
        assert address == tables.addresses[tbl.signature]
        assert tbl.build() == tables.blobs[tbl.signature]
        assert address % 16 == 0
    madt = next(tbl for _, tbl in found if isinstance(tbl, t.Madt))
    assert [g.uid for g in madt.gicc] == list(range(maxcpus))
    assert [g.mpidr for g in madt.gicc] == [virt.mpidr(i) for i in range(maxcpus)]
    assert all(g.gicr_base_address == 0 for g in madt.gicc)
    flags = [g.flags for g in madt.gicc]
    if mode == "acpi":
        assert flags == [t.GICC_ENABLED] + [t.GICC_ONLINE_CAPABLE] * (maxcpus - 1)
    else:
        assert flags == [t.GICC_ENABLED] * maxcpus
    assert madt.gicd == t.Gicd(base_address=virt.GICD_BASE, version=3)
    assert [(r.base_address, r.region_length) for r in madt.gicr] == virt.gicr_regions(maxcpus)
    assert madt.its == []


def test_machine_tables_content() -> None:
    config = virt.MachineConfig(cpus=2, maxcpus=8)
    tables = virt.build_machine_tables(config, dsdt=_TEST_DSDT)
    by_sig = {tbl.signature: tbl for _, tbl in _walk(tables)}
    fadt = by_sig["FACP"]
    assert isinstance(fadt, t.Fadt)
    assert fadt.hw_reduced and fadt.arm_boot_arch == 3 and fadt.x_dsdt == tables.addresses["DSDT"]
    assert fadt.dsdt == 0
    spcr = by_sig["SPCR"]
    assert isinstance(spcr, t.Spcr)
    assert spcr.base_address.address == virt.UART_BASE and spcr.interrupt == virt.UART_GSI
    assert spcr.interface_type == t.SPCR_INTERFACE_PL011
    gtdt = by_sig["GTDT"]
    assert isinstance(gtdt, t.Gtdt)
    assert (gtdt.secure_el1_gsiv, gtdt.nonsecure_el1_gsiv) == (29, 30)
    assert (gtdt.virtual_timer_gsiv, gtdt.nonsecure_el2_gsiv) == (27, 26)
    assert by_sig["DSDT"].build() == _TEST_DSDT
    xsdt = by_sig["XSDT"]
    assert isinstance(xsdt, t.Xsdt)
    assert tables.addresses["DSDT"] not in xsdt.entries  # the DSDT is reached via FADT only


def test_machine_tables_base_address() -> None:
    config = virt.MachineConfig(cpus=1, maxcpus=4)
    default = virt.build_machine_tables(config, dsdt=_TEST_DSDT)
    assert default.base_address == virt.RAM_BASE + virt.DEFAULT_RAM_SIZE - (2 << 20)
    assert default.rsdp_address == default.base_address
    moved = virt.build_machine_tables(config, virt.RAM_BASE + 0x1000, dsdt=_TEST_DSDT)
    assert moved.blobs["APIC"] == default.blobs["APIC"]
    assert moved.blobs["XSDT"] != default.blobs["XSDT"]
    assert {tbl.signature for _, tbl in _walk(moved)} == set(virt.TABLE_ORDER)
    with pytest.raises(virt.MachineConfigError, match="aligned"):
        virt.build_machine_tables(config, virt.RAM_BASE + 8, dsdt=_TEST_DSDT)
    with pytest.raises(virt.MachineConfigError, match="do not fit in RAM"):
        virt.build_machine_tables(config, virt.RAM_BASE - 0x1000, dsdt=_TEST_DSDT)
    with pytest.raises(virt.MachineConfigError, match="do not fit in RAM"):
        virt.build_machine_tables(
            config, virt.RAM_BASE + virt.DEFAULT_RAM_SIZE - 0x100, dsdt=_TEST_DSDT
        )


def test_machine_tables_refuse_a_broken_dsdt() -> None:
    with pytest.raises(TableError):
        virt.build_machine_tables(virt.MachineConfig(), dsdt=_TEST_DSDT[:-1])


def _small_image() -> tuple[virt.MachineTables, bytearray]:
    """A small machine's tables and a copy of their image for a test to corrupt."""
    tables = virt.build_machine_tables(virt.MachineConfig(cpus=1, maxcpus=2), dsdt=_TEST_DSDT)
    return tables, bytearray(tables.image)


def _reader(tables: virt.MachineTables, image: bytearray) -> Callable[[int, int], bytes]:
    """Guest memory over ``image`` that fails the test on a read ``read_tables`` must
    never make: one trusting a huge length, or one below the tables (address 0)."""

    def read(address: int, length: int) -> bytes:
        assert length < 1 << 20, "read_tables must not trust a length before checking it"
        offset = address - tables.base_address
        assert offset >= 0, f"read_tables read below the tables, at {address:#x}"
        return bytes(image[offset : offset + length])

    return read


def test_read_tables_refuses_implausible_lengths() -> None:
    tables, image = _small_image()
    xsdt_at = tables.addresses["XSDT"] - tables.base_address
    struct.pack_into("<I", image, xsdt_at + 4, 0xFFFF_FFF0)
    with pytest.raises(TableError, match="implausible length"):
        t.read_tables(_reader(tables, image), tables.rsdp_address)


def test_read_tables_says_a_revision_0_rsdp_has_no_xsdt() -> None:
    tables, image = _small_image()
    rsdp_at = tables.rsdp_address - tables.base_address
    image[rsdp_at : rsdp_at + 20] = t.Rsdp(revision=0).build()
    with pytest.raises(TableError, match="revision 0: no XSDT"):
        t.read_tables(_reader(tables, image), tables.rsdp_address)


def test_read_tables_refuses_a_table_address_of_0() -> None:
    tables, image = _small_image()
    xsdt_at = tables.addresses["XSDT"] - tables.base_address
    xsdt = t.Xsdt.parse(tables.blobs["XSDT"])
    patched = dataclasses.replace(xsdt, entries=(0, *xsdt.entries[1:])).build()
    image[xsdt_at : xsdt_at + len(patched)] = patched
    with pytest.raises(TableError, match="table address is 0"):
        t.read_tables(_reader(tables, image), tables.rsdp_address)


# --------------------------------------------------------------------------
# docs/contract.md §2 against literal numbers (spec-coverage audit)
#
# These read the built image byte by byte with the offsets of the ACPI structures and
# compute MPIDRs from "Aff1 = i // 16, Aff0 = i % 16" here, never with the project's
# own parsers or helpers for the same numbers: a wrong constant on both sides would
# otherwise go unnoticed (formerly tests/e2e/test_spec_coverage.py).


def _sdt(image: bytes, base: int, address: int) -> bytes:
    """One whole SDT at guest-physical ``address``, its checksum verified (§2)."""
    at = address - base
    (length,) = struct.unpack_from("<I", image, at + 4)
    table = image[at : at + length]
    assert sum(table) & 0xFF == 0, f"{table[:4]!r} checksum"
    return table


def _tables_by_signature(config: virt.MachineConfig) -> dict[str, bytes]:
    """Walk RSDP → XSDT → tables (and FADT → DSDT) by raw offsets."""
    built = virt.build_machine_tables(config)
    image, base = built.image, built.base_address
    rsdp = image[built.rsdp_address - base :][:36]
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2  # §2: RSDP revision 2
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    (xsdt_address,) = struct.unpack_from("<Q", rsdp, 24)
    xsdt = _sdt(image, base, xsdt_address)
    found = {"XSDT": xsdt}
    for (address,) in struct.iter_unpack("<Q", xsdt[36:]):
        table = _sdt(image, base, address)
        found[table[:4].decode()] = table
    (x_dsdt,) = struct.unpack_from("<Q", found["FACP"], 140)
    found["DSDT"] = _sdt(image, base, x_dsdt)
    return found


def test_xsdt_lists_fadt_madt_gtdt_and_fadt_flags_are_hw_reduced_psci_hvc() -> None:
    found = _tables_by_signature(virt.MachineConfig(cpus=1, maxcpus=4))
    assert {"FACP", "APIC", "GTDT", "DSDT"} <= set(found)
    assert set(found) <= {"XSDT", "FACP", "APIC", "GTDT", "DSDT", "SPCR"}
    fadt = found["FACP"]
    (flags,) = struct.unpack_from("<I", fadt, 112)
    assert flags & (1 << 20)  # HW_REDUCED_ACPI
    (arm_boot,) = struct.unpack_from("<H", fadt, 129)
    assert arm_boot == 0b11  # PSCI_COMPLIANT | PSCI_USE_HVC


def _madt_entries(madt: bytes) -> list[bytes]:
    entries, at = [], 44
    while at < len(madt):
        length = madt[at + 1]
        assert length >= 2
        entries.append(madt[at : at + length])
        at += length
    assert at == len(madt)
    return entries


@pytest.mark.parametrize("mode", list(HotplugMode))
def test_madt_has_a_gicc_per_possible_vcpu_and_gicr_regions_for_every_frame(
    mode: HotplugMode,
) -> None:
    # 130 possible vCPUs: past Aff1 = 0 (i >= 16) and past the first GICR region (i >= 123).
    maxcpus = 130
    madt = _tables_by_signature(virt.MachineConfig(cpus=3, maxcpus=maxcpus, mode=mode))["APIC"]
    entries = _madt_entries(madt)
    gicd = [e for e in entries if e[0] == 0x0C]
    assert len(gicd) == 1 and struct.unpack_from("<Q", gicd[0], 8)[0] == 0x0800_0000
    giccs = [e for e in entries if e[0] == 0x0B]
    assert len(giccs) == maxcpus
    for i, gicc in enumerate(giccs):
        assert len(gicc) == 80  # docs/contract.md §2: ACPI 6.5 has 82 at MADT revision 6
        uid, flags = struct.unpack_from("<II", gicc, 8)
        (gicr_base,) = struct.unpack_from("<Q", gicc, 60)
        (mpidr,) = struct.unpack_from("<Q", gicc, 68)
        assert uid == i
        assert mpidr == ((i // 16) << 8) | (i % 16), i
        assert gicr_base == 0
        if mode == "acpi":
            # vCPU 0 Enabled; every other one (cold-plugged 1 and 2 too) Online Capable only
            assert flags == (0b0001 if i == 0 else 0b1000), i
        else:
            assert flags == 0b0001, i
    assert giccs[16][68:70] == b"\x00\x01" and giccs[123][68:70] == b"\x0b\x07"
    gicrs = [struct.unpack_from("<QI", e, 4) for e in entries if e[0] == 0x0E and len(e) == 16]
    assert len(gicrs) == len([e for e in entries if e[0] == 0x0E])
    # 123 frames of 128 KiB at 0x080A_0000, the other 7 in the second region.
    assert gicrs == [(0x080A_0000, 0xF6_0000), (0x40_0000_0000, 7 * 0x2_0000)]
