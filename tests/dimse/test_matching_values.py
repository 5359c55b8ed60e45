"""Multi-valued stored attributes (each value matched on its own) and DT values with timezone
offsets: unit tests of dimse.matching on an in-memory SQLite plus Archive-level queries."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dimse import codec
from dimse.archive import Archive
from dimse.matching import (
    ATTRIBUTES,
    Kind,
    any_value_matches,
    datetime_bounds,
    datetime_key_bounds,
    fold_pn,
    match,
    match_column,
    register_functions,
    utc_offset,
)
from dimse.qr import Level, QueryModel

SR = QueryModel.STUDY_ROOT
CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.99.120"


def run_text(kind: Kind, vr: str, stored: str | None, key: object) -> bool:
    """Does the (``\\``-joined, possibly multi-valued) ``stored`` text match ``key``?"""
    db = sqlite3.connect(":memory:")
    register_functions(db)
    db.execute("CREATE TABLE t (c)")
    value = fold_pn(stored) if kind is Kind.PN and stored is not None else stored
    db.execute("INSERT INTO t VALUES (?)", (value,))
    cond = match(kind, vr, "c", key)
    if cond is None:
        return True
    sql, params = cond
    return bool(db.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()[0])


# -- A. multi-valued stored values ------------------------------------------------------------


def test_each_stored_value_matches_on_its_own() -> None:
    stored = "SMITH^A\\JONES^B"
    for key, expected in [("SMITH^A", True), ("JONES^B", True), ("jones^b", True),
                          ("JONES*", True), ("*^A", True), ("?ONES^B", True),
                          ("S*B", False), ("SMITH^A\\JONES^B", True), ("A\\JONES", False),
                          ("SMITH", False), ("MITH^A", False), (["X", "JONES^B"], True),
                          (["X", "Y*"], False)]:
        assert run_text(Kind.PN, "PN", stored, key) is expected, key


def test_multi_valued_str_columns_case_sensitive_and_literal_vrs() -> None:
    assert run_text(Kind.STR, "CS", "CT\\MR", "MR")
    assert run_text(Kind.STR, "CS", "CT\\MR", "M?")
    assert not run_text(Kind.STR, "CS", "CT\\MR", "mr")  # STR stays case-sensitive
    assert not run_text(Kind.STR, "CS", "CT\\MR", "C*R")  # no wildcard across values
    assert run_text(Kind.STR, "CS", "CT\\MR", ["US", "MR"])
    assert not run_text(Kind.STR, "AS", "050Y\\051Y", "05*")  # AS: '*' is literal
    assert run_text(Kind.STR, "AS", "050Y\\051Y", "051Y")
    assert run_text(Kind.STR, "LO", "A\\\\B", "*")  # '*' alone is universal...
    # ...and so is '**': '*' matches any sequence, a zero-length one too (PS3.4 C.2.2.2.4)
    assert run_text(Kind.STR, "LO", "\\", "**")
    assert not run_text(Kind.STR, "LO", "\\", "*A*")  # a non-universal key: empty values fail


def test_single_valued_rows_keep_the_plain_condition() -> None:
    """The Python function is only reached for stored values that hold a backslash."""
    calls: list[object] = []
    db = sqlite3.connect(":memory:")
    db.create_function("dicom_any", 3, lambda *a: calls.append(a) or any_value_matches(*a),
                       deterministic=True)
    db.execute("CREATE TABLE t (c)")
    db.executemany("INSERT INTO t VALUES (?)", [("CT",), ("MR",), ("CT\\MR",), (None,)])
    cond = match(Kind.STR, "CS", "c", "MR")
    assert cond is not None
    got = db.execute(f"SELECT c FROM t WHERE {cond[0]} ORDER BY c", cond[1]).fetchall()
    assert got == [("CT\\MR",), ("MR",)]
    assert calls == [("CT\\MR", "MR", 1)]


def _reference(pattern: str, values: list[str], fold: bool) -> bool:
    if fold:
        pattern, values = fold_pn(pattern), [fold_pn(v) for v in values]
    if pattern == "*":
        return True
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return any(v and re.fullmatch(rx, v, re.DOTALL) for v in values)


_VALUE = st.text(alphabet="ab%_[]^*?xÄä", min_size=1, max_size=6)


@settings(max_examples=300)
@given(pattern=_VALUE, values=st.lists(_VALUE, min_size=1, max_size=3), pn=st.booleans())
def test_multi_valued_wildcards_agree_with_reference(pattern: str, values: list[str],
                                                     pn: bool) -> None:
    kind, vr = (Kind.PN, "PN") if pn else (Kind.STR, "LO")
    stored = "\\".join(values)
    assert run_text(kind, vr, stored, pattern) is _reference(pattern, values, pn)


# -- Archive-level ------------------------------------------------------------------------------


def _instance(n: int, **values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.StudyInstanceUID = f"{ROOT}.{n}"
    ds.SeriesInstanceUID = f"{ROOT}.{n}.1"
    ds.SOPInstanceUID = f"{ROOT}.{n}.1.1"
    ds.PatientID = f"P{n}"
    ds.PatientName = f"PAT^{n}"
    ds.StudyDate, ds.StudyTime = f"2020011{n}", f"{8 + n:02d}30"
    for kw, v in values.items():
        setattr(ds, kw, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


INSTANCES = [
    _instance(1, NameOfPhysiciansReadingStudy=["SMITH^A", "JONES^B"],
              OtherPatientNames=["ALPHA^A", "BETA^B"], StudyDescription="ONE",
              AcquisitionDateTime="20200115120000-0500"),
    _instance(2, NameOfPhysiciansReadingStudy="JONES^C", OtherPatientNames="BETA^B",
              StudyDescription="TWO", AcquisitionDateTime="2020"),
    _instance(3, NameOfPhysiciansReadingStudy=["KIM^D", "LEE^E", "SMITH^A"],
              StudyDescription="THREE", AcquisitionDateTime="20200115170000"),
    _instance(4, StudyDescription="FOUR", AcquisitionDateTime="20200115120000",
              TimezoneOffsetFromUTC="+0100"),
    _instance(5, StudyDescription="FIVE", AcquisitionDateTime="20200116013000.25+1400"),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root: Path = tmp_path_factory.mktemp("match_values")
    for ds in INSTANCES:
        dcmwrite(root / f"{ds.StudyDescription}.dcm", ds, enforce_file_format=True)
    arc = Archive(root)
    arc.index()
    yield arc
    arc.close()


def _studies(arc: Archive, **keys: object) -> list[str]:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDescription = None
    for kw, v in keys.items():
        setattr(q, kw, v)
    found = sorted(str(ds.StudyDescription) for ds in arc.find(q, SR, Level.STUDY))
    encoded = list(arc.find_encoded(q, SR, Level.STUDY, ExplicitVRLittleEndian).matches)
    assert len(encoded) == len(found)
    return found


@pytest.mark.parametrize(("key", "expected"), [
    ("SMITH^A", ["ONE", "THREE"]), ("JONES^B", ["ONE"]), ("JONES*", ["ONE", "TWO"]),
    ("S*B", []), ("lee^e", ["THREE"]), ("*^E", ["THREE"]), ("SMITH^A\\JONES^C", ["ONE", "THREE",
                                                                                 "TWO"]),
])
def test_archive_reading_physicians(archive: Archive, key: str, expected: list[str]) -> None:
    assert _studies(archive, NameOfPhysiciansReadingStudy=key) == expected


def test_archive_other_patient_names_and_returned_values(archive: Archive) -> None:
    assert _studies(archive, OtherPatientNames="BETA^B") == ["ONE", "TWO"]
    assert _studies(archive, OtherPatientNames="A*A") == ["ONE"]
    assert _studies(archive, OtherPatientNames="A*B") == []
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDescription = "ONE"
    q.NameOfPhysiciansReadingStudy = "JONES^B"
    q.OtherPatientNames = ""
    (ds,) = archive.find(q, SR, Level.STUDY)
    assert list(ds.NameOfPhysiciansReadingStudy) == ["SMITH^A", "JONES^B"]  # still multi-valued
    assert list(ds.OtherPatientNames) == ["ALPHA^A", "BETA^B"]
    (raw,) = archive.find_encoded(q, SR, Level.STUDY, ExplicitVRLittleEndian).matches
    assert raw == codec.encode(ds, ExplicitVRLittleEndian)


# -- B. DT with timezone offsets ----------------------------------------------------------------


def run_dt(stored: str, key: str, *, stored_tz: str | None = None,
           key_tz: str | None = None) -> bool:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (c)")
    db.execute("INSERT INTO t VALUES (?)", (datetime_bounds(stored, stored_tz)[0],))
    cond = match(Kind.DATETIME, "DT", "c", key, offset=key_tz)
    assert cond is not None
    return bool(db.execute(f"SELECT COUNT(*) FROM t WHERE {cond[0]}", cond[1]).fetchone()[0])


def test_utc_offsets() -> None:
    assert utc_offset("+0100") == 60 and utc_offset("-0530") == -330
    assert utc_offset("+1400") == 840 and utc_offset("-1200") == -720
    for bad in ("+1401", "-1201", "+0160", "0100", "+100", "", None):
        assert utc_offset(bad) is None, bad


def test_datetime_bounds_in_utc() -> None:
    assert datetime_bounds("20200115120000-0500") == ("20200115170000.000000",
                                                      "20200115170000.999999")
    assert datetime_bounds("20200115120000") == ("20200115120000.000000",
                                                 "20200115120000.999999")
    assert datetime_bounds("20200115120000", "+0100")[0] == "20200115110000.000000"
    assert datetime_bounds("20200115120000+0200", "+0100")[0] == "20200115100000.000000"
    assert datetime_bounds("202002") == ("20200201000000.000000", "20200229235959.999999")
    assert datetime_bounds("2020+0100") == ("20191231230000.000000", "20201231225959.999999")
    assert datetime_bounds("20200116013000.25+1400")[0] == "20200115113000.250000"
    assert datetime_bounds("9999-1200")[1] == "99991231235959.999999"  # clamped
    assert datetime_bounds("0001+0100")[0] == "00010101000000.000000"
    assert datetime_bounds("20201301")[0] == "20201301000000.000000"  # invalid: as text


@pytest.mark.parametrize(("key", "lo", "hi"), [
    ("20200115120000-0500", "20200115170000.000000", "20200115170000.999999"),
    ("2019-2020", "20190101000000.000000", "20201231235959.999999"),  # -2020 is no offset
    ("20200115-0500-", "20200115050000.000000", None),
    ("-20200115+0100", None, "20200115225959.999999"),
    ("20200115-0500-20200116+0100", "20200115050000.000000", "20200116225959.999999"),
    ("20200115-20200116-0500", "20200115000000.000000", "20200117045959.999999"),
    ("2020-", "20200101000000.000000", None),
    ("-2020", None, "20201231235959.999999"),
])
def test_datetime_key_ranges_with_offsets(key: str, lo: str | None, hi: str | None) -> None:
    assert datetime_key_bounds(key) == (lo, hi)


def test_datetime_matching_with_offsets() -> None:
    stored = "20200115120000-0500"
    for key, expected in [("20200115120000-0500", True), ("20200115120000+0100", False),
                          ("20200115170000", True), ("20200115170000+0000", True),
                          ("20200115120000", False), ("202001151200-0500", True),
                          ("20200115-0500", True), ("20200115170000-", True),
                          ("-20200115165959", False), ("20200115-0500-20200115+0100", True),
                          ("-20200115120000-0500", True), ("20200116-", False)]:
        assert run_dt(stored, key) is expected, key
    # values without an offset take Timezone Offset From UTC, on either side
    assert not run_dt("20200115120000", "20200115110000")
    assert not run_dt("20200115120000", "20200115110000", stored_tz="+0100", key_tz="+0100")
    assert run_dt("20200115120000", "20200115120000", stored_tz="+0100", key_tz="+0100")
    assert run_dt("20200115120000", "20200115110000", stored_tz="+0100")
    assert run_dt("20200115170000", "20200115120000", key_tz="-0500")
    assert run_dt("20200115170000", "20200115120000-0500", key_tz="+0100")  # own offset wins
    assert run_dt("2020", "2020") and run_dt("2020", "20200101")  # partial: start of its span
    assert not run_dt("2020", "20200102")


def _images(arc: Archive, key: str, tz: str | None = None) -> list[tuple[str, str]]:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.SOPInstanceUID = None
    q.StudyDescription = None
    q.AcquisitionDateTime = key
    if tz is not None:
        q.TimezoneOffsetFromUTC = tz
    found = sorted((str(ds.StudyDescription), str(ds.AcquisitionDateTime))
                   for ds in arc.find(q, SR,
                                      Level.IMAGE))
    return found


def test_archive_datetime_offsets(archive: Archive) -> None:
    # stored (UTC): ONE 17:00, TWO 2020 (start 2020-01-01), THREE 17:00, FOUR 11:00 (+0100
    # from TimezoneOffsetFromUTC), FIVE 11:30:00.25
    assert _images(archive, "20200115120000-0500") == [
        ("ONE", "20200115120000-0500"), ("THREE", "20200115170000")]
    assert _images(archive, "20200115120000+0100") == [("FOUR", "20200115120000")]
    assert _images(archive, "20200115120000+0200") == []
    assert _images(archive, "20200115120000", "+0100") == [("FOUR", "20200115120000")]
    assert _images(archive, "20200115113000.25") == [("FIVE", "20200116013000.25+1400")]
    assert _images(archive, "20200115-") == [
        ("FIVE", "20200116013000.25+1400"), ("FOUR", "20200115120000"),
        ("ONE", "20200115120000-0500"), ("THREE", "20200115170000")]
    assert _images(archive, "-20200114+1400") == [("TWO", "2020")]
    assert _images(archive, "2020") == [
        ("FIVE", "20200116013000.25+1400"), ("FOUR", "20200115120000"),
        ("ONE", "20200115120000-0500"), ("THREE", "20200115170000"), ("TWO", "2020")]
    assert _images(archive, "20200115110000-20200115113000-0500") == [  # 11:00-16:30 UTC
        ("FIVE", "20200116013000.25+1400"), ("FOUR", "20200115120000")]


def test_archive_returns_datetimes_as_stored(archive: Archive) -> None:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.SOPInstanceUID = None
    q.AcquisitionDateTime = ""
    slow = {str(ds.SOPInstanceUID): ds for ds in archive.find(q, SR, Level.IMAGE)}
    assert sorted(str(ds.AcquisitionDateTime) for ds in slow.values()) == sorted(
        str(ds.AcquisitionDateTime) for ds in INSTANCES)
    fast = list(archive.find_encoded(q, SR, Level.IMAGE, ExplicitVRLittleEndian).matches)
    assert sorted(fast) == sorted(codec.encode(ds, ExplicitVRLittleEndian)
                                  for ds in slow.values())


@pytest.mark.parametrize("combined", [False, True])
def test_date_and_time_keys_unchanged(archive: Archive, combined: bool) -> None:
    """StudyTime of study n is (8 + n):30 on 2020-01-1n."""
    def found(date: str, time: str) -> list[str]:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyDescription = None
        q.StudyDate, q.StudyTime = date, time
        return sorted(str(ds.StudyDescription)
                      for ds in archive.find(q, SR, Level.STUDY, datetime_matching=combined))

    assert found("20200112-20200113", "10") == ["TWO"]
    assert found("20200112-20200114", "1030-") == ["FOUR", "THREE", "TWO"]
    assert found("20200112-20200114", "1200-") == (["FOUR", "THREE"] if combined
                                                   else ["FOUR"])
    assert found("20200112-20200114", "-1200") == ["THREE", "TWO"]
    assert found("20200113-", "-1159") == (["THREE"] if not combined else
                                           ["FIVE", "FOUR", "THREE"])
    assert found("20200113", "1130") == ["THREE"]
    assert found("-20200111", "") == ["ONE"]


def test_exact_keys_on_stored_columns_keep_their_index() -> None:
    """An exact PN key still looks single-valued rows up by the column's index, and finds
    multi-valued rows through dicom_any."""
    attr = ATTRIBUTES["OtherPatientNames"]
    db = sqlite3.connect(":memory:")
    register_functions(db)
    db.execute(f"CREATE TABLE patient (id INTEGER PRIMARY KEY, {attr.column}_f TEXT)")
    db.execute(f"CREATE INDEX pn ON patient ({attr.column}_f)")
    db.executemany("INSERT INTO patient VALUES (?, ?)",
                   [(1, "BETA^B"), (2, "ALPHA^A\\BETA^B"), (3, "BETA^BB"), (4, None)])
    cond = match_column(attr, "p", "beta^b")
    assert cond is not None
    sql = f"SELECT p.id FROM patient p WHERE {cond[0]} ORDER BY p.id"
    assert [r[0] for r in db.execute(sql, cond[1])] == [1, 2]
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + sql, cond[1]))
    assert "USING COVERING INDEX pn" in plan and "MULTI-INDEX OR" in plan
