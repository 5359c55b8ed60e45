"""Instances on the wire: which transfer syntax an instance is in, and its network encoding.

Used by :meth:`dimse.association.Association.store`; kept apart from the association so the
association module holds only the association.
"""

from __future__ import annotations

from typing import cast

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from ._vr import ALL_VRS, HDR_IMPLICIT, HDR_LONG, HDR_SHORT, LONG_VRS, UNDEFINED
from .errors import DataSetEncodeError
from .syntax_check import is_encapsulated

__all__ = [
    "UNCOMPRESSED",
    "check_native_pixels",
    "check_not_encapsulated",
    "check_raw_length",
    "check_whole",
    "encode_instance",
    "instance_transfer_syntax",
    "instance_uids",
]

_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_CHARSET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: the first fragment's item
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_VR_BYTES = {vr: vr.encode("ascii") for vr in ALL_VRS}
_SEQ_DELIMITER = HDR_IMPLICIT["<"].pack(0xFFFE, 0xE0DD, 0)
_HDR_I, _HDR_S, _HDR_L = HDR_IMPLICIT["<"].pack, HDR_SHORT["<"].pack, HDR_LONG["<"].pack

#: The uncompressed transfer syntaxes, in our order of preference. An uncompressed instance (or
#: one of unknown encoding) may go on a context of any of them: the codec transcodes.
UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
)


def instance_uids(ds: Dataset) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of ``ds``.

    A data set read from a file holds raw elements; pydicom converts and validates one on
    first access (~10 us per UID), so the bytes of a raw UI value are decoded directly.
    """
    return _uid(ds, _SOP_CLASS_UID, "SOPClassUID"), _uid(ds, _SOP_INSTANCE_UID, "SOPInstanceUID")


def _uid(ds: Dataset, tag: int, keyword: str) -> str:
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if elem.__class__ is RawDataElement and elem.VR in ("UI", None):
        value = elem.value
        if value is not None:
            try:
                return str(value.decode("ascii").rstrip("\0 "))
            except UnicodeDecodeError:
                pass
    return str(getattr(ds, keyword))


def encode_instance(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode ``ds`` for the network in ``transfer_syntax`` (no file meta, no preamble).

    Uncompressed syntaxes go through ``dimse.codec``; an encapsulated (compressed) instance is
    explicit VR little endian around its already compressed pixel data, written by pydicom.
    """
    if transfer_syntax in UNCOMPRESSED:
        check_not_encapsulated(ds, transfer_syntax)
    if transfer_syntax == _EXPLICIT_LE or transfer_syntax == _IMPLICIT_LE:
        raw = _encode_raw(ds, transfer_syntax == _IMPLICIT_LE)
        if raw is not None:
            return raw
    from . import codec

    if transfer_syntax in codec.SUPPORTED_TRANSFER_SYNTAXES:
        check_native_pixels(ds)
        return codec.encode(ds, transfer_syntax)
    return _encode_encapsulated(ds, transfer_syntax)


def check_not_encapsulated(ds: Dataset, transfer_syntax: str) -> None:
    """DataSetEncodeError when the top-level Pixel Data is encapsulated (undefined length,
    fragments) while ``transfer_syntax`` is a native one: PS3.5 A.4 allows fragments only in
    the encapsulated syntaxes, and a peer would store compressed pixels that its readers take
    for uncompressed ones. It happens when a file's meta information names a native syntax
    for compressed pixel data, or when compressed pixels are put in a data set by hand."""
    elem = ds._dict.get(_PIXEL_DATA)  # type: ignore[call-overload]
    if elem is None:
        return
    undefined = (elem.length == UNDEFINED if elem.__class__ is RawDataElement
                 else elem.is_undefined_length)
    if undefined:
        raise DataSetEncodeError(
            f"encapsulated (compressed) pixel data cannot be sent in the native transfer "
            f"syntax {transfer_syntax} (PS3.5 A.4); is the file's meta information wrong? "
            "send it in its compressed transfer syntax", tag=_PIXEL_DATA)


def check_native_pixels(ds: Dataset) -> None:
    """DataSetEncodeError when native Pixel Data holds fewer bytes than its image attributes
    (Rows, Columns, Samples per Pixel, Bits Allocated, Number of Frames) need.

    A truncated file's Pixel Data is caught by :func:`check_raw_length` while still raw; once
    pydicom has converted it (``ds.PixelData`` read, the data set printed or iterated) the
    length the file declared is gone, and only the image's size can tell it was cut short.
    Longer is left alone (padding, vendor slack); so are attributes missing or not numbers.
    """
    elem = ds._dict.get(_PIXEL_DATA)  # type: ignore[call-overload]
    if elem is None or elem.__class__ is not DataElement or elem.is_undefined_length:
        return  # absent, raw (its own length check), or encapsulated
    value = elem.value
    if not isinstance(value, (bytes, bytearray)):
        return
    try:
        rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip().endswith("_422"):
        samples = 2  # YBR_FULL_422, retired YBR_PARTIAL_422: each pair of pixels shares its
        # two chroma samples (PS3.3 C.7.6.3.1.2)
    needed = (rows * columns * samples * frames * bits + 7) // 8
    if len(value) < needed:
        raise DataSetEncodeError(
            f"Pixel Data holds {len(value)} bytes, its image attributes need {needed} "
            "(file cut short?)", tag=_PIXEL_DATA)


def _encode_encapsulated(ds: Dataset, transfer_syntax: str) -> bytes:
    """Explicit VR little endian written by pydicom around compressed Pixel Data.

    PS3.5 A.4: the top-level Pixel Data of an encapsulated syntax has an undefined length and
    holds items (fragments). A value that already holds items but was given a defined length
    (``ds.PixelData = encapsulate(frames)``, which pydicom's ``dcmwrite`` also fixes) is sent
    with an undefined length; native pixel data is refused, never sent as compressed.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    check_whole(ds)
    pixels = _encapsulated_pixel_data(ds, transfer_syntax) if is_encapsulated(transfer_syntax) \
        else None  # a private syntax: not known to encapsulate, sent as it is
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    # flagged for the writer only: the caller's element is left as it was
    flagged = None if pixels is None or pixels.is_undefined_length else pixels
    if flagged is not None:
        flagged.is_undefined_length = True
    try:
        write_dataset(buffer, ds)
    except Exception as exc:  # pydicom's writer: TypeError, ValueError, struct.error...
        raise DataSetEncodeError(
            f"cannot write the data set in transfer syntax {transfer_syntax}: "
            f"{type(exc).__name__}: {exc}{_implicit_hint(ds)}") from exc
    finally:
        if flagged is not None:
            flagged.is_undefined_length = False
    return buffer.getvalue()


def _implicit_hint(ds: Dataset) -> str:
    """Why pydicom's writer may have failed: raw elements read without a VR (a file whose meta
    names an Explicit VR, encapsulated syntax over an Implicit VR body), or nothing."""
    if any(e.__class__ is RawDataElement and e.VR is None for e in ds._dict.values()):
        return " (the data set was read as Implicit VR: is the file's meta information wrong?)"
    return ""


def _encapsulated_pixel_data(ds: Dataset, transfer_syntax: str) -> DataElement | None:
    """The top-level Pixel Data element, checked to hold fragments (PS3.5 A.4), or None."""
    if _PIXEL_DATA not in ds._dict:
        return None
    raw = ds._dict[_PIXEL_DATA]  # type: ignore[index]
    if raw.__class__ is RawDataElement and raw.length == UNDEFINED:
        return None  # read encapsulated: written back as read
    try:
        elem = ds[_PIXEL_DATA]
    except Exception as exc:
        raise DataSetEncodeError(f"cannot read Pixel Data: {exc}", tag=_PIXEL_DATA) from exc
    value = elem.value
    if not value:
        return None  # empty: nothing to encapsulate, sent as it is
    if elem.is_undefined_length:
        return elem
    head = bytes(value[:4]) if isinstance(value, (bytes, bytearray, memoryview)) else b""
    if head != _ITEM_TAG:
        raise DataSetEncodeError(
            f"native (not encapsulated) pixel data cannot be sent in the encapsulated "
            f"transfer syntax {transfer_syntax} (PS3.5 A.4); decompress the instance or send "
            "it in an uncompressed transfer syntax", tag=_PIXEL_DATA)
    return elem


def check_whole(ds: Dataset) -> None:
    """DataSetEncodeError when a top-level value read from a file is shorter than declared.

    pydicom keeps what a truncated file holds (``RawDataElement.length`` says what the file
    declared); sending it would pass a cut value off as whole, or, for a sequence, make the
    peer abort on items running past its end.
    """
    for elem in ds._dict.values():
        if elem.__class__ is RawDataElement:
            check_raw_length(elem)


def check_raw_length(elem: RawDataElement) -> None:
    """DataSetEncodeError when the raw ``elem`` holds fewer (or more) bytes than it declares."""
    value = elem.value
    length = elem.length
    if value is not None and length != UNDEFINED and len(value) != length:
        raise DataSetEncodeError(
            f"value truncated: {length} bytes declared, {len(value)} read (file cut short?)",
            tag=int(elem.tag))


def _encode_raw(ds: Dataset, implicit: bool) -> bytes | None:
    """The bytes ``dimse.codec`` writes for a data set read from a file and left untouched.

    The hot path of C-STORE from files (~20 -> ~6 us for a 10 KB CT): every element is still
    raw, the data set was read little endian with the wanted VR encoding and its character set
    is unchanged, so each element is its header plus the read value. Anything else (a converted
    element, an unknown VR, a long value in a short VR) returns None and the codec does the work.
    """
    d = ds._dict
    if ds._read_little is not True or ds._read_implicit is not implicit:
        return None
    charset = d.get(_CHARSET)  # type: ignore[call-overload]
    if charset is None:
        if ds._read_charset != ds._parent_encoding:
            return None
    elif not _same_charset(charset, ds._read_charset):
        return None
    out: list[bytes] = []
    append = out.append
    for tag in sorted(d, key=int):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group lengths are not written (PS3.5 7.2), as in the codec
        elem = d[tag]
        if elem.__class__ is not RawDataElement:
            if tag != _CHARSET:
                return None
            elem = _raw_charset(cast(DataElement, elem))
        value = elem.value
        n = elem.length
        if value is None:
            if n:
                return None
            value = b""  # an empty value is read as None
        undefined = n == UNDEFINED
        if not undefined and len(value) != n:
            check_raw_length(elem)  # raises: the file was cut short
        if implicit:
            append(_HDR_I(tag >> 16, tag & 0xFFFF, n))
        else:
            vr = elem.VR
            vr_bytes = _VR_BYTES.get(vr or "")
            if vr_bytes is None:
                return None
            if vr in LONG_VRS or undefined:
                append(_HDR_L(tag >> 16, tag & 0xFFFF, vr_bytes, n))
            elif n <= 0xFFFF:
                append(_HDR_S(tag >> 16, tag & 0xFFFF, vr_bytes, n))
            else:
                return None
        append(value)
        if undefined:
            append(_SEQ_DELIMITER)
    return b"".join(out)


def _same_charset(elem: object, read: object) -> bool:
    """Whether Specific Character Set (converted by ``dcmread``) still names the read encodings.

    Only a single value is taken (multi-valued ISO 2022 sets go through the codec).
    """
    value = getattr(elem, "value", None)
    if elem.__class__ is not DataElement or value.__class__ is not str or not value:
        return False
    try:
        return bool(convert_encodings(value) == read)
    except (LookupError, ValueError):
        return False


def _raw_charset(elem: DataElement) -> RawDataElement:
    """The checked single-valued Specific Character Set as the codec writes it (CS, padded)."""
    data = str(elem.value).encode("ascii")
    if len(data) & 1:
        data += b" "
    return RawDataElement(elem.tag, "CS", len(data), data, 0, False, True)


def instance_transfer_syntax(ds: Dataset) -> str | None:
    """The transfer syntax an instance is encoded in, when known (file meta or read encoding)."""
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts:
        return str(ts)
    encoding = getattr(ds, "original_encoding", None)
    if encoding and encoding[0] is not None:
        implicit, little = encoding
        if implicit:
            return "1.2.840.10008.1.2"
        return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
    return None
