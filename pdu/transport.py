"""The asyncio shell around the sans-IO upper-layer core (``pdu.machine``).

``UpperLayerProtocol`` is an :class:`asyncio.BufferedProtocol` (callbacks, not streams: this is
the hot path). It feeds received bytes to :meth:`UpperLayerMachine.receive_data`, then drains the core's
outbox: bytes go to ``transport.write``, ARTIM start/stop become ``loop.call_later`` handles,
``CloseTransport`` closes the socket, and every indication is handed to the owner through the
``on_indication`` callback (synchronously, in order).

Back-pressure runs both ways: the owner calls :meth:`pause_reading`/:meth:`resume_reading` when
it falls behind, and awaits :meth:`drain` before sending more P-DATA when the socket's write
buffer is above its high-water mark (``pause_writing``/``resume_writing``).

Delayed ACKs: a peer that does not set TCP_NODELAY (DCMTK storescu/storescp, pynetdicom) writes
a C-STORE command and its data set separately, and Nagle holds the second write until our ACK of
the first, which Linux delays by up to 40 ms. So on Linux we set TCP_QUICKACK (which the kernel
clears again by itself, and which also sends the pending ACK) after handling each read that we
did not answer on the spot: storescu -> our server went from ~23 to thousands of small
instances per second (benchmarks/RESULTS-e2e.md).

Receive buffer: a plain :class:`asyncio.Protocol` gets a new ``bytes`` from ``recv(262144)``
per read, and allocating (then shrinking) a 256 KiB object each time cost asyncio's default loop
20-40 us per read on Linux (a 10 KB request/response round trip: ~60 us -> ~20 us without it).
So the socket is read into one reusable buffer per thread (:class:`_ReadBuffer`) and each read
is copied out as ``bytes`` of its actual size.

This is the only module of ``pdu`` that knows about asyncio and sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

from .errors import LocalProtocolError
from .fsm import State
from .machine import (
    CloseTransport,
    ConnectTransport,
    Output,
    SendBytes,
    StartArtim,
    StopArtim,
    UpperLayerMachine,
)
from .pdus import PDataTF

__all__ = ["UpperLayerProtocol", "configure_socket"]

log = logging.getLogger(__name__)

#: States where a P-DATA request is a plain "send the bytes" (DT-1 in Sta6, AR-7 in Sta8) that
#: changes nothing in the core: the fast path writes them straight to the socket.
_PDATA_SEND_STATES = frozenset({State.STA6, State.STA8})

#: Linux only; None elsewhere (then no quick ACKs are requested).
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes written to ``transport`` and not yet sent (0 when it cannot tell: a TLS transport
    whose connection is gone)."""
    try:
        return cast(asyncio.WriteTransport, transport).get_write_buffer_size()
    except (AttributeError, NotImplementedError):
        return 0


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

Indication = Callable[[Output], None]


def configure_socket(transport: asyncio.BaseTransport, *, keepalive: bool = False) -> None:
    """Set TCP_NODELAY (DIMSE is request/response: Nagle only adds latency) and SO_KEEPALIVE."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:  # pragma: no cover - e.g. a non-TCP socket in tests
        log.debug("could not set socket options", exc_info=True)


#: Size of the shared receive buffer: as much as asyncio's own reads take at once.
READ_BUFFER_SIZE = 256 * 1024


class _ReadBuffer(threading.local):
    """One receive buffer per thread (an event loop runs in one thread). Sharing it is safe
    because every loop (asyncio's selector loop, its SSL layer, uvloop) asks for the buffer,
    reads into it and reports the byte count in one go, before any other protocol runs; the
    bytes are copied out at once. A read that fails (EAGAIN, EOF) reports nothing and leaves
    nothing behind."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_BUFFER_SIZE))


_READ_BUFFER = _ReadBuffer()


class UpperLayerProtocol(asyncio.BufferedProtocol):
    """Bytes <-> ``UpperLayerMachine``; outbox -> socket, timers and the owner's callback."""

    def __init__(
        self,
        machine: UpperLayerMachine,
        on_indication: Indication,
        *,
        keepalive: bool = False,
        on_pdata: Callable[[PDataTF], None] | None = None,
    ) -> None:
        """``on_pdata`` (optional) receives the P-DATA-TF PDUs of an established association
        directly (the machine's fast path); other indications go to ``on_indication``."""
        self.machine = machine
        machine.pdata_handler = on_pdata
        self._on_indication = on_indication
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._artim: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._connection_lost = False
        self._flushing = False
        self._quickack: Any = None  # the TCP socket to re-arm TCP_QUICKACK on, if any
        self._writes = 0  # transport.write calls so far
        #: Resolved when the socket is closed (never raises).
        self.closed: asyncio.Future[None] = self._loop.create_future()
        #: Called once the connection is usable, before the core hears of it. Over TLS that is
        #: after the handshake: asyncio builds the protocol at accept time and, when the
        #: handshake fails, never calls ``connection_made`` nor ``connection_lost``, so an
        #: owner (the server) must not count the connection as open before this.
        self.on_connected: Callable[[], None] | None = None
        #: Bytes received so far (tells "closed without answering" from an answer).
        self.bytes_received = 0
        #: The error the connection was lost with (e.g. a TLS alert), None after a clean close.
        self.lost_reason: Exception | None = None
        #: Whether the ARTIM timer expired (the peer's silence ended the connection).
        self.artim_fired = False
        #: The core's state when the connection was lost (Sta13: we had already ended it).
        self.state_at_close: State | None = None

    # -- asyncio.Protocol callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not isinstance(..., asyncio.Transport): uvloop's transports do not derive from it
        self.transport = cast(asyncio.Transport, transport)
        configure_socket(transport, keepalive=self._keepalive)
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is not None and sock is not None and sock.family in _TCP_FAMILIES:
            self._quickack = sock
        if self.on_connected is not None:
            self.on_connected()
        self.machine.transport_connected()
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER.view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        writes = self._writes
        self.bytes_received += len(data)
        self.machine.receive_data(data)
        self.flush()
        sock = self._quickack
        if sock is not None and self._writes == writes:
            # Nothing sent back while handling this read: ACK it at once rather than after
            # the delayed-ACK timeout (see the module docstring). When we did answer, the ACK
            # went out with the answer and the system call is saved.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._quickack = None

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        self.lost_reason = exc
        self._cancel_artim()
        self.state_at_close = self.machine.state
        if self.machine.state != State.STA1:
            self.machine.transport_closed()
            self.flush()
        self._wake_drain(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    # -- outbox ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Carry out everything the core has queued, in order.

        Re-entrant: an indication handler may call a primitive (e.g. ``release_response``);
        its outputs are queued in the core and carried out by the outer loop, after the
        outputs that were already taken, so the order of the outbox is kept.
        """
        if self._flushing:
            return
        self._flushing = True
        try:
            while outputs := self.machine.take_outputs():
                for out in outputs:
                    self._carry_out(out)
        finally:
            self._flushing = False

    def _carry_out(self, out: Output) -> None:
        if isinstance(out, SendBytes):
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self._write(transport, out.data)
        elif isinstance(out, StartArtim):
            self._cancel_artim()
            self._artim = self._loop.call_later(out.seconds, self._artim_expired)
        elif isinstance(out, StopArtim):
            self._cancel_artim()
        elif isinstance(out, CloseTransport):
            self._close()
        elif not isinstance(out, ConnectTransport):  # the owner opens the connection itself
            self._on_indication(out)

    def _write(self, transport: asyncio.Transport, data: bytes | bytearray | memoryview) -> None:
        try:
            transport.write(data)
        except RuntimeError as exc:
            # uvloop: a connect cancelled by its timeout closes the handle before
            # connection_lost arrives (and is_closing() is still False); nothing can be sent
            log.debug("write on a closed transport dropped (%d bytes): %s", len(data), exc)
            return
        self._writes += 1

    def _artim_expired(self) -> None:
        self._artim = None
        self.artim_fired = True
        self.machine.artim_expired()
        self.flush()

    def _cancel_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    # -- the owner's primitives --------------------------------------------------------------
    def send_pdata_bytes(self, data: bytes | memoryview) -> None:
        """Send encoded P-DATA-TF PDUs (Evt9; one, or several back to back in one write),
        without a dataclass per PDU when possible."""
        transport = self.transport
        if transport is not None and self.machine.state in _PDATA_SEND_STATES:
            if not transport.is_closing():
                self._write(transport, data)
            return
        self.machine.send_pdata_bytes(data)  # raises LocalProtocolError in other states
        self.flush()

    def call(self, primitive: Callable[..., Any], *args: Any) -> None:
        """Run a local primitive of the core (accept, release_request...) and flush its outputs."""
        try:
            primitive(*args)
        finally:
            self.flush()

    def abort(self) -> None:
        """A-ABORT (Evt15); harmless when there is nothing to abort."""
        try:
            self.machine.abort()
        except LocalProtocolError:
            pass
        self.flush()
        if self.machine.state == State.STA1:
            self._close()

    def close_transport(self) -> None:
        """Close the socket now (after a local error, an abort, or when the server stops). What
        is still unsent may flush for at most the ARTIM timeout; then the socket is reset."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if _unsent(transport):
            self._loop.call_later(self.machine.artim_timeout, self._reset, transport)

    def _reset(self, transport: asyncio.Transport) -> None:
        if not self._connection_lost:
            transport.abort()

    def _close(self) -> None:
        """The core's "close transport": at once, dropping what is still unsent. By then (ARTIM
        expired, the peer aborted or answered our release) the peer has had its time to read
        it, and ``close()`` alone would wait for a peer that may never read: the socket would
        stay open however long it kept silent (PS3.8 9.1.4: ARTIM bounds that wait)."""
        transport = self.transport
        if transport is None:
            return
        if _unsent(transport):
            transport.abort()
        else:
            transport.close()

    def interrupt_drain(self) -> None:
        """Wake a sender waiting in :meth:`drain` with ConnectionResetError: the association
        has ended, nothing more will be sent even if the peer reads again."""
        self._wake_drain(ConnectionResetError("association ended"))

    @property
    def connection_is_lost(self) -> bool:
        return self._connection_lost

    @property
    def peer(self) -> tuple[str, int] | None:
        """The peer's (host, port), when connected over IP."""
        if self.transport is None:
            return None
        addr = self.transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            return str(addr[0]), int(addr[1])
        return None

    # -- back-pressure -----------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its low-water mark."""
        if not self._write_paused:
            return
        if self._connection_lost:
            raise ConnectionResetError("connection lost")
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is None or waiter.done():
            return
        if exc is None and not self._connection_lost:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc or ConnectionResetError("connection lost"))
            waiter.exception()  # mark retrieved: nobody may be waiting any more
