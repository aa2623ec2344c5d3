"""The ELF reader: sections, PT_INTERP and DT_NEEDED in both classes and byte orders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cpuplug.image.elf import Elf
from cpuplug.image.errors import ImageError
from tests.image.elfs import PROGBITS, make_elf


@pytest.mark.parametrize(("is64", "little"), [(True, True), (True, False), (False, True),
                                             (False, False)])
def test_sections_interpreter_and_needed(is64: bool, little: bool) -> None:
    data = make_elf(
        [(".modinfo", PROGBITS, b"a=1\0b=2\0")],
        needed=["libm.so.6", "libc.so.6"],
        interp="/lib64/ld-linux-x86-64.so.2",
        is64=is64,
        little=little,
    )
    elf = Elf(data, "t")
    assert elf.is64 is is64
    assert elf.section(".modinfo") == b"a=1\0b=2\0"
    assert elf.section(".nothing") is None
    assert elf.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert elf.needed == ("libm.so.6", "libc.so.6")


def test_a_module_has_no_interpreter_and_needs_nothing() -> None:
    elf = Elf(make_elf([(".modinfo", PROGBITS, b"depends=\0")]))
    assert elf.interpreter is None
    assert elf.needed == ()


@pytest.mark.parametrize("data", [b"", b"MZ" + b"\0" * 100, b"\x7fELF\x03\x01" + b"\0" * 60])
def test_not_elf_is_one_line(data: bytes) -> None:
    with pytest.raises(ImageError) as exc:
        Elf(data, "thing")
    assert "thing" in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_file_is_an_image_error() -> None:
    data = make_elf([(".modinfo", PROGBITS, b"x=1\0")])
    with pytest.raises(ImageError):
        Elf(data[:70], "cut").section(".modinfo")


def test_the_running_interpreter_reads_as_a_program() -> None:
    exe = Path(sys.executable).resolve()
    elf = Elf(exe.read_bytes(), str(exe))
    assert elf.interpreter is not None and elf.interpreter.startswith("/lib")
    assert "libc.so.6" in elf.needed
