"""Bounds-checked big-endian reader over a memoryview: the one place where PDU bytes are indexed.

Every read checks that the bytes exist inside the current item; a failure raises ``PduDecodeError``
naming the offset (from the first byte of the PDU), the item being decoded and the field. A child
cursor (``sub``) covers exactly one item's value, so an item can never read beyond its parent.
"""

from __future__ import annotations

import struct

from .constants import AbortReason
from .errors import PduDecodeError

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


def text(raw: memoryview | bytes) -> str:
    """Decode a text field as sent (Latin-1 never fails; encoding insists on ASCII)."""
    return bytes(raw).decode("latin-1")


def uid(raw: memoryview | bytes) -> str:
    """Decode a UID, stripping ONE trailing NUL (the one non byte-exact tolerance of decode)."""
    data = bytes(raw)
    if data[-1:] == b"\x00":
        data = data[:-1]
    return data.decode("latin-1")
