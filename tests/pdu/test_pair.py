"""A requestor core talking to an acceptor core through the in-memory pair (no sockets)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdu.constants import AbortReason
from pdu.errors import PduDecodeError
from pdu.framer import PduFramer
from pdu.fsm import State
from pdu.machine import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    Closed,
    CloseTransport,
    PDataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
    StartArtim,
    StopArtim,
)
from pdu.pdus import AAbort, AReleaseRP, AReleaseRQ, decode

from .pair import (
    RELEASE_RP_BYTES,
    RJ,
    TRUNCATED_RQ_BYTES,
    UNKNOWN_PDU_BYTES,
    Endpoint,
    Pair,
    accept_all,
    make_pdata,
    make_rq,
)

CHUNKING = [None, 1, 2, 3]  # None: whole writes; else the seed of random 1..7-byte chunks


def _pair(seed: int | None, **kwargs: object) -> Pair:
    rng = None if seed is None else random.Random(seed)
    return Pair(rng=rng, **kwargs)  # type: ignore[arg-type]


def associated(seed: int | None = None, **kwargs: object) -> Pair:
    pair = _pair(seed, answer=accept_all, **kwargs)
    pair.requestor.machine.associate_request(make_rq())
    pair.pump()
    assert pair.requestor.machine.state is State.STA6
    assert pair.acceptor.machine.state is State.STA6
    return pair


def kinds(ep: Endpoint) -> list[type]:
    return [type(o) for o in ep.indications]


def assert_over(pair: Pair) -> None:
    """Both sides idle, each reported Closed once, no timer left, nothing in flight."""
    for ep in (pair.requestor, pair.acceptor):
        assert ep.machine.state is State.STA1, ep.name
        assert ep.closed == 1, ep.name
        assert ep.artim is None, ep.name
        assert not ep.open and not ep.inbound, ep.name


# -- establishment -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", CHUNKING)
def test_association_accepted(seed: int | None) -> None:
    pair = associated(seed)
    (ind,) = pair.acceptor.indications
    assert type(ind) is AssociateIndication
    assert ind.rq.calling_ae == "ECHOSCU" and ind.rq.called_ae == "ANY-SCP"
    (acc,) = pair.requestor.indications
    assert type(acc) is AssociateAccepted
    assert acc.ac.presentation_contexts[0].result == 0
    assert pair.acceptor.artim is None  # AE-5 started it, AE-6 stopped it


@pytest.mark.parametrize("seed", CHUNKING)
def test_association_rejected(seed: int | None) -> None:
    pair = _pair(seed, answer=lambda rq: RJ)
    pair.requestor.machine.associate_request(make_rq())
    pair.pump()
    assert kinds(pair.requestor) == [AssociateRejected, Closed]
    assert pair.requestor.indications[0] == AssociateRejected(RJ)
    assert kinds(pair.acceptor) == [AssociateIndication, Closed]
    # the requestor closed (AE-4); the acceptor waited in Sta13 and stopped ARTIM on the close
    assert pair.requestor.outputs.index(CloseTransport()) >= 0
    assert pair.acceptor.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]
    assert_over(pair)


def test_protocol_version_rejected_by_the_provider() -> None:
    pair = _pair(None, answer=accept_all)
    rq = make_rq()
    pair.requestor.machine.associate_request(replace(rq, protocol_version=2))  # bit 0 clear
    pair.pump()
    (rejected, _closed) = pair.requestor.indications
    assert type(rejected) is AssociateRejected
    assert (rejected.rj.result, rejected.rj.source, rejected.rj.reason) == (1, 2, 2)
    assert kinds(pair.acceptor) == [Closed]  # the user never saw it
    assert_over(pair)


def test_connection_refused() -> None:
    pair = _pair(None, refuse_connect=True)
    pair.requestor.machine.associate_request(make_rq())
    pair.pump()
    assert pair.requestor.indications == [AbortIndication(2, 0, provider=True), Closed()]
    assert pair.requestor.machine.state is State.STA1


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", CHUNKING)
def test_data_both_ways(seed: int | None) -> None:
    pair = associated(seed)
    req, acc = pair.requestor, pair.acceptor
    payloads = [bytes([i]) * (2 * i + 2) for i in range(5)]
    for p in payloads:
        req.machine.send_pdata(make_pdata(p))
    acc.machine.send_pdata_bytes(memoryview(make_pdata(b"\xaa\xbb").encode()))
    pair.pump()
    got = [bytes(o.pdu.pdvs[0].data) for o in acc.of_type(PDataIndication)]  # type: ignore[attr-defined]
    assert got == payloads
    (back,) = req.of_type(PDataIndication)
    assert bytes(back.pdu.pdvs[0].data) == b"\xaa\xbb"  # type: ignore[attr-defined]
    assert req.machine.state is acc.machine.state is State.STA6


# -- release -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", CHUNKING)
def test_normal_release(seed: int | None) -> None:
    pair = associated(seed)
    req, acc = pair.requestor, pair.acceptor
    req.machine.release_request()
    pair.pump()
    assert kinds(req)[1:] == [ReleaseConfirmation, Closed]
    assert kinds(acc)[1:] == [ReleaseIndication, Closed]
    assert acc.of_type(ReleaseIndication) == [ReleaseIndication(collision=False)]
    assert acc.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]  # AR-5 on our close
    assert_over(pair)


def test_release_by_the_acceptor_closes_from_the_acceptor() -> None:
    pair = associated()
    req, acc = pair.requestor, pair.acceptor
    acc.machine.release_request()
    pair.pump()
    assert kinds(acc)[1:] == [ReleaseConfirmation, Closed]
    assert kinds(req)[1:] == [ReleaseIndication, Closed]
    assert req.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]
    assert_over(pair)


def test_data_still_flows_while_release_is_pending() -> None:
    pair = associated(auto_release=False)
    req, acc = pair.requestor, pair.acceptor
    req.machine.release_request()
    pair.pump()
    assert (req.machine.state, acc.machine.state) == (State.STA7, State.STA8)
    acc.machine.send_pdata(make_pdata(b"last"))  # AR-7, then AR-6 on the requestor
    pair.pump()
    assert req.machine.state is State.STA7
    assert bytes(req.of_type(PDataIndication)[0].pdu.pdvs[0].data) == b"last"  # type: ignore[attr-defined]
    acc.machine.release_response()
    pair.pump()
    assert_over(pair)


@pytest.mark.parametrize("seed", CHUNKING)
def test_release_collision(seed: int | None) -> None:
    pair = associated(seed)
    req, acc = pair.requestor, pair.acceptor
    req.machine.release_request()
    acc.machine.release_request()
    pair.pump()
    for ep in (req, acc):
        assert kinds(ep)[1:] == [ReleaseIndication, ReleaseConfirmation, Closed], ep.name
        assert ep.of_type(ReleaseIndication) == [ReleaseIndication(collision=True)]
    # on the wire: both RQs, then the requestor's RP, then the acceptor's RP
    rq, rp = AReleaseRQ().encode(), AReleaseRP().encode()
    assert sorted(pair.wire[-4:-2]) == [("acceptor", rq), ("requestor", rq)]
    assert pair.wire[-2:] == [("requestor", rp), ("acceptor", rp)]
    # the requestor closes (AR-3); the acceptor sees the close in Sta13 (AR-5)
    assert req.outputs[-3:] == [ReleaseConfirmation(), CloseTransport(), Closed()]
    assert acc.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]
    assert_over(pair)


def test_release_collision_step_by_step() -> None:
    pair = associated(auto_release=False)
    req, acc = pair.requestor, pair.acceptor
    req.machine.release_request()
    acc.machine.release_request()
    pair.pump()
    assert (req.machine.state, acc.machine.state) == (State.STA9, State.STA10)
    assert req.machine.awaiting_release_response and not acc.machine.awaiting_release_response
    req.machine.release_response()  # AR-9
    pair.pump()
    assert (req.machine.state, acc.machine.state) == (State.STA11, State.STA12)
    assert acc.of_type(ReleaseConfirmation) == [ReleaseConfirmation()]
    acc.machine.release_response()  # AR-4
    pair.pump()
    assert_over(pair)


# -- abort -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["requestor", "acceptor"])
@pytest.mark.parametrize("seed", CHUNKING)
def test_abort(side: str, seed: int | None) -> None:
    pair = associated(seed)
    ep = pair.requestor if side == "requestor" else pair.acceptor
    peer = pair.peer(ep)
    ep.machine.abort()
    pair.pump()
    assert peer.indications[1:] == [AbortIndication(0, 0, provider=False), Closed()]
    assert kinds(ep)[1:] == [Closed]  # the aborting user gets no indication
    assert ep.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]
    assert_over(pair)


def test_transport_lost() -> None:
    pair = associated()
    pair.disconnect()
    for ep in (pair.requestor, pair.acceptor):
        assert ep.indications[1:] == [AbortIndication(2, 0, provider=True), Closed()]
    assert_over(pair)


# -- ARTIM -------------------------------------------------------------------------------------
def test_artim_expiry_after_reject_when_the_peer_never_closes() -> None:
    pair = _pair(None)  # the test answers
    req, acc = pair.requestor, pair.acceptor
    req.machine.associate_request(make_rq())
    pair.pump()
    assert acc.machine.state is State.STA3
    req.stalled = True
    acc.machine.reject(RJ)
    pair.pump()
    assert acc.machine.state is State.STA13
    assert acc.artim == 30.0
    pair.fire_artim(acc)  # AA-2
    assert acc.machine.state is State.STA1
    assert acc.outputs[-3:] == [StopArtim(), CloseTransport(), Closed()]
    req.stalled = False  # the requestor finally reads the RJ, then the close
    pair.pump()
    assert kinds(req) == [AssociateRejected, Closed]


def test_artim_expiry_after_release_rp_when_the_peer_never_closes() -> None:
    pair = associated(artim_timeout=4.0)
    req, acc = pair.requestor, pair.acceptor
    req.machine.release_request()
    req.stalled = True
    pair.pump()
    assert acc.machine.state is State.STA13
    assert acc.artim == 4.0
    assert acc.outputs[-1] == StartArtim(4.0)
    pair.fire_artim(acc)
    assert acc.machine.state is State.STA1
    assert kinds(acc)[1:] == [ReleaseIndication, Closed]
    req.stalled = False
    pair.pump()
    assert kinds(req)[1:] == [ReleaseConfirmation, Closed]  # the RP was sent before the close
    assert_over(pair)


def test_artim_expiry_when_no_rq_arrives() -> None:
    pair = _pair(None)
    acc = pair.acceptor
    acc.open = True
    acc.machine.transport_connected()
    pair.pump()
    assert acc.machine.state is State.STA2 and acc.artim == 30.0
    pair.fire_artim(acc)
    assert acc.machine.state is State.STA1
    assert acc.indications == [Closed()]


# -- malformed PDUs ----------------------------------------------------------------------------
def _decode_reason(data: bytes) -> int:
    with pytest.raises(PduDecodeError) as info:
        PduFramer().feed(data)
    return int(info.value.abort_reason)


@pytest.mark.parametrize("bad", [UNKNOWN_PDU_BYTES, TRUNCATED_RQ_BYTES])
@pytest.mark.parametrize("seed", CHUNKING)
def test_malformed_pdu_aborts(bad: bytes, seed: int | None) -> None:
    pair = associated(seed)
    req, acc = pair.requestor, pair.acceptor
    pair.inject(acc, bad)
    pair.pump()
    reason = _decode_reason(bad)
    expected = AbortIndication(2, reason, provider=True)
    assert acc.indications[1:] == [expected, Closed()]  # AA-8 then AR-5 on the close
    assert req.indications[1:] == [expected, Closed()]  # AA-3: an A-P-ABORT
    assert decode(pair.wire[-1][1]) == AAbort(source=2, reason=reason)
    assert_over(pair)


def test_malformed_pdu_before_the_rq() -> None:
    pair = _pair(None)
    acc = pair.acceptor
    acc.open = True
    acc.machine.transport_connected()
    pair.inject(acc, UNKNOWN_PDU_BYTES)
    pair.pump()
    assert acc.machine.state is State.STA13  # AA-1 with source 2
    assert pair.wire == [
        ("acceptor", AAbort(source=2, reason=AbortReason.UNRECOGNIZED_PDU).encode())
    ]


def test_pdata_over_the_announced_maximum_aborts() -> None:
    pair = associated(max_pdata_length=64)
    pair.requestor.machine.send_pdata(make_pdata(b"\x00" * 100))
    pair.pump()
    (ind,) = pair.acceptor.of_type(AbortIndication)
    assert ind.provider  # type: ignore[attr-defined]
    assert pair.requestor.of_type(AbortIndication) == [ind]
    assert_over(pair)


def test_unexpected_release_rp_aborts() -> None:
    pair = associated()
    pair.inject(pair.acceptor, RELEASE_RP_BYTES)
    pair.pump()
    assert pair.acceptor.indications[1] == AbortIndication(2, 2, provider=True)
    assert_over(pair)


# -- whole lifecycles in random chunks ---------------------------------------------------------
@settings(max_examples=150)
@given(
    seed=st.integers(0, 2**32 - 1),
    max_chunk=st.integers(1, 300),
    n_req=st.integers(0, 5),
    n_acc=st.integers(0, 5),
    ending=st.sampled_from(["release", "acceptor_release", "collision", "abort", "peer_abort"]),
)
def test_lifecycle_in_random_chunks(
    seed: int, max_chunk: int, n_req: int, n_acc: int, ending: str
) -> None:
    pair = Pair(rng=random.Random(seed), max_chunk=max_chunk, answer=accept_all)
    req, acc = pair.requestor, pair.acceptor
    req.machine.associate_request(make_rq())
    pair.pump()
    for i in range(n_req):
        req.machine.send_pdata(make_pdata(bytes([i]) * 40))
    for i in range(n_acc):
        acc.machine.send_pdata(make_pdata(bytes([i + 100]) * 6))
    if ending in ("release", "collision"):
        req.machine.release_request()
    if ending in ("acceptor_release", "collision"):
        acc.machine.release_request()
    if ending == "abort":
        req.machine.abort()
    if ending == "peer_abort":
        acc.machine.abort()
    pair.pump()
    # data reaching a side that already aborted is ignored there (AA-6 in Sta13)
    assert len(acc.of_type(PDataIndication)) == (0 if ending == "peer_abort" else n_req)
    assert len(req.of_type(PDataIndication)) == (0 if ending == "abort" else n_acc)
    assert_over(pair)
