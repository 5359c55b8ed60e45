"""The sans-IO upper-layer core: each action's outputs, wrong local primitives, random sequences."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdu.errors import LocalProtocolError, PduDecodeError
from pdu.framer import PduFramer
from pdu.fsm import (
    ALTERNATE_NEXT,
    ARTIM_STATES,
    EXTENSIONS,
    LOCAL_EVENTS,
    TRANSITIONS,
    Action,
    Event,
    State,
)
from pdu.machine import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    Closed,
    CloseTransport,
    ConnectTransport,
    Output,
    PDataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
    Role,
    SendBytes,
    StartArtim,
    StopArtim,
    UpperLayerMachine,
)
from pdu.pdus import AAbort, AAssociateRJ, AAssociateRQ, decode

from .pair import (
    ABORT_PROVIDER_BYTES,
    ABORT_USER_BYTES,
    AC_BYTES,
    PDATA_BYTES,
    RELEASE_RP_BYTES,
    RELEASE_RQ_BYTES,
    RJ,
    RJ_BYTES,
    RQ_BYTES,
    RQ_V0_BYTES,
    TRUNCATED_RQ_BYTES,
    UNKNOWN_PDU_BYTES,
    make_ac,
    make_pdata,
    make_rq,
)

Step = Callable[[UpperLayerMachine], None]


def _assoc(m: UpperLayerMachine) -> None:
    m.associate_request(make_rq())


def _conn(m: UpperLayerMachine) -> None:
    m.transport_connected()


def _recv(data: bytes) -> Step:
    return lambda m: m.receive_data(data)


def _accept(m: UpperLayerMachine) -> None:
    m.accept(make_ac())


def _relrq(m: UpperLayerMachine) -> None:
    m.release_request()


def _relrp(m: UpperLayerMachine) -> None:
    m.release_response()


def _abort(m: UpperLayerMachine) -> None:
    m.abort()


_REQ6 = [_assoc, _conn, _recv(AC_BYTES)]
_ACC6 = [_conn, _recv(RQ_BYTES), _accept]
#: How to reach each state legitimately, per role.
PATHS: dict[Role, dict[State, list[Step]]] = {
    Role.REQUESTOR: {
        State.STA1: [],
        State.STA4: [_assoc],
        State.STA5: [_assoc, _conn],
        State.STA6: _REQ6,
        State.STA7: [*_REQ6, _relrq],
        State.STA8: [*_REQ6, _recv(RELEASE_RQ_BYTES)],
        State.STA9: [*_REQ6, _relrq, _recv(RELEASE_RQ_BYTES)],
        State.STA11: [*_REQ6, _relrq, _recv(RELEASE_RQ_BYTES), _relrp],
        State.STA13: [*_REQ6, _abort],
    },
    Role.ACCEPTOR: {
        State.STA1: [],
        State.STA2: [_conn],
        State.STA3: [_conn, _recv(RQ_BYTES)],
        State.STA6: _ACC6,
        State.STA7: [*_ACC6, _relrq],
        State.STA8: [*_ACC6, _recv(RELEASE_RQ_BYTES)],
        State.STA10: [*_ACC6, _relrq, _recv(RELEASE_RQ_BYTES)],
        State.STA12: [*_ACC6, _relrq, _recv(RELEASE_RQ_BYTES), _recv(RELEASE_RP_BYTES)],
        State.STA13: [*_ACC6, _abort],
    },
}


def drive(state: State, role: Role | None = None, **kwargs: float) -> UpperLayerMachine:
    """A machine in ``state`` with an empty outbox."""
    if role is None:
        role = Role.REQUESTOR if state in PATHS[Role.REQUESTOR] else Role.ACCEPTOR
    m = UpperLayerMachine(role, **kwargs)  # type: ignore[arg-type]
    for step in PATHS[role][state]:
        step(m)
    assert m.state is state
    m.take_outputs()
    return m


def abort_bytes(source: int, reason: int) -> bytes:
    return AAbort(source=source, reason=reason).encode()


def decode_error_reason(data: bytes) -> int:
    with pytest.raises(PduDecodeError) as info:
        PduFramer(max_pdata_length=16384).feed(data)
    return int(info.value.abort_reason)


def test_every_state_is_reachable() -> None:
    reachable = set(PATHS[Role.REQUESTOR]) | set(PATHS[Role.ACCEPTOR])
    assert reachable == set(State)


# -- association establishment -----------------------------------------------------------------
def test_ae1_ae2_requestor_connects_then_sends_rq() -> None:
    m = UpperLayerMachine(Role.REQUESTOR)
    m.associate_request(make_rq())
    assert m.take_outputs() == [ConnectTransport()]
    assert m.state is State.STA4
    m.transport_connected()
    assert m.take_outputs() == [SendBytes(RQ_BYTES)]
    assert m.state is State.STA5


def test_ae1_only_for_requestor() -> None:
    m = UpperLayerMachine(Role.ACCEPTOR)
    with pytest.raises(LocalProtocolError):
        m.associate_request(make_rq())
    assert m.state is State.STA1
    assert m.take_outputs() == []


def test_ae3_accepted() -> None:
    m = drive(State.STA5)
    m.receive_data(AC_BYTES)
    assert m.take_outputs() == [AssociateAccepted(decode(AC_BYTES))]  # type: ignore[arg-type]
    assert m.state is State.STA6


def test_ae4_rejected_closes() -> None:
    m = drive(State.STA5)
    m.receive_data(RJ_BYTES)
    assert m.take_outputs() == [AssociateRejected(RJ), CloseTransport(), Closed()]
    assert m.state is State.STA1


def test_ae5_starts_artim() -> None:
    m = UpperLayerMachine(Role.ACCEPTOR, artim_timeout=2.5)
    m.transport_connected()
    assert m.take_outputs() == [StartArtim(2.5)]
    assert m.state is State.STA2
    assert m.artim_running


def test_ae6_stops_artim_and_indicates() -> None:
    m = drive(State.STA2)
    m.receive_data(RQ_BYTES)
    out = m.take_outputs()
    assert out[0] == StopArtim()
    assert type(out[1]) is AssociateIndication
    assert out[1].rq.calling_ae == "ECHOSCU"
    assert len(out) == 2
    assert m.state is State.STA3
    assert not m.artim_running


@pytest.mark.parametrize("version", [b"\x00\x00", b"\x00\x02", b"\xff\xfe"])
def test_ae6_rejects_protocol_version_without_bit0(version: bytes) -> None:
    m = drive(State.STA2, artim_timeout=5)
    m.receive_data(RQ_BYTES[:6] + version + RQ_BYTES[8:])
    rj = AAssociateRJ(result=1, source=2, reason=2)
    assert m.take_outputs() == [StopArtim(), SendBytes(rj.encode()), StartArtim(5)]
    assert m.state is State.STA13
    assert m.artim_running


def test_ae6_accepts_extra_version_bits() -> None:
    m = drive(State.STA2)
    m.receive_data(RQ_BYTES[:6] + b"\x00\x03" + RQ_BYTES[8:])
    assert m.state is State.STA3


def test_ae7_sends_ac() -> None:
    m = drive(State.STA3)
    m.accept(make_ac())
    assert m.take_outputs() == [SendBytes(AC_BYTES)]
    assert m.state is State.STA6


def test_ae8_sends_rj_and_starts_artim() -> None:
    m = drive(State.STA3)
    m.reject(RJ)
    assert m.take_outputs() == [SendBytes(RJ_BYTES), StartArtim(30.0)]
    assert m.state is State.STA13


# -- data transfer -----------------------------------------------------------------------------
@pytest.mark.parametrize("state", [State.STA6, State.STA8])
def test_dt1_ar7_send_pdata(state: State) -> None:
    m = drive(state)
    m.send_pdata(make_pdata())
    assert m.take_outputs() == [SendBytes(PDATA_BYTES)]
    assert m.state is state


def test_send_pdata_bytes_passes_the_same_object() -> None:
    m = drive(State.STA6)
    view = memoryview(bytearray(PDATA_BYTES))
    m.send_pdata_bytes(view)
    (out,) = m.take_outputs()
    assert type(out) is SendBytes
    assert out.data is view


@pytest.mark.parametrize("data", [b"", b"\x04\x00", RELEASE_RQ_BYTES])
def test_send_pdata_bytes_refuses_other_pdus(data: bytes) -> None:
    m = drive(State.STA6)
    with pytest.raises(LocalProtocolError):
        m.send_pdata_bytes(data)
    assert m.take_outputs() == []


@pytest.mark.parametrize(("state", "role"), [(State.STA6, None), (State.STA7, Role.REQUESTOR),
                                             (State.STA7, Role.ACCEPTOR)])
def test_dt2_ar6_pdata_indication(state: State, role: Role | None) -> None:
    m = drive(state, role)
    m.receive_data(PDATA_BYTES)
    (out,) = m.take_outputs()
    assert type(out) is PDataIndication
    (pdv,) = out.pdu.pdvs
    assert (pdv.context_id, pdv.is_command, pdv.is_last) == (1, True, True)
    assert bytes(pdv.data) == b"\x08\x00\x00\x01"
    assert m.state is state


def test_pdata_handler_gets_sta6_pdata_directly_and_in_order() -> None:
    """The fast path: in Sta6 with an empty outbox P-DATA goes to ``pdata_handler`` at once;
    otherwise (another state, or outputs still queued) it is a queued PDataIndication."""
    got: list[object] = []
    m = drive(State.STA6)
    m.pdata_handler = got.append
    m.receive_data(PDATA_BYTES + PDATA_BYTES)
    assert m.take_outputs() == [] and len(got) == 2 and m.state is State.STA6
    assert bytes(got[0].pdvs[0].data) == b"\x08\x00\x00\x01"  # type: ignore[attr-defined]

    m.release_request()  # Sta7: the indication is queued as before
    m.take_outputs()
    m.receive_data(PDATA_BYTES)
    assert [type(o) for o in m.take_outputs()] == [PDataIndication] and len(got) == 2

    # a requestor receiving the A-ASSOCIATE-AC and a P-DATA-TF in one read: the P-DATA waits
    # behind the AssociateAccepted still in the outbox
    r = UpperLayerMachine(Role.REQUESTOR)
    r.pdata_handler = got.append
    r.associate_request(make_rq())
    r.transport_connected()
    r.take_outputs()
    r.receive_data(AC_BYTES + PDATA_BYTES + PDATA_BYTES)
    outs = [type(o).__name__ for o in r.take_outputs() if type(o).__name__ != "StopArtim"]
    assert outs == ["AssociateAccepted", "PDataIndication", "PDataIndication"]
    assert len(got) == 2 and r.state is State.STA6


def test_pdata_handler_abort_stops_the_fast_path() -> None:
    """A handler that aborts leaves Sta6: the rest of the read goes through the table."""
    m = drive(State.STA6)
    calls: list[object] = []

    def handler(p: object) -> None:
        calls.append(p)
        m.abort()

    m.pdata_handler = handler
    m.receive_data(PDATA_BYTES + PDATA_BYTES)
    assert len(calls) == 1 and m.state is State.STA13


# -- release -----------------------------------------------------------------------------------
def test_ar1_sends_release_rq() -> None:
    m = drive(State.STA6)
    m.release_request()
    assert m.take_outputs() == [SendBytes(RELEASE_RQ_BYTES)]
    assert m.state is State.STA7


def test_ar2_release_indication() -> None:
    m = drive(State.STA6)
    m.receive_data(RELEASE_RQ_BYTES)
    assert m.take_outputs() == [ReleaseIndication(collision=False)]
    assert m.state is State.STA8
    assert m.awaiting_release_response


@pytest.mark.parametrize("state", [State.STA7, State.STA11])
def test_ar3_confirms_and_closes(state: State) -> None:
    m = drive(state)
    m.receive_data(RELEASE_RP_BYTES)
    assert m.take_outputs() == [ReleaseConfirmation(), CloseTransport(), Closed()]
    assert m.state is State.STA1


@pytest.mark.parametrize("state", [State.STA8, State.STA12])
def test_ar4_sends_rp_and_starts_artim(state: State) -> None:
    m = drive(state, artim_timeout=7)
    m.release_response()
    assert m.take_outputs() == [SendBytes(RELEASE_RP_BYTES), StartArtim(7)]
    assert m.state is State.STA13


def test_ar5_stops_artim_on_close() -> None:
    m = drive(State.STA8)
    m.release_response()
    m.take_outputs()
    m.transport_closed()
    assert m.take_outputs() == [StopArtim(), CloseTransport(), Closed()]
    assert m.state is State.STA1
    assert not m.artim_running


@pytest.mark.parametrize(("role", "nxt"), [(Role.REQUESTOR, State.STA9),
                                           (Role.ACCEPTOR, State.STA10)])
def test_ar8_collision_branch(role: Role, nxt: State) -> None:
    m = drive(State.STA7, role)
    m.receive_data(RELEASE_RQ_BYTES)
    assert m.take_outputs() == [ReleaseIndication(collision=True)]
    assert m.state is nxt
    assert m.awaiting_release_response is (role is Role.REQUESTOR)


def test_ar9_collision_requestor_answers() -> None:
    m = drive(State.STA9)
    m.release_response()
    assert m.take_outputs() == [SendBytes(RELEASE_RP_BYTES)]
    assert m.state is State.STA11


def test_ar10_collision_acceptor_confirmation() -> None:
    m = drive(State.STA10)
    m.receive_data(RELEASE_RP_BYTES)
    assert m.take_outputs() == [ReleaseConfirmation()]
    assert m.state is State.STA12
    assert m.awaiting_release_response


# -- abort -------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", [State.STA3, State.STA5, State.STA6, State.STA7, State.STA8,
                                   State.STA9, State.STA10, State.STA11, State.STA12])
def test_aa1_user_abort(state: State) -> None:
    m = drive(state)
    m.abort()
    assert m.take_outputs() == [SendBytes(ABORT_USER_BYTES), StartArtim(30.0)]
    assert m.state is State.STA13


@pytest.mark.parametrize("data", [AC_BYTES, RJ_BYTES, PDATA_BYTES, RELEASE_RQ_BYTES,
                                  RELEASE_RP_BYTES])
def test_aa1_unexpected_pdu_in_sta2_is_provider_abort(data: bytes) -> None:
    m = drive(State.STA2)
    m.receive_data(data)
    assert m.take_outputs() == [SendBytes(abort_bytes(2, 2)), StartArtim(30.0)]
    assert m.state is State.STA13


@pytest.mark.parametrize("data", [UNKNOWN_PDU_BYTES, TRUNCATED_RQ_BYTES])
def test_aa1_invalid_pdu_in_sta2_uses_decode_reason(data: bytes) -> None:
    m = drive(State.STA2)
    m.receive_data(data)
    reason = decode_error_reason(data)
    assert m.take_outputs() == [SendBytes(abort_bytes(2, reason)), StartArtim(30.0)]
    assert m.state is State.STA13


def test_unknown_pdu_type_reason_is_unrecognized() -> None:
    assert decode_error_reason(UNKNOWN_PDU_BYTES) == 1


@pytest.mark.parametrize("state", [State.STA2, State.STA13])
def test_aa2_artim_expiry_closes(state: State) -> None:
    m = drive(state)
    m.artim_expired()
    assert m.take_outputs() == [StopArtim(), CloseTransport(), Closed()]
    assert m.state is State.STA1


@pytest.mark.parametrize("state", [State.STA2, State.STA13])
def test_aa2_abort_received_without_association(state: State) -> None:
    m = drive(state)
    m.receive_data(ABORT_USER_BYTES)
    assert m.take_outputs() == [StopArtim(), CloseTransport(), Closed()]
    assert m.state is State.STA1


def test_aa2_abort_while_connecting() -> None:
    m = drive(State.STA4)
    m.abort()
    assert m.take_outputs() == [CloseTransport(), Closed()]  # ARTIM was not running
    assert m.state is State.STA1


@pytest.mark.parametrize(("data", "expected"), [
    (ABORT_USER_BYTES, AbortIndication(0, 0, provider=False)),
    (ABORT_PROVIDER_BYTES, AbortIndication(2, 6, provider=True)),
])
def test_aa3_user_vs_provider_abort(data: bytes, expected: AbortIndication) -> None:
    for state in (State.STA3, State.STA5, State.STA6, State.STA7, State.STA12):
        m = drive(state)
        m.receive_data(data)
        assert m.take_outputs() == [expected, CloseTransport(), Closed()]
        assert m.state is State.STA1


@pytest.mark.parametrize("state", [State.STA3, State.STA4, State.STA6, State.STA9, State.STA12])
def test_aa4_transport_lost(state: State) -> None:
    m = drive(state)
    m.transport_closed()
    assert m.take_outputs() == [AbortIndication(2, 0, provider=True), CloseTransport(), Closed()]
    assert m.state is State.STA1


def test_aa5_transport_closed_in_sta2() -> None:
    m = drive(State.STA2)
    m.transport_closed()
    assert m.take_outputs() == [StopArtim(), CloseTransport(), Closed()]
    assert m.state is State.STA1


@pytest.mark.parametrize("data", [AC_BYTES, RJ_BYTES, PDATA_BYTES, RELEASE_RQ_BYTES,
                                  RELEASE_RP_BYTES])
def test_aa6_ignored_in_sta13(data: bytes) -> None:
    m = drive(State.STA13)
    m.receive_data(data)
    assert m.take_outputs() == []
    assert m.state is State.STA13
    assert m.artim_running


def test_aa7_rq_in_sta13() -> None:
    m = drive(State.STA13)
    m.receive_data(RQ_BYTES)
    assert m.take_outputs() == [SendBytes(abort_bytes(2, 2))]
    assert m.state is State.STA13


def test_aa7_invalid_pdu_in_sta13_then_bytes_ignored() -> None:
    m = drive(State.STA13)
    m.receive_data(UNKNOWN_PDU_BYTES)
    assert m.take_outputs() == [SendBytes(abort_bytes(2, 1))]
    m.receive_data(RQ_BYTES)  # the framer is gone: nothing more is parsed
    assert m.take_outputs() == []
    assert m.state is State.STA13


@pytest.mark.parametrize("data", [AC_BYTES, RJ_BYTES, RQ_BYTES, RELEASE_RP_BYTES])
def test_aa8_unexpected_pdu(data: bytes) -> None:
    m = drive(State.STA6, artim_timeout=3)
    m.receive_data(data)
    assert m.take_outputs() == [
        SendBytes(abort_bytes(2, 2)), AbortIndication(2, 2, provider=True), StartArtim(3)
    ]
    assert m.state is State.STA13


@pytest.mark.parametrize("state", [State.STA3, State.STA5, State.STA6, State.STA10])
def test_aa8_invalid_pdu_uses_decode_reason(state: State, caplog: pytest.LogCaptureFixture) -> None:
    m = drive(state)
    with caplog.at_level("WARNING", logger="pdu.machine"):
        m.receive_data(TRUNCATED_RQ_BYTES)
    reason = decode_error_reason(TRUNCATED_RQ_BYTES)
    assert m.take_outputs() == [
        SendBytes(abort_bytes(2, reason)), AbortIndication(2, reason, provider=True),
        StartArtim(30.0),
    ]
    assert m.state is State.STA13
    assert any("invalid PDU" in r.getMessage() for r in caplog.records)


def test_aa8_pdata_over_our_limit() -> None:
    m = drive(State.STA6, max_pdata_length=64)
    big = make_pdata(b"\x00" * 100).encode()
    m.receive_data(big[:6])  # the header alone is enough to refuse it
    out = m.take_outputs()
    assert type(out[0]) is SendBytes
    assert decode(out[0].data) == AAbort(source=2, reason=out[1].reason)  # type: ignore[union-attr]
    assert type(out[1]) is AbortIndication
    assert m.state is State.STA13


# -- several PDUs and split PDUs ---------------------------------------------------------------
def test_pdus_split_and_joined() -> None:
    m = drive(State.STA6)
    stream = PDATA_BYTES + PDATA_BYTES + RELEASE_RQ_BYTES
    for i in range(len(stream)):
        m.receive_data(stream[i:i + 1])
    out = m.take_outputs()
    assert [type(o) for o in out] == [PDataIndication, PDataIndication, ReleaseIndication]
    assert m.state is State.STA8


def test_bytes_after_the_end_are_ignored() -> None:
    m = drive(State.STA6)
    m.receive_data(ABORT_USER_BYTES + PDATA_BYTES)
    assert m.take_outputs() == [AbortIndication(0, 0, provider=False), CloseTransport(), Closed()]
    m.receive_data(PDATA_BYTES)
    m.transport_closed()
    m.artim_expired()
    assert m.take_outputs() == []
    assert m.state is State.STA1


# -- local primitives in the wrong state -------------------------------------------------------
_LOCAL_CALLS: dict[Event, Step] = {
    Event.EVT1: _assoc,
    Event.EVT7: _accept,
    Event.EVT8: lambda m: m.reject(RJ),
    Event.EVT9: lambda m: m.send_pdata(make_pdata()),
    Event.EVT11: _relrq,
    Event.EVT14: _relrp,
    Event.EVT15: _abort,
}
_WRONG = [
    (role, state, event)
    for role, paths in PATHS.items()
    for state in paths
    for event in _LOCAL_CALLS
    if (state, event) not in TRANSITIONS and (state, event) not in EXTENSIONS
    and not (event is Event.EVT15 and state in (State.STA1, State.STA13))
    and not (event is Event.EVT1 and role is Role.ACCEPTOR)
]


@pytest.mark.parametrize(("role", "state", "event"), _WRONG, ids=str)
def test_local_primitive_in_wrong_state_raises(role: Role, state: State, event: Event) -> None:
    m = drive(state, role)
    with pytest.raises(LocalProtocolError, match=f"{event!s} in {state!s}"):
        _LOCAL_CALLS[event](m)
    assert m.state is state
    assert m.take_outputs() == []


def test_send_pdata_bytes_in_wrong_state() -> None:
    m = drive(State.STA7)
    with pytest.raises(LocalProtocolError, match="Evt9 in Sta7"):
        m.send_pdata_bytes(PDATA_BYTES)
    assert m.state is State.STA7


@pytest.mark.parametrize("state", [State.STA1, State.STA13])
def test_abort_is_harmless_when_nothing_to_abort(state: State) -> None:
    m = drive(state)
    m.abort()
    assert m.take_outputs() == []
    assert m.state is state


def test_abort_in_sta2_closes() -> None:
    m = drive(State.STA2)
    m.abort()
    assert m.take_outputs() == [StopArtim(), CloseTransport(), Closed()]
    assert m.state is State.STA1


def test_transport_events_in_impossible_states_are_ignored() -> None:
    m = drive(State.STA6)
    m.transport_connected()
    m.artim_expired()
    assert m.take_outputs() == []
    assert m.state is State.STA6


def test_machine_can_be_reused_after_sta1() -> None:
    m = drive(State.STA5)
    m.receive_data(RJ_BYTES)
    m.take_outputs()
    for step in _REQ6:
        step(m)
    assert m.state is State.STA6


# -- random event sequences --------------------------------------------------------------------
class Recording(UpperLayerMachine):
    """Records every dispatched event as (state before, event, state after, payload)."""

    def __init__(self, role: Role) -> None:
        super().__init__(role, max_pdata_length=16384)
        self.trace: list[tuple[State, Event, State, object]] = []

    def _event(self, event: Event, payload: object) -> None:
        before = self.state
        try:
            super()._event(event, payload)
        finally:
            self.trace.append((before, event, self.state, payload))


WHOLE_PDUS: dict[str, tuple[bytes, Event]] = {
    "rq": (RQ_BYTES, Event.EVT6),
    "rq_v0": (RQ_V0_BYTES, Event.EVT6),
    "ac": (AC_BYTES, Event.EVT3),
    "rj": (RJ_BYTES, Event.EVT4),
    "pdata": (PDATA_BYTES, Event.EVT10),
    "release_rq": (RELEASE_RQ_BYTES, Event.EVT12),
    "release_rp": (RELEASE_RP_BYTES, Event.EVT13),
    "abort_user": (ABORT_USER_BYTES, Event.EVT16),
    "abort_provider": (ABORT_PROVIDER_BYTES, Event.EVT16),
    "unknown_type": (UNKNOWN_PDU_BYTES, Event.EVT19),
    "truncated_rq": (TRUNCATED_RQ_BYTES, Event.EVT19),
}
LOCAL_OPS: dict[str, tuple[Step, Event]] = {
    "associate_request": (_assoc, Event.EVT1),
    "accept": (_accept, Event.EVT7),
    "reject": (_LOCAL_CALLS[Event.EVT8], Event.EVT8),
    "send_pdata": (_LOCAL_CALLS[Event.EVT9], Event.EVT9),
    "send_pdata_bytes": (lambda m: m.send_pdata_bytes(PDATA_BYTES), Event.EVT9),
    "release_request": (_relrq, Event.EVT11),
    "release_response": (_relrp, Event.EVT14),
    "abort": (_abort, Event.EVT15),
}
OTHER_OPS = ["transport_connected", "transport_closed", "artim_expired"]
_NAMED = st.sampled_from(sorted(WHOLE_PDUS) + sorted(LOCAL_OPS) + OTHER_OPS)
op_strategy = st.one_of(
    _NAMED, _NAMED, _NAMED, _NAMED, _NAMED, _NAMED,  # mostly well-formed events
    st.binary(max_size=40),
    st.tuples(st.sampled_from(sorted(WHOLE_PDUS)), st.integers(0, 200)),  # a cut PDU
)
#: One operation that causes each event.
OP_OF_EVENT: dict[Event, str] = {
    Event.EVT1: "associate_request", Event.EVT2: "transport_connected", Event.EVT3: "ac",
    Event.EVT4: "rj", Event.EVT5: "transport_connected", Event.EVT6: "rq", Event.EVT7: "accept",
    Event.EVT8: "reject", Event.EVT9: "send_pdata", Event.EVT10: "pdata",
    Event.EVT11: "release_request", Event.EVT12: "release_rq", Event.EVT13: "release_rp",
    Event.EVT14: "release_response", Event.EVT15: "abort", Event.EVT16: "abort_user",
    Event.EVT17: "transport_closed", Event.EVT18: "artim_expired", Event.EVT19: "unknown_type",
}


def _expected_next(role: Role, before: State, event: Event, payload: object) -> State:
    key = (before, event)
    cell = TRANSITIONS.get(key) or EXTENSIONS.get(key)
    if cell is None:
        return before
    action, nxt = cell
    if action is Action.AE_6 and isinstance(payload, AAssociateRQ):
        return ALTERNATE_NEXT[key] if not payload.protocol_version & 1 else nxt
    if action is Action.AR_8:
        return ALTERNATE_NEXT[key] if role is Role.ACCEPTOR else nxt
    return nxt


class Model:
    """What the test knows independently of the machine: ARTIM, the framer, Closed counts."""

    def __init__(self, role: Role, start: State) -> None:
        self.role = role
        self.m = Recording(role)
        for step in PATHS[role][start]:
            step(self.m)
        self.m.take_outputs()
        self.artim = start in ARTIM_STATES
        self.reading = start not in (State.STA1, State.STA4)  # a framer exists
        self.clean = True  # no partial PDU is buffered
        self.visited: set[tuple[State, Event]] = set()

    def run(self, op: object) -> None:
        m = self.m
        before = m.state
        m.trace.clear()
        expected_events: list[Event] | None = None
        try:
            expected_events = self._apply(op)
        except LocalProtocolError:
            assert isinstance(op, str) and op in LOCAL_OPS
            assert m.state is before
            assert m.take_outputs() == []
            return
        self._check_trace(expected_events)
        self._check_outputs(m.take_outputs())

    def _apply(self, op: object) -> list[Event] | None:
        m = self.m
        if isinstance(op, str) and op in LOCAL_OPS:
            step, event = LOCAL_OPS[op]
            expect_raise = (
                (m.state, event) not in TRANSITIONS and (m.state, event) not in EXTENSIONS
                and not (event is Event.EVT15 and m.state in (State.STA1, State.STA13))
            ) or (event is Event.EVT1 and self.role is Role.ACCEPTOR)
            if expect_raise:
                with pytest.raises(LocalProtocolError):
                    step(m)
                raise LocalProtocolError("expected")
            step(m)
            return None
        if op == "transport_connected":
            m.transport_connected()
            return [Event.EVT2 if self.role is Role.REQUESTOR else Event.EVT5]
        if op == "transport_closed":
            m.transport_closed()
            return [Event.EVT17]
        if op == "artim_expired":
            m.artim_expired()
            return [Event.EVT18]
        if isinstance(op, str):
            data, event = WHOLE_PDUS[op]
            m.receive_data(data)
            if not self.reading:
                return []
            return [event] if self.clean else None
        if isinstance(op, tuple):
            data = WHOLE_PDUS[op[0]][0][: op[1]]
        else:
            assert isinstance(op, bytes)
            data = op
        m.receive_data(data)
        self.clean = False
        return [] if not self.reading else None

    def _check_trace(self, expected_events: list[Event] | None) -> None:
        m = self.m
        if expected_events is not None:
            assert [e for _, e, _, _ in m.trace] == expected_events
        for before, event, after, payload in m.trace:
            self.visited.add((before, event))
            assert after is _expected_next(self.role, before, event, payload), (before, event)
            if (before, event) in ((State.STA4, Event.EVT2), (State.STA1, Event.EVT5)):
                self.reading, self.clean = True, True
            if event is Event.EVT19 or after is State.STA1:
                self.reading = False

    def _check_outputs(self, outputs: list[Output]) -> None:
        m = self.m
        for out in outputs:
            if type(out) is StartArtim:
                self.artim = True
            elif type(out) is StopArtim:
                self.artim = False
        assert self.artim is (m.state in ARTIM_STATES)
        assert m.artim_running is self.artim
        entries = sum(1 for b, _, a, _ in m.trace if a is State.STA1 and b is not State.STA1)
        closes = [i for i, o in enumerate(outputs) if type(o) is Closed]
        assert len(closes) == entries
        for i in closes:
            assert type(outputs[i - 1]) is CloseTransport


def test_every_cell_behaves_as_the_table_says() -> None:
    """Each event from each reachable (role, state), checked by the model; all 123 cells hit."""
    visited: set[tuple[State, Event]] = set()
    for role, paths in PATHS.items():
        for state in paths:
            for event, op in OP_OF_EVENT.items():
                if event in (Event.EVT2, Event.EVT5) and (event is Event.EVT2) != (
                    role is Role.REQUESTOR
                ):
                    continue
                model = Model(role, state)
                model.run(op)
                visited |= model.visited
    assert set(TRANSITIONS) <= visited


STARTS = [(role, state) for role, paths in PATHS.items() for state in paths]


@settings(max_examples=1000)
@given(start=st.sampled_from(STARTS), ops=st.lists(op_strategy, max_size=30))
def test_random_event_sequences(start: tuple[Role, State], ops: list[object]) -> None:
    """Random primitives, PDUs, garbage, closes and timer expiries from every reachable state."""
    model = Model(*start)
    for op in ops:
        model.run(op)


def test_local_events_cover_the_primitives() -> None:
    assert {e for _, e in LOCAL_OPS.values()} == LOCAL_EVENTS


def test_pdus_before_a_malformed_one_in_the_same_chunk_are_delivered() -> None:
    m = drive(State.STA6)
    bad = b"\x04\x00\x00\x00\x00\x00"  # P-DATA-TF with no PDV
    m.receive_data(PDATA_BYTES + bad)
    outputs = m.take_outputs()
    kinds = [type(o).__name__ for o in outputs]
    assert kinds[0] == "PDataIndication"
    assert "AbortIndication" in kinds
    assert m.state is State.STA13
