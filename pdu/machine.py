"""The sans-IO DICOM Upper Layer core: PS3.8 9.2 events in, outputs out.

The shell (``pdu.transport`` or the in-memory pair of the tests) calls the local primitives
(:meth:`UpperLayerMachine.associate_request`, :meth:`~UpperLayerMachine.accept`, ...) and the
transport events (:meth:`~UpperLayerMachine.receive_data`, :meth:`~UpperLayerMachine.transport_closed`,
:meth:`~UpperLayerMachine.artim_expired`), then drains :meth:`~UpperLayerMachine.take_outputs`:
bytes to send, ARTIM timer commands, transport commands and indications for the user, in order.

Every event looks up ``pdu.fsm.TRANSITIONS``; the action only appends outputs (no IO, no clock)
and, for the two branching cells (AE-6, AR-8), says which branch was taken. The next state always
comes from ``pdu.fsm``.

Choices where PS3.8 leaves room (see the spec notes, section 7.3/7.5):

* A local primitive in a blank cell raises :class:`LocalProtocolError`; the state is unchanged.
  ``abort()`` in Sta1 or Sta13 does nothing; in Sta2 it closes the transport (``fsm.EXTENSIONS``).
* A transport event or received PDU in a blank cell (a late ``transport_closed()`` after we
  closed, a stale ARTIM expiry, bytes after the association ended) is logged and ignored.
* A-ABORT source/reason: a user abort (AA-1 on Evt15) sends source 0, reason 0; AA-1 for a PDU in
  Sta2 and AA-7/AA-8 send source 2 with reason 2 (unexpected PDU), or, for Evt19, the reason the
  decode error carries.
* Every transition into Sta1 emits ``CloseTransport`` then ``Closed`` (closing an already closed
  transport is harmless, and it releases our half of a connection the peer half-closed).
* Release collision: the requestor's user answers the ``ReleaseIndication(collision=True)`` right
  away (Sta9); the acceptor's user answers after its ``ReleaseConfirmation`` (Sta12).
  :attr:`UpperLayerMachine.awaiting_release_response` tells when ``release_response()`` is due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .constants import (
    DEFAULT_MAX_ASSOCIATE_PDU_LENGTH,
    DEFAULT_MAX_PDU_LENGTH,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    AbortReason,
    AbortSource,
    PduType,
    RejectResult,
    RejectSource,
)
from .errors import LocalProtocolError, PduDecodeError
from .framer import PduFramer
from .fsm import (
    ALTERNATE_NEXT,
    EXTENSIONS,
    LOCAL_EVENTS,
    TRANSITIONS,
    Action,
    Event,
    State,
)
from .pdus import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
)

__all__ = [
    "AbortIndication",
    "AssociateAccepted",
    "AssociateIndication",
    "AssociateRejected",
    "CloseTransport",
    "Closed",
    "ConnectTransport",
    "Output",
    "PDataIndication",
    "ReleaseConfirmation",
    "ReleaseIndication",
    "Role",
    "SendBytes",
    "StartArtim",
    "StopArtim",
    "UpperLayerMachine",
]

log = logging.getLogger("pdu.machine")

Buffer = bytes | bytearray | memoryview


class Role(Enum):
    """Which side of the association this machine is (decides AR-8 and the transport event)."""

    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


# -- outputs -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Output:
    """Base of everything the core asks its shell to do or tell."""


@dataclass(frozen=True, slots=True)
class SendBytes(Output):
    """Write these bytes (one or more whole PDUs) to the transport, unchanged."""

    data: Buffer


@dataclass(frozen=True, slots=True)
class StartArtim(Output):
    """(Re)start the ARTIM timer: call ``artim_expired()`` after ``seconds`` unless stopped."""

    seconds: float


@dataclass(frozen=True, slots=True)
class StopArtim(Output):
    """Cancel the ARTIM timer."""


@dataclass(frozen=True, slots=True)
class ConnectTransport(Output):
    """Open the transport connection to the peer, then call ``transport_connected()``."""


@dataclass(frozen=True, slots=True)
class CloseTransport(Output):
    """Close the transport connection (harmless if it is already closed)."""


@dataclass(frozen=True, slots=True)
class AssociateIndication(Output):
    """A-ASSOCIATE indication (acceptor): the user must call ``accept()`` or ``reject()``."""

    rq: AAssociateRQ


@dataclass(frozen=True, slots=True)
class AssociateAccepted(Output):
    """A-ASSOCIATE confirmation, accepted (requestor)."""

    ac: AAssociateAC


@dataclass(frozen=True, slots=True)
class AssociateRejected(Output):
    """A-ASSOCIATE confirmation, rejected (requestor); the transport is closed next."""

    rj: AAssociateRJ


@dataclass(frozen=True, slots=True)
class PDataIndication(Output):
    """P-DATA indication: one received P-DATA-TF (its PDVs are views of the received bytes)."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseIndication(Output):
    """A-RELEASE indication: the user must call ``release_response()`` (see the module notes)."""

    collision: bool


@dataclass(frozen=True, slots=True)
class ReleaseConfirmation(Output):
    """A-RELEASE confirmation: our release request was answered."""


@dataclass(frozen=True, slots=True)
class AbortIndication(Output):
    """A-ABORT (``provider=False``, the peer's user aborted) or A-P-ABORT indication."""

    source: int
    reason: int
    provider: bool


@dataclass(frozen=True, slots=True)
class Closed(Output):
    """The association is over and the transport closed or being closed (Sta1 reached)."""


_STOP_ARTIM: Final = StopArtim()
_CLOSE_TRANSPORT: Final = CloseTransport()
_CLOSED: Final = Closed()
_CONNECT_TRANSPORT: Final = ConnectTransport()
_RELEASE_CONFIRMATION: Final = ReleaseConfirmation()
_STA6: Final = State.STA6

_EVENT_OF_PDU: Final[dict[type, Event]] = {
    AAssociateAC: Event.EVT3,
    AAssociateRJ: Event.EVT4,
    AAssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    AReleaseRQ: Event.EVT12,
    AReleaseRP: Event.EVT13,
    AAbort: Event.EVT16,
}
#: States where the local user owes a release response (Evt14 has a cell).
_RELEASE_RESPONSE_STATES: Final = frozenset({State.STA8, State.STA9, State.STA12})
_DATA_ACTIONS: Final = frozenset({Action.DT_1, Action.DT_2, Action.AR_6, Action.AR_7})


class UpperLayerMachine:
    """One association's PS3.8 state machine, with an outbox drained by ``take_outputs()``."""

    def __init__(
        self,
        role: Role,
        *,
        artim_timeout: float = 30.0,
        max_pdata_length: int = DEFAULT_MAX_PDU_LENGTH,
        max_other_length: int = DEFAULT_MAX_ASSOCIATE_PDU_LENGTH,
    ) -> None:
        self.role: Final = role
        self.artim_timeout = artim_timeout
        self.max_pdata_length = max_pdata_length
        self.max_other_length = max_other_length
        self._state = State.STA1
        self._outbox: list[Output] = []
        self._framer: PduFramer | None = None
        #: Optional direct receiver of P-DATA indications (see :meth:`receive_data`).
        self.pdata_handler: Callable[[PDataTF], None] | None = None
        self._artim_running = False
        self._rq_bytes: bytes | None = None

    # -- inspection ------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def artim_running(self) -> bool:
        """Whether the core has asked for the ARTIM timer to be running."""
        return self._artim_running

    @property
    def awaiting_release_response(self) -> bool:
        """True when ``release_response()`` is due (Sta8, Sta9 or Sta12)."""
        return self._state in _RELEASE_RESPONSE_STATES

    def take_outputs(self) -> list[Output]:
        """Return and forget everything queued since the last call, in order."""
        out = self._outbox
        self._outbox = []
        return out

    # -- local primitives ------------------------------------------------------------------------
    def associate_request(self, rq: AAssociateRQ) -> None:
        """A-ASSOCIATE request (Evt1): asks for ``ConnectTransport``; the RQ is sent on connect."""
        if self.role is not Role.REQUESTOR:
            raise LocalProtocolError("associate_request() on an association acceptor")
        self._event(Event.EVT1, rq)

    def accept(self, ac: AAssociateAC) -> None:
        """A-ASSOCIATE response, accept (Evt7): sends the A-ASSOCIATE-AC."""
        self._event(Event.EVT7, ac)

    def reject(self, rj: AAssociateRJ) -> None:
        """A-ASSOCIATE response, reject (Evt8): sends the A-ASSOCIATE-RJ and starts ARTIM."""
        self._event(Event.EVT8, rj)

    def send_pdata(self, pdu: PDataTF) -> None:
        """P-DATA request (Evt9) from a dataclass (encoded only if the state allows it)."""
        self._event(Event.EVT9, pdu)

    def send_pdata_bytes(self, data: Buffer) -> None:
        """P-DATA request (Evt9) of an already encoded P-DATA-TF PDU, passed on without a copy
        (several back to back may go in one call: they are sent as one write)."""
        if len(data) < 6 or data[0] != PduType.P_DATA_TF:
            raise LocalProtocolError("send_pdata_bytes() needs encoded P-DATA-TF PDUs")
        self._event(Event.EVT9, data)

    def release_request(self) -> None:
        """A-RELEASE request (Evt11): sends A-RELEASE-RQ."""
        self._event(Event.EVT11, None)

    def release_response(self) -> None:
        """A-RELEASE response (Evt14): sends A-RELEASE-RP."""
        self._event(Event.EVT14, None)

    def abort(self) -> None:
        """A-ABORT request (Evt15); does nothing in Sta1 and Sta13."""
        if self._state in (State.STA1, State.STA13):
            log.debug("abort() in %s: nothing to abort", self._state)
            return
        self._event(Event.EVT15, None)

    # -- transport side --------------------------------------------------------------------------
    def transport_connected(self) -> None:
        """The transport is open: Evt2 (connect confirmation) or Evt5 (incoming connection)."""
        self._event(Event.EVT2 if self.role is Role.REQUESTOR else Event.EVT5, None)

    def receive_data(self, data: Buffer) -> None:
        """Bytes from the transport: each whole PDU is an event; a decode error is Evt19.

        Fast path: a P-DATA-TF arriving in Sta6 is DT-2, which changes no state and starts no
        timer; when ``pdata_handler`` is set and nothing is waiting in the outbox (so the order
        of outputs is kept) it is handed to the handler at once instead of being queued as a
        :class:`PDataIndication`.
        """
        framer = self._framer
        if framer is None:
            if data:
                log.debug("ignoring %d bytes received in %s", len(data), self._state)
            return
        event_of = _EVENT_OF_PDU
        try:
            # iter_feed: PDUs that precede a malformed one in the same chunk are handled first.
            for p in framer.iter_feed(data):
                if p.__class__ is PDataTF and self._state is _STA6 and not self._outbox:
                    handler = self.pdata_handler
                    if handler is not None:
                        handler(p)
                        continue
                self._event(event_of[type(p)], p)
        except PduDecodeError as exc:
            self._framer = None  # unusable after an error; later bytes are ignored
            log.warning("invalid PDU received in %s: %s", self._state, exc)
            self._event(Event.EVT19, exc)

    def transport_closed(self) -> None:
        """The transport connection closed (Evt17)."""
        self._event(Event.EVT17, None)

    def artim_expired(self) -> None:
        """The ARTIM timer fired (Evt18)."""
        self._event(Event.EVT18, None)

    # -- dispatch --------------------------------------------------------------------------------
    def _event(self, event: Event, payload: object) -> None:
        state = self._state
        key = (state, event)
        cell = TRANSITIONS.get(key) or EXTENSIONS.get(key)
        if cell is None:
            message = f"no transition for {event!s} in {state!s} (PS3.8 Table 9-10 has no cell)"
            if event in LOCAL_EVENTS:
                raise LocalProtocolError(message)
            log.debug("ignored: %s", message)
            return
        action, nxt = cell
        perform, quiet = _PERFORM[action]
        if perform(self, event, payload):
            nxt = ALTERNATE_NEXT[key]
        self._state = nxt
        if not quiet:
            log.debug("%s %s: %s -> %s (%s)", self.role.value, event, state, nxt, action)

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, data: Buffer) -> None:
        self._outbox.append(SendBytes(data))

    def _start_artim(self) -> None:
        self._artim_running = True
        self._outbox.append(StartArtim(self.artim_timeout))

    def _stop_artim(self) -> None:
        if self._artim_running:
            self._artim_running = False
            self._outbox.append(_STOP_ARTIM)

    def _close(self) -> None:
        """Close the transport and report the association over (every way into Sta1)."""
        self._framer = None
        self._outbox.append(_CLOSE_TRANSPORT)
        self._outbox.append(_CLOSED)

    def _new_framer(self) -> None:
        self._framer = PduFramer(
            max_pdata_length=self.max_pdata_length, max_other_length=self.max_other_length
        )

    def _send_abort(self, source: int, reason: int) -> None:
        self._send(AAbort(source=source, reason=reason).encode())

    @staticmethod
    def _provider_reason(payload: object) -> int:
        """A-ABORT reason for a PDU we did not expect (2), or the decode error's own reason."""
        if isinstance(payload, PduDecodeError):
            return int(payload.abort_reason)
        return int(AbortReason.UNEXPECTED_PDU)

    # -- association establishment ---------------------------------------------------------------
    def _ae_1(self, event: Event, payload: object) -> bool:
        assert isinstance(payload, AAssociateRQ)
        self._rq_bytes = payload.encode()  # encode now: an invalid RQ fails in the caller
        self._outbox.append(_CONNECT_TRANSPORT)
        return False

    def _ae_2(self, event: Event, payload: object) -> bool:
        assert self._rq_bytes is not None
        self._new_framer()
        self._send(self._rq_bytes)
        self._rq_bytes = None
        return False

    def _ae_3(self, event: Event, payload: object) -> bool:
        assert isinstance(payload, AAssociateAC)
        self._outbox.append(AssociateAccepted(payload))
        return False

    def _ae_4(self, event: Event, payload: object) -> bool:
        assert isinstance(payload, AAssociateRJ)
        self._outbox.append(AssociateRejected(payload))
        self._close()
        return False

    def _ae_5(self, event: Event, payload: object) -> bool:
        self._new_framer()
        self._start_artim()
        return False

    def _ae_6(self, event: Event, payload: object) -> bool:
        """Stop ARTIM; protocol version bit 0 set -> indication (Sta3), else RJ 1/2/2 (Sta13)."""
        assert isinstance(payload, AAssociateRQ)
        self._stop_artim()
        if payload.protocol_version & 1:
            self._outbox.append(AssociateIndication(payload))
            return False
        log.warning(
            "rejecting A-ASSOCIATE-RQ from %r: protocol version 0x%04x lacks bit 0",
            payload.calling_ae, payload.protocol_version,
        )
        rj = AAssociateRJ(
            result=RejectResult.REJECTED_PERMANENT,
            source=RejectSource.SERVICE_PROVIDER_ACSE,
            reason=PROTOCOL_VERSION_NOT_SUPPORTED,
        )
        self._send(rj.encode())
        self._start_artim()
        return True

    def _ae_8(self, event: Event, payload: object) -> bool:
        assert isinstance(payload, AAssociateRJ)
        self._send(payload.encode())
        self._start_artim()
        return False

    def _send_payload(self, event: Event, payload: object) -> bool:
        """AE-7 (the AC), DT-1 and AR-7 (a P-DATA-TF, dataclass or already encoded bytes)."""
        if isinstance(payload, bytes | bytearray | memoryview):
            self._send(payload)
        else:
            assert isinstance(payload, AAssociateAC | PDataTF)
            self._send(payload.encode())
        return False

    # -- data transfer ---------------------------------------------------------------------------
    def _indicate_pdata(self, event: Event, payload: object) -> bool:
        """DT-2 and AR-6."""
        assert isinstance(payload, PDataTF)
        self._outbox.append(PDataIndication(payload))
        return False

    # -- association release ---------------------------------------------------------------------
    def _ar_1(self, event: Event, payload: object) -> bool:
        self._send(AReleaseRQ().encode())
        return False

    def _ar_2(self, event: Event, payload: object) -> bool:
        self._outbox.append(ReleaseIndication(collision=False))
        return False

    def _ar_3(self, event: Event, payload: object) -> bool:
        self._outbox.append(_RELEASE_CONFIRMATION)
        self._close()
        return False

    def _ar_4(self, event: Event, payload: object) -> bool:
        self._send(AReleaseRP().encode())
        self._start_artim()
        return False

    def _ar_5(self, event: Event, payload: object) -> bool:
        self._stop_artim()
        self._close()
        return False

    def _ar_8(self, event: Event, payload: object) -> bool:
        """Release collision: requestor -> Sta9 (default), acceptor -> Sta10 (alternate)."""
        self._outbox.append(ReleaseIndication(collision=True))
        return self.role is Role.ACCEPTOR

    def _ar_9(self, event: Event, payload: object) -> bool:
        self._send(AReleaseRP().encode())
        return False

    def _ar_10(self, event: Event, payload: object) -> bool:
        self._outbox.append(_RELEASE_CONFIRMATION)
        return False

    # -- association abort -----------------------------------------------------------------------
    def _aa_1(self, event: Event, payload: object) -> bool:
        """A-ABORT: source 0 for the user's abort, source 2 for a bad PDU in Sta2; (re)start ARTIM."""
        if event is Event.EVT15:
            self._send_abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        else:
            self._send_abort(AbortSource.SERVICE_PROVIDER, self._provider_reason(payload))
        self._start_artim()
        return False

    def _aa_2(self, event: Event, payload: object) -> bool:
        self._stop_artim()
        self._close()
        return False

    def _aa_3(self, event: Event, payload: object) -> bool:
        """A received A-ABORT: A-ABORT indication for source 0, A-P-ABORT otherwise."""
        assert isinstance(payload, AAbort)
        source, reason = int(payload.source), int(payload.reason)
        self._outbox.append(AbortIndication(source, reason, provider=source != 0))
        self._close()
        return False

    def _aa_4(self, event: Event, payload: object) -> bool:
        """Transport lost: A-P-ABORT indication."""
        self._outbox.append(
            AbortIndication(int(AbortSource.SERVICE_PROVIDER), 0, provider=True)
        )
        self._close()
        return False

    def _aa_5(self, event: Event, payload: object) -> bool:
        self._stop_artim()
        self._close()
        return False

    def _aa_6(self, event: Event, payload: object) -> bool:
        log.debug("ignoring %s received in Sta13", type(payload).__name__)
        return False

    def _aa_7(self, event: Event, payload: object) -> bool:
        self._send_abort(AbortSource.SERVICE_PROVIDER, self._provider_reason(payload))
        return False

    def _aa_8(self, event: Event, payload: object) -> bool:
        """Send A-ABORT (source 2), A-P-ABORT indication, start ARTIM."""
        reason = self._provider_reason(payload)
        if not isinstance(payload, PduDecodeError):
            log.warning("unexpected %s in %s: aborting", type(payload).__name__, self._state)
        self._send_abort(AbortSource.SERVICE_PROVIDER, reason)
        self._outbox.append(AbortIndication(int(AbortSource.SERVICE_PROVIDER), reason, provider=True))
        self._start_artim()
        return False


_Perform = Callable[[UpperLayerMachine, Event, object], bool]
_M = UpperLayerMachine
#: Each action's method, and whether it is a data-transfer action (not logged), built once for
#: all machines (an enum-keyed dict of bound methods per machine cost ~10 us per association).
_PERFORM: Final[dict[Action, tuple[_Perform, bool]]] = {
    action: (method, action in _DATA_ACTIONS) for action, method in {
        Action.AE_1: _M._ae_1, Action.AE_2: _M._ae_2, Action.AE_3: _M._ae_3,
        Action.AE_4: _M._ae_4, Action.AE_5: _M._ae_5, Action.AE_6: _M._ae_6,
        Action.AE_7: _M._send_payload, Action.AE_8: _M._ae_8,
        Action.DT_1: _M._send_payload, Action.DT_2: _M._indicate_pdata,
        Action.AR_1: _M._ar_1, Action.AR_2: _M._ar_2, Action.AR_3: _M._ar_3,
        Action.AR_4: _M._ar_4, Action.AR_5: _M._ar_5, Action.AR_6: _M._indicate_pdata,
        Action.AR_7: _M._send_payload, Action.AR_8: _M._ar_8, Action.AR_9: _M._ar_9,
        Action.AR_10: _M._ar_10, Action.AA_1: _M._aa_1, Action.AA_2: _M._aa_2,
        Action.AA_3: _M._aa_3, Action.AA_4: _M._aa_4, Action.AA_5: _M._aa_5,
        Action.AA_6: _M._aa_6, Action.AA_7: _M._aa_7, Action.AA_8: _M._aa_8,
    }.items()
}
if set(_PERFORM) != set(Action):  # pragma: no cover - caught at import
    raise RuntimeError("an action of pdu.fsm.Action has no method in the machine")
