"""Data set decoder: bytes -> pydicom ``Dataset`` of converted ``DataElement`` objects.

One bounds-checked loop over the buffer with ``struct.unpack_from``; values are converted
eagerly the way pydicom converts them (same types, same stripping, same multi-value splitting),
with inline converters for the default character repertoire and default pydicom settings and
pydicom's own converters otherwise. Every failure becomes a :class:`DataSetDecodeError` naming
the tag and offset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName
from pydicom.values import convert_ATvalue, convert_value

from dimse._ir58 import IR58, IR58_ESCAPE, undesignate
from dimse._vr import (
    ALL_VRS,
    AMBIGUOUS_VRS,
    CHARSET_TAG,
    CHARSET_VRS,
    DEFAULT_ENCODING,
    DEFAULT_ENCODINGS,
    ITEM_DELIM_TAG,
    ITEM_TAG,
    LONG_VRS,
    LUT_DESCRIPTOR_TAGS,
    NUMBER_VRS,
    SEQ_DELIM_TAG,
    UNDEFINED,
    Syntax,
    default_config,
    plain_codec,
    private_vr,
    public_vr,
    python_encodings,
    syntax_for_decode,
)
from dimse.errors import DataSetDecodeError

__all__ = ["decode", "inflate"]

MAX_DEPTH = 64
#: Explicit VR bytes -> (VR, has the 4-byte length form).
_VR_INFO = {vr.encode("ascii"): (vr, vr in LONG_VRS) for vr in ALL_VRS}
_UID_NEW = str.__new__


def inflate(data: bytes | bytearray | memoryview, max_length: int | None = None) -> bytes:
    """Inflate a raw deflate stream; a trailing pad byte after the end is tolerated."""
    dec = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = dec.decompress(data, max_length or 0)
    except zlib.error as exc:
        raise DataSetDecodeError(f"invalid deflate stream: {exc}", offset=0) from None
    if max_length and dec.unconsumed_tail:
        raise DataSetDecodeError(f"inflated data set exceeds {max_length} bytes", offset=0)
    if not dec.eof:
        raise DataSetDecodeError("truncated deflate stream", offset=len(data))
    return out


# --- fast value converters (default repertoire, default pydicom settings) --------------------
#
# Values are built the way pydicom's converters build them (same classes, same attributes in
# the same order) but without the per-item constructor and validation calls that default
# settings make no-ops; MultiValues get pydicom's own item constructors so that later
# modification behaves as usual.

_new = object.__new__
_float_new = float.__new__
_int_new = int.__new__


class _NotFast(Exception):
    """Internal: the value needs pydicom's own converter (e.g. ISO 2022 escapes)."""


def _mv(ctor: Callable[[Any], Any], items: list[Any]) -> Any:
    """A ``MultiValue`` whose items are already of the constructor's type."""
    mv: MultiValue[Any] = _new(MultiValue)
    mv._constructor = ctor
    mv._list = items
    return mv


def _fast_uid(s: str) -> UID:
    return _UID_NEW(UID, s.strip())


def _fast_pn(s: str, codec: str = DEFAULT_ENCODING,
             enc: tuple[str, ...] = DEFAULT_ENCODINGS, mode: int | None = None) -> PersonName:
    comps = s.split("=")
    while comps and not comps[-1]:
        comps.pop()
    pn: PersonName = _new(PersonName)
    pn._components = tuple(comps)
    pn.validation_mode = config.settings.reading_validation_mode if mode is None else mode
    pn.original_string = "=".join(comps).encode(codec)
    pn.encodings = enc
    return pn


def _fast_is(s: str) -> Any:
    """IS value; one that is no integer (``1,5``, ``abc``) goes to pydicom, which keeps it as
    text, rather than failing the whole data set."""
    t = s.strip()
    if not t:
        return s
    try:
        n = int(t)
        if not -(2**53) < n < 2**53:
            return IS(s)
    except ValueError:
        raise _NotFast from None
    v = _int_new(IS, n)
    v.original_string = t
    return v


def _fast_ds(s: str) -> Any:
    """DS value; one Python's float() refuses goes to pydicom (kept as text, as pydicom does)."""
    t = s.strip()
    if not t:
        return s
    try:
        v = _float_new(DSfloat, s)
    except ValueError:
        raise _NotFast from None
    v.original_string = t
    v.auto_format = False
    return v


def _c_string(b: bytes) -> Any:
    items = b.decode(DEFAULT_ENCODING).rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else _mv(str, items)


def _c_ae(b: bytes) -> Any:
    values = [s.strip() for s in b.decode(DEFAULT_ENCODING).split("\\")]
    return values[0] if len(values) == 1 else _mv(str, values)


def _c_ur(b: bytes) -> Any:
    return b.decode(DEFAULT_ENCODING).rstrip()


def _c_ui(b: bytes) -> Any:
    items = b.decode(DEFAULT_ENCODING).rstrip("\0 ").split("\\")
    if len(items) == 1:
        return _UID_NEW(UID, items[0].strip())
    return _mv(UID, [_UID_NEW(UID, s.strip()) for s in items])


def _c_ds(b: bytes) -> Any:
    items = b.decode(DEFAULT_ENCODING).strip().rstrip(" \x00").split("\\")
    if len(items) == 1:
        return _fast_ds(items[0])
    return _mv(DSfloat, [_fast_ds(s) for s in items])


def _c_is(b: bytes) -> Any:
    items = b.decode(DEFAULT_ENCODING).rstrip(" \x00").split("\\")
    if len(items) == 1:
        return _fast_is(items[0])
    return _mv(IS, [_fast_is(s) for s in items])


def _c_bytes(b: bytes) -> Any:
    return b


def _text_converters(codec: str, enc: tuple[str, ...]) -> dict[str, Callable[[bytes], Any]]:
    """Converters for the Specific Character Set VRs with one plain Python codec."""
    mode = config.settings.reading_validation_mode

    def pn_item(x: Any) -> PersonName:  # MultiValue constructor, as pydicom's get_valtype
        return _fast_pn(x, codec, enc) if isinstance(x, str) else PersonName(x, list(enc))

    def text(b: bytes) -> Any:
        if b"\x1b" in b:
            raise _NotFast
        values = [v.rstrip("\0 ") for v in b.decode(codec).split("\\")]
        return values[0] if len(values) == 1 else _mv(str, values)

    def single(b: bytes) -> Any:
        if b"\x1b" in b:
            raise _NotFast
        return b.decode(codec).rstrip("\0 ")

    def pn(b: bytes) -> Any:
        if b"\x1b" in b:
            raise _NotFast
        items = b.rstrip(b"\x00 ").decode(codec).split("\\")
        if len(items) == 1:
            return _fast_pn(items[0], codec, enc, mode)
        return _mv(pn_item, [_fast_pn(x, codec, enc, mode) for x in items])

    return {"LO": text, "SH": text, "UC": text, "LT": single, "ST": single, "UT": single,
            "PN": pn}


_CONVERTERS: dict[str, Callable[[bytes], Any]] = {
    "AE": _c_ae, "AS": _c_string, "CS": _c_string, "DA": _c_string, "DT": _c_string,
    "TM": _c_string, "UR": _c_ur, "UI": _c_ui, "DS": _c_ds, "IS": _c_is,
    **{vr: _c_bytes for vr in ("OB", "OD", "OF", "OL", "OV", "OW")},
}
#: Kept as bytes by ``value`` (UN only after the known-VR substitution; ambiguous VRs until
#: ``fix_ambiguous``); explicit UN never takes the fast loop's path.
_RAW_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"}) | AMBIGUOUS_VRS


def _number_converter(fmt: struct.Struct) -> Callable[[bytes], Any]:
    """One binary number of exactly the VR's size; anything else goes the slow way."""
    size, unpack = fmt.size, fmt.unpack

    def number(b: bytes) -> Any:
        if len(b) != size:
            raise _NotFast
        return unpack(b)[0]

    return number


_NUMBER_CONVERTERS = {
    little: {vr: _number_converter(struct.Struct(("<" if little else ">") + code))
             for vr, (code, _) in NUMBER_VRS.items()}
    for little in (True, False)
}
_NUMBERS = {vr: (code, size) for vr, (code, size) in NUMBER_VRS.items()}
_Converters = dict[str, Callable[[bytes], Any]]
_CONV_CACHE: dict[tuple[str | None, tuple[str, ...], bool, int], _Converters] = {}


def _converters(codec: str | None, enc: tuple[str, ...], little: bool) -> _Converters:
    """All one-argument fast converters for this character set and byte order (memoised)."""
    mode = config.settings.reading_validation_mode
    key = (codec, enc, little, mode)
    try:
        return _CONV_CACHE[key]
    except KeyError:
        pass
    convs = dict(_CONVERTERS)
    convs.update(_NUMBER_CONVERTERS[little])
    if codec is not None:
        convs.update(_text_converters(codec, enc))
    if len(_CONV_CACHE) < 256:
        _CONV_CACHE[key] = convs
    return convs


_TAG_CACHE: dict[int, BaseTag] = {}


def _base_tag(tag: int) -> BaseTag:
    """A shared ``BaseTag`` per tag value (they are immutable ints)."""
    btag = _TAG_CACHE.get(tag)
    if btag is None:
        btag = BaseTag(tag)
        if len(_TAG_CACHE) < 65536:
            _TAG_CACHE[tag] = btag
    return btag


_DS_PROTO: dict[bool, tuple[dict[str, Any], tuple[str, ...]]] = {}


def _new_dataset(parent: tuple[str, ...], implicit: bool, little: bool) -> Dataset:
    """A fresh ``Dataset`` with exactly the attributes ``Dataset()`` sets, without its
    ``__setattr__`` machinery (pydicom's constructor costs ~5 us); then the reader's
    ``set_original_encoding``."""
    future = bool(config._use_future)
    proto = _DS_PROTO.get(future)
    if proto is None:
        attrs = dict(Dataset().__dict__)
        proto = attrs, tuple(k for k, v in attrs.items() if isinstance(v, dict | list | set))
        _DS_PROTO[future] = proto
    attrs, mutable = proto
    ds: Dataset = _new(Dataset)
    d = ds.__dict__
    d.update(attrs)
    for name in mutable:
        d[name] = attrs[name].copy()
    d["_parent_encoding"] = list(parent)
    d["_read_implicit"] = implicit
    d["_read_little"] = little
    return ds


def _empty(vr: str) -> Any:
    if vr == "PN" and default_config():
        return _fast_pn("")
    return empty_value_for_VR(vr)


_Unpack = Callable[[bytes, int], tuple[Any, ...]]
#: Per byte order: uint16, uint32, implicit header, explicit short header.
_UNPACKERS: dict[bool, tuple[_Unpack, _Unpack, _Unpack, _Unpack]] = {
    little: tuple(  # type: ignore[misc]
        struct.Struct(("<" if little else ">") + fmt).unpack_from
        for fmt in ("H", "L", "HHL", "HH2sH")
    )
    for little in (True, False)
}


class _Parser:
    """One decode call over an immutable buffer."""

    __slots__ = ("buf", "fast", "little", "e", "u16", "u32", "hdr", "hdr_x", "ambiguous",
                 "mode")

    def __init__(self, buf: bytes, little: bool, fast: bool) -> None:
        self.buf = buf
        self.little = little
        self.fast = fast
        self.e = "<" if little else ">"
        self.u16, self.u32, self.hdr, self.hdr_x = _UNPACKERS[little]
        self.mode = config.settings.reading_validation_mode
        self.ambiguous: list[tuple[Dataset, DataElement, list[Dataset]]] = []

    def dataset(
        self, pos: int, end: int, implicit: bool, enc: tuple[str, ...],
        parents: list[Dataset], item_undefined: bool,
    ) -> tuple[Dataset, int]:
        """Decode elements from ``pos`` to ``end`` (or to an item delimiter).

        The loop body is the hot path: element objects are built directly (the attributes
        ``DataElement.__init__`` sets, in its order) when a fast converter applies.
        """
        if len(parents) > MAX_DEPTH:
            raise DataSetDecodeError("sequences nested too deeply", offset=pos)
        ds = _new_dataset(enc, implicit, self.little)
        d = ds._dict
        buf, hdr, hdr_x, u32, mode = self.buf, self.hdr, self.hdr_x, self.u32, self.mode
        convs = _converters(plain_codec(enc), enc, self.little) if self.fast else {}
        vr_info, tags, new, elem_cls = _VR_INFO, _TAG_CACHE, _new, DataElement
        while pos < end:
            if pos + 8 > end:
                raise DataSetDecodeError("truncated element header", offset=pos)
            if implicit:
                group, elno, length = hdr(buf, pos)
            else:
                group, elno, vrb, length = hdr_x(buf, pos)
            tag = group << 16 | elno
            if group == 0xFFFE:
                if tag == ITEM_DELIM_TAG and item_undefined:
                    break
                raise DataSetDecodeError("unexpected item or sequence delimiter",
                                         tag=tag, offset=pos)
            vpos = pos + 8
            if implicit:
                vr = self.implicit_vr(tag, d)
            else:
                info = vr_info.get(vrb)
                if info is None:
                    raise DataSetDecodeError(f"invalid VR {vrb!r}", tag=tag, offset=pos + 4)
                vr, long = info
                if long:
                    if pos + 12 > end:
                        raise DataSetDecodeError("truncated element header", tag=tag, offset=pos)
                    length = u32(buf, pos + 8)[0]
                    vpos = pos + 12
            conv = convs.get(vr)
            if conv is not None and length and length != UNDEFINED and not group & 1:
                vend = vpos + length
                if vend <= end:
                    try:
                        value = conv(buf[vpos:vend])
                    except (UnicodeDecodeError, _NotFast):
                        pass
                    else:
                        btag = tags.get(tag) or _base_tag(tag)
                        elem = new(elem_cls)
                        elem.tag = btag
                        elem.VR = vr
                        elem.validation_mode = mode
                        elem._value = value
                        elem.file_tell = vpos
                        elem.is_undefined_length = False
                        elem.private_creator = None
                        d[btag] = elem
                        pos = vend
                        if tag == CHARSET_TAG:
                            enc = python_encodings(value)
                            convs = _converters(plain_codec(enc), enc, self.little)
                        continue
            elem, pos = self.element(tag, vr, length, vpos, end, implicit, enc, ds, parents)
            d[elem.tag] = elem
            if tag == CHARSET_TAG:
                enc = python_encodings(elem.value) if elem.value else DEFAULT_ENCODINGS
                if self.fast:
                    convs = _converters(plain_codec(enc), enc, self.little)
        else:
            if item_undefined:
                raise DataSetDecodeError("missing item delimiter", offset=pos)
            if pos != end:
                raise DataSetDecodeError("element overruns its item", offset=pos)
            return self._finish(ds, implicit, enc), pos
        return self._finish(ds, implicit, enc), pos + 8

    def _finish(self, ds: Dataset, implicit: bool, enc: tuple[str, ...]) -> Dataset:
        ds.__dict__["_read_charset"] = list(enc)  # as ``set_original_encoding`` would
        return ds

    def implicit_vr(self, tag: int, d: Any) -> str:
        """VR of an implicit-VR element as pydicom derives it."""
        if tag >> 16 & 1:
            creator = d.get(tag & 0xFFFF0000 | (tag & 0xFFFF) >> 8)
            value = creator.value if creator is not None else None
            return private_vr(tag, value if isinstance(value, str) else None)
        vr = public_vr(tag)
        if vr is None:
            return "UL" if not tag & 0xFFFF else "UN"
        return vr

    def element(
        self, tag: int, vr: str, length: int, vpos: int, end: int, implicit: bool,
        enc: tuple[str, ...], ds: Dataset, parents: list[Dataset],
    ) -> tuple[DataElement, int]:
        """Decode one element's value; return it and the offset after it."""
        if vr == "UN" and not implicit and config.replace_un_with_known_vr:
            vr = self.known_vr(tag, length, ds)
            implicit = vr == "SQ"  # a UN-encoded sequence is implicit VR little endian
        undefined = length == UNDEFINED
        if undefined and vr not in ("SQ", "UN"):
            stop = self.buf.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" if self.little
                                 else b"\xff\xfe\xe0\xdd\x00\x00\x00\x00", vpos, end)
            if stop < 0:
                raise DataSetDecodeError("missing sequence delimiter", tag=tag, offset=vpos)
            value = self.value(tag, vr, self.buf[vpos:stop], enc, vpos)
            return DataElement(BaseTag(tag), vr, value, vpos, True, True), stop + 8
        if undefined or vr == "SQ":
            if vr == "UN":
                vr, implicit = "SQ", True
            seq, nxt = self.sequence(tag, length, vpos, end, implicit, enc, [ds, *parents])
            return DataElement(BaseTag(tag), "SQ", seq, vpos, undefined, True), nxt
        vend = vpos + length
        if vend > end:
            raise DataSetDecodeError(f"value length {length} overruns the data",
                                     tag=tag, offset=vpos)
        value = self.value(tag, vr, self.buf[vpos:vend], enc, vpos)
        if value.__class__ is tuple:  # wrong-length number converted to UN
            vr, value = value
        elem = DataElement(BaseTag(tag), vr, value, vpos, False, True)
        if tag >> 16 & 1 and tag & 0xFF00:
            creator = ds._dict.get(BaseTag(tag & 0xFFFF0000 | (tag & 0xFFFF) >> 8))
            if creator is not None:
                elem.private_creator = creator.value  # type: ignore[assignment]
        if vr in AMBIGUOUS_VRS:
            self.ambiguous.append((ds, elem, parents))
        return elem, vend

    def known_vr(self, tag: int, length: int, ds: Dataset) -> str:
        """The VR pydicom puts in place of an explicit 'UN' (PS3.5 6.2.2)."""
        if length == UNDEFINED:
            return "SQ"
        if tag >> 16 & 1:
            return self.implicit_vr(tag, ds._dict)
        if length < 0xFFFF:
            return public_vr(tag) or "UN"
        return "UN"

    def sequence(
        self, tag: int, length: int, pos: int, end: int, implicit: bool,
        enc: tuple[str, ...], parents: list[Dataset],
    ) -> tuple[Sequence, int]:
        """Decode SQ items (defined or undefined lengths)."""
        undefined = length == UNDEFINED
        if not undefined:
            if pos + length > end:
                raise DataSetDecodeError(f"sequence length {length} overruns the data",
                                         tag=tag, offset=pos)
            end = pos + length
        items: list[Dataset] = []
        while True:
            if not undefined and pos == end:
                break
            if pos + 8 > end:
                raise DataSetDecodeError("truncated sequence item header", tag=tag, offset=pos)
            group, elno, ilen = self.hdr(self.buf, pos)
            itag = group << 16 | elno
            if itag == SEQ_DELIM_TAG and undefined:
                pos += 8
                break
            if itag != ITEM_TAG:
                raise DataSetDecodeError(f"expected an item tag, found {itag:08X}",
                                         tag=tag, offset=pos)
            start = pos + 8
            if ilen == UNDEFINED:
                item, pos = self.dataset(start, end, implicit, enc, parents, True)
            else:
                if start + ilen > end:
                    raise DataSetDecodeError(f"item length {ilen} overruns its sequence",
                                             tag=tag, offset=pos)
                item, pos = self.dataset(start, start + ilen, implicit, enc, parents, False)
            item.is_undefined_length_sequence_item = ilen == UNDEFINED
            item.seq_item_tell = start
            items.append(item)
        seq = Sequence(items)
        seq.is_undefined_length = undefined
        return seq, pos

    def value(self, tag: int, vr: str, raw: bytes, enc: tuple[str, ...], offset: int) -> Any:
        """Convert value bytes the way pydicom does."""
        if not raw:
            return _empty(vr)
        if self.fast and b"\x1b" not in raw:
            if vr in _RAW_VRS:
                return raw
            conv = _converters(plain_codec(enc), enc, self.little).get(vr)
            if conv is not None:
                try:
                    return conv(raw)
                except (UnicodeDecodeError, _NotFast):
                    pass
            if vr in CHARSET_VRS:
                return self.pydicom_value(tag, vr, raw, enc, offset)
            num = _NUMBERS.get(vr)
            if num is not None:
                return self.numbers(tag, vr, raw, num, offset)
            if vr == "AT" and len(raw) == 4:
                g, e = struct.unpack(self.e + "HH", raw)
                return BaseTag(g << 16 | e)
        return self.pydicom_value(tag, vr, raw, enc, offset)

    def numbers(self, tag: int, vr: str, raw: bytes, num: tuple[str, int], offset: int) -> Any:
        code, size = num
        n, rest = divmod(len(raw), size)
        if rest:
            if config.convert_wrong_length_to_UN:
                return ("UN", raw)
            raise DataSetDecodeError(f"{vr} value length {len(raw)} is not a multiple of {size}",
                                     tag=tag, offset=offset)
        values = struct.unpack(f"{self.e}{n}{code}", raw)
        if n == 1:
            return values[0]
        result = list(values)
        if tag in LUT_DESCRIPTOR_TAGS and result[0] < 0:
            result[0] += 65536
        return result

    def pydicom_value(self, tag: int, vr: str, raw: bytes, enc: tuple[str, ...],
                      offset: int) -> Any:
        """Slow path: pydicom's converter (non-default charset or settings)."""
        if vr in _NUMBERS:
            return self.numbers(tag, vr, raw, _NUMBERS[vr], offset)
        rde = RawDataElement(BaseTag(tag), vr, len(raw), raw, offset, False, self.little)
        try:
            if vr == "AT":
                return convert_ATvalue(raw, self.little)
            if IR58 in enc and vr in CHARSET_VRS:
                return _ir58_value(vr, rde, raw, enc)
            return convert_value(vr, rde, list(enc))
        except Exception as exc:
            if vr in ("DS", "IS"):  # a number even pydicom cannot hold (IS 'inf'): keep text
                try:
                    return _c_string(raw)
                except UnicodeDecodeError:
                    pass
            raise DataSetDecodeError(f"cannot convert {vr} value: {exc}",
                                     tag=tag, offset=offset) from None

    def fix_ambiguous(self) -> None:
        """Resolve 'US or SS' & co. once each data set is complete (pydicom's rules)."""
        for ds, elem, parents in self.ambiguous:
            try:
                fixed = correct_ambiguous_vr_element(elem, ds, self.little, [ds, *parents])
            except Exception:  # pydicom would fail on access too: keep the raw bytes
                continue
            ds._dict[elem.tag] = fixed


def _ir58_value(vr: str, rde: RawDataElement, raw: bytes, enc: tuple[str, ...]) -> Any:
    """A text value under ISO 2022 IR 58, read as PS3.5 Annex K writes it (see ``_ir58``)."""
    if b"\x1b" not in raw and enc[0] == DEFAULT_ENCODING and not raw.isascii():
        return convert_value(vr, rde, [IR58])  # GR bytes with no designation, as pydicom writes
    value = convert_value(vr, rde, list(enc))
    return undesignate(value) if IR58_ESCAPE in raw else value


def decode(data: bytes | bytearray | memoryview, transfer_syntax_uid: str, *,
           max_inflated: int | None = None) -> Dataset:
    """Decode a data set (no file meta, no preamble) in the given transfer syntax."""
    syn: Syntax = syntax_for_decode(transfer_syntax_uid)
    buf = data if isinstance(data, bytes) else bytes(data)
    if syn.deflated:
        buf = inflate(buf, max_inflated)
    parser = _Parser(buf, syn.little, default_config())
    try:
        ds, _ = parser.dataset(0, len(buf), syn.implicit, DEFAULT_ENCODINGS, [], False)
        parser.fix_ambiguous()
    except DataSetDecodeError:
        raise
    except RecursionError:
        raise DataSetDecodeError("sequences nested too deeply") from None
    except Exception as exc:  # defensive: never leak another exception type
        raise DataSetDecodeError(f"cannot decode data set: {exc!r}") from None
    return ds
