"""Embedded archive index: what index() reads (regular files only, Part 10 or not), entity keys
(patient by ID+issuer+name+birth date, series per study), duplicates, schema migration."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dimse.archive import Archive, Duplicate
from dimse.qr import Level, QueryModel
from tests.dimse.test_archive import q

PR, SR = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT
ROOT = "1.2.826.0.1.3680043.10.777."


def instance(n: int, *, study: str = "1", series: str = "1", pid: str | None = "P1",
             name: str | None = "DOE^JOHN", birth: str | None = "19700101") -> Dataset:
    """A small CT data set (no pixels); UIDs built from ``ROOT``."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}{study}.{series}.{n}"
    ds.StudyInstanceUID = ROOT + study
    ds.SeriesInstanceUID = f"{ROOT}{study}.{series}"
    ds.Modality = "CT"
    ds.InstanceNumber = n
    for kw, value in (("PatientID", pid), ("PatientName", name), ("PatientBirthDate", birth)):
        if value is not None:
            setattr(ds, kw, value)
    return ds


def write(path: Path, ds: Dataset, ts: str = ExplicitVRLittleEndian) -> Path:
    """A conformant Part 10 file."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def found(arc: Archive, model: QueryModel, level: Level, ident: Dataset,
          *kws: str) -> list[tuple[str, ...]]:
    return sorted(tuple(str(getattr(r, k)) for k in kws) for r in arc.find(ident, model, level))


def index_in_thread(arc: Archive, timeout: float = 20.0) -> object:
    """arc.index() with a bounded wait (a blocking open would otherwise hang the test run)."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(arc.index()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "index() blocked"
    assert out, "index() raised"
    return out[0]


# -- 1, 2: only regular files of the folder are read -------------------------------------------

def test_dangling_symlink_and_loop_are_failed_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "ok.dcm", instance(1))
    os.symlink("/nonexistent/nothing.dcm", root / "dangling.dcm")
    os.symlink("loop.dcm", root / "loop.dcm")
    os.symlink("b.dcm", root / "a.dcm")
    os.symlink("a.dcm", root / "b.dcm")
    with Archive(root) as arc:
        stats = arc.index()
        assert stats.added == 1
        assert sorted(p.name for p in stats.failed) == ["a.dcm", "b.dcm", "dangling.dcm",
                                                        "loop.dcm"]
        assert arc.index().added == 0


def test_symlinks_never_followed_out_of_the_folder(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "x.dcm", instance(9, study="9"))
    root = tmp_path / "store"
    inside = write(root / "in.dcm", instance(1))
    os.symlink(outside, root / "out.dcm")
    os.symlink(outside.parent, root / "outdir")
    os.symlink(inside, root / "alias.dcm")  # a second name of an indexed file: skipped
    with Archive(root) as arc:
        stats = arc.index()
        assert (stats.added, [p.name for p in stats.failed]) == (1, ["out.dcm"])
        assert found(arc, SR, Level.STUDY, q("STUDY", StudyInstanceUID=""),
                     "StudyInstanceUID") == [(ROOT + "1",)]
        (rec,) = arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)
        assert rec.path == inside.resolve()
        with pytest.raises(ValueError, match="outside"):
            arc.add_file(root / "out.dcm")


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "ok.dcm", instance(1))
    os.mkfifo(root / "pipe.dcm")
    (root / "sub").mkdir()
    os.mkfifo(root / "sub" / "pipe2")
    with Archive(root) as arc:
        stats = index_in_thread(arc)
        assert stats.added == 1  # type: ignore[attr-defined]
        assert sorted(p.name for p in stats.failed) == ["pipe.dcm", "pipe2"]  # type: ignore
        with pytest.raises(ValueError, match="regular"):
            arc.add_file(root / "pipe.dcm")


def test_changed_file_that_turns_unreadable_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "store"
    f = write(root / "a.dcm", instance(1))
    with Archive(root) as arc:
        assert arc.index().added == 1
        f.write_bytes(b"no longer dicom")
        stats = arc.index()
        assert (stats.removed, stats.failed) == (1, (f.resolve(),))
        assert list(arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)) == []


# -- 3: files without preamble / File Meta ------------------------------------------------------

def write_raw(path: Path, ds: Dataset, *, implicit: bool, little: bool, meta: bool) -> Path:
    """A file without preamble and DICM: File Meta then data set, or a bare data set."""
    ds = ds.copy()
    if meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pydicom.dcmwrite(path, ds, enforce_file_format=False)
    else:
        pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=little)
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    return path


def test_files_without_preamble_are_indexed_with_their_encoding(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    cases = {"meta.dcm": (False, True, True, ExplicitVRLittleEndian),
             "implicit.dcm": (True, True, False, ImplicitVRLittleEndian),
             "explicit.dcm": (False, True, False, ExplicitVRLittleEndian),
             "bigendian.dcm": (False, False, False, ExplicitVRBigEndian)}
    for n, (name, (implicit, little, meta, _)) in enumerate(cases.items()):
        write_raw(root / name, instance(1, study=str(n), pid=name), implicit=implicit,
                  little=little, meta=meta)
    with Archive(root) as arc:
        stats = arc.index()
        assert (stats.added, stats.failed) == (4, ())
        recs = {r.path.name: r for r in arc.instances(q("IMAGE", SOPInstanceUID=""), SR,
                                                        Level.IMAGE)}
        assert {k: r.transfer_syntax for k, r in recs.items()} == {
            k: v[3] for k, v in cases.items()}
        assert all(r.sop_class_uid == CTImageStorage for r in recs.values())
        assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientID=""), "PatientID") == \
            sorted((k,) for k in cases)
        for rec in recs.values():  # what a retrieve will read back
            back = pydicom.dcmread(rec.path, force=True)
            assert back.SOPInstanceUID == rec.sop_instance_uid


def _bare(ds: Dataset) -> bytes:
    from io import BytesIO
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _not_instances() -> dict[str, bytes]:
    no_class = instance(1)
    del no_class.SOPClassUID
    bad_uid = instance(2)
    bad_uid.StudyInstanceUID = "1.2.abc"
    long_uid = instance(3)
    long_uid.SeriesInstanceUID = "1." + "2" * 70
    return {"empty": b"", "text.txt": b"hello, not dicom\n" * 20,
            "random.bin": bytes(range(256)) * 8,
            "group8.bin": b"\x08\x00\x16\x00" + bytes(range(255, 0, -1)) * 4,
            "group8-be.bin": b"\x00\x08\x00\x16UI\xff\xff" + b"\x01" * 300,
            "truncated.dcm": _bare(instance(4))[:40],
            "no-class.dcm": _bare(no_class), "bad-uid.dcm": _bare(bad_uid),
            "long-uid.dcm": _bare(long_uid)}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_non_instances_are_failed_never_indexed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    bad = _not_instances()
    for name, data in bad.items():
        (root / name).write_bytes(data)
    with Archive(root) as arc:
        stats = arc.index()
        assert stats.added == 0
        assert sorted(p.name for p in stats.failed) == sorted(bad)
        assert list(arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)) == []


# -- 4, 5: entity keys --------------------------------------------------------------------------

def test_patients_sharing_an_id_stay_apart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "a.dcm", instance(1, study="1", pid="12345", name="DOE^JOHN", birth="19500101"))
    write(root / "b.dcm", instance(1, study="2", pid="12345", name="ROE^JANE", birth="19900202"))
    write(root / "0.dcm", instance(2, study="1", pid="12345", name="DOE^JOHN^^",
                                   birth="19500101"))  # same person as a.dcm (indexed first)
    with Archive(root) as arc:
        assert arc.index().added == 3
        assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientID="12345", PatientName="",
                                               PatientBirthDate="",
                                               NumberOfPatientRelatedStudies=""),
                     "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies") == [
            ("DOE^JOHN", "19500101", "1"), ("ROE^JANE", "19900202", "1")]
        assert found(arc, SR, Level.STUDY, q("STUDY", PatientID="12345", PatientName="",
                                             StudyInstanceUID=""),
                     "PatientName", "StudyInstanceUID") == [
            ("DOE^JOHN", ROOT + "1"), ("ROE^JANE", ROOT + "2")]
        assert found(arc, SR, Level.STUDY, q("STUDY", PatientName="DOE*", StudyInstanceUID=""),
                     "StudyInstanceUID") == [(ROOT + "1",)]
        assert found(arc, PR, Level.STUDY, q("STUDY", PatientID="12345", PatientName="ROE^JANE",
                                             PatientBirthDate="19900202", StudyInstanceUID=""),
                     "StudyInstanceUID") == [(ROOT + "2",)]
        assert arc.index().added == 0


def test_patients_without_id_split_by_name_and_birth_date(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "a.dcm", instance(1, study="1", pid=None, name="DOE^JOHN", birth="19500101"))
    write(root / "b.dcm", instance(1, study="2", pid=None, name="DOE^JOHN", birth="19600101"))
    write(root / "c.dcm", instance(1, study="3", pid=None, name="ROE^JANE", birth=None))
    with Archive(root) as arc:
        assert arc.index().added == 3
        assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientID="", PatientName="",
                                               PatientBirthDate=""),
                     "PatientName", "PatientBirthDate") == [
            ("DOE^JOHN", "19500101"), ("DOE^JOHN", "19600101"), ("ROE^JANE", "None")]


def test_series_uid_reused_by_two_studies(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for n, study in enumerate(("1", "2")):
        ds = instance(n, study=study, pid=f"SER{n}", name=f"SERIES^{n}")
        ds.SeriesInstanceUID = ROOT + "99"
        ds.SeriesNumber = n + 1
        write(root / f"f{n}.dcm", ds)
    with Archive(root) as arc:
        assert arc.index().added == 2
        assert found(arc, SR, Level.STUDY, q("STUDY", StudyInstanceUID="", PatientID="",
                                             NumberOfStudyRelatedInstances=""),
                     "PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances") == [
            ("SER0", ROOT + "1", "1"), ("SER1", ROOT + "2", "1")]
        assert found(arc, SR, Level.SERIES, q("SERIES", StudyInstanceUID="",
                                              SeriesInstanceUID=ROOT + "99", SeriesNumber=""),
                     "StudyInstanceUID", "SeriesNumber") == [(ROOT + "1", "1"),
                                                              (ROOT + "2", "2")]
        assert found(arc, PR, Level.SERIES, q("SERIES", PatientID="SER1",
                                              StudyInstanceUID=ROOT + "2",
                                              SeriesInstanceUID=""),
                     "SeriesInstanceUID") == [(ROOT + "99",)]
        recs = list(arc.instances(q("SERIES", StudyInstanceUID=ROOT + "2",
                                    SeriesInstanceUID=ROOT + "99"), SR, Level.SERIES))
        assert [r.path.name for r in recs] == ["f1.dcm"]
        assert arc.index().added == 0


# -- schema version --------------------------------------------------------------------------

def test_database_of_another_schema_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write(root / "a.dcm", instance(1, study="1", pid="12345", name="DOE^JOHN"))
    write(root / "b.dcm", instance(1, study="2", pid="12345", name="ROE^JANE"))
    db = root / ".archive.sqlite"
    with sqlite3.connect(db) as old:  # an older schema: patient keyed by (ID, issuer)
        old.execute("CREATE TABLE patient (id INTEGER PRIMARY KEY, patient_id TEXT NOT NULL, "
                    "issuer TEXT NOT NULL, patient_name TEXT)")
        old.execute("CREATE UNIQUE INDEX patient_key ON patient(patient_id, issuer)")
        old.execute("CREATE TABLE study (id INTEGER PRIMARY KEY, study_uid TEXT)")
        old.execute("CREATE TABLE series (id INTEGER PRIMARY KEY, series_uid TEXT)")
        old.execute("CREATE TABLE instance (id INTEGER PRIMARY KEY, sop_uid TEXT, path TEXT, "
                    "size INTEGER, mtime_ns INTEGER)")
        old.execute("INSERT INTO patient VALUES (1, '12345', '', 'ROE^JANE')")
        old.execute("PRAGMA user_version = 1234567")  # what every revision before 9 wrote
    old.close()
    with Archive(root) as arc:
        version = arc._db.execute("PRAGMA user_version").fetchone()[0]
        assert version != 0
        stats = arc.index()
        assert (stats.added, stats.failed) == (2, ())
        assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientID="12345", PatientName=""),
                     "PatientName") == [("DOE^JOHN",), ("ROE^JANE",)]
    with Archive(root) as again:  # same version: kept, nothing to re-read
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == version
        assert again.index().added == 0


# -- 6: two files, one SOP Instance UID ---------------------------------------------------------

def test_duplicate_sop_instance_is_stable_across_restarts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "store"
    first = write(root / "b.dcm", instance(1, name="FIRST^COPY"))
    with Archive(root) as arc:
        assert arc.index().added == 1
    second = write(root / "a.dcm", instance(1, name="SECOND^COPY"))  # sorts first
    for _ in range(3):
        caplog.clear()
        with caplog.at_level("WARNING", logger="dimse.archive"), Archive(root) as arc:
            stats = arc.index()
            assert (stats.added, stats.updated, stats.removed, stats.failed) == (0, 0, 0, ())
            assert stats.duplicates == (second.resolve(),)
            (rec,) = arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)
            assert rec.path == first.resolve()
            assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientName=""),
                         "PatientName") == [("FIRST^COPY",)]
        (warning,) = [r.getMessage() for r in caplog.records]
        assert str(first.resolve()) in warning and str(second.resolve()) in warning
    with Archive(root) as arc:
        with pytest.raises(ValueError, match="already stored"):
            arc.add_file(second)
        first.unlink()  # the indexed copy is gone: the other one takes its place
        stats = arc.index()
        assert (stats.added, stats.removed, stats.duplicates) == (1, 1, ())
        (rec,) = arc.instances(q("IMAGE", SOPInstanceUID=""), SR, Level.IMAGE)
        assert rec.path == second.resolve()


def test_duplicate_resolved_when_its_twin_changes_later_in_the_scan(tmp_path: Path) -> None:
    root = tmp_path / "store"
    indexed = write(root / "b.dcm", instance(1))
    with Archive(root) as arc:
        arc.index()
        write(root / "a.dcm", instance(1, name="COPY"))  # scanned before b.dcm ...
        write(indexed, instance(2))  # ... which now holds another instance
        os.utime(indexed, ns=(1, 2_000_000_000))
        stats = arc.index()
        assert (stats.added, stats.updated, stats.duplicates) == (1, 1, ())
        assert sorted(r.path.name for r in arc.instances(q("IMAGE", SOPInstanceUID=""), SR,
                                                         Level.IMAGE)) == ["a.dcm", "b.dcm"]


def test_store_and_adopt_replace_a_duplicate(tmp_path: Path) -> None:
    root = tmp_path / "store"
    elsewhere = write(root / "import" / "x.dcm", instance(1, name="OLD"))
    with Archive(root) as arc:
        arc.index()
        stored = arc.store(instance(1, name="NEW"))
        assert not elsewhere.exists() and arc.stored_path(instance(1).SOPInstanceUID) == stored
        received = write(root / ".tmp-in.dcm", instance(1, name="NEWER"))
        kept = arc.adopt(received, duplicate=Duplicate.KEEP)
        assert kept.duplicate and kept.path == stored and not received.exists()
        received = write(root / ".tmp-in.dcm", instance(1, name="NEWEST"))
        replaced = arc.adopt(received, duplicate=Duplicate.REPLACE)
        assert replaced.duplicate and replaced.path == stored
        assert found(arc, PR, Level.PATIENT, q("PATIENT", PatientName=""),
                     "PatientName") == [("NEWEST",)]
        stats = arc.index()
        assert (stats.added, stats.updated, stats.removed, stats.duplicates) == (0, 0, 0, ())


def test_exact_keys_visit_only_multi_valued_rows(tmp_path: Path) -> None:
    """An exact STR/PN key is answered from indexes: the column's index for single-valued rows
    and the partial index of the multi-valued ones; no step scans a whole table."""
    from dimse.archive_query import Plan

    arc = Archive(tmp_path)
    for kw, value in (("AccessionNumber", "A1"), ("PatientName", "DOE^J"), ("PatientID", "P1")):
        ident = q("STUDY", StudyInstanceUID="", **{kw: value})
        sql, params = Plan(ident, QueryModel.STUDY_ROOT, Level.STUDY, False).select_sql()
        steps = [row[3] for row in arc._db.execute("EXPLAIN QUERY PLAN " + sql, params)]
        scans = [step for step in steps if step.startswith("SCAN")]
        assert scans and all(step.endswith("_multi") for step in scans), (kw, steps)
    arc.close()
