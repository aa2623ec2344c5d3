"""The AML builder: every node writes the bytes the ACPI spec (and iasl/QEMU) write.

Known bytes come from the spec's grammar and from QEMU's real x86 DSDT
(``tests/data/x86-q35-cphp/DSDT.dat``), never from our own output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cpuplug.acpi.aml.builder import (
    IO,
    Acquire,
    Add,
    Arg,
    Buffer,
    DefinitionBlock,
    Device,
    Divide,
    EisaId,
    EndTag,
    Field,
    If,
    Index,
    Integer,
    Interrupt,
    LGreaterEqual,
    LLessEqual,
    LNotEqual,
    Local,
    Memory32Fixed,
    Method,
    MethodCall,
    Mutex,
    Name,
    NamedField,
    NameRef,
    Offset,
    Ones,
    Package,
    ReservedField,
    ResourceTemplate,
    Return,
    Store,
    String,
    TableIds,
    VarPackage,
    While,
    Zero,
    eisa_id_text,
    field_layout,
)
from cpuplug.acpi.aml.nodes import (
    ONES,
    Debug,
    encode_name,
    encode_pkglen,
    encode_pkglen_value,
    normalize_name,
    split_name,
)
from cpuplug.acpi.aml.resources import RawDescriptor, encode_resources, parse_resources
from cpuplug.acpi.errors import AmlError
from cpuplug.acpi.tables import Sdt

# ---------------------------------------------------------------- PkgLength


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (0, b"\x01"),
        (62, b"\x3f"),  # 62 + 1 = 63: the largest one-byte length
        (63, b"\x41\x04"),  # 63 + 2 = 65 = 0x41: two bytes, low nibble first
        (0xFFD, b"\x4f\xff"),  # 0xFFD + 2 = 0xFFF: the largest two-byte length
        (0xFFE, b"\x81\x00\x01"),  # 0xFFE + 3 = 0x1001
        (0xFFFFC, b"\x8f\xff\xff"),
        (0xFFFFD, b"\xc1\x00\x00\x01"),
    ],
)
def test_pkglen_counts_itself_and_picks_the_smallest_form(body: int, expected: bytes) -> None:
    assert encode_pkglen(body) == expected


def test_pkglen_limits() -> None:
    assert encode_pkglen_value((1 << 28) - 1) == b"\xcf\xff\xff\xff"
    with pytest.raises(AmlError):
        encode_pkglen((1 << 28) - 4)
    with pytest.raises(AmlError):
        encode_pkglen_value(-1)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CSTA", b"CSTA"),
        ("_SB", b"_SB_"),
        ("\\", b"\\\x00"),
        ("", b"\x00"),
        ("^^PRES.CPLK", b"^^\x2ePRESCPLK"),
        ("\\_SB.CPUS", b"\\\x2e_SB_CPUS"),
        ("\\_SB.PCI0.PRES.CPLK", b"\\\x2f\x04_SB_PCI0PRESCPLK"),
        ("\\_GPE._E02", b"\\\x2e_GPE_E02"),
        ("^X", b"^X___"),
    ],
)
def test_name_strings(text: str, expected: bytes) -> None:
    assert encode_name(text) == expected


def test_names_are_normalised_on_construction() -> None:
    assert NameRef("\\_sb.cpus") == NameRef("\\_SB_.CPUS")
    assert NameRef("\\_SB.CPUS").path == "\\_SB_.CPUS"
    assert split_name("^^ab.c") == ("^^", ("AB__", "C___"))
    assert normalize_name("\\") == "\\"


@pytest.mark.parametrize("bad", ["TOOLONG", "1ABC", "A-B", "\\_SB..X", "A.", "\\^A"])
def test_bad_names_raise_aml_error(bad: str) -> None:
    with pytest.raises(AmlError):
        NameRef(bad)


def test_multi_name_caps_at_255_segments() -> None:
    assert len(encode_name(".".join(["A"] * 255))) == 2 + 4 * 255
    with pytest.raises(AmlError):
        encode_name(".".join(["A"] * 256))


# ---------------------------------------------------------------- integers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (2, b"\x0a\x02"),
        (0xFF, b"\x0a\xff"),
        (0x100, b"\x0b\x00\x01"),
        (0x0CD8, b"\x0b\xd8\x0c"),
        (0x10000, b"\x0c\x00\x00\x01\x00"),
        (0x1_0000_0000, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
        (ONES, b"\xff"),
    ],
)
def test_integers_take_the_smallest_encoding(value: int, expected: bytes) -> None:
    assert Integer(value).encode() == expected


def test_integer_keeps_a_non_canonical_form() -> None:
    wide = Integer(5, "dword")
    assert wide.encode() == b"\x0c\x05\x00\x00\x00"
    assert wide != Integer(5)
    assert Integer(5) == Integer(5, "byte")  # the default form is stored
    assert Integer(ONES, "qword").encode() == b"\x0e" + b"\xff" * 8


@pytest.mark.parametrize(
    ("value", "encoding"),
    [(256, "byte"), (1 << 64, None), (-1, None), (2, "one"), (1, "zero"), (3, "bogus")],
)
def test_integer_out_of_range_raises(value: int, encoding: str | None) -> None:
    with pytest.raises(AmlError):
        Integer(value, encoding)  # type: ignore[arg-type]


def test_eisa_id_matches_qemu() -> None:
    # QEMU's x86 DSDT: Name (_HID, EisaId ("PNP0A06")) -> 0C 41 D0 0A 06
    assert EisaId("PNP0A06").encode() == bytes.fromhex("0c41d00a06")
    assert EisaId("PNP0A05").value == 84594753  # _CID of \_SB.CPUS in the vector
    assert eisa_id_text(EisaId("PNP0C0C").value) == "PNP0C0C"
    with pytest.raises(AmlError):
        EisaId("pnp0a06")


# ---------------------------------------------------------------- operators and blocks


def test_expression_ops_write_nullname_for_a_missing_target() -> None:
    assert Add(Local(0), Integer(5)).encode() == bytes.fromhex("72600a0500")
    assert Add(Local(0), Integer(5), Local(1)).encode() == bytes.fromhex("72600a0561")
    assert Divide(Arg(0), Integer(10), None, Local(2)).encode() == bytes.fromhex("78680a0a0062")
    assert Store(Local(3), Index(NameRef("CNEW"), Local(1))).encode() == bytes.fromhex(
        "706388434e45576100"
    )
    assert Store(Local(3), Debug()).encode() == bytes.fromhex("70635b31")


def test_lnot_forms() -> None:
    assert LNotEqual(Arg(0), Zero).encode() == bytes.fromhex("92936800")
    assert LLessEqual(Arg(0), Zero).encode() == bytes.fromhex("92946800")
    assert LGreaterEqual(Arg(0), Zero).encode() == bytes.fromhex("92956800")


def test_if_carries_its_else() -> None:
    one = Integer(1)
    plain = If(Arg(0), (Return(one),))
    assert plain.encode() == bytes.fromhex("a00468a401")
    with_else = If(Arg(0), (Return(one),), (Return(Zero),))
    assert with_else.encode() == bytes.fromhex("a00468a401" + "a103a400")
    assert If(Arg(0), (), ()).encode() == bytes.fromhex("a00268a101")


def test_method_flags_and_call() -> None:
    m = Method("_OST", 3, True, 0, (MethodCall("COST", (Zero, Arg(0), Arg(1), Arg(2))),))
    # QEMU's C000._OST: 14 0E 5F 4F 53 54 0B 43 4F 53 54 00 68 69 6A
    assert m.encode() == bytes.fromhex("140e5f4f53540b434f53540068696a")
    assert Method("X", 1, False, 15).flags == 0xF1


def test_acquire_mutex_and_package() -> None:
    assert Acquire(NameRef("CPLK")).encode() == bytes.fromhex("5b2343504c4bffff")
    assert Mutex("CPLK", 0).encode() == bytes.fromhex("5b0143504c4b00")
    # QEMU's CSCN: Name (CNEW, Package (0xFF) {}) -> 08 43 4E 45 57 12 02 FF
    assert Name("CNEW", Package((), 255)).encode() == bytes.fromhex("08434e4557" + "1202ff")
    assert VarPackage(Arg(0), (Zero,)).encode() == bytes.fromhex("13036800")


def test_buffer_and_string() -> None:
    assert Buffer(b"\x01\x02").encode() == bytes.fromhex("11050a020102")
    assert Buffer(b"", Integer(16)).encode() == bytes.fromhex("11030a10")
    assert String("GED").encode() == b"\x0dGED\x00"
    with pytest.raises(AmlError):
        String("caf\u00e9")


def test_while_encoding() -> None:
    loop = While(LNotEqual(Local(0), Zero), (Store(Zero, Local(0)),))
    assert loop.encode() == bytes.fromhex("a2" + "08" + "92936000" + "700060")


def test_field_from_asl_like_layout(vectors: Path) -> None:
    # QEMU's PRES first field: Offset(4), CPEN..CEJF 1 bit each, Offset(5), CCMD 8
    elements = field_layout(
        [
            Offset(4),
            ("CPEN", 1),
            ("CINS", 1),
            ("CRMV", 1),
            ("CEJ0", 1),
            ("CEJF", 1),
            Offset(5),
            ("CCMD", 8),
        ]
    )
    assert elements[0] == ReservedField(32) and elements[-2] == ReservedField(3)
    field = Field("PRST", elements, access_type=1, update_rule=2)
    assert field.encode() in (vectors / "x86-q35-cphp/DSDT.dat").read_bytes()
    with pytest.raises(AmlError):
        field_layout([("CSEL", 32), Offset(2)])


def test_field_rejects_reserved_flags() -> None:
    with pytest.raises(AmlError):
        Field("R", (NamedField("A", 1),), access_type=6)
    with pytest.raises(AmlError):
        Field("R", (NamedField("A", 1),), update_rule=3)
    with pytest.raises(AmlError):
        NamedField("\\ABC", 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Local(8),
        lambda: Arg(7),
        lambda: Method("X", 8),
        lambda: Package((Zero, Zero), 1),
        lambda: MethodCall("X", (Zero,) * 8),
        lambda: Store(5, Local(0)),  # type: ignore[arg-type]
        lambda: Mutex("M", 16),
    ],
)
def test_invalid_nodes_cannot_be_built(make: object) -> None:
    with pytest.raises(AmlError):
        make()  # type: ignore[operator]


def test_nodes_are_immutable_values() -> None:
    a = Device("C000", (Name("_UID", Zero),))
    b = Device("C000", [Name("_UID", Integer(0))])  # type: ignore[arg-type]
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "C001"  # type: ignore[misc]


# ---------------------------------------------------------------- resource templates


def test_resource_descriptors_match_iasl() -> None:
    # Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {41}
    assert Interrupt((41,), edge=True).encode() == bytes.fromhex("890600030129000000")
    assert Memory32Fixed(0x0A000000, 0x1000).encode() == bytes.fromhex("860900010000000a00100000")
    # QEMU's PRES._CRS on x86: IO (Decode16, 0x0CD8, 0x0CD8, 0x01, 0x0C) + end tag
    template = ResourceTemplate(IO(0x0CD8, 0x0CD8, 1, 12))
    assert template.encode() == bytes.fromhex("110d0a0a" + "4701d80cd80c010c" + "7900")


def test_resource_parse_round_trip_and_checksum() -> None:
    descs = (Memory32Fixed(0x09000000, 0x1000), Interrupt((33, 34), shared=True), IO(1, 2, 3, 4))
    raw = encode_resources(descs)
    parsed = parse_resources(raw)
    assert tuple(parsed[:-1]) == descs and parsed[-1] == EndTag(0)
    summed = encode_resources(descs, checksum=True)
    assert sum(summed) & 0xFF == 0 and parse_resources(summed)[:-1] == list(descs)
    unknown = bytes.fromhex("222000") + raw  # IRQNoFlags(){5}: kept verbatim
    assert parse_resources(unknown)[0] == RawDescriptor(bytes.fromhex("222000"))
    assert encode_resources(tuple(parse_resources(unknown))) == unknown


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("860900"),  # truncated large descriptor
        bytes.fromhex("4701d80c"),  # truncated small descriptor
        bytes.fromhex("4701d80cd80c010c"),  # no end tag
        bytes.fromhex("4701d80cd80c010c7901"),  # wrong non-zero checksum
        b"\x86",
    ],
)
def test_bad_resource_templates_raise(raw: bytes) -> None:
    with pytest.raises(AmlError):
        parse_resources(raw)


# ---------------------------------------------------------------- tables


def test_definition_block_header() -> None:
    block = DefinitionBlock("SSDT", (Name("X", Ones),), 1, TableIds(oem_id="CPUPLG"))
    raw = block.encode()
    assert raw[:4] == b"SSDT" and int.from_bytes(raw[4:8], "little") == len(raw) == 36 + 6
    assert raw[8] == 1 and sum(raw) & 0xFF == 0 and raw[10:16] == b"CPUPLG"
    assert raw[36:] == block.aml() == bytes.fromhex("0858" + "5f5f5f" + "ff")
    assert Sdt.parse(raw).body == raw[36:]
