"""Audit 5 of C-FIND matching (PS3.4 C.2.2.2, C.2.2.3): each test failed before its fix.

Multi-valued DA/TM/DT stored values (any value matches), PN case folding that keeps ``?`` one
character, ISO 2022 IR 58 text (pydicom leaves its escape sequence in decoded values), ...
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dimse import codec
from dimse.archive import Archive
from dimse.qr import Level, QueryModel

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

SR = QueryModel.STUDY_ROOT
CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.99.515."


def instance(n: int, **values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.StudyInstanceUID = f"{ROOT}{n}"
    ds.SeriesInstanceUID = f"{ROOT}{n}.1"
    ds.SOPInstanceUID = f"{ROOT}{n}.1.1"
    ds.PatientID = f"P{n}"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def fill(arc: Archive, *datasets: Dataset) -> None:
    """Index data sets straight into the archive (no files needed)."""
    with arc._lock, arc._db:
        for n, ds in enumerate(datasets):
            arc._upsert(ds, f"x/{n}.dcm", ExplicitVRLittleEndian, 10, 0)


def studies(arc: Archive, *, combined: bool = False, level: str = "STUDY",
            **keys: object) -> list[int]:
    """The numbers of the studies (or instances' studies) the keys match."""
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ident, keyword, value)
    ident.StudyInstanceUID = ""
    if level == "IMAGE":
        ident.StudyInstanceUID = keys.pop("study")  # type: ignore[assignment]
        ident.SeriesInstanceUID = ident.StudyInstanceUID + ".1"
        ident.SOPInstanceUID = ""
    found = arc.find(ident, SR, Level[level], datetime_matching=combined)
    return sorted(int(str(ds.StudyInstanceUID).rsplit(".", 1)[-1]) for ds in found)


# -- 1. multi-valued DA / TM / DT stored values ------------------------------------------------


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("audit5-dated"))
    fill(arc,
         instance(1, StudyDate=["20200101", "20210505"], StudyTime=["101010", "121212"]),
         instance(2, StudyDate="20200101", StudyTime="101010.5"),
         instance(3, StudyDate="2019.12.31\\20220202", StudyTime=["08", "2000"]),
         instance(4, StudyDate="", StudyTime=""))
    yield arc
    arc.close()


@pytest.mark.parametrize(("key", "expected"), [
    ("20210505", [1]),
    ("20200101", [1, 2]),
    ("20210501-20210510", [1]),
    ("20210101-", [1, 3]),
    ("-20191231", [3]),
    ("20220202", [3]),
    ("20191231", [3]),
    (["20000101", "20210505"], [1]),
    ("20300101-", []),
])
def test_multi_valued_dates_match_on_any_value(dated: Archive, key: object,
                                               expected: list[int]) -> None:
    assert studies(dated, StudyDate=key) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("121212", [1]),
    ("12", [1]),
    ("1200-1300", [1]),
    ("1010", [1, 2]),
    ("20", [3]),
    ("0800-0801", [3]),
    ("1300-", [3]),
    ("-0900", [3]),
])
def test_multi_valued_times_match_on_any_value(dated: Archive, key: str,
                                               expected: list[int]) -> None:
    assert studies(dated, StudyTime=key) == expected


def test_multi_valued_dates_and_times_in_combined_matching(dated: Archive) -> None:
    # 2021-05-05 with 10:10:10 or 12:12:12; 2019-12-31/2022-02-02 with 08:00 or 20:00
    assert studies(dated, combined=True, StudyDate="20210505-", StudyTime="1200-") == [1, 3]
    assert studies(dated, combined=True, StudyDate="20220202-20220202",
                   StudyTime="1900-2100") == [3]
    assert studies(dated, combined=True, StudyDate="-20200101", StudyTime="-0900") == [3]


def test_multi_valued_datetimes_match_on_any_value(tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    arc = Archive(tmp_path_factory.mktemp("audit5-dt"))
    fill(arc, instance(1, AcquisitionDateTime=["20200101120000", "20210505080000+0200"]),
         instance(2, AcquisitionDateTime="20200101120000"))
    try:
        uid = f"{ROOT}1"
        assert studies(arc, level="IMAGE", study=uid,
                       AcquisitionDateTime="20210505060000+0000") == [1]
        assert studies(arc, level="IMAGE", study=uid,
                       AcquisitionDateTime="20210505-20210506") == [1]
        assert studies(arc, level="IMAGE", study=uid, AcquisitionDateTime="2022-") == []
    finally:
        arc.close()


def test_single_valued_dates_keep_their_index(dated: Archive) -> None:
    """The multi-valued rows are found apart: single-valued rows still use study_date's
    index (no scan of the study table)."""
    from dimse.matching import ATTRIBUTES, match_column

    cond = match_column(ATTRIBUTES["StudyDate"], "st", "20200101")
    assert cond is not None
    plan = " ".join(str(r) for r in dated._db.execute(
        f"EXPLAIN QUERY PLAN SELECT st.id FROM study st WHERE {cond[0]}", cond[1]))
    assert "INDEX study_date" in plan and "SCAN st " not in plan + " "


# -- 2. PN case folding keeps one character one character --------------------------------------


@pytest.fixture(scope="module")
def names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("audit5-names"))
    fill(arc, instance(1, PatientName="Straße^Hans", SpecificCharacterSet="ISO_IR 100"),
         instance(2, PatientName="Strasse^Hans"),
         instance(3, PatientName="Buc^Jérôme", SpecificCharacterSet="ISO_IR 100"))
    yield arc
    arc.close()


@pytest.mark.parametrize(("key", "expected"), [
    ("Stra?e^Hans", [1]),  # '?' is one character, also the German sharp s
    ("STRA?E*", [1]),
    ("stra??e^hans", [2]),  # two characters are not one
    ("straße^hans", [1]),  # case-insensitive still
    ("STRAẞE^HANS", [1]),  # capital sharp s
    ("buc^j?r?me", [3]),
    ("BUC^JÉRÔME", [3]),
])
def test_pn_wildcards_count_characters_after_folding(names: Archive, key: str,
                                                     expected: list[int]) -> None:
    assert studies(names, PatientName=key) == expected


# -- 3. ISO 2022 IR 58: escape sequences are no characters -------------------------------------

IR58 = ["", "ISO 2022 IR 58"]
# Zhang^XiaoDong=<ESC $ ) A>GB2312 "zhang"^<ESC $ ) A>GB2312 "xiaodong" (PS3.5 K.2 layout)
IR58_NAME = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"
UTF8_NAME = "Zhang^XiaoDong=\u5f20^\u5c0f\u4e1c"


@pytest.fixture(scope="module")
def chinese(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("audit5-ir58"))
    ds = instance(1, SpecificCharacterSet=IR58)
    ds.add(DataElement(0x00100010, "PN", IR58_NAME))
    ds.add(DataElement(0x00081030, "LO", b"\x1b$)A\xd5\xc5"))
    arc.store(ds)  # written and read back as a file: decoded with its character set
    fill(arc, instance(2, PatientName="Li^Si=\u674e^\u56db", SpecificCharacterSet="ISO_IR 192"))
    yield arc
    arc.close()


def test_ir58_values_are_indexed_and_returned_without_escapes(chinese: Archive) -> None:
    assert studies(chinese, PatientName=UTF8_NAME) == [1]
    assert studies(chinese, PatientName="*=\u5f20^*") == [1]
    assert studies(chinese, StudyDescription="\u5f20") == [1]
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = f"{ROOT}1"
    ident.PatientName = ""
    ident.StudyDescription = ""
    (found,) = list(chinese.find(ident, SR, Level.STUDY))
    assert str(found.PatientName) == UTF8_NAME
    assert found.StudyDescription == "\u5f20"
    assert found.SpecificCharacterSet == "ISO_IR 192"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def test_ir58_request_keys_match(chinese: Archive) -> None:
    """A request in ISO 2022 IR 58 (as DCMTK sends it), decoded by our codec, matches."""
    raw = (_element(0x0008, 0x0005, b"CS", b"\\ISO 2022 IR 58")
           + _element(0x0008, 0x0052, b"CS", b"STUDY")
           + _element(0x0010, 0x0010, b"PN", IR58_NAME)
           + _element(0x0020, 0x000D, b"UI", b""))
    ident = codec.decode(raw, ExplicitVRLittleEndian)
    found = list(chinese.find(ident, SR, Level.STUDY))
    assert [str(ds.StudyInstanceUID) for ds in found] == [f"{ROOT}1"]
    # "*<ESC $ ) A>li*" against a name stored in UTF-8
    raw_wild = raw.replace(_element(0x0010, 0x0010, b"PN", IR58_NAME),
                           _element(0x0010, 0x0010, b"PN", b"*\x1b$)A\xc0\xee*"))
    ident = codec.decode(raw_wild, ExplicitVRLittleEndian)
    found = list(chinese.find(ident, SR, Level.STUDY))
    assert [str(ds.StudyInstanceUID) for ds in found] == [f"{ROOT}2"]
