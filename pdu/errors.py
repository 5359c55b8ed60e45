"""The project's error hierarchy.

``DicomError`` > ``ProtocolError`` > {``LocalProtocolError``, ``RemoteProtocolError``}.
A local error means we (or our user) tried something the protocol does not allow; a remote error
means the peer sent something wrong. A ``PduDecodeError`` carries what was wrong and where (offset,
item, field) and the A-ABORT reason to answer with, so the core can turn it straight into an abort.
"""

from __future__ import annotations

from .constants import AbortReason


class DicomError(Exception):
    """Base of every error raised by this project."""


class ProtocolError(DicomError):
    """A violation of the DICOM protocol (Upper Layer or DIMSE)."""


class LocalProtocolError(ProtocolError):
    """We, or our user, asked for something the protocol does not allow in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class PduDecodeError(RemoteProtocolError):
    """Bytes that are not a valid PDU.

    ``offset`` is the offset from the first byte of the PDU, ``item`` names the PDU or item being
    decoded and ``field`` the field within it. ``abort_reason`` is the A-ABORT reason (source 2)
    the receiver should send.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int,
        item: str,
        field: str,
        abort_reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER_VALUE,
    ) -> None:
        self.message = message
        self.offset = offset
        self.item = item
        self.field = field
        self.abort_reason = abort_reason
        super().__init__(f"{item}.{field} at offset {offset}: {message}")

    def __reduce__(self) -> tuple[object, ...]:  # keep pickling working with keyword-only args
        return (_rebuild_decode_error, (type(self), self.message, self.offset, self.item,
                                        self.field, self.abort_reason))


def _rebuild_decode_error(
    cls: type[PduDecodeError], message: str, offset: int, item: str, field: str,
    abort_reason: AbortReason,
) -> PduDecodeError:
    return cls(message, offset=offset, item=item, field=field, abort_reason=abort_reason)


class PduEncodeError(LocalProtocolError, ValueError):
    """A PDU or item whose fields cannot be encoded (a value out of range, a UID too long...)."""
