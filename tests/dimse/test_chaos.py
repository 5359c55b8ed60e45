"""Chaos tests of the server: peers that vanish or misbehave at awkward moments.

Each test reproduces, deterministically and on 127.0.0.1, a defect found by the soak runs of
audit 5 (mixed load of our SCU, pynetdicom and DCMTK with connections cut at random points);
the soak scripts themselves are not part of the suite.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import dimse
from dimse import commands
from dimse.archive import Archive
from dimse.assembly import fragment
from dimse.errors import AssociationRejected
from dimse.messages import CStoreRQ
from dimse.qr import QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr, find
from dimse.server import Server
from dimse.services import HandlerRegistry
from dimse.storage_scu import prepare_store
from pdu.pdus import AAbort

pytestmark = pytest.mark.timeout(30)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "CHAOS"
    ds.PatientName = "CHAOS^TEST"
    ds.Modality = "CT"
    return ds


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive") as arch:
        yield arch


async def _settled(server: Server) -> None:
    """Wait (bounded) until the server has no association and no task left."""
    async with asyncio.timeout(5):
        while server.associations or server._tasks:
            await asyncio.sleep(0.01)


def _temp_files(archive: Archive) -> list[Path]:
    return sorted(archive.storage_dir.rglob(".tmp-*"))


async def test_abort_right_after_a_complete_store_leaves_no_temp_file(archive: Archive) -> None:
    """C-STORE data set and A-ABORT in one TCP segment: the store's performer task is created
    and cancelled before its first step, so its cleanup never ran and the complete data set
    stayed in the archive folder as a hidden .tmp-*.part file for ever (one per such abort)."""
    server = archive_server(archive, "ARCHIVE")
    async with server:
        ds = _instance()
        async with dimse.connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                                 sop_classes=[CT]) as assoc:
            sop_class, sop_instance, data, cx = prepare_store(assoc, ds)
            command = commands.encode(CStoreRQ(message_id=1, affected_sop_class_uid=sop_class,
                                               affected_sop_instance_uid=sop_instance))
            wire = b"".join(fragment(cx.context_id, command, data,
                                     assoc.negotiated.peer_max_pdu, coalesce=False))
            transport = assoc.protocol.transport
            assert transport is not None
            transport.write(wire + AAbort(source=0, reason=0).encode())  # one segment
            await asyncio.wait_for(assoc.wait_closed(), 5)  # the server closes on the abort
        await _settled(server)
        assert _temp_files(archive) == []
        assert archive.stored_path(sop_instance) is None  # never answered: not indexed


def _ended(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "dimse.server" and " ended: " in r.getMessage()]


async def test_peer_vanishing_mid_data_set_is_logged_once(archive: Archive,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """A peer that closes the connection in the middle of a C-STORE data set: the partial
    instance is discarded (no temp file, not indexed) and one INFO line says so, naming the
    SOP Instance. Before, such an end left no trace in the log at all."""
    caplog.set_level(logging.INFO, logger="dimse")
    server = archive_server(archive, "ARCHIVE")
    async with server:
        ds = _instance()
        ds.BitsAllocated = 8
        ds.PixelData = bytes(200_000)
        assoc = await dimse.connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                                    sop_classes=[CT])
        sop_class, sop_instance, data, cx = prepare_store(assoc, ds)
        command = commands.encode(CStoreRQ(message_id=7, affected_sop_class_uid=sop_class,
                                           affected_sop_instance_uid=sop_instance))
        wire = b"".join(fragment(cx.context_id, command, data, assoc.negotiated.peer_max_pdu,
                                 coalesce=False))
        transport = assoc.protocol.transport
        assert transport is not None
        transport.write(wire[:len(wire) // 2])
        transport.close()  # FIN after the half: the server reads it all, then the end
        await asyncio.wait_for(assoc.wait_closed(), 5)
        await _settled(server)
        assert _temp_files(archive) == []
        assert archive.stored_path(sop_instance) is None
    ended = _ended(caplog)
    assert len(ended) == 1, ended
    assert "DIMSE_PY" in ended[0] and "without A-RELEASE" in ended[0]
    assert f"C-STORE 7 (SOP Instance {sop_instance}) incomplete, discarded" in ended[0]


async def test_silent_peer_dropped_by_artim_is_logged_once(archive: Archive,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A connection that never sends an A-ASSOCIATE-RQ is closed when ARTIM expires, with one
    INFO line; a bare connect-and-close (a port probe) says nothing."""
    caplog.set_level(logging.INFO, logger="dimse")
    server = archive_server(archive, "ARCHIVE", artim_timeout=0.2)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        _r, probe = await asyncio.open_connection("127.0.0.1", server.port)
        probe.close()
        await _settled(server)
    ended = _ended(caplog)
    assert len(ended) == 1, ended
    assert "no A-ASSOCIATE-RQ within the ARTIM timeout" in ended[0]


async def test_rejected_and_invalid_peers_are_logged_once(archive: Archive,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """Ends already logged where they were decided (the A-ASSOCIATE-RJ of max_associations, an
    invalid PDU) get no second line when the peer then closes the connection."""
    caplog.set_level(logging.INFO, logger="dimse")
    server = archive_server(archive, "ARCHIVE", max_associations=1)
    async with server:
        async with dimse.connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                                 sop_classes=[CT]):
            with pytest.raises(AssociationRejected):
                await dimse.connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                                    sop_classes=[CT])
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.readexactly(10), 5))[0] == 0x07  # A-ABORT
        writer.close()
        await _settled(server)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith(("dimse", "pdu"))]
    assert sum("rejecting association" in m for m in messages) == 1, messages
    assert sum("invalid PDU" in m for m in messages) == 1, messages
    assert _ended(caplog) == []


async def test_archive_work_does_not_wait_for_asyncio_default_pool(tmp_path: Path) -> None:
    """An application whose blocking clients of this very server fill asyncio's default pool
    (pynetdicom run with run_in_executor) got every C-FIND timed out: the archive's work
    waited for a worker of that pool. It now runs in the archive's own threads."""
    before = {t for t in threading.enumerate() if t.name.startswith("dimse-archive")}
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    blocked = threading.Event()
    busy = loop.run_in_executor(None, blocked.wait, 30)  # the one default worker, taken
    archive = Archive(tmp_path / "archive")
    try:
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
        async with archive_server(archive, "QR") as server, connect_qr(
                "127.0.0.1", server.port, called_ae="QR", dimse_timeout=5) as assoc:
            matches = [m async for m in find(assoc, query, model=QueryModel.STUDY_ROOT)]
        assert matches == []  # answered (an empty archive), not a DimseTimeout
    finally:
        blocked.set()
        await busy
        archive.close()
    def ours_alive() -> list[threading.Thread]:  # this archive's, not an earlier test's
        return [t for t in threading.enumerate()
                if t.name.startswith("dimse-archive") and t not in before and t.is_alive()]

    for _ in range(100):  # close() lets the archive's worker threads go
        if not ours_alive():
            break
        await asyncio.sleep(0.05)
    assert ours_alive() == []


class RecordingSink:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def write(self, fragment: memoryview) -> None:
        pass

    def finish(self) -> None:
        self.calls.append("finish")

    def commit(self) -> None:
        self.calls.append("commit")

    def discard(self) -> None:
        self.calls.append("discard")


async def test_committed_sink_is_not_discarded_when_the_response_waits() -> None:
    """A plain store handler accepted the instance (sink committed) but the response had to
    wait (the socket was full); an A-ABORT in the same read then cancelled the waiting task and
    its clean-up discarded the committed sink: a user sink would delete an accepted instance."""
    calls: list[str] = []
    registry = HandlerRegistry()

    def store(request: object, dataset: object, ctx: object) -> int:  # plain: run inline
        return 0

    registry.on_store(store, sink=lambda request, ctx: RecordingSink(calls))
    server = Server("S", handlers=registry)
    async with server:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        async with dimse.connect("127.0.0.1", server.port, called_ae="S",
                                 sop_classes=[CT]) as assoc:
            for served in server.associations:
                served.protocol.pause_writing()  # the server's socket buffer is full
            sop_class, sop_instance, data, cx = prepare_store(assoc, ds)
            command = commands.encode(CStoreRQ(message_id=1, affected_sop_class_uid=sop_class,
                                               affected_sop_instance_uid=sop_instance))
            wire = b"".join(fragment(cx.context_id, command, data,
                                     assoc.negotiated.peer_max_pdu, coalesce=False))
            assert assoc.protocol.transport is not None
            assoc.protocol.transport.write(wire + AAbort(source=0, reason=0).encode())
            await asyncio.wait_for(assoc.wait_closed(), 5)
        async with asyncio.timeout(5):
            while server.associations or server._tasks:
                await asyncio.sleep(0.01)
    assert "commit" in calls
    assert calls[calls.index("commit") + 1:] == []  # nothing after the commit (was: discard)
