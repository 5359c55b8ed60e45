"""DIMSE messages <-> presentation data values (PS3.8 Annex E), sans-IO.

Receiving -- :class:`MessageAssembler`. Feed it the PDVs of each P-DATA-TF in order; it joins
command fragments until the one flagged last, decodes the command set, then (when
CommandDataSetType != 0x0101) collects data set fragments until the last one. Each
:meth:`~MessageAssembler.feed` returns at most one event:

* buffered mode (default): :class:`MessageReceived` ``(context_id, message, dataset)`` once the
  whole message is in; ``dataset`` is the data set bytes or None;
* streaming: when the ``stream`` predicate given to the constructor returns True for a decoded
  command (e.g. only for C-STORE-RQ), the assembler returns :class:`CommandReceived` at once and
  then one :class:`DataFragment` ``(context_id, data, last)`` per data set PDV, without
  buffering anything; ``data`` is the PDV's own buffer (a memoryview slice of the PDU as decoded
  by :mod:`pdu`), so a sink can write it straight to disk. A message without a data set always
  comes as :class:`MessageReceived`;
* a request whose command field is unknown (N-GET, N-SET, ...) but carries a Message ID and a
  CommandDataSetType: :class:`UnrecognizedRequest` once its data set, if any, has been read and
  dropped, so the SCP can answer 0x0211 (PS3.7) instead of aborting;
* a request other than C-STORE whose data set (its identifier) grows past
  ``max_identifier_length``: :class:`OversizedRequest` once the rest has been read and dropped,
  so the SCP can refuse it (0xA700, out of resources) instead of holding it whole or aborting.

Violations of Annex E raise :class:`~dimse.errors.AssemblyError` (a data set fragment before the
command is complete, a PDV on another presentation context while a message is in progress, a
command fragment after the command set ended, a response's identifier longer than
``max_identifier_length``, any data set longer than ``max_dataset_length``); a bad command set raises
:class:`~dimse.errors.CommandDecodeError`. Both are ``RemoteProtocolError``: the caller aborts the
association; the assembler must not be fed afterwards.

Buffered fragments are kept as references to the PDV buffers until the message completes, so
those buffers must not be mutated meanwhile (``pdu`` never reuses a PDU buffer).

Sending -- :func:`fragment` turns an encoded command set and an optional data set into encoded
P-DATA-TF PDUs whose PDU-length never exceeds the peer's maximum (0 = no limit announced, then
:data:`pdu.constants.UNLIMITED_SEND_CAP` applies). Fragments are even-length memoryview slices;
each PDU is built by one ``join`` of struct-packed headers and slices, so the data set is never
copied as a whole. With ``coalesce=True`` (default) several PDVs of the message share a PDU when
they fit (typically the command and the first data set fragment); ``coalesce=False`` puts one
PDV in each PDU, which for an even maximum is byte-identical to pynetdicom's fragmentation.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pdu.constants import UNLIMITED_SEND_CAP

from . import commands
from .errors import AssemblyError
from .messages import CStoreRQ, Message

__all__ = [
    "AssemblyEvent",
    "CommandReceived",
    "DataFragment",
    "MessageAssembler",
    "MessageReceived",
    "OversizedRequest",
    "PdvLike",
    "UnrecognizedRequest",
    "fragment",
    "fragment_message",
]

_PDU_HDR = struct.Struct(">BBI")  # PDU type, reserved, PDU-length
_PDV_HDR = struct.Struct(">IBB")  # item length, presentation context ID, message control header
_COMMAND, _LAST = 0x01, 0x02


class PdvLike(Protocol):
    """What the assembler needs of a PDV (``pdu.PresentationDataValue`` satisfies it)."""

    @property
    def context_id(self) -> int: ...

    @property
    def control(self) -> int: ...

    @property
    def data(self) -> bytes | memoryview: ...


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message; ``dataset`` holds the data set bytes when one followed the command."""

    context_id: int
    message: Message
    dataset: bytes | None


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """Streaming mode: the command is decoded; its data set follows as :class:`DataFragment`."""

    context_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class DataFragment:
    """Streaming mode: one data set fragment, in order; ``last`` ends the message."""

    context_id: int
    data: bytes | memoryview
    last: bool


@dataclass(frozen=True, slots=True)
class UnrecognizedRequest:
    """A complete request whose command field we do not know (its data set, if any, was read
    and dropped): the SCP answers it with status 0x0211 (see
    :func:`dimse.commands.encode_unrecognized`)."""

    context_id: int
    command_field: int
    message_id: int
    sop_class_uid: str | None


@dataclass(frozen=True, slots=True)
class OversizedRequest:
    """A complete request whose data set was longer than ``limit`` (read and dropped, never held
    whole): the SCP refuses it (0xA700, out of resources)."""

    context_id: int
    message: Message
    limit: int


AssemblyEvent = (MessageReceived | CommandReceived | DataFragment | UnrecognizedRequest
                 | OversizedRequest)

#: Default bound on a buffered identifier (the data set of a C-FIND/C-MOVE/C-GET request or
#: response): far above any real query (10,000 UIDs take 650 KB), far below what hurts a server.
DEFAULT_MAX_IDENTIFIER_LENGTH = 16 << 20

_IDLE, _IN_COMMAND, _IN_DATASET, _STREAMING, _SKIPPING = 0, 1, 2, 3, 4


class MessageAssembler:
    """Joins PDVs into DIMSE messages; one message at a time (messages never interleave).

    ``stream(context_id, message) -> bool`` decides, per decoded command that announces a data
    set, whether its fragments are streamed (see the module docstring). ``max_command_length``
    bounds a command set, ``max_identifier_length`` the data set of any message but a C-STORE
    request (what a peer could otherwise make us hold), ``max_dataset_length`` every data set,
    buffered, streamed or skipped (None = unlimited).
    """

    __slots__ = ("_context_id", "_limit", "_message", "_parts", "_phase", "_size", "_skipped",
                 "max_command_length", "max_dataset_length", "max_identifier_length", "stream")

    def __init__(
        self,
        stream: Callable[[int, Message], bool] | None = None,
        *,
        max_command_length: int = 1 << 16,
        max_dataset_length: int | None = None,
        max_identifier_length: int | None = DEFAULT_MAX_IDENTIFIER_LENGTH,
    ) -> None:
        self.stream = stream
        self.max_command_length = max_command_length
        self.max_dataset_length = max_dataset_length
        self.max_identifier_length = max_identifier_length
        self._phase = _IDLE
        self._context_id = 0
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._limit: int | None = None  # the data set limit of the message in progress
        self._message: Message | None = None
        #: What a skipped data set's last fragment completes.
        self._skipped: UnrecognizedRequest | OversizedRequest | None = None

    @property
    def in_progress(self) -> bool:
        """True between the first PDV of a message and its last."""
        return self._phase != _IDLE

    @property
    def context_id(self) -> int | None:
        """The presentation context of the message in progress, if any."""
        return self._context_id if self._phase != _IDLE else None

    def discard(self) -> None:
        """Drop a partly received message (e.g. when the association ends)."""
        self._phase = _IDLE
        self._parts = []
        self._size = 0
        self._message = None
        self._skipped = None

    def feed_all(self, pdvs: Iterable[PdvLike]) -> list[AssemblyEvent]:
        """Feed several PDVs (e.g. ``pdata.pdvs``); return the events in order."""
        events = []
        for pdv in pdvs:
            event = self.feed(pdv)
            if event is not None:
                events.append(event)
        return events

    def feed(self, pdv: PdvLike) -> AssemblyEvent | None:
        """Take the next PDV; return the event it completes, if any."""
        context_id = pdv.context_id
        control = pdv.control
        phase = self._phase
        if phase == _IDLE:
            if not control & _COMMAND:
                raise AssemblyError(f"data set fragment on presentation context {context_id} "
                                    "with no command set before it")
            self._context_id = context_id
            self._phase = phase = _IN_COMMAND
        elif context_id != self._context_id:
            raise AssemblyError(f"PDV on presentation context {context_id} while a message on "
                                f"context {self._context_id} is in progress")
        if phase == _IN_COMMAND:
            if not control & _COMMAND:
                raise AssemblyError(f"data set fragment on presentation context {context_id} "
                                    "before the command set is complete")
            return self._command_fragment(pdv.data, control & _LAST)
        if control & _COMMAND:
            raise AssemblyError(f"command fragment on presentation context {context_id} after "
                                "the command set ended (data set fragments expected)")
        return self._data_fragment(pdv.data, bool(control & _LAST))

    def _add(self, data: bytes | memoryview, limit: int | None, what: str) -> None:
        self._size += len(data)
        if limit is not None and self._size > limit:
            raise AssemblyError(f"{what} on presentation context {self._context_id} exceeds "
                                f"{limit} bytes")

    def _command_fragment(self, data: bytes | memoryview, last: int) -> AssemblyEvent | None:
        self._add(data, self.max_command_length, "command set")
        self._parts.append(data)
        if not last:
            return None
        parts = self._parts
        try:
            message = commands.decode(parts[0] if len(parts) == 1 else b"".join(parts))
        except commands.UnknownCommandError as exc:
            return self._unknown_command(exc)
        self._parts = []
        self._size = 0
        context_id = self._context_id
        if not message.has_dataset:
            self._phase = _IDLE
            return MessageReceived(context_id, message, None)
        self._message = message
        if self.stream is not None and self.stream(context_id, message):
            self._phase = _STREAMING
            return CommandReceived(context_id, message)
        self._phase = _IN_DATASET
        self._limit = None if type(message) is CStoreRQ else self.max_identifier_length
        return None

    def _unknown_command(self, exc: commands.UnknownCommandError) -> AssemblyEvent | None:
        """A request of an unknown command field, with a Message ID and a readable
        CommandDataSetType, is answered (PS3.7: 0x0211) once its data set, if any, is read and
        dropped; anything else (a response, no Message ID) stays a protocol error."""
        if exc.command_field & 0x8000 or exc.message_id is None or exc.has_dataset is None:
            raise exc
        event = UnrecognizedRequest(self._context_id, exc.command_field, exc.message_id,
                                    exc.sop_class_uid)
        self._parts = []
        self._size = 0
        if not exc.has_dataset:
            self._phase = _IDLE
            return event
        self._skipped = event
        self._phase = _SKIPPING
        return None

    def _oversized(self, limit: int, last: bool) -> AssemblyEvent | None:
        """A buffered identifier passed ``limit``: drop it; a request is refused once the rest
        is read, a response is a protocol error."""
        message = self._message
        assert message is not None
        self._parts = []
        if message.command_field & 0x8000:
            raise AssemblyError(f"{type(message).__name__} data set on presentation context "
                                f"{self._context_id} exceeds {limit} bytes")
        self._skipped = OversizedRequest(self._context_id, message, limit)
        self._phase = _SKIPPING
        return self._data_fragment(b"", True) if last else None

    def _data_fragment(self, data: bytes | memoryview, last: bool) -> AssemblyEvent | None:
        self._add(data, self.max_dataset_length, "data set")
        context_id = self._context_id
        if self._phase == _SKIPPING:
            if not last:
                return None
            event = self._skipped
            self.discard()
            return event
        if self._phase == _STREAMING:
            if last:
                self.discard()
            return DataFragment(context_id, data, last)
        limit = self._limit
        if limit is not None and self._size > limit:
            return self._oversized(limit, last)
        self._parts.append(data)
        if not last:
            return None
        parts = self._parts
        message = self._message
        assert message is not None
        self.discard()
        if len(parts) == 1 and type(parts[0]) is bytes:
            return MessageReceived(context_id, message, parts[0])
        return MessageReceived(context_id, message, b"".join(parts))


# ---------------------------------------------------------------------------------------------
# sending

def _flat(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def fragment(
    context_id: int,
    command: bytes | bytearray | memoryview,
    dataset: bytes | bytearray | memoryview | None,
    peer_max_pdu: int,
    *,
    coalesce: bool = True,
) -> Iterator[bytes]:
    """Yield the encoded P-DATA-TF PDUs carrying one message (see the module docstring).

    ``peer_max_pdu`` is the peer's Maximum Length Received (0 = unlimited); it must leave room
    for at least a 2-byte fragment (>= 8). An empty data set is sent as one empty last PDV so
    the receiver sees the end of the message.
    """
    if not 0 <= context_id <= 255:
        raise ValueError(f"presentation context ID {context_id} is not in 0..255")
    limit = peer_max_pdu if peer_max_pdu > 0 else UNLIMITED_SEND_CAP
    if limit < 8:
        raise ValueError(f"peer maximum PDU length {peer_max_pdu} cannot carry a fragment")
    limit = min(limit, 0xFFFFFFFF)
    segments = [(_flat(command), _COMMAND)]
    if dataset is not None:
        segments.append((_flat(dataset), 0))
    parts: list[bytes | memoryview] = [b""]
    used = 0  # PDU-length so far
    pack_pdv = _PDV_HDR.pack
    for view, kind in segments:
        total = len(view)
        pos = 0
        while True:
            room = limit - used - 6
            remaining = total - pos
            if remaining <= room:
                n, control = remaining, kind | _LAST
            else:
                n, control = room & ~1, kind
                if n <= 0:  # no room for an even fragment: close this PDU
                    parts[0] = _PDU_HDR.pack(4, 0, used)
                    yield b"".join(parts)
                    parts = [b""]
                    used = 0
                    continue
            parts.append(pack_pdv(n + 2, context_id, control))
            parts.append(view[pos:pos + n])
            used += n + 6
            pos += n
            if not coalesce or not control & _LAST:
                parts[0] = _PDU_HDR.pack(4, 0, used)
                yield b"".join(parts)
                parts = [b""]
                used = 0
            if control & _LAST:
                break
    if used:
        parts[0] = _PDU_HDR.pack(4, 0, used)
        yield b"".join(parts)


def fragment_message(
    context_id: int,
    message: Message,
    dataset: bytes | bytearray | memoryview | None,
    peer_max_pdu: int,
    *,
    coalesce: bool = True,
) -> Iterator[bytes]:
    """Encode ``message``'s command set and fragment it with ``dataset`` (see :func:`fragment`).

    Raises ValueError when the command's CommandDataSetType and ``dataset`` disagree.
    """
    if message.has_dataset != (dataset is not None):
        raise ValueError(f"{message.spec.name}: CommandDataSetType says data set "
                         f"{'present' if message.has_dataset else 'absent'} but dataset is "
                         f"{'None' if dataset is None else 'given'}")
    return fragment(context_id, commands.encode(message), dataset, peer_max_pdu,
                    coalesce=coalesce)
