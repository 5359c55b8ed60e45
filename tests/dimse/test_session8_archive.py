"""Session 8: the archive defects of audit 7 (notes/audit7/archive.md, D1-D5), one section each.

D1 a REPLACE racing another store of the same SOP Instance UID never deletes the file the
index names; D2 a file still being copied in is left for a later rescan; D3 temporary files
of a crashed store are removed, and said so, at start; D4 a second archive (process) on the
same folder or index is refused, and a row is committed only once its file is in place;
D5 a store refused for lack of resources logs one line, no traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from dimse.archive import Archive, Duplicate
from dimse.qr import Level, QueryModel
from tests.dimse.test_audit7_archive import make_ds as _make_ds
from tests.dimse.test_audit7_archive import tiny_tmpfs as tiny_tmpfs  # a fixture
from tests.dimse.test_audit7_archive import write_file

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]


def make_ds(study: str, series: str, sop: str, *, pixels: int = 4096, fill: int = 0) -> Dataset:
    """A small CT instance whose Pixel Data is ``pixels`` bytes of ``fill``."""
    return _make_ds(study, series, sop, name="SESSION^EIGHT", pixels=pixels, fill=fill)


def image_query() -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = q.SeriesInstanceUID = q.SOPInstanceUID = ""
    return q


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "store", tmp_path / "index.sqlite")
    yield arc
    arc.close()


# --------------------------------------------------------------------------- D1


@pytest.mark.parametrize("how", ["adopt", "store"])
def test_d1_replace_racing_a_store_of_the_same_sop_keeps_the_indexed_file(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The instance is stored under study 0; two REPLACE stores of it (studies 1 and 0) race:
    the second runs while the first removes the file of study 0. The file the index names
    must exist, and be the only copy."""
    sop, series, studies = generate_uid(), generate_uid(), [generate_uid(), generate_uid()]
    folder = archive.storage_dir

    def put(study: int, n: int) -> None:
        ds = make_ds(studies[study], series, sop, fill=n)
        if how == "store":
            archive.store(ds)
        else:
            archive.adopt(write_file(folder / f"in{n}.dcm", ds), duplicate=Duplicate.REPLACE)

    put(0, 0)
    other = threading.Thread(target=put, args=(0, 2))
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == f"{sop}.dcm" and other.ident is None:  # the first store's old file
            other.start()
            other.join(1.0)  # fixed code: blocked on the archive lock until this one is done
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    put(1, 1)
    other.join(10)
    assert not other.is_alive()
    path = archive.stored_path(sop)
    assert path is not None and path.is_file(), f"the index names a missing file: {path}"
    assert sorted(folder.rglob(f"{sop}.dcm")) == [path]
    assert path.parent.parent.name == studies[0]


# --------------------------------------------------------------------------- D2


def _cut_before_pixels(tmp_path: Path) -> tuple[bytes, int]:
    """A whole file's bytes, and where its Pixel Data element starts."""
    source = write_file(tmp_path / "source.dcm", make_ds(generate_uid(), generate_uid(),
                                                         generate_uid(), pixels=100_000))
    data = source.read_bytes()
    return data, data.rindex(b"\xe0\x7f\x10\x00")


def test_d2_rescan_leaves_out_a_copy_cut_before_its_pixel_data(archive: Archive,
                                                              tmp_path: Path) -> None:
    """The copy got as far as the Pixel Data element: a valid, shorter data set, modified
    just now. The rescan leaves it for later (not failed, not found by C-FIND); once the copy
    is complete the next rescan indexes it; ``settle=0`` takes a fresh one at once."""
    data, cut = _cut_before_pixels(tmp_path)
    target = archive.storage_dir / "incoming.dcm"
    target.write_bytes(data[:cut])
    first = archive.index()
    assert (first.added, first.failed, first.pending) == (0, (), (target,))
    assert list(archive.find(image_query(), QueryModel.STUDY_ROOT, Level.IMAGE)) == []
    with target.open("ab") as fh:
        fh.write(data[cut:])
    second = archive.index()
    assert (second.added, second.pending) == (1, ())
    (match,) = archive.find(image_query(), QueryModel.STUDY_ROOT, Level.IMAGE)
    assert archive.stored_path(match.SOPInstanceUID) == target
    other = archive.storage_dir / "headers-only.dcm"
    data, cut = _cut_before_pixels(tmp_path)
    other.write_bytes(data[:cut])
    assert archive.index(settle=0).added == 1


def test_d2_indexed_file_being_rewritten_keeps_its_row(archive: Archive, tmp_path: Path) -> None:
    """An indexed file overwritten by a copy still running is neither dropped nor re-read
    half-written: its row stays until the copy is whole."""
    data, cut = _cut_before_pixels(tmp_path)
    target = archive.storage_dir / "a.dcm"
    target.write_bytes(data)
    assert archive.index().added == 1
    target.write_bytes(data[:cut])
    stats = archive.index()
    assert (stats.removed, stats.updated, stats.pending) == (0, 0, (target,))
    assert archive.counts() == (1, 1)


def test_d2_own_stores_are_indexed_at_once(archive: Archive) -> None:
    """What the archive stores itself is placed whole and indexed as it is placed."""
    sop = generate_uid()
    path = archive.store(make_ds(generate_uid(), generate_uid(), sop))
    assert archive.stored_path(sop) == path
    assert archive.counts() == (1, 1)
    stats = archive.index()
    assert (stats.added, stats.removed, stats.pending) == (0, 0, ())


# --------------------------------------------------------------------------- D4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run a command of ours; one that is still running after ``timeout`` (a second server
    not refused) is killed and fails the test."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"{args[:4]} still running after {timeout} s: not refused")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


_OPEN = ("import sys\nfrom dimse.archive import Archive, ArchiveInUseError\n"
         "try:\n    Archive(sys.argv[1], sys.argv[2]).close()\n"
         "except ArchiveInUseError as exc:\n    print(exc)\n    sys.exit(3)\n")


def test_d4_second_server_on_the_folder_or_index_is_refused(tmp_path: Path) -> None:
    """While this process holds the archive (two Archive objects here, sharing it), ``dimse
    qrscp`` on the same folder and index exits non-zero with one line; another process
    cannot open the folder, nor the index with another folder. Once both are closed it can."""
    storage, db = tmp_path / "store", tmp_path / "index.sqlite"
    first, second = Archive(storage, db), Archive(storage, db)
    try:
        done = _run([sys.executable, "-m", "dimse", "qrscp", "--aet", "ARCHIVE", "--storage",
                     str(storage), "--db", str(db), "--port", str(_free_port()),
                     "--bind", "127.0.0.1", "--rescan", "0"])
        assert done.returncode != 0
        (line,) = done.stderr.splitlines()
        assert line.startswith("dimse qrscp: error: ") and "in use" in line
        assert str(storage) in line
        first.close()
        other = _run([sys.executable, "-c", _OPEN, str(tmp_path / "other"), str(db)])
        assert other.returncode == 3 and "index" in other.stdout and str(db) in other.stdout
        assert _run([sys.executable, "-c", _OPEN, str(storage), str(db)]).returncode == 3
    finally:
        first.close()
        second.close()
    assert _run([sys.executable, "-c", _OPEN, str(storage), str(db)]).returncode == 0


def test_d4_a_row_is_committed_only_once_its_file_is_in_place(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Another connection (another server's rescan) reading the index while a store moves
    its file in must not see the row yet: it would take it for a vanished file."""
    sop = generate_uid()
    source = write_file(archive.storage_dir / ".tmp-received.part",
                        make_ds(generate_uid(), generate_uid(), sop))
    seen: list[object] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        con = sqlite3.connect(archive.db_path, timeout=5)
        try:
            seen.append(con.execute("SELECT path FROM instance WHERE sop_uid = ?",
                                    (sop,)).fetchone())
        finally:
            con.close()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    adopted = archive.adopt(source)
    assert seen == [None]
    assert adopted.path.is_file() and archive.stored_path(sop) == adopted.path


# --------------------------------------------------------------------------- D3


def _leftover(path: Path, size: int, age: float = 0.0) -> Path:
    """A temporary file as a store cut short by kill -9 leaves it, ``age`` seconds old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * (size - 132))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_d3_temporary_files_of_a_crashed_store_are_removed_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Opening the archive (its lock taken) removes every temporary file, however recent, in
    the folder and its subfolders, with one warning saying how many and how many bytes."""
    storage = tmp_path / "store"
    left = [_leftover(storage / ".tmp-crashed1.part", 1000),
            _leftover(storage / ".tmp-crashed2.part", 3000, age=600),
            _leftover(storage / "1.2" / "1.2.3" / ".tmp-abc.dcm", 500)]
    kept = write_file(storage / "1.2" / "1.2.3" / "kept.dcm",
                      make_ds("1.2", "1.2.3", generate_uid()))
    with caplog.at_level(logging.INFO, logger="dimse.archive"):
        archive = Archive(storage, tmp_path / "index.sqlite")
    try:
        assert [p for p in left if p.exists()] == []
        assert kept.is_file()
        (record,) = [r for r in caplog.records if "temporary" in r.getMessage()]
        assert record.levelno == logging.WARNING and not record.exc_info
        assert "3 temporary files (4500 bytes)" in record.getMessage()
        assert archive.index().added == 1
    finally:
        archive.close()


def test_d3_a_second_archive_of_the_process_spares_live_temporary_files(
        archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    """Another Archive of this process on the folder shares its lock: the temporary file of a
    store under way stays; an old one a later rescan removes is reported too."""
    live = _leftover(archive.storage_dir / ".tmp-live.part", 1000)
    with Archive(archive.storage_dir, archive.db_path):
        pass
    assert live.is_file()
    stale = _leftover(archive.storage_dir / ".tmp-stale.part", 2000, age=7200)
    with caplog.at_level(logging.WARNING, logger="dimse.archive"):
        archive.index()
    assert live.is_file() and not stale.exists()
    (record,) = caplog.records
    assert "1 temporary file (2000 bytes)" in record.getMessage()


# --------------------------------------------------------------------------- D5


class _Collect(logging.Handler):
    """Every record at WARNING or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect() -> Iterator[_Collect]:
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


class _FullDisk:
    """A sink's file on a disk that fills: ``write`` or ``flush`` fails with ENOSPC."""

    def __init__(self, file: Any, fails: str) -> None:
        self._file, self._fails = file, fails

    def _full(self, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return self._full if name == self._fails else getattr(self._file, name)


def _inject(fault: str, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    from dimse import archive_store

    if fault == "open":
        real_mkstemp = archive_store.tempfile.mkstemp

        def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
            if Path(kwargs.get("dir", "")) == archive.storage_dir:
                raise OSError(errno.EROFS, "Read-only file system", str(archive.storage_dir))
            return real_mkstemp(*args, **kwargs)

        monkeypatch.setattr(archive_store.tempfile, "mkstemp", mkstemp)
    elif fault in ("write", "flush"):
        real_init = archive_store.ArchiveSink.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            self._file = _FullDisk(self._file, fault)

        monkeypatch.setattr(archive_store.ArchiveSink, "__init__", init)
    else:
        def adopt(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(archive, "adopt", adopt)


@pytest.mark.parametrize("fault", ["open", "write", "flush", "index"])
async def test_d5_store_refused_for_resources_logs_one_line(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, collect: _Collect,
        fault: str) -> None:
    """A read-only folder (at the temporary file's creation), a full disk (at a write, at the
    flush before fsync) or a locked index: the peer gets 0xA700, the log one ERROR line
    naming the SOP Instance UID and the cause, without a traceback; nothing stays behind."""
    from dimse.connect import connect
    from dimse.qr_scp import archive_server

    sop = generate_uid()
    _inject(fault, archive, monkeypatch)
    async with archive_server(archive, "ARCHIVE") as srv:
        async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                           sop_classes=[CTImageStorage]) as assoc:
            status = await assoc.store(make_ds(generate_uid(), generate_uid(), sop,
                                               pixels=300_000))
    assert status == 0xA700
    (record,) = collect.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    text = record.getMessage()
    assert sop in text and ("Read-only" in text if fault == "open" else
                            "locked" in text if fault == "index" else "No space" in text)
    assert list(archive.storage_dir.rglob("*.dcm")) == []
    assert list(archive.storage_dir.rglob(".tmp-*")) == []


async def test_d5_in_memory_store_with_a_locked_index_logs_one_line(
        archive: Archive, monkeypatch: pytest.MonkeyPatch, collect: _Collect) -> None:
    """The handler's in-memory path (no sink): a locked index is 0xA700 with one line too,
    not a processing failure with a traceback."""
    from dimse import codec
    from dimse.archive_store import archive_store_handler
    from dimse.errors import ServiceError
    from dimse.messages import CStoreRQ
    from dimse.services import ReceivedDataSet

    def store(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(archive, "store", store)
    sop = generate_uid()
    data = codec.encode(make_ds(generate_uid(), generate_uid(), sop), codec.EXPLICIT_VR_LE)
    request = CStoreRQ(message_id=1, affected_sop_class_uid=CTImageStorage,
                       affected_sop_instance_uid=sop)
    handler = archive_store_handler(archive)
    with pytest.raises(ServiceError) as refused:
        await handler(request, ReceivedDataSet(codec.EXPLICIT_VR_LE, data), None)  # type: ignore[arg-type]
    assert refused.value.status == 0xA700
    (record,) = collect.records
    assert record.levelno == logging.ERROR and sop in record.getMessage()


async def test_d5_full_then_read_only_disk_logs_one_line_per_refused_store(
        tiny_tmpfs: Path, tmp_path: Path, collect: _Collect) -> None:
    """A real full disk, then a read-only one: one log record, no traceback, per 0xA700."""
    from dimse.connect import connect
    from dimse.qr_scp import archive_server

    archive = Archive(tiny_tmpfs / "store", tmp_path / "index.sqlite")
    study, series = generate_uid(), generate_uid()
    try:
        async with archive_server(archive, "ARCHIVE") as srv:
            async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                               sop_classes=[CTImageStorage]) as assoc:
                statuses = [await assoc.store(make_ds(study, series, generate_uid(),
                                                      pixels=400_000)) for _ in range(10)]
            subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True,
                           timeout=10)
            async with connect("127.0.0.1", srv.port, called_ae="ARCHIVE",
                               sop_classes=[CTImageStorage]) as assoc:
                statuses.append(await assoc.store(make_ds(study, series, generate_uid())))
    finally:
        archive.close()
    assert 0 in statuses and statuses[-1] == 0xA700 and set(statuses) == {0, 0xA700}
    assert len(collect.records) == statuses.count(0xA700)
    assert all(r.exc_info is None and r.levelno == logging.ERROR for r in collect.records)
