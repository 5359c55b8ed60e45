import pytest
from pydicom.tag import Tag

from dimse.keys import KeyError_, apply_keys, parse_key, parse_tag


@pytest.mark.parametrize("text", ["PatientName", "0010,0010", "(0010,0010)", "00100010", " 0010,0010 "])
def test_tag_spellings(text: str) -> None:
    assert parse_tag(text) == Tag(0x00100010)


def test_unknown_keyword_is_a_clear_error() -> None:
    with pytest.raises(KeyError_, match="unknown attribute 'PatientNme'"):
        parse_tag("PatientNme")


def test_return_key_and_value_key() -> None:
    ds = apply_keys([parse_key("QueryRetrieveLevel=STUDY"), parse_key("PatientName"),
                     parse_key("StudyDate="), parse_key("StudyInstanceUID=1.2\\1.3")])
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds["PatientName"].VR == "PN" and ds["PatientName"].value in (None, "")
    assert ds["StudyDate"].value in (None, "")
    assert list(ds.StudyInstanceUID) == ["1.2", "1.3"]


def test_numbers_are_typed() -> None:
    ds = apply_keys([parse_key("NumberOfStudyRelatedInstances=5"), parse_key("Rows=512")])
    assert ds.NumberOfStudyRelatedInstances == 5 and ds.Rows == 512
    with pytest.raises(KeyError_, match="integer"):
        apply_keys([parse_key("Rows=big")])


def test_sequence_paths() -> None:
    ds = apply_keys([parse_key("ReferencedStudySequence[1].ReferencedSOPInstanceUID=1.2.3"),
                     parse_key("(0008,1110).ReferencedSOPClassUID")])
    seq = ds.ReferencedStudySequence
    assert len(seq) == 2
    assert seq[1].ReferencedSOPInstanceUID == "1.2.3"
    assert "ReferencedSOPClassUID" in seq[0]
    with pytest.raises(KeyError_, match="not a sequence"):
        parse_key("PatientName.PatientID")
    with pytest.raises(KeyError_, match="takes no value"):
        apply_keys([parse_key("ReferencedStudySequence=x")])


def test_private_creator_is_lo_and_unknown_private_data_is_un_bytes() -> None:
    """A private creator (gggg,0010-00FF) is LO (PS3.5 7.8.1); a private element with no known
    VR is sent as UN holding the value's bytes, padded to even length."""
    from dimse import codec

    ds = apply_keys(parse_key(k) for k in ("0009,0010=ACME", "0009,1001=abc", "0009,1002="))
    assert ds[0x00090010].VR == "LO" and ds[0x00090010].value == "ACME"
    assert ds[0x00091001].VR == "UN" and ds[0x00091001].value == b"abc "
    assert ds[0x00091002].VR == "UN" and ds[0x00091002].is_empty
    encoded = codec.encode(ds, "1.2.840.10008.1.2.1")
    assert encoded.startswith(b"\x09\x00\x10\x00LO\x04\x00ACME\x09\x00\x01\x10UN\x00\x00"
                              b"\x04\x00\x00\x00abc ")
