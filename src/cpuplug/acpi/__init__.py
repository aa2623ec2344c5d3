"""ACPI: the contract between the VMM (which writes tables) and the guest (which reads them).

Imports no party (docs/contract.md §0). ``tables`` holds the fixed-layout tables, ``aml`` the
AML builder, decoder and interpreter, ``interp`` the public interpreter entry.
"""
