"""Audit 7: the embedded archive (folder + SQLite index) under concurrency and failure.

Nothing acknowledged is lost, nothing half-written is served, the server stays up: concurrent
C-STOREs (our windowed store_many, pynetdicom) while C-FINDs and rescans run, one SOP Instance
UID stored by two peers at once, files removed / truncated / replaced / half-copied behind the
server's back, kill -9 of ``dimse qrscp`` mid-store, a full or read-only disk (a tmpfs, when it
can be mounted), two archives on one folder and index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dimse.archive import Archive, Duplicate
from dimse.connect import connect
from dimse.qr import Level, QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr
from dimse.server import Server
from tests import peers

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def make_ds(study: str, series: str, sop: str, *, name: str = "AUDIT^SEVEN",
            pixels: int = 4096, fill: int = 0) -> Dataset:
    """A small CT instance whose Pixel Data is ``pixels`` bytes of ``fill``."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop, study, series
    ds.PatientName, ds.PatientID, ds.Modality, ds.StudyDate = name, "A7", "CT", "20260101"
    ds.Rows = max(1, pixels // 2 // 50000)
    ds.Columns = pixels // 2 // ds.Rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes([fill & 0xFF]) * pixels
    return ds


def write_file(path: Path, ds: Dataset) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def rows(db: Path) -> dict[str, str]:
    """sop_uid -> path of every indexed instance (read through a connection of our own)."""
    con = sqlite3.connect(db, timeout=10)
    try:
        return dict(con.execute("SELECT sop_uid, path FROM instance").fetchall())
    finally:
        con.close()


def dicom_files(storage: Path) -> set[str]:
    return {p.relative_to(storage).as_posix() for p in storage.rglob("*.dcm")
            if not p.name.startswith(".tmp-")}


def temp_files(storage: Path) -> list[Path]:
    return sorted(storage.rglob(".tmp-*"))


def image_query(study: str = "", series: str = "", *, name: bool = False) -> Dataset:
    """IMAGE level keys (``name``: also Patient's Name, for the archive's own find())."""
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPInstanceUID = study, series, ""
    if name:
        q.PatientName = ""
    return q


def assert_served_complete(storage: Path, match: Dataset, sizes: set[int]) -> None:
    """A C-FIND match has a whole file at its archive path."""
    path = storage / match.StudyInstanceUID / match.SeriesInstanceUID / \
        f"{match.SOPInstanceUID}.dcm"
    full = pydicom.dcmread(path)
    assert len(full.PixelData) in sizes, f"half-written file served: {path}"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "store", tmp_path / "index.sqlite")
    yield arc
    arc.close()


@pytest.fixture
async def server(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "ARCHIVE", async_window=(8, 8)) as srv:
        yield srv


# --------------------------------------------------------------------------- concurrency


async def _finder(port: int, storage: Path, stop: asyncio.Event, sizes: set[int]) -> int:
    rounds = 0
    while not stop.is_set():
        async with connect_qr("127.0.0.1", port, called_ae="ARCHIVE") as assoc:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = ""
            studies = [m.StudyInstanceUID
                       async for m in assoc.find(q, model=QueryModel.STUDY_ROOT)]
            series = []
            for study in studies:
                q = Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID, q.SeriesInstanceUID = study, ""
                series += [(study, m.SeriesInstanceUID)
                           async for m in assoc.find(q, model=QueryModel.STUDY_ROOT)]
            for study, se in series:
                async for m in assoc.find(image_query(study, se), model=QueryModel.STUDY_ROOT):
                    assert_served_complete(storage, m, sizes)
        rounds += 1
    return rounds


async def _rescanner(archive: Archive, stop: asyncio.Event) -> int:
    scans = 0
    while not stop.is_set():
        stats = await archive.run(archive.index)
        assert not stats.failed and not stats.duplicates and not stats.removed
        scans += 1
        await asyncio.sleep(0.02)
    return scans


def _pynetdicom_store(port: int, items: list[Dataset], acked: set[str]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="PYNET")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        for ds in items:
            status = assoc.send_c_store(ds)
            if status and status.Status == 0:
                acked.add(ds.SOPInstanceUID)
    finally:
        assoc.release()


async def test_concurrent_stores_finds_and_rescans_lose_nothing(
        archive: Archive, server: Server, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """3 windowed store_many associations + a pynetdicom peer, while C-FINDs check every match
    has its whole file and index() runs in a loop: every instance answered 0 is on disk and
    indexed exactly once, no temporary file stays, nothing is logged at ERROR."""
    caplog.set_level(logging.WARNING)
    sizes = {6000, 9000}
    batches = []
    for _ in range(3):
        study, series = generate_uid(), generate_uid()
        batches.append([make_ds(study, series, generate_uid(), pixels=6000) for _ in range(40)])
    study, series = generate_uid(), generate_uid()
    pynet_items = [write_file(tmp_path / "pyn" / f"{i}.dcm",
                              make_ds(study, series, generate_uid(), pixels=9000))
                   for i in range(20)]
    pynet = [pydicom.dcmread(p) for p in pynet_items]
    acked: set[str] = set()

    async def ours(items: list[Dataset]) -> None:
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[CTImageStorage], async_window=(8, 8)) as assoc:
            assert assoc.negotiated.async_window == (8, 8)
            statuses = await assoc.store_many(items)
        acked.update(ds.SOPInstanceUID for ds, s in zip(items, statuses, strict=True) if s == 0)

    stop = asyncio.Event()
    finder = asyncio.create_task(_finder(server.port, archive.storage_dir, stop, sizes))
    rescans = asyncio.create_task(_rescanner(archive, stop))
    thread = threading.Thread(target=_pynetdicom_store, args=(server.port, pynet, acked))
    thread.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(ours(b) for b in batches)), 40)
        await asyncio.to_thread(thread.join, 30)
    finally:
        stop.set()
        finds, scans = await asyncio.wait_for(asyncio.gather(finder, rescans), 30)
    assert finds >= 1 and scans >= 1
    assert len(acked) == 140
    indexed = rows(archive.db_path)
    assert set(indexed) == acked
    assert set(indexed.values()) == dicom_files(archive.storage_dir)
    assert temp_files(archive.storage_dir) == []
    assert archive.counts() == (4, 140)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "locked" not in caplog.text


async def test_same_sop_from_two_peers_keeps_one_consistent_copy(
        archive: Archive, server: Server) -> None:
    """Two peers store the same 25 SOP Instance UIDs at once with different content
    (patient name, instance number, pixels): all answered 0 (Duplicate.KEEP), one file per
    instance, and the index describes the file that was kept. The check is on an IMAGE level
    attribute: Patient's Name belongs to the patient (same Patient ID), whose one row holds
    the name of whichever instance was indexed last when the kept ones come from both peers."""
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(25)]

    def instance(sop: str, name: str, fill: int) -> Dataset:
        ds = make_ds(study, series, sop, name=name, fill=fill)
        ds.InstanceNumber = fill
        return ds

    async def peer(name: str, fill: int) -> list[int]:
        items = [instance(sop, name, fill) for sop in sops]
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[CTImageStorage], async_window=(8, 8)) as assoc:
            return await assoc.store_many(items)

    first, second = await asyncio.wait_for(
        asyncio.gather(peer("FIRST^PEER", 1), peer("SECOND^PEER", 2)), 30)
    assert first == [0] * 25 and second == [0] * 25
    assert len(dicom_files(archive.storage_dir)) == 25
    assert temp_files(archive.storage_dir) == []
    for sop in sops:
        path = archive.stored_path(sop)
        assert path is not None and path.is_file()
        kept = pydicom.dcmread(path)
        assert {kept.PixelData[0], str(kept.PatientName)} in ({1, "FIRST^PEER"},
                                                              {2, "SECOND^PEER"})
        q = image_query(study, series)
        q.SOPInstanceUID, q.InstanceNumber = sop, None
        (match,) = list(archive.find(q, QueryModel.STUDY_ROOT, Level.IMAGE))
        assert int(match.InstanceNumber) == kept.PixelData[0] == int(kept.InstanceNumber)


async def test_same_sop_under_another_study_is_not_stored_twice(
        archive: Archive, server: Server) -> None:
    """KEEP: a second copy of a SOP Instance UID naming another study is answered 0 and
    dropped; the instance stays once, under its first study."""
    sop, study1, study2 = generate_uid(), generate_uid(), generate_uid()
    async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                       sop_classes=[CTImageStorage]) as assoc:
        assert await assoc.store(make_ds(study1, generate_uid(), sop)) == 0
        assert await assoc.store(make_ds(study2, generate_uid(), sop)) == 0
    (only,) = dicom_files(archive.storage_dir)
    assert only.startswith(study1 + "/")
    assert archive.counts() == (1, 1)


def test_replace_policy_sequential_moves_the_file(archive: Archive) -> None:
    """REPLACE: the new copy under another study replaces the stored one (file moved, one
    row, the old file gone)."""
    sop = generate_uid()
    first = write_file(archive.storage_dir / ".tmp-a.part", make_ds(generate_uid(),
                                                                   generate_uid(), sop))
    archive.adopt(first, duplicate=Duplicate.REPLACE)
    study2 = generate_uid()
    second = write_file(archive.storage_dir / ".tmp-b.part",
                        make_ds(study2, generate_uid(), sop, fill=7))
    outcome = archive.adopt(second, duplicate=Duplicate.REPLACE)
    assert outcome.duplicate
    (only,) = dicom_files(archive.storage_dir)
    assert only.startswith(study2 + "/")
    assert archive.stored_path(sop) == archive.storage_dir / only
    assert pydicom.dcmread(archive.storage_dir / only).PixelData[0] == 7


# --------------------------------------------------------------------------- files changed behind


def _indexed_folder(archive: Archive, n: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    paths = [write_file(archive.storage_dir / study / series / f"{i}.dcm",
                        make_ds(study, series, generate_uid(), pixels=20000))
             for i in range(n)]
    assert archive.index().added == n
    return paths


def test_rescan_drops_removed_truncated_and_rereads_replaced(archive: Archive) -> None:
    paths = _indexed_folder(archive, 4)
    removed, truncated, replaced, kept = paths
    removed.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) - 5000])  # cut inside the Pixel Data value
    new_sop = generate_uid()
    ds = pydicom.dcmread(replaced)
    write_file(replaced, make_ds(ds.StudyInstanceUID, ds.SeriesInstanceUID, new_sop,
                                 name="REPLACED^FILE", pixels=20000))
    stats = archive.index()
    assert stats.failed == (truncated,)
    assert stats.removed == 2 and stats.updated == 1
    indexed = rows(archive.db_path)
    assert set(indexed.values()) == {p.relative_to(archive.storage_dir).as_posix()
                                     for p in (replaced, kept)}
    assert new_sop in indexed
    for match in archive.find(image_query(), QueryModel.STUDY_ROOT, Level.IMAGE):
        path = archive.stored_path(match.SOPInstanceUID)
        assert path is not None
        assert len(pydicom.dcmread(path).PixelData) == 20000


def test_partial_copy_cut_inside_a_value_waits_for_the_whole_file(archive: Archive) -> None:
    """A rescan during a copy cut inside a value leaves it out; the next one, once the copy
    is complete, indexes it."""
    source = write_file(archive.storage_dir.parent / "src.dcm",
                        make_ds(generate_uid(), generate_uid(), generate_uid(), pixels=50000))
    data = source.read_bytes()
    target = archive.storage_dir / "incoming.dcm"
    target.write_bytes(data[:len(data) // 2])
    first = archive.index()
    assert first.added == 0 and first.failed == (target,)
    assert archive.counts() == (0, 0)
    with target.open("ab") as fh:
        fh.write(data[len(data) // 2:])
    second = archive.index()
    assert second.added == 1 and second.failed == ()
    (match,) = archive.find(image_query(), QueryModel.STUDY_ROOT, Level.IMAGE)
    assert len(pydicom.dcmread(target).PixelData) == 50000
    assert match.SOPInstanceUID == pydicom.dcmread(target).SOPInstanceUID


async def test_file_removed_then_rescanned_while_server_runs(archive: Archive,
                                                             server: Server) -> None:
    """A stored instance deleted by another process leaves C-FIND at the next rescan; the
    server keeps answering throughout."""
    sop = generate_uid()
    async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                       sop_classes=[CTImageStorage]) as assoc:
        assert await assoc.store(make_ds(generate_uid(), generate_uid(), sop)) == 0
    path = archive.stored_path(sop)
    assert path is not None
    path.unlink()
    stats = await archive.run(archive.index)
    assert stats.removed == 1
    async with connect_qr("127.0.0.1", server.port, called_ae="ARCHIVE") as qr:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        assert [m async for m in qr.find(q, model=QueryModel.STUDY_ROOT)] == []
        await qr.echo()


# --------------------------------------------------------------------------- two archives


async def test_two_archives_on_one_folder_and_index_stay_consistent(tmp_path: Path) -> None:
    """A user mistake: two servers on one folder and index, storing and rescanning at once.
    No store fails, the index passes integrity_check, and after one more rescan it matches
    the folder with every acknowledged instance."""
    a = Archive(tmp_path / "store", tmp_path / "index.sqlite")
    b = Archive(tmp_path / "store", tmp_path / "index.sqlite")
    acked: set[str] = set()
    stop = asyncio.Event()

    async def rescan(arc: Archive) -> None:
        while not stop.is_set():
            await arc.run(arc.index)
            await asyncio.sleep(0.05)

    async def store(port: int) -> None:
        study, series = generate_uid(), generate_uid()
        items = [make_ds(study, series, generate_uid()) for _ in range(40)]
        async with connect("127.0.0.1", port, called_ae="ARCHIVE",
                           sop_classes=[CTImageStorage], async_window=(4, 4)) as assoc:
            statuses = await assoc.store_many(items)
        assert statuses == [0] * 40
        acked.update(ds.SOPInstanceUID for ds in items)

    try:
        async with archive_server(a, "ARCHIVE", async_window=(4, 4)) as sa, \
                archive_server(b, "ARCHIVE", async_window=(4, 4)) as sb:
            scans = [asyncio.create_task(rescan(a)), asyncio.create_task(rescan(b))]
            try:
                await asyncio.wait_for(asyncio.gather(store(sa.port), store(sb.port),
                                                      store(sa.port), store(sb.port)), 40)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*scans), 20)
        a.index()
        con = sqlite3.connect(tmp_path / "index.sqlite")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        indexed = rows(tmp_path / "index.sqlite")
        assert set(indexed) == acked
        assert set(indexed.values()) == dicom_files(a.storage_dir)
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- crash, disk full


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _qrscp(storage: Path, db: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dimse", "qrscp", "--storage", str(storage), "--db", str(db),
             "--aet", "ARCHIVE", "--port", str(port), "--rescan", "1"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "qrscp did not listen"
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_kill9_mid_store_then_restart_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    """kill -9 of qrscp while two storescu send 2 MB instances; the restarted server on the
    same folder and index holds every instance storescu saw acknowledged, index and folder
    agree (each indexed file whole), and leftover temporary files are neither indexed nor
    counted."""
    storescu = peers.dcmtk("storescu")
    storage, db = tmp_path / "store", tmp_path / "index.sqlite"
    uid_of: dict[str, str] = {}
    for n in range(2):
        study, series = generate_uid(), generate_uid()
        for i in range(25):
            sop = generate_uid()
            path = write_file(tmp_path / f"in{n}" / f"{i}.dcm",
                              make_ds(study, series, sop, pixels=2_000_000))
            uid_of[str(path)] = sop
    logs = [tmp_path / "scu0.log", tmp_path / "scu1.log"]
    with _qrscp(storage, db, tmp_path / "qrscp1.log") as (proc, port):
        scus = [subprocess.Popen([storescu, "-v", "-aec", "ARCHIVE", "127.0.0.1", str(port),
                                  "+sd", str(tmp_path / f"in{n}")],
                                 stdout=logs[n].open("wb"), stderr=subprocess.STDOUT)
                for n in range(2)]
        deadline = time.monotonic() + 20
        while sum(log.read_text(errors="replace").count("(Success)") for log in logs) < 8:
            assert time.monotonic() < deadline and all(s.poll() is None for s in scus)
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        for scu in scus:
            scu.wait(20)
    acked = set()
    for log in logs:
        current = None
        for line in log.read_text(errors="replace").splitlines():
            if "Sending file:" in line:
                current = line.split("Sending file:")[1].strip()
            elif "Received Store Response (Success)" in line and current:
                acked.add(uid_of[current])
    assert 8 <= len(acked) < 50
    with _qrscp(storage, db, tmp_path / "qrscp2.log"):
        pass
    indexed = rows(db)  # a store placed but not yet answered at the kill may be there too
    assert acked <= set(indexed) and len(indexed) <= len(acked) + 2
    assert f"serving {len(indexed)} instances" in (tmp_path / "qrscp2.log").read_text()
    assert set(indexed.values()) == dicom_files(storage)
    for rel in indexed.values():
        assert len(pydicom.dcmread(storage / rel).PixelData) == 2_000_000


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (skip where it cannot be mounted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10, check=False)


async def test_disk_full_then_read_only_folder_fails_cleanly(tiny_tmpfs: Path,
                                                             tmp_path: Path) -> None:
    """Stores into a 3 MiB folder until it is full: each refused store gets 0xA700, no
    temporary or partial file stays, the acknowledged ones are indexed and whole, C-FIND
    still answers; a read-only remount (index elsewhere) gives 0xA700 too; once space is
    back a store succeeds."""
    storage = tiny_tmpfs / "store"
    archive = Archive(storage, tmp_path / "index.sqlite")
    study, series = generate_uid(), generate_uid()
    items = [make_ds(study, series, generate_uid(), pixels=400_000) for _ in range(10)]
    try:
        async with archive_server(archive, "ARCHIVE") as srv:
            async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                               sop_classes=[CTImageStorage]) as assoc:
                statuses = [await assoc.store(ds) for ds in items]
            assert 0 in statuses and 0xA700 in statuses
            assert set(statuses) == {0, 0xA700}
            assert temp_files(storage) == []
            acked = {ds.SOPInstanceUID for ds, s in zip(items, statuses, strict=True) if s == 0}
            indexed = rows(archive.db_path)
            assert set(indexed) == acked
            assert set(indexed.values()) == dicom_files(storage)
            for rel in indexed.values():
                assert len(pydicom.dcmread(storage / rel).PixelData) == 400_000
            subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True,
                           timeout=10)
            try:
                async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                                   sop_classes=[CTImageStorage]) as assoc:
                    assert await assoc.store(make_ds(study, series, generate_uid())) == 0xA700
                await archive.run(archive.index)
                async with connect_qr("127.0.0.1", srv.port, called_ae="ARCHIVE") as qr:
                    found = [m async for m in qr.find(image_query(study, series),
                                                      model=QueryModel.STUDY_ROOT)]
                assert {m.SOPInstanceUID for m in found} == acked
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True,
                               timeout=10)
            (storage / next(iter(indexed.values()))).unlink()
            async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                               sop_classes=[CTImageStorage]) as assoc:
                assert await assoc.store(make_ds(study, series, generate_uid())) == 0
    finally:
        archive.close()
