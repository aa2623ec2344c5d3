"""AML opcode values (ACPI 6.5 §20.3), declared once for the builder and the decoder.

Extended opcodes (prefixed by ``EXT_PREFIX`` 0x5B) are written as ``0x5Bxx``.
"""

from __future__ import annotations

# Name string prefixes and special characters
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX = 0x5E  # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00
EXT_PREFIX = 0x5B

# Data objects
ZERO_OP = 0x00
ONE_OP = 0x01
ALIAS_OP = 0x06
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
VAR_PACKAGE_OP = 0x13
METHOD_OP = 0x14
EXTERNAL_OP = 0x15
ONES_OP = 0xFF
REVISION_OP = 0x5B30

# Locals, args, debug
LOCAL0_OP = 0x60  # .. 0x67
ARG0_OP = 0x68  # .. 0x6E
DEBUG_OP = 0x5B31

# Type 2 / expression opcodes
STORE_OP = 0x70
REF_OF_OP = 0x71
ADD_OP = 0x72
CONCAT_OP = 0x73
SUBTRACT_OP = 0x74
INCREMENT_OP = 0x75
DECREMENT_OP = 0x76
MULTIPLY_OP = 0x77
DIVIDE_OP = 0x78
SHIFT_LEFT_OP = 0x79
SHIFT_RIGHT_OP = 0x7A
AND_OP = 0x7B
NAND_OP = 0x7C
OR_OP = 0x7D
NOR_OP = 0x7E
XOR_OP = 0x7F
NOT_OP = 0x80
FIND_SET_LEFT_BIT_OP = 0x81
FIND_SET_RIGHT_BIT_OP = 0x82
DEREF_OF_OP = 0x83
CONCAT_RES_OP = 0x84
MOD_OP = 0x85
NOTIFY_OP = 0x86
SIZE_OF_OP = 0x87
INDEX_OP = 0x88
MATCH_OP = 0x89
CREATE_DWORD_FIELD_OP = 0x8A
CREATE_WORD_FIELD_OP = 0x8B
CREATE_BYTE_FIELD_OP = 0x8C
CREATE_BIT_FIELD_OP = 0x8D
OBJECT_TYPE_OP = 0x8E
CREATE_QWORD_FIELD_OP = 0x8F
LAND_OP = 0x90
LOR_OP = 0x91
LNOT_OP = 0x92
LEQUAL_OP = 0x93
LGREATER_OP = 0x94
LLESS_OP = 0x95
TO_BUFFER_OP = 0x96
TO_DECIMAL_STRING_OP = 0x97
TO_HEX_STRING_OP = 0x98
TO_INTEGER_OP = 0x99
TO_STRING_OP = 0x9C
COPY_OBJECT_OP = 0x9D
MID_OP = 0x9E
CONTINUE_OP = 0x9F
IF_OP = 0xA0
ELSE_OP = 0xA1
WHILE_OP = 0xA2
NOOP_OP = 0xA3
RETURN_OP = 0xA4
BREAK_OP = 0xA5
BREAKPOINT_OP = 0xCC

# Extended (0x5B-prefixed) opcodes
MUTEX_OP = 0x5B01
EVENT_OP = 0x5B02
COND_REF_OF_OP = 0x5B12
CREATE_FIELD_OP = 0x5B13
LOAD_TABLE_OP = 0x5B1F
LOAD_OP = 0x5B20
STALL_OP = 0x5B21
SLEEP_OP = 0x5B22
ACQUIRE_OP = 0x5B23
SIGNAL_OP = 0x5B24
WAIT_OP = 0x5B25
RESET_OP = 0x5B26
RELEASE_OP = 0x5B27
FROM_BCD_OP = 0x5B28
TO_BCD_OP = 0x5B29
UNLOAD_OP = 0x5B2A
FATAL_OP = 0x5B32
TIMER_OP = 0x5B33
OP_REGION_OP = 0x5B80
FIELD_OP = 0x5B81
DEVICE_OP = 0x5B82
PROCESSOR_OP = 0x5B83
POWER_RES_OP = 0x5B84
THERMAL_ZONE_OP = 0x5B85
INDEX_FIELD_OP = 0x5B86
BANK_FIELD_OP = 0x5B87
DATA_REGION_OP = 0x5B88

# LNotEqual / LLessEqual / LGreaterEqual are encoded as LNot(LEqual/LGreater/LLess)

# Operation region address spaces (ACPI 6.5 Table 19.x RegionSpace)
REGION_SPACES: dict[str, int] = {
    "SystemMemory": 0x00,
    "SystemIO": 0x01,
    "PCI_Config": 0x02,
    "EmbeddedControl": 0x03,
    "SMBus": 0x04,
    "SystemCMOS": 0x05,
    "PciBarTarget": 0x06,
    "IPMI": 0x07,
    "GeneralPurposeIO": 0x08,
    "GenericSerialBus": 0x09,
    "PCC": 0x0A,
}
REGION_SPACE_NAMES: dict[int, str] = {v: k for k, v in REGION_SPACES.items()}

# Field flags: AccessType (bits 0-3), LockRule (bit 4), UpdateRule (bits 5-6)
ACCESS_TYPES: dict[str, int] = {
    "AnyAcc": 0,
    "ByteAcc": 1,
    "WordAcc": 2,
    "DWordAcc": 3,
    "QWordAcc": 4,
    "BufferAcc": 5,
}
UPDATE_RULES: dict[str, int] = {"Preserve": 0, "WriteAsOnes": 1, "WriteAsZeros": 2}
