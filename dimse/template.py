"""``IdentifierTemplate``: compile an identifier layout once, fill it from plain values.

A gateway answers C-FIND with thousands of matches that all carry the same keys. The template
resolves tags and VRs, sorts the keys into tag order, precomputes every element header and the
empty-value bytes, and then encodes one match from a list of plain Python values without
building a pydicom Dataset. The bytes equal ``dimse.codec.encode`` (and so pydicom's writer)
for the equivalent data set: ``ds.add_new(tag, vr, value)`` for each key.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.valuerep import DSfloat

from dimse._codec_encode import _Writer, check_encodable, deflate, encode_text
from dimse._ir58 import designate
from dimse._vr import (
    AMBIGUOUS_VRS,
    BYTES_VRS,
    CHARSET_VRS,
    DEFAULT_ENCODING,
    DEFAULT_ENCODINGS,
    HDR_IMPLICIT,
    HDR_LONG,
    HDR_SHORT,
    LONG_VRS,
    NUMBER_STRUCTS,
    NUMBER_VRS,
    Syntax,
    plain_codec,
    public_vr,
    python_encodings,
    syntax_for_encode,
)
from dimse.errors import DataSetEncodeError

__all__ = ["IdentifierTemplate", "KeySpec", "Value"]

Value = str | bytes | int | float | list[Any] | tuple[Any, ...] | None
KeySpec = str | int | tuple[str | int, str]
_Encoder = Callable[[Any], bytes]
_SPLIT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC",
                        "UI"})


def _resolve(key: KeySpec) -> tuple[int, str]:
    """(tag, VR) for a keyword, a tag or a (keyword-or-tag, VR) pair."""
    explicit: str | None = None
    if isinstance(key, tuple):
        key, explicit = key
    if isinstance(key, str):
        tag = tag_for_keyword(key)
        if tag is None:
            try:
                tag = int(Tag(key))
            except Exception:
                raise ValueError(f"unknown keyword {key!r}") from None
    else:
        tag = int(Tag(key))
    vr = explicit or public_vr(tag)
    if vr is None:
        raise ValueError(f"no dictionary VR for {tag:08X}: give it explicitly")
    if vr in AMBIGUOUS_VRS:
        raise ValueError(f"ambiguous VR {vr!r} for {tag:08X}: give it explicitly")
    return tag, vr


class IdentifierTemplate:
    """A compiled identifier layout: ``encode(values)`` -> data set bytes.

    ``keys`` are keywords, tags (int) or ``(keyword_or_tag, VR)`` pairs; values passed to
    :meth:`encode` follow the same order. ``None``, ``""`` and ``[]`` give an empty element
    (universal matching). Strings with a backslash are multi-valued, as in pydicom; lists give
    several values; ``bytes`` are written as already encoded. SQ keys take ``None``/``[]`` or a
    list of pydicom Datasets.
    """

    __slots__ = ("_charset_bytes", "_count", "_deflated", "_encoders", "_fast", "_order", "_skip",
                 "_slots", "keys", "syntax", "tags", "transfer_syntax_uid", "vrs")

    def __init__(
        self,
        keys: Sequence[KeySpec],
        transfer_syntax_uid: str,
        *,
        specific_character_set: str | Sequence[str] | None = None,
        skip: int = 0,
    ) -> None:
        syn = syntax_for_encode(transfer_syntax_uid)
        resolved = [_resolve(k) for k in keys]
        tags = [t for t, _ in resolved]
        if len(set(tags)) != len(tags):
            raise ValueError("duplicate key in identifier template")
        for tag in tags:
            if tag == 0x00080005:
                raise ValueError("pass SpecificCharacterSet as specific_character_set=")
            if not tag & 0xFFFF and tag >> 16 > 6:
                raise ValueError(f"group length {tag:08X} is never written")
            if tag >> 16 == 0xFFFE:
                raise ValueError(f"{tag:08X} is an item or delimiter tag, not a data element")
        self.keys = tuple(keys)
        self.tags = tuple(tags)
        self.vrs = tuple(vr for _, vr in resolved)
        self.syntax = syn
        self.transfer_syntax_uid = syn.uid
        self._deflated = syn.deflated
        if skip < 0:
            raise ValueError("skip must not be negative")
        enc = DEFAULT_ENCODINGS
        self._charset_bytes: bytes | None = None
        if specific_character_set is not None:
            if specific_character_set:
                enc = python_encodings(specific_character_set)
            cs = Dataset()
            cs.SpecificCharacterSet = specific_character_set
            writer = _Writer(Syntax(syn.uid, syn.implicit, syn.little, False))
            writer.element(cs["SpecificCharacterSet"], DEFAULT_ENCODINGS, [cs])
            self._charset_bytes = b"".join(writer.out)
        # Output slots in tag order; the charset element (if any) sits at its own place.
        sorted_idx = sorted(range(len(tags)), key=tags.__getitem__)
        self._order = tuple(sorted_idx)
        self._encoders = tuple(_compile(tags[i], self.vrs[i], syn, enc) for i in sorted_idx)
        self._count = len(tags) + skip
        self._skip = skip
        slots: list[_Slot] = []
        charset_at = 0x00080005 if self._charset_bytes is not None else None
        for i, fn in zip(sorted_idx, self._encoders, strict=True):
            if charset_at is not None and tags[i] > charset_at:
                slots.append((-1, None, b"", None, b"", self._charset_bytes, 0))
                charset_at = None
            slots.append(_slot(i + skip, tags[i], self.vrs[i], syn, enc, fn))
        if charset_at is not None:
            slots.append((-1, None, b"", None, b"", self._charset_bytes, 0))
        self._slots = tuple(slots)
        self._fast = _generate(self._slots, self._count, self._deflated, self._encode_loop)

    def encode(self, values: Sequence[Value]) -> bytes:
        """Encode one identifier from values given in key order."""
        return self._fast(values)

    def _encode_loop(self, values: Sequence[Value]) -> bytes:
        """The reference encoder (slot by slot); the generated one falls back to it."""
        if len(values) != self._count:
            raise DataSetEncodeError(f"expected {self._count} values, got {len(values)}")
        out: list[bytes] = []
        append = out.append
        try:
            for index, codec, prefix, length, pad, slow, norm in self._slots:
                if index < 0:
                    append(slow)
                    continue
                v = values[index]
                if v.__class__ is str and codec is not None and "\\" not in v:
                    if norm == 1:
                        v = v.strip()
                    elif norm == 2:
                        v = v.rstrip("=")
                    if not v:
                        append(slow(v))
                        continue
                    data = v.encode(codec)
                    n = len(data)
                    if n & 1:
                        data += pad
                        n += 1
                    if n > 0xFFFF and length is not _LONG:
                        append(slow(v))
                        continue
                    append(prefix)
                    append(length(n))
                    append(data)
                else:
                    append(slow(v))
        except DataSetEncodeError:
            raise
        except Exception as exc:
            raise DataSetEncodeError(f"cannot encode identifier value: {exc}") from exc
        data = b"".join(out)
        return deflate(data) if self._deflated else data

    def dataset(self, values: Sequence[Value]) -> Dataset:
        """The equivalent pydicom Dataset (for tests and for slow paths)."""
        ds = Dataset()
        if self._charset_bytes is not None:
            from dimse._codec_decode import decode

            cs = decode(self._charset_bytes, self.transfer_syntax_uid.replace(".99", ""))
            ds.SpecificCharacterSet = cs.SpecificCharacterSet
        for tag, vr, value in zip(self.tags, self.vrs, values[self._skip:], strict=True):
            ds.add(DataElement(tag, vr, [] if vr == "SQ" and value is None else value))
        return ds


_Slot = tuple[int, Any, bytes, Any, bytes, Any, int]
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR", "LO", "SH", "LT", "ST", "UC",
                        "UT"})
#: Names that str.encode serves without a codec registry look-up (same codec, faster).
_FAST_CODEC_NAMES = {"iso8859-1": "latin-1", "utf-8": "utf-8", "ascii": "ascii"}
_NORM = {"UI": 1, "IS": 3, "DS": 3, "PN": 2}  # 1 strip, 2 PN, 3 strip unless only spaces
_LONG = struct.Struct("<L").pack
_LENGTHS = {
    ("<", False): struct.Struct("<H").pack, (">", False): struct.Struct(">H").pack,
    ("<", True): _LONG, (">", True): struct.Struct(">L").pack,
}


def _generate(slots: tuple[_Slot, ...], count: int, deflated: bool,
              fallback: Callable[[Sequence[Value]], bytes]) -> Callable[[Sequence[Value]], bytes]:
    """An encoder specialised for these slots (straight-line code, one join per identifier).

    Plain str values of text VRs are encoded inline; anything else (None aside) goes to the
    slot's general encoder. Any exception (a value too long for its header, an unencodable
    character...) re-runs the reference loop, which raises the typed error.
    """
    ns: dict[str, Any] = {"FALLBACK": fallback, "DEFLATE": deflate, "COUNT": count}
    body = ["def encode(values):", "    if len(values) != COUNT:", "        return FALLBACK(values)",
            "    try:"]
    parts: list[str] = []
    for k, (index, codec, prefix, length, pad, slow, norm) in enumerate(slots):
        if index < 0:
            ns[f"K{k}"] = slow
            parts.append(f"K{k}")
            continue
        ns.update({f"C{k}": codec, f"P{k}": prefix, f"L{k}": length, f"D{k}": pad,
                   f"S{k}": slow, f"E{k}": slow(None)})
        lines = [f"v = values[{index}]"]
        if codec is not None:
            lines += ["if v.__class__ is str and '\\\\' not in v:"]
            if norm:
                lines.append({1: "    v = v.strip()", 2: "    v = v.rstrip('=')",
                              3: "    v = v.strip() or v"}[norm])
            lines += [f"    d{k} = v.encode(C{k})", f"    if len(d{k}) & 1:",
                      f"        d{k} += D{k}", f"    p{k}, h{k} = P{k}, L{k}(len(d{k}))", "el"]
        else:
            lines.append("")
        lines[-1] += "if v is None:"
        lines += [f"    p{k}, h{k}, d{k} = E{k}, b'', b''", "else:",
                  f"    p{k}, h{k}, d{k} = S{k}(v), b'', b''"]
        body += ["        " + line for line in lines]
        parts += [f"p{k}", f"h{k}", f"d{k}"]
    body += ["    except Exception:", "        return FALLBACK(values)",
             f"    data = b''.join(({', '.join(parts)},))"]
    body.append("    return DEFLATE(data)" if deflated else "    return data")
    exec("\n".join(body), ns)
    encode: Callable[[Sequence[Value]], bytes] = ns["encode"]
    return encode


def _slot(index: int, tag: int, vr: str, syn: Syntax, enc: tuple[str, ...],
          slow: _Encoder) -> _Slot:
    """Precomputed fast-path data for one key: plain str values of simple text VRs."""
    codec: str | None = None
    if vr in _PLAIN_VRS or vr in _NORM:
        codec = plain_codec(enc) if vr in CHARSET_VRS else DEFAULT_ENCODING
        if codec is not None:
            codec = _FAST_CODEC_NAMES.get(codecs.lookup(codec).name, codec)
    e = syn.endian
    long = syn.implicit or vr in LONG_VRS
    prefix = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if not syn.implicit:
        prefix += vr.encode("ascii") + (b"\0\0" if long else b"")
    length = _LENGTHS[(e, long)]
    if long and e == "<":
        length = _LONG
    return (index, codec, prefix, length, b"\0" if vr == "UI" else b" ", slow, _NORM.get(vr, 0))


def _compile(tag: int, vr: str, syn: Syntax, enc: tuple[str, ...]) -> _Encoder:
    """A closure encoding one element (header + padded value) from a plain value."""
    e = syn.endian
    group, element = tag >> 16, tag & 0xFFFF
    if syn.implicit:
        pack = HDR_IMPLICIT[e].pack

        def header(n: int) -> bytes:
            return pack(group, element, n)
    else:
        vrb = vr.encode("ascii")
        pack2 = (HDR_LONG if vr in LONG_VRS else HDR_SHORT)[e].pack

        def header(n: int) -> bytes:
            return pack2(group, element, vrb, n)
    empty = header(0)
    if vr == "SQ":
        return _sq_encoder(tag, syn, enc, empty)
    value_fn = _value_encoder(tag, vr, e, enc)
    short = not syn.implicit and vr not in LONG_VRS

    def encode_element(value: Any) -> bytes:
        if value is None or value == "" or value == [] or value == ():
            return empty
        data = value_fn(value)
        if short and len(data) > 0xFFFF:
            raise DataSetEncodeError("value longer than 64 KiB", tag=tag)
        return header(len(data)) + data

    return encode_element


def _sq_encoder(tag: int, syn: Syntax, enc: tuple[str, ...], empty: bytes) -> _Encoder:
    def encode_sequence(value: Any) -> bytes:
        if not value:
            return empty
        writer = _Writer(Syntax(syn.uid, syn.implicit, syn.little, False))
        writer.sequence(DataElement(tag, "SQ", value), enc, [Dataset()])
        return b"".join(writer.out)

    return encode_sequence


def _join(value: Any, norm: Callable[[str], str] | None) -> str:
    """Multi-valued text, split and normalised as pydicom's DataElement would."""
    if isinstance(value, str):
        if norm is None:
            return value
        return "\\".join([norm(v) for v in value.split("\\")]) if "\\" in value else norm(value)
    if isinstance(value, list | tuple):
        return "\\".join([norm(str(v)) if norm else str(v) for v in value])
    return str(value) if norm is None else norm(str(value))


def _pn_norm(s: str) -> str:
    return s.rstrip("=") if s.endswith("=") else s


def _number_norm(s: str) -> str:
    """IS/DS text as pydicom writes it: stripped, unless only spaces (kept as they are)."""
    return s.strip() or s


def _uid_norm(s: str) -> str:
    return s.strip()


def _ds_value(v: Any) -> str:
    if isinstance(v, str):
        return _number_norm(v)
    return str(DSfloat(v))


def _value_encoder(tag: int, vr: str, e: str, enc: tuple[str, ...]) -> Callable[[Any], bytes]:
    """Padded value bytes from a plain value, per VR."""
    if vr in NUMBER_VRS:
        single = NUMBER_STRUCTS[(vr, e)].pack
        code = NUMBER_VRS[vr][0]

        def numbers(value: Any) -> bytes:
            if isinstance(value, list | tuple):
                return struct.pack(f"{e}{len(value)}{code}", *value)
            return single(value)

        return numbers
    if vr in BYTES_VRS:
        def raw(value: Any) -> bytes:
            data = bytes(value)
            return data + b"\0" if len(data) & 1 else data

        return raw
    if vr == "AT":
        def tags(value: Any) -> bytes:
            items = value if isinstance(value, list | tuple) else [value]
            flat = [x for t in items for x in (int(Tag(t)) >> 16, int(Tag(t)) & 0xFFFF)]
            return struct.pack(f"{e}{len(flat)}H", *flat)

        return tags
    return _text_encoder(vr, enc)


def _text_encoder(vr: str, enc: tuple[str, ...]) -> Callable[[Any], bytes]:
    pad = b"\0" if vr == "UI" else b" "
    norm: Callable[[str], str] | None = None
    if vr == "UI":
        norm = _uid_norm
    elif vr in ("IS", "DS"):
        norm = _number_norm
    elif vr == "PN":
        norm = _pn_norm
    charset = vr in CHARSET_VRS and plain_codec(enc) is None
    split = vr in _SPLIT_VRS

    def text(value: Any) -> bytes:
        if isinstance(value, bytes):
            data = value
        else:
            if vr == "DS" and not isinstance(value, str):
                items = value if isinstance(value, list | tuple) else [value]
                value = [_ds_value(v) for v in items]
            s = _join(value, norm) if (split or not isinstance(value, str)) else value
            data = _encode_str(s, enc, charset, vr)
        return data + pad if len(data) & 1 else data

    return text


def _encode_str(s: str, enc: tuple[str, ...], charset: bool, vr: str) -> bytes:
    if not charset:
        if vr in CHARSET_VRS:
            return encode_text(s, enc)
        return s.encode(DEFAULT_ENCODING)
    if vr == "PN":
        from pydicom.valuerep import PersonName

        for v in s.split("\\"):
            check_encodable(v, enc)
        data = b"\\".join(PersonName(v).encode(list(enc)) for v in s.split("\\"))
        return designate(data, enc)
    if vr in ("LT", "ST", "UT"):
        return encode_text(s, enc)
    return b"\\".join(encode_text(v, enc) for v in s.split("\\"))
