"""Third audit, association layer on live sockets.

* A peer that leaves while the server's async authenticator runs gave its association slot
  back never: with ``max_associations`` the server ended up refusing everyone.
* A failed ``connect()`` (no answer, a garbage answer) left a socket the caller could not
  close, open until ARTIM; it is now closed once the A-ABORT is written.
* A request sent to us on a context where role selection did not make us SCP (our SCU got
  a C-ECHO or C-STORE from the acceptor) is refused with 0x0122; it used to be performed.
* With a maximum PDU length of 0 ("no limit"), a 6-byte header announcing 4 GiB made us
  allocate (and zero) 4 GiB before a byte of the body came (see tests/pdu/test_audit3_framer.py
  for the framer itself; here: a live server stays small and keeps serving).
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from pathlib import Path

import pytest
from pydicom import Dataset

import pdu
from dimse import codec, storage_scu
from dimse.connect import connect
from dimse.errors import AssociationError, DimseTimeout
from dimse.file_sink import file_sink_factory
from dimse.messages import CEchoRQ
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext
from pdu.items import UserIdentityRQ
from pdu.negotiation import build_associate_rq

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
pytestmark = pytest.mark.timeout(60)


def associate_rq(identity: UserIdentityRQ | None = None, max_pdu: int = 16384) -> bytes:
    return pdu.encode(build_associate_rq("SRV", "PEER", [(VERIFICATION, [IMPLICIT])],
                                         max_pdu=max_pdu, user_identity=identity))


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(6), 10)
    pdu_type, _, length = struct.unpack(">BBI", head)
    return pdu_type, await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.mark.parametrize("leave", ["close", "abort", "release"])
async def test_a_peer_leaving_during_authentication_gives_its_slot_back(leave: str) -> None:
    started = asyncio.Event()
    gate = asyncio.Event()

    async def authenticator(identity: UserIdentityRQ, peer: object) -> tuple[bool, bytes | None]:
        started.set()
        await gate.wait()
        return True, None

    async with Server("SRV", authenticator=authenticator, max_associations=1) as server:
        for _ in range(3):
            started.clear()
            gate.clear()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(associate_rq(UserIdentityRQ(1, False, b"user")))
            await asyncio.wait_for(started.wait(), 10)
            if leave == "abort":
                writer.write(pdu.encode(pdu.AAbort(0, 0)))
            elif leave == "release":
                writer.write(pdu.encode(pdu.AReleaseRQ()))
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.05)
            gate.set()  # the authenticator says yes only after the peer is gone
            for _ in range(200):
                if not server._associations:
                    break
                await asyncio.sleep(0.01)
            assert server._accepted == 0
        gate.set()
        async with connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=10,
                           user_identity=UserIdentityRQ(1, False, b"user")) as assoc:
            assert await assoc.echo() == 0


async def _peer_sees_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
    return data


@pytest.mark.parametrize("answer", [b"", b"garbage!" * 4])
async def test_a_failed_connect_closes_its_socket(answer: bytes) -> None:
    """No answer (DimseTimeout) or garbage (AssociationAborted): the A-ABORT is written and our
    end closed at once, not after ARTIM (30 s here), since the caller has nothing to close."""
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6)
        if answer:
            writer.write(answer)
        await seen.put(await _peer_sees_eof(reader))
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((DimseTimeout, AssociationError)):
            await connect("127.0.0.1", port, called_ae="X", connect_timeout=0.5,
                          artim_timeout=30)
        rest = await asyncio.wait_for(seen.get(), 5)  # EOF long before ARTIM
        assert rest[-10:-4] == b"\x07\x00\x00\x00\x00\x04"  # ... and an A-ABORT came first
    finally:
        server.close()
        await server.wait_closed()


async def test_unlimited_pdu_length_does_not_allocate_what_a_header_announces() -> None:
    async with Server("SRV", max_pdu=0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(associate_rq())
        assert (await read_pdu(reader))[0] == 0x02
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            writer.write(struct.pack(">BBI", 4, 0, 0xFFFFFFFF) + bytes(100))
            await writer.drain()
            await asyncio.sleep(0.3)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 8 << 20, grown
        async with connect("127.0.0.1", server.port, called_ae="SRV", dimse_timeout=10) as a:
            assert await a.echo() == 0  # others are served meanwhile
        writer.close()


# --------------------------------------------------------------------------- SCP/SCU roles

CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.77.1"
    ds.PatientID = "ROLE"
    return ds


async def _requests_back(roles: dict[str, tuple[bool, bool]] | None,
                         tmp_path: Path) -> list[tuple[int, str | None]]:
    """The server answers our C-ECHO by first sending a C-ECHO and a C-STORE to us on the
    contexts our association has; what we answered it."""
    answers: list[tuple[int, str | None]] = []

    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        assoc = ctx.association
        rsp, _ = await assoc.request(ctx.context, lambda mid: CEchoRQ(message_id=mid))
        answers.append((rsp.status, rsp.error_comment))
        ct = next(c for c in assoc.negotiated.contexts.values() if c.abstract_syntax == CT)
        data = codec.encode(ct_instance(), ct.transfer_syntax)
        rsp, _ = await assoc.request(ct, storage_scu.store_builder(
            CT, ct_instance().SOPInstanceUID, 0, None), data)
        answers.append((rsp.status, rsp.error_comment))
        return 0

    server_handlers = HandlerRegistry()
    server_handlers.on_echo(on_echo)
    server_handlers.on_store(lambda rq, ds, ctx: 0)
    ours = HandlerRegistry()  # the SCU's own handlers: echo (default) and store into a folder
    ours.on_store(lambda rq, ds, ctx: 0, sink=file_sink_factory(tmp_path))
    async with Server("SRV", handlers=server_handlers, scp_roles=roles) as server, connect(
            "127.0.0.1", server.port, called_ae="SRV", sop_classes=[VERIFICATION, CT],
            roles=roles, handlers=ours, dimse_timeout=10) as assoc:
        assert await assoc.echo() == 0
    return answers


async def test_we_refuse_requests_where_we_are_only_scu(tmp_path: Path) -> None:
    answers = await _requests_back(None, tmp_path)
    assert [status for status, _ in answers] == [0x0122, 0x0122]
    assert all("role" in (comment or "") for _, comment in answers)
    assert list(tmp_path.glob("*.dcm")) == []  # the refused data set left nothing behind


async def test_we_perform_requests_where_role_selection_made_us_scp(tmp_path: Path) -> None:
    roles = {VERIFICATION: (True, True), CT: (True, True)}
    answers = await _requests_back(roles, tmp_path)
    assert answers == [(0, None), (0, None)]
    assert [p.name for p in tmp_path.glob("*.dcm")] == [ct_instance().SOPInstanceUID + ".dcm"]
