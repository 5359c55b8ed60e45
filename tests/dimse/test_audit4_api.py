"""Fourth audit, the asyncio API as an embedding team uses it.

* Breaking out of a C-FIND with more matches than the buffer, then querying again, hung the
  association: the retired operation still held the read gate paused.
* An operation whose final response had arrived kept its asynchronous operations window slot
  until its iterator was read, so a request made meanwhile waited forever; waiting for a slot
  is now bounded by the DIMSE timeout, and a release no longer waits for such operations.
* A cancelled release (or ``async with`` exit) left the association established and its
  socket open; it now aborts, as a cancelled graceful close should.
* ``Server.close()`` returned while cancelled handlers were still cleaning up.
* A handler raising a BaseException subclass left its request unanswered (the client waited
  for its DIMSE timeout); the association is now aborted at once.
* A request made while our release is under way got a LocalProtocolError; now an
  AssociationError. Entering one ``connect()`` twice leaked the first association.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydicom import Dataset

from dimse.connect import connect
from dimse.errors import AssociationAborted, AssociationError, DimseTimeout
from dimse.messages import CEchoRQ
from dimse.qr import QueryModel
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.qr_scu import connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext

SR = QueryModel.STUDY_ROOT
VERIFICATION = "1.2.840.10008.1.1"
pytestmark = pytest.mark.timeout(60)


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    return ds


def find_server(count: int, *, async_window: tuple[int, int] | None = None) -> Server:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(count):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    return Server("QRSCP", handlers=registry, contexts=qr_server_contexts(registry),
                  async_window=async_window)


async def test_breaking_out_of_a_long_find_then_finding_again() -> None:
    async with find_server(200) as server, connect_qr(
            "127.0.0.1", server.port, called_ae="QRSCP", models=[SR], dimse_timeout=5) as assoc:
        for _ in range(5):
            async for _match in assoc.find(study_query()):
                break  # the rest is drained in the background, after a C-CANCEL
        assert len([m async for m in assoc.find(study_query())]) == 200


async def test_an_unread_but_finished_find_does_not_block_the_next_request() -> None:
    async with find_server(5) as server, connect_qr(
            "127.0.0.1", server.port, called_ae="QRSCP", models=[SR], dimse_timeout=5,
            async_window=(1, 1)) as assoc:
        assert assoc.negotiated.async_window == (1, 1)
        matches = assoc.find(study_query())
        await anext(matches)  # the four others and the final arrive; nobody reads them yet
        started = time.monotonic()
        assert await assoc.echo() == 0
        assert [m.StudyInstanceUID async for m in matches] == [f"1.2.3.{i}" for i in (1, 2, 3, 4)]
        assert time.monotonic() - started < 4


async def test_a_full_window_raises_instead_of_hanging() -> None:
    """Too many unread matches: reading pauses, the final never comes, the slot stays taken;
    the next request says so after the DIMSE timeout."""
    async with find_server(500, async_window=(1, 1)) as server:
        assoc = await connect_qr("127.0.0.1", server.port, called_ae="QRSCP", models=[SR],
                                 dimse_timeout=1, async_window=(1, 1))
        matches = assoc.find(study_query())
        await anext(matches)
        with pytest.raises(DimseTimeout, match="window"):
            await assoc.echo()
        await matches.aclose()
        await assoc.aclose()


async def test_release_does_not_wait_for_a_finished_but_unread_find() -> None:
    async with find_server(5) as server:
        started = time.monotonic()
        async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP", models=[SR],
                              dimse_timeout=5) as assoc:
            matches = assoc.find(study_query())
            await anext(matches)
            await asyncio.sleep(0.1)  # the rest arrives
        assert time.monotonic() - started < 3
        await matches.aclose()


def slow_echo_server(delay: float) -> tuple[Server, list[str]]:
    events: list[str] = []

    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a cleanup that takes time
            events.append("cleaned up")
            raise
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    return Server("SRV", handlers=registry), events


@pytest.mark.parametrize("how", ["release", "async-with"])
async def test_a_cancelled_release_aborts(how: str) -> None:
    server, _ = slow_echo_server(30)
    async with server:
        conn = connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=20)
        assoc = await conn.__aenter__()
        echo = asyncio.ensure_future(assoc.echo())  # outstanding: the release waits for it
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(assoc.release() if how == "release"
                                        else conn.__aexit__(None, None, None))
        await asyncio.sleep(0.2)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert not assoc.is_established
        with pytest.raises(AssociationAborted):
            await echo


async def test_server_close_waits_for_handler_cleanup() -> None:
    server, events = slow_echo_server(30)
    await server.start()
    assoc = await connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=20)
    echo = asyncio.ensure_future(assoc.echo())
    await asyncio.sleep(0.1)
    await server.close()
    assert events == ["cleaned up"]
    with pytest.raises(AssociationAborted):
        await echo
    await assoc.aclose()


class Escape(BaseException):
    """Neither an Exception nor an interpreter exit: no service turns it into a status."""


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_handler_raising_a_base_exception_aborts_at_once(asynchronous: bool) -> None:
    def plain(rq: Any, ctx: Any) -> int:
        raise Escape

    async def coroutine(rq: Any, ctx: Any) -> int:
        raise Escape

    registry = HandlerRegistry()
    registry.on_echo(coroutine if asynchronous else plain)
    async with Server("SRV", handlers=registry) as server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=20)
        started = time.monotonic()
        with pytest.raises(AssociationAborted):
            await assoc.echo()
        assert time.monotonic() - started < 5
        await assoc.aclose()
        registry.on_echo(lambda rq, ctx: 0)
        async with connect("127.0.0.1", server.port, called_ae="SRV") as again:
            assert await again.echo() == 0  # the server goes on


async def test_a_request_during_our_release_is_a_clear_error() -> None:
    server, _ = slow_echo_server(0.5)
    async with server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=10)
        echo = asyncio.ensure_future(assoc.echo())
        await asyncio.sleep(0.1)
        release = asyncio.ensure_future(assoc.release())
        await asyncio.sleep(0.05)
        with pytest.raises(AssociationError, match="released"):
            await assoc.echo()
        assert await echo == 0  # the outstanding one still gets its answer
        await release


async def test_one_connect_cannot_be_entered_twice() -> None:
    async with Server("SRV") as server:
        conn = connect("127.0.0.1", server.port, called_ae="SRV")
        async with conn as first:
            with pytest.raises(RuntimeError, match="already"):
                async with conn:
                    pass  # pragma: no cover
            assert await first.echo() == 0
        assert not first.is_established


async def test_storing_something_else_than_a_dataset_says_so() -> None:
    registry = HandlerRegistry()
    registry.on_store(lambda rq, ds, ctx: 0)
    async with Server("SRV", handlers=registry) as server, connect(
            "127.0.0.1", server.port, called_ae="SRV",
            sop_classes=["1.2.840.10008.5.1.4.1.1.2"]) as assoc:
        for wrong in (42, "x", None):
            with pytest.raises(TypeError, match="pydicom Dataset, not"):
                await assoc.store(wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="pydicom Dataset, not int"):
            await assoc.store_many([42])  # type: ignore[list-item]


async def test_a_request_waiting_for_a_window_slot_does_not_slip_past_a_release() -> None:
    served: list[int] = []

    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        served.append(rq.message_id)
        await asyncio.sleep(0.3)
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    async with Server("SRV", handlers=registry, async_window=(1, 1)) as server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=10,
                              async_window=(1, 1))
        first = asyncio.ensure_future(assoc.echo())  # takes the only slot
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(assoc.echo())  # waits for it
        await asyncio.sleep(0.05)
        await asyncio.wait_for(assoc.release(), 5)
        assert await first == 0
        with pytest.raises(AssociationError, match="released"):
            await second
    assert len(served) == 1


async def test_release_timeout_is_one_budget() -> None:
    """Outstanding operations and the A-RELEASE-RP share ``timeout``: never twice it."""
    server, _ = slow_echo_server(30)
    async with server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=20)
        echo = asyncio.ensure_future(assoc.echo())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(DimseTimeout, match="final responses"):
            await assoc.release(timeout=0.5)
        assert time.monotonic() - started < 1.5
        with pytest.raises(AssociationAborted):
            await echo
        await assoc.aclose()
