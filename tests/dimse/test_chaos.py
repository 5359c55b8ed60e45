"""Chaos tests of the server: peers that vanish or misbehave at awkward moments.

Each test reproduces, deterministically and on 127.0.0.1, a defect found by the soak runs of
audit 5 (mixed load of our SCU, pynetdicom and DCMTK with connections cut at random points);
the soak scripts themselves are not part of the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import dimse
from dimse import commands
from dimse.archive import Archive
from dimse.assembly import fragment
from dimse.messages import CStoreRQ
from dimse.qr_scp import archive_server
from dimse.server import Server
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
