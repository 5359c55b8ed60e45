"""Embedded archive: indexing, incremental re-index, matching, computed keys, streaming, store."""

from __future__ import annotations

import itertools
import os
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dimse.archive import Archive, InstanceRecord
from dimse.errors import IdentifierError
from dimse.qr import Level, QueryModel

# Some tests use deliberately invalid UIDs (wildcards, path tricks); pydicom warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

PR, SR = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT
SR_TEXT = "1.2.840.10008.5.1.4.1.1.88.11"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.999."

# patient -> studies (uid suffix, date, time, description, series [(modality, n instances)])
LAYOUT = {
    ("P1", "Doe^John", "19700101", "M"): [
        ("1", "20200115", "101500", "CT Chest", [("CT", 2), ("CT", 3)]),
        ("2", "20210301", "230000", "MR Head", [("MR", 2), ("SR", 2)]),
    ],
    ("P2", "Müller^Anna", "19851231", "F"): [
        ("3", "20200620", "080000", "PET CT", [("CT", 2), ("PT", 3)]),
        ("4", "20220101", "0000", "", [("US", 2), ("US", 2)]),
    ],
}


def make_instance(patient: tuple[str, str, str, str], study: tuple[str, str, str, str],
                  series_no: int, modality: str, number: int) -> Dataset:
    pid, name, birth, sex = patient
    suffix, date, time, desc = study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = pid, name, birth, sex
    ds.StudyInstanceUID = ROOT + suffix
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = date, time, "A" + suffix, suffix
    if desc:
        ds.StudyDescription = desc
    ds.ReferringPhysicianName = "House^Gregory" if suffix in "13" else "Wilson^James"
    ds.ProcedureCodeSequence = Sequence([Dataset()])
    ds.ProcedureCodeSequence[0].CodeValue = "PROC" + suffix
    ds.ProcedureCodeSequence[0].CodingSchemeDesignator = "LOCAL"
    ds.SeriesInstanceUID = f"{ROOT}{suffix}.{series_no}"
    ds.SeriesNumber, ds.Modality = series_no, modality
    ds.SOPInstanceUID = f"{ROOT}{suffix}.{series_no}.{number}"
    ds.InstanceNumber = number
    if modality == "SR":
        ds.SOPClassUID = SR_TEXT
        ds.ConceptNameCodeSequence = Sequence([Dataset()])
        ds.ConceptNameCodeSequence[0].CodeValue = "18748-4"
        ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    else:
        ds.SOPClassUID = MR_IMAGE if modality == "MR" else CTImageStorage
        ds.Rows = ds.Columns = 2
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 7, 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes([number, 1, 2, 3])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def all_instances() -> list[Dataset]:
    out = []
    for patient, studies in LAYOUT.items():
        for suffix, date, time, desc, series in studies:
            for no, (modality, count) in enumerate(series, 1):
                for n in range(1, count + 1):
                    out.append(make_instance(patient, (suffix, date, time, desc), no, modality, n))
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for i, ds in enumerate(all_instances()):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(sub / f"f{i}.dcm", ds, enforce_file_format=True)
    return root


@pytest.fixture
def archive(folder: Path) -> Archive:
    arc = Archive(folder)
    stats = arc.index()
    assert (stats.added, stats.updated, stats.removed, stats.failed) == (18, 0, 0, ())
    return arc


def q(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw, value in keys.items():
        setattr(ds, kw, value)
    return ds


def values(arc: Archive, model: QueryModel, level: Level, ident: Dataset, kw: str) -> list[object]:
    return sorted(str(getattr(r, kw)) for r in arc.find(ident, model, level))


# ---------------------------------------------------------------------------------------------


def test_levels_and_responses(archive: Archive) -> None:
    pats = list(archive.find(q("PATIENT", PatientID="", PatientName=""), PR, Level.PATIENT))
    assert sorted(p.PatientID for p in pats) == ["P1", "P2"]
    p2 = next(p for p in pats if p.PatientID == "P2")
    assert str(p2.PatientName) == "Müller^Anna" and p2.SpecificCharacterSet == "ISO_IR 192"
    assert p2.QueryRetrieveLevel == "PATIENT"
    assert set(p2.keys()) == {0x00080005, 0x00080052, 0x00100010, 0x00100020}
    studies = list(archive.find(q("STUDY", PatientID="P1", StudyInstanceUID=""), PR, Level.STUDY))
    assert sorted(s.StudyInstanceUID for s in studies) == [ROOT + "1", ROOT + "2"]
    images = list(archive.find(q("IMAGE", StudyInstanceUID=ROOT + "1",
                                 SeriesInstanceUID=ROOT + "1.2", SOPInstanceUID=""), SR,
                               Level.IMAGE))
    assert len(images) == 3
    # unique keys of the levels down to the query level are added, in Study Root no PatientID
    assert "SeriesInstanceUID" in images[0] and "PatientID" not in images[0]
    img = next(archive.find(q("IMAGE", SOPInstanceUID=ROOT + "1.1.1"), PR, Level.IMAGE))
    assert (img.PatientID, img.StudyInstanceUID, img.SeriesInstanceUID) == (
        "P1", ROOT + "1", ROOT + "1.1")
    assert "SpecificCharacterSet" not in img  # ASCII only: no (0008,0005), not an empty one


def test_computed_keys(archive: Archive) -> None:
    ident = q("PATIENT", PatientID="P1", NumberOfPatientRelatedStudies="",
              NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    (p1,) = archive.find(ident, PR, Level.PATIENT)
    assert (p1.NumberOfPatientRelatedStudies, p1.NumberOfPatientRelatedSeries,
            p1.NumberOfPatientRelatedInstances) == (2, 4, 9)
    ident = q("STUDY", StudyInstanceUID=ROOT + "2", NumberOfStudyRelatedSeries="",
              NumberOfStudyRelatedInstances="", ModalitiesInStudy="", SOPClassesInStudy="")
    (s2,) = archive.find(ident, SR, Level.STUDY)
    assert (s2.NumberOfStudyRelatedSeries, s2.NumberOfStudyRelatedInstances) == (2, 4)
    assert list(s2.ModalitiesInStudy) == ["MR", "SR"]
    assert sorted(s2.SOPClassesInStudy) == sorted([MR_IMAGE, SR_TEXT])
    (se,) = archive.find(q("SERIES", SeriesInstanceUID=ROOT + "3.2",
                           NumberOfSeriesRelatedInstances=""), SR, Level.SERIES)
    assert se.NumberOfSeriesRelatedInstances == 3
    # matching on computed keys
    assert values(archive, SR, Level.STUDY, q("STUDY", ModalitiesInStudy="PT",
                                               StudyInstanceUID=""), "StudyInstanceUID") == [
        ROOT + "3"]
    assert values(archive, SR, Level.STUDY, q("STUDY", NumberOfStudyRelatedInstances="4",
                                               StudyInstanceUID=""), "StudyInstanceUID") == [
        ROOT + "2", ROOT + "4"]


def test_matching_kinds(archive: Archive) -> None:
    def studies(**keys: object) -> list[object]:
        keys.setdefault("StudyInstanceUID", "")
        return values(archive, SR, Level.STUDY, q("STUDY", **keys), "StudyInstanceUID")

    s = [ROOT + n for n in "1234"]
    assert studies(PatientName="doe*") == s[:2]  # PN: case-insensitive wildcard
    assert studies(PatientName="MÜLLER^ANNA") == s[2:]
    assert studies(PatientName="D?e^John") == s[:2]
    assert studies(PatientID="P2") == s[2:]
    assert studies(StudyInstanceUID=f"{s[0]}\\{s[3]}") == [s[0], s[3]]  # UID list
    assert studies(StudyInstanceUID=ROOT + "*") == []  # no wildcard on UI
    assert studies(StudyDate="20200101-") == s  # all on or after
    assert studies(StudyDate="-20201231") == [s[0], s[2]]
    assert studies(StudyDate="20200601-20211231") == [s[1], s[2]]
    assert studies(StudyDate="20200115") == [s[0]]
    assert studies(StudyTime="0700-1100") == [s[0], s[2]]
    assert studies(StudyDescription="CT*") == [s[0]]
    assert studies(StudyDescription="ct*") == []  # case-sensitive on LO
    assert studies(StudyDescription="*") == s  # '*' alone is universal, empty values included
    assert studies(StudyDescription="*T*") == [s[0], s[2]]  # entity without value never matches
    assert studies(AccessionNumber="A3") == [s[2]]
    assert studies(ReferringPhysicianName="house^*") == [s[0], s[2]]
    assert studies(PatientBirthDate="-19800101") == s[:2]
    item = Dataset()
    item.CodeValue = "PROC4"
    assert studies(ProcedureCodeSequence=Sequence([item])) == [s[3]]  # sequence matching
    item.CodeValue = "PROC*"
    item.CodingSchemeDesignator = "LOCAL"
    assert studies(ProcedureCodeSequence=Sequence([item])) == s
    assert studies(ProcedureCodeSequence=Sequence([])) == s  # empty sequence: universal
    series = values(archive, PR, Level.SERIES,
                    q("SERIES", PatientID="P2", StudyInstanceUID=s[2], SeriesInstanceUID="",
                      Modality="PT", SeriesNumber=""), "SeriesInstanceUID")
    assert series == [ROOT + "3.2"]
    assert values(archive, SR, Level.SERIES, q("SERIES", SeriesNumber="2", Modality="US"),
                  "SeriesInstanceUID") == [ROOT + "4.2"]


def test_combined_datetime_matching(archive: Archive) -> None:
    ident = q("STUDY", StudyInstanceUID="", StudyDate="20200115-20210301", StudyTime="1000-")
    combined = values(archive, SR, Level.STUDY, ident, "StudyInstanceUID")
    separate = list(archive.find(ident, SR, Level.STUDY, datetime_matching=True))
    assert combined == [ROOT + "1", ROOT + "2"]  # 10:15 and 23:00 are after 10:00 separately
    # combined: from 2020-01-15 10:00 to 2021-03-01 end of day: studies 1, 2 (and 3 at 08:00)
    assert sorted(r.StudyInstanceUID for r in separate) == [ROOT + "1", ROOT + "2", ROOT + "3"]


def test_response_values_and_sequences(archive: Archive) -> None:
    item = Dataset()
    item.CodeValue = ""
    ident = q("STUDY", StudyInstanceUID=ROOT + "2", StudyDate="", StudyTime="",
              ProcedureCodeSequence=Sequence([item]), StudyDescription="")
    (r,) = archive.find(ident, SR, Level.STUDY)
    assert (r.StudyDate, r.StudyTime, r.StudyDescription) == ("20210301", "230000", "MR Head")
    assert len(r.ProcedureCodeSequence) == 1
    assert r.ProcedureCodeSequence[0].CodeValue == "PROC2"
    assert "CodingSchemeDesignator" not in r.ProcedureCodeSequence[0]  # only requested keys
    (r4,) = archive.find(q("STUDY", StudyInstanceUID=ROOT + "4", StudyDescription=""), SR,
                         Level.STUDY)
    assert "StudyDescription" in r4 and r4["StudyDescription"].is_empty


def test_unsupported_keys_are_returned_empty_and_reported(archive: Archive) -> None:
    ident = q("STUDY", StudyInstanceUID=ROOT + "1", InstitutionName="X*", Modality="CT")
    ident.add_new(0x00091010, "LO", "private")
    result = archive.find_with_status(ident, PR, Level.STUDY)
    assert set(result.unsupported) == {0x00080080, 0x00091010, 0x00080060}  # Modality: below
    (r,) = result.matches  # the unsupported keys are not matched
    assert r["InstitutionName"].is_empty and r[0x00091010].is_empty and r["Modality"].is_empty
    assert archive.find_with_status(q("PATIENT", PatientID=""), PR,
                                    Level.PATIENT).unsupported == ()


def test_level_not_in_model(archive: Archive) -> None:
    with pytest.raises(IdentifierError):
        archive.find(q("PATIENT", PatientID=""), SR, Level.PATIENT)
    with pytest.raises(IdentifierError):
        archive.find(q("SERIES"), QueryModel.PATIENT_STUDY_ONLY, Level.SERIES)


def test_instances_for_retrieve(archive: Archive, folder: Path) -> None:
    recs = list(archive.instances(q("STUDY", StudyInstanceUID=f"{ROOT}1\\{ROOT}4"), SR,
                                  Level.STUDY))
    assert len(recs) == 9 and all(isinstance(r, InstanceRecord) for r in recs)
    assert all(r.path.is_file() and r.path.is_relative_to(folder.resolve()) for r in recs)
    assert all(r.transfer_syntax == ExplicitVRLittleEndian and r.size > 0 for r in recs)
    (one,) = archive.instances(q("IMAGE", SOPInstanceUID=ROOT + "2.2.1"), SR, Level.IMAGE)
    assert one.sop_class_uid == SR_TEXT and one.sop_instance_uid == ROOT + "2.2.1"
    assert pydicom.dcmread(one.path).SOPInstanceUID == one.sop_instance_uid
    pr = list(archive.instances(q("PATIENT", PatientID="P2"), PR, Level.PATIENT))
    assert len(pr) == 9


def test_incremental_index(archive: Archive, folder: Path) -> None:
    assert archive.index() == type(archive.index())(0, 0, 0, ())  # nothing changed
    new = make_instance(("P3", "New^Pat", "", "O"), ("5", "20230101", "120000", "X"), 1, "CT", 1)
    pydicom.dcmwrite(folder / "new.dcm", new, enforce_file_format=True)
    (folder / "notes.txt").write_text("not dicom")
    stats = archive.index()
    assert (stats.added, stats.updated, stats.removed) == (1, 0, 0)
    assert stats.failed == (folder.resolve() / "notes.txt",)
    # modify: new description, different size and mtime
    changed = pydicom.dcmread(folder / "new.dcm")
    changed.StudyDescription = "Changed description"
    pydicom.dcmwrite(folder / "new.dcm", changed)
    os.utime(folder / "new.dcm", ns=(1, 2_000_000_000))
    stats = archive.index()
    assert (stats.added, stats.updated, stats.removed) == (0, 1, 0)
    (r,) = archive.find(q("STUDY", StudyInstanceUID=ROOT + "5", StudyDescription=""), SR,
                        Level.STUDY)
    assert r.StudyDescription == "Changed description"
    # remove: entry dropped, empty series/study/patient pruned
    (folder / "new.dcm").unlink()
    (folder / "notes.txt").unlink()
    assert archive.index().removed == 1
    assert values(archive, PR, Level.PATIENT, q("PATIENT", PatientID=""), "PatientID") == [
        "P1", "P2"]
    # remove() API
    (rec,) = archive.instances(q("IMAGE", SOPInstanceUID=ROOT + "1.1.1"), SR, Level.IMAGE)
    assert archive.remove(rec.path) and not rec.path.exists()
    assert not archive.remove(rec.path)
    (st,) = archive.find(q("STUDY", StudyInstanceUID=ROOT + "1",
                           NumberOfStudyRelatedInstances=""), SR, Level.STUDY)
    assert st.NumberOfStudyRelatedInstances == 4


def test_index_persists_across_instances(archive: Archive, folder: Path) -> None:
    archive.close()
    again = Archive(folder)
    assert again.index().added == 0
    assert len(list(again.instances(q("PATIENT", PatientID="P1"), PR, Level.PATIENT))) == 9


def test_store_writes_atomically_and_indexes(tmp_path: Path) -> None:
    arc = Archive(tmp_path / "a", db_path=tmp_path / "index.sqlite")
    ds = make_instance(("P9", "Store^Me", "", ""), ("../../evil", "20240101", "", ""), 1,
                       "CT", 1)
    del ds.file_meta
    path = arc.store(ds)
    assert path.is_file() and path.resolve().is_relative_to((tmp_path / "a").resolve())
    assert ".." not in path.relative_to(tmp_path / "a").parts
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "file_meta" not in ds.__dict__ or not getattr(ds, "file_meta", None)  # untouched
    (rec,) = arc.instances(q("IMAGE", SOPInstanceUID=ds.SOPInstanceUID), SR, Level.IMAGE)
    assert rec.path == path
    assert not list(path.parent.glob(".tmp-*"))
    assert arc.index() == type(arc.index())(0, 0, 0, ())


def test_store_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arc = Archive(tmp_path)
    ds = make_instance(("P9", "X", "", ""), ("7", "20240101", "", ""), 1, "CT", 1)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pydicom, "dcmwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        arc.store(ds)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and "sqlite" not in p.name] == []
    assert list(arc.instances(q("PATIENT", PatientID="P9"), PR, Level.PATIENT)) == []
    with pytest.raises(ValueError):
        arc.store(Dataset())


def _fill(arc: Archive, n: int) -> None:
    """Insert n instances of one series straight into the index (no files needed)."""
    db = arc._db
    with db:
        pid = db.execute("INSERT INTO patient (patient_id, issuer, patient_name, "
                         "patient_name_f) VALUES ('BIG', '', 'Big^Pat', 'BIG^PAT') "
                         "RETURNING id").fetchone()[0]
        sid = db.execute("INSERT INTO study (patient_ref, study_uid, study_date) "
                         "VALUES (?, '1.2.3', '20200101') RETURNING id", (pid,)).fetchone()[0]
        seid = db.execute("INSERT INTO series (study_ref, series_uid, modality) "
                          "VALUES (?, '1.2.3.4', 'CT') RETURNING id", (sid,)).fetchone()[0]
        db.executemany("INSERT INTO instance (series_ref, sop_uid, sop_class, instance_number, "
                       "path, transfer_syntax, size) VALUES (?, ?, ?, ?, ?, ?, 10)",
                       ((seid, f"1.2.3.4.{i}", CTImageStorage, i, f"x/{i}.dcm",
                         ExplicitVRLittleEndian) for i in range(n)))


def _peak(it: object, count: int) -> int:
    tracemalloc.start()
    try:
        for _ in itertools.islice(it, count):  # type: ignore[call-overload]
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_is_lazy_with_bounded_memory(tmp_path: Path) -> None:
    arc = Archive(tmp_path)
    _fill(arc, 10_000)
    ident = q("IMAGE", SOPInstanceUID="", InstanceNumber="", SOPClassUID="")
    statements: list[str] = []
    arc._db.set_trace_callback(statements.append)
    it = arc.find(ident, SR, Level.IMAGE)
    first = next(it)
    assert first.InstanceNumber == 0
    assert len([s for s in statements if s.startswith("SELECT")]) == 1  # one page, not all
    arc._db.set_trace_callback(None)
    small = _peak(arc.find(ident, SR, Level.IMAGE), 1_000)
    full = _peak(arc.find(ident, SR, Level.IMAGE), 10_000)
    assert full < small * 1.5 + 100_000, (small, full)
    numbers = [r.InstanceNumber for r in arc.find(ident, SR, Level.IMAGE)]
    assert numbers == list(range(10_000))  # no page seen twice, none skipped


def test_iterator_across_threads_with_writes(archive: Archive) -> None:
    ident = q("IMAGE", SOPInstanceUID="")
    it = archive.find(ident, SR, Level.IMAGE)
    got: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(5):
                archive.store(make_instance(("P8", "W", "", ""), ("8", "20240101", "", ""), 1,
                                            "CT", n + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=3) as pool:
        t = threading.Thread(target=writer)
        t.start()
        while (r := pool.submit(next, it, None).result(timeout=10)) is not None:
            got.append(r.SOPInstanceUID)
        t.join(timeout=10)
    assert not errors
    assert len(got) == len(set(got)) and len(got) >= 18
