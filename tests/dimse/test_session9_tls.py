"""Session 9: the server runs each TLS handshake itself (dimse/tls_accept.py).

Before, asyncio ran it inside ``create_server(ssl=...)``: ``Server.close()`` could not reach a
connection whose handshake was still running, and its socket stayed open until the handshake
timeout (artim_timeout, 30 s by default) after close() had returned (audit 7, D8). Every test
runs on asyncio's loop and on uvloop's (the tools use uvloop when it is installed).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from dimse import tls_accept
from dimse.connect import connect
from dimse.server import Server
from tests.dimse.test_audit14_review import _still_open
from tests.dimse.test_tls import _contexts, certificate  # noqa: F401 (fixture)
from tests.fixtures.captured import FIXTURES

pytestmark = pytest.mark.timeout(60)

LOOPS: list[str] = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - the speed extra is optional
    pass


def run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await reader.read()
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.parametrize("loop", LOOPS)
def test_close_drops_a_connection_still_shaking_hands(
        loop: str, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    server_ctx, _ = _contexts(*certificate)

    async def main() -> None:
        server = await Server("SRV", ssl=server_ctx, artim_timeout=30).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # no hello
        await asyncio.sleep(0.1)
        await server.close()
        try:
            assert await closed_within(reader, 5), "socket open after Server.close()"
        finally:
            writer.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_connects_and_leaves_leaves_no_handshake(
        loop: str, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    server_ctx, _ = _contexts(*certificate)

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx, artim_timeout=30) as server:
            for _ in range(5):
                _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.close()
            async with asyncio.timeout(10):  # not the 30 s handshake timeout
                while server._handshakes:
                    await asyncio.sleep(0.02)

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_echo_over_tls_and_failed_handshakes_leave_nothing(
        loop: str, certificate: tuple[Path, Path],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    server_ctx, client_ctx = _contexts(*certificate)

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx, artim_timeout=5) as server:
            # plain DICOM on the TLS port: the handshake fails, one INFO line, nothing left
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(FIXTURES["echoscu/assoc/01-associate-rq"].data)
            assert await closed_within(reader, 10)
            writer.close()
            for _ in range(3):
                async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=client_ctx,
                                   connect_timeout=10) as assoc:
                    assert assoc.protocol.transport is not None
                    assert assoc.protocol.transport.get_extra_info("ssl_object") is not None
                    assert await assoc.echo() == 0
            assert not server._handshakes
        assert "TLS handshake with" in caplog.text

    with caplog.at_level("INFO", logger="dimse.server"):
        run(loop, main)


def _handshake_then_send(port: int, context: ssl.SSLContext, payload: bytes) -> bytes:
    """A blocking client that sends its last handshake flight and ``payload`` in one write,
    so that the server reads the A-ASSOCIATE-RQ in the same read that ends the handshake;
    returns the first bytes of the answer."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "server closed during the handshake"
                incoming.write(data)
        tls.write(payload)
        sock.sendall(outgoing.read())  # client Finished + the RQ record together
        answer = b""
        while len(answer) < 6:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
        return answer


@pytest.mark.parametrize("loop", LOOPS)
def test_request_arriving_with_the_last_handshake_record_is_answered(
        loop: str, certificate: tuple[Path, Path],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the TLS layer reads before the association's protocol takes over is handed to it,
    not lost: the A-ASSOCIATE-RQ gets its A-ASSOCIATE-AC."""
    server_ctx, client_ctx = _contexts(*certificate)
    held: list[int] = []
    original = tls_accept._Held.data_received

    def counting(self: tls_accept._Held, data: bytes) -> None:
        held.append(len(data))
        original(self, data)

    monkeypatch.setattr(tls_accept._Held, "data_received", counting)
    rq = FIXTURES["echoscu/assoc/01-associate-rq"].data.replace(b"QRSCP      ", b"SRV        ")

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx, require_called_ae=False) as server:
            answer = await asyncio.to_thread(_handshake_then_send, server.port, client_ctx, rq)
            assert answer[:1] == b"\x02", answer[:16]  # A-ASSOCIATE-AC

    for _ in range(3):  # the server may read the flight in one recv or two
        run(loop, main)
        if held:
            break
    if loop == "asyncio":  # uvloop's TLS layer reads on only after the handover, no need
        assert held, "the request never arrived with the handshake's last record"


@pytest.mark.skipif("uvloop" not in LOOPS, reason="uvloop is not installed")
def test_bytes_read_before_the_handshake_starts_are_handed_to_tls(
        certificate: tuple[Path, Path],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop starts reading right after connection_made, so the ClientHello reaches the
    acceptor before start_tls runs: it is handed to the TLS protocol, not dropped (which
    would leave the client waiting for a ServerHello until its timeout)."""
    server_ctx, client_ctx = _contexts(*certificate)
    handed: list[int] = []
    original = tls_accept.TlsAcceptor._hand_over

    def counting(self: tls_accept.TlsAcceptor, tcp: asyncio.Transport) -> None:
        handed.append(sum(map(len, self._early)))
        original(self, tcp)

    monkeypatch.setattr(tls_accept.TlsAcceptor, "_hand_over", counting)

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx) as server:
            async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=client_ctx,
                               connect_timeout=10) as assoc:
                assert await assoc.echo() == 0

    run("uvloop", main)
    assert handed and handed[0] > 0


@pytest.mark.parametrize("loop", LOOPS)
def test_close_drops_plain_connections_accepted_in_its_last_turns(loop: str) -> None:
    """Without TLS too: asyncio 3.11 drops, unattached and open, a connection it accepted just
    before the listener closed (audit 14 #3, seen on plain TCP as well)."""

    async def main() -> None:
        left = 0
        for turns in range(1, 6):
            server = await Server("SRV", artim_timeout=30).start()
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                     for _ in range(8)]
            for _ in range(turns):
                await asyncio.sleep(0)
            await server.close()
            left += await asyncio.to_thread(_still_open, socks, 2.0)
        assert left == 0, f"{left} connection(s) still open after Server.close()"

    run(loop, main)
