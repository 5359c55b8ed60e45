"""Seventh audit: the public asyncio API under cancellation, peer failures and server shutdown,
as an application embedding the library drives it.

Each test runs with the event loop in debug mode and fails on any ResourceWarning (an unclosed
socket or transport), any error logged by asyncio ("Task exception was never retrieved", "Task
was destroyed but it is pending") and any task left behind. What they pin:

* cancelling (``Task.cancel()``, ``asyncio.timeout()``) a C-FIND consumer, a C-ECHO, a C-STORE,
  a ``store_many`` or an association being negotiated propagates CancelledError/TimeoutError and
  ends cleanly: a C-FIND or C-ECHO left early keeps the association usable, a C-STORE cut
  mid-message aborts it, a cancelled negotiation closes the socket; half-received instances are
  discarded by the archive (no file, no temporary file);
* a rejecting, aborting, vanishing or silent peer raises the typed error, the association says
  so afterwards, and a new association can be opened at once;
* an exception in an ``async with`` body is preserved and the peer sees an A-ABORT;
* ``Server.close()`` with finds and a half-streamed store in progress ends them at once;
* one handler failing does not disturb other peers; 50 concurrent associations from one loop
  all get their own correct matches.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dimse.archive import Archive
from dimse.connect import connect
from dimse.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
)
from dimse.messages import CEchoRQ, CStoreRQ
from dimse.qr_scp import FindRequest, archive_server, qr_server_contexts, register_find
from dimse.qr_scu import connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet, RequestContext
from pdu.errors import PduEncodeError

pytestmark = pytest.mark.timeout(60)

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


# -- hygiene: every test runs under these checks ------------------------------------------------
@pytest.fixture(autouse=True)
def hygiene(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No ResourceWarning, nothing logged by asyncio at ERROR (never-retrieved exceptions,
    destroyed pending tasks), checked after a garbage collection."""
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    resource = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert resource == []
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    bad = [r.getMessage() for r in records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert bad == []


@pytest.fixture(autouse=True)
async def debug_loop() -> AsyncIterator[None]:
    """The loop in debug mode; no task of ours left once the test is done."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 10.0  # debug mode, not slowness warnings
    yield
    me = asyncio.current_task()
    async with asyncio.timeout(5):
        while [t for t in asyncio.all_tasks() if t is not me]:
            await asyncio.sleep(0.01)


# -- helpers -----------------------------------------------------------------------------------
def instance(index: int = 0, *, name: str = "DOE^JOHN", pixels: int = 0) -> Dataset:
    """CT_small with fresh UIDs (and, with ``pixels``, that many bytes of pixel data)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = name
    ds.PatientID = f"PID{index}"
    if pixels:
        ds.Rows, ds.Columns = 1000, pixels // 2000
        ds.PixelData = bytes(pixels)
    return ds


def study_query(name: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    if name is not None:
        ds.PatientName = name
    return ds


def archived(folder: Path) -> list[Path]:
    """Every file in the archive folder but its index (temporary files included)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".archive" not in p.name)


def slow_server(count: int = 1000, delay: float = 0.01, echo_delay: float = 0.5) -> Server:
    """C-FIND: ``count`` matches, one every ``delay`` s; C-ECHO answered after ``echo_delay``."""
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(count):
            await asyncio.sleep(delay)
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            yield match

    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        await asyncio.sleep(echo_delay)
        return 0

    registry = HandlerRegistry()
    register_find(registry, matches)
    registry.on_echo(on_echo)
    return Server("QR", handlers=registry, contexts=qr_server_contexts(registry))


async def no_association(server: Server) -> None:
    async with asyncio.timeout(5):
        while server.associations:
            await asyncio.sleep(0.01)


async def until(predicate: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive") as arch:
        yield arch


# -- 1. cancellation -----------------------------------------------------------------------------
async def test_cancelling_a_find_consumer_keeps_the_association_usable() -> None:
    async with slow_server() as server, connect_qr(
            "127.0.0.1", server.port, called_ae="QR", dimse_timeout=5) as assoc:
        got: list[Dataset] = []

        async def consume() -> None:
            async for match in assoc.find(study_query()):
                got.append(match)

        task = asyncio.create_task(consume())
        await until(lambda: len(got) >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = [m.StudyInstanceUID async for m in assoc.find(study_query(), limit=3)]
        assert again == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
        assert assoc.is_established


async def test_a_timeout_around_a_find_in_the_block_aborts_the_association() -> None:
    async with slow_server() as server:
        with pytest.raises(TimeoutError):
            async with connect_qr("127.0.0.1", server.port, called_ae="QR",
                                  dimse_timeout=5) as assoc:
                async with asyncio.timeout(0.2):
                    async for _match in assoc.find(study_query()):
                        pass
        assert isinstance(assoc.error, AssociationAborted)
        assert not assoc.is_established
        async with asyncio.timeout(5):
            await assoc.wait_closed()
        await no_association(server)


async def test_cancelling_an_echo_keeps_the_association_usable() -> None:
    async with slow_server(echo_delay=0.3) as server, connect_qr(
            "127.0.0.1", server.port, called_ae="QR", dimse_timeout=5) as assoc:
        echo = asyncio.create_task(assoc.echo())
        await asyncio.sleep(0.05)
        echo.cancel()
        with pytest.raises(asyncio.CancelledError):
            await echo
        assert await assoc.echo() == 0  # after the late response of the first one
        assert assoc.is_established


async def test_cancelling_a_store_mid_message_aborts_and_leaves_no_file(
        archive: Archive) -> None:
    async with archive_server(archive, "ARCHIVE") as server:
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE", sop_classes=[CT],
                           dimse_timeout=10) as assoc:
            store = asyncio.create_task(assoc.store(instance(pixels=40_000_000)))
            await until(lambda: assoc.protocol.writing_paused)  # mid-message
            store.cancel()
            with pytest.raises(asyncio.CancelledError):
                await store
            with pytest.raises(AssociationAborted, match="stopped after some of its fragments"):
                await assoc.echo()
        await no_association(server)
        assert archived(archive.storage_dir) == []
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[CT]) as again:  # a new association at once
            assert await again.store(instance(1)) == 0
        assert len(archived(archive.storage_dir)) == 1


@pytest.mark.parametrize("window", [None, (8, 8)])
async def test_cancelling_store_many_aborts_and_keeps_archive_consistent(
        archive: Archive, window: tuple[int, int] | None) -> None:
    async with archive_server(archive, "ARCHIVE", async_window=window) as server:
        stored: list[Any] = []

        async def body() -> None:
            async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                               sop_classes=[CT], async_window=window) as assoc:
                stored.append(assoc)
                await assoc.store_many(instance(i) for i in range(100_000))

        task = asyncio.create_task(body())
        await until(lambda: archive.counts()[1] >= 5, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert isinstance(stored[0].error, AssociationAborted)
        await no_association(server)
        files = archived(archive.storage_dir)
        assert [f for f in files if f.name.startswith(".tmp-")] == []
        assert archive.counts()[1] == len(files) >= 5


async def _silent_listener() -> tuple[asyncio.Server, int, asyncio.Event]:
    """A TCP listener that reads and never answers; the event is set when the peer closes."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until EOF
        closed.set()
        writer.close()
        await writer.wait_closed()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1], closed


@pytest.mark.parametrize("how", ["cancel", "timeout", "connect_timeout"])
async def test_stopping_a_negotiation_closes_the_socket(how: str) -> None:
    listener, port, closed = await _silent_listener()
    async with listener:
        if how == "cancel":
            async def body() -> None:
                async with connect("127.0.0.1", port, called_ae="X"):
                    pass

            task = asyncio.create_task(body())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif how == "timeout":
            with pytest.raises(TimeoutError) as info:
                async with asyncio.timeout(0.2):
                    async with connect_qr("127.0.0.1", port, called_ae="X"):
                        pass
            assert not isinstance(info.value, DimseTimeout)  # the caller's own timeout
        else:
            with pytest.raises(DimseTimeout, match="not established within 0.2 s"):
                async with connect("127.0.0.1", port, called_ae="X", connect_timeout=0.2):
                    pass
        async with asyncio.timeout(5):
            await closed.wait()


# -- 2. peers that fail ---------------------------------------------------------------------------
async def test_a_rejection_then_a_new_association_at_once() -> None:
    async with Server("SRV") as server:
        with pytest.raises(AssociationRejected) as info:
            async with connect("127.0.0.1", server.port, called_ae="WRONG"):
                pass
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)
        async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
            assert await assoc.echo() == 0
        await no_association(server)


async def test_a_refused_connection_is_an_association_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AssociationAborted, match="cannot connect") as info:
        await connect("127.0.0.1", port, called_ae="X")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_a_peer_abort_mid_find_then_a_new_association() -> None:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(1000):
            if i == 3:
                request.ctx.association.abort()
            await asyncio.sleep(0.01)
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            yield match

    registry = HandlerRegistry()
    register_find(registry, matches)
    async with Server("QR", handlers=registry, contexts=qr_server_contexts(registry)) as server:
        got = 0
        with pytest.raises(AssociationAborted) as info:
            async with connect_qr("127.0.0.1", server.port, called_ae="QR") as assoc:
                async for _match in assoc.find(study_query()):
                    got += 1
        assert got == 3
        assert info.value.source == 0  # A-ABORT from the service user
        assert isinstance(assoc.error, AssociationAborted) and not assoc.is_established
        async with connect_qr("127.0.0.1", server.port, called_ae="QR") as again:
            assert await again.echo() == 0


async def test_a_connection_cut_mid_store_leaves_no_file(archive: Archive) -> None:
    async with archive_server(archive, "ARCHIVE") as server:
        with pytest.raises(AssociationAborted):
            async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                               sop_classes=[CT]) as assoc:
                async def cut() -> None:
                    await until(lambda: assoc.protocol.writing_paused and server.associations)
                    for theirs in server.associations:
                        theirs.protocol.transport.abort()  # TCP gone, no A-ABORT

                cutter = asyncio.create_task(cut())
                await assoc.store(instance(pixels=30_000_000))
        await cutter
        await no_association(server)
        assert archived(archive.storage_dir) == []
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[CT]) as again:
            assert await again.store(instance(1)) == 0


async def test_a_silent_peer_gives_dimse_timeout_and_stays_ended() -> None:
    async with slow_server(echo_delay=100) as server:
        started = time.monotonic()
        with pytest.raises(DimseTimeout, match="no response within 0.3 s") as info:
            async with connect("127.0.0.1", server.port, called_ae="QR",
                               dimse_timeout=0.3) as assoc:
                await assoc.echo()
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - started < 5
        assert isinstance(assoc.error, AssociationAborted) and not assoc.is_established
        with pytest.raises(AssociationAborted, match="DIMSE timeout"):
            await assoc.echo()
        await no_association(server)


async def test_store_many_interrupted_by_a_peer_abort_says_what_was_stored() -> None:
    seen: list[str] = []

    async def on_store(rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        seen.append(rq.affected_sop_instance_uid)
        if len(seen) == 3:
            ctx.association.abort()
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)
    async with Server("SRV", handlers=registry) as server:
        with pytest.raises(AssociationAborted) as info:
            async with connect("127.0.0.1", server.port, called_ae="SRV",
                               sop_classes=[CT]) as assoc:
                await assoc.store_many(instance(i) for i in range(10))
        assert info.value.completed == ((0, 0), (1, 0))  # type: ignore[attr-defined]


@pytest.mark.parametrize("window", [None, (4, 4)])
async def test_store_many_whose_source_fails_says_what_was_stored(
        window: tuple[int, int] | None) -> None:
    def source() -> Iterator[Dataset]:
        for i in range(10):
            if i == 4:
                raise ValueError("source broke")
            yield instance(i)

    async def on_store(rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)
    async with Server("SRV", handlers=registry, async_window=window) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", async_window=window,
                           sop_classes=[CT, VERIFICATION]) as assoc:
            with pytest.raises(ValueError, match="source broke") as info:
                await assoc.store_many(source())
            assert info.value.completed == tuple((i, 0) for i in range(4))  # type: ignore[attr-defined]
            assert await assoc.echo() == 0  # nothing was cut mid-message


class _FailingSink:
    """A sink whose third write fails (a full disk)."""

    def __init__(self) -> None:
        self.writes = 0
        self.discarded = False

    def write(self, fragment: memoryview) -> None:
        self.writes += 1
        if self.writes == 3:
            raise OSError("no space left on device")

    def finish(self) -> None:
        pass

    def commit(self) -> None:
        raise AssertionError("a failed transfer is never committed")

    def discard(self) -> None:
        self.discarded = True


async def test_a_failing_sink_fails_the_store_and_the_association_lives() -> None:
    sinks: list[_FailingSink] = []
    handled: list[str] = []

    def open_sink(request: CStoreRQ, ctx: RequestContext) -> _FailingSink:
        sinks.append(_FailingSink())
        return sinks[-1]

    async def on_store(rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        handled.append(rq.affected_sop_instance_uid)
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store, sink=open_sink)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           sop_classes=[CT, VERIFICATION]) as assoc:
            assert await assoc.store(instance(pixels=2_000_000)) == 0xA700
            assert await assoc.echo() == 0
    assert handled == []  # the handler is not called for a data set that was not kept
    assert [(s.writes, s.discarded) for s in sinks] == [(3, True)]


async def test_a_slow_consumer_is_not_a_dimse_timeout() -> None:
    """Reading pauses while matches wait for the consumer; the DIMSE timer waits too."""
    async with slow_server(count=300, delay=0) as server, connect_qr(
            "127.0.0.1", server.port, called_ae="QR", dimse_timeout=0.3) as assoc:
        count = 0
        async for _match in assoc.find(study_query()):
            count += 1
            await asyncio.sleep(0.005)  # 1.5 s in all, five DIMSE timeouts
        assert count == 300


async def test_an_invalid_ae_title_is_refused_before_connecting() -> None:
    listener, port, closed = await _silent_listener()
    async with listener:
        with pytest.raises(PduEncodeError, match="not an AE title"):
            await connect("127.0.0.1", port, called_ae="X" * 17)
        with pytest.raises(PduEncodeError, match="called_ae is empty"):
            await connect("127.0.0.1", port, called_ae="")
        await asyncio.sleep(0.05)
        assert not closed.is_set()  # nobody connected


# -- 3. the body of the async with raises -------------------------------------------------------
async def test_a_failing_body_keeps_its_exception_and_aborts(
        caplog: pytest.LogCaptureFixture) -> None:
    class BodyError(Exception):
        pass

    async with Server("SRV") as server:
        with pytest.raises(BodyError) as info:
            async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
                assert await assoc.echo() == 0
                raise BodyError("mine")
        assert info.value.__context__ is None  # nothing raised on top of it
        assert isinstance(assoc.error, AssociationAborted)
        await no_association(server)
    ends = [r.getMessage() for r in caplog.records if "ended:" in r.getMessage()]
    assert len(ends) == 1 and "A-ABORT from the peer" in ends[0]


async def test_a_failing_body_after_the_peer_aborted_keeps_its_exception() -> None:
    class BodyError(Exception):
        pass

    async with Server("SRV") as server:
        with pytest.raises(BodyError):
            async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
                assert await assoc.echo() == 0
                for theirs in server.associations:
                    theirs.abort()
                async with asyncio.timeout(5):
                    await assoc.wait_closed()
                raise BodyError("mine")


async def test_calls_after_the_block_say_released() -> None:
    async with Server("SRV") as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="SRV") as assoc:
            pass
        with pytest.raises(AssociationError, match="released"):
            await assoc.echo()
        with pytest.raises(AssociationError, match="released"):
            assoc.find(study_query())  # at once, nothing sent


# -- 4. server lifecycle -------------------------------------------------------------------------
async def test_close_ends_finds_in_progress_at_once() -> None:
    server = await slow_server(count=10_000, delay=0.005).start()
    assocs = [await connect_qr("127.0.0.1", server.port, called_ae="QR") for _ in range(5)]
    streams = [assoc.find(study_query()) for assoc in assocs]
    for stream in streams:
        await anext(stream)
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2
    for stream in streams:
        with pytest.raises(AssociationAborted):
            async for _match in stream:
                pass
    for assoc in assocs:
        await assoc.aclose()
    assert not server.associations


async def test_close_during_a_half_streamed_store_leaves_no_file(archive: Archive) -> None:
    server = await archive_server(archive, "ARCHIVE").start()
    with pytest.raises(AssociationAborted):
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[CT]) as assoc:
            async def close() -> float:
                await until(lambda: assoc.protocol.writing_paused)
                started = time.monotonic()
                await server.close()
                return time.monotonic() - started

            closing = asyncio.create_task(close())
            await assoc.store(instance(pixels=30_000_000))
    assert await closing < 2
    assert archived(archive.storage_dir) == []


async def test_a_closed_server_can_start_again() -> None:
    server = Server("SRV")
    await server.start()
    await server.close()
    await server.start()
    try:
        async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
            assert await assoc.echo() == 0
    finally:
        await server.close()


async def test_one_failing_handler_does_not_disturb_other_peers() -> None:
    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        if ctx.calling_ae == "BAD":
            raise RuntimeError("handler bug")
        await asyncio.sleep(0.02)
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    async with Server("SRV", handlers=registry) as server:
        async def three_echoes(ae: str) -> list[int]:
            async with connect("127.0.0.1", server.port, called_ae="SRV", calling_ae=ae) as a:
                return [await a.echo() for _ in range(3)]

        results = await asyncio.gather(three_echoes("BAD"), three_echoes("GOOD1"),
                                       three_echoes("GOOD2"))
    assert results == [[0x0110] * 3, [0] * 3, [0] * 3]


# -- 5. concurrency --------------------------------------------------------------------------------
async def test_fifty_concurrent_finds_against_one_archive(archive: Archive) -> None:
    studies: dict[str, str] = {}
    for i in range(10):
        ds = instance(i, name=f"DOE^{i:02d}")
        archive.store(ds)
        studies[str(ds.StudyInstanceUID)] = f"DOE^{i:02d}"
    async with archive_server(archive, "ARCHIVE") as server:
        async def one(k: int) -> tuple[int, list[tuple[str, str]]]:
            name = f"DOE^{k % 10:02d}" if k % 2 else "DOE*"
            async with connect_qr("127.0.0.1", server.port, called_ae="ARCHIVE",
                                  calling_ae=f"C{k}", connect_timeout=20) as assoc:
                found = [(str(m.PatientName), str(m.StudyInstanceUID))
                         async for m in assoc.find(study_query(name))]
            return k, sorted(found)

        results = await asyncio.gather(*(one(k) for k in range(50)))
        await no_association(server)
    every = sorted((name, uid) for uid, name in studies.items())
    for k, found in results:
        expected = every if k % 2 == 0 else [m for m in every if m[0] == f"DOE^{k % 10:02d}"]
        assert found == expected, k
