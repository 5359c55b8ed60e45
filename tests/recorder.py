"""An asyncio TCP proxy on 127.0.0.1 that records every byte in both directions.

Used to capture real peers' PDUs (tests/fixtures/capture.py) and by interop tests that want
to look at the wire. Splitting into PDUs uses only the 6-byte header (type, reserved,
uint32 BE length): it is independent of the pdu package under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

LOCALHOST = "127.0.0.1"
_HEADER = struct.Struct(">BxL")


class Direction(Enum):
    """Which way bytes flowed through the proxy."""

    TO_SERVER = "requestor->acceptor"  # from the side that connected to the proxy
    TO_CLIENT = "acceptor->requestor"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One read from a socket: global sequence number, monotonic time, direction, bytes."""

    seq: int
    time: float
    connection: int
    direction: Direction
    data: bytes


@dataclass(frozen=True, slots=True)
class RecordedPdu:
    """One whole PDU; `seq` is the sequence number of the chunk that completed it."""

    seq: int
    time: float
    connection: int
    direction: Direction
    data: bytes

    @property
    def pdu_type(self) -> int:
        return self.data[0]


@dataclass(slots=True)
class Connection:
    """Everything recorded on one proxied TCP connection."""

    number: int
    chunks: list[Chunk] = field(default_factory=list)
    closed: bool = False

    def stream(self, direction: Direction) -> bytes:
        """All bytes sent in `direction`, concatenated."""
        return b"".join(c.data for c in self.chunks if c.direction is direction)

    def pdus(self) -> list[RecordedPdu]:
        """Both directions split into whole PDUs, in the order they were completed."""
        out: list[RecordedPdu] = []
        for direction in Direction:
            out.extend(self._split(direction))
        out.sort(key=lambda p: p.seq)
        return out

    def trailing(self, direction: Direction) -> bytes:
        """Bytes after the last whole PDU in `direction` (a truncated PDU, normally empty)."""
        data = self.stream(direction)
        offset = 0
        for length in _pdu_lengths(data):
            offset += length
        return data[offset:]

    def _split(self, direction: Direction) -> Iterator[RecordedPdu]:
        chunks = [c for c in self.chunks if c.direction is direction]
        data = b"".join(c.data for c in chunks)
        ends = list(itertools.accumulate(len(c.data) for c in chunks))
        offset = 0
        chunk_index = 0
        for length in _pdu_lengths(data):
            end = offset + length
            while ends[chunk_index] < end:
                chunk_index += 1
            done = chunks[chunk_index]
            yield RecordedPdu(done.seq, done.time, self.number, direction, data[offset:end])
            offset = end


def _pdu_lengths(data: bytes) -> Iterator[int]:
    """Total sizes (header included) of the whole PDUs at the start of `data`."""
    offset = 0
    while len(data) - offset >= _HEADER.size:
        _, length = _HEADER.unpack_from(data, offset)
        total = _HEADER.size + length
        if len(data) - offset < total:
            return
        yield total
        offset += total


def split_pdus(data: bytes) -> list[bytes]:
    """Split a byte stream into whole PDUs by their 6-byte headers (leftover is dropped)."""
    out = []
    offset = 0
    for length in _pdu_lengths(data):
        out.append(data[offset : offset + length])
        offset += length
    return out


class RecordingProxy:
    """Listen on 127.0.0.1:<free port>, forward each connection to target, record all bytes."""

    def __init__(self, target_port: int, target_host: str = LOCALHOST) -> None:
        self.target = (target_host, target_port)
        self.connections: list[Connection] = []
        self._seq = itertools.count()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Start listening (port 0 = pick a free one); return the port."""
        self._server = await asyncio.start_server(self._handle, LOCALHOST, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and wait (bounded) for the open connections to finish."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    def pdus(self) -> list[RecordedPdu]:
        """All PDUs of all connections, in completion order."""
        out = [p for conn in self.connections for p in conn.pdus()]
        out.sort(key=lambda p: p.seq)
        return out

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(len(self.connections))
        self.connections.append(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            conn.closed = True
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, conn, Direction.TO_SERVER),
                self._pump(up_reader, writer, conn, Direction.TO_CLIENT),
            )
        finally:
            for w in (writer, up_writer):
                w.close()
            conn.closed = True
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        direction: Direction,
    ) -> None:
        try:
            while data := await reader.read(65536):
                conn.chunks.append(Chunk(next(self._seq), time.monotonic(), conn.number,
                                         direction, data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
            # A reset on one side ends the other: close it so the peer sees the same.
            with contextlib.suppress(OSError, RuntimeError):
                if reader.at_eof() is False:
                    writer.close()


class ThreadedRecorder:
    """A RecordingProxy running on its own event loop in a daemon thread (for sync callers)."""

    def __init__(self, target_port: int, target_host: str = LOCALHOST) -> None:
        self.proxy = RecordingProxy(target_port, target_host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.port

    def start(self, timeout: float = 5.0) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        return fut.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.proxy.stop(timeout / 2), self._loop)
        try:
            fut.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def wait_closed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until at least `count` connections were made and all of them closed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conns = list(self.proxy.connections)
            if len(conns) >= count and all(c.closed for c in conns):
                return
            time.sleep(0.02)
        raise TimeoutError(f"recorder: connections not closed after {timeout}s")

    def pdus(self) -> list[RecordedPdu]:
        return self.proxy.pdus()


@contextlib.contextmanager
def recording(target_port: int, target_host: str = LOCALHOST) -> Iterator[ThreadedRecorder]:
    """`with recording(port) as rec:` connect peers to rec.port; read rec.pdus() afterwards."""
    rec = ThreadedRecorder(target_port, target_host)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()
