"""Q/R information models and identifier rules, SCU (strict/lenient/relational) and SCP."""

from __future__ import annotations

import logging
import warnings

import pytest
from pydicom.dataset import Dataset

from dimse.errors import IdentifierError, ServiceError
from dimse.qr import (
    MODELS,
    UNIQUE_KEYS,
    KeyType,
    Level,
    Mode,
    Operation,
    QueryModel,
    Rule,
    check_identifier,
    contexts_for,
    key_level,
    keys_for,
    model_for_sop_class,
    parse_level,
    relational_accepted,
    required_keys,
    sop_class,
    validate_request,
    validate_scp,
)

# Identifiers with deliberate mistakes (wildcards in UIDs...) make pydicom warn; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

PR, SR, PSO = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT, QueryModel.PATIENT_STUDY_ONLY
CIR, WOB = QueryModel.COMPOSITE_INSTANCE_ROOT, QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK
FIND, MOVE, GET = Operation.FIND, Operation.MOVE, Operation.GET
PATIENT_ID, STUDY_UID, SERIES_UID, SOP_UID = 0x00100020, 0x0020000D, 0x0020000E, 0x00080018
QRL, PATIENT_NAME, MODALITY, STUDY_DATE = 0x00080052, 0x00100010, 0x00080060, 0x00080020

UNIQUE_VALUE = {Level.PATIENT: "PID1", Level.STUDY: "1.2.3", Level.SERIES: "1.2.3.4",
                Level.IMAGE: "1.2.3.4.5"}
KEYWORD = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID",
           Level.SERIES: "SeriesInstanceUID", Level.IMAGE: "SOPInstanceUID"}
# One non-unique key per level, for "below"/"above"/"non-unique" cases.
OTHER_KEY = {Level.PATIENT: ("PatientName", "DOE^J*"), Level.STUDY: ("StudyDate", "20200101-"),
             Level.SERIES: ("Modality", "CT"), Level.IMAGE: ("InstanceNumber", "1")}

CASES = [(m, op, lv) for m, info in MODELS.items() for op in Operation if info.uid(op)
         for lv in info.levels]


def valid_identifier(model: QueryModel, op: Operation, level: Level) -> Dataset:
    """A minimal identifier that obeys the hierarchical rules."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    levels = MODELS[model].levels
    for lv in levels[: levels.index(level)]:
        setattr(ds, KEYWORD[lv], UNIQUE_VALUE[lv])
    if level is Level.FRAME:
        ds.SimpleFrameList = [1, 3]
    elif op is FIND:
        setattr(ds, KEYWORD[level], "")
        kw, _ = OTHER_KEY[level]
        setattr(ds, kw, "")
    elif KEYWORD[level] == "PatientID":
        ds.PatientID = "PID1"
    else:
        setattr(ds, KEYWORD[level], [UNIQUE_VALUE[level], UNIQUE_VALUE[level] + ".9"])
    return ds


def ids(case: tuple[QueryModel, Operation, Level]) -> str:
    return f"{case[0].name}-{case[1].name}-{case[2].name}"


# ---------------------------------------------------------------------------------------------
# tables


def test_sop_class_round_trip() -> None:
    seen = set()
    for model, info in MODELS.items():
        for op in Operation:
            uid = info.uid(op)
            if uid is None:
                with pytest.raises(ValueError, match=model.name):
                    sop_class(model, op)
                continue
            assert sop_class(model, op) == uid
            assert model_for_sop_class(uid) == (model, op)
            assert model_for_sop_class(uid + "\0") == (model, op)
            seen.add(uid)
    assert len(seen) == 12
    assert sop_class(SR, MOVE) == "1.2.840.10008.5.1.4.1.2.2.2"
    assert sop_class(WOB, GET) == "1.2.840.10008.5.1.4.1.2.5.3"
    with pytest.raises(KeyError, match="not a Query/Retrieve"):
        model_for_sop_class("1.2.840.10008.1.1")


def test_levels_and_keys() -> None:
    assert MODELS[PR].levels == (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
    assert MODELS[SR].levels == (Level.STUDY, Level.SERIES, Level.IMAGE)
    assert MODELS[PSO].levels == (Level.PATIENT, Level.STUDY) and MODELS[PSO].retired
    assert MODELS[CIR].find is None and MODELS[WOB].move is None
    assert [lv.value for lv in Level][:4] == ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    assert UNIQUE_KEYS[Level.SERIES] == SERIES_UID
    assert keys_for(PR, Level.PATIENT)[PATIENT_ID] is KeyType.UNIQUE
    assert keys_for(SR, Level.STUDY)[PATIENT_ID] is KeyType.REQUIRED
    assert required_keys(PR, Level.STUDY) == {STUDY_UID, STUDY_DATE, 0x00080030, 0x00080050,
                                               0x00200010}
    assert required_keys(SR, Level.STUDY) >= {PATIENT_ID, PATIENT_NAME, STUDY_UID}
    assert required_keys(PR, Level.SERIES) == {SERIES_UID, MODALITY, 0x00200011}
    assert required_keys(PR, Level.IMAGE) == {SOP_UID, 0x00200013}
    with pytest.raises(ValueError):
        keys_for(SR, Level.PATIENT)
    assert key_level(PATIENT_NAME, PR) is Level.PATIENT
    assert key_level(PATIENT_NAME, SR) is Level.STUDY
    assert key_level(0x00091001, PR) is None


def test_parse_level_lenient_on_case_and_padding() -> None:
    assert parse_level("study ") is Level.STUDY
    assert parse_level("IMAGE\0") is Level.IMAGE
    assert parse_level("FOO") is None and parse_level(None) is None


def test_contexts_for() -> None:
    ctxs = contexts_for([PR, CIR, PR], [FIND, GET], relational=True)
    assert [(c.model, c.operation) for c in ctxs] == [(PR, FIND), (PR, GET), (CIR, GET)]
    assert [c.extended_negotiation for c in ctxs] == [b"\x01", b"\x01", b""]
    assert ctxs[0].abstract_syntax == "1.2.840.10008.5.1.4.1.2.1.1"
    assert "1.2.840.10008.1.2" in ctxs[0].transfer_syntaxes
    assert contexts_for([WOB], [FIND, MOVE]) == []
    assert all(c.extended_negotiation == b"" for c in contexts_for([SR], list(Operation)))
    assert relational_accepted(b"\x01\x00") and not relational_accepted(b"\x00")
    assert not relational_accepted(None) and not relational_accepted(b"")


# ---------------------------------------------------------------------------------------------
# every model x operation x level


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_valid_identifier_passes(case: tuple[QueryModel, Operation, Level]) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    assert check_identifier(ds, model, op) == []
    assert validate_request(ds, model, op) == []
    assert validate_scp(ds, model, op) is None


def _expect(ds: Dataset, model: QueryModel, op: Operation, rule: Rule, tag: int,
            caplog: pytest.LogCaptureFixture) -> None:
    """The violation is found by check, raised by STRICT, logged by LENIENT, failed by SCP."""
    found = check_identifier(ds, model, op)
    assert any(v.rule is rule and tag in v.tags for v in found), found
    with pytest.raises(IdentifierError) as exc:
        validate_request(ds, model, op)
    assert tag in exc.value.offending and exc.value.status == 0xA900
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in str(exc.value)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dimse.qr"):
        assert validate_request(ds, model, op, Mode.LENIENT) == found
    assert len(caplog.records) == len(found)
    failure = validate_scp(ds, model, op)
    assert failure is not None and failure.status == 0xA900 and tag in failure.offending
    assert 0 < len(failure.comment) <= 64


@pytest.mark.parametrize("case", [c for c in CASES if c[2] is not MODELS[c[0]].levels[0]],
                         ids=ids)
@pytest.mark.parametrize("problem", ["missing", "multi", "wildcard", "empty"])
def test_unique_key_above_level(case: tuple[QueryModel, Operation, Level], problem: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    top = MODELS[model].levels[0]
    tag = UNIQUE_KEYS[top]
    if problem == "missing":
        del ds[tag]
    else:
        ds[tag].value = {"multi": ["1.2", "1.3"], "wildcard": "1.2*", "empty": ""}[problem]
    _expect(ds, model, op, Rule.UNIQUE_ABOVE, tag, caplog)
    assert "single-valued" in check_identifier(ds, model, op)[0].message


@pytest.mark.parametrize("case", [c for c in CASES if c[2] is not MODELS[c[0]].levels[-1]
                                  and c[0] is not CIR], ids=ids)
def test_key_below_level(case: tuple[QueryModel, Operation, Level],
                         caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    below = MODELS[model].levels[MODELS[model].levels.index(level) + 1]
    kw, value = OTHER_KEY[below]
    setattr(ds, kw, value)
    _expect(ds, model, op, Rule.KEY_BELOW, int(ds.data_element(kw).tag), caplog)  # type: ignore[union-attr]


def test_key_below_in_patient_study_only_and_composite(caplog: pytest.LogCaptureFixture) -> None:
    ds = valid_identifier(PSO, FIND, Level.STUDY)
    ds.Modality = "CT"  # a SERIES key; the model has no SERIES level
    _expect(ds, PSO, FIND, Rule.KEY_BELOW, MODALITY, caplog)
    ds = valid_identifier(CIR, GET, Level.IMAGE)
    ds.SimpleFrameList = [1]
    _expect(ds, CIR, GET, Rule.KEY_BELOW, 0x00081161, caplog)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is FIND
                                  and c[2] is not MODELS[c[0]].levels[0]], ids=ids)
def test_find_non_unique_key_above_level(case: tuple[QueryModel, Operation, Level],
                                         caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    ds.PatientName = "DOE*"  # patient (or, in Study Root, study) level: always above here
    _expect(ds, model, op, Rule.KEY_ABOVE, PATIENT_NAME, caplog)
    # relational search allows it, and the missing higher unique keys too
    del ds[UNIQUE_KEYS[MODELS[model].levels[0]]]
    assert check_identifier(ds, model, op, relational=True) == []
    assert validate_request(ds, model, op, Mode.RELATIONAL, relational_negotiated=True) == []
    assert validate_scp(ds, model, op, relational_negotiated=True) is None


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not FIND], ids=ids)
def test_retrieve_rejects_non_unique_keys(case: tuple[QueryModel, Operation, Level],
                                          caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    ds.PatientName = "DOE"
    _expect(ds, model, op, Rule.NON_UNIQUE, PATIENT_NAME, caplog)
    ds = valid_identifier(model, op, level)
    ds.add_new(0x00091010, "LO", "private")  # unknown attributes are not unique keys either
    _expect(ds, model, op, Rule.NON_UNIQUE, 0x00091010, caplog)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not FIND
                                  and c[2] is not Level.FRAME], ids=ids)
@pytest.mark.parametrize("value", [None, "", "1.2*", "1.2\\"])
def test_retrieve_needs_unique_key_of_level(case: tuple[QueryModel, Operation, Level],
                                            value: str | None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    tag = UNIQUE_KEYS[level]
    if value is None:
        del ds[tag]
    else:
        ds[tag].value = value
    _expect(ds, model, op, Rule.UNIQUE_AT_LEVEL, tag, caplog)
    failure = validate_scp(ds, model, op, lenient=True)
    assert failure is not None  # an unbounded retrieve never passes


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_level_problems(case: tuple[QueryModel, Operation, Level],
                        caplog: pytest.LogCaptureFixture) -> None:
    model, op, level = case
    ds = valid_identifier(model, op, level)
    del ds.QueryRetrieveLevel
    _expect(ds, model, op, Rule.LEVEL_MISSING, QRL, caplog)
    ds.QueryRetrieveLevel = "FOO"
    _expect(ds, model, op, Rule.LEVEL_INVALID, QRL, caplog)
    ds.QueryRetrieveLevel = ["STUDY", "SERIES"]
    _expect(ds, model, op, Rule.LEVEL_INVALID, QRL, caplog)
    with warnings.catch_warnings():  # pydicom warns about a lower-case CS value
        warnings.simplefilter("ignore")
        ds.QueryRetrieveLevel = level.value.lower()  # lenient on case
    assert check_identifier(ds, model, op) == []


@pytest.mark.parametrize(("model", "level"), [(SR, "PATIENT"), (PSO, "SERIES"), (PSO, "IMAGE"),
                                              (CIR, "STUDY"), (WOB, "PATIENT"), (PR, "FRAME")])
def test_level_not_in_model_is_a_failure(model: QueryModel, level: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    op = GET
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = "X"
    _expect(ds, model, op, Rule.LEVEL_NOT_IN_MODEL, QRL, caplog)
    assert validate_scp(ds, model, op, lenient=True) is not None
    assert validate_scp(ds, model, op, relational_negotiated=True) is not None


def test_strict_message_names_keys_precisely() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    with pytest.raises(IdentifierError) as exc:
        validate_request(ds, PR, FIND)
    assert str(exc.value).startswith(
        "STUDY level query under PATIENT_ROOT needs PatientID (0010,0020) single-valued")
    assert exc.value.offending == (PATIENT_ID,)


def test_study_root_patient_keys() -> None:
    ds = valid_identifier(SR, FIND, Level.STUDY)
    ds.PatientName = "DOE*"
    ds.PatientID = ""
    assert check_identifier(ds, SR, FIND) == []  # ordinary STUDY keys in Study Root
    ds = valid_identifier(SR, MOVE, Level.STUDY)
    ds.PatientID = "PID1"
    assert [v.rule for v in check_identifier(ds, SR, MOVE)] == [Rule.NON_UNIQUE]


def test_find_unique_key_forms_at_level() -> None:
    ds = valid_identifier(PR, FIND, Level.SERIES)
    ds.SeriesInstanceUID = ["1.2", "1.3"]  # UID list allowed
    assert check_identifier(ds, PR, FIND) == []
    ds.SeriesInstanceUID = "1.2*"
    assert [v.rule for v in check_identifier(ds, PR, FIND)] == [Rule.UNIQUE_AT_LEVEL]
    ds = valid_identifier(PR, FIND, Level.PATIENT)
    ds.PatientID = "PID*"  # wildcard allowed on LO at its own level
    assert check_identifier(ds, PR, FIND) == []
    ds.PatientID = ["A", "B"]
    assert [v.rule for v in check_identifier(ds, PR, FIND)] == [Rule.UNIQUE_AT_LEVEL]


def test_find_without_keys() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.SpecificCharacterSet = "ISO_IR 192"
    assert [v.rule for v in check_identifier(ds, PR, FIND)] == [Rule.NO_KEYS]
    assert validate_scp(ds, PR, FIND, lenient=True) is None


def test_relational_retrieve() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ["1.2.3", "1.2.4"]
    assert {v.rule for v in check_identifier(ds, SR, MOVE)} == {Rule.UNIQUE_ABOVE}
    assert check_identifier(ds, SR, MOVE, relational=True) == []
    assert validate_scp(ds, SR, MOVE, relational_negotiated=True) is None
    ds.StudyInstanceUID = ["1.2", "1.3"]  # present: still single-valued
    assert {v.rule for v in check_identifier(ds, SR, MOVE, relational=True)} == {Rule.UNIQUE_ABOVE}
    del ds.StudyInstanceUID
    ds.Modality = "CT"  # non-unique keys stay forbidden
    assert {v.rule for v in check_identifier(ds, SR, MOVE, relational=True)} == {Rule.NON_UNIQUE}


def test_relational_mode_requires_negotiation() -> None:
    ds = valid_identifier(PR, FIND, Level.STUDY)
    with pytest.raises(IdentifierError, match="not negotiated"):
        validate_request(ds, PR, FIND, Mode.RELATIONAL)
    del ds.PatientID
    with pytest.raises(IdentifierError):
        validate_request(ds, PR, FIND, Mode.STRICT, relational_negotiated=True)
    assert validate_request(ds, PR, FIND, Mode.RELATIONAL, relational_negotiated=True) == []
    # relational does not apply to the Composite Instance Root model
    ds = Dataset()
    ds.QueryRetrieveLevel = "FRAME"
    ds.SimpleFrameList = [1]
    assert check_identifier(ds, CIR, GET, relational=True)[0].rule is Rule.UNIQUE_ABOVE


def test_composite_instance_root() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ["1.2.3", "1.2.4"]
    ds.StudyInstanceUID = "1.2"  # tolerated
    assert check_identifier(ds, CIR, MOVE) == []
    ds = valid_identifier(CIR, GET, Level.FRAME)
    ds.TimeRange = [0.0, 1.5]
    found = check_identifier(ds, CIR, GET)
    assert [v.rule for v in found] == [Rule.FRAME_KEYS]
    assert validate_scp(ds, CIR, GET, lenient=True) is not None
    del ds.TimeRange, ds.SimpleFrameList
    assert check_identifier(ds, CIR, GET)[0].rule is Rule.FRAME_KEYS


def test_lenient_scp_lets_documented_rules_pass(caplog: pytest.LogCaptureFixture) -> None:
    ds = valid_identifier(PR, FIND, Level.SERIES)
    del ds.PatientID
    ds.PatientName = "X"
    ds.InstanceNumber = "1"
    assert validate_scp(ds, PR, FIND) is not None
    with caplog.at_level(logging.WARNING, logger="dimse.qr"):
        assert validate_scp(ds, PR, FIND, lenient=True) is None
    assert len(caplog.records) == 3


def test_failure_comment_and_service_error() -> None:
    ds = valid_identifier(PR, MOVE, Level.IMAGE)
    for kw, value in (("PatientName", "X"), ("StudyDate", "20200101"), ("Modality", "CT"),
                      ("InstanceNumber", "1"), ("PatientBirthDate", "19700101")):
        setattr(ds, kw, value)
    failure = validate_scp(ds, PR, MOVE)
    assert failure is not None and len(failure.offending) == 5
    assert len(failure.comment) <= 64 and failure.comment.endswith("(+4)")
    err = failure.as_service_error()
    assert isinstance(err, ServiceError)
    assert err.status == 0xA900 and err.offending_elements == failure.offending


def test_unreadable_identifier_is_unable_to_process() -> None:
    failure = validate_scp(object(), PR, FIND)  # type: ignore[arg-type]
    assert failure is not None and 0xC000 <= failure.status <= 0xCFFF
    assert len(failure.comment) <= 64


def test_operation_not_in_model() -> None:
    with pytest.raises(ValueError, match="no C-FIND"):
        check_identifier(Dataset(), CIR, FIND)


def test_with_character_set_declares_utf8_only_when_needed() -> None:
    from pydicom.sequence import Sequence

    from dimse.qr import with_character_set

    plain = Dataset()
    plain.QueryRetrieveLevel = "PATIENT"
    plain.PatientName = "DOE*"
    assert with_character_set(plain) is plain  # default repertoire: unchanged, no copy

    latin = Dataset()
    latin.QueryRetrieveLevel = "PATIENT"
    latin.PatientName = "Müller*"
    sent = with_character_set(latin)
    assert sent is not latin and "SpecificCharacterSet" not in latin
    assert sent.SpecificCharacterSet == "ISO_IR 192" and sent.PatientName == "Müller*"

    declared = Dataset()
    declared.SpecificCharacterSet = "ISO_IR 100"
    declared.PatientName = "Müller*"
    assert with_character_set(declared) is declared  # the caller's choice stands

    empty = Dataset()
    empty.SpecificCharacterSet = ""  # asked as a return key only
    empty.PatientName = "Müller*"
    assert with_character_set(empty).SpecificCharacterSet == "ISO_IR 192"

    nested = Dataset()
    item = Dataset()
    item.CodeMeaning = "Tête"
    nested.ProcedureCodeSequence = Sequence([item])
    nested.OtherPatientNames = ["A^B", "Ærø^C"]
    assert with_character_set(nested).SpecificCharacterSet == "ISO_IR 192"
    only_uids = Dataset()
    only_uids.StudyInstanceUID = "1.2.3"
    assert with_character_set(only_uids) is only_uids


def test_resolve_un_gives_known_tags_their_dictionary_vr() -> None:
    """UN elements as a peer sends a value too long for its VR's 16-bit length (decoded by our
    codec from Explicit VR Little Endian bytes) get their dictionary VR."""
    import struct

    from dimse import codec
    from dimse.qr import resolve_un

    def un(tag: int, value: bytes) -> bytes:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"UN", 0, len(value)) + value

    uids = [f"1.2.826.0.1.3680043.10.4343.{n}" for n in range(3000)]
    listed = "\\".join(uids).encode()
    listed += b"\0" * (len(listed) % 2)
    private = b"raw!"
    data = un(0x00091001, private) + un(0x0020000D, listed)
    ds = codec.decode(data, "1.2.840.10008.1.2.1")
    assert ds[0x0020000D].VR == "UN" and len(listed) > 0xFFFF  # what the SCP receives
    assert resolve_un(ds) is ds
    assert ds[0x0020000D].VR == "UI" and list(ds.StudyInstanceUID) == uids
    assert ds[0x00091001].VR == "UN" and ds[0x00091001].value == private  # no dictionary VR


def test_resolve_un_reaches_into_sequence_items() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag

    from dimse.qr import resolve_un

    listed = "\\".join(f"1.2.3.{n}" for n in range(12000)).encode()
    listed += b"\0" * (len(listed) % 2)
    item = Dataset()
    item[0x00081155] = RawDataElement(Tag(0x00081155), "UN", len(listed), listed, 0, False, True)
    ds = Dataset()
    ds.ReferencedStudySequence = Sequence([item])
    assert ds.ReferencedStudySequence[0][0x00081155].VR == "UN"
    resolve_un(ds)
    ref = ds.ReferencedStudySequence[0][0x00081155]
    assert ref.VR == "UI" and len(ref.value) == 12000 and ref.value[-1] == "1.2.3.11999"
