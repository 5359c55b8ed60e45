"""Session 7 fixes from the Upper Layer socket audit (notes/audit7/ul.md); each failed before.

- "Close transport" (AA-2, AA-3, AR-3...) closed with ``transport.close()``, which waits to flush
  the write buffer: with a peer that stopped reading, the socket stayed open for as long as the
  peer kept it, and a sender paused in drain() was not woken by the peer's A-ABORT.
- Nothing may be sent after our A-RELEASE-RQ (Evt9 has no action in Sta7): a request of the peer
  arriving then made the core raise an untyped LocalProtocolError out of the performers (logged
  as ERROR with a traceback), and our release() did not wait for the requests we were still
  answering, so it overtook their final responses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom import Dataset

from dimse.archive import Archive
from dimse.connect import connect
from dimse.errors import AssociationAborted
from dimse.instances import encode_instance
from dimse.qr_scp import FindRequest, archive_server, qr_server_contexts, register_find
from dimse.services import HandlerRegistry
from tests.pdu.test_audit7_ul import (
    ABORT_USER,
    CT,
    EXPLICIT_LE,
    RELEASE_RP,
    RELEASE_RQ,
    WAIT,
    accept_raw,
    ct_dataset,
    echo_rq,
    find_rq,
    make_rq,
    our_server,
    pdata,
    raw_acceptor,
    raw_associate,
    read_message,
    read_pdu,
    still_serves,
    store_rq_command,
    until,
)

pytestmark = pytest.mark.timeout(60)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_peer_abort_wakes_a_store_paused_on_a_peer_that_reads_nothing() -> None:
    """No DIMSE timeout at all: only the A-ABORT (AA-3) can end the store, and the socket
    closes although 32 MB are still unsent."""
    hold = asyncio.Event()

    async def acceptor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_raw(reader, writer)
        await asyncio.sleep(0.5)  # read nothing: our writes pause
        writer.write(ABORT_USER)  # abort, keep the socket open, still read nothing
        await writer.drain()
        await asyncio.wait_for(hold.wait(), 20)

    async with raw_acceptor(acceptor) as (port, _errors):
        assoc = await connect("127.0.0.1", port, called_ae="X", sop_classes=[CT],
                              dimse_timeout=None)
        try:
            with pytest.raises(AssociationAborted):
                await asyncio.wait_for(assoc.store(ct_dataset(32_000_000)), 15)
            await asyncio.wait_for(assoc.protocol.closed, WAIT)
        finally:
            hold.set()


async def test_server_closes_at_artim_a_socket_whose_peer_reads_nothing() -> None:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(20_000):
            match = Dataset()
            match.QueryRetrieveLevel = "PATIENT"
            match.PatientID = f"P{i:08d}" + "X" * 40
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry),
                          dimse_timeout=0.5, artim_timeout=0.3) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, ("127.0.0.1", server.port)), WAIT)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        try:
            writer.write(make_rq().encode())
            assert (await read_pdu(reader))[0] == 2
            ours = next(iter(server.associations))
            writer.write(find_rq())  # ... and never read again, never close
            await asyncio.wait_for(ours.protocol.closed, 10)  # DIMSE timeout, then ARTIM
            assert isinstance(ours.error, AssociationAborted)
            await until(lambda: not server.associations)
            await still_serves(server)
        finally:
            writer.transport.abort()


async def test_aclose_still_flushes_to_a_peer_that_reads() -> None:
    """Our own abort (AA-1) still lets what is queued, and the A-ABORT, reach a reading peer."""
    go = asyncio.Event()
    seen: list[int] = []

    async def acceptor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_raw(reader, writer)
        await asyncio.wait_for(go.wait(), 20)
        while (kind := (await read_pdu(reader))[0]) != -1:
            seen.append(kind)

    async with raw_acceptor(acceptor) as (port, _errors):
        assoc = await connect("127.0.0.1", port, called_ae="X", sop_classes=[CT],
                              dimse_timeout=10)
        store = asyncio.create_task(assoc.store(ct_dataset(8_000_000)))
        await until(lambda: assoc.protocol.writing_paused)
        store.cancel()
        with pytest.raises(asyncio.CancelledError):
            await store
        go.set()
        await asyncio.wait_for(assoc.aclose(), 10)
        await until(lambda: bool(seen) and seen[-1] == 7)


async def test_request_after_our_release_rq_is_dropped_with_a_warning_server(
        caplog: pytest.LogCaptureFixture) -> None:
    async with our_server(artim_timeout=2) as server:
        reader, writer = await raw_associate(server.port)
        try:
            await until(lambda: any(a.is_established for a in server.associations))
            ours = next(iter(server.associations))
            releasing = asyncio.get_running_loop().create_task(ours.release(timeout=3))
            assert (await read_pdu(reader))[1] == RELEASE_RQ
            writer.write(echo_rq(9))  # the peer, in Sta8, may still send P-DATA (AR-7)
            await asyncio.sleep(0.2)
            writer.write(RELEASE_RP)
            await asyncio.wait_for(releasing, 3)
            assert (await read_pdu(reader))[0] == -1  # no answer to the echo: closed
        finally:
            writer.close()
    assert errors(caplog) == []
    assert any("after our A-RELEASE-RQ" in r.getMessage() for r in caplog.records)


async def test_request_after_our_release_rq_is_dropped_with_a_warning_requestor(
        caplog: pytest.LogCaptureFixture) -> None:
    unhandled: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx["message"]))

    async def acceptor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_raw(reader, writer)
        assert (await read_pdu(reader))[1] == RELEASE_RQ
        writer.write(echo_rq(7))
        await asyncio.sleep(0.2)
        writer.write(RELEASE_RP)
        await read_pdu(reader)

    try:
        async with raw_acceptor(acceptor) as (port, peer_errors):
            async with connect("127.0.0.1", port, called_ae="X", dimse_timeout=3) as assoc:
                pass
            assert assoc.error is None
        assert peer_errors == []
    finally:
        loop.set_exception_handler(None)
    assert unhandled == [] and errors(caplog) == []


async def test_our_release_waits_for_the_final_response_of_a_request_we_perform(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()

    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(3):
            match = Dataset()
            match.QueryRetrieveLevel, match.PatientID = "PATIENT", f"P{i}"
            yield match
            await asyncio.wait_for(gate.wait(), 5)

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry),
                          artim_timeout=2) as server:
        reader, writer = await raw_associate(server.port)
        try:
            writer.write(find_rq())
            await read_message(reader)  # the first Pending response
            ours = next(iter(server.associations))
            releasing = asyncio.get_running_loop().create_task(ours.release(timeout=5))
            await asyncio.sleep(0.1)
            gate.set()
            kinds = []
            while True:
                kind, _data = await read_pdu(reader)
                kinds.append(kind)
                if kind == 5:
                    writer.write(RELEASE_RP)
                if kind in (-1, 5, 6, 7):
                    break
            await asyncio.wait_for(releasing, 5)
        finally:
            writer.close()
    assert kinds[-1] == 5 and kinds[:-1] and set(kinds[:-1]) == {4}  # responses, then RQ
    assert errors(caplog) == []


async def test_a_streamed_store_after_our_release_rq_leaves_no_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The archive streams a C-STORE into a temporary file; dropped in Sta7, it is discarded."""
    archive = Archive(tmp_path / "archive")
    try:
        async with archive_server(archive, "AUDIT", artim_timeout=2) as server:
            reader, writer = await raw_associate(server.port)
            try:
                await until(lambda: any(a.is_established for a in server.associations))
                ours = next(iter(server.associations))
                releasing = asyncio.get_running_loop().create_task(ours.release(timeout=3))
                assert (await read_pdu(reader))[1] == RELEASE_RQ
                data = encode_instance(ct_dataset(), EXPLICIT_LE)
                writer.write(pdata(3, 3, store_rq_command(4)) + pdata(3, 2, data))
                await asyncio.sleep(0.2)
                writer.write(RELEASE_RP)
                await asyncio.wait_for(releasing, 3)
            finally:
                writer.close()
        left = [p for p in (tmp_path / "archive").rglob("*")
                if p.is_file() and not p.name.startswith(".archive.sqlite")]
        assert left == []
        assert archive.counts() == (0, 0)
    finally:
        archive.close()
    assert errors(caplog) == []
    assert any("after our A-RELEASE-RQ" in r.getMessage() for r in caplog.records)
