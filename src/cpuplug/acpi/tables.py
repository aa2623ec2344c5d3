"""Fixed-layout ACPI tables: RSDP, XSDT, FADT, MADT, GTDT, SPCR and the SDT header.

Each binary structure is declared once, as an ordered list of ``(name, kind)``
fields (a :class:`Layout`, in the spirit of pyelftools' struct declarations), and
both directions are derived from that one list: ``build()`` packs a dataclass
into bytes, ``parse()`` unpacks bytes into the same dataclass. A field declared
once cannot disagree between the writer (the VMM) and the reader (the guest).

Rules every table here follows:

* Build always writes the right ``Length`` and checksum(s); the dataclasses do
  not carry them, so a caller cannot get them wrong.
* Parse checks the length field against the bytes given and the checksum(s),
  and bounds-checks every subtable. Anything malformed raises
  :class:`~cpuplug.acpi.errors.TableError` naming the table and the byte offset;
  no other exception escapes :func:`parse_table`.
* Every byte of a parsed table lands in some field (reserved fields and unknown
  tails included), so ``parse(data).build() == data`` for any table that parses:
  a reader that rewrites a table never silently changes it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeAlias

from cpuplug.acpi.errors import TableError

# --------------------------------------------------------------------------
# Layouts

_INT_KINDS = {"u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "u64": ("Q", 8)}

Kind: TypeAlias = "str | type[Record]"
"""A field kind: ``u8 u16 u32 u64`` (int), ``cN`` (N-byte ASCII id as ``str``),
``bN`` (N raw bytes), or a :class:`Record` subclass (a nested structure)."""


@dataclass(frozen=True)
class _Field:
    name: str
    kind: Kind
    offset: int
    size: int


class Layout:
    """An ordered, little-endian binary layout, declared as ``(name, kind)`` pairs.

    From the declaration it derives one :class:`struct.Struct` (so packing and
    unpacking are a single C call each) and the offset of every field (so an
    error can name the byte where a bad value lives).
    """

    name: str
    codes: str
    size: int

    def __init__(self, name: str, spec: Sequence[tuple[str, Kind]]) -> None:
        self.name = name
        codes: list[str] = []
        self.fields: list[_Field] = []
        offset = 0
        for fname, kind in spec:
            if isinstance(kind, str):
                if kind in _INT_KINDS:
                    code, size = _INT_KINDS[kind]
                elif kind[0] in "cb" and kind[1:].isdigit():
                    size = int(kind[1:])
                    code = f"{size}s"
                else:
                    raise ValueError(f"{name}.{fname}: unknown kind {kind!r}")
            else:
                code = kind.LAYOUT.codes
                size = kind.LAYOUT.size
            codes.append(code)
            self.fields.append(_Field(fname, kind, offset, size))
            offset += size
        self.codes = "".join(codes)
        self._struct = struct.Struct("<" + self.codes)
        self.size = self._struct.size
        self.names = frozenset(f.name for f in self.fields)
        assert self.size == offset, f"{name}: layout is not packed"

    def offset_of(self, name: str) -> int:
        """Byte offset of field ``name`` from the start of the structure."""
        for f in self.fields:
            if f.name == name:
                return f.offset
        raise KeyError(name)

    def _flatten(
        self, values: Mapping[str, object], table: str, base: int, out: list[object]
    ) -> None:
        for f in self.fields:
            value = values[f.name]
            at = base + f.offset
            if isinstance(f.kind, str) and f.kind in _INT_KINDS:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TableError(
                        table, at, f"{self.name}.{f.name} must be an int, got {value!r}"
                    )
                if not 0 <= value < 1 << (8 * f.size):
                    raise TableError(
                        table, at, f"{self.name}.{f.name}={value:#x} does not fit {f.kind}"
                    )
                out.append(value)
            elif isinstance(f.kind, str) and f.kind[0] == "c":
                if not isinstance(value, str):
                    raise TableError(
                        table, at, f"{self.name}.{f.name} must be a str, got {value!r}"
                    )
                try:
                    raw = value.encode("latin-1")
                except UnicodeEncodeError:
                    raise TableError(
                        table, at, f"{self.name}.{f.name}={value!r} is not 8-bit text"
                    ) from None
                if len(raw) > f.size:
                    raise TableError(
                        table, at, f"{self.name}.{f.name}={value!r} is longer than {f.size} bytes"
                    )
                out.append(raw.ljust(f.size, b" "))
            elif isinstance(f.kind, str):
                if not isinstance(value, bytes) or len(value) != f.size:
                    raise TableError(
                        table, at, f"{self.name}.{f.name} must be {f.size} bytes, got {value!r}"
                    )
                out.append(value)
            else:
                if not isinstance(value, f.kind):
                    raise TableError(table, at, f"{self.name}.{f.name} must be a {f.kind.__name__}")
                f.kind.LAYOUT._flatten(value.values(), table, at, out)

    def pack(self, values: Mapping[str, object], table: str) -> bytes:
        """The bytes of ``values`` (one entry per declared field); bad values raise TableError."""
        flat: list[object] = []
        self._flatten(values, table, 0, flat)
        return self._struct.pack(*flat)

    def _rebuild(self, flat: Sequence[object], pos: int) -> tuple[dict[str, Any], int]:
        values: dict[str, Any] = {}
        for f in self.fields:
            if isinstance(f.kind, str):
                item = flat[pos]
                pos += 1
                if f.kind[0] == "c":
                    assert isinstance(item, bytes)
                    values[f.name] = item.decode("latin-1")
                else:
                    values[f.name] = item
            else:
                sub, pos = f.kind.LAYOUT._rebuild(flat, pos)
                values[f.name] = f.kind(**sub)
        return values, pos

    def unpack(self, data: bytes, offset: int, table: str) -> dict[str, Any]:
        """Field values read at ``offset``; too few bytes raise TableError at ``offset``."""
        if offset < 0 or offset + self.size > len(data):
            raise TableError(
                table,
                offset,
                f"{self.name} needs {self.size} bytes, only {max(0, len(data) - offset)} left",
            )
        values, _ = self._rebuild(self._struct.unpack_from(data, offset), 0)
        return values


class Record:
    """Base of every dataclass with a :class:`Layout`.

    ``LAYOUT`` names every byte; a dataclass field exists for every layout field
    except the ones in ``COMPUTED`` (length, checksum, type...), which ``build``
    fills in. Short ASCII ids are padded with spaces on construction, so an
    object equals the one parsed back from its bytes.
    """

    LAYOUT: ClassVar[Layout]
    COMPUTED: ClassVar[frozenset[str]] = frozenset()

    SEQUENCES: ClassVar[tuple[str, ...]] = ()
    """Tuple-typed fields; a list given for one is stored as a tuple (immutability)."""

    def __post_init__(self) -> None:
        for name, size in _text_fields(type(self)):
            value = getattr(self, name, None)
            if isinstance(value, str) and len(value) < size:
                object.__setattr__(self, name, value.ljust(size))
        for name in self.SEQUENCES:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def values(self) -> dict[str, object]:
        """The layout's field values held by this object (computed ones excluded)."""
        return {
            f.name: getattr(self, f.name) for f in self.LAYOUT.fields if f.name not in self.COMPUTED
        }


_TEXT_FIELDS: dict[type[Record], tuple[tuple[str, int], ...]] = {}


def _text_fields(cls: type[Record]) -> tuple[tuple[str, int], ...]:
    """``(name, width)`` of a record's ASCII-id fields, computed once per class."""
    found = _TEXT_FIELDS.get(cls)
    if found is None:
        found = tuple(
            (f.name, f.size)
            for f in cls.LAYOUT.fields
            if isinstance(f.kind, str) and f.kind[0] == "c" and f.name not in cls.COMPUTED
        )
        _TEXT_FIELDS[cls] = found
    return found


# --------------------------------------------------------------------------
# Generic Address Structure and the standard header


SPACE_SYSTEM_MEMORY = 0
SPACE_SYSTEM_IO = 1
ACCESS_UNDEFINED, ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD, ACCESS_QWORD = range(5)


@dataclass(frozen=True)
class GenericAddress(Record):
    """ACPI Generic Address Structure (12 bytes): where a register lives."""

    LAYOUT = Layout(
        "GAS",
        [
            ("space_id", "u8"),
            ("bit_width", "u8"),
            ("bit_offset", "u8"),
            ("access_size", "u8"),
            ("address", "u64"),
        ],
    )

    space_id: int = 0
    bit_width: int = 0
    bit_offset: int = 0
    access_size: int = 0
    address: int = 0


@dataclass(frozen=True)
class TableIds(Record):
    """The identification fields of every SDT header (OEM and creator ids, revisions)."""

    LAYOUT = Layout(
        "ids",
        [
            ("oem_id", "c6"),
            ("oem_table_id", "c8"),
            ("oem_revision", "u32"),
            ("creator_id", "c4"),
            ("creator_revision", "u32"),
        ],
    )

    oem_id: str = "CPUPLG"
    oem_table_id: str = "CPUPLUG"
    oem_revision: int = 1
    creator_id: str = "CPLG"
    creator_revision: int = 1


HEADER_SIZE = 36
_HEADER: list[tuple[str, Kind]] = [
    ("signature", "c4"),
    ("length", "u32"),
    ("revision", "u8"),
    ("checksum", "u8"),
    ("ids", TableIds),
]
_LENGTH_AT = 4
_CHECKSUM_AT = 9


def checksum_ok(data: bytes) -> bool:
    """True when the bytes sum to 0 mod 256, as every ACPI checksum demands."""
    return sum(data) & 0xFF == 0


def _fix_checksum(buf: bytearray, at: int, end: int) -> None:
    buf[at] = 0
    buf[at] = -sum(buf[:end]) & 0xFF


class _SdtBase(Record):
    """What every system description table shares: the 36-byte header and a body.

    Subclasses declare ``LAYOUT`` = header + their fixed fields and say how the
    bytes after the fixed part (``_tail``) map to fields.
    """

    COMPUTED = frozenset({"signature", "length", "checksum"})

    def _sig(self) -> str:
        raise NotImplementedError

    def _tail(self) -> bytes:
        return b""

    def build(self) -> bytes:
        """The table's bytes, with Length and Checksum filled in."""
        values = self.values()
        values.update(signature=self._sig(), length=0, checksum=0)
        buf = bytearray(self.LAYOUT.pack(values, self._sig()))
        buf += self._tail()
        if len(buf) >= 1 << 32:
            raise TableError(self._sig(), _LENGTH_AT, "table exceeds 4 GiB")
        struct.pack_into("<I", buf, _LENGTH_AT, len(buf))
        _fix_checksum(buf, _CHECKSUM_AT, len(buf))
        return bytes(buf)

    @classmethod
    def _split(cls, data: bytes, signature: str) -> tuple[dict[str, Any], bytes]:
        """The fixed part's values (computed ones dropped) and the bytes after it."""
        values = cls.LAYOUT.unpack(data, 0, signature)
        for name in cls.COMPUTED:
            del values[name]
        return values, data[cls.LAYOUT.size :]


class Table(_SdtBase):
    """A table with a fixed signature and layout (XSDT, FADT, MADT, GTDT, SPCR)."""

    SIGNATURE: ClassVar[str]

    @property
    def signature(self) -> str:
        return self.SIGNATURE

    def _sig(self) -> str:
        return self.SIGNATURE

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        values, tail = cls._split(data, cls.SIGNATURE)
        if tail:
            raise TableError(
                cls.SIGNATURE, cls.LAYOUT.size, f"{len(tail)} unexpected bytes after the table"
            )
        return cls(**values)

    @classmethod
    def parse(cls, data: bytes, *, verify_checksum: bool = True) -> Self:
        """Parse one table of this type; see :func:`parse_table` for the checks."""
        data = bytes(data)
        signature = _check_sdt(data, verify_checksum)
        if signature != cls.SIGNATURE:
            raise TableError(signature, 0, f"expected a {cls.SIGNATURE} table")
        return cls._from_bytes(data)


def _check_sdt(data: bytes, verify_checksum: bool) -> str:
    signature = data[:4].decode("latin-1") if len(data) >= 4 else "????"
    if len(data) < HEADER_SIZE:
        raise TableError(
            signature, len(data), f"only {len(data)} bytes, a table header needs {HEADER_SIZE}"
        )
    (length,) = struct.unpack_from("<I", data, _LENGTH_AT)
    if length != len(data):
        raise TableError(
            signature, _LENGTH_AT, f"length field says {length}, got {len(data)} bytes"
        )
    if verify_checksum and not checksum_ok(data):
        raise TableError(
            signature, _CHECKSUM_AT, f"bad checksum (bytes sum to {sum(data) & 0xFF:#04x}, not 0)"
        )
    return signature


# --------------------------------------------------------------------------
# DSDT / SSDT and any table we have no layout for


@dataclass(frozen=True)
class Sdt(_SdtBase):
    """A table known only by its header: DSDT and SSDT (``body`` = AML) or unknown ones."""

    LAYOUT = Layout("SDT", _HEADER)

    signature: str
    body: bytes = b""
    revision: int = 2
    ids: TableIds = field(default_factory=TableIds)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.signature, str) or len(self.signature) != 4:
            raise TableError(str(self.signature), 0, "a table signature is exactly 4 characters")

    def _sig(self) -> str:
        return self.signature

    def values(self) -> dict[str, object]:
        return {"revision": self.revision, "ids": self.ids}

    def _tail(self) -> bytes:
        return self.body

    @classmethod
    def _from_bytes(cls, data: bytes) -> Sdt:
        signature = data[:4].decode("latin-1")
        values, tail = cls._split(data, signature)
        return cls(signature, tail, **values)

    @classmethod
    def parse(cls, data: bytes, *, verify_checksum: bool = True) -> Sdt:
        """Parse any table as header + body (e.g. a DSDT)."""
        data = bytes(data)
        _check_sdt(data, verify_checksum)
        return cls._from_bytes(data)


def aml_table(signature: str, body: bytes, **kw: Any) -> Sdt:
    """A DSDT/SSDT around an AML body (convenience for builders of definition blocks)."""
    return Sdt(signature, body, **kw)


# --------------------------------------------------------------------------
# RSDP


@dataclass(frozen=True)
class Rsdp(Record):
    """Root System Description Pointer, revision 2 (36 bytes; revision 0 is 20 bytes).

    Not an SDT: it has its own signature ``"RSD PTR "``, a checksum over the first
    20 bytes and an extended checksum over all of them. Named ``"RSDP"`` here.
    """

    SIGNATURE: ClassVar[str] = "RSDP"
    MAGIC: ClassVar[bytes] = b"RSD PTR "
    V1_SIZE: ClassVar[int] = 20
    COMPUTED = frozenset({"magic", "checksum", "length", "extended_checksum"})
    LAYOUT = Layout(
        "RSDP",
        [
            ("magic", "b8"),
            ("checksum", "u8"),
            ("oem_id", "c6"),
            ("revision", "u8"),
            ("rsdt_address", "u32"),
            ("length", "u32"),
            ("xsdt_address", "u64"),
            ("extended_checksum", "u8"),
            ("reserved", "b3"),
        ],
    )

    xsdt_address: int = 0
    oem_id: str = "CPUPLG"
    revision: int = 2
    rsdt_address: int = 0
    reserved: bytes = b"\0\0\0"

    @property
    def signature(self) -> str:
        return self.SIGNATURE

    def build(self) -> bytes:
        values = self.values()
        values.update(magic=self.MAGIC, checksum=0, length=self.LAYOUT.size, extended_checksum=0)
        buf = bytearray(self.LAYOUT.pack(values, "RSDP"))
        if self.revision < 2:
            if self.xsdt_address or self.reserved != b"\0\0\0":
                raise TableError("RSDP", 16, "a revision 0/1 RSDP has no XSDT address")
            buf = buf[: self.V1_SIZE]
        _fix_checksum(buf, 8, self.V1_SIZE)
        if self.revision >= 2:
            _fix_checksum(buf, 32, len(buf))
        return bytes(buf)

    @classmethod
    def parse(cls, data: bytes, *, verify_checksum: bool = True) -> Rsdp:
        data = bytes(data)
        if data[:8] != cls.MAGIC:
            raise TableError("RSDP", 0, "signature is not 'RSD PTR '")
        if len(data) < cls.V1_SIZE:
            raise TableError("RSDP", len(data), f"only {len(data)} bytes, RSDP needs 20")
        if verify_checksum and not checksum_ok(data[: cls.V1_SIZE]):
            raise TableError("RSDP", 8, "bad checksum over the first 20 bytes")
        revision = data[15]
        if revision < 2:
            if len(data) != cls.V1_SIZE:
                raise TableError("RSDP", cls.V1_SIZE, "a revision 0 RSDP is exactly 20 bytes")
            values = cls.LAYOUT.unpack(data + bytes(16), 0, "RSDP")
        else:
            values = cls.LAYOUT.unpack(data, 0, "RSDP")
            if values["length"] != len(data) or len(data) != cls.LAYOUT.size:
                raise TableError(
                    "RSDP", 20, f"length field says {values['length']}, got {len(data)} bytes"
                )
            if verify_checksum and not checksum_ok(data):
                raise TableError("RSDP", 32, "bad extended checksum")
        for name in cls.COMPUTED:
            del values[name]
        return cls(**values)


# --------------------------------------------------------------------------
# XSDT


@dataclass(frozen=True)
class Xsdt(Table):
    """Extended System Description Table: 64-bit addresses of the other tables."""

    SIGNATURE = "XSDT"
    LAYOUT = Layout("XSDT", _HEADER)

    SEQUENCES = ("entries",)

    entries: tuple[int, ...] = ()
    revision: int = 1
    ids: TableIds = field(default_factory=TableIds)

    def _tail(self) -> bytes:
        for i, address in enumerate(self.entries):
            if not 0 <= address < 1 << 64:
                raise TableError("XSDT", HEADER_SIZE + 8 * i, f"address {address:#x} is not u64")
        return struct.pack(f"<{len(self.entries)}Q", *self.entries)

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        values, tail = cls._split(data, "XSDT")
        if len(tail) % 8:
            raise TableError(
                "XSDT", HEADER_SIZE, f"entry area of {len(tail)} bytes is not 8-byte entries"
            )
        return cls(entries=struct.unpack(f"<{len(tail) // 8}Q", tail), **values)


# --------------------------------------------------------------------------
# FADT

FADT_HW_REDUCED_ACPI = 1 << 20
ARM_PSCI_COMPLIANT = 1 << 0
ARM_PSCI_USE_HVC = 1 << 1

_FADT_FIELDS: list[tuple[str, Kind]] = [
    ("firmware_ctrl", "u32"),
    ("dsdt", "u32"),
    ("reserved0", "u8"),
    ("preferred_pm_profile", "u8"),
    ("sci_int", "u16"),
    ("smi_cmd", "u32"),
    ("acpi_enable", "u8"),
    ("acpi_disable", "u8"),
    ("s4bios_req", "u8"),
    ("pstate_cnt", "u8"),
    ("pm1a_evt_blk", "u32"),
    ("pm1b_evt_blk", "u32"),
    ("pm1a_cnt_blk", "u32"),
    ("pm1b_cnt_blk", "u32"),
    ("pm2_cnt_blk", "u32"),
    ("pm_tmr_blk", "u32"),
    ("gpe0_blk", "u32"),
    ("gpe1_blk", "u32"),
    ("pm1_evt_len", "u8"),
    ("pm1_cnt_len", "u8"),
    ("pm2_cnt_len", "u8"),
    ("pm_tmr_len", "u8"),
    ("gpe0_blk_len", "u8"),
    ("gpe1_blk_len", "u8"),
    ("gpe1_base", "u8"),
    ("cst_cnt", "u8"),
    ("p_lvl2_lat", "u16"),
    ("p_lvl3_lat", "u16"),
    ("flush_size", "u16"),
    ("flush_stride", "u16"),
    ("duty_offset", "u8"),
    ("duty_width", "u8"),
    ("day_alrm", "u8"),
    ("mon_alrm", "u8"),
    ("century", "u8"),
    ("iapc_boot_arch", "u16"),
    ("reserved1", "u8"),
    ("flags", "u32"),
    ("reset_reg", GenericAddress),
    ("reset_value", "u8"),
    ("arm_boot_arch", "u16"),
    ("minor_version", "u8"),
    ("x_firmware_ctrl", "u64"),
    ("x_dsdt", "u64"),
    ("x_pm1a_evt_blk", GenericAddress),
    ("x_pm1b_evt_blk", GenericAddress),
    ("x_pm1a_cnt_blk", GenericAddress),
    ("x_pm1b_cnt_blk", GenericAddress),
    ("x_pm2_cnt_blk", GenericAddress),
    ("x_pm_tmr_blk", GenericAddress),
    ("x_gpe0_blk", GenericAddress),
    ("x_gpe1_blk", GenericAddress),
    ("sleep_control_reg", GenericAddress),
    ("sleep_status_reg", GenericAddress),
    ("hypervisor_vendor_id", "u64"),
]

_NO_REG = GenericAddress()


@dataclass(frozen=True)
class Fadt(Table):
    """Fixed ACPI Description Table, ACPI 6.5 layout (revision 6.5, 276 bytes).

    Defaults describe this machine: hardware-reduced ACPI (no PM blocks, no
    GPEs, no FACS) and PSCI over HVC for CPU power. Older, shorter FADTs parse
    too: ``legacy_length`` then records their size, and the missing fields read
    as zero (ACPI defines every later field as an extension at the end).
    """

    SIGNATURE = "FACP"
    SIZE: ClassVar[int] = 276
    LAYOUT = Layout("FADT", [*_HEADER, *_FADT_FIELDS])

    x_dsdt: int = 0
    flags: int = FADT_HW_REDUCED_ACPI
    arm_boot_arch: int = ARM_PSCI_COMPLIANT | ARM_PSCI_USE_HVC
    revision: int = 6
    minor_version: int = 5
    ids: TableIds = field(default_factory=TableIds)
    firmware_ctrl: int = 0
    dsdt: int = 0
    reserved0: int = 0
    preferred_pm_profile: int = 0
    sci_int: int = 0
    smi_cmd: int = 0
    acpi_enable: int = 0
    acpi_disable: int = 0
    s4bios_req: int = 0
    pstate_cnt: int = 0
    pm1a_evt_blk: int = 0
    pm1b_evt_blk: int = 0
    pm1a_cnt_blk: int = 0
    pm1b_cnt_blk: int = 0
    pm2_cnt_blk: int = 0
    pm_tmr_blk: int = 0
    gpe0_blk: int = 0
    gpe1_blk: int = 0
    pm1_evt_len: int = 0
    pm1_cnt_len: int = 0
    pm2_cnt_len: int = 0
    pm_tmr_len: int = 0
    gpe0_blk_len: int = 0
    gpe1_blk_len: int = 0
    gpe1_base: int = 0
    cst_cnt: int = 0
    p_lvl2_lat: int = 0
    p_lvl3_lat: int = 0
    flush_size: int = 0
    flush_stride: int = 0
    duty_offset: int = 0
    duty_width: int = 0
    day_alrm: int = 0
    mon_alrm: int = 0
    century: int = 0
    iapc_boot_arch: int = 0
    reserved1: int = 0
    reset_reg: GenericAddress = _NO_REG
    reset_value: int = 0
    x_firmware_ctrl: int = 0
    x_pm1a_evt_blk: GenericAddress = _NO_REG
    x_pm1b_evt_blk: GenericAddress = _NO_REG
    x_pm1a_cnt_blk: GenericAddress = _NO_REG
    x_pm1b_cnt_blk: GenericAddress = _NO_REG
    x_pm2_cnt_blk: GenericAddress = _NO_REG
    x_pm_tmr_blk: GenericAddress = _NO_REG
    x_gpe0_blk: GenericAddress = _NO_REG
    x_gpe1_blk: GenericAddress = _NO_REG
    sleep_control_reg: GenericAddress = _NO_REG
    sleep_status_reg: GenericAddress = _NO_REG
    hypervisor_vendor_id: int = 0
    legacy_length: int | None = None
    extra: bytes = b""

    @property
    def hw_reduced(self) -> bool:
        return bool(self.flags & FADT_HW_REDUCED_ACPI)

    @property
    def dsdt_address(self) -> int:
        """The DSDT address a guest uses: X_DSDT when set, else the 32-bit DSDT field."""
        return self.x_dsdt or self.dsdt

    def _tail(self) -> bytes:
        return self.extra

    def build(self) -> bytes:
        full = super().build()
        if self.legacy_length is None:
            return full
        if self.extra:
            raise TableError("FACP", self.SIZE, "a short (legacy) FADT cannot have extra bytes")
        if not HEADER_SIZE <= self.legacy_length < self.SIZE:
            raise TableError("FACP", _LENGTH_AT, f"legacy_length {self.legacy_length} out of range")
        cut = bytearray(full[: self.legacy_length])
        if any(full[self.legacy_length :]):
            nonzero = next(i for i in range(self.legacy_length, self.SIZE) if full[i])
            raise TableError("FACP", nonzero, "field set beyond the legacy FADT length")
        struct.pack_into("<I", cut, _LENGTH_AT, len(cut))
        _fix_checksum(cut, _CHECKSUM_AT, len(cut))
        return bytes(cut)

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        legacy: int | None = None
        if len(data) < cls.SIZE:
            legacy = len(data)
            data = data + bytes(cls.SIZE - len(data))
        values, tail = cls._split(data, "FACP")
        return cls(legacy_length=legacy, extra=tail, **values)


# --------------------------------------------------------------------------
# MADT

GICC_ENABLED = 1 << 0
GICC_PERF_IRQ_EDGE = 1 << 1
GICC_VGIC_IRQ_EDGE = 1 << 2
GICC_ONLINE_CAPABLE = 1 << 3
GICC_NON_COHERENT = 1 << 4


class MadtEntry(Record):
    """One MADT interrupt-controller structure (``type``, ``length``, body).

    Known types have a layout; a longer entry than the layout (a newer ACPI
    revision) keeps its extra bytes in ``extra`` so it round-trips exactly.
    """

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    COMPUTED = frozenset({"type", "length"})

    @property
    def type(self) -> int:
        return self.TYPE

    def _extra(self) -> bytes:
        extra = getattr(self, "extra", b"")
        assert isinstance(extra, bytes)
        return extra

    def build(self, table: str = "APIC") -> bytes:
        extra = self._extra()
        length = self.LAYOUT.size + len(extra)
        if length > 0xFF:
            raise TableError(table, 1, f"{self.NAME} subtable of {length} bytes exceeds 255")
        values = self.values()
        values.update(type=self.TYPE, length=length)
        return self.LAYOUT.pack(values, table) + extra

    @classmethod
    def parse_entry(cls, data: bytes, offset: int, length: int) -> Self:
        values = cls.LAYOUT.unpack(data, offset, "APIC")
        del values["type"], values["length"]
        extra = data[offset + cls.LAYOUT.size : offset + length]
        if extra:
            values["extra"] = extra
        return cls(**values)


def _entry_layout(name: str, body: list[tuple[str, Kind]]) -> Layout:
    return Layout(name, [("type", "u8"), ("length", "u8"), *body])


@dataclass(frozen=True)
class Gicc(MadtEntry):
    """GIC CPU interface (type 0x0B, 80 bytes): one per possible CPU."""

    TYPE = 0x0B
    NAME = "GICC"
    LAYOUT = _entry_layout(
        "GICC",
        [
            ("reserved0", "u16"),
            ("cpu_interface_number", "u32"),
            ("uid", "u32"),
            ("flags", "u32"),
            ("parking_version", "u32"),
            ("performance_gsiv", "u32"),
            ("parked_address", "u64"),
            ("base_address", "u64"),
            ("gicv_base_address", "u64"),
            ("gich_base_address", "u64"),
            ("vgic_maintenance_gsiv", "u32"),
            ("gicr_base_address", "u64"),
            ("mpidr", "u64"),
            ("efficiency_class", "u8"),
            ("reserved1", "u8"),
            ("spe_overflow_gsiv", "u16"),
        ],
    )

    uid: int
    mpidr: int
    flags: int
    cpu_interface_number: int = 0
    reserved0: int = 0
    parking_version: int = 0
    performance_gsiv: int = 0
    parked_address: int = 0
    base_address: int = 0
    gicv_base_address: int = 0
    gich_base_address: int = 0
    vgic_maintenance_gsiv: int = 0
    gicr_base_address: int = 0
    efficiency_class: int = 0
    reserved1: int = 0
    spe_overflow_gsiv: int = 0
    extra: bytes = b""

    @property
    def enabled(self) -> bool:
        return bool(self.flags & GICC_ENABLED)

    @property
    def online_capable(self) -> bool:
        return bool(self.flags & GICC_ONLINE_CAPABLE)


@dataclass(frozen=True)
class Gicd(MadtEntry):
    """GIC distributor (type 0x0C, 24 bytes)."""

    TYPE = 0x0C
    NAME = "GICD"
    LAYOUT = _entry_layout(
        "GICD",
        [
            ("reserved0", "u16"),
            ("gic_id", "u32"),
            ("base_address", "u64"),
            ("system_vector_base", "u32"),
            ("version", "u8"),
            ("reserved1", "b3"),
        ],
    )

    base_address: int
    version: int = 3
    gic_id: int = 0
    system_vector_base: int = 0
    reserved0: int = 0
    reserved1: bytes = b"\0\0\0"
    extra: bytes = b""


@dataclass(frozen=True)
class Gicr(MadtEntry):
    """GIC redistributor region (type 0x0E, 16 bytes): frames found by scanning it."""

    TYPE = 0x0E
    NAME = "GICR"
    LAYOUT = _entry_layout(
        "GICR",
        [("reserved0", "u16"), ("base_address", "u64"), ("region_length", "u32")],
    )

    base_address: int
    region_length: int
    reserved0: int = 0
    extra: bytes = b""


@dataclass(frozen=True)
class GicIts(MadtEntry):
    """GIC Interrupt Translation Service (type 0x0F, 20 bytes)."""

    TYPE = 0x0F
    NAME = "GIC ITS"
    LAYOUT = _entry_layout(
        "GIC ITS",
        [("reserved0", "u16"), ("its_id", "u32"), ("base_address", "u64"), ("reserved1", "u32")],
    )

    its_id: int
    base_address: int
    reserved0: int = 0
    reserved1: int = 0
    extra: bytes = b""


@dataclass(frozen=True)
class RawEntry:
    """A MADT structure of a type we have no layout for, kept byte for byte."""

    entry_type: int
    body: bytes = b""
    NAME: ClassVar[str] = "raw"

    @property
    def type(self) -> int:
        return self.entry_type

    def build(self, table: str = "APIC") -> bytes:
        if not 0 <= self.entry_type <= 0xFF:
            raise TableError(table, 0, f"subtable type {self.entry_type} is not a byte")
        if len(self.body) + 2 > 0xFF:
            raise TableError(table, 1, f"subtable of {len(self.body) + 2} bytes exceeds 255")
        return bytes((self.entry_type, len(self.body) + 2)) + self.body


AnyMadtEntry: TypeAlias = "Gicc | Gicd | Gicr | GicIts | RawEntry"
_MADT_TYPES: dict[int, type[Gicc] | type[Gicd] | type[Gicr] | type[GicIts]] = {
    c.TYPE: c for c in (Gicc, Gicd, Gicr, GicIts)
}


@dataclass(frozen=True)
class Madt(Table):
    """Multiple APIC Description Table ("APIC"): the interrupt controllers and CPUs.

    ``entries`` keeps every structure in table order; ``gicc``/``gicd``/``gicr``/
    ``its`` are views of it by type.
    """

    SIGNATURE = "APIC"
    LAYOUT = Layout("MADT", [*_HEADER, ("local_ic_address", "u32"), ("flags", "u32")])

    SEQUENCES = ("entries",)

    entries: tuple[AnyMadtEntry, ...] = ()
    revision: int = 5
    ids: TableIds = field(default_factory=TableIds)
    local_ic_address: int = 0
    flags: int = 0

    @property
    def gicc(self) -> list[Gicc]:
        return [e for e in self.entries if isinstance(e, Gicc)]

    @property
    def gicd(self) -> Gicd | None:
        return next((e for e in self.entries if isinstance(e, Gicd)), None)

    @property
    def gicr(self) -> list[Gicr]:
        return [e for e in self.entries if isinstance(e, Gicr)]

    @property
    def its(self) -> list[GicIts]:
        return [e for e in self.entries if isinstance(e, GicIts)]

    def _tail(self) -> bytes:
        return b"".join(e.build() for e in self.entries)

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        values, _ = cls._split(data, "APIC")
        return cls(entries=tuple(parse_madt_entries(data, cls.LAYOUT.size)), **values)


def parse_madt_entries(data: bytes, offset: int) -> list[AnyMadtEntry]:
    """Walk MADT structures from ``offset`` to the end of ``data``, bounds-checked."""
    entries: list[AnyMadtEntry] = []
    end = len(data)
    while offset < end:
        if offset + 2 > end:
            raise TableError("APIC", offset, "subtable header truncated at end of table")
        etype, length = data[offset], data[offset + 1]
        if length < 2:
            raise TableError(
                "APIC",
                offset + 1,
                f"subtable type {etype:#04x} length {length} < its 2-byte header",
            )
        if offset + length > end:
            raise TableError(
                "APIC",
                offset,
                f"subtable type {etype:#04x} of {length} bytes runs {offset + length - end}"
                " bytes past the end of the table",
            )
        known = _MADT_TYPES.get(etype)
        if known is None:
            entries.append(RawEntry(etype, data[offset + 2 : offset + length]))
        else:
            if length < known.LAYOUT.size:
                raise TableError(
                    "APIC",
                    offset + 1,
                    f"{known.NAME} subtable length {length} < {known.LAYOUT.size}",
                )
            entries.append(known.parse_entry(data, offset, length))
        offset += length
    return entries


# --------------------------------------------------------------------------
# GTDT

GTDT_TIMER_EDGE = 1 << 0
GTDT_TIMER_ACTIVE_LOW = 1 << 1
GTDT_TIMER_ALWAYS_ON = 1 << 2


@dataclass(frozen=True)
class Gtdt(Table):
    """Generic Timer Description Table, revision 2 (96 bytes + platform timers).

    ``rest`` holds whatever follows the fixed part (platform timer structures,
    or a newer revision's fields) byte for byte.
    """

    SIGNATURE = "GTDT"
    LAYOUT = Layout(
        "GTDT",
        [
            *_HEADER,
            ("cnt_control_base", "u64"),
            ("reserved0", "u32"),
            ("secure_el1_gsiv", "u32"),
            ("secure_el1_flags", "u32"),
            ("nonsecure_el1_gsiv", "u32"),
            ("nonsecure_el1_flags", "u32"),
            ("virtual_timer_gsiv", "u32"),
            ("virtual_timer_flags", "u32"),
            ("nonsecure_el2_gsiv", "u32"),
            ("nonsecure_el2_flags", "u32"),
            ("cnt_read_base", "u64"),
            ("platform_timer_count", "u32"),
            ("platform_timer_offset", "u32"),
        ],
    )

    secure_el1_gsiv: int = 0
    nonsecure_el1_gsiv: int = 0
    virtual_timer_gsiv: int = 0
    nonsecure_el2_gsiv: int = 0
    secure_el1_flags: int = 0
    nonsecure_el1_flags: int = 0
    virtual_timer_flags: int = 0
    nonsecure_el2_flags: int = 0
    cnt_control_base: int = 0xFFFF_FFFF_FFFF_FFFF
    cnt_read_base: int = 0xFFFF_FFFF_FFFF_FFFF
    platform_timer_count: int = 0
    platform_timer_offset: int = 0
    reserved0: int = 0
    revision: int = 2
    ids: TableIds = field(default_factory=TableIds)
    rest: bytes = b""

    def _tail(self) -> bytes:
        return self.rest

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        values, tail = cls._split(data, "GTDT")
        table = cls(rest=tail, **values)
        if table.platform_timer_count and not (
            cls.LAYOUT.size <= table.platform_timer_offset < len(data)
        ):
            raise TableError(
                "GTDT",
                cls.LAYOUT.offset_of("platform_timer_offset"),
                f"platform timers at {table.platform_timer_offset} lie outside the table",
            )
        return table


# --------------------------------------------------------------------------
# SPCR

SPCR_INTERFACE_PL011 = 3
SPCR_INTERRUPT_GIC = 1 << 3


@dataclass(frozen=True)
class Spcr(Table):
    """Serial Port Console Redirection table, revision 2 (80 bytes).

    Tells the guest where its console UART is, so it needs no command line.
    Newer revisions' extra fields land in ``rest``.
    """

    SIGNATURE = "SPCR"
    LAYOUT = Layout(
        "SPCR",
        [
            *_HEADER,
            ("interface_type", "u8"),
            ("reserved0", "b3"),
            ("base_address", GenericAddress),
            ("interrupt_type", "u8"),
            ("pc_interrupt", "u8"),
            ("interrupt", "u32"),
            ("baud_rate", "u8"),
            ("parity", "u8"),
            ("stop_bits", "u8"),
            ("flow_control", "u8"),
            ("terminal_type", "u8"),
            ("language", "u8"),
            ("pci_device_id", "u16"),
            ("pci_vendor_id", "u16"),
            ("pci_bus", "u8"),
            ("pci_device", "u8"),
            ("pci_function", "u8"),
            ("pci_flags", "u32"),
            ("pci_segment", "u8"),
            ("reserved1", "b4"),
        ],
    )

    base_address: GenericAddress = _NO_REG
    interface_type: int = SPCR_INTERFACE_PL011
    interrupt_type: int = SPCR_INTERRUPT_GIC
    interrupt: int = 0
    pc_interrupt: int = 0
    baud_rate: int = 3
    parity: int = 0
    stop_bits: int = 1
    flow_control: int = 0
    terminal_type: int = 0
    language: int = 0
    pci_device_id: int = 0xFFFF
    pci_vendor_id: int = 0xFFFF
    pci_bus: int = 0
    pci_device: int = 0
    pci_function: int = 0
    pci_flags: int = 0
    pci_segment: int = 0
    reserved0: bytes = b"\0\0\0"
    reserved1: bytes = b"\0\0\0\0"
    revision: int = 2
    ids: TableIds = field(default_factory=TableIds)
    rest: bytes = b""

    def _tail(self) -> bytes:
        return self.rest

    @classmethod
    def _from_bytes(cls, data: bytes) -> Self:
        values, tail = cls._split(data, "SPCR")
        return cls(rest=tail, **values)


# --------------------------------------------------------------------------
# Dispatch

AnyTable: TypeAlias = "Rsdp | Xsdt | Fadt | Madt | Gtdt | Spcr | Sdt"
_TABLES: dict[str, type[Xsdt] | type[Fadt] | type[Madt] | type[Gtdt] | type[Spcr]] = {
    c.SIGNATURE: c for c in (Xsdt, Fadt, Madt, Gtdt, Spcr)
}


def parse_table(data: bytes, *, verify_checksum: bool = True) -> AnyTable:
    """Parse one ACPI table, choosing the layout by its signature.

    ``data`` must be exactly the table (its Length field must match). RSDP is
    recognised by ``"RSD PTR "``; DSDT, SSDT and signatures without a layout
    come back as :class:`Sdt`. ``verify_checksum=False`` lets a dumper show a
    table whose checksum is wrong instead of refusing it. Every fault raises
    :class:`TableError`; nothing else escapes.
    """
    data = bytes(data)
    if data[:8] == Rsdp.MAGIC:
        return Rsdp.parse(data, verify_checksum=verify_checksum)
    signature = _check_sdt(data, verify_checksum)
    cls = _TABLES.get(signature)
    if cls is None:
        return Sdt._from_bytes(data)
    return cls._from_bytes(data)


MAX_TABLE_LENGTH = 16 * 1024 * 1024
"""A table longer than this in guest memory is treated as corrupt, not read."""


def read_tables(read: Callable[[int, int], bytes], rsdp_address: int) -> list[tuple[int, AnyTable]]:
    """Every table reachable from the RSDP, as ``(address, table)``, the way a guest finds them.

    ``read(address, length)`` returns guest memory. The order is RSDP, XSDT,
    each XSDT entry in order, then the DSDT named by the (first) FADT. Each
    table is read header first, then whole, so a corrupt length is caught before
    a huge read; a table address of 0 is refused rather than read; every fault
    is a :class:`TableError`. The guest kernel boots from this walk, so what it
    refuses here is what a kernel cannot boot from.
    """

    def read_sdt(address: int, what: str) -> AnyTable:
        if address == 0:
            raise TableError(what, 0, "table address is 0")
        header = bytes(read(address, HEADER_SIZE))
        if len(header) < HEADER_SIZE:
            raise TableError(what, 0, f"cannot read a header at {address:#x}")
        (length,) = struct.unpack_from("<I", header, _LENGTH_AT)
        if not HEADER_SIZE <= length <= MAX_TABLE_LENGTH:
            raise TableError(what, _LENGTH_AT, f"implausible length {length} at {address:#x}")
        return parse_table(bytes(read(address, length)))

    raw = bytes(read(rsdp_address, Rsdp.LAYOUT.size))
    revision_at = Rsdp.LAYOUT.offset_of("revision")
    if len(raw) > revision_at and raw[revision_at] < 2:
        raw = raw[: Rsdp.V1_SIZE]  # the 20-byte ACPI 1.0 RSDP: parse it to say so clearly
    rsdp = Rsdp.parse(raw)
    if rsdp.revision < 2 or not rsdp.xsdt_address:
        raise TableError("RSDP", 24, f"revision {rsdp.revision}: no XSDT (revision 2 required)")
    found: list[tuple[int, AnyTable]] = [(rsdp_address, rsdp)]
    xsdt = read_sdt(rsdp.xsdt_address, "XSDT")
    if not isinstance(xsdt, Xsdt):
        raise TableError(xsdt.signature, 0, "RSDP's XSDT address holds another table")
    found.append((rsdp.xsdt_address, xsdt))
    fadt: Fadt | None = None
    for address in xsdt.entries:
        table = read_sdt(address, "XSDT entry")
        found.append((address, table))
        if isinstance(table, Fadt) and fadt is None:
            fadt = table
    if fadt is not None and fadt.dsdt_address:
        found.append((fadt.dsdt_address, read_sdt(fadt.dsdt_address, "DSDT")))
    return found
