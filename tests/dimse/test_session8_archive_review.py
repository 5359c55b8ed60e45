"""Audit 9 review of the archive (notes/audit9/review.md, defects 1-8): the index lock wherever
the index is and whatever path names it, nested archive folders, the start-up cleanup racing
another archive of the process, locks inherited across fork(), a REPLACE whose commit fails,
other I/O errors of a store, and the settle heuristic with a clock ahead of ours."""

from __future__ import annotations

import copy
import errno
import logging
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dimse import archive as archive_mod
from dimse import archive_files, archive_store, cli, codec
from dimse.archive import Archive, ArchiveInUseError, IndexDatabaseError
from dimse.archive_store import ArchiveSink, archive_store_handler
from dimse.errors import ServiceError
from dimse.messages import CStoreRQ
from dimse.services import ReceivedDataSet

REPO = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"
_OPEN = ("import sys\nfrom dimse.archive import Archive, ArchiveInUseError\n"
         "try:\n    Archive(sys.argv[1], *sys.argv[2:]).close()\n"
         "except ArchiveInUseError as exc:\n    print(exc)\n    sys.exit(3)\n")


def _open_elsewhere(*args: Path) -> subprocess.CompletedProcess[str]:
    """Open (and close) an Archive in another process: exit 3 and the message if refused."""
    return subprocess.run([sys.executable, "-c", _OPEN, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def _sink(archive: Archive) -> ArchiveSink:
    """A C-STORE half received into ``archive`` (its temporary file is live)."""
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2.3.4")
    sink = ArchiveSink(archive, rq, "1.2.840.10008.1.2.1")
    sink.write(memoryview(b"\x08\x00\x16\x00UI\x1a\x00" + CT.encode() + b"\x00"))
    return sink


# -- 1, 6: the index lock --------------------------------------------------------------------

def test_1_a_folders_default_index_cannot_serve_another_folder_elsewhere(tmp_path: Path) -> None:
    """Folder A with its default index A/.archive.sqlite held here: another process gets
    ArchiveInUseError for folder B with that index. Once A is closed, B cannot take A's index
    over either (IndexDatabaseError, audit 12 #6: it would delete A's rows), and A opens."""
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    index = a_dir / ".archive.sqlite"
    with Archive(a_dir):
        done = _open_elsewhere(b_dir, index)
        assert done.returncode == 3 and "archive index" in done.stdout, done
    with pytest.raises(IndexDatabaseError, match="index of the archive folder"):
        Archive(b_dir, index)
    assert _open_elsewhere(b_dir, index).returncode != 0
    assert _open_elsewhere(a_dir).returncode == 0


def test_6_an_index_named_through_a_symlink_is_the_same_index(tmp_path: Path) -> None:
    real = tmp_path / "db" / "index.sqlite"
    real.parent.mkdir()
    link = tmp_path / "link.sqlite"
    with Archive(tmp_path / "A", real):
        link.symlink_to(real)
        done = _open_elsewhere(tmp_path / "B", link)
        assert done.returncode == 3 and str(real) + ".lock" in done.stdout, done


def test_1_the_index_lock_file_in_the_folder_is_not_indexed(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        assert (tmp_path / ".archive.sqlite.lock").exists()
        stats = archive.index(settle=0)
        assert not stats.failed and not stats.added


# -- 3: nested folders -----------------------------------------------------------------------

def test_3_a_folder_inside_or_around_one_held_by_another_process_is_refused(
        tmp_path: Path) -> None:
    outer, inner = tmp_path / "F", tmp_path / "F" / "sub"
    inner.mkdir(parents=True)
    with Archive(inner) as archive:
        live = _sink(archive)
        done = _open_elsewhere(outer)
        assert done.returncode == 3 and "must not nest" in done.stdout, done
        assert live.temp_path.exists()  # not taken for a crash leftover
        live.discard()
    with Archive(outer):
        done = _open_elsewhere(inner)
        assert done.returncode == 3 and "must not nest" in done.stdout, done


def test_3_nested_folders_in_one_process_are_refused_too(tmp_path: Path) -> None:
    with Archive(tmp_path / "F" / "sub"):
        with pytest.raises(ArchiveInUseError, match="must not nest"):
            Archive(tmp_path / "F")
    with Archive(tmp_path / "F"):
        with pytest.raises(ArchiveInUseError, match="must not nest"):
            Archive(tmp_path / "F" / "sub")
        with Archive(tmp_path / "G"):  # a sibling is fine
            pass


# -- 4: the start-up cleanup and another archive of the process ------------------------------

def test_4_a_second_archive_waits_for_the_first_ones_cleanup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first Archive's cleanup walk is held open (bounded) until the second Archive,
    made by another thread meanwhile, has a store under way: fixed, the second one waits for
    the walk, so its temporary file is not deleted as a crash leftover."""
    started, written = threading.Event(), threading.Event()
    real_walk = os.walk

    def walk(top: Any, *args: Any, **kwargs: Any) -> Any:
        started.set()
        written.wait(1.0)  # fixed code: the second archive is blocked meanwhile
        return real_walk(top, *args, **kwargs)

    monkeypatch.setattr(archive_mod.os, "walk", walk)
    result: dict[str, Any] = {}

    def second() -> None:
        started.wait(10)
        result["archive"] = archive = Archive(tmp_path)
        result["sink"] = _sink(archive)
        written.set()

    thread = threading.Thread(target=second)
    thread.start()
    first = Archive(tmp_path)
    thread.join(10)
    monkeypatch.undo()
    try:
        assert result["sink"].temp_path.exists()
    finally:
        result["sink"].discard()
        result["archive"].close()
        first.close()


# -- 5: fork ---------------------------------------------------------------------------------

def test_5_a_forked_child_holds_no_archive_lock(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then idle until told (bounded)
        code = 1
        try:
            os.close(report_r)
            os.close(go_w)
            said = b"held" if archive_files._HELD else b"free"
            try:
                Archive(tmp_path).close()
                said += b" opened"
            except ArchiveInUseError:
                said += b" refused"
            os.write(report_w, said)
            select.select([go_r], [], [], 10)
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([report_r], [], [], 20)
        said = os.read(report_r, 100).decode() if ready else "no answer"
        archive.close()
        after = _open_elsewhere(tmp_path)  # the idle child keeps nothing locked
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(report_r)
        os.waitpid(pid, 0)
    assert said == "free refused"
    assert after.returncode == 0, after


def _ds() -> Dataset:
    from pydicom.uid import generate_uid
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "AUDIT^NINE", "A9", "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(32)
    return ds


# -- 2: a REPLACE whose commit fails -----------------------------------------------------------

class _FailingCommit:
    """The archive's connection, whose next commit fails like a full disk."""

    def __init__(self, db: Any) -> None:
        self._db, self.armed = db, True

    def __enter__(self) -> Any:
        return self._db.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        if exc_type is None and self.armed:
            self.armed = False
            self._db.rollback()
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.__exit__(exc_type, exc, tb)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_2_a_replace_whose_commit_fails_keeps_the_old_version(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        old = _ds()
        old.PatientName = "OLD^VERSION"
        path = archive.store(old, transfer_syntax=ExplicitVRLittleEndian)
        new = copy.deepcopy(old)
        new.PatientName = "NEW^VERSION"
        proxy = _FailingCommit(archive._db)
        archive._db = proxy  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError):
            archive.store(new, transfer_syntax=ImplicitVRLittleEndian)
        archive._db = proxy._db
        assert str(pydicom.dcmread(path).PatientName) == "OLD^VERSION"
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no backup left
        assert not archive.index(settle=0).updated  # the row still describes the file


# -- 7: other I/O errors of a store ----------------------------------------------------------

def _emfile(real: Any) -> Any:
    def fake(name: Any, *args: Any, **kwargs: Any) -> Any:
        if "/.tmp-" in str(name):
            raise OSError(errno.EMFILE, "Too many open files", str(name))
        return real(name, *args, **kwargs)
    return fake


def _one_error(caplog: pytest.LogCaptureFixture, sop: str) -> None:
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, records
    assert records[0].levelno == logging.ERROR and records[0].exc_info is None
    assert sop in records[0].getMessage() and "Too many open files" in records[0].getMessage()


def test_7_streamed_store_failing_to_read_its_file_back_is_0xa700(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    ds = _ds()
    with Archive(tmp_path) as archive:
        rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT,
                      affected_sop_instance_uid=ds.SOPInstanceUID)
        sink = ArchiveSink(archive, rq, codec.EXPLICIT_VR_LE)
        sink.write(memoryview(codec.encode(ds, codec.EXPLICIT_VR_LE)))
        monkeypatch.setattr(archive_store, "open", _emfile(open), raising=False)
        with caplog.at_level(logging.INFO), pytest.raises(ServiceError) as err:
            sink.place()
        assert err.value.status == 0xA700
        _one_error(caplog, ds.SOPInstanceUID)
        assert not sink.temp_path.exists()


async def test_7_in_memory_store_failing_to_read_its_file_back_is_0xa700(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    ds = _ds()
    with Archive(tmp_path) as archive:
        rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT,
                      affected_sop_instance_uid=ds.SOPInstanceUID)
        data = ReceivedDataSet(codec.EXPLICIT_VR_LE, codec.encode(ds, codec.EXPLICIT_VR_LE))
        monkeypatch.setattr(archive_files, "_open_flags", _emfile(archive_files._open_flags))
        with caplog.at_level(logging.INFO), pytest.raises(ServiceError) as err:
            await archive_store_handler(archive)(rq, data, None)  # type: ignore[arg-type]
        assert err.value.status == 0xA700
        _one_error(caplog, ds.SOPInstanceUID)
        assert not list(tmp_path.rglob(".tmp-*"))


# -- 8: settle -------------------------------------------------------------------------------

def _header_only(archive: Archive, ahead: float) -> Path:
    ds = _ds()
    del ds.PixelData
    path = archive.storage_dir / "in" / "header_only.dcm"
    path.parent.mkdir()
    ds.save_as(path, implicit_vr=False, little_endian=True)
    when = time.time() + ahead
    os.utime(path, (when, when))
    return path


def test_8_settle_zero_indexes_a_file_from_a_clock_ahead_at_once(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        path = _header_only(archive, 3 * 3600)
        assert archive.index(settle=0).added == 1
        archive.add_file(path)  # no ValueError either


def test_8_a_future_mtime_counts_as_a_change_when_first_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Archive(tmp_path) as archive:
        path = _header_only(archive, 3 * 3600)
        first = archive.index(settle=5)
        assert first.pending == (path,) and not first.added
        later = time.time() + 6  # 6 s later (by our clock), still hours before its mtime
        monkeypatch.setattr(archive_mod.time, "time", lambda: later)
        assert archive.index(settle=5).added == 1


def test_8_unsettled_says_why(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive:
        path = _header_only(archive, 0)
        with pytest.raises(ValueError, match="ends before its pixel data") as err:
            archive._add(path, "in/header_only.dcm", replace=False, settle=60)
        assert str(path) in str(err.value) and "copy still running" in str(err.value)


def test_8_pending_files_at_start_are_in_the_summary() -> None:
    assert cli._pending((), 60) == ""
    assert "1 pending" in cli._pending((Path("x"),), 60)
    assert "restart" in cli._pending((Path("x"),), 0)
