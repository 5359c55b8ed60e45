"""ISO 2022 IR 58 (GB 2312) code extension, which pydicom 3.0 gets wrong both ways.

PS3.5 6.1.2.5.3 and Annex K: GB 2312 characters are designated to G1 with ``ESC $ ) A`` and
written in GR; the designation ends at every PN delimiter (``^``, ``=``), value delimiter
(``\\``), CR, LF, FF and TAB, so each such segment with Chinese text starts it again. pydicom
writes the GR bytes with no designation, and reads a designated value keeping the escape
sequence as text. These helpers fix up what pydicom gives: the encoder inserts the designations,
the decoder drops them, and a value with GR bytes but no designation (pydicom and pynetdicom
write them so) is read as GB 2312 when value 1 of Specific Character Set is the default
repertoire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydicom.charset import default_encoding
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

__all__ = ["IR58", "IR58_ESCAPE", "designate", "undesignate"]

#: pydicom's (and Python's) name for the GB 2312 codec of ISO 2022 IR 58.
IR58 = "iso_ir_58"
IR58_ESCAPE = b"\x1b$)A"
_ESCAPE_TEXT = IR58_ESCAPE.decode("ascii")
#: A segment (up to a delimiter that ends the designation) whose first GR byte needs one.
_SEGMENT = re.compile(rb"([^\x80-\xff^=\\\r\n\f\t]*)([\x80-\xff][^^=\\\r\n\f\t]*)")


def designate(data: bytes, encodings: Sequence[str]) -> bytes:
    """Insert ``ESC $ ) A`` before the first GR byte of each segment of pydicom's output.

    Only when value 1 of Specific Character Set is the default repertoire (empty or ISO 2022
    IR 6, PS3.5 Annex K): then every GR byte pydicom wrote is GB 2312. With a single-byte set
    as value 1 (ISO 2022 IR 100...) its own characters are GR bytes too, which bytes alone do
    not tell apart: left as pydicom wrote them, as is a value in which pydicom wrote escape
    sequences itself, or one with no GR byte.
    """
    if (IR58 not in encodings or encodings[0] != default_encoding or b"\x1b" in data
            or data.isascii()):
        return data
    return _SEGMENT.sub(lambda m: m.group(1) + IR58_ESCAPE + m.group(2), data)


def _clean(text: str) -> str:
    return text.replace(_ESCAPE_TEXT, "")


def undesignate(value: Any) -> Any:
    """A decoded text or PN value without the designations pydicom left in it as characters."""
    if isinstance(value, PersonName):
        text = str(value)
        return PersonName(_clean(text)) if _ESCAPE_TEXT in text else value
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, MultiValue | list):
        items = [undesignate(v) for v in value]
        if isinstance(value, MultiValue):
            return MultiValue(type(items[0]) if items else str, items)
        return items
    return value
