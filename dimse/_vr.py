"""VR tables, transfer syntax flags and cached dictionary look-ups shared by the codec.

Everything here is computed once at import time or memoised per tag, so the encode and decode
loops only do dictionary hits and precompiled ``struct`` calls.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from pydicom import config
from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    need_tail_escape_sequence_encodings,
)
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import UID

from dimse.errors import DataSetDecodeError, DataSetEncodeError

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.99"

#: The Python codec pydicom uses for the default repertoire (ISO-IR 6 / latin-1 superset).
DEFAULT_ENCODING: Final = default_encoding
DEFAULT_ENCODINGS: Final[tuple[str, ...]] = (default_encoding,)

ITEM_TAG: Final = 0xFFFEE000
ITEM_DELIM_TAG: Final = 0xFFFEE00D
SEQ_DELIM_TAG: Final = 0xFFFEE0DD
UNDEFINED: Final = 0xFFFFFFFF
CHARSET_TAG: Final = 0x00080005
PIXEL_DATA_TAG: Final = 0x7FE00010

#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
#: VRs whose text is encoded with the Specific Character Set.
CHARSET_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs that are never split on backslash (single-valued text).
SINGLE_TEXT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
#: Byte-valued VRs: the value is kept as bytes, padded with NUL.
BYTES_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Binary numbers: struct code and size.
NUMBER_VRS: Final[dict[str, tuple[str, int]]] = {
    "US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
    "FL": ("f", 4), "FD": ("d", 8), "SV": ("q", 8), "UV": ("Q", 8),
}
#: Text VRs with the default repertoire only.
DEFAULT_TEXT_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
AMBIGUOUS_VRS: Final = frozenset({"OB or OW", "US or OW", "US or SS", "US or SS or OW"})
ALL_VRS: Final = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
     "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
     "UR", "US", "UT", "UV"}
)
LUT_DESCRIPTOR_TAGS: Final = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})


@dataclass(frozen=True, slots=True)
class Syntax:
    """What a transfer syntax means for the byte layout of a data set."""

    uid: str
    implicit: bool
    little: bool
    deflated: bool

    @property
    def endian(self) -> str:
        """The ``struct`` byte-order prefix."""
        return "<" if self.little else ">"


SYNTAXES: Final[dict[str, Syntax]] = {
    IMPLICIT_VR_LE: Syntax(IMPLICIT_VR_LE, True, True, False),
    EXPLICIT_VR_LE: Syntax(EXPLICIT_VR_LE, False, True, False),
    EXPLICIT_VR_BE: Syntax(EXPLICIT_VR_BE, False, False, False),
    DEFLATED_EXPLICIT_VR_LE: Syntax(DEFLATED_EXPLICIT_VR_LE, False, True, True),
}


def syntax_for_encode(uid: str) -> Syntax:
    """The :class:`Syntax` for ``uid`` or a :class:`DataSetEncodeError`."""
    try:
        return SYNTAXES[str(uid).rstrip("\0 ")]
    except KeyError:
        raise DataSetEncodeError(f"unsupported transfer syntax {uid!r}") from None


_JPIP_REFERENCED_DEFLATE: Final = "1.2.840.10008.1.2.4.95"


def syntax_for_decode(uid: str) -> Syntax:
    """The :class:`Syntax` for ``uid`` or a :class:`DataSetDecodeError`.

    Beyond the four native syntaxes, every transfer syntax pydicom knows as explicit VR little
    endian (the encapsulated ones: JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HTJ2K...) is read as
    such: PS3.5 A.4 encodes their data set that way, only Pixel Data being encapsulated (read as
    undefined-length bytes, as pydicom keeps it).
    """
    key = str(uid).rstrip("\0 ")
    try:
        return SYNTAXES[key]
    except KeyError:
        pass
    known = UID(key)
    if known.is_transfer_syntax and known.is_little_endian and not known.is_implicit_VR:
        # JPIP Referenced Deflate deflates its data set (PS3.5 A.6); pydicom 3.0 does not say so
        return Syntax(key, False, True, known.is_deflated or key == _JPIP_REFERENCED_DEFLATE)
    raise DataSetDecodeError(f"unsupported transfer syntax {uid!r}")


# Precompiled headers, per byte order.
HDR_IMPLICIT: Final = {"<": struct.Struct("<HHL"), ">": struct.Struct(">HHL")}
HDR_SHORT: Final = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}
HDR_LONG: Final = {"<": struct.Struct("<HH2s2xL"), ">": struct.Struct(">HH2s2xL")}
TAG_LEN: Final = {"<": struct.Struct("<HHL"), ">": struct.Struct(">HHL")}
UINT16: Final = {"<": struct.Struct("<H"), ">": struct.Struct(">H")}
UINT32: Final = {"<": struct.Struct("<L"), ">": struct.Struct(">L")}
NUMBER_STRUCTS: Final = {
    (vr, e): struct.Struct(e + code) for vr, (code, _) in NUMBER_VRS.items() for e in "<>"
}

_VR_CACHE: dict[int, str | None] = {}


def public_vr(tag: int) -> str | None:
    """The dictionary VR of a non-private tag (repeaters included), memoised; None if unknown."""
    try:
        return _VR_CACHE[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(dictionary_VR(tag))
    except KeyError:
        vr = None
    if len(_VR_CACHE) < 65536:
        _VR_CACHE[tag] = vr
    return vr


_PRIVATE_CACHE: dict[tuple[int, str], str] = {}


def private_vr(tag: int, creator: str | None) -> str:
    """VR for a private tag as pydicom derives it: LO for creators, private dictionary or UN."""
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"
    if creator and element & 0xFF00:
        key = (tag, creator)
        try:
            return _PRIVATE_CACHE[key]
        except KeyError:
            pass
        try:
            vr = str(private_dictionary_VR(tag, creator))
        except KeyError:
            vr = "UN"
        if len(_PRIVATE_CACHE) < 65536:
            _PRIVATE_CACHE[key] = vr
        return vr
    return "UN"


_ENCODINGS_CACHE: dict[object, tuple[str, ...]] = {}


def python_encodings(charset: object) -> tuple[str, ...]:
    """Python codecs for a Specific Character Set value (str, list or None), memoised."""
    # str or None as is; list, tuple or pydicom's MultiValue (a file's multi-valued charset)
    key: object = charset
    if charset is not None and not isinstance(charset, str):
        key = tuple(cast(Iterable[str], charset))
    try:
        return _ENCODINGS_CACHE[key]
    except (KeyError, TypeError):
        pass
    value = list(key) if isinstance(key, tuple) else key
    result = tuple(convert_encodings(value))  # type: ignore[arg-type]
    if len(_ENCODINGS_CACHE) < 1024:
        _ENCODINGS_CACHE[key] = result
    return result


def default_config() -> bool:
    """True when pydicom's value-conversion settings are the defaults our fast paths mirror."""
    return not (
        config.datetime_conversion
        or config.use_DS_decimal
        or config.use_DS_numpy
        or config.use_IS_numpy
        or config.use_none_as_empty_text_VR_value
        or config.data_element_callback
        or not config.replace_un_with_known_vr
        or config.settings.reading_validation_mode == config.RAISE
    )


_PLAIN_CACHE: dict[tuple[str, ...], str | None] = {}


def plain_codec(encodings: tuple[str, ...]) -> str | None:
    """The one Python codec that pydicom would use as-is for these encodings, else None.

    With a single encoding that needs no escape sequences, pydicom encodes with
    ``str.encode(codec)`` and decodes (absent ESC bytes) with ``bytes.decode(codec)``.
    """
    try:
        return _PLAIN_CACHE[encodings]
    except KeyError:
        pass
    codec: str | None = None
    if len(encodings) == 1:
        name = encodings[0]
        if name not in custom_encoders and name not in need_tail_escape_sequence_encodings:
            try:
                "".encode(name)
                codec = name
            except LookupError:
                codec = None
    if len(_PLAIN_CACHE) < 1024:
        _PLAIN_CACHE[encodings] = codec
    return codec
