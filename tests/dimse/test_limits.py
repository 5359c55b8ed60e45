"""Sizes a peer can make us hold: identifiers are bounded (max_identifier_length).

A C-FIND/C-MOVE/C-GET identifier used to be buffered without any bound, so one association could
make the server hold gigabytes. A request whose identifier passes the limit is now read, dropped
and refused (0xA700; 0xA701 for C-MOVE/C-GET); a response's identifier that passes it aborts the
association (a protocol error). C-STORE data sets are not identifiers: only the hard
``max_dataset_length`` bounds them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dimse import commands
from dimse.archive import Archive
from dimse.assembly import (
    DEFAULT_MAX_IDENTIFIER_LENGTH,
    MessageAssembler,
    MessageReceived,
    OversizedRequest,
)
from dimse.errors import AssemblyError, AssociationAborted
from dimse.messages import CEchoRQ, CFindRQ, CFindRSP, CGetRQ, CMoveRQ, CStoreRQ
from dimse.qr import QueryModel, sop_class
from dimse.qr_model import Operation
from dimse.qr_scp import FindRequest, archive_server, qr_server_contexts, register_find
from dimse.qr_scu import QueryFailed, connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry

pytestmark = pytest.mark.timeout(60)

FIND = sop_class(QueryModel.STUDY_ROOT, Operation.FIND)


class Pdv:
    def __init__(self, context_id: int, control: int, data: bytes) -> None:
        self.context_id, self.control, self.data = context_id, control, data


def command(message: object) -> Pdv:
    return Pdv(1, 0x03, commands.encode(message))  # type: ignore[arg-type]


def find_rq(message_id: int = 7) -> CFindRQ:
    return CFindRQ(message_id=message_id, affected_sop_class_uid=FIND)


def test_request_identifier_over_the_limit_is_dropped_then_refused() -> None:
    a = MessageAssembler(max_identifier_length=100)
    assert a.feed(command(find_rq())) is None
    assert a.feed(Pdv(1, 0x00, bytes(60))) is None
    assert a.feed(Pdv(1, 0x00, bytes(60))) is None  # 120 > 100: dropped, not held
    assert a._parts == []
    assert a.feed(Pdv(1, 0x00, bytes(1000))) is None  # the rest is read and dropped
    assert a.feed(Pdv(1, 0x02, bytes(10))) == OversizedRequest(1, find_rq(), 100)
    assert not a.in_progress
    event = a.feed(command(CEchoRQ(message_id=8)))  # the next message is read normally
    assert isinstance(event, MessageReceived) and event.message == CEchoRQ(message_id=8)


def test_last_fragment_over_the_limit_completes_at_once() -> None:
    a = MessageAssembler(max_identifier_length=100)
    a.feed(command(find_rq()))
    assert a.feed(Pdv(1, 0x02, bytes(102))) == OversizedRequest(1, find_rq(), 100)
    assert not a.in_progress


def test_identifier_of_exactly_the_limit_is_kept() -> None:
    a = MessageAssembler(max_identifier_length=100)
    a.feed(command(find_rq()))
    a.feed(Pdv(1, 0x00, bytes(50)))
    event = a.feed(Pdv(1, 0x02, bytes(50)))
    assert event == MessageReceived(1, find_rq(), bytes(100))


@pytest.mark.parametrize("message", [
    CMoveRQ(message_id=3, affected_sop_class_uid=FIND, move_destination="X"),
    CGetRQ(message_id=3, affected_sop_class_uid=FIND),
], ids=["c-move", "c-get"])
def test_retrieve_identifiers_are_bounded_too(message: object) -> None:
    a = MessageAssembler(max_identifier_length=10)
    a.feed(command(message))
    assert a.feed(Pdv(1, 0x02, bytes(12))) == OversizedRequest(1, message, 10)  # type: ignore[arg-type]


def test_response_identifier_over_the_limit_is_a_protocol_error() -> None:
    a = MessageAssembler(max_identifier_length=100)
    a.feed(command(CFindRSP(message_id_being_responded_to=7, affected_sop_class_uid=FIND,
                            status=0xFF00, command_data_set_type=0x0001)))
    with pytest.raises(AssemblyError, match="CFindRSP data set .* exceeds 100 bytes"):
        a.feed(Pdv(1, 0x02, bytes(102)))


def test_c_store_data_set_is_not_an_identifier() -> None:
    store = CStoreRQ(message_id=1, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                     affected_sop_instance_uid="1.2.3")
    a = MessageAssembler(max_identifier_length=10)
    a.feed(command(store))
    assert a.feed(Pdv(1, 0x02, bytes(1000))) == MessageReceived(1, store, bytes(1000))
    b = MessageAssembler(max_identifier_length=10, max_dataset_length=100)  # the hard bound
    b.feed(command(store))
    with pytest.raises(AssemblyError, match="exceeds 100 bytes"):
        b.feed(Pdv(1, 0x02, bytes(1000)))


def test_defaults() -> None:
    assert MessageAssembler().max_identifier_length == DEFAULT_MAX_IDENTIFIER_LENGTH == 16 << 20
    assert Server("X").max_identifier_length == DEFAULT_MAX_IDENTIFIER_LENGTH


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


def study_query(uids: int) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = [f"1.2.826.0.1.3680043.10.1.{n}" for n in range(uids)]
    query.PatientName = ""
    return query


async def test_scp_refuses_a_large_identifier_a700_and_keeps_the_association(
        archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    async with archive_server(archive, "QRSCP", max_identifier_length=4000) as srv, \
            connect_qr("127.0.0.1", srv.port, called_ae="QRSCP") as assoc:
        with pytest.raises(QueryFailed) as failed:
            async for _ in assoc.find(study_query(200)):  # about 6 KB
                pass
        assert failed.value.status == 0xA700
        assert "longer than 4000 bytes" in failed.value.comment
        assert [m async for m in assoc.find(study_query(20))] == []  # 600 bytes: answered
        await assoc.echo()
    assert any("refused" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


async def test_scu_aborts_on_a_large_response_identifier() -> None:
    async def big_match(request: FindRequest) -> AsyncIterator[Dataset]:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3"
        match.StudyDescription = "x" * 64
        match.InstitutionName = "z" * 64
        match.PatientName = "y" * 60  # 240 bytes in all
        yield match

    registry = HandlerRegistry()
    register_find(registry, big_match)
    server = Server("QRSCP", handlers=registry, contexts=qr_server_contexts(registry))
    async with server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                              max_identifier_length=200) as assoc:
            with pytest.raises(AssociationAborted, match="exceeds 200 bytes"):
                async for _ in assoc.find(study_query(1)):
                    pass
        async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
            assert [m.StudyInstanceUID async for m in assoc.find(study_query(1))] == ["1.2.3"]


async def test_pynetdicom_gets_a700_for_a_large_identifier(archive: Archive) -> None:
    pynetdicom = pytest.importorskip("pynetdicom")

    async with archive_server(archive, "QRSCP", max_identifier_length=4000) as srv:
        def query() -> list[int]:
            ae = pynetdicom.AE(ae_title="PYN")
            ae.add_requested_context(FIND)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
            assoc = ae.associate("127.0.0.1", srv.port, ae_title="QRSCP")
            assert assoc.is_established
            statuses = [s.Status for s, _ in assoc.send_c_find(study_query(200), FIND) if s]
            statuses += [s.Status for s, _ in assoc.send_c_find(study_query(2), FIND) if s]
            assoc.release()
            return statuses

        assert await asyncio.wait_for(asyncio.to_thread(query), 40) == [0xA700, 0x0000]

