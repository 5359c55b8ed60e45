"""dimse.instances: the UIDs of an instance read straight from raw elements."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dimse.instances import instance_uids
from tests.peers import make_ct


def test_uids_from_a_file_match_pydicom(tmp_path: Path) -> None:
    path = make_ct(tmp_path / "a.dcm", sop_uid="1.2.826.0.1.3680043.2.1143.77", rows=4,
                   columns=4)
    raw = pydicom.dcmread(path)
    converted = pydicom.dcmread(path)
    expected = (str(converted.SOPClassUID), str(converted.SOPInstanceUID))
    assert instance_uids(raw) == expected == ("1.2.840.10008.5.1.4.1.1.2",
                                              "1.2.826.0.1.3680043.2.1143.77")


def test_uids_of_a_built_dataset_and_a_missing_one() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.3"
    ds.SOPInstanceUID = "1.2.3.4"
    assert instance_uids(ds) == ("1.2.3", "1.2.3.4")
    del ds.SOPInstanceUID
    with pytest.raises(AttributeError):
        instance_uids(ds)


def _file(tmp_path: Path, implicit: bool, charset: str | None = None) -> Path:
    """A CT with a sequence, a private element and optionally a Specific Character Set."""
    src = pydicom.dcmread(make_ct(tmp_path / "src.dcm", rows=8, columns=8))
    if charset is not None:
        src.SpecificCharacterSet = charset
        src.PatientName = "Müller^Jürgen"
    item = Dataset()
    item.CodeValue = "ABC"
    src.ProcedureCodeSequence = [item]
    src.add_new(0x00091010, "LO", "private")
    src.add_new(0x00090010, "LO", "PRIV")
    path = tmp_path / f"out-{implicit}-{charset}.dcm"
    src.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    src.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("charset", [None, "ISO_IR 100"])
@pytest.mark.parametrize("target", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_raw_fast_path_matches_the_codec(tmp_path: Path, implicit: bool, charset: str | None,
                                         target: str) -> None:
    from dimse import codec
    from dimse.instances import _encode_raw, encode_instance

    path = _file(tmp_path, implicit, charset)
    fast = encode_instance(pydicom.dcmread(path), target)
    assert fast == codec.encode(pydicom.dcmread(path), target)
    assert _encode_raw(pydicom.dcmread(path), implicit) is not None  # the fast path was taken
    assert _encode_raw(pydicom.dcmread(path), not implicit) is None


def test_raw_fast_path_steps_aside_for_changed_data_sets(tmp_path: Path) -> None:
    from dimse import codec
    from dimse.instances import _encode_raw, encode_instance

    path = _file(tmp_path, False, "ISO_IR 100")
    changed = pydicom.dcmread(path)
    changed.PatientID = "NEW"  # a converted element
    assert _encode_raw(changed, False) is None
    assert b"NEW" in encode_instance(changed, "1.2.840.10008.1.2.1")
    recoded = pydicom.dcmread(path)
    recoded.SpecificCharacterSet = "ISO_IR 192"  # text must be re-encoded by the codec
    assert _encode_raw(recoded, False) is None
    out = encode_instance(recoded, "1.2.840.10008.1.2.1")
    assert out == codec.encode(recoded, "1.2.840.10008.1.2.1")
    assert "Müller".encode() in out
    touched = pydicom.dcmread(path)
    _ = touched.PatientName  # converted on access: the codec writes it the same way
    assert encode_instance(touched, "1.2.840.10008.1.2.1") == encode_instance(
        pydicom.dcmread(path), "1.2.840.10008.1.2.1")
    del changed.SpecificCharacterSet  # charset gone: the read one no longer applies
    assert _encode_raw(changed, False) is None


def test_raw_fast_path_leaves_multi_valued_charsets_to_the_codec(tmp_path: Path) -> None:
    from dimse.instances import _encode_raw

    src = pydicom.dcmread(make_ct(tmp_path / "src.dcm"))
    src.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 100"]
    src.PatientName = "Müller"
    src.save_as(tmp_path / "mv.dcm", enforce_file_format=True)
    assert _encode_raw(pydicom.dcmread(tmp_path / "mv.dcm"), False) is None
