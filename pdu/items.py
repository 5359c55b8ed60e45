"""Items and sub-items of A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3, Annex D; PS3.7 D.3.3).

Each item is a frozen, slotted dataclass with ``check()`` (raises ``PduEncodeError``), ``encode()``
and a ``decode(cursor)`` classmethod taking a cursor over the item's value. Items that the codec
does not know are kept as ``UnknownItem`` in their original position, so decoding and re-encoding
what a peer sent gives back the same bytes. Known deviations from byte-exactness: one trailing NUL
is stripped from UIDs, and the reserved byte of PDU and item headers is re-encoded as zero. The
reserved bytes that real peers do fill are kept: the A-ASSOCIATE fixed part (the AC echoes the RQ),
the presentation context items' reserved bytes (DCMTK and pynetdicom send 0xFF in byte 6 of an RQ
context) and the second byte of unknown items.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Union

from ._cursor import (
    Cursor,
    ascii_bytes,
    check_bytes,
    check_context_id,
    check_int,
    expect_length,
    item_bytes,
    iter_items,
    prefixed,
    prefixed_field,
    scan_items,
    text,
    uid_at,
    uid_bytes,
)
from ._cursor import uid as _uid_text
from .constants import AbortReason, ItemType
from .errors import PduEncodeError

_HDR = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PC_FIXED = struct.Struct(">BBBB")
_UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER

# --------------------------------------------------------------------------- generic items
@dataclass(frozen=True, slots=True)
class UnknownItem:
    """An item or sub-item of a type this codec does not interpret, kept as sent."""

    item_type: int
    value: bytes
    reserved: int = 0  # the item's second byte, kept so re-encoding is byte-exact

    def check(self) -> None:
        check_int(self.item_type, "UnknownItem.item_type", 255)
        check_int(self.reserved, "UnknownItem.reserved", 255)
        check_bytes(self.value, "UnknownItem.value")

    def encode(self) -> bytes:
        self.check()
        return item_bytes(self.item_type, bytes(self.value), "UnknownItem", self.reserved)

    @classmethod
    def decode(cls, item_type: int, first: int, cur: Cursor) -> UnknownItem:
        return cls(item_type, bytes(cur.take_rest()), first)


@dataclass(frozen=True, slots=True)
class ApplicationContextItem:
    """Application Context item (0x10): the application context name UID."""

    item_type: ClassVar[int] = ItemType.APPLICATION_CONTEXT
    name: str

    def check(self) -> None:
        uid_bytes(self.name, "ApplicationContextItem.name")

    def encode(self) -> bytes:
        return item_bytes(0x10, uid_bytes(self.name, "ApplicationContextItem.name"),
                          "ApplicationContextItem")

    @classmethod
    def decode(cls, cur: Cursor) -> ApplicationContextItem:
        return cls(_uid_text(cur.take_rest()))


def _with_extras(known: list[bytes], extras: tuple[tuple[int, UnknownItem], ...]) -> list[bytes]:
    """Insert unknown sub-items back at the positions they were received at."""
    if not extras:
        return known
    out = list(known)
    for index, item in sorted(extras, key=lambda e: e[0]):
        if not isinstance(item, UnknownItem):
            raise PduEncodeError("extra_sub_items must hold (position, UnknownItem) pairs")
        out.insert(min(index, len(out)), item.encode())
    return out


# --------------------------------------------------------------------------- presentation contexts
@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """Presentation Context item of an A-ASSOCIATE-RQ (0x20): one abstract syntax, n transfer syntaxes.

    ``extra_sub_items`` keeps sub-items other than the first abstract syntax and the transfer
    syntaxes, as (position among the sub-items, item), for byte-exact re-encoding.
    """

    item_type: ClassVar[int] = ItemType.PRESENTATION_CONTEXT_RQ
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    extra_sub_items: tuple[tuple[int, UnknownItem], ...] = ()
    reserved: bytes = bytes(3)  # bytes 5-7 as received (DCMTK and pynetdicom send 00 FF 00)

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        cid = check_context_id(self.context_id, "PresentationContextRQ.context_id")
        if not isinstance(self.transfer_syntaxes, tuple | list):
            raise PduEncodeError("PresentationContextRQ.transfer_syntaxes must be a tuple of str")
        parts = [item_bytes(0x30, uid_bytes(self.abstract_syntax,
                                            "PresentationContextRQ.abstract_syntax"),
                            "AbstractSyntax")]
        for ts in self.transfer_syntaxes:
            parts.append(_TS_CACHE.get(ts) or _ts_item(ts, "PresentationContextRQ.transfer_syntax"))
        reserved = _reserved(self.reserved, 3, "PresentationContextRQ.reserved")
        value = bytes((cid,)) + reserved + b"".join(_with_extras(parts, self.extra_sub_items))
        return item_bytes(0x20, value, "PresentationContextRQ")

    @classmethod
    def decode(cls, cur: Cursor) -> PresentationContextRQ:
        if cur.end - cur.pos < 4:
            raise cur.error(f"item-length {cur.end - cur.pos} is shorter than 4", "item-length",
                            offset=cur.pos - 2)
        view = cur.view
        cid = view[cur.pos]
        reserved = bytes(view[cur.pos + 1:cur.pos + 4])
        cur.pos += 4
        abstract: str | None = None
        syntaxes: list[str] = []
        extras: list[tuple[int, UnknownItem]] = []
        for index, (item_type, first, start, end) in enumerate(scan_items(cur)):
            if item_type == 0x40:
                syntaxes.append(uid_at(view, start, end))
            elif item_type == 0x30 and abstract is None:
                if syntaxes:
                    raise cur.error("abstract syntax sub-item after a transfer syntax",
                                    "item-type", offset=start - 4, reason=_UNEXPECTED,
                                    item="AbstractSyntax")
                abstract = uid_at(view, start, end)
            else:
                extras.append((index, UnknownItem(item_type, bytes(view[start:end]), first)))
        if abstract is None:
            raise cur.error(f"presentation context {cid} has no abstract syntax sub-item",
                            "abstract-syntax", offset=cur.end)
        return cls(cid, abstract, tuple(syntaxes), tuple(extras), reserved)


_TS_CACHE: dict[str, bytes] = {}


def _reserved(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise PduEncodeError(f"{name} must be {size} bytes, not {value!r}")
    return value


def _ts_item(ts: str, name: str, allow_empty: bool = False) -> bytes:
    data = item_bytes(0x40, uid_bytes(ts, name, allow_empty), "TransferSyntax")
    if len(_TS_CACHE) < 256 and ts:
        _TS_CACHE[ts] = data
    return data


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """Presentation Context item of an A-ASSOCIATE-AC (0x21): result and the chosen transfer syntax.

    ``transfer_syntax`` is None when the sub-item is absent (allowed for rejected contexts), ""
    when present with length 0. Further sub-items are kept in ``extra_sub_items``.
    """

    item_type: ClassVar[int] = ItemType.PRESENTATION_CONTEXT_AC
    context_id: int
    result: int
    transfer_syntax: str | None
    extra_sub_items: tuple[tuple[int, UnknownItem], ...] = ()
    reserved: bytes = bytes(2)  # bytes 5 and 7 as received

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        cid = check_context_id(self.context_id, "PresentationContextAC.context_id")
        result = check_int(self.result, "PresentationContextAC.result", 255)
        parts: list[bytes] = []
        if self.transfer_syntax is not None:
            parts.append(_ts_item(self.transfer_syntax, "PresentationContextAC.transfer_syntax",
                                  allow_empty=result != 0))
        elif result == 0:
            raise PduEncodeError("an accepted PresentationContextAC needs a transfer_syntax")
        reserved = _reserved(self.reserved, 2, "PresentationContextAC.reserved")
        value = (_PC_FIXED.pack(cid, reserved[0], result, reserved[1])
                 + b"".join(_with_extras(parts, self.extra_sub_items)))
        return item_bytes(0x21, value, "PresentationContextAC")

    @classmethod
    def decode(cls, cur: Cursor) -> PresentationContextAC:
        if cur.end - cur.pos < 4:
            raise cur.error(f"item-length {cur.end - cur.pos} is shorter than 4", "item-length",
                            offset=cur.pos - 2)
        cid = cur.view[cur.pos]
        result = cur.view[cur.pos + 2]
        reserved = bytes((cur.view[cur.pos + 1], cur.view[cur.pos + 3]))
        cur.pos += 4
        syntax: str | None = None
        extras: list[tuple[int, UnknownItem]] = []
        view = cur.view
        for index, (item_type, first, start, end) in enumerate(scan_items(cur)):
            if item_type == 0x40 and syntax is None:
                syntax = uid_at(view, start, end)
            else:
                extras.append((index, UnknownItem(item_type, bytes(view[start:end]), first)))
        return cls(cid, result, syntax, tuple(extras), reserved)


# --------------------------------------------------------------------------- user information sub-items
@dataclass(frozen=True, slots=True)
class MaximumLength:
    """Maximum Length sub-item (0x51): largest P-DATA-TF PDU-length we receive (0 = no limit)."""

    item_type: ClassVar[int] = ItemType.MAXIMUM_LENGTH
    value: int

    def check(self) -> None:
        check_int(self.value, "MaximumLength.value", 0xFFFFFFFF)

    def encode(self) -> bytes:
        self.check()
        return _HDR.pack(0x51, 0, 4) + _U32.pack(self.value)

    @classmethod
    def decode(cls, cur: Cursor) -> MaximumLength:
        expect_length(cur, 4)
        return cls(cur.u32("maximum-length-received"))


@dataclass(frozen=True, slots=True)
class ImplementationClassUID:
    """Implementation Class UID sub-item (0x52)."""

    item_type: ClassVar[int] = ItemType.IMPLEMENTATION_CLASS_UID
    uid: str

    def check(self) -> None:
        uid_bytes(self.uid, "ImplementationClassUID.uid")

    def encode(self) -> bytes:
        return item_bytes(0x52, uid_bytes(self.uid, "ImplementationClassUID.uid"),
                          "ImplementationClassUID")

    @classmethod
    def decode(cls, cur: Cursor) -> ImplementationClassUID:
        return cls(_uid_text(cur.take_rest()))


@dataclass(frozen=True, slots=True)
class ImplementationVersionName:
    """Implementation Version Name sub-item (0x55): 1 to 16 ASCII characters, unpadded."""

    item_type: ClassVar[int] = ItemType.IMPLEMENTATION_VERSION_NAME
    name: str

    def check(self) -> None:
        ascii_bytes(self.name, "ImplementationVersionName.name", 16, 1)

    def encode(self) -> bytes:
        return item_bytes(0x55, ascii_bytes(self.name, "ImplementationVersionName.name", 16, 1),
                          "ImplementationVersionName")

    @classmethod
    def decode(cls, cur: Cursor) -> ImplementationVersionName:
        return cls(text(cur.take_rest()))


@dataclass(frozen=True, slots=True)
class AsynchronousOperationsWindow:
    """Asynchronous Operations Window sub-item (0x53): max operations invoked/performed (0 = any)."""

    item_type: ClassVar[int] = ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW
    invoked: int
    performed: int

    def check(self) -> None:
        check_int(self.invoked, "AsynchronousOperationsWindow.invoked", 0xFFFF)
        check_int(self.performed, "AsynchronousOperationsWindow.performed", 0xFFFF)

    def encode(self) -> bytes:
        self.check()
        return _HDR.pack(0x53, 0, 4) + _U16.pack(self.invoked) + _U16.pack(self.performed)

    @classmethod
    def decode(cls, cur: Cursor) -> AsynchronousOperationsWindow:
        expect_length(cur, 4)
        return cls(cur.u16("maximum-number-operations-invoked"),
                   cur.u16("maximum-number-operations-performed"))


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (0x54): roles the requestor wants / is granted (0 or 1)."""

    item_type: ClassVar[int] = ItemType.ROLE_SELECTION
    sop_class_uid: str
    scu_role: int
    scp_role: int

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        sop = uid_bytes(self.sop_class_uid, "RoleSelection.sop_class_uid")
        scu = check_int(self.scu_role, "RoleSelection.scu_role", 255)
        scp = check_int(self.scp_role, "RoleSelection.scp_role", 255)
        return item_bytes(0x54, prefixed(sop) + bytes((scu, scp)), "RoleSelection")

    @classmethod
    def decode(cls, cur: Cursor) -> RoleSelection:
        sop = _uid_text(prefixed_field(cur, "uid"))
        scu = cur.u8("scu-role")
        scp = cur.u8("scp-role")
        cur.expect_end("item-length")
        return cls(sop, scu, scp)


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (0x56): service-class application information."""

    item_type: ClassVar[int] = ItemType.SOP_CLASS_EXTENDED_NEGOTIATION
    sop_class_uid: str
    application_info: bytes

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        sop = uid_bytes(self.sop_class_uid, "SOPClassExtendedNegotiation.sop_class_uid")
        info = check_bytes(self.application_info, "SOPClassExtendedNegotiation.application_info")
        return item_bytes(0x56, prefixed(sop) + info, "SOPClassExtendedNegotiation")

    @classmethod
    def decode(cls, cur: Cursor) -> SOPClassExtendedNegotiation:
        sop = _uid_text(prefixed_field(cur, "sop-class-uid"))
        return cls(sop, bytes(cur.take_rest()))


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (0x57, RQ only); byte 1 is its version."""

    item_type: ClassVar[int] = ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()
    version: int = 0

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        name = "SOPClassCommonExtendedNegotiation"
        sop = uid_bytes(self.sop_class_uid, f"{name}.sop_class_uid")
        service = uid_bytes(self.service_class_uid, f"{name}.service_class_uid")
        related = b"".join(prefixed(uid_bytes(u, f"{name}.related_general_sop_classes"))
                           for u in self.related_general_sop_classes)
        if len(related) > 0xFFFF:
            raise PduEncodeError(f"{name}.related_general_sop_classes is too long")
        version = check_int(self.version, f"{name}.version", 255)
        return item_bytes(0x57, prefixed(sop) + prefixed(service) + prefixed(related), name,
                          version)

    @classmethod
    def decode_versioned(cls, cur: Cursor, version: int) -> SOPClassCommonExtendedNegotiation:
        sop = _uid_text(prefixed_field(cur, "sop-class-uid"))
        service = _uid_text(prefixed_field(cur, "service-class-uid"))
        start = cur.pos
        listing = prefixed_field(cur, "related-general-sop-class-identification")
        sub = Cursor(cur.view, start + 2, start + 2 + len(listing), cur.item)
        related: list[str] = []
        while sub.pos < sub.end:
            related.append(_uid_text(prefixed_field(sub, "related-general-sop-class-uid")))
        cur.expect_end("item-length")
        return cls(sop, service, tuple(related), version)


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """User Identity sub-item of the RQ (0x58): type, response wanted, primary/secondary fields."""

    item_type: ClassVar[int] = ItemType.USER_IDENTITY_RQ
    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        kind = check_int(self.identity_type, "UserIdentityRQ.identity_type", 255)
        if not isinstance(self.positive_response_requested, bool | int):
            raise PduEncodeError("UserIdentityRQ.positive_response_requested must be a bool")
        primary = check_bytes(self.primary_field, "UserIdentityRQ.primary_field")
        secondary = check_bytes(self.secondary_field, "UserIdentityRQ.secondary_field")
        value = (bytes((kind, 1 if self.positive_response_requested else 0))
                 + prefixed(primary) + prefixed(secondary))
        return item_bytes(0x58, value, "UserIdentityRQ")

    @classmethod
    def decode(cls, cur: Cursor) -> UserIdentityRQ:
        kind = cur.u8("user-identity-type")
        at = cur.pos
        wanted = cur.u8("positive-response-requested")
        if wanted > 1:
            raise cur.error(f"positive-response-requested must be 0 or 1, not {wanted}",
                            "positive-response-requested", offset=at)
        primary = bytes(prefixed_field(cur, "primary-field"))
        secondary = bytes(prefixed_field(cur, "secondary-field"))
        cur.expect_end("item-length")
        return cls(kind, bool(wanted), primary, secondary)


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """User Identity sub-item of the AC (0x59): the server response (may be empty)."""

    item_type: ClassVar[int] = ItemType.USER_IDENTITY_AC
    server_response: bytes

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        response = check_bytes(self.server_response, "UserIdentityAC.server_response", 0xFFFF - 2)
        return item_bytes(0x59, prefixed(response), "UserIdentityAC")

    @classmethod
    def decode(cls, cur: Cursor) -> UserIdentityAC:
        response = bytes(prefixed_field(cur, "server-response"))
        cur.expect_end("item-length")
        return cls(response)


UserSubItem = Union[  # noqa: UP007 - a runtime alias usable in isinstance-free annotations
    MaximumLength, ImplementationClassUID, ImplementationVersionName,
    AsynchronousOperationsWindow, RoleSelection, SOPClassExtendedNegotiation,
    SOPClassCommonExtendedNegotiation, UserIdentityRQ, UserIdentityAC, UnknownItem,
]

_SUB_DECODERS: dict[int, Callable[[Cursor], UserSubItem]] = {
    0x51: MaximumLength.decode, 0x52: ImplementationClassUID.decode,
    0x53: AsynchronousOperationsWindow.decode, 0x54: RoleSelection.decode,
    0x55: ImplementationVersionName.decode, 0x56: SOPClassExtendedNegotiation.decode,
    0x58: UserIdentityRQ.decode, 0x59: UserIdentityAC.decode,
}


@dataclass(frozen=True, slots=True)
class UserInformation:
    """User Information item (0x50): its sub-items in the order they are sent."""

    item_type: ClassVar[int] = ItemType.USER_INFORMATION
    sub_items: tuple[UserSubItem, ...] = ()

    @classmethod
    def build(
        cls,
        max_length: int | None = None,
        implementation_class_uid: str | None = None,
        implementation_version_name: str | None = None,
        async_ops_window: AsynchronousOperationsWindow | None = None,
        role_selections: tuple[RoleSelection, ...] = (),
        extended_negotiations: tuple[SOPClassExtendedNegotiation, ...] = (),
        common_extended_negotiations: tuple[SOPClassCommonExtendedNegotiation, ...] = (),
        user_identity: UserIdentityRQ | UserIdentityAC | None = None,
    ) -> UserInformation:
        """User information with sub-items in the usual order (0x51, 0x52, 0x53, 0x54.., 0x55...)."""
        items: list[UserSubItem] = []
        if max_length is not None:
            items.append(MaximumLength(max_length))
        if implementation_class_uid is not None:
            items.append(ImplementationClassUID(implementation_class_uid))
        if async_ops_window is not None:
            items.append(async_ops_window)
        items.extend(role_selections)
        if implementation_version_name is not None:
            items.append(ImplementationVersionName(implementation_version_name))
        items.extend(extended_negotiations)
        items.extend(common_extended_negotiations)
        if user_identity is not None:
            items.append(user_identity)
        return cls(tuple(items))

    def _first(self, kind: type) -> object | None:
        for item in self.sub_items:
            if type(item) is kind:
                return item
        return None

    @property
    def max_length(self) -> int | None:
        item = self._first(MaximumLength)
        return item.value if isinstance(item, MaximumLength) else None

    @property
    def implementation_class_uid(self) -> str | None:
        item = self._first(ImplementationClassUID)
        return item.uid if isinstance(item, ImplementationClassUID) else None

    @property
    def implementation_version_name(self) -> str | None:
        item = self._first(ImplementationVersionName)
        return item.name if isinstance(item, ImplementationVersionName) else None

    @property
    def async_ops_window(self) -> AsynchronousOperationsWindow | None:
        item = self._first(AsynchronousOperationsWindow)
        return item if isinstance(item, AsynchronousOperationsWindow) else None

    @property
    def role_selections(self) -> tuple[RoleSelection, ...]:
        return tuple(i for i in self.sub_items if isinstance(i, RoleSelection))

    @property
    def extended_negotiations(self) -> tuple[SOPClassExtendedNegotiation, ...]:
        return tuple(i for i in self.sub_items if isinstance(i, SOPClassExtendedNegotiation))

    @property
    def common_extended_negotiations(self) -> tuple[SOPClassCommonExtendedNegotiation, ...]:
        return tuple(i for i in self.sub_items
                     if isinstance(i, SOPClassCommonExtendedNegotiation))

    @property
    def user_identity(self) -> UserIdentityRQ | UserIdentityAC | None:
        for item in self.sub_items:
            if isinstance(item, UserIdentityRQ | UserIdentityAC):
                return item
        return None

    def check(self) -> None:
        self.encode()

    def encode(self) -> bytes:
        parts = []
        for item in self.sub_items:
            if not hasattr(item, "encode") or isinstance(item, type):
                raise PduEncodeError(f"UserInformation.sub_items holds {item!r}")
            parts.append(item.encode())
        return item_bytes(0x50, b"".join(parts), "UserInformation")

    @classmethod
    def decode(cls, cur: Cursor) -> UserInformation:
        items: list[UserSubItem] = []
        for item_type, first, sub in iter_items(cur):
            decoder = _SUB_DECODERS.get(item_type)
            if decoder is not None:
                items.append(decoder(sub))
            elif item_type == 0x57:
                items.append(SOPClassCommonExtendedNegotiation.decode_versioned(sub, first))
            else:
                items.append(UnknownItem.decode(item_type, first, sub))
        return cls(tuple(items))


AssociateItem = Union[  # noqa: UP007
    ApplicationContextItem, PresentationContextRQ, PresentationContextAC, UserInformation,
    UnknownItem,
]
