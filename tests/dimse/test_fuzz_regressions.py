"""Regressions found by the long fuzz campaign (audit 6) against the server: concrete bytes from a
raw-socket peer. Each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import logging

import pytest

import pdu
from dimse import commands
from dimse.messages import CEchoRQ
from dimse.server import Server
from tests.fixtures.captured import FIXTURES
from tests.raw_peer import RawPeer

#: DCMTK echoscu's A-ASSOCIATE-RQ (called AE "QRSCP", which our server "ARCHIVE" rejects).
ECHOSCU_RQ = FIXTURES["echoscu/assoc/01-associate-rq"].data
#: A PDU of unknown type 0x37 and length 0: invalid (Evt19).
INVALID_PDU = bytes.fromhex("37 00 00000000")


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _echo(port: int) -> int:
    peer = await RawPeer.open(port)
    try:
        rq = pdu.AAssociateRQ.build(called_ae="ARCHIVE", calling_ae="FUZZ", presentation_contexts=(
            pdu.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),))
        await peer.associate(rq.encode())
        cmd = commands.encode(CEchoRQ(message_id=1))
        await peer.send(pdu.PDataTF((pdu.PresentationDataValue(1, 3, cmd),)).encode())
        rsp, _ = await peer.message()
        await peer.release()
        return int(rsp.status)  # type: ignore[attr-defined]
    finally:
        await peer.close()


async def test_invalid_pdu_right_after_a_rejected_rq_is_no_server_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """An A-ASSOCIATE-RQ the server rejects (wrong called AE) followed, in the same read, by an
    invalid PDU: the core aborted (Sta13) before the server task answered, and the server's
    A-ASSOCIATE-RJ then raised LocalProtocolError ('no transition for Evt8 in Sta13'), logged
    as an 'association failed' traceback. Now the peer gets the A-ABORT and nothing else."""
    caplog.set_level(logging.INFO, logger="dimse")
    async with Server("ARCHIVE") as server:
        peer = await RawPeer.open(server.port)
        try:
            await peer.send(ECHOSCU_RQ + INVALID_PDU)
            answer = pdu.decode(await peer.pdu())
            assert isinstance(answer, pdu.AAbort)
            assert (answer.source, answer.reason) == (2, 1)  # provider: unrecognized PDU
        finally:
            await peer.close()
        for _ in range(200):
            if not server.associations:
                break
            await asyncio.sleep(0.01)
        assert not server.associations
        assert await _echo(server.port) == 0x0000
    assert _errors(caplog) == []
    assert any("ended before it was answered" in r.getMessage() for r in caplog.records)
