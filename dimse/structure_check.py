"""Is a received data set whole? A walk over its element headers (PS3.5 7.1, 7.5, A.4).

A peer that sends a data set cut short (a value running past the end, pixel data missing its
last bytes, encapsulated pixel data or a sequence without its delimiter) produces bytes that a
lenient reader such as pydicom may still read, stopping before the pixel data or padding a short
value. An archive that keeps them keeps a file no other reader can open. :func:`structure_problem`
walks the headers only (values are skipped by their lengths, never read) and names the first
element that does not fit, or returns None:

* every defined length must end inside its parent (data set, item or sequence value), and the
  items of an SQ of defined length are walked too (in Explicit VR, where SQ is known);
* an undefined length is allowed on SQ, on UN (whose items are Implicit VR Little Endian,
  PS3.5 6.2.2) and, in Implicit VR, on any element (read as a sequence of items), and on Pixel
  Data whatever its VR (encapsulated: fragments, then the sequence delimiter); it must be
  closed by its delimiter before the end of its parent;
* items hold (FFFE,E000) headers only; item and sequence delimiters appear only where they close
  something;
* in an encapsulated transfer syntax, the top-level Pixel Data has an undefined length, and in
  a native one a defined length (A.4).

Pure function over a buffer (bytes, memoryview or mmap): no I/O, so a multi-gigabyte file costs
only the pages its headers sit on. Deflated data sets are not walked (the caller inflates them,
or checks the inflated stream when it reads it).
"""

from __future__ import annotations

import struct
from typing import Final

from ._vr import LONG_VRS

__all__ = ["MAX_DEPTH", "structure_problem"]

#: Sequences nested deeper than this are reported rather than walked.
MAX_DEPTH: Final = 64
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS: Final = frozenset(vr.encode("ascii") for vr in LONG_VRS)
_SEQUENCE_LIKE: Final = frozenset({b"SQ", b"UN"})
_STRUCTS: Final = {
    True: (struct.Struct("<HHI"), struct.Struct("<HH2sH"), struct.Struct("<I")),
    False: (struct.Struct(">HHI"), struct.Struct(">HH2sH"), struct.Struct(">I")),
}


class _Broken(Exception):
    """Internal: the first problem found."""


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    __slots__ = ("buf", "encapsulated", "explicit", "implicit", "native", "tag_len", "u32")

    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool,
                 encapsulated: bool = False, native: bool = False) -> None:
        self.buf = buf
        self.implicit = implicit
        self.encapsulated = encapsulated
        self.native = native
        self.tag_len, self.explicit, self.u32 = _STRUCTS[little]

    def elements(self, pos: int, end: int, depth: int, in_item: bool) -> int:
        """Walk elements from ``pos`` to ``end``; an undefined-length item stops after its
        delimiter (returned). The position after the last element is returned."""
        buf = self.buf
        implicit = self.implicit
        tag_len, explicit, u32 = (self.tag_len.unpack_from, self.explicit.unpack_from,
                                  self.u32.unpack_from)
        long_vrs = _LONG_VRS
        top_of_encapsulated = self.encapsulated and depth == 0  # A.4 binds the top level only
        while pos < end:
            if end - pos < 8:
                raise _Broken(f"{end - pos} bytes at offset {pos}: too few for an element header")
            start = pos + 8
            if implicit:
                group, elem, length = tag_len(buf, pos)
                vr = b""
            else:
                group, elem, vr, length = explicit(buf, pos)
                if vr in long_vrs and group != 0xFFFE:
                    if end - pos < 12:
                        raise _Broken(f"{_name(group << 16 | elem)} at offset {pos}: "
                                      "truncated header")
                    length = u32(buf, pos + 8)[0]
                    start = pos + 12
            if group == 0xFFFE:
                return self.delimiter(pos, group << 16 | elem, in_item)
            if length == _UNDEFINED:
                pos = self.undefined(pos, start, end, group << 16 | elem, vr, depth)
                continue
            nxt = start + length
            if top_of_encapsulated and group == 0x7FE0 and elem == 0x0010:
                raise _Broken(f"(7FE0,0010) at offset {pos}: native pixel data (defined length) "
                              "in an encapsulated transfer syntax (PS3.5 A.4)")
            if nxt > end:
                raise _Broken(f"{_name(group << 16 | elem)} at offset {pos}: value of {length} "
                              f"bytes overruns the data set by {nxt - end}")
            if vr == b"SQ" and length:  # its items are walked too, within its length
                self.sequence(start, nxt, depth + 1, _name(group << 16 | elem), defined=True)
            pos = nxt
        if in_item:
            raise _Broken(f"item without its delimiter (ends at offset {end})")
        return pos

    def delimiter(self, pos: int, tag: int, in_item: bool) -> int:
        if tag == _ITEM_END and in_item:
            return pos + 8
        if tag == _ITEM_END:
            raise _Broken(f"item delimiter outside an item at offset {pos}")
        raise _Broken(f"{_name(tag)} at offset {pos} outside a sequence")

    def undefined(self, pos: int, start: int, end: int, tag: int, vr: bytes, depth: int) -> int:
        name = _name(tag)
        if tag == _PIXEL_DATA and depth == 0 and self.native:
            raise _Broken(f"(7FE0,0010) at offset {pos}: encapsulated (compressed) pixel data "
                          "in a native transfer syntax (PS3.5 A.4)")
        if tag == _PIXEL_DATA:  # encapsulated, whatever VR it came with (OB, OW or UN)
            return self.fragments(start, end, name)
        if vr == b"UN":  # its items are Implicit VR Little Endian (PS3.5 6.2.2)
            inner = _Walker(self.buf, True, True)
            return inner.sequence(start, end, depth + 1, name)
        if self.implicit or vr in _SEQUENCE_LIKE:
            return self.sequence(start, end, depth + 1, name)
        if vr in (b"OB", b"OW"):
            return self.fragments(start, end, name)
        raise _Broken(f"{name} at offset {pos}: undefined length on VR {vr.decode('latin-1')}")

    def sequence(self, pos: int, end: int, depth: int, name: str, defined: bool = False) -> int:
        """Walk items up to the sequence delimiter, or (``defined``) exactly up to ``end``."""
        if depth > MAX_DEPTH:
            raise _Broken(f"{name}: sequences nested deeper than {MAX_DEPTH}")
        tag_len = self.tag_len
        while end - pos >= 8:
            group, elem, length = tag_len.unpack_from(self.buf, pos)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                if defined:  # tolerated inside a defined length, as readers do
                    pos += 8
                    continue
                return pos + 8
            if tag != _ITEM:
                raise _Broken(f"{name}: ({group:04X},{elem:04X}) at offset {pos} where an item "
                              "or the sequence delimiter belongs")
            if length == _UNDEFINED:
                pos = self.elements(pos + 8, end, depth, True)
            elif pos + 8 + length > end:
                raise _Broken(f"{name}: item at offset {pos} overruns by "
                              f"{pos + 8 + length - end} bytes")
            else:
                self.elements(pos + 8, pos + 8 + length, depth, False)
                pos += 8 + length
        if defined and pos == end:
            return pos
        if defined:
            raise _Broken(f"{name}: {end - pos} bytes at offset {pos}: too few for an item header")
        raise _Broken(f"{name}: sequence without its delimiter")

    def fragments(self, pos: int, end: int, name: str) -> int:
        tag_len = self.tag_len
        while end - pos >= 8:
            group, elem, length = tag_len.unpack_from(self.buf, pos)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise _Broken(f"{name}: ({group:04X},{elem:04X}) at offset {pos} where a "
                              "fragment or the sequence delimiter belongs")
            if pos + 8 + length > end:
                raise _Broken(f"{name}: fragment at offset {pos} overruns by "
                              f"{pos + 8 + length - end} bytes")
            pos += 8 + length
        raise _Broken(f"{name}: encapsulated pixel data without its sequence delimiter")


def structure_problem(buf: bytes | memoryview, implicit: bool, little: bool,
                      encapsulated: bool = False, native: bool = False) -> str | None:
    """The first reason ``buf`` (a whole data set, no file meta) is not well formed, or None.

    ``encapsulated``: the data set is in an encapsulated transfer syntax (see
    :func:`dimse.syntax_check.is_encapsulated`), whose top-level Pixel Data must have an
    undefined length (PS3.5 A.4); ``native``: in a native one (see
    :func:`dimse.syntax_check.is_native`), whose top-level Pixel Data must have a defined one.
    Neither (a private syntax): the form of the Pixel Data is not judged.
    """
    try:
        _Walker(buf, implicit, little, encapsulated, native).elements(0, len(buf), 0, False)
    except _Broken as exc:
        return str(exc)
    return None
