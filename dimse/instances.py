"""Instances on the wire: which transfer syntax an instance is in, and its network encoding.

Used by :meth:`dimse.association.Association.store`; kept apart from the association so the
association module holds only the association.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["UNCOMPRESSED", "encode_instance", "instance_transfer_syntax", "instance_uids"]

_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018

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
    from . import codec

    if transfer_syntax in codec.SUPPORTED_TRANSFER_SYNTAXES:
        return codec.encode(ds, transfer_syntax)
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


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
