"""C-STORE into the archive server (``dimse qrscp``): streamed to disk, fsynced, renamed, indexed.

A 50 MB instance passes with flat memory and lands byte-identical; C-FIND finds it at once; an
abort half-way leaves no file and no index entry; DCMTK storescu works; duplicates, UID
mismatches, unreadable data sets and disk errors get the documented statuses.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import os
import struct
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from dimse import archive_store
from dimse.archive import Archive, Duplicate
from dimse.archive_store import ArchiveSink
from dimse.association import Association
from dimse.connect import connect
from dimse.errors import AssociationAborted
from dimse.instances import encode_instance
from dimse.messages import CStoreRQ
from dimse.qr import QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr, find
from dimse.server import Server
from pdu.constants import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests import peers

pytestmark = pytest.mark.timeout(60)

ROOT = "1.2.826.0.1.3680043.10.4343."
SIZE_50MB = 50_000_000


def instance(n: int = 1, size: int = 64, name: str = "Doe^Jane") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}1.1.{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ROOT + "1", ROOT + "1.1"
    ds.PatientID, ds.PatientName = "P1", name
    ds.StudyDate, ds.Modality, ds.InstanceNumber = "20240101", "CT", n
    ds.Rows, ds.Columns, ds.BitsAllocated = 1, min(size // 2, 1024), 16
    ds.PixelData = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return ds


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


@pytest.fixture
async def server(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP") as srv:
        yield srv


def files(archive: Archive) -> list[Path]:
    """Every file in the archive folder except the SQLite index."""
    return sorted(p.relative_to(archive.storage_dir) for p in archive.storage_dir.rglob("*")
                  if p.is_file() and not p.name.startswith(".archive.sqlite"))


def split_file(path: Path) -> tuple[bytes, int]:
    """(group 0002 bytes after DICM, offset of the data set) of a Part 10 file."""
    with path.open("rb") as fh:
        head = fh.read(132 + 12)
        assert head[128:132] == b"DICM"
        tag, vr, length = struct.unpack("<L2sH", head[132:140])
        assert (tag, vr, length) == (0x00000002, b"UL", 4)
        group_length = struct.unpack("<L", head[140:144])[0]
        fh.seek(132)
        meta = fh.read(12 + group_length)
    return meta, 132 + 12 + group_length


def digest(path: Path, offset: int) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


async def send(port: int, sop_class: str, sop_instance: str, data: bytes,
               ts: str = ExplicitVRLittleEndian, calling_ae: str = "SENDER") -> int:
    async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae=calling_ae,
                       sop_classes=[sop_class], transfer_syntaxes=[ts]) as assoc:
        cx = assoc.storage_context(sop_class, ts)
        return await assoc.store_encoded(sop_class, sop_instance, data, cx)


async def find_instances(port: int) -> list[str]:
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID, ident.SeriesInstanceUID = ROOT + "1", ROOT + "1.1"
    ident.SOPInstanceUID = ""
    async with connect_qr("127.0.0.1", port, called_ae="QRSCP") as assoc:
        return sorted([str(m.SOPInstanceUID) async for m in
                       find(assoc, ident, model=QueryModel.STUDY_ROOT)])


# --------------------------------------------------------------------------- large instance


async def test_50mb_instance_streamed_with_flat_memory(archive: Archive, server: Server) -> None:
    ds = instance(1, size=SIZE_50MB)
    data = encode_instance(ds, ExplicitVRLittleEndian)
    sent_digest = hashlib.sha256(data).hexdigest()
    del ds
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        status = await send(server.port, CTImageStorage, f"{ROOT}1.1.1", data)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert status == 0
    assert peak < SIZE_50MB // 10, peak  # far below the instance: it was never held whole
    # indexed at once: a C-FIND right after the response finds it
    assert await find_instances(server.port) == [f"{ROOT}1.1.1"]
    stored = archive.stored_path(f"{ROOT}1.1.1")
    assert stored is not None
    assert files(archive) == [stored.relative_to(archive.storage_dir)]
    assert stored.relative_to(archive.storage_dir).parts == (
        f"{ROOT}1", f"{ROOT}1.1", f"{ROOT}1.1.1.dcm")
    meta, offset = split_file(stored)
    assert stored.stat().st_size == offset + len(data)
    assert digest(stored, offset) == sent_digest  # the data set byte for byte as sent
    back = pydicom.dcmread(stored, stop_before_pixels=True)
    fm = back.file_meta
    assert fm.FileMetaInformationGroupLength == len(meta) - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == CTImageStorage
    assert fm.MediaStorageSOPInstanceUID == f"{ROOT}1.1.1"
    assert fm.TransferSyntaxUID == ExplicitVRLittleEndian
    assert fm.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert fm.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert fm.SendingApplicationEntityTitle == "SENDER"
    assert fm.SourceApplicationEntityTitle == fm.ReceivingApplicationEntityTitle == "QRSCP"
    assert back.PatientName == "Doe^Jane"


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
async def test_other_transfer_syntaxes_written_as_received(archive: Archive, server: Server,
                                                           ts: str) -> None:
    ds = instance(2, size=4000)
    data = encode_instance(ds, ts)
    assert await send(server.port, CTImageStorage, f"{ROOT}1.1.2", data, ts) == 0
    stored = archive.stored_path(f"{ROOT}1.1.2")
    assert stored is not None
    _, offset = split_file(stored)
    assert stored.read_bytes()[offset:] == data  # deflated: the received stream as it is
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.PatientName == "Doe^Jane"
    assert back.PixelData == ds.PixelData


# --------------------------------------------------------------------------- abort


def _abort_after(acceptor: Association, nbytes: int, folder: Path, at_abort: list[str]) -> None:
    """Abort ``acceptor`` once it has received ``nbytes``; record the folder's temp files."""
    protocol = acceptor.protocol
    original = protocol.data_received
    seen = [0]
    loop = asyncio.get_running_loop()

    def counting(data: bytes) -> None:
        before = seen[0]
        seen[0] += len(data)
        if before < nbytes <= seen[0]:
            at_abort.extend(p.name for p in folder.iterdir() if p.suffix == ".part")
            loop.call_soon(acceptor.abort)
        original(data)

    protocol.data_received = counting  # type: ignore[method-assign]


async def test_abort_half_way_leaves_no_file_and_no_entry(archive: Archive,
                                                          server: Server) -> None:
    size = 10_000_000
    data = encode_instance(instance(3, size=size), ExplicitVRLittleEndian)
    assoc = await connect("127.0.0.1", server.port, called_ae="QRSCP",
                          sop_classes=[CTImageStorage])
    [acceptor] = server.associations
    at_abort: list[str] = []
    _abort_after(acceptor, size // 2, archive.storage_dir, at_abort)
    cx = assoc.storage_context(CTImageStorage, ExplicitVRLittleEndian)
    with pytest.raises(AssociationAborted):
        await asyncio.wait_for(assoc.store_encoded(CTImageStorage, f"{ROOT}1.1.3", data, cx), 10)
    await asyncio.wait_for(assoc.wait_closed(), 5)
    for _ in range(100):
        if not server.associations:
            break
        await asyncio.sleep(0.02)
    assert len(at_abort) == 1 and at_abort[0].startswith(".tmp-")  # it was streaming to disk
    assert files(archive) == []  # the temp file is gone, nothing was renamed
    assert archive.stored_path(f"{ROOT}1.1.3") is None
    assert await find_instances(server.port) == []


# --------------------------------------------------------------------------- DCMTK


async def test_dcmtk_storescu_into_archive_server(archive: Archive, server: Server,
                                                  tmp_path: Path) -> None:
    paths = [peers.make_ct(tmp_path / f"ct{i}.dcm", study_uid=ROOT + "1",
                           series_uid=ROOT + "1.1", sop_uid=f"{ROOT}1.1.{10 + i}",
                           rows=64, columns=64) for i in range(3)]
    # TCP_NODELAY=1: DCMTK turns Nagle off, else each small PDU waits for a delayed ACK
    args = ["/usr/bin/env", "TCP_NODELAY=1", peers.dcmtk("storescu"), "-aet", "DCMTKSCU",
            "-aec", "QRSCP", "127.0.0.1", str(server.port), *map(str, paths)]
    done = await asyncio.to_thread(peers.run_tool, args, timeout=30)
    assert done.returncode == 0, done.stderr
    assert await find_instances(server.port) == sorted(f"{ROOT}1.1.{10 + i}" for i in range(3))
    for i, original in enumerate(paths):
        stored = archive.stored_path(f"{ROOT}1.1.{10 + i}")
        assert stored is not None
        back = pydicom.dcmread(stored)
        assert back.file_meta.SendingApplicationEntityTitle == "DCMTKSCU"
        assert back.PixelData == pydicom.dcmread(original).PixelData
    assert not [p for p in archive.storage_dir.iterdir() if p.suffix == ".part"]


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize("policy", [Duplicate.KEEP, Duplicate.REPLACE])
async def test_duplicate_keeps_the_first_or_replaces(archive: Archive, policy: Duplicate) -> None:
    first = encode_instance(instance(4, name="First^One"), ExplicitVRLittleEndian)
    second = encode_instance(instance(4, name="Second^One"), ExplicitVRLittleEndian)
    async with archive_server(archive, "QRSCP", duplicate=policy) as srv:
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.4", first) == 0
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.4", second) == 0
        assert await find_instances(srv.port) == [f"{ROOT}1.1.4"]
    stored = archive.stored_path(f"{ROOT}1.1.4")
    assert stored is not None and len(files(archive)) == 1
    expected = "First^One" if policy is Duplicate.KEEP else "Second^One"
    assert pydicom.dcmread(stored).PatientName == expected


@pytest.mark.parametrize(("command_class", "command_uid", "offending"), [
    (CTImageStorage, f"{ROOT}1.1.999", 0x00080018),  # instance UID differs from the data set's
    (MRImageStorage, f"{ROOT}1.1.5", 0x00080016),  # SOP class differs
])
async def test_mismatch_with_command_fails_a900(archive: Archive, server: Server,
                                                command_class: str, command_uid: str,
                                                offending: int) -> None:
    data = encode_instance(instance(5), ExplicitVRLittleEndian)
    assert await send(server.port, command_class, command_uid, data) == 0xA900
    assert files(archive) == []
    assert archive.stored_path(f"{ROOT}1.1.5") is None
    assert archive.stored_path(command_uid) is None


async def test_unreadable_or_incomplete_data_set_fails(archive: Archive, server: Server) -> None:
    no_uid = instance(6)
    del no_uid.SOPInstanceUID
    data = encode_instance(no_uid, ExplicitVRLittleEndian)
    assert await send(server.port, CTImageStorage, f"{ROOT}1.1.6", data) == 0xC000
    no_study = instance(7)
    del no_study.StudyInstanceUID
    data = encode_instance(no_study, ExplicitVRLittleEndian)
    assert await send(server.port, CTImageStorage, f"{ROOT}1.1.7", data) == 0xA900
    garbage = b"\x08\x00\x18\x00UI" + struct.pack("<H", 0xFFF0) + b"1.2"
    status = await send(server.port, CTImageStorage, f"{ROOT}1.1.8", garbage)
    assert status & 0xF000 == 0xC000
    assert files(archive) == []


async def test_disk_error_answers_a700_and_leaves_nothing(
        archive: Archive, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_store.os, "fsync", full)
    data = encode_instance(instance(9), ExplicitVRLittleEndian)
    assert await send(server.port, CTImageStorage, f"{ROOT}1.1.9", data) == 0xA700
    assert files(archive) == []
    monkeypatch.undo()
    assert await send(server.port, CTImageStorage, f"{ROOT}1.1.9", data) == 0  # recovered
    assert archive.stored_path(f"{ROOT}1.1.9") is not None


# --------------------------------------------------------------------------- the sink alone


def test_discard_after_place_started_leaves_the_placed_file(archive: Archive) -> None:
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CTImageStorage,
                  affected_sop_instance_uid=f"{ROOT}1.1.20")
    sink = ArchiveSink(archive, rq, ExplicitVRLittleEndian, "ME")
    sink.write(memoryview(encode_instance(instance(20), ExplicitVRLittleEndian)))
    sink.finish()
    adopted = sink.place()
    sink.discard()  # e.g. the association aborted while the worker thread placed it
    assert adopted.path.exists() and not adopted.duplicate
    assert archive.stored_path(f"{ROOT}1.1.20") == adopted.path
    assert not sink.temp_path.exists()


def test_discard_before_place_removes_and_place_refuses(archive: Archive) -> None:
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CTImageStorage,
                  affected_sop_instance_uid=f"{ROOT}1.1.21")
    sink = ArchiveSink(archive, rq, ExplicitVRLittleEndian)
    sink.write(memoryview(encode_instance(instance(21), ExplicitVRLittleEndian)))
    sink.discard()
    assert not sink.temp_path.exists()
    with pytest.raises(Exception, match="discarded"):
        sink.place()
    assert files(archive) == []


def test_index_removes_stale_temp_files_only(archive: Archive) -> None:
    stale = archive.storage_dir / ".tmp-crashed.part"
    fresh = archive.storage_dir / ".tmp-receiving.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (0, 0))
    archive.index()
    assert not stale.exists()  # left by a crash: removed
    assert fresh.exists()  # a transfer in progress: kept
    assert archive.stored_path("x") is None


async def test_handler_without_sink_stores_in_memory_data_sets(archive: Archive) -> None:
    from dimse.archive_store import archive_store_handler
    from dimse.services import HandlerRegistry

    registry = HandlerRegistry()
    registry.on_store(archive_store_handler(archive))  # no sink: the data set arrives in memory
    async with Server("QRSCP", handlers=registry) as srv:
        first = encode_instance(instance(30, name="First^One"), ExplicitVRLittleEndian)
        again = encode_instance(instance(30, name="Second^One"), ExplicitVRLittleEndian)
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.30", first) == 0
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.30", again) == 0  # kept first
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.99", first) == 0xA900
    stored = archive.stored_path(f"{ROOT}1.1.30")
    assert stored is not None and pydicom.dcmread(stored).PatientName == "First^One"
    assert len(files(archive)) == 1
