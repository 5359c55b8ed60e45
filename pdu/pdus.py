"""The seven Upper Layer PDUs (PS3.8 9.3) as frozen dataclasses; ``decode()`` and ``encode()``.

``decode(data)`` takes a buffer holding exactly one PDU and returns a PDU or raises
``PduDecodeError`` (never another exception). P-DATA-TF decoding does not copy: each PDV's ``data``
is a memoryview slice of the input. Encoding validates the fields (``PduEncodeError``) and writes
each PDU with a single join.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Union

from ._cursor import ITEM_NAMES, Cursor, check_context_id, check_int, scan_items
from .constants import (
    DEFAULT_MAX_PDU_LENGTH,
    DICOM_APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    AbortReason,
    PduType,
)
from .errors import PduDecodeError, PduEncodeError
from .items import (
    ApplicationContextItem,
    AssociateItem,
    PresentationContextAC,
    PresentationContextRQ,
    UnknownItem,
    UserInformation,
)

_PDU_HDR = struct.Struct(">BBI")
_PDV_HDR = struct.Struct(">IBB")
_PDATA_ONE = struct.Struct(">BBIIBB")  # P-DATA-TF header + the header of its single PDV
_U32 = struct.Struct(">I")
_FIXED = struct.Struct(">BBIBBBB")  # the 10-byte PDUs
_ASSOC_FIXED = struct.Struct(">BBIHH16s16s32s")
_INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE
_UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER
_MAX_U32 = 0xFFFFFFFF


# --------------------------------------------------------------------------- P-DATA-TF
@dataclass(frozen=True, slots=True)
class PresentationDataValue:
    """One PDV: a fragment of a command or data set on a presentation context (PS3.8 E.2)."""

    context_id: int
    control: int
    data: bytes | memoryview

    @property
    def is_command(self) -> bool:
        return bool(self.control & 1)

    @property
    def is_last(self) -> bool:
        return bool(self.control & 2)


def _pdv_data(pdv: object) -> bytes | memoryview:
    """Validate a PDV for encoding; return its data as a flat byte buffer."""
    if type(pdv) is not PresentationDataValue:
        raise PduEncodeError(f"PDataTF.pdvs must hold PresentationDataValue, not {pdv!r}")
    check_context_id(pdv.context_id, "PresentationDataValue.context_id")
    check_int(pdv.control, "PresentationDataValue.control", 255)
    data = pdv.data
    if type(data) is bytes:
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PduEncodeError("PresentationDataValue.data must be bytes-like")
    view = memoryview(data)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    return view.cast("B") if view.c_contiguous else view.tobytes()  # strided: its logical bytes


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF (0x04): one or more PDVs."""

    pdu_type: ClassVar[int] = PduType.P_DATA_TF
    pdvs: tuple[PresentationDataValue, ...]

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls, view: memoryview, length: int) -> PDataTF:
        if length >= 6:  # fast path: a single PDV filling the PDU
            item_length, context_id, control = _PDV_HDR.unpack_from(view, 6)
            if item_length == length - 4 and item_length >= 2:
                return _new_pdata((_new_pdv(context_id, control, view[12:]),))
        elif length == 0:
            raise PduDecodeError("P-DATA-TF holds no PDV", offset=2, item="PDataTF",
                                 field="pdu-length")
        return _new_pdata(_decode_pdvs(view, 6 + length))


def _decode_pdvs(view: memoryview, end: int) -> tuple[PresentationDataValue, ...]:
    pos = 6
    pdvs = []
    unpack = _PDV_HDR.unpack_from
    while pos < end:
        if end - pos < 6:
            raise PduDecodeError(
                f"{end - pos} bytes left, too few for a PDV (4-byte length, context ID, "
                "control header)", offset=pos, item="PresentationDataValue", field="item-length")
        item_length, context_id, control = unpack(view, pos)
        if item_length < 2:
            raise PduDecodeError(f"PDV item-length {item_length} is shorter than its 2-byte "
                                 "header", offset=pos, item="PresentationDataValue",
                                 field="item-length")
        nxt = pos + 4 + item_length
        if nxt > end:
            raise PduDecodeError(f"PDV item-length {item_length} overruns the P-DATA-TF "
                                 f"({end - pos - 4} bytes left)", offset=pos,
                                 item="PresentationDataValue", field="item-length")
        pdvs.append(_new_pdv(context_id, control, view[pos + 6:nxt]))
        pos = nxt
    return tuple(pdvs)


def _encode_pdvs(pdvs: tuple[PresentationDataValue, ...]) -> bytes:
    """Encode a P-DATA-TF off the hot path: any number of PDVs, any bytes-like data, checked."""
    if not isinstance(pdvs, tuple | list) or not pdvs:
        raise PduEncodeError("PDataTF.pdvs must be a non-empty tuple of PresentationDataValue")
    if len(pdvs) == 1:
        pdv = pdvs[0]
        data = _pdv_data(pdv)
        size = len(data)
        if size > _MAX_U32 - 6:
            raise PduEncodeError("PresentationDataValue.data is too long for one PDU")
        return b"".join((_PDATA_ONE.pack(4, 0, size + 6, size + 2, pdv.context_id,
                                         pdv.control), data))
    parts: list[bytes | memoryview] = [b""]
    total = 0
    for pdv in pdvs:
        data = _pdv_data(pdv)
        parts.append(_PDV_HDR.pack(len(data) + 2, pdv.context_id, pdv.control))
        parts.append(data)
        total += len(data) + 6
    if total > _MAX_U32:
        raise PduEncodeError("PDataTF is too long for one PDU")
    parts[0] = _PDU_HDR.pack(4, 0, total)
    return b"".join(parts)


# Frozen dataclasses set each field through object.__setattr__; on the P-DATA hot path we build
# instances by setting the slots directly (same object, about half the cost).
_object_new = object.__new__
_set_cid = vars(PresentationDataValue)["context_id"].__set__
_set_control = vars(PresentationDataValue)["control"].__set__
_set_data = vars(PresentationDataValue)["data"].__set__
_set_pdvs = vars(PDataTF)["pdvs"].__set__


def _new_pdv(context_id: int, control: int, data: memoryview) -> PresentationDataValue:
    pdv = _object_new(PresentationDataValue)
    _set_cid(pdv, context_id)
    _set_control(pdv, control)
    _set_data(pdv, data)
    return pdv


def _new_pdata(pdvs: tuple[PresentationDataValue, ...]) -> PDataTF:
    pdata = _object_new(PDataTF)
    _set_pdvs(pdata, pdvs)
    return pdata


# --------------------------------------------------------------------------- fixed-size PDUs
def _check_fixed_length(length: int, name: str) -> None:
    if length != 4:
        raise PduDecodeError(f"{name} PDU-length is {length}, must be 4", offset=2, item=name,
                             field="pdu-length")


@dataclass(frozen=True, slots=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ (0x03): result (1 permanent, 2 transient), source and reason."""

    pdu_type: ClassVar[int] = PduType.A_ASSOCIATE_RJ
    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        return _FIXED.pack(3, 0, 4, 0, check_int(self.result, "AAssociateRJ.result", 255),
                           check_int(self.source, "AAssociateRJ.source", 255),
                           check_int(self.reason, "AAssociateRJ.reason", 255))

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AAssociateRJ:
        _check_fixed_length(length, "AAssociateRJ")
        return cls(view[7], view[8], view[9])


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    """A-RELEASE-RQ (0x05)."""

    pdu_type: ClassVar[int] = PduType.A_RELEASE_RQ

    def encode(self) -> bytes:
        return b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AReleaseRQ:
        _check_fixed_length(length, "AReleaseRQ")
        return cls()


@dataclass(frozen=True, slots=True)
class AReleaseRP:
    """A-RELEASE-RP (0x06)."""

    pdu_type: ClassVar[int] = PduType.A_RELEASE_RP

    def encode(self) -> bytes:
        return b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AReleaseRP:
        _check_fixed_length(length, "AReleaseRP")
        return cls()


@dataclass(frozen=True, slots=True)
class AAbort:
    """A-ABORT (0x07): source (0 service user, 2 service provider) and reason."""

    pdu_type: ClassVar[int] = PduType.A_ABORT
    source: int = 0
    reason: int = 0

    def encode(self) -> bytes:
        return _FIXED.pack(7, 0, 4, 0, 0, check_int(self.source, "AAbort.source", 255),
                           check_int(self.reason, "AAbort.reason", 255))

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AAbort:
        _check_fixed_length(length, "AAbort")
        return cls(view[8], view[9])


# --------------------------------------------------------------------------- A-ASSOCIATE-RQ/AC
def _strip_ae(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


def _ae_canonical(value: str) -> bytes | None:
    """Space-padded encoding of ``value``, or None if it cannot be encoded as is."""
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(data) > 16 or value != value.strip(" \x00") or "\\" in value or not all(
            0x20 <= b < 0x7F for b in data):
        return None
    return data.ljust(16, b" ")


def is_ae_title(value: str) -> bool:
    """Whether ``value`` is an AE title that may be sent (PS3.5 AE, PS3.8 9.3.2): 1 to 16
    printable ASCII characters, no backslash, no leading or trailing spaces."""
    return bool(value.strip(" \x00")) and _ae_canonical(value) is not None


def _ae_field(value: str, raw: bytes | None, name: str) -> bytes:
    """The 16-byte AE field: as received (``raw``) if it still matches ``value``, else padded."""
    if raw is not None and isinstance(raw, bytes) and len(raw) == 16 and isinstance(value, str) \
            and _strip_ae(raw) == value:
        return raw
    if not isinstance(value, str):
        raise PduEncodeError(f"{name} must be a str, not {type(value).__name__}")
    data = _ae_canonical(value)
    if data is None:
        raise PduEncodeError(f"{name} {value!r} is not an AE title (at most 16 printable ASCII "
                             "characters, no backslash, no leading or trailing spaces)")
    return data


def _ae_decode(raw: bytes) -> tuple[str, bytes | None]:
    value = _strip_ae(raw)
    return value, (None if _ae_canonical(value) == raw else raw)


@dataclass(frozen=True, slots=True)
class _Associate:
    """What A-ASSOCIATE-RQ and -AC share: the fixed part, the items and their accessors."""

    pdu_type: ClassVar[int]
    _context_type: ClassVar[type]
    called_ae: str
    calling_ae: str
    variable_items: tuple[AssociateItem, ...]
    protocol_version: int = 1
    reserved: bytes = bytes(32)
    version_reserved: int = 0
    called_ae_raw: bytes | None = None
    calling_ae_raw: bytes | None = None

    @property
    def application_context(self) -> str:
        for item in self.variable_items:
            if isinstance(item, ApplicationContextItem):
                return item.name
        return ""

    @property
    def user_information(self) -> UserInformation:
        for item in self.variable_items:
            if isinstance(item, UserInformation):
                return item
        return UserInformation()

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        name = type(self).__name__
        counts = {ApplicationContextItem: 0, UserInformation: 0}
        parts: list[bytes] = [b""]
        for item in self.variable_items:
            kind = type(item)
            if kind in counts:
                counts[kind] += 1
            elif kind is not self._context_type and kind is not UnknownItem:
                raise PduEncodeError(f"{name}.variable_items cannot hold {item!r}")
            parts.append(item.encode())
        if counts[ApplicationContextItem] != 1 or counts[UserInformation] != 1:
            raise PduEncodeError(f"{name} needs exactly one application context and one "
                                 "user information item")
        reserved = self.reserved
        if not isinstance(reserved, bytes) or len(reserved) != 32:
            raise PduEncodeError(f"{name}.reserved must be 32 bytes")
        body = sum(len(p) for p in parts) + 68
        if body > _MAX_U32:
            raise PduEncodeError(f"{name} is too long")
        parts[0] = _ASSOC_FIXED.pack(
            self.pdu_type, 0, body, check_int(self.protocol_version, f"{name}.protocol_version",
                                              0xFFFF),
            check_int(self.version_reserved, f"{name}.version_reserved", 0xFFFF),
            _ae_field(self.called_ae, self.called_ae_raw, f"{name}.called_ae"),
            _ae_field(self.calling_ae, self.calling_ae_raw, f"{name}.calling_ae"), reserved)
        return b"".join(parts)

    @classmethod
    def _decode_fields(cls, view: memoryview, length: int) -> dict[str, object]:
        name = cls.__name__
        if length < 68:
            raise PduDecodeError(f"PDU-length {length} is shorter than the fixed part (68)",
                                 offset=2, item=name, field="pdu-length")
        _, _, _, version, version_reserved, called, calling, reserved = \
            _ASSOC_FIXED.unpack_from(view, 0)
        called_ae, called_raw = _ae_decode(called)
        calling_ae, calling_raw = _ae_decode(calling)
        return dict(called_ae=called_ae, calling_ae=calling_ae,
                    variable_items=cls._decode_items(view, length),
                    protocol_version=version, reserved=reserved,
                    version_reserved=version_reserved, called_ae_raw=called_raw,
                    calling_ae_raw=calling_raw)

    @classmethod
    def _decode_items(cls, view: memoryview, length: int) -> tuple[AssociateItem, ...]:
        name = cls.__name__
        cur = Cursor(view, 74, 6 + length, name)
        items: list[AssociateItem] = []
        seen: set[int] = set()
        own_context = cls._context_type.item_type  # type: ignore[attr-defined]
        decode_context = cls._context_type.decode  # type: ignore[attr-defined]
        for item_type, first, start, end in scan_items(cur):
            sub = Cursor(view, start, end, ITEM_NAMES.get(item_type, f"Item0x{item_type:02X}"))
            if item_type in (0x10, 0x50) and item_type in seen:
                raise sub.error(f"a second {sub.item} in {name}", "item-type",
                                offset=sub.pos - 4, reason=_UNEXPECTED)
            seen.add(item_type)
            if item_type == 0x10:
                items.append(ApplicationContextItem.decode(sub))
            elif item_type == 0x50:
                items.append(UserInformation.decode(sub))
            elif item_type == own_context:
                items.append(decode_context(sub))
            elif item_type in (0x20, 0x21):
                raise sub.error(f"{sub.item} is not allowed in {name}", "item-type",
                                offset=sub.pos - 4, reason=_UNEXPECTED)
            else:
                items.append(UnknownItem.decode(item_type, first, sub))
        for needed, label in ((0x10, "application-context"), (0x50, "user-information")):
            if needed not in seen:
                raise cur.error(f"{name} has no {label} item", label, offset=6 + length)
        return tuple(items)


def _standard_items(
    application_context: str, contexts: tuple[AssociateItem, ...],
    user_information: UserInformation | None,
) -> tuple[AssociateItem, ...]:
    if user_information is None:
        user_information = UserInformation.build(
            max_length=DEFAULT_MAX_PDU_LENGTH, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME)
    return (ApplicationContextItem(application_context), *contexts, user_information)


@dataclass(frozen=True, slots=True)
class AAssociateRQ(_Associate):
    """A-ASSOCIATE-RQ (0x01). ``variable_items`` keeps every item in order, unknown ones included.

    ``reserved`` (bytes 42-73) and ``version_reserved`` (bytes 8-9) are kept as received; the
    ``*_raw`` fields hold an AE field as received when it is not the canonical space padding.
    """

    pdu_type: ClassVar[int] = PduType.A_ASSOCIATE_RQ
    _context_type: ClassVar[type] = PresentationContextRQ
    @property
    def presentation_contexts(self) -> tuple[PresentationContextRQ, ...]:
        return tuple(i for i in self.variable_items if isinstance(i, PresentationContextRQ))

    @classmethod
    def build(
        cls, *, called_ae: str, calling_ae: str,
        presentation_contexts: tuple[PresentationContextRQ, ...] = (),
        user_information: UserInformation | None = None,
        application_context: str = DICOM_APPLICATION_CONTEXT, protocol_version: int = 1,
    ) -> AAssociateRQ:
        """An RQ with items in the standard order; default user information: our max length
        (DEFAULT_MAX_PDU_LENGTH), implementation class UID and version name."""
        items = _standard_items(application_context, tuple(presentation_contexts),
                                user_information)
        return cls(called_ae, calling_ae, items, protocol_version)

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AAssociateRQ:
        return cls(**cls._decode_fields(view, length))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AAssociateAC(_Associate):
    """A-ASSOCIATE-AC (0x02). ``called_ae``/``calling_ae``/``reserved`` echo the RQ (PS3.8 9.3.3)."""

    pdu_type: ClassVar[int] = PduType.A_ASSOCIATE_AC
    _context_type: ClassVar[type] = PresentationContextAC
    @property
    def presentation_contexts(self) -> tuple[PresentationContextAC, ...]:
        return tuple(i for i in self.variable_items if isinstance(i, PresentationContextAC))

    @classmethod
    def build(
        cls, *, called_ae: str, calling_ae: str,
        presentation_contexts: tuple[PresentationContextAC, ...] = (),
        user_information: UserInformation | None = None,
        application_context: str = DICOM_APPLICATION_CONTEXT, protocol_version: int = 1,
        reserved: bytes = bytes(32),
    ) -> AAssociateAC:
        """An AC with items in the standard order (pass the RQ's AE titles and reserved field)."""
        items = _standard_items(application_context, tuple(presentation_contexts),
                                user_information)
        return cls(called_ae, calling_ae, items, protocol_version, reserved)

    @classmethod
    def decode(cls, view: memoryview, length: int) -> AAssociateAC:
        return cls(**cls._decode_fields(view, length))  # type: ignore[arg-type]


Pdu = Union[  # noqa: UP007
    AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ, AReleaseRP, AAbort,
]

_DECODERS: dict[int, Callable[[memoryview, int], Pdu]] = {
    1: AAssociateRQ.decode, 2: AAssociateAC.decode, 3: AAssociateRJ.decode,
    4: PDataTF.decode, 5: AReleaseRQ.decode, 6: AReleaseRP.decode, 7: AAbort.decode,
}
_PDU_CLASSES = frozenset({AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ,
                          AReleaseRP, AAbort})
_NAMES = {1: "AAssociateRQ", 2: "AAssociateAC", 3: "AAssociateRJ", 4: "PDataTF",
          5: "AReleaseRQ", 6: "AReleaseRP", 7: "AAbort"}


def check_header(pdu_type: int, length: int, max_pdata_length: int = 0,
                 max_other_length: int = 0) -> None:
    """Check a PDU header before its body is read: known type, plausible and allowed length.

    A limit of 0 means no limit. Raises PduDecodeError.
    """
    name = _NAMES.get(pdu_type)
    if name is None:
        raise PduDecodeError(f"unknown PDU type 0x{pdu_type:02X}", offset=0, item="PDU",
                             field="pdu-type", abort_reason=AbortReason.UNRECOGNIZED_PDU)
    if pdu_type == 4:
        limit = max_pdata_length
    elif pdu_type > 2:
        _check_fixed_length(length, name)
        return
    else:
        limit = max_other_length
    if limit and length > limit:
        raise PduDecodeError(f"PDU-length {length} exceeds the maximum {limit}", offset=2,
                             item=name, field="pdu-length")


def _as_view(data: object) -> memoryview:
    try:
        view = data if type(data) is memoryview else memoryview(data)  # type: ignore[arg-type]
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    except (TypeError, ValueError) as exc:
        raise PduDecodeError(f"not a byte buffer: {exc}", offset=0, item="PDU",
                             field="pdu-header") from None
    return view


def decode(data: bytes | bytearray | memoryview) -> Pdu:
    """Decode a buffer holding exactly one PDU. Raises PduDecodeError (and nothing else)."""
    buf = data if type(data) is bytes else _as_view(data)  # bytes, or a flat memoryview
    size = len(buf)
    if size >= 12:  # hot path: a P-DATA-TF with one PDV filling it, built inline
        pdu_type, _, length, item_length, context_id, control = _PDATA_ONE.unpack_from(buf)
        if pdu_type == 4 and size == length + 6 and item_length == length - 4 \
                and item_length >= 2:
            pdv = _object_new(PresentationDataValue)
            _set_cid(pdv, context_id)
            _set_control(pdv, control)
            _set_data(pdv, memoryview(buf)[12:])
            pdata = _object_new(PDataTF)
            _set_pdvs(pdata, (pdv,))
            return pdata
    elif size < 6:
        raise PduDecodeError(f"truncated PDU: {size} bytes, a PDU header has 6", offset=size,
                             item="PDU", field="pdu-header")
    view = memoryview(buf)
    pdu_type, _, length = _PDU_HDR.unpack_from(view, 0)
    decoder = _DECODERS.get(pdu_type)
    if decoder is None:
        check_header(pdu_type, length)
        raise AssertionError("unreachable")  # pragma: no cover
    if size != 6 + length:
        name = _NAMES[pdu_type]
        if size < 6 + length:
            raise PduDecodeError(f"truncated PDU: PDU-length {length} but {size - 6} bytes "
                                 "follow the header", offset=size, item=name, field="pdu-length")
        raise PduDecodeError(f"{size - 6 - length} bytes after the end of the PDU (PDU-length "
                             f"{length})", offset=6 + length, item=name, field="pdu-length")
    return decoder(view, length)


def encode(p: Pdu) -> bytes:
    """Encode a PDU (validating its fields; PduEncodeError if it cannot be encoded)."""
    if type(p) is PDataTF:
        try:  # hot path: one PDV with flat data, encoded inline
            (pdv,) = p.pdvs
        except (TypeError, ValueError):
            pdv = None
        if type(pdv) is PresentationDataValue:
            data = pdv.data
            cid = pdv.context_id
            control = pdv.control
            if type(data) is memoryview:
                size = data.nbytes
            elif type(data) is bytes:
                size = len(data)
            else:
                size = _MAX_U32
            if type(cid) is int and type(control) is int and cid & 1 and size <= _MAX_U32 - 6:
                try:  # struct rejects a context ID or control outside 0-255, bytes + a strided
                    # memoryview fails: both go to the checked path
                    return _PDATA_ONE.pack(4, 0, size + 6, size + 2, cid, control) + data
                except (struct.error, TypeError):
                    pass
        return _encode_pdvs(p.pdvs)
    if type(p) in _PDU_CLASSES:
        return p.encode()
    raise PduEncodeError(f"not a PDU: {p!r}")
