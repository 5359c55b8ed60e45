"""In-memory pair harness: a requestor core wired to an acceptor core, with no sockets.

``SendBytes`` of one side become ``receive_data`` of the other (optionally cut in random chunks),
``ConnectTransport`` connects both ends, ``CloseTransport`` drops what was in flight towards the
closing side and, once the peer has read everything sent before the close, gives the peer
``transport_closed()``. ARTIM timers are only recorded; a test fires them with :meth:`fire_artim`.

:meth:`Pair.pump` runs until nothing moves. Outbox draining happens for both sides before any
delivery, so primitives called on both sides before a pump cross on the wire (release collision).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pdu.constants import IMPLEMENTATION_CLASS_UID
from pdu.items import PresentationContextAC, PresentationContextRQ, UserInformation
from pdu.machine import (
    AssociateIndication,
    Closed,
    CloseTransport,
    ConnectTransport,
    Output,
    ReleaseConfirmation,
    ReleaseIndication,
    Role,
    SendBytes,
    StartArtim,
    StopArtim,
    UpperLayerMachine,
)
from pdu.pdus import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationDataValue,
)

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def make_rq(calling_ae: str = "ECHOSCU", called_ae: str = "ANY-SCP") -> AAssociateRQ:
    """A small A-ASSOCIATE-RQ: Verification, implicit little endian."""
    return AAssociateRQ.build(
        called_ae=called_ae,
        calling_ae=calling_ae,
        presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),),
        user_information=UserInformation.build(
            max_length=16384, implementation_class_uid=IMPLEMENTATION_CLASS_UID
        ),
    )


def make_ac(rq: AAssociateRQ | None = None) -> AAssociateAC:
    """The A-ASSOCIATE-AC accepting :func:`make_rq`'s context."""
    rq = rq or make_rq()
    return AAssociateAC.build(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT_LE),),
        user_information=UserInformation.build(
            max_length=16384, implementation_class_uid=IMPLEMENTATION_CLASS_UID
        ),
    )


def make_pdata(payload: bytes = b"\x08\x00\x00\x01", control: int = 3) -> PDataTF:
    return PDataTF((PresentationDataValue(1, control, payload),))


def accept_all(rq: AAssociateRQ) -> AAssociateAC:
    return make_ac(rq)


#: Encoded PDUs for feeding a core directly.
RQ_BYTES = make_rq().encode()
RQ_V0_BYTES = RQ_BYTES[:6] + b"\x00\x00" + RQ_BYTES[8:]  # protocol version without bit 0
AC_BYTES = make_ac().encode()
RJ = AAssociateRJ(result=1, source=1, reason=7)
RJ_BYTES = RJ.encode()
PDATA_BYTES = make_pdata().encode()
RELEASE_RQ_BYTES = AReleaseRQ().encode()
RELEASE_RP_BYTES = AReleaseRP().encode()
ABORT_USER_BYTES = AAbort(source=0, reason=0).encode()
ABORT_PROVIDER_BYTES = AAbort(source=2, reason=6).encode()
#: An unknown PDU type (0x0A): unrecognized PDU.
UNKNOWN_PDU_BYTES = b"\x0a\x00\x00\x00\x00\x04\x00\x00\x00\x00"
#: An A-ASSOCIATE-RQ whose body is two bytes long: malformed.
TRUNCATED_RQ_BYTES = b"\x01\x00\x00\x00\x00\x02\x00\x01"

#: What the acceptor's user answers to an A-ASSOCIATE indication (None: the test answers).
Answer = Callable[[AAssociateRQ], AAssociateAC | AAssociateRJ]


@dataclass
class Endpoint:
    """One side: its core and what it saw."""

    name: str
    machine: UpperLayerMachine
    #: Every output, in order (transport commands included).
    outputs: list[Output] = field(default_factory=list)
    #: Indications for the user only (no SendBytes/timer/transport commands).
    indications: list[Output] = field(default_factory=list)
    #: Seconds of the armed ARTIM timer, or None.
    artim: float | None = None
    #: Our end of the transport is open.
    open: bool = False
    #: Bytes in flight towards this side.
    inbound: bytearray = field(default_factory=bytearray)
    #: The peer closed: deliver transport_closed() once ``inbound`` is drained.
    eof_pending: bool = False
    #: Bytes this side put on the wire.
    sent: int = 0
    #: An unresponsive side: bytes towards it wait, it reads nothing and never sees a close.
    stalled: bool = False

    def of_type(self, kind: type[Output]) -> list[Output]:
        return [o for o in self.indications if type(o) is kind]

    @property
    def closed(self) -> int:
        """How many ``Closed`` outputs this side emitted."""
        return sum(1 for o in self.outputs if type(o) is Closed)


_TRANSPORT_OUTPUTS = (SendBytes, StartArtim, StopArtim, ConnectTransport, CloseTransport)


class Pair:
    """Requestor and acceptor cores talking through an in-memory transport."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        max_chunk: int = 7,
        answer: Answer | None = None,
        auto_release: bool = True,
        refuse_connect: bool = False,
        artim_timeout: float = 30.0,
        max_pdata_length: int = 16384,
    ) -> None:
        self.rng = rng
        self.max_chunk = max_chunk
        self.answer = answer
        self.auto_release = auto_release
        self.refuse_connect = refuse_connect
        kwargs = {"artim_timeout": artim_timeout, "max_pdata_length": max_pdata_length}
        self.requestor = Endpoint("requestor", UpperLayerMachine(Role.REQUESTOR, **kwargs))
        self.acceptor = Endpoint("acceptor", UpperLayerMachine(Role.ACCEPTOR, **kwargs))
        self._connect_pending = False
        #: Every PDU put on the wire, in order: (sender name, bytes).
        self.wire: list[tuple[str, bytes]] = []

    def peer(self, ep: Endpoint) -> Endpoint:
        return self.acceptor if ep is self.requestor else self.requestor

    # -- driving ---------------------------------------------------------------------------------
    def pump(self, max_steps: int = 100_000) -> None:
        """Drain outboxes and deliver bytes/closes until nothing moves."""
        for _ in range(max_steps):
            moved = self._drain_all()
            if self._connect_pending:
                self._connect()
                moved = True
            for ep in (self.requestor, self.acceptor):
                moved = self._deliver(ep) or moved
            if not moved:
                return
        raise AssertionError("pair did not settle")

    def fire_artim(self, ep: Endpoint) -> None:
        """The ARTIM timer of ``ep`` expires now (it must be armed)."""
        assert ep.artim is not None, f"{ep.name}: ARTIM is not running"
        ep.artim = None
        ep.machine.artim_expired()
        self.pump()

    def inject(self, ep: Endpoint, data: bytes) -> None:
        """Put raw bytes on the wire towards ``ep`` (a misbehaving peer)."""
        ep.inbound += data

    def disconnect(self) -> None:
        """The network drops the connection: both sides see the transport close."""
        for ep in (self.requestor, self.acceptor):
            ep.inbound.clear()
            ep.eof_pending = ep.open
        self.pump()

    # -- internals -------------------------------------------------------------------------------
    def _drain_all(self) -> bool:
        moved = False
        for ep in (self.requestor, self.acceptor):
            outs = ep.machine.take_outputs()
            while outs:
                moved = True
                for out in outs:
                    self._handle(ep, out)
                outs = ep.machine.take_outputs()
        return moved

    def _handle(self, ep: Endpoint, out: Output) -> None:
        ep.outputs.append(out)
        peer = self.peer(ep)
        if type(out) is SendBytes:
            if ep.open:
                peer.inbound += out.data
                ep.sent += len(out.data)
                self.wire.append((ep.name, bytes(out.data)))
        elif type(out) is StartArtim:
            ep.artim = out.seconds
        elif type(out) is StopArtim:
            ep.artim = None
        elif type(out) is ConnectTransport:
            self._connect_pending = True
        elif type(out) is CloseTransport:
            if ep.open:
                ep.open = False
                ep.inbound.clear()
                peer.eof_pending = True
        else:
            ep.indications.append(out)
            self._respond(ep, out)

    def _respond(self, ep: Endpoint, out: Output) -> None:
        """The automatic user: answers associations and releases when asked to."""
        machine = ep.machine
        if type(out) is AssociateIndication and self.answer is not None:
            answer = self.answer(out.rq)
            if isinstance(answer, AAssociateAC):
                machine.accept(answer)
            else:
                machine.reject(answer)
        elif type(out) in (ReleaseIndication, ReleaseConfirmation):
            if self.auto_release and machine.awaiting_release_response:
                machine.release_response()

    def _connect(self) -> None:
        self._connect_pending = False
        if self.refuse_connect:
            self.requestor.machine.transport_closed()
            return
        self.requestor.open = self.acceptor.open = True
        self.acceptor.machine.transport_connected()
        self.requestor.machine.transport_connected()

    def _deliver(self, ep: Endpoint) -> bool:
        if ep.stalled:
            return False
        if ep.inbound:
            if self.rng is None:
                size = len(ep.inbound)
            else:
                size = self.rng.randint(1, self.max_chunk)
            chunk = bytes(ep.inbound[:size])
            del ep.inbound[:size]
            if ep.open:
                ep.machine.receive_data(chunk)
            return True
        if ep.eof_pending:
            ep.eof_pending = False
            if ep.open:
                ep.open = False
                ep.machine.transport_closed()
            return True
        return False
