"""Bounds-checked big-endian reader over a memoryview (the one place where PDU bytes are indexed),
and the small field checks shared by the item and PDU encoders.

Every read checks that the bytes exist inside the current item; a failure raises ``PduDecodeError``
naming the offset (from the first byte of the PDU), the item being decoded and the field. A child
cursor (``sub``) covers exactly one item's value, so an item can never read beyond its parent.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .constants import AbortReason
from .errors import PduDecodeError, PduEncodeError

_HDR = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE


class Cursor:
    """A position inside ``view[pos:end]``; ``view`` always starts at the PDU's first byte."""

    __slots__ = ("view", "pos", "end", "item")

    def __init__(self, view: memoryview, pos: int, end: int, item: str) -> None:
        self.view = view
        self.pos = pos
        self.end = end
        self.item = item

    def error(
        self, message: str, field: str, *, offset: int | None = None,
        reason: AbortReason = _INVALID, item: str | None = None,
    ) -> PduDecodeError:
        """Build (not raise) a decode error located at ``offset`` (default: the current position)."""
        return PduDecodeError(
            message, offset=self.pos if offset is None else offset,
            item=self.item if item is None else item, field=field, abort_reason=reason,
        )

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, field: str) -> None:
        """Fail unless ``n`` more bytes exist in this item."""
        if self.end - self.pos < n:
            raise self.error(
                f"needs {n} bytes, only {self.end - self.pos} left in {self.item}", field)

    def u8(self, field: str) -> int:
        if self.pos >= self.end:
            raise self.error(f"needs 1 byte, none left in {self.item}", field)
        value = self.view[self.pos]
        self.pos += 1
        return value

    def u16(self, field: str) -> int:
        if self.end - self.pos < 2:
            self.need(2, field)
        (value,) = _U16.unpack_from(self.view, self.pos)
        self.pos += 2
        return int(value)

    def u32(self, field: str) -> int:
        if self.end - self.pos < 4:
            self.need(4, field)
        (value,) = _U32.unpack_from(self.view, self.pos)
        self.pos += 4
        return int(value)

    def skip(self, n: int, field: str) -> None:
        self.need(n, field)
        self.pos += n

    def take(self, n: int, field: str) -> memoryview:
        """The next ``n`` bytes as a memoryview slice (no copy)."""
        self.need(n, field)
        start = self.pos
        self.pos = start + n
        return self.view[start:self.pos]

    def take_rest(self) -> memoryview:
        start = self.pos
        self.pos = self.end
        return self.view[start:self.end]

    def sub(self, length: int, item: str, field: str, offset: int | None = None) -> Cursor:
        """A cursor over the next ``length`` bytes (a child item's value); advances past them.

        ``offset`` locates the length field in errors (default: the current position).
        """
        if self.end - self.pos < length:
            raise self.error(
                f"{item} claims {length} bytes but its parent {self.item} has only "
                f"{self.end - self.pos} left", field, item=item, offset=offset,
                reason=_INVALID,
            )
        start = self.pos
        self.pos = start + length
        return Cursor(self.view, start, self.pos, item)

    def expect_end(self, field: str) -> None:
        """Fail if bytes are left over: the item's length disagrees with its content."""
        if self.pos != self.end:
            raise self.error(
                f"{self.end - self.pos} unexpected bytes at the end of {self.item} "
                "(its length disagrees with its content)", field)


def uid_at(view: memoryview, start: int, end: int) -> str:
    """The UID in ``view[start:end]``, without ONE trailing NUL (see ``uid``)."""
    if end > start and view[end - 1] == 0:
        end -= 1
    return str(view[start:end], "latin-1")


def scan_items(cur: Cursor) -> list[tuple[int, int, int, int]]:
    """(type, first byte, value start, value end) of every item in ``cur``, bounds-checked.

    A flat, allocation-light variant of ``iter_items`` for hot loops; it raises the same errors.
    """
    view, pos, end = cur.view, cur.pos, cur.end
    unpack = _HDR.unpack_from
    out = []
    while pos < end:
        if end - pos < 4:
            break
        item_type, first, length = unpack(view, pos)
        if pos + 4 + length > end:
            break
        out.append((item_type, first, pos + 4, pos + 4 + length))
        pos += 4 + length
    else:
        cur.pos = end
        return out
    cur.pos = pos
    for _ in iter_items(cur):  # the malformed item is the next one: this raises the error
        pass
    raise cur.error("malformed item", "item-length")  # pragma: no cover - iter_items raised


def text(raw: memoryview | bytes) -> str:
    """Decode a text field as sent (Latin-1 never fails; encoding insists on ASCII)."""
    return bytes(raw).decode("latin-1")


def uid(raw: memoryview | bytes) -> str:
    """Decode a UID, stripping ONE trailing NUL (the one non byte-exact tolerance of decode)."""
    data = bytes(raw)
    if data[-1:] == b"\x00":
        data = data[:-1]
    return data.decode("latin-1")


# ----------------------------------------------------------------- item helpers (decode and encode)
ITEM_NAMES: dict[int, str] = {
    0x10: "ApplicationContextItem", 0x20: "PresentationContextRQ", 0x21: "PresentationContextAC",
    0x30: "AbstractSyntax", 0x40: "TransferSyntax", 0x50: "UserInformation",
    0x51: "MaximumLength", 0x52: "ImplementationClassUID", 0x53: "AsynchronousOperationsWindow",
    0x54: "RoleSelection", 0x55: "ImplementationVersionName",
    0x56: "SOPClassExtendedNegotiation", 0x57: "SOPClassCommonExtendedNegotiation",
    0x58: "UserIdentityRQ", 0x59: "UserIdentityAC",
}


def item_bytes(item_type: int, value: bytes, name: str, first: int = 0) -> bytes:
    """Item header (type, reserved/version byte, 2-byte length) followed by the value."""
    if len(value) > 0xFFFF:
        raise PduEncodeError(f"{name} value is {len(value)} bytes; an item holds at most 65535")
    return _HDR.pack(item_type, first, len(value)) + value


def ascii_bytes(value: object, name: str, max_len: int, min_len: int = 0) -> bytes:
    """``value`` as printable ASCII of ``min_len``..``max_len`` characters, else PduEncodeError."""
    if not isinstance(value, str):
        raise PduEncodeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.isascii() or not value.isprintable():
        raise PduEncodeError(f"{name} {value!r} is not printable ASCII")
    data = value.encode("ascii")
    if not min_len <= len(data) <= max_len:
        raise PduEncodeError(f"{name} {value!r} must have {min_len} to {max_len} characters")
    return data


def uid_bytes(value: object, name: str, allow_empty: bool = False) -> bytes:
    """A UID as ASCII, at most 64 characters (PS3.8 Annex F: no padding inside items)."""
    return ascii_bytes(value, name, 64, 0 if allow_empty else 1)


def check_int(value: object, name: str, high: int, low: int = 0) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise PduEncodeError(f"{name} must be an integer in {low}..{high}, not {value!r}")
    return value


def check_context_id(value: object, name: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 255 or value % 2 == 0:
        raise PduEncodeError(f"{name} must be an odd integer in 1..255, not {value!r}")
    return value


def check_bytes(value: object, name: str, max_len: int = 0xFFFF) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise PduEncodeError(f"{name} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) > max_len:
        raise PduEncodeError(f"{name} is {len(data)} bytes, at most {max_len} allowed")
    return data


def prefixed(data: bytes) -> bytes:
    """A 2-byte length followed by the data (lengths already checked)."""
    return _U16.pack(len(data)) + data


def iter_items(cur: Cursor) -> Iterator[tuple[int, int, Cursor]]:
    """Yield (item type, first reserved byte, cursor over the value) for each item in ``cur``."""
    while cur.pos < cur.end:
        start = cur.pos
        if cur.end - start < 4:
            raise cur.error(f"{cur.end - start} bytes left in {cur.item}, too few for an item "
                            "header (4)", "item-header")
        item_type, first, length = _HDR.unpack_from(cur.view, start)
        cur.pos = start + 4
        name = ITEM_NAMES.get(item_type, f"Item0x{item_type:02X}")
        yield item_type, first, cur.sub(length, name, "item-length", offset=start + 2)


def prefixed_field(cur: Cursor, field: str) -> memoryview:
    """A 2-byte length followed by that many bytes, inside ``cur``."""
    at = cur.pos
    length = cur.u16(f"{field}-length")
    if cur.end - cur.pos < length:
        raise cur.error(f"{field}-length {length} overruns {cur.item} ({cur.end - cur.pos} "
                        "bytes left)", f"{field}-length", offset=at)
    return cur.take(length, field)


def expect_length(cur: Cursor, size: int) -> None:
    if cur.end - cur.pos != size:
        raise cur.error(f"{cur.item} item-length is {cur.end - cur.pos}, must be {size}",
                        "item-length", offset=cur.pos - 2)
