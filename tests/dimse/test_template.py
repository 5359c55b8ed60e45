"""IdentifierTemplate: same bytes as codec.encode for the equivalent Dataset."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimse import codec
from dimse.errors import DataSetEncodeError
from tests.dimse.strategies import identifier_items, transfer_syntaxes

KEYS = ["QueryRetrieveLevel", "PatientName", "PatientID", "StudyDate", "StudyInstanceUID",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "Rows", "PixelSpacing",
        "ReferencedSeriesSequence"]


@pytest.mark.parametrize("uid", codec.SUPPORTED_TRANSFER_SYNTAXES)
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_template_equals_codec(uid: str, charset: str | None) -> None:
    template = codec.IdentifierTemplate(KEYS, uid, specific_character_set=charset)
    values = ["STUDY", "DOE^JÖHN==", "", "20200101-", " 1.2.3 ", ["CT", "MR"], 5, 3,
              [0.5, "0.25"], None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert template.encode(values) == codec.encode(template.dataset(values), uid)


def test_empty_values_give_empty_elements() -> None:
    template = codec.IdentifierTemplate(["PatientName", (0x00100020, "LO"), "StudyDate"],
                                        codec.IMPLICIT_VR_LE)
    assert template.encode([None, "", []]) == (
        b"\x08\x00\x20\x00\x00\x00\x00\x00"  # (0008,0020) StudyDate, length 0
        b"\x10\x00\x10\x00\x00\x00\x00\x00"  # (0010,0010) PatientName, length 0
        b"\x10\x00\x20\x00\x00\x00\x00\x00"  # (0010,0020) PatientID, length 0
    )
    data = template.encode([None, "", []])
    back = codec.decode(data, codec.IMPLICIT_VR_LE)
    assert back.PatientName == "" and back.PatientID == "" and back.StudyDate == ""
    assert len(data) == 24


def test_template_errors() -> None:
    with pytest.raises(ValueError):
        codec.IdentifierTemplate(["NoSuchKeyword"], codec.IMPLICIT_VR_LE)
    with pytest.raises(ValueError):
        codec.IdentifierTemplate(["PatientID", "PatientID"], codec.IMPLICIT_VR_LE)
    with pytest.raises(ValueError):
        codec.IdentifierTemplate([(0x00280106, "US or SS")], codec.IMPLICIT_VR_LE)
    template = codec.IdentifierTemplate(["Rows"], codec.EXPLICIT_VR_LE)
    with pytest.raises(DataSetEncodeError):
        template.encode([70000])
    with pytest.raises(DataSetEncodeError):
        template.encode([])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(pairs=identifier_items(), uid=transfer_syntaxes,
       charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"]))
def test_template_matches_encode_property(
    pairs: list[tuple[str, object]], uid: str, charset: str | None
) -> None:
    template = codec.IdentifierTemplate([k for k, _ in pairs], uid,
                                        specific_character_set=charset)
    values = [v for _, v in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert template.encode(values) == codec.encode(template.dataset(values), uid)  # type: ignore[arg-type]


def test_skip_and_empty_character_set() -> None:
    keys = ["PatientName", "StudyInstanceUID", "NumberOfStudyRelatedInstances"]
    plain = codec.IdentifierTemplate(keys, codec.EXPLICIT_VR_LE, specific_character_set="")
    skipping = codec.IdentifierTemplate(keys, codec.EXPLICIT_VR_LE, specific_character_set="",
                                        skip=2)
    values = ["DOE^JOHN", "1.2.3", "12"]
    data = plain.encode(values)
    assert skipping.encode((99, 1, *values)) == data
    assert data.startswith(b"\x08\x00\x05\x00CS\x00\x00")  # (0008,0005) CS, length 0
    assert data == codec.encode(plain.dataset(values), codec.EXPLICIT_VR_LE)
    with pytest.raises(DataSetEncodeError):
        skipping.encode(values)
    with pytest.raises(ValueError):
        codec.IdentifierTemplate(keys, codec.EXPLICIT_VR_LE, skip=-1)


def test_fast_path_falls_back_to_typed_errors() -> None:
    template = codec.IdentifierTemplate(["PatientID", "PatientName"], codec.EXPLICIT_VR_LE)
    with pytest.raises(DataSetEncodeError):
        template.encode(["X" * 70_000, ""])  # too long for a 16-bit length
    with pytest.raises(DataSetEncodeError):
        template.encode(["ミ", ""])  # not in the default repertoire
    long = codec.IdentifierTemplate(["PatientComments"], codec.IMPLICIT_VR_LE)
    assert len(long.encode(["X" * 70_001])) == 8 + 70_002
