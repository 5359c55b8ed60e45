"""Session 9: opening the archive's index (dimse/archive_db.py; audit 12 #1, #2, #3, #5, #6).

The index is a cache of the folder, so one of ours that is damaged or of another schema
revision is rebuilt from the files, saying so; what is not ours is refused and left untouched:
another application's database (SQLite or not), or the index of another archive folder. A
C-FIND that the index fails under answers in one ERROR line, not a traceback.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dimse.archive import Archive, IndexDatabaseError
from dimse.archive_db import APPLICATION_ID
from dimse.qr import QueryModel
from dimse.qr_model import Level
from dimse.qr_scp import archive_server
from dimse.qr_scu import QueryFailed, connect_qr, find

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = "1.2.826.0.1.3680043.10.4646.99."


def write(folder: Path, n: int, date: str = "20250101") -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{ROOT}{n}.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}{n}", f"{ROOT}{n}.1"
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = "P", "Doe^J", date, "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)


def studies(arc: Archive) -> int:
    return arc.counts()[0]


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "archive"
    for n in range(5):
        write(root, n)
    with Archive(root) as arc:
        arc.index()
    yield root


def test_a_new_index_is_stamped_as_ours(folder: Path) -> None:
    con = sqlite3.connect(folder / ".archive.sqlite")
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        (recorded,) = con.execute("SELECT value FROM archive_meta WHERE key = 'folder'"
                                  ).fetchone()
        assert os.fsdecode(recorded) == str(folder.resolve())  # bytes: names need not be UTF-8
    finally:
        con.close()


@pytest.mark.parametrize("kind", ["same table names", "stamped by another application",
                                  "a view"])
def test_another_applications_database_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    other = tmp_path / "ris.sqlite"
    con = sqlite3.connect(other)
    if kind == "same table names":
        con.execute("CREATE TABLE patient (id INTEGER PRIMARY KEY, name TEXT)")
    elif kind == "stamped by another application":
        con.execute("PRAGMA application_id = 1234")
        con.execute("CREATE TABLE patient (id INTEGER PRIMARY KEY, patient_id TEXT, "
                    "issuer TEXT)")
    else:
        con.execute("CREATE TABLE instance (id INTEGER PRIMARY KEY, sop_uid TEXT, path TEXT)")
        con.execute("CREATE VIEW everything AS SELECT * FROM instance")
    con.execute("INSERT INTO " + ("instance (sop_uid)" if kind == "a view" else
                                  "patient (id)") + " VALUES ('7')")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(IndexDatabaseError, match="another application") as info:
        Archive(tmp_path / "archive", other)
    assert info.value.path == other
    assert other.read_bytes() == before  # not even switched to WAL
    assert not Path(f"{other}-wal").exists()


def test_a_file_that_is_no_database_elsewhere_is_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not an index\n")
    with pytest.raises(IndexDatabaseError, match="not known to be an index of ours"):
        Archive(tmp_path / "archive", other)
    assert other.read_text() == "not an index\n"


@pytest.mark.parametrize("damage", ["garbage", "page 2 trashed"])
def test_our_damaged_index_is_moved_aside_and_rebuilt(folder: Path, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    db = folder / ".archive.sqlite"
    data = db.read_bytes()
    db.write_bytes(b"garbage\n" * 512 if damage == "garbage"
                   else data[:4096] + b"\xff" * 4096 + data[8192:])
    with caplog.at_level(logging.WARNING, logger="dimse.archive"), Archive(folder) as arc:
        assert arc.index().failed == ()  # the file moved aside is not taken for an instance
        assert studies(arc) == 5
    (aside,) = folder.glob(".archive.sqlite.damaged-*")
    assert aside.read_bytes()[:8] == (b"garbage\n" if damage == "garbage" else data[:8])
    assert "is damaged" in caplog.text and str(aside) in caplog.text


def test_a_page_of_another_index_copied_over_is_caught(tmp_path: Path) -> None:
    """quick_check passes this one; C-FIND through study_date would miss matches."""
    root = tmp_path / "archive"
    for n in range(150):
        write(root, n, date="20240202" if n % 15 == 0 else "20250101")
    with Archive(root) as arc:
        arc.index()
    db = root / ".archive.sqlite"
    con = sqlite3.connect(db)
    try:
        pages = dict(con.execute("SELECT name, max(pageno) FROM dbstat WHERE name IN "
                                 "('study_date', 'study_uid_key', 'sqlite_autoindex_study_1') "
                                 "GROUP BY name").fetchall())
        size = con.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat")
    finally:
        con.close()
    source = next(name for name in pages if name != "study_date")
    data = bytearray(db.read_bytes())
    victim, start = (pages["study_date"] - 1) * size, (pages[source] - 1) * size
    data[victim:victim + size] = data[start:start + size]
    db.write_bytes(bytes(data))
    with Archive(root) as arc:
        arc.index()
        q = Dataset()
        q.QueryRetrieveLevel, q.StudyDate, q.StudyInstanceUID = "STUDY", "20240202", ""
        assert len(list(arc.find(q, QueryModel.STUDY_ROOT, Level.STUDY))) == 10
    assert list(root.glob(".archive.sqlite.damaged-*"))


def test_an_index_of_another_schema_is_rebuilt_saying_so(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    con = sqlite3.connect(folder / ".archive.sqlite")
    con.execute("PRAGMA user_version = 12345")
    con.commit()
    con.close()
    with caplog.at_level(logging.WARNING, logger="dimse.archive"), Archive(folder) as arc:
        assert arc.index().added == 5
    assert "written by another version" in caplog.text


def test_an_index_from_before_the_stamp_is_ours(folder: Path) -> None:
    """Revision 8 indexes carry no application_id: our four tables, our key columns, a
    schema version."""
    con = sqlite3.connect(folder / ".archive.sqlite")
    con.execute("PRAGMA application_id = 0")
    con.execute("PRAGMA user_version = 4242")
    con.execute("DROP TABLE archive_meta")
    con.commit()
    con.close()
    with Archive(folder) as arc:
        assert arc.index().added == 5  # another schema: rebuilt, not refused


def test_the_index_of_another_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexDatabaseError, match="index of the archive folder"):
        Archive(tmp_path / "other", folder / ".archive.sqlite")
    with Archive(folder) as arc:
        assert arc.index().removed == 0 and studies(arc) == 5


def test_an_index_kept_elsewhere_serves_its_own_folder(tmp_path: Path) -> None:
    root, db = tmp_path / "archive", tmp_path / "db" / "index.sqlite"
    db.parent.mkdir()
    write(root, 1)
    with Archive(root, db) as arc:
        assert arc.index().added == 1
    with Archive(root, db) as arc:
        assert arc.index().added == 0 and studies(arc) == 1


def test_a_moved_folder_keeps_its_index(folder: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    folder.rename(moved)
    with Archive(moved) as arc:
        stats = arc.index()
        assert (stats.added, stats.removed, studies(arc)) == (0, 0, 5)


async def test_an_index_failing_under_a_find_is_one_error_line(
        folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(folder)

    def broken(*args: object, **kwargs: object) -> None:
        error = sqlite3.DatabaseError("database disk image is malformed")
        error.sqlite_errorcode = 11  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(archive, "find_encoded", broken)
    try:
        async with archive_server(archive, "QRSCP") as server:
            async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
                q = Dataset()
                q.QueryRetrieveLevel, q.StudyInstanceUID = "STUDY", ""
                with caplog.at_level(logging.ERROR):
                    with pytest.raises(QueryFailed) as info:
                        async for _ in find(assoc, q):
                            pass
                assert info.value.status == 0xC001 and "index failed" in info.value.comment
                assert await assoc.echo() == 0
    finally:
        archive.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "malformed" in errors[0].getMessage()


# --------------------------------------------------------------------------- audit 11


def test_a_file_name_that_is_no_utf8_is_indexed_and_found(tmp_path: Path) -> None:
    """Linux names are bytes: a file copied from an old Windows share or a zip may carry a
    Latin-1 name. It was counted 'not indexed' and its series vanished from the answers."""
    root = tmp_path / "archive"
    write(root, 1)
    latin1 = Path(os.fsdecode(bytes(root) + b"/M\xfcller.dcm"))
    (root / "1.dcm").rename(latin1)
    with Archive(root) as arc:
        stats = arc.index()
        assert (stats.added, stats.failed) == (1, ())
        assert arc.stored_path(f"{ROOT}1.1.1") == latin1
        assert arc.index().added == 0  # known: not read again
        assert [r.path for r in arc.instances(_study(1), QueryModel.STUDY_ROOT, Level.STUDY)] \
            == [latin1]
    with Archive(root) as arc:  # across a restart too
        assert arc.index().added == 0
        latin1.unlink()
        assert arc.index().removed == 1 and arc.counts() == (0, 0)


def _study(n: int) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyInstanceUID = "STUDY", f"{ROOT}{n}"
    return q


def test_each_file_not_indexed_has_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write(root, 1)
    (root / "empty.dcm").write_bytes(b"")
    (root / "notes.txt").write_text("hello")
    no_study = pydicom.dcmread(root / "1.dcm")
    del no_study.StudyInstanceUID
    no_study.SOPInstanceUID = f"{ROOT}2.1.1"
    no_study.save_as(root / "no_study.dcm")
    os.mkfifo(root / "fifo")
    with Archive(root) as arc:
        stats = arc.index()
    reasons = {p.name: r for p, r in stats.reasons.items()}
    assert set(reasons) == {p.name for p in stats.failed} == {"empty.dcm", "notes.txt",
                                                               "no_study.dcm", "fifo"}
    assert "StudyInstanceUID" in reasons["no_study.dcm"]
    assert reasons["fifo"] == "not a regular file of the folder"
    assert all(str(root) not in r for r in reasons.values())  # the path is not repeated


def test_one_table_of_our_name_is_not_an_index_of_ours(tmp_path: Path) -> None:
    """Without the stamp, an ``instance`` table with ``sop_uid`` and ``path`` alone is another
    application's (audit 14 #2): all four tables and a schema version make a legacy index."""
    other = tmp_path / "viewer.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE instance (id INTEGER PRIMARY KEY, sop_uid TEXT, path TEXT)")
    con.execute("INSERT INTO instance (sop_uid, path) VALUES ('1.2', 'a.dcm')")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    with pytest.raises(IndexDatabaseError, match="another application"):
        Archive(tmp_path / "archive", other)
    con = sqlite3.connect(other)
    try:
        assert con.execute("SELECT sop_uid, path FROM instance").fetchall() == [("1.2", "a.dcm")]
    finally:
        con.close()


def test_a_damaged_catalogue_is_damage_not_a_crash(folder: Path) -> None:
    """A byte flipped in a table's name in sqlite_master: no UnicodeDecodeError escapes."""
    db = folder / ".archive.sqlite"
    data = bytearray(db.read_bytes())
    at = data.index(b"CREATE TABLE study")
    data[at + 13] = 0xE9  # 'study' -> invalid UTF-8 in the schema text
    db.write_bytes(bytes(data))
    with Archive(folder) as arc:
        arc.index()
        assert studies(arc) == 5
    assert list(folder.glob(".archive.sqlite.damaged-*"))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), min_size=1,
                      max_size=40),
       cut=st.none() | st.floats(0.0, 1.0))
def test_any_damage_to_our_index_is_rebuilt_or_refused(folder: Path, flips: list[tuple[int, int]],
                                                       cut: float | None) -> None:
    """Bytes of the index flipped anywhere (and the file perhaps cut short): the archive opens
    with every instance indexed again, or refuses in one typed error; never another error."""
    db = folder / ".archive.sqlite"
    pristine = db.with_name("pristine")
    if not pristine.exists():
        pristine.write_bytes(db.read_bytes())
    for stale in folder.glob(".archive.sqlite*"):
        stale.unlink()
    data = bytearray(pristine.read_bytes())
    for at, value in flips:
        data[at % len(data)] = value
    if cut is not None:
        data = data[:int(len(data) * cut)]
    db.write_bytes(bytes(data))
    try:
        with Archive(folder) as arc:
            arc.index()
            assert arc.counts() == (5, 5)
    except IndexDatabaseError:
        pass
