"""Session 7 fixes from the asyncio API audit (notes/audit7/api.md); each failed before.

- D1: ``async with await serve(...)`` (start() twice) opened a second listener and left the
  first one accepting after close().
- D2: an ``async def`` handler raising a stray CancelledError (its task not cancelled) left the
  request unanswered: the requestor waited its whole DIMSE timeout.
- D5: a connection closed by the peer while we waited read "A-P-ABORT (source 2, reason 0)".
- D6: close() waited for a running authenticator (its whole timeout), and a peer that left
  during authentication stayed listed until the authenticator returned.
- D3: an ``async with`` block left after breaking out of a find whose iterator was still
  referenced waited the DIMSE timeout for its final response, then aborted (DimseTimeout).
- D7: a request queued behind operations that progress normally (window full) failed with
  DimseTimeout once the queue was longer than one DIMSE timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

import dimse
from dimse.connect import connect
from dimse.errors import AssociationAborted
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.qr_scu import connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry
from pdu.items import UserIdentityRQ

pytestmark = pytest.mark.timeout(60)
CT = "1.2.840.10008.5.1.4.1.1.2"


async def until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_d1_a_started_server_keeps_its_one_listener() -> None:
    server = await dimse.serve("SRV")
    port = server.port
    async with server:  # __aenter__ on a started server
        assert server.port == port
        async with connect("127.0.0.1", port, called_ae="SRV") as assoc:
            await assoc.echo()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)


async def test_d2_a_handlers_stray_cancelled_error_aborts_at_once() -> None:
    async def on_echo(rq: object, ctx: object) -> int:
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()  # a shared future someone else cancelled
        await fut
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=30) as a:
            with pytest.raises(AssociationAborted):
                await asyncio.wait_for(a.echo(), 5)  # not the 30 s DIMSE timeout
        async with connect("127.0.0.1", server.port, called_ae="SRV") as b:
            assert b.is_established  # and the server serves on


async def test_d5_a_closed_connection_says_so() -> None:
    async def on_echo(rq: object, ctx: object) -> int:
        ctx.association.protocol.transport.abort()  # type: ignore[attr-defined]
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=5) as a:
            with pytest.raises(AssociationAborted,
                               match=r"A-P-ABORT .*: connection closed by the peer"):
                await a.echo()


@pytest.fixture
def slow_auth() -> tuple[asyncio.Event, list[str], object]:
    started = asyncio.Event()
    ends: list[str] = []

    async def auth(identity: UserIdentityRQ, peer: object) -> tuple[bool, bytes | None]:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        return True, None

    return started, ends, auth


IDENTITY = UserIdentityRQ(identity_type=1, positive_response_requested=False,
                          primary_field=b"user")


async def test_d6_close_does_not_wait_for_a_running_authenticator(
        slow_auth: tuple[asyncio.Event, list[str], object]) -> None:
    started, ends, auth = slow_auth
    server = await Server("SRV", authenticator=auth).start()  # type: ignore[arg-type]
    client = asyncio.ensure_future(connect("127.0.0.1", server.port, called_ae="SRV",
                                           user_identity=IDENTITY))
    try:
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(server.close(timeout=20), 3)
        assert ends == ["cancelled"]
        with pytest.raises(AssociationAborted):
            await asyncio.wait_for(client, 5)
    finally:
        client.cancel()


async def test_d6_a_peer_gone_during_authentication_is_no_longer_listed(
        slow_auth: tuple[asyncio.Event, list[str], object]) -> None:
    started, ends, auth = slow_auth
    async with Server("SRV", authenticator=auth) as server:  # type: ignore[arg-type]
        client = asyncio.ensure_future(connect("127.0.0.1", server.port, called_ae="SRV",
                                               user_identity=IDENTITY))
        await asyncio.wait_for(started.wait(), 5)
        assert len(server.associations) == 1
        client.cancel()  # a cancelled connect aborts and closes its socket
        with pytest.raises(asyncio.CancelledError):
            await client
        await until(lambda: not server.associations)
        assert ends == ["cancelled"]


def instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "D7"
    return ds


async def test_d7_a_queue_behind_progressing_operations_does_not_time_out() -> None:
    async def on_store(rq: object, ds: object, ctx: object) -> int:
        await asyncio.sleep(0.1)
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT],
                           dimse_timeout=0.5) as assoc:  # 20 x 0.1 s queue: 4 timeouts long
            results = await asyncio.gather(*(assoc.store(instance()) for _ in range(20)),
                                           return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [0] * 20


async def test_d3_the_block_exit_cancels_a_find_whose_iterator_is_held() -> None:
    produced: list[int] = []

    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(1000):  # 10 s of matches: far beyond the DIMSE timeout below
            await asyncio.sleep(0.01)
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            produced.append(i)
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    async with Server("QR", handlers=registry, contexts=qr_server_contexts(registry)) as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QR", dimse_timeout=2) as a:
            results = a.find(query)  # held: breaking out does not close it
            async for _match in results:
                break
        assert a.error is None  # released, not aborted after a DimseTimeout
        assert len(produced) < 1000  # the SCP saw the C-CANCEL
        await results.aclose()
