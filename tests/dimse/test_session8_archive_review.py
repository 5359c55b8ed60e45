"""Audit 9 review of the archive (notes/audit9/review.md, defects 1-8): the index lock wherever
the index is and whatever path names it, nested archive folders, the start-up cleanup racing
another archive of the process, locks inherited across fork(), a REPLACE whose commit fails,
other I/O errors of a store, and the settle heuristic with a clock ahead of ours."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dimse import archive as archive_mod
from dimse import archive_files
from dimse.archive import Archive, ArchiveInUseError
from dimse.archive_store import ArchiveSink
from dimse.messages import CStoreRQ

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
    ArchiveInUseError for folder B with that index, and, the other way round, for folder A
    while this process serves B with A's index."""
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    index = a_dir / ".archive.sqlite"
    with Archive(a_dir):
        done = _open_elsewhere(b_dir, index)
        assert done.returncode == 3 and "archive index" in done.stdout, done
    with Archive(b_dir, index):
        done = _open_elsewhere(a_dir)
        assert done.returncode == 3 and "archive index" in done.stdout, done
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
