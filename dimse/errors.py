"""DIMSE-level errors, rooted in the project's one hierarchy (``pdu.errors``)."""

from __future__ import annotations

from collections.abc import Iterable

from pdu.errors import DicomError, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "AssemblyError",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "CommandDecodeError",
    "DataSetDecodeError",
    "DataSetEncodeError",
    "DicomError",
    "DimseTimeout",
    "IdentifierError",
    "LocalProtocolError",
    "NotNegotiatedError",
    "ProtocolError",
    "RemoteProtocolError",
    "ServiceError",
]


def _where(tag: int | None, offset: int | None = None) -> str:
    """``(gggg,eeee) offset N``: where in a command or data set something went wrong."""
    parts = []
    if tag is not None:
        parts.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
    if offset is not None:
        parts.append(f"offset {offset}")
    return " ".join(parts)


class _LocatedDecodeError(RemoteProtocolError):
    """A decode error that names the tag and/or offset where the bytes went wrong."""

    def __init__(self, message: str, *, tag: int | None = None, offset: int | None = None) -> None:
        self.tag = tag
        self.offset = offset
        where = _where(tag, offset)
        super().__init__(f"{where}: {message}" if where else message)


class CommandDecodeError(_LocatedDecodeError):
    """A command set (group 0000) that cannot be decoded or lacks a mandatory field."""


class DataSetDecodeError(_LocatedDecodeError):
    """Data set bytes that cannot be decoded in the given transfer syntax."""


class DataSetEncodeError(LocalProtocolError, ValueError):
    """A data set that cannot be encoded (an unknown VR, a value too long...)."""

    def __init__(self, message: str, *, tag: int | None = None) -> None:
        self.tag = tag
        where = _where(tag)
        super().__init__(f"{where}: {message}" if where else message)


class AssemblyError(RemoteProtocolError):
    """PDVs that do not form valid DIMSE messages (PS3.8 Annex E)."""


class NotNegotiatedError(LocalProtocolError):
    """A request for a SOP class, transfer syntax or role that the association did not accept."""


class IdentifierError(LocalProtocolError, ValueError):
    """A Query/Retrieve identifier that breaks the information model's rules.

    ``offending`` lists the tags at fault (as ints), ``status`` the DIMSE status an SCP would
    answer with.
    """

    def __init__(self, message: str, *, offending: Iterable[int] = (), status: int = 0xA900) -> None:
        self.comment = message
        self.offending = tuple(offending)
        self.status = status
        super().__init__(message)


class ServiceError(DicomError):
    """Raised by a service handler to fail a request with a DICOM status.

    ``comment`` becomes ErrorComment (0000,0902) and ``offending_elements`` OffendingElement
    (0000,0901) in the response.
    """

    def __init__(
        self, status: int, comment: str = "", offending_elements: Iterable[int] = ()
    ) -> None:
        self.status = status
        self.comment = comment
        self.offending_elements = tuple(offending_elements)
        super().__init__(f"status 0x{status:04X}" + (f": {comment}" if comment else ""))


class AssociationError(DicomError):
    """The association could not be established or was lost."""


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        super().__init__(f"association rejected: result {result}, source {source}, reason {reason}")


class AssociationAborted(AssociationError):
    """The association was aborted (A-ABORT or A-P-ABORT) or the connection was lost."""

    def __init__(self, message: str = "association aborted", *, source: int | None = None,
                 reason: int | None = None) -> None:
        self.source = source
        self.reason = reason
        super().__init__(message)


class DimseTimeout(AssociationError, TimeoutError):
    """No response arrived within the DIMSE timeout, and the association has been aborted; or,
    waiting for a slot of a full asynchronous operations window, nothing at all arrived for as
    long, and the association is left as it is (the operation holding the slot is the
    caller's: an iterator left unread, typically)."""
