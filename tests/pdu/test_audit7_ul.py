"""Audit 7: the Upper Layer over real sockets (pdu.transport, dimse.association, dimse.server).

Raw asyncio peers (a few lines of PS3.8 each) misbehave on purpose in both roles: silence
(ARTIM, PS3.8 9.1.4 / Table 9-10 Evt18), release collisions (Sta9-Sta12), A-ABORT and closed
connections at every phase, PDUs not allowed in the current state (AA-1/AA-7/AA-8), back-pressure
and one-byte trickles, and the peer's Maximum Length (PS3.8 D.1) checked on the wire. Every wait
is bounded; 127.0.0.1 and free ports only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydicom import Dataset

import pdu
from dimse import commands
from dimse.connect import connect
from dimse.errors import AssociationAborted, DimseTimeout
from dimse.messages import CEchoRQ, CEchoRSP, CFindRQ, CStoreRQ, CStoreRSP
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet, RequestContext
from pdu.constants import IMPLEMENTATION_CLASS_UID, UNLIMITED_SEND_CAP
from pdu.fsm import State

pytestmark = pytest.mark.timeout(60)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SHORT = 0.3  # ARTIM / timeouts under test
WAIT = 5.0  # the bound on every wait in these tests

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
_HDR = struct.Struct(">BxL")

RELEASE_RQ = bytes.fromhex("05000000000400000000")
RELEASE_RP = bytes.fromhex("06000000000400000000")
ABORT_USER = bytes.fromhex("07000000000400000000")


def abort_bytes(source: int, reason: int) -> bytes:
    return bytes([7, 0, 0, 0, 0, 4, 0, 0, source, reason])


# -- PDU building --------------------------------------------------------------------------------
def make_rq(max_length: int = 16384, called: str = "AUDIT") -> pdu.AAssociateRQ:
    return pdu.AAssociateRQ.build(
        called_ae=called, calling_ae="RAWSCU",
        presentation_contexts=(
            pdu.PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),
            pdu.PresentationContextRQ(3, CT, (EXPLICIT_LE,)),
            pdu.PresentationContextRQ(5, PATIENT_FIND, (IMPLICIT_LE,)),
        ),
        user_information=pdu.UserInformation.build(
            max_length=max_length, implementation_class_uid=IMPLEMENTATION_CLASS_UID),
    )


def make_ac(rq: pdu.AAssociateRQ, max_length: int = 16384) -> bytes:
    """An A-ASSOCIATE-AC accepting every proposed context with its first transfer syntax."""
    return pdu.AAssociateAC.build(
        called_ae=rq.called_ae, calling_ae=rq.calling_ae,
        presentation_contexts=tuple(
            pdu.PresentationContextAC(cx.context_id, 0, cx.transfer_syntaxes[0])
            for cx in rq.presentation_contexts),
        user_information=pdu.UserInformation.build(
            max_length=max_length, implementation_class_uid=IMPLEMENTATION_CLASS_UID),
    ).encode()


def pdata(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF with one PDV (control: bit 0 command, bit 1 last)."""
    pdv = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return _HDR.pack(4, len(pdv)) + pdv


def echo_rq(message_id: int = 1) -> bytes:
    return pdata(1, 3, commands.encode(CEchoRQ(message_id=message_id)))


def store_rq_command(message_id: int = 1) -> bytes:
    return commands.encode(CStoreRQ(message_id=message_id, affected_sop_class_uid=CT,
                                    affected_sop_instance_uid="1.2.3.4.5"))


def ct_dataset(size: int = 64) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.7.1"
    ds.PatientID = "AUDIT7"
    ds.BitsAllocated = 16
    ds.PixelData = bytes(size)
    return ds


# -- raw peers -------------------------------------------------------------------------------------
async def read_pdu(reader: Reader, timeout: float = WAIT) -> tuple[int, bytes]:
    """(type, whole PDU bytes); (-1, b"") at EOF or reset."""
    try:
        header = await asyncio.wait_for(reader.readexactly(6), timeout)
        kind, length = _HDR.unpack(header)
        return kind, header + await asyncio.wait_for(reader.readexactly(length), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return -1, b""


async def pdus_until_eof(reader: Reader, timeout: float = WAIT) -> list[bytes]:
    """Every PDU until the peer closes (TimeoutError if it does not within ``timeout``)."""
    seen: list[bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            kind, data = await read_pdu(reader, timeout)
            if kind < 0:
                return seen
            seen.append(data)


async def open_raw(port: int) -> tuple[Reader, Writer]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)


async def raw_associate(port: int, max_length: int = 16384) -> tuple[Reader, Writer]:
    reader, writer = await open_raw(port)
    writer.write(make_rq(max_length).encode())
    kind, _ac = await read_pdu(reader)
    assert kind == 2, kind
    return reader, writer


Script = Callable[[Reader, Writer], Awaitable[None]]


@asynccontextmanager
async def raw_acceptor(script: Script) -> AsyncIterator[tuple[int, list[BaseException]]]:
    """A raw association acceptor running ``script`` per connection; yields (port, errors)."""
    errors: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    async def run(reader: Reader, writer: Writer) -> None:
        try:
            await script(reader, writer)
        except BaseException as exc:  # reported to the test
            errors.append(exc)
        finally:
            writer.close()

    def on_connect(reader: Reader, writer: Writer) -> None:
        tasks.append(asyncio.get_running_loop().create_task(run(reader, writer)))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], errors
    finally:
        server.close()
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
        for task in tasks:
            task.cancel()


async def accept_raw(reader: Reader, writer: Writer, max_length: int = 16384) -> None:
    kind, rq = await read_pdu(reader)
    assert kind == 1, kind
    decoded = pdu.decode(rq)
    assert isinstance(decoded, pdu.AAssociateRQ)
    writer.write(make_ac(decoded, max_length))
    await writer.drain()


@asynccontextmanager
async def our_server(**options: object) -> AsyncIterator[Server]:
    registry = options.pop("handlers", None) or HandlerRegistry()
    server = Server("AUDIT", handlers=registry, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.close(timeout=WAIT)


async def still_serves(server: Server) -> None:
    """A fresh association with ``server`` works (echo + release)."""
    async with connect("127.0.0.1", server.port, called_ae="AUDIT", connect_timeout=WAIT,
                       dimse_timeout=WAIT) as assoc:
        assert await assoc.echo() == 0


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# == 1. ARTIM ======================================================================================
async def test_server_closes_a_silent_connection_after_artim() -> None:
    """Sta2 + Evt18 -> AA-2: close the transport, nothing sent; the server keeps serving."""
    async with our_server(artim_timeout=SHORT) as server:
        reader, writer = await open_raw(server.port)
        assert await pdus_until_eof(reader) == []
        writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


async def test_server_closes_after_artim_when_the_peer_never_closes_after_rp() -> None:
    """AR-4 starts ARTIM in Sta13; a requestor that never closes is cut off (Evt18, AA-2)."""
    async with our_server(artim_timeout=SHORT) as server:
        reader, writer = await raw_associate(server.port)
        writer.write(RELEASE_RQ)
        assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


async def test_server_closes_after_artim_when_the_peer_never_closes_after_rj() -> None:
    """AE-8 (reject) starts ARTIM: Sta13 then Evt18 closes (an unknown called AE here)."""
    async with our_server(artim_timeout=SHORT) as server:
        reader, writer = await open_raw(server.port)
        writer.write(make_rq(called="NOTUS").encode())
        seen = await pdus_until_eof(reader)
        assert len(seen) == 1 and seen[0][0] == 3
        writer.close()


async def test_requestor_times_out_when_the_acceptor_never_answers() -> None:
    """No A-ASSOCIATE-AC: connect() raises DimseTimeout and closes (A-ABORT first, AA-1)."""
    got: list[list[bytes]] = []

    async def silent(reader: Reader, writer: Writer) -> None:
        kind, _ = await read_pdu(reader)
        assert kind == 1
        got.append(await pdus_until_eof(reader))

    async with raw_acceptor(silent) as (port, errors):
        with pytest.raises(DimseTimeout):
            await connect("127.0.0.1", port, called_ae="X", connect_timeout=SHORT)
    assert not errors, errors
    assert got == [[abort_bytes(0, 0)]]


async def test_requestor_closes_at_once_when_acceptor_sends_rp_and_stays() -> None:
    """Sta7 + Evt13 -> AR-3: the requestor closes the transport itself, without ARTIM."""
    async def releasing(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RQ
        writer.write(RELEASE_RP)
        assert await pdus_until_eof(reader, timeout=2.0) == []

    async with raw_acceptor(releasing) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X", artim_timeout=30)
        await asyncio.wait_for(assoc.release(), WAIT)
        assert assoc.machine.state is State.STA1 and assoc.error is None
    assert not errors, errors


# == 2. Release collision (PS3.8 9.2.3, Table 9-10 Sta9-Sta12) =====================================
async def test_release_collision_with_us_as_requestor() -> None:
    """We release; the acceptor's A-RELEASE-RQ crosses ours: Sta7 -Evt12-> Sta9 (AR-8), we answer
    RP (AR-9, Sta11), its RP closes (AR-3). The acceptor sees our RQ, our RP, then EOF."""
    seen: list[list[bytes]] = []

    async def colliding(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RQ
        writer.write(RELEASE_RQ)  # Sta10 for the acceptor
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RP, data
        writer.write(RELEASE_RP)
        seen.append(await pdus_until_eof(reader))

    async with raw_acceptor(colliding) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X")
        await asyncio.wait_for(assoc.release(), WAIT)
        assert assoc.error is None and assoc.machine.state is State.STA1
    assert not errors, errors
    assert seen == [[]]


async def test_release_collision_both_sent_at_once_with_us_as_requestor() -> None:
    """The acceptor sends its RQ right after the AC, while we release at once."""
    seen: list[list[bytes]] = []

    async def colliding(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        writer.write(RELEASE_RQ)
        got = []
        while True:
            kind, data = await read_pdu(reader)
            got.append(data)
            if data == RELEASE_RP or kind < 0:
                break
        if RELEASE_RQ in got:  # a collision: Sta10 -> Sta12 for this acceptor, then AR-4
            writer.write(RELEASE_RP)
            got += await pdus_until_eof(reader)
        seen.append(got)  # else a plain release by the acceptor: it closes (AR-3)

    async with raw_acceptor(colliding) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X")
        await asyncio.wait_for(assoc.release(), WAIT)
        assert assoc.error is None
    assert not errors, errors
    # either a collision (our RQ, then our RP) or a plain peer release (our RP alone)
    assert seen in ([[RELEASE_RQ, RELEASE_RP]], [[RELEASE_RP]]), seen


async def test_release_collision_with_our_server_as_acceptor() -> None:
    """Our server releases while the requestor does: Sta7 -Evt12-> Sta10, the requestor's RP
    (AR-10, Sta12), then our RP (AR-4, Sta13); the requestor closes."""
    async with our_server(artim_timeout=WAIT) as server:
        reader, writer = await raw_associate(server.port)
        await until(lambda: bool(server.associations))
        ours = next(iter(server.associations))
        await until(lambda: ours.is_established)
        releasing = asyncio.get_running_loop().create_task(ours.release(timeout=WAIT))
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RQ
        writer.write(RELEASE_RQ)  # the requestor's crossing RQ: it is in Sta9 now
        writer.write(RELEASE_RP)  # AR-9: requestor answers first
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RP  # AR-4: the acceptor answers last
        writer.close()
        await asyncio.wait_for(releasing, WAIT)
        assert ours.error is None
        await until(lambda: not server.associations)
        await still_serves(server)


async def test_our_server_releases_a_pynetdicom_requestor() -> None:
    """Acceptor-initiated release (our AR-1 -> Sta7, the requestor's RP -> AR-3): pynetdicom
    answers and ends released. (A crossing release with pynetdicom 3.0.4 is not tested: when our
    RQ arrives first its own release() raises InvalidEventError 'Evt11 in Sta8' in its reactor
    thread and it never answers; ours then ends by DimseTimeout + A-ABORT, bounded.)"""
    pynetdicom = pytest.importorskip("pynetdicom")
    loop = asyncio.get_running_loop()
    async with our_server(artim_timeout=WAIT) as server:
        ae = pynetdicom.AE(ae_title="PYNET")
        ae.add_requested_context(VERIFICATION)
        ae.acse_timeout = ae.network_timeout = WAIT
        peer = await loop.run_in_executor(None, lambda: ae.associate("127.0.0.1", server.port,
                                                                     ae_title="AUDIT"))
        try:
            assert peer.is_established
            await until(lambda: any(a.is_established for a in server.associations))
            ours = next(iter(server.associations))
            await asyncio.wait_for(ours.release(timeout=WAIT), WAIT + 1)
            assert ours.error is None
            await until(lambda: not server.associations)
            await until(lambda: peer.is_released)
            assert not peer.is_aborted
        finally:
            if not peer.is_released:
                peer.abort()
            ae.shutdown()
        await still_serves(server)


# == 3. A-ABORT, A-P-ABORT and closed connections at every phase ===================================
class Stores:
    """A C-STORE handler counting the data sets it got."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        self.calls += 1
        return 0


def store_registry(stores: Stores) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.on_store(stores)
    return registry


@pytest.mark.parametrize("end", ["abort", "close"])
async def test_server_peer_ends_before_its_rq(end: str) -> None:
    """Sta2: A-ABORT (AA-2) or EOF (AA-5) closes at once, nothing sent back."""
    async with our_server(artim_timeout=WAIT) as server:
        reader, writer = await open_raw(server.port)
        if end == "abort":
            writer.write(ABORT_USER)
            assert await pdus_until_eof(reader, timeout=2.0) == []
        else:
            writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


@pytest.mark.parametrize("end", ["abort", "close"])
async def test_server_peer_ends_while_its_rq_is_decided(end: str) -> None:
    """The RQ and an A-ABORT (or EOF) in one read: Sta3 -> AA-3/AA-4; no AC is sent."""
    async with our_server(artim_timeout=WAIT) as server:
        reader, writer = await open_raw(server.port)
        if end == "abort":
            writer.write(make_rq().encode() + ABORT_USER)
            assert await pdus_until_eof(reader, timeout=2.0) == []
        else:
            writer.write(make_rq().encode())
            writer.write_eof()
            seen = await pdus_until_eof(reader, timeout=2.0)
            assert all(p[0] in (2, 7) for p in seen), seen  # the AC may beat the EOF
        writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


@pytest.mark.parametrize("end", ["abort", "provider-abort", "close"])
async def test_server_peer_ends_in_the_middle_of_a_fragmented_store(end: str) -> None:
    """Command sent, data set half sent, then A-ABORT / A-P-ABORT / EOF: the handler never
    runs, the connection closes, the server keeps serving."""
    stores = Stores()
    async with our_server(artim_timeout=WAIT, handlers=store_registry(stores)) as server:
        reader, writer = await raw_associate(server.port)
        writer.write(pdata(3, 3, store_rq_command()))
        writer.write(pdata(3, 0, bytes(4096)))  # a data set fragment, not the last
        await writer.drain()
        await asyncio.sleep(0.05)
        if end == "close":
            writer.close()
        else:
            writer.write(ABORT_USER if end == "abort" else abort_bytes(2, 6))
            assert await pdus_until_eof(reader, timeout=2.0) == []
            writer.close()
        await until(lambda: not server.associations)
        assert stores.calls == 0
        await still_serves(server)


async def test_server_release_answered_by_abort() -> None:
    """Our server releases; the requestor answers with A-ABORT (Sta7 + Evt16 -> AA-3)."""
    async with our_server(artim_timeout=WAIT) as server:
        reader, writer = await raw_associate(server.port)
        await until(lambda: any(a.is_established for a in server.associations))
        ours = next(iter(server.associations))
        releasing = asyncio.get_running_loop().create_task(ours.release(timeout=WAIT))
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RQ
        writer.write(abort_bytes(0, 0))
        assert await pdus_until_eof(reader, timeout=2.0) == []
        await asyncio.wait_for(releasing, WAIT)
        assert isinstance(ours.error, AssociationAborted) and ours.error.source == 0
        writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


@pytest.mark.parametrize(("answer", "source", "reason"), [
    (ABORT_USER, 0, 0), (abort_bytes(2, 1), 2, 1), (b"", None, None)])
async def test_requestor_aborted_during_negotiation(answer: bytes, source: int | None,
                                                    reason: int | None) -> None:
    """A-ABORT (AA-3) / A-P-ABORT / EOF (AA-4) instead of the AC: AssociationAborted at once."""
    async def aborting(reader: Reader, writer: Writer) -> None:
        kind, _ = await read_pdu(reader)
        assert kind == 1
        writer.write(answer)
        await writer.drain()

    async with raw_acceptor(aborting) as (port, errors):
        with pytest.raises(AssociationAborted) as caught:
            await connect("127.0.0.1", port, called_ae="X", connect_timeout=WAIT)
    assert not errors, errors
    if source is not None:
        assert (caught.value.source, caught.value.reason) == (source, reason)


@pytest.mark.parametrize("end", ["abort", "close"])
async def test_requestor_store_aborted_mid_data_set(end: str) -> None:
    """The acceptor aborts (or closes) after reading part of our 4 MB C-STORE: the store raises
    AssociationAborted, nothing hangs."""
    async def aborting(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        await asyncio.wait_for(reader.readexactly(100_000), WAIT)
        if end == "abort":
            writer.write(ABORT_USER)
            await writer.drain()

    async with raw_acceptor(aborting) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X", sop_classes=[CT],
                              dimse_timeout=WAIT)
        with pytest.raises(AssociationAborted):
            await asyncio.wait_for(assoc.store(ct_dataset(4_000_000)), WAIT)
        await asyncio.wait_for(assoc.wait_closed(), WAIT)
    assert not errors, errors


@pytest.mark.parametrize("end", ["abort", "close"])
async def test_requestor_response_cut_after_its_command(end: str) -> None:
    """The acceptor sends a C-ECHO-RSP command fragment that is not the last, then aborts or
    closes: echo() raises AssociationAborted."""
    async def cutting(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        await read_pdu(reader)
        writer.write(pdata(1, 1, bytes(8)))  # command, not last
        if end == "abort":
            writer.write(abort_bytes(2, 0))
        await writer.drain()

    async with raw_acceptor(cutting) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X", dimse_timeout=WAIT)
        with pytest.raises(AssociationAborted):
            await asyncio.wait_for(assoc.echo(), WAIT)
    assert not errors, errors


async def test_requestor_release_answered_by_abort() -> None:
    """Sta7 + Evt16 (AA-3): release() returns (nothing is left to release) and the abort is
    recorded in ``error``; the socket is closed."""
    async def aborting(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        kind, data = await read_pdu(reader)
        assert data == RELEASE_RQ
        writer.write(abort_bytes(2, 0))
        assert await pdus_until_eof(reader) == []

    async with raw_acceptor(aborting) as (port, errors):
        assoc = await connect("127.0.0.1", port, called_ae="X")
        await asyncio.wait_for(assoc.release(), WAIT)
        assert isinstance(assoc.error, AssociationAborted)
        assert (assoc.error.source, assoc.error.reason) == (2, 0)
    assert not errors, errors


# == 4. PDUs not allowed in the current state (Table 9-10: AA-1, AA-8; Evt19) =====================
UNKNOWN_PDU = bytes.fromhex("08000000000400000000")


def _ac_for_default_rq() -> bytes:
    return make_ac(make_rq())


SERVER_CASES = [
    # (name, associate first?, bytes sent, A-ABORT expected on the wire)
    ("Sta2 P-DATA (AA-1)", False, echo_rq(), abort_bytes(2, 2)),
    ("Sta2 A-RELEASE-RQ (AA-1)", False, RELEASE_RQ, abort_bytes(2, 2)),
    ("Sta2 A-RELEASE-RP (AA-1)", False, RELEASE_RP, abort_bytes(2, 2)),
    ("Sta2 A-ASSOCIATE-AC (AA-1)", False, _ac_for_default_rq(), abort_bytes(2, 2)),
    ("Sta2 unknown PDU (Evt19, AA-1)", False, UNKNOWN_PDU, abort_bytes(2, 1)),
    ("Sta3 P-DATA with the RQ (AA-8)", False, make_rq().encode() + echo_rq(), abort_bytes(2, 2)),
    ("Sta6 second A-ASSOCIATE-RQ (AA-8)", True, make_rq().encode(), abort_bytes(2, 2)),
    ("Sta6 A-ASSOCIATE-AC (AA-8)", True, _ac_for_default_rq(), abort_bytes(2, 2)),
    ("Sta6 A-ASSOCIATE-RJ (AA-8)", True, bytes.fromhex("03000000000400010101"),
     abort_bytes(2, 2)),
    ("Sta6 unsolicited A-RELEASE-RP (AA-8)", True, RELEASE_RP, abort_bytes(2, 2)),
    ("Sta6 unknown PDU type (Evt19, AA-8)", True, UNKNOWN_PDU, abort_bytes(2, 1)),
    ("Sta6 P-DATA longer than our maximum (Evt19)", True, pdata(1, 0, bytes(16385 - 6)),
     abort_bytes(2, 6)),
    ("Sta6 A-RELEASE-RQ of length 6 (Evt19)", True, bytes.fromhex("050000000006") + bytes(6),
     abort_bytes(2, 6)),
]


@pytest.mark.parametrize(("name", "associate", "data", "abort"), SERVER_CASES,
                         ids=[c[0] for c in SERVER_CASES])
async def test_server_aborts_a_pdu_not_allowed_here(name: str, associate: bool, data: bytes,
                                                    abort: bytes) -> None:
    """Exactly one A-ABORT with the table's source/reason, then ARTIM closes (Sta13, Evt18)
    since this peer never closes; the server keeps serving."""
    async with our_server(artim_timeout=SHORT, max_pdu=16384) as server:
        if associate:
            reader, writer = await raw_associate(server.port)
        else:
            reader, writer = await open_raw(server.port)
        writer.write(data)
        assert await pdus_until_eof(reader) == [abort]
        writer.close()
        await until(lambda: not server.associations)
        await still_serves(server)


REQUESTOR_CASES = [
    ("Sta5 P-DATA (AA-8)", False, echo_rq(), abort_bytes(2, 2)),
    ("Sta5 A-RELEASE-RQ (AA-8)", False, RELEASE_RQ, abort_bytes(2, 2)),
    ("Sta5 A-RELEASE-RP (AA-8)", False, RELEASE_RP, abort_bytes(2, 2)),
    ("Sta5 A-ASSOCIATE-RQ (AA-8)", False, make_rq().encode(), abort_bytes(2, 2)),
    ("Sta5 unknown PDU (Evt19, AA-8)", False, UNKNOWN_PDU, abort_bytes(2, 1)),
    ("Sta6 second A-ASSOCIATE-AC (AA-8)", True, _ac_for_default_rq(), abort_bytes(2, 2)),
    ("Sta6 A-ASSOCIATE-RQ (AA-8)", True, make_rq().encode(), abort_bytes(2, 2)),
    ("Sta6 unsolicited A-RELEASE-RP (AA-8)", True, RELEASE_RP, abort_bytes(2, 2)),
    ("Sta6 unknown PDU type (Evt19, AA-8)", True, UNKNOWN_PDU, abort_bytes(2, 1)),
    ("Sta6 P-DATA longer than our maximum (Evt19)", True, pdata(1, 0, bytes(16385 - 6)),
     abort_bytes(2, 6)),
]


@pytest.mark.parametrize(("name", "established", "data", "abort"), REQUESTOR_CASES,
                         ids=[c[0] for c in REQUESTOR_CASES])
async def test_requestor_aborts_a_pdu_not_allowed_here(name: str, established: bool,
                                                       data: bytes, abort: bytes) -> None:
    """Our requestor sends one A-ABORT (source 2, the table's reason) and closes; connect() or
    the next echo() raises AssociationAborted carrying that source and reason."""
    seen: list[list[bytes]] = []

    async def misbehaving(reader: Reader, writer: Writer) -> None:
        kind, rq = await read_pdu(reader)
        decoded = pdu.decode(rq)
        assert isinstance(decoded, pdu.AAssociateRQ)
        if established:
            writer.write(make_ac(decoded))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(data)
        seen.append(await pdus_until_eof(reader))

    async with raw_acceptor(misbehaving) as (port, errors):
        with pytest.raises(AssociationAborted) as caught:
            assoc = await connect("127.0.0.1", port, called_ae="X", connect_timeout=WAIT,
                                  dimse_timeout=WAIT, artim_timeout=SHORT, max_pdu=16384)
            await until(lambda: assoc.error is not None)
            await assoc.echo()
    assert not errors, errors
    assert seen == [[abort]]
    assert (caught.value.source, caught.value.reason) == (abort[8], abort[9])


# == 5. Flow control ===============================================================================
def _el(group: int, elem: int, value: bytes) -> bytes:
    """An implicit VR little endian element, padded to even length."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHL", group, elem, len(value)) + value


def find_rq(message_id: int = 1) -> bytes:
    """A Patient Root C-FIND-RQ (command PDU, identifier PDU) on context 5."""
    command = commands.encode(CFindRQ(message_id=message_id,
                                      affected_sop_class_uid=PATIENT_FIND))
    identifier = (_el(0x0008, 0x0052, b"PATIENT") + _el(0x0010, 0x0010, b"")
                  + _el(0x0010, 0x0020, b""))
    return pdata(5, 3, command) + pdata(5, 2, identifier)


async def read_message(reader: Reader, lengths: list[int] | None = None
                       ) -> tuple[object, int]:
    """One DIMSE message from a raw peer: (decoded command, data set length or -1); the
    PDU-length of every P-DATA-TF read is appended to ``lengths``."""
    command = bytearray()
    data = 0
    decoded: object = None
    while True:
        kind, raw = await read_pdu(reader)
        assert kind == 4, (kind, raw[:16].hex())
        if lengths is not None:
            lengths.append(len(raw) - 6)
        p = pdu.decode(raw)
        assert isinstance(p, pdu.PDataTF)
        for pdv in p.pdvs:
            if pdv.is_command:
                command += bytes(pdv.data)
                if pdv.is_last:
                    decoded = commands.decode(bytes(command))
                    if getattr(decoded, "command_data_set_type", 0x0101) == 0x0101:
                        return decoded, -1
            else:
                data += len(pdv.data)
                if pdv.is_last:
                    return decoded, data


def store_rsp(message_id: int = 1, status: int = 0, context_id: int = 1) -> bytes:
    return pdata(context_id, 3, commands.encode(CStoreRSP(
        message_id_being_responded_to=message_id, affected_sop_class_uid=CT,
        affected_sop_instance_uid="1.2.826.0.1.3680043.2.1143.7.1", status=status)))


async def test_requestor_pauses_a_large_store_while_the_acceptor_does_not_read() -> None:
    """A 32 MB C-STORE to an acceptor that reads nothing for a while: our transport pauses
    (pause_writing) with its buffer bounded, then the store completes once it reads again."""
    size = 32 * 1024 * 1024
    go = asyncio.Event()
    got: list[int] = []

    async def stalling(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        await asyncio.wait_for(go.wait(), WAIT)
        _command, length = await read_message(reader)
        got.append(length)
        writer.write(store_rsp())
        await writer.drain()
        await read_pdu(reader)  # release
        writer.write(RELEASE_RP)

    async with raw_acceptor(stalling) as (port, errors):
        async with connect("127.0.0.1", port, called_ae="X", sop_classes=[CT],
                           dimse_timeout=WAIT) as assoc:
            storing = asyncio.get_running_loop().create_task(assoc.store(ct_dataset(size)))
            await until(lambda: assoc.protocol.writing_paused)
            transport = assoc.protocol.transport
            assert transport is not None
            await asyncio.sleep(0.2)
            buffered = transport.get_write_buffer_size()
            assert assoc.protocol.writing_paused and not storing.done()
            assert buffered < 2 * 1024 * 1024, buffered  # not the 32 MB
            go.set()
            assert await asyncio.wait_for(storing, WAIT) == 0
    assert not errors, errors
    assert got and got[0] > size


async def test_server_stops_pulling_find_matches_while_the_requestor_does_not_read() -> None:
    """Many C-FIND responses to a requestor that does not read: the handler is not pulled
    beyond what the socket can take (back-pressure), then all arrive once it reads again."""
    total = 20_000
    pulled = [0]

    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(total):
            match = Dataset()
            match.QueryRetrieveLevel = "PATIENT"
            match.PatientName = "DOE^" + "X" * 50 + str(i)
            match.PatientID = f"P{i:08d}"
            pulled[0] += 1
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry),
                          dimse_timeout=10) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, ("127.0.0.1", server.port)), WAIT)
        reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
        writer.write(make_rq().encode())
        assert (await read_pdu(reader))[0] == 2
        writer.write(find_rq())
        await writer.drain()
        await until(lambda: pulled[0] > 0)
        await asyncio.sleep(0.3)
        first = pulled[0]
        await asyncio.sleep(0.3)
        assert pulled[0] == first < total  # paused, not buffering every response
        ours = next(iter(server.associations))
        assert ours.protocol.writing_paused
        transport = ours.protocol.transport
        assert transport is not None and transport.get_write_buffer_size() < 1024 * 1024
        pending = 0
        while True:
            rsp, _length = await read_message(reader)
            if getattr(rsp, "status", None) != 0xFF00:
                break
            pending += 1
        assert pending == total and getattr(rsp, "status", None) == 0
        writer.write(RELEASE_RQ)
        assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.close()


async def test_server_serves_a_peer_trickling_one_byte_at_a_time() -> None:
    """RQ, C-ECHO and release sent one byte per write (and per TCP segment, NODELAY)."""
    async with our_server(artim_timeout=WAIT) as server:
        reader, writer = await open_raw(server.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def trickle(data: bytes) -> None:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)

        await trickle(make_rq().encode())
        assert (await read_pdu(reader))[0] == 2
        await trickle(echo_rq())
        rsp, _ = await read_message(reader)
        assert getattr(rsp, "status", None) == 0
        await trickle(RELEASE_RQ)
        assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.close()


async def test_requestor_reads_an_acceptor_trickling_one_byte_at_a_time() -> None:
    async def trickling(reader: Reader, writer: Writer) -> None:
        kind, rq = await read_pdu(reader)
        decoded = pdu.decode(rq)
        assert isinstance(decoded, pdu.AAssociateRQ)
        for answer in (make_ac(decoded), None, RELEASE_RP):
            if answer is None:  # the C-ECHO-RSP
                rq_msg, _ = await read_message(reader)
                answer = pdata(1, 3, commands.encode(CEchoRSP(
                    message_id_being_responded_to=getattr(rq_msg, "message_id", 0))))
            elif answer == RELEASE_RP:
                assert (await read_pdu(reader))[1] == RELEASE_RQ
            for i in range(len(answer)):
                writer.write(answer[i:i + 1])
                await writer.drain()
        assert await pdus_until_eof(reader) == []

    async with raw_acceptor(trickling) as (port, errors):
        async with connect("127.0.0.1", port, called_ae="X", dimse_timeout=WAIT) as assoc:
            assert await assoc.echo() == 0
    assert not errors, errors


# == 6. The peer's Maximum Length (PS3.8 D.1; 0 = unlimited) on the wire ===========================
@pytest.mark.parametrize("max_length", [14, 15, 1001, 16384, 0])
async def test_requestor_never_sends_pdata_longer_than_the_acceptors_maximum(
        max_length: int) -> None:
    size = 20_000 if 0 < max_length < 100 else 3_000_000
    lengths: list[int] = []
    received: list[int] = []

    async def recording(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer, max_length=max_length)
        rq_msg, _ = await read_message(reader, lengths)
        writer.write(pdata(1, 3, commands.encode(CEchoRSP(
            message_id_being_responded_to=getattr(rq_msg, "message_id", 0)))))
        store, length = await read_message(reader, lengths)
        received.append(length)
        writer.write(store_rsp(getattr(store, "message_id", 0), context_id=3))
        assert (await read_pdu(reader))[1] == RELEASE_RQ
        writer.write(RELEASE_RP)

    async with raw_acceptor(recording) as (port, errors):
        async with connect("127.0.0.1", port, called_ae="X", contexts=[
                (VERIFICATION, (IMPLICIT_LE,)), (CT, (EXPLICIT_LE,))],
                dimse_timeout=WAIT) as assoc:
            assert assoc.negotiated.peer_max_pdu == max_length
            assert await assoc.echo() == 0
            assert await assoc.store(ct_dataset(size)) == 0
    assert not errors, errors
    limit = max_length or UNLIMITED_SEND_CAP
    assert lengths and max(lengths) <= limit, (max(lengths), limit)
    assert received[0] > size
    if max_length == 0:
        assert max(lengths) > 16384  # unlimited really is used


@pytest.mark.filterwarnings("ignore:The PN component length")
@pytest.mark.parametrize("max_length", [14, 15, 1001, 0])
async def test_server_never_sends_pdata_longer_than_the_requestors_maximum(
        max_length: int) -> None:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(3):
            match = Dataset()
            match.QueryRetrieveLevel = "PATIENT"
            match.PatientName = "DOE^" + "Y" * 3000
            match.PatientID = f"P{i}"
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry)) as server:
        reader, writer = await raw_associate(server.port, max_length=max_length)
        lengths: list[int] = []
        writer.write(echo_rq())
        rsp, _ = await read_message(reader, lengths)
        assert getattr(rsp, "status", None) == 0
        writer.write(find_rq())
        sizes = []
        while True:
            rsp, length = await read_message(reader, lengths)
            if getattr(rsp, "status", None) != 0xFF00:
                break
            sizes.append(length)
        assert len(sizes) == 3 and min(sizes) > 3000
        writer.write(RELEASE_RQ)
        assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.close()
    assert max(lengths) <= (max_length or UNLIMITED_SEND_CAP)


# == More cells and bounds over sockets ===========================================================
@pytest.mark.parametrize(("after", "data", "abort"), [
    ("rj", echo_rq(), None),  # AA-6: ignored
    ("rj", make_rq().encode(), abort_bytes(2, 2)),  # AA-7
    ("rj", UNKNOWN_PDU, abort_bytes(2, 1)),  # Evt19 in Sta13: AA-7
    ("rp", RELEASE_RQ, None),  # AA-6
    ("rp", echo_rq(), None),  # AA-6
])
async def test_server_in_sta13_ignores_or_aborts_then_artim_closes(
        after: str, data: bytes, abort: bytes | None) -> None:
    """After our A-ASSOCIATE-RJ (AE-8) or A-RELEASE-RP (AR-4), Sta13: AA-6 ignores, AA-7 sends
    an A-ABORT; neither restarts ARTIM, which then closes the connection."""
    async with our_server(artim_timeout=SHORT) as server:
        if after == "rj":
            reader, writer = await open_raw(server.port)
            writer.write(make_rq(called="NOTUS").encode())
            assert (await read_pdu(reader))[0] == 3
        else:
            reader, writer = await raw_associate(server.port)
            writer.write(RELEASE_RQ)
            assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.write(data)
        assert await pdus_until_eof(reader) == ([] if abort is None else [abort])
        writer.close()
        await until(lambda: not server.associations)


async def test_server_artim_is_not_extended_by_a_trickled_rq() -> None:
    """ARTIM runs from the connection until a whole A-ASSOCIATE-RQ (AE-6): a peer dribbling its
    RQ a byte at a time is still cut off at ARTIM."""
    async with our_server(artim_timeout=SHORT) as server:
        reader, writer = await open_raw(server.port)
        rq = make_rq().encode()

        async def dribble() -> None:
            for i in range(len(rq) - 1):
                writer.write(rq[i:i + 1])
                await asyncio.sleep(0.02)

        dribbling = asyncio.get_running_loop().create_task(dribble())
        try:
            assert await pdus_until_eof(reader, timeout=2.0) == []
        finally:
            dribbling.cancel()
        writer.close()


async def test_requestor_release_never_answered_times_out_and_aborts() -> None:
    """Our A-RELEASE-RQ unanswered: leaving ``async with`` raises DimseTimeout after the DIMSE
    timeout, having sent A-ABORT and closed (PS3.8 9.1.4 Note: the layer above bounds it)."""
    seen: list[list[bytes]] = []

    async def mute(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        assert (await read_pdu(reader))[1] == RELEASE_RQ
        seen.append(await pdus_until_eof(reader))

    async with raw_acceptor(mute) as (port, errors):
        with pytest.raises(DimseTimeout):
            async with connect("127.0.0.1", port, called_ae="X", dimse_timeout=SHORT):
                pass
    assert not errors, errors
    assert seen == [[ABORT_USER]]


async def test_requestor_cancelled_while_waiting_for_the_ac_aborts_and_closes() -> None:
    seen: list[list[bytes]] = []

    async def mute(reader: Reader, writer: Writer) -> None:
        assert (await read_pdu(reader))[0] == 1
        seen.append(await pdus_until_eof(reader))

    async with raw_acceptor(mute) as (port, errors):
        opening = asyncio.get_running_loop().create_task(
            connect("127.0.0.1", port, called_ae="X", connect_timeout=WAIT).__aenter__())
        await asyncio.sleep(0.1)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
    assert not errors, errors
    assert seen == [[ABORT_USER]]


async def test_server_bounds_a_flood_of_requests_from_a_peer_that_reads_nothing() -> None:
    """Thousands of C-ECHO-RQs and no reading: our writes pause, then reading pauses (ReadGate),
    the write buffer stays bounded, the DIMSE timeout aborts the association, and ARTIM closes
    the socket although the peer never read what was sent (PS3.8 9.1.4)."""
    async with our_server(artim_timeout=SHORT, dimse_timeout=2.0) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, ("127.0.0.1", server.port)), WAIT)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(make_rq().encode())
        assert (await read_pdu(reader))[0] == 2
        ours = next(iter(server.associations))
        burst = echo_rq(1) * 100
        with pytest.raises(TimeoutError):  # the server stops reading: our writes back up
            async with asyncio.timeout(1):
                while True:
                    writer.write(burst)
                    await writer.drain()
        transport = ours.protocol.transport
        assert transport is not None and transport.get_write_buffer_size() < 1024 * 1024
        assert ours.protocol.writing_paused
        await asyncio.wait_for(ours.wait_closed(), WAIT)
        assert isinstance(ours.error, AssociationAborted)
        assert transport.is_closing()
        with pytest.raises(ConnectionError):  # closed at ARTIM with its buffer unsent: a reset
            async with asyncio.timeout(WAIT):
                while True:
                    writer.write(burst)
                    await writer.drain()
        writer.transport.abort()
        await until(lambda: not server.associations)
        await still_serves(server)


async def test_dcmtk_echoscu_abort_then_server_keeps_serving() -> None:
    from tests.peers import dcmtk, run_tool_async

    echoscu = dcmtk("echoscu")
    async with our_server(artim_timeout=WAIT) as server:
        code, out = await run_tool_async(
            [echoscu, "-aec", "AUDIT", "-ta", "5", "-td", "5", "--abort", "--repeat", "3",
             "127.0.0.1", str(server.port)], timeout=30)
        assert code == 0, out
        await until(lambda: not server.associations)
        code, out = await run_tool_async(
            [echoscu, "-aec", "AUDIT", "-ta", "5", "-td", "5", "127.0.0.1", str(server.port)],
            timeout=30)
        assert code == 0, out


async def test_requestor_answers_the_acceptors_release_and_closes_after_artim() -> None:
    """The acceptor releases (our AR-2, then AR-4: RP and ARTIM) and never closes: we close on
    ARTIM expiry (Sta13 + Evt18, AA-2); the block exits without error."""
    seen: list[list[bytes]] = []

    async def releasing(reader: Reader, writer: Writer) -> None:
        await accept_raw(reader, writer)
        writer.write(RELEASE_RQ)
        seen.append(await pdus_until_eof(reader))

    async with raw_acceptor(releasing) as (port, errors):
        async with connect("127.0.0.1", port, called_ae="X", artim_timeout=SHORT) as assoc:
            await asyncio.wait_for(assoc.wait_closed(), WAIT)
            assert assoc.error is None and assoc.protocol.artim_fired
    assert not errors, errors
    assert seen == [[RELEASE_RP]]


async def test_server_refuses_a_huge_rq_header_before_its_body() -> None:
    """A header claiming 2 GiB: A-ABORT (2, 6) at once (Evt19 in Sta2, AA-1), no body awaited."""
    async with our_server(artim_timeout=SHORT) as server:
        reader, writer = await open_raw(server.port)
        writer.write(bytes.fromhex("01007fffffff") + bytes(100))
        kind, data = await read_pdu(reader, timeout=SHORT / 2)  # before ARTIM could act
        assert data == abort_bytes(2, 6)
        writer.close()


async def test_server_still_sends_responses_after_the_peers_release_rq() -> None:
    """A-RELEASE-RQ while a C-FIND is performed (Sta8): its responses still go out (AR-7),
    then the A-RELEASE-RP (AR-4)."""
    gate = asyncio.Event()

    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(3):
            match = Dataset()
            match.QueryRetrieveLevel = "PATIENT"
            match.PatientID = f"P{i}"
            yield match
            await asyncio.wait_for(gate.wait(), WAIT)

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry)) as server:
        reader, writer = await raw_associate(server.port)
        writer.write(find_rq())
        rsp, _ = await read_message(reader)
        assert getattr(rsp, "status", None) == 0xFF00
        writer.write(RELEASE_RQ)
        await until(lambda: next(iter(server.associations)).machine.state is State.STA8)
        gate.set()
        statuses = []
        while True:
            rsp, _ = await read_message(reader)
            statuses.append(getattr(rsp, "status", None))
            if statuses[-1] != 0xFF00:
                break
        assert statuses == [0xFF00, 0xFF00, 0]
        assert (await read_pdu(reader))[1] == RELEASE_RP
        writer.close()


async def test_server_closes_at_once_when_the_requestor_answers_its_release_and_stays() -> None:
    """Our server releases; the requestor answers A-RELEASE-RP and keeps the socket open: the
    server closes at once (Sta7 + Evt13 -> AR-3), long before its ARTIM."""
    async with our_server(artim_timeout=30) as server:
        reader, writer = await raw_associate(server.port)
        await until(lambda: any(a.is_established for a in server.associations))
        ours = next(iter(server.associations))
        releasing = asyncio.get_running_loop().create_task(ours.release(timeout=WAIT))
        assert (await read_pdu(reader))[1] == RELEASE_RQ
        writer.write(RELEASE_RP)
        assert await pdus_until_eof(reader, timeout=2.0) == []
        await asyncio.wait_for(releasing, WAIT)
        assert ours.error is None and not ours.protocol.artim_fired
        writer.close()


async def test_dcmtk_storescp_with_a_small_max_pdu_takes_our_store(tmp_path: Path) -> None:
    """DCMTK storescp announcing 4096 (its smallest) refuses any longer PDU ('Illegal PDU
    Length'); a 1 MB C-STORE from us is stored, so every P-DATA-TF fitted."""
    from tests.peers import free_port, run_storescp

    port = free_port()
    with run_storescp(tmp_path, port, extra_args=["--max-pdu", "4096"], timeout=60):
        async with connect("127.0.0.1", port, called_ae="STORESCP", sop_classes=[CT],
                           dimse_timeout=WAIT, connect_timeout=WAIT) as assoc:
            assert assoc.negotiated.peer_max_pdu == 4096
            assert await assoc.store(ct_dataset(1_000_000)) == 0
    stored = list(tmp_path.iterdir())
    assert len(stored) == 1 and stored[0].stat().st_size > 1_000_000
