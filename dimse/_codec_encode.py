"""Data set encoder: pydicom ``Dataset`` -> bytes, byte-identical to pydicom's writer.

The common VRs are encoded inline from the element values with precompiled structs; rare
cases (date objects, buffered values, LUT descriptors, ambiguous VRs that stay ambiguous) are
handed to pydicom's own value writer so the bytes still match it. Pieces are collected in one
list and joined once.
"""

from __future__ import annotations

import copy
import struct
import warnings
import zlib
from array import array
from collections.abc import Callable, Sequence
from io import BufferedIOBase
from typing import Any

from pydicom.charset import custom_encoders, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, writers
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName

from dimse._ir58 import designate
from dimse._vr import (
    ALL_VRS,
    AMBIGUOUS_VRS,
    BYTES_VRS,
    CHARSET_TAG,
    DEFAULT_ENCODING,
    DEFAULT_ENCODINGS,
    HDR_IMPLICIT,
    HDR_LONG,
    HDR_SHORT,
    LONG_VRS,
    LUT_DESCRIPTOR_TAGS,
    NUMBER_STRUCTS,
    NUMBER_VRS,
    TAG_LEN,
    UNDEFINED,
    Syntax,
    plain_codec,
    python_encodings,
    syntax_for_encode,
)
from dimse.errors import DataSetEncodeError
from dimse.instances import check_raw_length

__all__ = ["check_encodable", "encode", "encode_text", "pad_text"]

_MULTI = (list, tuple, MultiValue)
_VR_BYTES = {vr: vr.encode("ascii") for vr in ALL_VRS}


class _Fallback(Exception):
    """Internal: let pydicom's own value writer handle this element."""


def _fits(text: str, encoding: str) -> bool:
    try:
        if encoding in custom_encoders:
            custom_encoders[encoding](text, errors="strict")
        else:
            text.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def check_encodable(value: str, encodings: Sequence[str]) -> None:
    """Refuse a value that no declared character set can hold (PS3.5 6.1.2).

    pydicom writes such a value with '?' for each character it cannot encode, and only warns:
    data lost in a C-STORE, and in a C-FIND identifier '?' is the one-character wildcard
    (PS3.4 C.2.2.2.4), so the query silently matches more than was asked.
    """
    if value.isascii() or any(_fits(value, name) for name in encodings):
        return
    for char in value:  # pydicom also writes a value part by part, each in a set that holds it
        if not any(_fits(char, name) for name in encodings):
            raise DataSetEncodeError(
                f"{char!a} in {value!a} is in none of the declared character sets "
                f"({', '.join(encodings)}): declare one that holds it in Specific Character Set "
                "(0008,0005), e.g. ISO_IR 192")


def encode_text(value: str, encodings: tuple[str, ...]) -> bytes:
    """Encode one text value as pydicom does for charset-aware VRs; DataSetEncodeError (with no
    tag: the caller adds it) for a character none of ``encodings`` holds."""
    codec = plain_codec(encodings)
    if codec is not None:
        try:
            return value.encode(codec)
        except UnicodeEncodeError:
            pass
    check_encodable(value, encodings)
    return designate(encode_string(value, list(encodings)), encodings)


def pad_text(data: bytes, pad: bytes = b" ") -> bytes:
    """Pad to even length."""
    return data + pad if len(data) & 1 else data


def _default_text(value: Any, pad: str) -> bytes:
    # exact-class checks first: isinstance against MultiValue (an ABC) is slow
    if value.__class__ is MultiValue:
        text = "\\".join(value._list)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, _MULTI):
        text = "\\".join(value)
    else:
        raise _Fallback
    if len(text) & 1:
        text += pad
    return text.encode(DEFAULT_ENCODING)


def _string(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    return _default_text(value, " ")


def _uid(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    return _default_text(value, "\0")


def _date(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    if isinstance(value, str) or (
        isinstance(value, _MULTI) and all(isinstance(v, str) for v in value)
    ):
        return _default_text(value, " ")
    raise _Fallback


def _number_string(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    cls = value.__class__
    if cls is IS or cls is DSfloat:
        text = getattr(value, "original_string", None) or str(value)
    elif isinstance(value, _MULTI):
        text = "\\".join(getattr(x, "original_string", None) or str(x) for x in value)
    else:
        text = getattr(value, "original_string", None) or str(value)
    if len(text) & 1:
        text += " "
    return text.encode(DEFAULT_ENCODING)


def _text(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    if isinstance(value, str):
        data = encode_text(value, enc)
    elif isinstance(value, bytes):
        data = value
    elif isinstance(value, _MULTI) and value:
        if isinstance(value[0], str):
            data = b"\\".join([encode_text(v, enc) for v in value])
        else:
            data = b"\\".join(value)
    else:
        raise _Fallback
    return data + b" " if len(data) & 1 else data


def _pn_bytes(pn: Any, enc: tuple[str, ...]) -> bytes:
    """``PersonName.encode(enc)`` with its cached-bytes shortcut inlined."""
    if isinstance(pn, PersonName):
        cached = pn.original_string
        if cached is not None and (pn.encodings is None or pn.encodings == enc):
            return cached
    else:
        pn = PersonName(pn)
    check_encodable(str(pn), enc)
    return designate(pn.encode(enc), enc)


def _pn(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    if value.__class__ is PersonName:
        data = _pn_bytes(value, enc)
    elif isinstance(value, _MULTI):
        data = b"\\".join([_pn_bytes(v, enc) for v in value])
    else:
        data = _pn_bytes(value, enc)
    return data + b" " if len(data) & 1 else data


def _bytes(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    else:
        raise _Fallback
    return data + b"\0" if len(data) & 1 else data


def _tag_values(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
    try:
        tags = [Tag(t) for t in value]
    except TypeError:
        tags = [Tag(value)]
    flat: list[int] = []
    for t in tags:
        flat.append(t >> 16)
        flat.append(t & 0xFFFF)
    return struct.pack(f"{e}{len(flat)}H", *flat)


def _numbers(vr: str) -> Callable[[Any, tuple[str, ...], int, str], bytes]:
    code = NUMBER_VRS[vr][0]
    packers = {e: NUMBER_STRUCTS[(vr, e)].pack for e in "<>"}

    def encode_numbers(value: Any, enc: tuple[str, ...], tag: int, e: str) -> bytes:
        if not hasattr(value, "append"):
            return packers[e](value)
        if code == "h" and tag in LUT_DESCRIPTOR_TAGS:
            raise _Fallback
        return struct.pack(f"{e}{len(value)}{code}", *value)

    return encode_numbers


_ValueEncoder = Callable[[Any, tuple[str, ...], int, str], bytes]
_ENCODERS: dict[str, _ValueEncoder] = {
    **{vr: _string for vr in ("AE", "AS", "CS", "UR")},
    **{vr: _date for vr in ("DA", "DT", "TM")},
    "DS": _number_string, "IS": _number_string, "UI": _uid,
    **{vr: _text for vr in ("LO", "LT", "SH", "ST", "UC", "UT")},
    "PN": _pn, "AT": _tag_values,
    **{vr: _bytes for vr in BYTES_VRS | AMBIGUOUS_VRS},
    **{vr: _numbers(vr) for vr in NUMBER_VRS},
}


#: Value classes the inline loop handles (others go through ``_Writer.element``).
_SIMPLE = frozenset({str, bytes, int, float, PersonName, UID, DSfloat, IS, MultiValue, list})
_NUMERIC = frozenset({int, float, DSfloat, IS})
_FAST_ENCODERS = {vr: fn for vr, fn in _ENCODERS.items() if vr not in AMBIGUOUS_VRS}
#: Word size of the VRs whose bytes are numbers in the syntax's byte order (PS3.5 7.3): their
#: bytes are swapped when a data set read in one byte order is written in the other.
WORD_SIZES: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
#: The fast encoders without those VRs (used when byte order changes, so they get swapped).
_FAST_UNSWAPPED = {vr: fn for vr, fn in _FAST_ENCODERS.items() if vr not in WORD_SIZES}
_ARRAY_CODES = {2: "H", 4: "I" if array("I").itemsize == 4 else "L", 8: "Q"}


def _word_size(tag: int, vr: str, ds: Dataset) -> int:
    """The unit to swap: the VR's word, except for OW Pixel Data of 32 or 64 bits allocated,
    whose pixels are the words (as pydicom reads them in either byte order)."""
    if tag == 0x7FE00010 and vr == "OW":
        bits = ds.get(0x00280100)  # Bits Allocated
        value = bits.value if bits is not None else None
        if isinstance(value, bytes) and len(value) == 2:  # still raw: read in the source order
            value = None
        if value in (32, 64):
            return int(value) // 8
    return WORD_SIZES[vr]


def swap_words(data: bytes, size: int, tag: int) -> bytes:
    """``data`` with each ``size``-byte word reversed (a change of byte order)."""
    if len(data) % size:
        raise DataSetEncodeError(f"cannot change the byte order of a {len(data)}-byte value "
                                 f"made of {size}-byte words", tag=tag)
    words = array(_ARRAY_CODES[size], data)
    words.byteswap()
    return words.tobytes()
_SPACE_PADDED, _NUL_PADDED, _CHARSET_TEXT = 1, 2, 3
#: How a plain ``str`` value of each text VR is written (what the per-VR encoders do for str).
_STR_KINDS: dict[str, int] = {
    **{vr: _SPACE_PADDED for vr in ("AE", "AS", "CS", "UR", "DA", "DT", "TM", "DS", "IS")},
    "UI": _NUL_PADDED,
    **{vr: _CHARSET_TEXT for vr in ("LO", "LT", "SH", "ST", "UC", "UT")},
}


def _is_empty(vr: str, value: Any) -> bool:
    """Mirror ``DataElement.is_empty`` without the property machinery."""
    if value is None:
        return True
    cls = value.__class__
    if cls is str or cls is bytes or isinstance(value, str | bytes | PersonName):
        return not value
    if cls is int or cls is float:
        return False
    if isinstance(value, BufferedIOBase):
        return False
    try:
        return len(value) == 0
    except TypeError:
        return False


def _pydicom_value(elem: DataElement, enc: tuple[str, ...], syn: Syntax) -> bytes:
    """Encode one value with pydicom's own writer (rare cases only)."""
    fp = DicomBytesIO()
    fp.is_little_endian = syn.little
    fp.is_implicit_VR = syn.implicit
    fn, param = writers[elem.VR]  # type: ignore[index]
    if elem.VR in ("LO", "LT", "PN", "SH", "ST", "UC", "UT"):
        fn(fp, elem, encodings=list(enc))  # type: ignore[operator]
    elif param is not None:
        fn(fp, elem, param)  # type: ignore[operator]
    else:
        fn(fp, elem)  # type: ignore[operator]
    return fp.getvalue()


_Pack = Callable[..., bytes]
#: Header packers per byte order: implicit, explicit short, explicit long, tag + length.
_PACKERS: dict[str, tuple[_Pack, _Pack, _Pack, _Pack]] = {
    e: (HDR_IMPLICIT[e].pack, HDR_SHORT[e].pack, HDR_LONG[e].pack, TAG_LEN[e].pack)
    for e in "<>"
}


def _check_no_delimiters(tags: Sequence[int]) -> None:
    """(FFFE,E000/E00D/E0DD) encode sequence items only; as a data element they would end
    the data set for any reader (PS3.5 7.5)."""
    for tag in map(int, reversed(tags)):
        if tag >> 16 == 0xFFFE:
            raise DataSetEncodeError("an item or delimiter tag (FFFE,xxxx) cannot be a data "
                                     "element (PS3.5 7.5)", tag=tag)
        if tag < 0xFFFE0000:
            return


class _Writer:
    """One encode call: syntax-specific packers and the output list."""

    __slots__ = ("e", "hdr_implicit", "hdr_long", "hdr_short", "out", "swap", "syn", "tag_len")

    def __init__(self, syn: Syntax, swap: bool = False) -> None:
        self.syn = syn
        self.swap = swap  # OW/OF/OL/OD/OV bytes are in the other byte order: swap them
        self.e = e = "<" if syn.little else ">"
        self.hdr_implicit, self.hdr_short, self.hdr_long, self.tag_len = _PACKERS[e]
        self.out: list[bytes] = []

    def header(self, tag: int, vr: str, length: int, undefined: bool = False) -> bytes:
        """Element header for this syntax; ``length`` is ignored when undefined."""
        if undefined:
            length = UNDEFINED
        if self.syn.implicit:
            return self.hdr_implicit(tag >> 16, tag & 0xFFFF, length)
        vr_bytes = _VR_BYTES.get(vr)
        if vr_bytes is None:
            raise DataSetEncodeError(f"cannot write VR {vr!r} in explicit VR", tag=tag)
        if vr in LONG_VRS or undefined:
            return self.hdr_long(tag >> 16, tag & 0xFFFF, vr_bytes, length)
        return self.hdr_short(tag >> 16, tag & 0xFFFF, vr_bytes, length)

    def dataset(self, ds: Dataset, parent: tuple[str, ...], ancestors: list[Dataset]) -> None:
        """Append ``ds``'s elements in tag order.

        Hot path: str/UID values of the text VRs are padded and encoded inline; everything
        else goes through the per-VR encoders or ``element``.
        """
        d = ds._dict
        enc = parent
        cs_elem = d.get(CHARSET_TAG)  # type: ignore[call-overload]
        if cs_elem is not None:
            charset = (cs_elem if cs_elem.__class__ is DataElement else ds[CHARSET_TAG]).value
            enc = python_encodings(charset) if charset else DEFAULT_ENCODINGS
        codec = plain_codec(enc)
        raw_ok: bool | None = None
        implicit = self.syn.implicit
        out = self.out
        e = self.e
        hdr_i, hdr_s, hdr_l = self.hdr_implicit, self.hdr_short, self.hdr_long
        kinds, vr_bytes, long_vrs = _STR_KINDS, _VR_BYTES, LONG_VRS
        fast = _FAST_UNSWAPPED if self.swap else _FAST_ENCODERS
        tags = sorted(d, key=int)  # int keys: BaseTag's own comparison is Python code
        if tags and int(tags[-1]) >= 0xFFFE0000:  # int(): BaseTag's >= is Python code
            _check_no_delimiters(tags)
        for tag in tags:
            if not tag & 0xFFFF and tag >> 16 > 6:
                continue  # retired group lengths are not written (PS3.5 7.2)
            elem = d[tag]
            if elem.__class__ is not DataElement:
                if isinstance(elem, RawDataElement):
                    raw_value = elem.value
                    if raw_value is not None and len(raw_value) != elem.length:
                        check_raw_length(elem)  # raises unless the length is undefined
                    if raw_ok is None:
                        raw_ok = self._raw_writable(ds)
                    if raw_ok and elem.value is not None:
                        self._raw(elem)
                        continue
                    elem = ds[tag]
                self.element(elem, enc, ancestors)
                continue
            vr = elem.VR
            value = elem._value
            cls = value.__class__
            kind = kinds.get(vr) if cls is str or cls is UID else None
            try:
                if kind is not None:  # str value of a text VR
                    if kind == _CHARSET_TEXT:
                        data = value.encode(codec)  # codec None: TypeError, fallback
                        if len(data) & 1:
                            data += b" "
                    else:
                        if len(value) & 1:
                            value += " " if kind == _SPACE_PADDED else "\0"
                        data = value.encode(DEFAULT_ENCODING)
                else:
                    fn = fast.get(vr)
                    if fn is None or cls not in _SIMPLE:
                        raise _Fallback
                    data = b"" if not value and cls not in _NUMERIC else fn(value, enc, tag, e)
                if elem.is_undefined_length:
                    raise _Fallback
            except Exception:
                self.element(elem, enc, ancestors)
                continue
            n = len(data)
            if implicit:
                out += (hdr_i(tag >> 16, tag & 0xFFFF, n), data)
            elif vr in long_vrs:
                out += (hdr_l(tag >> 16, tag & 0xFFFF, vr_bytes[vr], n), data)
            elif n <= 0xFFFF:
                out += (hdr_s(tag >> 16, tag & 0xFFFF, vr_bytes[vr], n), data)
            else:
                self.element(elem, enc, ancestors)

    def _raw_writable(self, ds: Dataset) -> bool:
        syn = self.syn
        return bool(
            ds.original_encoding == (syn.implicit, syn.little)
            and ds.original_character_set == ds._character_set
        )

    def _raw(self, elem: RawDataElement) -> int:
        value = elem.value or b""
        undefined = elem.length == UNDEFINED
        vr = elem.VR or "UN"
        if not self.syn.implicit and vr not in LONG_VRS and len(value) > 0xFFFF and not undefined:
            vr = "UN"
        head = self.header(elem.tag, vr, len(value), undefined)
        self.out += (head, value)
        n = len(head) + len(value)
        if undefined:
            self.out.append(self.tag_len(0xFFFE, 0xE0DD, 0))
            n += 8
        return n

    def element(self, elem: DataElement, enc: tuple[str, ...], ancestors: list[Dataset]) -> int:
        """Append one element (header + value); return its byte count."""
        vr = elem.VR
        tag = elem.tag
        if vr in AMBIGUOUS_VRS:
            elem = _corrected(elem, ancestors, self.syn.little)
            vr = elem.VR
        if vr == "SQ":
            return self.sequence(elem, enc, ancestors)
        value = elem._value
        if _is_empty(vr, value):
            data = b""
        else:
            try:
                data = self.value(elem, vr, value, enc)
            except DataSetEncodeError:
                raise
            except Exception as exc:
                raise DataSetEncodeError(f"cannot encode {vr} value: {exc}", tag=tag) from exc
        undefined = elem.is_undefined_length
        if self.swap and vr in WORD_SIZES and data and not undefined:
            data = swap_words(data, _word_size(tag, vr, ancestors[0]), tag)
        if not self.syn.implicit and vr not in LONG_VRS and not undefined and len(data) > 0xFFFF:
            warnings.warn(f"value of {tag} longer than 64 KiB: VR changed to UN", stacklevel=4)
            vr = "UN"
        head = self.header(tag, vr, len(data), undefined)
        self.out += (head, data)
        if undefined:
            self.out.append(self.tag_len(0xFFFE, 0xE0DD, 0))
            return len(head) + len(data) + 8
        return len(head) + len(data)

    def value(self, elem: DataElement, vr: str, value: Any, enc: tuple[str, ...]) -> bytes:
        """Encoded, padded value bytes for a non-SQ element."""
        fn = _ENCODERS.get(vr)
        if fn is None:
            raise DataSetEncodeError(f"unknown VR {vr!r}", tag=elem.tag)
        try:
            return fn(value, enc, elem.tag, self.e)
        except DataSetEncodeError as exc:
            if exc.tag is None:  # from encode_text / check_encodable: say which element
                raise DataSetEncodeError(str(exc), tag=elem.tag) from None
            raise
        except _Fallback:
            data = _pydicom_value(elem, enc, self.syn)
            if vr in BYTES_VRS and len(data) & 1:
                data += b"\0"
            return data

    def sequence(self, elem: DataElement, enc: tuple[str, ...], ancestors: list[Dataset]) -> int:
        """Append a SQ element with its items; item lengths are defined unless flagged."""
        tag = elem.tag
        out = self.out
        at = len(out)
        out.append(b"")  # placeholder for the header
        body = 0
        for item in elem._value or ():
            if not isinstance(item, Dataset):
                raise DataSetEncodeError("sequence item is not a Dataset", tag=tag)
            head_at = len(out)
            out.append(b"")
            self.dataset(item, enc, [item, *ancestors])
            n = sum(map(len, out[head_at + 1:]))
            if getattr(item, "is_undefined_length_sequence_item", False):
                out[head_at] = self.tag_len(0xFFFE, 0xE000, UNDEFINED)
                out.append(self.tag_len(0xFFFE, 0xE00D, 0))
                n += 8
            else:
                out[head_at] = self.tag_len(0xFFFE, 0xE000, n)
            body += n + 8
        undefined = elem.is_undefined_length
        out[at] = self.header(tag, "SQ", body, undefined)
        if undefined:
            out.append(self.tag_len(0xFFFE, 0xE0DD, 0))
            body += 8
        return len(out[at]) + body


def _corrected(elem: DataElement, ancestors: list[Dataset], little: bool) -> DataElement:
    """A corrected copy of an ambiguous-VR element (pydicom's rules, the input is untouched)."""
    fixed = copy.copy(elem)
    try:
        result = correct_ambiguous_vr_element(fixed, ancestors[0], little, list(ancestors))
    except Exception as exc:
        raise DataSetEncodeError(f"cannot resolve ambiguous VR {elem.VR!r}: {exc}",
                                 tag=elem.tag) from exc
    return result  # type: ignore[return-value]


def encode(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Encode ``ds`` (no file meta, no preamble) in the given transfer syntax."""
    syn = syntax_for_encode(transfer_syntax_uid)
    if not isinstance(ds, Dataset):
        raise DataSetEncodeError(f"expected a pydicom Dataset, got {type(ds).__name__}")
    read_little = getattr(ds, "_read_little", None)  # byte order of a data set read from bytes
    writer = _Writer(syn, swap=read_little is not None and read_little != syn.little)
    try:
        writer.dataset(ds, DEFAULT_ENCODINGS, [ds])
    except DataSetEncodeError:
        raise
    except Exception as exc:  # pydicom conversion of raw elements, charset look-ups...
        raise DataSetEncodeError(f"cannot encode data set: {exc}") from exc
    data = b"".join(writer.out)
    if syn.deflated:
        return deflate(data)
    return data


def deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), as PS3.5 A.5 requires, padded with a NUL to an even
    length as PS3.5 A.5 also requires (a PDV fragment must be even: DCMTK aborts otherwise)."""
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = comp.compress(data) + comp.flush()
    return out + b"\0" if len(out) & 1 else out


def header_pieces(syn: Syntax, tag: int, vr: str, length: int) -> bytes:
    """One element header (used by the identifier template)."""
    return _Writer(syn).header(tag, vr, length)


def sequence_types() -> Sequence[type]:
    """Types accepted as multi-values (exported for the template)."""
    return _MULTI
