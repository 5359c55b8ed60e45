"""Archive.find_encoded: the same bytes as codec.encode of what Archive.find yields, per row."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from dimse import codec
from dimse.archive import Archive
from dimse.matching import ATTRIBUTES, Kind
from dimse.qr import MODELS, Level, QueryModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = "1.2.826.0.1.3680043.10.998."
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENTS = [("P1", "Doe^John", ""), ("P2", "Müller^Anna=ミュラー", "ISSUER"), ("P3", "", "")]


def _code(value: str, scheme: str, meaning: str = "") -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = value, scheme
    if meaning:
        item.CodeMeaning = meaning
    return Sequence([item])


def _instance(p: int, s: int, se: int, n: int) -> Dataset:
    pid, name, issuer = PATIENTS[p]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName = pid, name
    if issuer:
        ds.IssuerOfPatientID = issuer
        ds.OtherPatientIDsSequence = Sequence([Dataset()])
        ds.OtherPatientIDsSequence[0].PatientID = "ALT" + pid
        ds.OtherPatientIDsSequence[0].IssuerOfPatientID = "Émetteur"
    if p == 0:
        ds.PatientBirthDate, ds.PatientBirthTime, ds.PatientSex = "19700101", "0830", "M"
        ds.OtherPatientNames = ["Doe^J", "Roe^R"]
        ds.PatientComments = "multi\\valued? no: LT-like text"
    ds.StudyInstanceUID = f"{ROOT}{p}.{s}"
    ds.StudyDate, ds.StudyTime = f"2020010{s + 1}", ["101500.25", "", "23"][s % 3]
    ds.AccessionNumber, ds.StudyID = f"A{p}{s}", str(s)
    if s:
        ds.StudyDescription = "Thorax" if p else "Kopf ü"
        ds.ReferringPhysicianName = "House^Gregory"
        ds.NameOfPhysiciansReadingStudy = ["Wilson^James", "Cuddy^Lisa"]
        ds.PatientAge = "050Y"
        ds.ProcedureCodeSequence = _code("PROC", "LOCAL", "Procédure" if p == 1 else "")
    ds.SeriesInstanceUID = f"{ds.StudyInstanceUID}.{se}"
    ds.Modality = ["CT", "MR", "SR"][se % 3]
    ds.SeriesNumber = se + 1 if se != 2 else None
    ds.SeriesDate, ds.SeriesTime = ds.StudyDate, "1015"
    ds.BodyPartExamined = "CHEST" if se else ""
    if se == 1:
        ds.RequestAttributesSequence = Sequence([Dataset(), Dataset()])
        ds.RequestAttributesSequence[0].RequestedProcedureID = "RP1"
        ds.RequestAttributesSequence[1].ScheduledProcedureStepID = "SPS2"
    ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{n}"
    ds.SOPClassUID = MR_IMAGE if ds.Modality == "MR" else CTImageStorage
    ds.InstanceNumber = n if n != 2 else -7
    ds.ContentDate, ds.ContentTime = "20200102", "120000.000100"
    ds.AcquisitionDateTime = ["20200102120000.500000", "2020", "20200102120000+0100",
                              "20200102000000"][n % 4]
    if ds.Modality == "SR":
        ds.ConceptNameCodeSequence = _code("18748-4", "LN", "Diagnostic imaging report")
    return ds


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("encoded"))
    for p in range(len(PATIENTS)):
        for s in range(2):
            for se in range(3):
                for n in range(1, 3):
                    arc.store(_instance(p, s, se, n))
    yield arc
    arc.close()


def _query(level: Level, keys: dict[str, object]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for kw, value in keys.items():
        setattr(ds, kw, value)
    return ds


def _check(arc: Archive, ident: Dataset, model: QueryModel, level: Level, ts: str, *,
           templated: bool = True, dt: bool = False) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = arc.find_with_status(ident, model, level, datetime_matching=dt)
        expected = [codec.encode(ds, ts) for ds in slow.matches]
        fast = arc.find_encoded(ident, model, level, ts, datetime_matching=dt)
        got = list(fast.matches)
    assert fast.unsupported == slow.unsupported
    assert fast.templated is templated
    assert fast.transfer_syntax_uid == ts
    assert got == expected
    return len(got)


def _keys(level: Level) -> list[str]:
    order = ["patient", "study", "series", "instance"]
    depth = order.index({Level.PATIENT: "patient", Level.STUDY: "study",
                         Level.SERIES: "series", Level.IMAGE: "instance"}[level])
    return [kw for kw, a in ATTRIBUTES.items() if order.index(a.table) <= depth]


@pytest.mark.parametrize("ts", codec.SUPPORTED_TRANSFER_SYNTAXES)
@pytest.mark.parametrize("model", list(QueryModel)[:3])
def test_every_level_every_key_universal(archive: Archive, model: QueryModel, ts: str) -> None:
    for level in MODELS[model].levels:
        keys: dict[str, object] = {kw: (Sequence() if ATTRIBUTES[kw].kind is Kind.SEQ else "")
                                   for kw in _keys(level)}
        keys["PatientWeight"] = ""  # not indexed: returned empty, reported
        assert _check(archive, _query(level, keys), model, level, ts) > 0


@pytest.mark.parametrize("keys", [
    {"SOPInstanceUID": ""},
    {"PatientName": "*", "OtherPatientNames": "", "InstanceNumber": ""},
    {"PatientName": "müller*", "AcquisitionDateTime": ""},
    {"ModalitiesInStudy": ["CT", "MR"], "SOPClassesInStudy": "", "StudyDescription": ""},
    {"AcquisitionDateTime": "2020-", "SeriesNumber": "", "NumberOfStudyRelatedInstances": ""},
    {"ProcedureCodeSequence": Sequence([Dataset()]), "StudyID": ""},
    {"OtherPatientIDsSequence": Sequence([Dataset()]), "IssuerOfPatientID": "ISSUER"},
])
@pytest.mark.parametrize("ts", [codec.IMPLICIT_VR_LE, codec.EXPLICIT_VR_BE])
def test_selected_queries(archive: Archive, keys: dict[str, object], ts: str) -> None:
    level = Level.IMAGE if "SOPInstanceUID" in keys or "InstanceNumber" in keys or \
        "AcquisitionDateTime" in keys else Level.STUDY
    _check(archive, _query(level, keys), QueryModel.PATIENT_ROOT, level, ts)


def test_sequence_item_keys_and_datetime_pairs(archive: Archive) -> None:
    item = Dataset()
    item.CodeValue, item.CodeMeaning, item.PatientID = "", "", ""
    ident = _query(Level.STUDY, {"ProcedureCodeSequence": Sequence([item]),
                                 "StudyDate": "20200101-20200102", "StudyTime": "1000-2400"})
    _check(archive, ident, QueryModel.STUDY_ROOT, Level.STUDY, codec.EXPLICIT_VR_LE, dt=True)


def test_request_vrs_are_kept_and_ambiguous_vr_falls_back(archive: Archive) -> None:
    ident = _query(Level.SERIES, {"Modality": ""})
    ident.add_new(0x00100010, "LO", "")  # PatientName with the VR an SCU chose
    ident.add_new(0x00091010, "LO", "")  # private: unsupported, returned empty
    _check(archive, ident, QueryModel.PATIENT_ROOT, Level.SERIES, codec.EXPLICIT_VR_LE)
    ident.add_new(0x00280106, "US or SS", None)  # ambiguous VR: the Dataset path
    _check(archive, ident, QueryModel.PATIENT_ROOT, Level.SERIES, codec.EXPLICIT_VR_LE,
           templated=False)


def test_decoded_request_as_the_scp_sees_it(archive: Archive) -> None:
    for ts in codec.SUPPORTED_TRANSFER_SYNTAXES:
        ident = _query(Level.IMAGE, {"PatientName": "", "SOPClassUID": "", "ContentTime": "",
                                     "ConceptNameCodeSequence": Sequence()})
        decoded = codec.decode(codec.encode(ident, ts), ts)
        _check(archive, decoded, QueryModel.PATIENT_ROOT, Level.IMAGE, ts)


def test_streams_lazily(archive: Archive) -> None:
    result = archive.find_encoded(_query(Level.IMAGE, {"SOPInstanceUID": ""}),
                                  QueryModel.STUDY_ROOT, Level.IMAGE, codec.IMPLICIT_VR_LE)
    first = next(result.matches)
    assert codec.decode(first, codec.IMPLICIT_VR_LE).QueryRetrieveLevel == "IMAGE"
    assert len(list(result.matches)) == 3 * 2 * 3 * 2 - 1


_FILTERS: dict[str, list[object]] = {
    "PatientID": ["", "P1", "P*"], "PatientName": ["", "*ANNA*", "doe^john"],
    "StudyDate": ["", "20200101-", "-20200101"], "Modality": ["", "CT", ["MR", "SR"]],
    "InstanceNumber": ["", "1", "-7"], "SeriesNumber": ["", "2"],
}


@st.composite
def queries(draw: st.DrawFn) -> tuple[QueryModel, Level, Dataset]:
    model = draw(st.sampled_from(list(QueryModel)[:3]))
    level = draw(st.sampled_from(MODELS[model].levels))
    names = draw(st.lists(st.sampled_from(_keys(level) + ["PatientWeight"]), unique=True,
                          max_size=12))
    keys: dict[str, object] = {}
    for kw in names:
        attr = ATTRIBUTES.get(kw)
        if attr is not None and attr.kind is Kind.SEQ:
            keys[kw] = draw(st.sampled_from([Sequence(), Sequence([Dataset()])]))
        elif kw in _FILTERS and level is not Level.PATIENT:
            keys[kw] = draw(st.sampled_from(_FILTERS[kw]))
        else:
            keys[kw] = ""
    return model, level, _query(level, keys)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
          deadline=None, max_examples=150)
@given(q=queries(), ts=st.sampled_from(codec.SUPPORTED_TRANSFER_SYNTAXES),
       dt=st.booleans())
def test_find_encoded_equals_find_property(archive: Archive, q: tuple[QueryModel, Level, Dataset],
                                           ts: str, dt: bool) -> None:
    model, level, ident = q
    _check(archive, ident, model, level, ts, dt=dt)
