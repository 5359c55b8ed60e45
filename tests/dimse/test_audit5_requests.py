"""Requests as GDCM and CTN sent them (audit 5), replayed over a raw socket.

A request carrying a UID our command encoder refuses (over 64 characters, a backslash) used to
get no response at all: the response echoing it could not be encoded, the error was logged and
the peer waited forever. A request on a presentation context we rejected was aborted without a
word in the log.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator

import pytest
from pydicom.dataset import Dataset

from dimse import commands
from dimse.messages import CEchoRSP, CommandField, CStoreRSP
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext
from pdu import AAbort, PDataTF
from pdu import decode as decode_pdu
from tests.raw_peer import RawPeer

pytestmark = pytest.mark.timeout(30)

SC = b"1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = b"1.2.840.10008.1.1"
FIND = b"1.2.840.10008.5.1.4.1.2.1.1"  # not offered by a bare Server
IMPLICIT = b"1.2.840.10008.1.2"
LONG_UID = b"1.2.826.0.1.3680043.8.498.49043964482360854182530167603505525116.9"  # 66 chars


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _el(group: int, elem: int, value: bytes) -> bytes:  # implicit VR LE, padded even
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, elem, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _command(*elements: bytes) -> bytes:
    rest = b"".join(elements)
    return _el(0, 0, struct.pack("<L", len(rest))) + rest


def _pdata(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">LBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxL", 4, len(pdv)) + pdv


def _associate_rq(*abstract: bytes) -> bytes:
    contexts = b"".join(
        _item(0x20, bytes([2 * i + 1, 0, 0, 0]) + _item(0x30, uid) + _item(0x40, IMPLICIT))
        for i, uid in enumerate(abstract))
    body = (struct.pack(">HH", 1, 0) + b"ARCHIVE".ljust(16) + b"PEER".ljust(16) + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts
            + _item(0x50, _item(0x51, struct.pack(">L", 16384))))
    return struct.pack(">BxL", 1, len(body)) + body


@contextlib.asynccontextmanager
async def _associated(registry: HandlerRegistry, *abstract: bytes,
                      **server_options: object) -> AsyncIterator[RawPeer]:
    """A Server with ``registry`` and a raw peer associated with it on ``abstract``."""
    server = Server("ARCHIVE", handlers=registry, **server_options)  # type: ignore[arg-type]
    async with server:
        peer = await RawPeer.open(server.port)
        try:
            peer.writer.write(_associate_rq(*abstract))
            assert (await peer.pdu())[0] == 0x02  # A-ASSOCIATE-AC
            yield peer
        finally:
            await peer.close()


@pytest.fixture
async def archive_peer() -> AsyncIterator[tuple[RawPeer, list[str]]]:
    stored: list[str] = []

    def keep(rq: object, ds: object, ctx: object) -> int:
        stored.append(getattr(rq, "affected_sop_instance_uid", ""))
        return 0

    registry = HandlerRegistry()
    registry.on_store(keep)
    async with _associated(registry, SC, VERIFICATION, FIND) as peer:
        yield peer, stored


def _response(pdu_bytes: bytes) -> object:
    pdata = decode_pdu(pdu_bytes)
    assert isinstance(pdata, PDataTF)
    return commands.decode(bytes(pdata.pdvs[0].data))


@pytest.mark.parametrize("uid", [LONG_UID, b"1.2.3\\4"])
async def test_store_echoes_an_instance_uid_our_encoder_refuses(
        archive_peer: tuple[RawPeer, list[str]], uid: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    peer, stored = archive_peer
    command = _command(_el(0, 0x0002, SC), _el(0, 0x0100, _us(1)), _el(0, 0x0110, _us(7)),
                       _el(0, 0x0700, _us(0)), _el(0, 0x0800, _us(0)), _el(0, 0x1000, uid))
    data = _el(0x0008, 0x0016, SC) + _el(0x0008, 0x0018, uid) + _el(0x0010, 0x0020, b"P1")
    peer.writer.write(_pdata(1, 3, command) + _pdata(1, 2, data))
    rsp = _response(await peer.pdu())  # used to time out: nothing was ever sent
    assert isinstance(rsp, CStoreRSP)
    assert (rsp.status, rsp.message_id_being_responded_to) == (0, 7)
    assert rsp.affected_sop_instance_uid == uid.decode()  # as the request carried it
    assert stored == [uid.decode()]
    assert any("as received" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


async def test_echo_with_a_backslash_in_its_sop_class_uid_is_answered(
        archive_peer: tuple[RawPeer, list[str]]) -> None:
    peer, _ = archive_peer
    command = _command(_el(0, 0x0002, VERIFICATION + b"\\1"), _el(0, 0x0100, _us(0x30)),
                       _el(0, 0x0110, _us(1)), _el(0, 0x0800, _us(0x0101)))
    peer.writer.write(_pdata(3, 3, command))
    rsp = _response(await peer.pdu())
    assert isinstance(rsp, CEchoRSP)
    assert rsp.message_id_being_responded_to == 1


async def test_request_on_a_rejected_context_is_aborted_and_logged(
        archive_peer: tuple[RawPeer, list[str]], caplog: pytest.LogCaptureFixture) -> None:
    """GDCM sends its C-MOVE on the context we rejected: A-ABORT, and the log says why."""
    peer, _ = archive_peer
    caplog.set_level(logging.INFO)
    command = _command(_el(0, 0x0002, FIND), _el(0, 0x0100, _us(0x20)), _el(0, 0x0110, _us(1)),
                       _el(0, 0x0700, _us(0)), _el(0, 0x0800, _us(0x0101)))
    peer.writer.write(_pdata(5, 3, command))
    assert isinstance(decode_pdu(await peer.pdu()), AAbort)
    assert any("context 5" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING), [r.getMessage() for r in caplog.records]


def test_our_own_requests_are_still_checked() -> None:
    """Only a response echoes what it was given; a request we build is refused before sending."""
    from dimse.messages import CEchoRQ

    with pytest.raises(commands.CommandEncodeError):
        commands.encode(CEchoRQ(message_id=1, affected_sop_class_uid="1." * 40))
    with pytest.raises(commands.CommandEncodeError):
        commands.encode(CStoreRSP(message_id_being_responded_to=1, status=0,
                                  affected_sop_instance_uid="1." * 40))
    assert b"1.1.1" in commands.encode(
        CStoreRSP(message_id_being_responded_to=1, status=0,
                  affected_sop_instance_uid="1." * 40 + "1"), echo=True)


def _refuse(rq: object, ds: object, ctx: object) -> int:
    raise ValueError("donn\u00e9es illisibles \u2014 refus\u00e9es")


async def test_a_handler_error_with_non_ascii_text_is_answered() -> None:
    """Its text becomes the ErrorComment (LO in the command set: ASCII): the response could
    not be encoded and the request went unanswered."""
    registry = HandlerRegistry()
    registry.on_store(_refuse)
    async with _associated(registry, SC) as peer:
        command = _command(_el(0, 0x0002, SC), _el(0, 0x0100, _us(1)),
                           _el(0, 0x0110, _us(7)), _el(0, 0x0700, _us(0)),
                           _el(0, 0x0800, _us(0)), _el(0, 0x1000, b"1.2.3.4"))
        data = _el(0x0008, 0x0016, SC) + _el(0x0008, 0x0018, b"1.2.3.4")
        peer.writer.write(_pdata(1, 3, command) + _pdata(1, 2, data))
        rsp = _response(await peer.pdu())
        assert isinstance(rsp, CStoreRSP)
        assert rsp.status == 0x0110
        assert rsp.error_comment is not None and "ValueError" in rsp.error_comment
        assert rsp.error_comment.isascii()


async def test_a_response_that_cannot_be_encoded_at_all_aborts(
        caplog: pytest.LogCaptureFixture) -> None:
    """A raw performer's response that no encoding can write (non-ASCII in the command set):
    A-ABORT at once, logged, instead of a request left unanswered."""
    async def performer(request: RequestContext) -> None:
        await request.respond(CEchoRSP(message_id_being_responded_to=1, status=0x0110,
                                       error_comment="refus\u00e9"))

    registry = HandlerRegistry()
    registry.register(CommandField.C_ECHO_RQ, performer)
    async with _associated(registry, VERIFICATION) as peer:
        peer.writer.write(_pdata(1, 3, _command(
            _el(0, 0x0002, VERIFICATION), _el(0, 0x0100, _us(0x30)),
            _el(0, 0x0110, _us(1)), _el(0, 0x0800, _us(0x0101)))))
        assert isinstance(decode_pdu(await peer.pdu()), AAbort)
    assert any("cannot encode CEchoRSP" in r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR)


async def test_command_and_data_set_travel_in_pdus_of_their_own() -> None:
    """gdcmscu 3.0 lost every second C-FIND response when one P-DATA-TF held both the command
    and the data set PDV (legal, PS3.8 9.3.5); DCMTK and pynetdicom give each its own PDU."""
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        for n in range(3):
            match = Dataset()
            match.QueryRetrieveLevel, match.PatientID = "PATIENT", f"P{n}"
            yield match

    registry = HandlerRegistry()
    register_find(registry, handler)
    identifier = _el(0x0008, 0x0052, b"PATIENT") + _el(0x0010, 0x0020, b"")
    async with _associated(registry, FIND, contexts=qr_server_contexts(registry)) as peer:
        peer.writer.write(_pdata(1, 3, _command(
            _el(0, 0x0002, FIND), _el(0, 0x0100, _us(0x20)), _el(0, 0x0110, _us(1)),
            _el(0, 0x0700, _us(0)), _el(0, 0x0800, _us(0)))) + _pdata(1, 2, identifier))
        controls = []
        while True:
            pdata = decode_pdu(await peer.pdu())
            assert isinstance(pdata, PDataTF)
            controls.append([pdv.control for pdv in pdata.pdvs])
            if controls[-1] == [3] and commands.decode(
                    bytes(pdata.pdvs[0].data)).status == 0:
                break
    assert controls == [[3], [2]] * 3 + [[3]]  # command PDU, data set PDU; final: command only
