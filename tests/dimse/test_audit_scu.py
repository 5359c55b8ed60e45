"""SCU defects found by an audit: sends interrupted mid-message, peer release, stalled peers,
Pending C-STORE responses, data sets without UIDs, and store_many's partial outcomes and laziness.

The peers are either our own :class:`~dimse.server.Server` or raw asyncio peers that speak just
enough of the upper layer (A-ASSOCIATE-AC, P-DATA-TF, A-RELEASE) to misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
from pydicom.dataset import Dataset

from dimse.connect import connect
from dimse.errors import (
    AssociationAborted,
    AssociationError,
    DataSetEncodeError,
    DimseTimeout,
    NotNegotiatedError,
)
from dimse.messages import CStoreRQ
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet, RequestContext
from pdu.errors import ProtocolError

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
pytestmark = pytest.mark.timeout(60)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def make_ds(n: int = 1, size: int = 64, sop_class: str = CT) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.77.{n}"
    ds.PatientID = f"P{n}"
    ds.BitsAllocated = 16
    ds.PixelData = bytes(size)
    return ds


# -- a raw upper-layer peer ---------------------------------------------------------------------
def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


RELEASE_RQ = _pdu(5, bytes(4))
RELEASE_RP = _pdu(6, bytes(4))


async def read_pdu(reader: Reader) -> tuple[int, bytes]:
    """One PDU (type, body); (-1, b"") at EOF."""
    try:
        header = await reader.readexactly(6)
        kind, _, length = struct.unpack(">BBI", header)
        return kind, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return -1, b""


def associate_ac(rq_body: bytes) -> bytes:
    """An A-ASSOCIATE-AC accepting every proposed context in explicit VR little endian."""
    accepted = b""
    pos = 68
    while pos + 4 <= len(rq_body):
        kind, length = rq_body[pos], struct.unpack(">H", rq_body[pos + 2:pos + 4])[0]
        if kind == 0x20:
            cx_id = rq_body[pos + 4]
            accepted += _item(0x21, bytes([cx_id, 0, 0, 0]) + _item(0x40, EXPLICIT_LE))
        pos += 4 + length
    user = _item(0x50, _item(0x51, struct.pack(">I", 65536)) + _item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + rq_body[4:36] + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + accepted + user)
    return _pdu(2, body)


async def accept(reader: Reader, writer: Writer) -> None:
    kind, body = await read_pdu(reader)
    assert kind == 1
    writer.write(associate_ac(body))
    await writer.drain()


def _element(tag: int, value: int | str) -> bytes:
    if isinstance(value, int):
        raw = struct.pack("<H", value)
    else:
        raw = value.encode() + (b"\0" if len(value) % 2 else b"")
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def store_rsp(context_id: int, message_id: int, status: int) -> bytes:
    """A P-DATA-TF with a C-STORE-RSP command (implicit VR little endian, group length)."""
    elements = {0x00000002: CT, 0x00000100: 0x8001, 0x00000120: message_id,
                0x00000800: 0x0101, 0x00000900: status}
    body = b"".join(_element(t, v) for t, v in sorted(elements.items()))
    command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    return _pdu(4, struct.pack(">IBB", len(command) + 2, context_id, 3) + command)


async def read_message(reader: Reader) -> tuple[int, int] | None:
    """Read P-DATA until a message ends: (context ID, message ID of its command), None at EOF.

    Stops after the last fragment of the data set (or of the command when the command
    carries no data set, i.e. CommandDataSetType 0x0101).
    """
    command = b""
    context_id = 0
    has_dataset = True
    while True:
        kind, body = await read_pdu(reader)
        if kind != 4:
            return None
        pos = 0
        while pos < len(body):
            length, context_id, flags = struct.unpack(">IBB", body[pos:pos + 6])
            value = body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if flags & 1:
                command += value
                if flags & 2:
                    has_dataset = b"\x00\x08\x00\x00\x02\x00\x00\x00\x01\x01" not in command
                    if not has_dataset:
                        return context_id, _message_id(command)
            elif flags & 2:
                return context_id, _message_id(command)


def _message_id(command: bytes) -> int:
    at = command.index(b"\x00\x00\x10\x01\x02\x00\x00\x00")
    return int(struct.unpack("<H", command[at + 8:at + 10])[0])


@asynccontextmanager
async def raw_peer(script: Callable[[Reader, Writer], Awaitable[None]]) -> AsyncIterator[int]:
    """Serve ``script`` on a free port of 127.0.0.1; yields the port."""
    tasks: list[asyncio.Task[None]] = []

    async def serve(reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)  # type: ignore[arg-type]
        try:
            await script(reader, writer)
        except asyncio.CancelledError:
            pass  # the test is over (a cancelled task here would be logged by asyncio)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- 1. a send cancelled mid-message aborts; cancelled before its first fragment it does not -----
async def test_store_cancelled_mid_send_aborts_the_association() -> None:
    go = asyncio.Event()
    seen: list[int] = []

    async def peer(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        await go.wait()  # read nothing until the SCU has cancelled its store
        while (kind := (await read_pdu(reader))[0]) != -1:
            seen.append(kind)

    async with raw_peer(peer) as port:
        assoc = await connect("127.0.0.1", port, called_ae="RAW", sop_classes=[CT],
                              dimse_timeout=5)
        try:
            store = asyncio.create_task(assoc.store(make_ds(size=20_000_000)))
            await until(lambda: assoc.protocol.writing_paused, "the transport to pause")
            store.cancel()
            with pytest.raises(asyncio.CancelledError):
                await store
            assert not assoc.is_established
            assert isinstance(assoc.error, AssociationAborted)
            with pytest.raises(AssociationAborted, match="stopped after some of its fragments"):
                await assoc.store(make_ds(2))
        finally:
            go.set()
            await asyncio.wait_for(assoc.aclose(), 10)
        await until(lambda: bool(seen) and seen[-1] == 7, "the peer to see the A-ABORT")
        assert set(seen) == {4, 7} and seen.index(7) == len(seen) - 1  # whole PDUs, then abort


async def test_store_cancelled_before_its_first_fragment_keeps_the_association() -> None:
    registry = HandlerRegistry()
    registry.on_store(lambda rq, ds, ctx: 0)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           sop_classes=["1.2.840.10008.1.1", CT], dimse_timeout=10) as assoc:
            first = asyncio.create_task(assoc.store(make_ds(1, size=8_000_000)))
            await until(lambda: assoc.protocol.writing_paused or first.done(), "sending")
            second = asyncio.create_task(assoc.store(make_ds(2)))  # waits for the window
            await asyncio.sleep(0)
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert await asyncio.wait_for(first, 20) == 0
            assert assoc.is_established and assoc.error is None
            assert await assoc.echo() == 0
            assert await assoc.store(make_ds(3)) == 0


# -- 2. after the peer released, calls fail typed and release() returns at once ----------------
async def _peer_releases(reader: Reader, writer: Writer) -> None:
    await accept(reader, writer)
    writer.write(RELEASE_RQ)
    await writer.drain()
    assert (await read_pdu(reader))[0] == 6
    await reader.read()  # keep the connection open until the SCU closes it


async def test_calls_after_the_peer_released_raise_association_error() -> None:
    async with raw_peer(_peer_releases) as port:
        assoc = await connect("127.0.0.1", port, called_ae="RAW",
                              sop_classes=["1.2.840.10008.1.1", CT], dimse_timeout=0.5)
        try:
            await until(lambda: not assoc.is_established, "the peer's release")
            for call in (lambda: assoc.store(make_ds()), assoc.echo):
                with pytest.raises(AssociationError, match="released by the peer") as info:
                    await call()
                assert not isinstance(info.value, ProtocolError)
            await assoc.release()  # no DimseTimeout: nothing left to release
            assert assoc.error is None
        finally:
            await asyncio.wait_for(assoc.aclose(), 10)


async def test_leaving_async_with_after_the_peer_released_does_not_wait() -> None:
    async with raw_peer(_peer_releases) as port:
        async with connect("127.0.0.1", port, called_ae="RAW", dimse_timeout=0.5) as assoc:
            await until(lambda: not assoc.is_established, "the peer's release")
        assert assoc.error is None  # released normally, no DimseTimeout raised
        await asyncio.wait_for(assoc.aclose(), 10)


# -- 3. a peer that stops reading: DimseTimeout while sending ----------------------------------
async def test_peer_that_stops_reading_times_out_the_send() -> None:
    async def peer(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        await asyncio.Event().wait()  # never reads again

    async with raw_peer(peer) as port:
        assoc = await connect("127.0.0.1", port, called_ae="RAW", sop_classes=[CT],
                              dimse_timeout=0.5)
        try:
            with pytest.raises(DimseTimeout, match="read nothing"):
                await asyncio.wait_for(assoc.store(make_ds(size=20_000_000)), 20)
            assert isinstance(assoc.error, AssociationAborted)
            with pytest.raises(AssociationAborted):
                await assoc.echo()
        finally:
            assoc.protocol.close_transport()


# -- 4. a C-STORE-RSP is final whatever its status ----------------------------------------------
async def test_pending_store_response_is_final() -> None:
    async def peer(reader: Reader, writer: Writer) -> None:
        await accept(reader, writer)
        while (message := await read_message(reader)) is not None:
            context_id, message_id = message
            writer.write(store_rsp(context_id, message_id, 0xFF00))
            writer.write(store_rsp(context_id, message_id, 0xFF00))  # a stray second one
            await writer.drain()
            if message_id == 2:
                break
        assert (await read_pdu(reader))[0] == 5
        writer.write(RELEASE_RP)
        await writer.drain()

    async with raw_peer(peer) as port:
        async with connect("127.0.0.1", port, called_ae="RAW", sop_classes=[CT],
                           dimse_timeout=0.5) as assoc:
            assert await asyncio.wait_for(assoc.store(make_ds(1)), 10) == 0xFF00
            assert await asyncio.wait_for(assoc.store(make_ds(2)), 10) == 0xFF00
            assert assoc.error is None




# -- 5. a data set without its UIDs: a typed error before anything is sent ----------------------
class Stores:
    """A C-STORE handler recording the instance numbers it stored (and what the test wants)."""

    def __init__(self, status: int = 0, abort_at: int | None = None) -> None:
        self.stored: list[int] = []
        self.status = status
        self.abort_at = abort_at

    def __call__(self, rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        number = int(str(rq.affected_sop_instance_uid).rsplit(".", 1)[1])
        if number == self.abort_at:
            ctx.association.abort()
            return 0
        self.stored.append(number)
        return self.status


@asynccontextmanager
async def store_server(handler: Stores, window: tuple[int, int] = (1, 1)
                       ) -> AsyncIterator[int]:
    registry = HandlerRegistry()
    registry.on_store(handler)
    async with Server("SRV", handlers=registry, async_window=window) as server:
        yield server.port


@pytest.mark.parametrize(("missing", "tag"), [("SOPClassUID", 0x00080016),
                                              ("SOPInstanceUID", 0x00080018)])
@pytest.mark.parametrize("empty", [False, True])
async def test_store_without_a_uid_raises_a_typed_error_before_sending(
        missing: str, tag: int, empty: bool) -> None:
    handler = Stores()
    ds = make_ds(1)
    if empty:
        setattr(ds, missing, "")
    else:
        delattr(ds, missing)
    async with store_server(handler) as port:
        async with connect("127.0.0.1", port, called_ae="SRV",
                           sop_classes=["1.2.840.10008.1.1", CT], dimse_timeout=5) as assoc:
            with pytest.raises(DataSetEncodeError, match=missing) as info:
                await assoc.store(ds)
            assert isinstance(info.value, ValueError) and info.value.tag == tag
            assert not assoc._pending and assoc.is_established
            assert await assoc.echo() == 0
    assert handler.stored == []


# -- 6. store_many: the outcomes known before an error travel with it --------------------------
async def test_store_many_error_carries_the_completed_statuses() -> None:
    handler = Stores(status=0xB000)
    items = [make_ds(1), make_ds(2), make_ds(3, sop_class=MR), make_ds(4)]
    async with store_server(handler) as port:
        async with connect("127.0.0.1", port, called_ae="SRV", sop_classes=[CT],
                           dimse_timeout=5) as assoc:
            with pytest.raises(NotNegotiatedError) as info:
                await assoc.store_many(items)
    assert info.value.completed == ((0, 0xB000), (1, 0xB000))  # type: ignore[attr-defined]
    assert handler.stored == [1, 2]


async def test_store_many_abort_carries_the_completed_statuses() -> None:
    handler = Stores(abort_at=3)
    async with store_server(handler) as port:
        assoc = await connect("127.0.0.1", port, called_ae="SRV", sop_classes=[CT],
                              dimse_timeout=5)
        try:
            with pytest.raises(AssociationAborted) as info:
                await assoc.store_many(make_ds(n) for n in range(1, 6))
        finally:
            await asyncio.wait_for(assoc.aclose(), 10)
    assert info.value.completed == ((0, 0), (1, 0))  # type: ignore[attr-defined]
    assert handler.stored == [1, 2]


async def test_store_many_in_a_window_raises_the_error_itself_with_completed() -> None:
    handler = Stores()
    items = [make_ds(n, sop_class=MR if n == 6 else CT) for n in range(1, 11)]
    async with store_server(handler, window=(4, 4)) as port:
        async with connect("127.0.0.1", port, called_ae="SRV", sop_classes=[CT],
                           async_window=(4, 4), dimse_timeout=5) as assoc:
            with pytest.raises(NotNegotiatedError) as info:  # not an ExceptionGroup
                await assoc.store_many(items)
            assert await assoc.store(make_ds(11)) == 0
    completed = info.value.completed  # type: ignore[attr-defined]
    assert completed == tuple(sorted(completed)) and all(s == 0 for _, s in completed)
    assert {index + 1 for index, _ in completed} <= set(handler.stored)
    assert 5 not in {index for index, _ in completed}  # the MR instance never went out


# -- 7. store_many consumes its iterable lazily --------------------------------------------------
@pytest.mark.parametrize("window", [1, 4])
async def test_store_many_pulls_at_most_the_window_ahead(window: int) -> None:
    pulled = 0
    pulled_at_store: list[int] = []

    class Counting(Stores):
        def __call__(self, rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
            pulled_at_store.append(pulled)
            return super().__call__(rq, ds, ctx)

    def generate() -> Iterator[Dataset]:
        nonlocal pulled
        for n in range(1, 11):
            pulled += 1
            yield make_ds(n)

    handler = Counting()
    async with store_server(handler, window=(window, window)) as port:
        async with connect("127.0.0.1", port, called_ae="SRV", sop_classes=[CT],
                           async_window=(window, window), dimse_timeout=5) as assoc:
            assert await assoc.store_many(generate()) == [0] * 10
    assert sorted(handler.stored) == list(range(1, 11))
    # the sequential path encodes one data set ahead; a window of N has N in flight
    assert pulled_at_store[0] <= max(window, 2)
    assert all(p - i <= max(window, 2) for i, p in enumerate(pulled_at_store))
