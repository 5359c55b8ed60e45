"""Does a received data set's encoding match the transfer syntax of its presentation context?

PS3.8 Annex E and PS3.7 9.3.1.1: a data set is sent in the transfer syntax of the presentation
context it travels on. A peer that sends an Implicit VR body on a context accepted as Explicit VR
(or the reverse) produces bytes that a lenient reader may still decode by guessing, but that no
Part 10 file may carry under the context's syntax. :func:`encoding_mismatch` looks at the first
data element header (and, for an Implicit VR context, the element after it) and names the
contradiction, or returns None. It rejects only what is clearly wrong:

* Explicit VR (little or big endian, encapsulated syntaxes included): bytes 4-5 of the first
  element must be one of the VRs of PS3.5 Table 6.2-1;
* Implicit VR Little Endian: rejected only when bytes 4-5 are a VR *and* reading the first element
  as Explicit VR lands exactly on a second well-formed Explicit VR header (or exactly on the end
  of the data set), while the Implicit VR reading of its length overruns the data set;
* deflated syntaxes (the body is a deflate stream) and transfer syntaxes we do not know: not
  checked.

Pure functions over bytes: no I/O.
"""

from __future__ import annotations

import struct
from typing import Final

from ._vr import LONG_VRS

__all__ = ["HEAD_SIZE", "VRS", "checked_encoding", "encoding_mismatch", "is_encapsulated",
           "is_native"]

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
#: Deflated data sets: the bytes received are a deflate stream, not data elements.
DEFLATED: Final = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
#: Prefix of the standard transfer syntaxes whose data set is Explicit VR Little Endian
#: (encapsulated pixel data: JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC, JPEG XL, HTJ2K...).
_STANDARD_TS: Final = "1.2.840.10008.1.2."

#: The value representations of PS3.5 Table 6.2-1, as they appear on the wire.
VRS: Final = frozenset(
    vr.encode("ascii") for vr in (
        "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
        "UL UN UR US UT UV").split())
#: VRs whose Explicit VR header is 12 bytes: 2 reserved bytes, then a 32-bit length.
_LONG_VRS: Final = frozenset(vr.encode("ascii") for vr in LONG_VRS)
#: Bytes of the data set's start :func:`encoding_mismatch` may need: one short Explicit VR
#: element of the largest size and the header after it.
HEAD_SIZE: Final = 8 + 0xFFFF + 8

_U16_LE, _U16_BE = struct.Struct("<H"), struct.Struct(">H")
_U32_LE = struct.Struct("<I")


def checked_encoding(transfer_syntax: str) -> tuple[bool, bool] | None:
    """``(implicit_vr, little_endian)`` of a syntax whose data set can be checked, else None."""
    ts = transfer_syntax.strip(" \0")
    if ts == IMPLICIT_VR_LE:
        return True, True
    if ts == EXPLICIT_VR_BE:
        return False, False
    if ts in DEFLATED or not (ts == EXPLICIT_VR_LE or ts.startswith(_STANDARD_TS)):
        return None
    return False, True


def is_encapsulated(transfer_syntax: str) -> bool:
    """Whether ``transfer_syntax`` is a standard one whose Pixel Data is encapsulated (PS3.5
    A.4: JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC...): any standard syntax other than the
    native and deflated ones. Private syntaxes are not known, so not judged (False)."""
    ts = transfer_syntax.strip(" \0")
    return (ts.startswith(_STANDARD_TS) and ts not in DEFLATED
            and ts not in (EXPLICIT_VR_LE, EXPLICIT_VR_BE))


def is_native(transfer_syntax: str) -> bool:
    """Whether ``transfer_syntax`` is one of the native (uncompressed, not deflated) syntaxes,
    whose top-level Pixel Data has a defined length (PS3.5 A.4: only the encapsulated syntaxes
    carry fragments)."""
    return transfer_syntax.strip(" \0") in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE)


def encoding_mismatch(head: bytes | bytearray | memoryview, transfer_syntax: str,
                      size: int | None = None) -> str | None:
    """Why the data set starting with ``head`` is clearly not in ``transfer_syntax``, or None.

    ``head`` is the start of the data set (up to :data:`HEAD_SIZE` bytes are used); ``size``
    its total length when known (defaults to ``len(head)``). Too short a head is not judged.
    """
    encoding = checked_encoding(transfer_syntax)
    if encoding is None or len(head) < 8:
        return None
    head = bytes(head[:HEAD_SIZE])
    total = len(head) if size is None else size
    implicit, little = encoding
    if not implicit:
        if head[4:6] not in VRS:
            tag = _tag(head, little)
            return f"not Explicit VR: element {tag} has no VR"
        return None
    return _explicit_in_implicit(head, total)


def _tag(head: bytes, little: bool) -> str:
    u16 = _U16_LE if little else _U16_BE
    return f"({u16.unpack_from(head, 0)[0]:04X},{u16.unpack_from(head, 2)[0]:04X})"


def _explicit_end(head: bytes, at: int) -> int | None:
    """End offset of the Explicit VR LE element at ``at``, or None when it is not well formed."""
    vr = head[at + 4:at + 6]
    if vr not in VRS:
        return None
    if vr in _LONG_VRS:
        if len(head) < at + 12 or head[at + 6:at + 8] != b"\0\0":
            return None
        length = _U32_LE.unpack_from(head, at + 8)[0]
        return None if length == 0xFFFFFFFF else at + 12 + length
    return at + 8 + _U16_LE.unpack_from(head, at + 6)[0]


def _explicit_in_implicit(head: bytes, total: int) -> str | None:
    """An Implicit VR context whose data set reads clearly as Explicit VR: the reason, or None."""
    end = _explicit_end(head, 0)
    if end is None or 8 + _U32_LE.unpack_from(head, 4)[0] <= total:
        return None  # bytes 4-5 are no VR, or the Implicit VR reading is plausible
    tag = _tag(head, True)
    if end == total:
        return f"Explicit VR body on Implicit VR context at {tag}"
    if end + 8 > len(head):
        return None
    group = _U16_LE.unpack_from(head, 0)[0]
    next_group = _U16_LE.unpack_from(head, end)[0]
    if next_group >= group and _explicit_end(head, end) is not None:
        return f"Explicit VR body on Implicit VR context at {tag}"
    return None
