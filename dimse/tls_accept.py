"""TLS on the server's accepted connections, with the handshake run by the server itself.

With ``loop.create_server(ssl=...)`` asyncio runs each handshake out of the server's reach: until
it completes the connection is neither a protocol the server knows nor a task, and Python 3.11's
``asyncio.Server.close()`` does not drop it, so a peer that connects and stalls keeps its socket
for the whole handshake timeout after the server has closed. Here the listener accepts plain TCP
and each connection's handshake is a task of the server's (``loop.start_tls``), which
``Server.close()`` cancels; start_tls then closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

__all__ = ["TlsAcceptor"]

log = logging.getLogger("dimse.server")


class _Held(asyncio.Protocol):
    """The application protocol while the handshake runs: it holds what arrives with the last
    handshake record (the A-ASSOCIATE-RQ may come in the same read) and the connection's end,
    for the real protocol once it takes over."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost = False
        self.exc: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.exc = True, exc


class TlsAcceptor(asyncio.Protocol):
    """The protocol of one accepted TCP connection until its TLS handshake is done.

    ``make_protocol`` builds the real protocol once the handshake has succeeded (a failed one
    leaves nothing behind but a log line); ``handshakes`` is the server's set of running
    handshake tasks, which it cancels when it closes; ``closing`` says whether it is closing
    (a connection accepted just before then is dropped at once).

    Bytes read before start_tls takes the connection over (the ClientHello: uvloop starts
    reading right after ``connection_made``, where pausing is too early to hold) are kept and
    handed to the TLS protocol once it is installed; it keeps them until its handshake starts.
    """

    def __init__(self, context: ssl.SSLContext, timeout: float | None,
                 make_protocol: Callable[[], asyncio.BaseProtocol],
                 handshakes: set[asyncio.Task[None]], closing: Callable[[], bool]) -> None:
        self._context = context
        self._timeout = timeout
        self._make_protocol = make_protocol
        self._handshakes = handshakes
        self._closing = closing
        self._early: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (cast, not isinstance: uvloop's transports do not derive from asyncio.Transport.)
        tcp = cast(asyncio.Transport, transport)
        if self._closing():  # accepted just before the server closed: no handshake to start
            tcp.abort()
            return
        tcp.pause_reading()  # asyncio's loop holds this; uvloop starts reading after us
        task = asyncio.get_running_loop().create_task(self._handshake(tcp))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        # Cancelled before its first step, the coroutine never runs its own abort.
        task.add_done_callback(lambda done: tcp.abort() if done.cancelled() else None)
        self._task = task

    def connection_lost(self, exc: Exception | None) -> None:
        # Gone before start_tls took the connection over: no handshake to wait for.
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._early.append(bytes(data))

    def eof_received(self) -> bool | None:
        return None  # TLS needs both directions: close, and connection_lost ends the task

    def _hand_over(self, tcp: asyncio.Transport) -> None:
        """Give the bytes read so far to the TLS protocol start_tls has just installed."""
        protocol = tcp.get_protocol()
        if protocol is self or not self._early:
            return
        data, self._early = b"".join(self._early), []
        _feed(protocol, data)

    async def _handshake(self, tcp: asyncio.Transport) -> None:
        peer = tcp.get_extra_info("peername")
        held = _Held()
        loop = asyncio.get_running_loop()
        # start_tls installs its protocol before its first await: this runs just after.
        handover = loop.call_soon(self._hand_over, tcp)
        try:
            tls = await loop.start_tls(tcp, held, self._context, server_side=True,
                                       ssl_handshake_timeout=self._timeout)
        except asyncio.CancelledError:
            handover.cancel()
            tcp.abort()
            raise
        except (OSError, EOFError) as exc:  # ssl.SSLError and the handshake timeout are OSErrors
            handover.cancel()
            log.info("TLS handshake with %s failed: %s", peer, exc or type(exc).__name__)
            tcp.abort()
            return
        if tls is None:  # pragma: no cover - start_tls returns a transport or raises
            tcp.abort()
            return
        protocol = self._make_protocol()
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        for chunk in held.chunks:
            _feed(protocol, chunk)
        if held.lost:
            protocol.connection_lost(held.exc)


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as a transport would."""
    if hasattr(protocol, "buffer_updated"):  # uvloop's TLS protocol is no BufferedProtocol
        buffered = cast(asyncio.BufferedProtocol, protocol)
        view = memoryview(data)
        while view:
            buffer = memoryview(buffered.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            buffered.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
