"""Errors of the ACPI layer: one type for tables, one for AML, one root for both."""

from __future__ import annotations

from cpuplug.errors import CpuplugError


class AcpiError(CpuplugError):
    """Root of every error ``cpuplug.acpi`` raises."""


class TableError(AcpiError):
    """A table is malformed. Names the table signature and the byte offset."""

    def __init__(self, table: str, offset: int, message: str) -> None:
        self.table = table
        self.offset = offset
        self.reason = message
        super().__init__(f"{table}: at byte {offset:#x}: {message}")


class AmlError(AcpiError):
    """AML could not be decoded or evaluated.

    ``offset`` is the byte offset of the offending opcode inside its definition
    block when known; ``opcode`` the opcode value when known.
    """

    def __init__(
        self, message: str, *, offset: int | None = None, opcode: int | None = None
    ) -> None:
        self.offset = offset
        self.opcode = opcode
        self.reason = message
        where = []
        if opcode is not None:
            where.append(f"opcode {opcode:#x}")
        if offset is not None:
            where.append(f"offset {offset:#x}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class AmlLimitError(AmlError):
    """Evaluation hit a safety limit (loop iterations, call depth, mutex timeout)."""
