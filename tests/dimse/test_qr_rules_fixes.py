"""Regression tests for the Q/R identifier rule defects found by the independent oracle of
tests/dimse/test_qr_rules_property.py (audit 6; /work/notes/audit6/rules.md). Each fails on the
code before its fix."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dimse.errors import IdentifierError
from dimse.qr import Operation, QueryModel, check_identifier, validate_request, validate_scp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PR, SR, PSO = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT, QueryModel.PATIENT_STUDY_ONLY
FIND, MOVE, GET = Operation.FIND, Operation.MOVE, Operation.GET
PATIENT_ID = 0x00100020


def ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("model", [PR, PSO])
@pytest.mark.parametrize("op", [MOVE, GET])
def test_patient_level_retrieve_takes_one_patient_id(model: QueryModel, op: Operation) -> None:
    """PS3.4 C.4.2.2.1 / C.4.3.2.1: one value for the unique key above the STUDY level; C.4.2.1.4.1
    note 1: "only Single Value Matching value may be specified for Patient ID"."""
    ds = ident("PATIENT", PatientID=["P1", "P2"])
    with pytest.raises(IdentifierError) as err:
        validate_request(ds, model, op)
    assert err.value.offending == (PATIENT_ID,)
    for relational in (False, True):
        failure = validate_scp(ds, model, op, relational_negotiated=relational)
        assert failure is not None and failure.status == 0xA900
        assert failure.offending == (PATIENT_ID,)
    assert validate_scp(ds, model, op, lenient=True) is not None  # unbounded as a list
    assert check_identifier(ident("PATIENT", PatientID="P1"), model, op) == []
    assert check_identifier(ident("STUDY", PatientID="P1", StudyInstanceUID=["1.2", "1.3"]),
                            model, op) == []


WOB = QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK
SOP_UID, STUDY_UID = 0x00080018, 0x0020000D


def test_without_bulk_data_is_one_image_level() -> None:
    """PS3.4 Z.3.1: the Without Bulk Data model is "a one level hierarchy: Composite Instance";
    Z.4.2.1.3.1: the level "shall be IMAGE" and the identifier holds SOP Instance UID(s). The
    table gave it the Study Root hierarchy: a valid request was refused for lacking study and
    series UIDs, and STUDY or SERIES level requests passed."""
    ds = ident("IMAGE", SOPInstanceUID=["1.2.3", "1.2.4"])
    assert check_identifier(ds, WOB, GET) == []
    assert validate_scp(ds, WOB, GET) is None
    for level in ("STUDY", "SERIES"):
        found = check_identifier(ident(level, StudyInstanceUID="1.2", SeriesInstanceUID="1.3"),
                                 WOB, GET)
        assert [v.tags for v in found] == [(0x00080052,)]
    ds.StudyInstanceUID = "1.2"  # only SOP Instance UIDs (Z.3.1: "contains only the SOP
    failure = validate_scp(ds, WOB, GET)  # Instance UID")
    assert failure is not None and failure.offending == (STUDY_UID,)


@pytest.mark.parametrize("value", [["1.2.3", ""], ["", "1.2.3"], "1.2.3\\ "])
def test_find_uid_list_at_the_level_has_no_empty_uid(value: object) -> None:
    """PS3.4 C.2.2.2.2: "Each item in the list shall contain a single UID value": an empty or
    blank UID in a List of UID at the query level is no universal match (the whole element
    empty is one)."""
    ds = ident("SERIES", PatientID="P1", StudyInstanceUID="1.2", SeriesInstanceUID=value)
    with pytest.raises(IdentifierError) as err:
        validate_request(ds, PR, FIND)
    assert err.value.offending == (0x0020000E,)
    failure = validate_scp(ds, PR, FIND)
    assert failure is not None and failure.status == 0xA900
    ds.SeriesInstanceUID = ""
    assert check_identifier(ds, PR, FIND) == []


@pytest.mark.parametrize(("model", "level", "keys"), [
    (PR, "PATIENT", {"PatientName": "DOE*"}),
    (PR, "SERIES", {"PatientID": "P1", "StudyInstanceUID": "1.2", "Modality": "CT"}),
    (SR, "IMAGE", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "InstanceNumber": "1"}),
    (PSO, "STUDY", {"PatientID": "P1", "StudyDate": "2020"}),
])
def test_find_needs_the_unique_key_of_its_level(model: QueryModel, level: str,
                                                keys: dict[str, str]) -> None:
    """PS3.4 C.4.1.2.1: "The Unique Key Attribute associated with the Query/Retrieve level shall
    be contained in the C-FIND request" (C.4.1.2.2.1 for relational queries too). The SCU check
    did not require it; the SCU now adds it empty (universal: same matches) and the SCP, as
    DCMTK's, still answers a query without it."""
    from dimse.qr import UNIQUE_KEYS, Level, Rule, with_level_key

    ds = ident(level, **keys)
    tag = UNIQUE_KEYS[Level(level)]
    for relational in (False, True):
        found = check_identifier(ds, model, FIND, relational=relational)
        assert [(v.rule, v.tags) for v in found] == [(Rule.LEVEL_KEY_MISSING, (tag,))]
    with pytest.raises(IdentifierError):
        validate_request(ds, model, FIND)
    assert validate_scp(ds, model, FIND) is None
    sent = with_level_key(ds, model)
    assert sent is not ds and tag not in ds and sent[tag].is_empty
    assert check_identifier(sent, model, FIND) == []
    assert with_level_key(sent, model) is sent
    only_level = ident("STUDY")  # still "no keys", on both sides
    assert with_level_key(only_level, SR) is only_level
    assert [v.rule for v in check_identifier(only_level, SR, FIND)] == [Rule.NO_KEYS]
    failure = validate_scp(only_level, SR, FIND)
    assert failure is not None and failure.offending == (0x00080052,)


CIR = QueryModel.COMPOSITE_INSTANCE_ROOT
VIEW = 0x00080053


@pytest.mark.parametrize(("model", "op", "level", "keys"), [
    (SR, FIND, "STUDY", {"StudyInstanceUID": ""}),
    (PR, MOVE, "STUDY", {"PatientID": "P1", "StudyInstanceUID": "1.2"}),
    (CIR, GET, "IMAGE", {"SOPInstanceUID": "1.2.3"}),
])
def test_query_retrieve_view_needs_enhanced_conversion(model: QueryModel, op: Operation,
                                                       level: str, keys: dict[str, str]) -> None:
    """PS3.4 C.4.1.1.3.1 / C.4.2.1.4.1 / C.4.3.1.3.1: Query/Retrieve View "may be included if
    Enhanced Multi-Frame Image Conversion has been accepted ... It shall not be included
    otherwise", with "CLASSIC" or "ENHANCED". It passed everywhere, and our SCP (which never
    accepts the conversion) answered with the default view as if it had been honoured."""
    from dimse.qr import Rule

    ds = ident(level, QueryRetrieveView="CLASSIC", **keys)
    with pytest.raises(IdentifierError) as err:
        validate_request(ds, model, op)
    assert err.value.offending == (VIEW,)
    for lenient in (False, True):
        failure = validate_scp(ds, model, op, lenient=lenient)
        assert failure is not None and failure.status == 0xA900
        assert failure.offending == (VIEW,)
    assert validate_request(ds, model, op, enhanced_negotiated=True) == []
    assert validate_scp(ds, model, op, enhanced_negotiated=True) is None
    ds.QueryRetrieveView = "FOO"
    found = check_identifier(ds, model, op, enhanced=True)
    assert [(v.rule, v.tags) for v in found] == [(Rule.VIEW, (VIEW,))]


def test_enhanced_accepted_byte_positions() -> None:
    """Byte 5 of the C-FIND extended negotiation (C.5.1.1), byte 2 for C-MOVE/C-GET."""
    from dimse.qr import enhanced_accepted

    assert enhanced_accepted(b"\x01\x01\x00\x00\x01", FIND)
    assert not enhanced_accepted(b"\x01\x01", FIND) and not enhanced_accepted(None, FIND)
    assert enhanced_accepted(b"\x00\x01", MOVE) and enhanced_accepted(b"\x00\x01", GET)
    assert not enhanced_accepted(b"\x01", GET)


@pytest.mark.parametrize(("model", "op", "ds", "tag"), [
    # C.4.1.1.3.2: Instance Availability "shall not be included in a C-FIND request"
    (SR, FIND, ident("STUDY", StudyInstanceUID="", InstanceAvailability=""), 0x00080056),
    # C.2.2.2: Specific Character Set "shall not have a zero length value"
    (SR, FIND, ident("STUDY", StudyInstanceUID="", SpecificCharacterSet=""), 0x00080005),
    (PR, GET, ident("PATIENT", PatientID="P1", SpecificCharacterSet=""), 0x00080005),
    # C.4.1.1.3.1: Timezone Offset From UTC "shall not be sent with a zero-length value"
    (SR, FIND, ident("STUDY", StudyInstanceUID="", TimezoneOffsetFromUTC=""), 0x00080201),
    # Y.4.1.1.3.1 / Z.4.2.1.3.1: "Specific Character Set (0008,0005) shall not be present"
    (CIR, MOVE, ident("IMAGE", SOPInstanceUID="1.2", SpecificCharacterSet="ISO_IR 192"),
     0x00080005),
    (QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK, GET,
     ident("IMAGE", SOPInstanceUID="1.2", SpecificCharacterSet="ISO_IR 100"), 0x00080005),
])
def test_attributes_a_request_may_not_carry(model: QueryModel, op: Operation, ds: Dataset,
                                            tag: int) -> None:
    """Our SCU refused none of these; it now does. The SCP still answers them (they change no
    match), as it answers an empty key of a higher level."""
    with pytest.raises(IdentifierError) as err:
        validate_request(ds, model, op)
    assert err.value.offending == (tag,)
    assert validate_scp(ds, model, op) is None


def test_scu_leaves_an_empty_character_set_out() -> None:
    """An empty (0008,0005) in an identifier of the default repertoire is left out of what our
    SCU sends (absent is the default repertoire, C.2.2.2), not refused."""
    from dimse.qr import with_character_set

    ds = ident("STUDY", StudyInstanceUID="", SpecificCharacterSet="", PatientName="DOE*")
    sent = with_character_set(ds)
    assert "SpecificCharacterSet" not in sent and "SpecificCharacterSet" in ds
    assert check_identifier(sent, SR, FIND) == []
    ds.PatientName = "Müller*"
    assert with_character_set(ds).SpecificCharacterSet == "ISO_IR 192"
