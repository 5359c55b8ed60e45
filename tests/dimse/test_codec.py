"""Identifier codec: byte-exact against pydicom's writer, round trips, typed errors."""

from __future__ import annotations

import copy
import zlib

import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName

from dimse import codec
from dimse.errors import DataSetDecodeError, DataSetEncodeError

SYNTAXES = [
    (codec.IMPLICIT_VR_LE, True, True),
    (codec.EXPLICIT_VR_LE, False, True),
    (codec.EXPLICIT_VR_BE, False, False),
    (codec.DEFLATED_EXPLICIT_VR_LE, False, True),
]


def pydicom_bytes(ds: Dataset, implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, copy.deepcopy(ds))
    return fp.getvalue()


def pydicom_read(data: bytes, implicit: bool, little: bool) -> Dataset:
    return read_dataset(DicomBytesIO(data), implicit, little)


def plain(data: bytes, uid: str) -> bytes:
    return zlib.decompress(data, -15) if uid == codec.DEFLATED_EXPLICIT_VR_LE else data


def study_identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "DOE^JOHN^^^=Doe^John"
    ds.PatientID = ""
    ds.StudyDate = "20200101-20201231"
    ds.StudyTime = ""
    ds.StudyInstanceUID = ["1.2.3", "1.2.4.5"]
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.NumberOfStudyRelatedInstances = None
    ds.PixelSpacing = [0.5, "0.25"]
    ds.Rows = 512
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "OB", b"abc")
    item = Dataset()
    item.CodeValue = "T-1"
    item.CodingSchemeDesignator = "SRT"
    ds.ProcedureCodeSequence = [item, Dataset()]
    ds.ReferencedStudySequence = []
    ds.SelectorATValue = [0x00100010, 0x00100020]
    ds.FloatPixelData = b"\x00" * 8
    return ds


@pytest.mark.parametrize(("uid", "implicit", "little"), SYNTAXES)
def test_encode_matches_pydicom(uid: str, implicit: bool, little: bool) -> None:
    ds = study_identifier()
    assert plain(codec.encode(ds, uid), uid) == pydicom_bytes(ds, implicit, little)


@pytest.mark.parametrize(("uid", "implicit", "little"), SYNTAXES)
def test_decode_matches_pydicom_reader(uid: str, implicit: bool, little: bool) -> None:
    ds = study_identifier()
    data = codec.encode(ds, uid)
    ours = codec.decode(data, uid)
    theirs = pydicom_read(plain(data, uid), implicit, little)
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for tag in theirs.keys():
        a, b = ours[tag], theirs[tag]
        assert (a.VR, a.value) == (b.VR, b.value), tag
        assert type(a.value) is type(b.value), tag
    assert codec.encode(ours, uid) == data


def test_decoded_value_types() -> None:
    ds = codec.decode(codec.encode(study_identifier(), codec.EXPLICIT_VR_LE), codec.EXPLICIT_VR_LE)
    assert isinstance(ds.PatientName, PersonName)
    assert ds.PatientName.family_name == "DOE"
    assert ds.PatientName.ideographic == "Doe^John"
    assert isinstance(ds.StudyInstanceUID, MultiValue)
    assert all(isinstance(u, UID) for u in ds.StudyInstanceUID)
    assert ds.PatientID == ""
    assert ds.NumberOfStudyRelatedInstances is None
    assert isinstance(ds.PixelSpacing[0], DSfloat)
    assert ds.PixelSpacing == [0.5, 0.25]
    assert ds.Rows == 512
    assert isinstance(ds.ReferencedStudySequence, Sequence)
    assert len(ds.ReferencedStudySequence) == 0
    assert ds.ProcedureCodeSequence[0].CodeValue == "T-1"
    assert len(ds.ProcedureCodeSequence[1]) == 0
    assert ds[0x00091001].private_creator == "ACME"


def test_empty_elements_survive_round_trip() -> None:
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "AccessionNumber"):
        setattr(ds, kw, "")
    ds.NumberOfStudyRelatedInstances = None
    ds.ReferencedStudySequence = []
    for uid, _, _ in SYNTAXES:
        back = codec.decode(codec.encode(ds, uid), uid)
        assert sorted(back.keys()) == sorted(ds.keys())
        assert all(back[t].is_empty for t in back.keys())


def test_padding_bytes() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "ABC"
    ds.add_new(0x00091001, "OB", b"x")
    data = codec.encode(ds, codec.IMPLICIT_VR_LE)
    assert data == (
        b"\x09\x00\x01\x10\x02\x00\x00\x00x\x00"  # (0009,1001) OB 'x' + NUL
        b"\x10\x00\x20\x00\x04\x00\x00\x00ABC "  # (0010,0020) LO 'ABC' + space
        b"\x20\x00\x0d\x00\x06\x00\x00\x001.2.3\x00"  # (0020,000D) UI + NUL
    )


def test_group_length_skipped_on_encode_kept_on_decode() -> None:
    ds = Dataset()
    ds.add_new(0x00100000, "UL", 12)
    ds.PatientID = "ABC"
    data = codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert data == pydicom_bytes(ds, False, True)
    raw = b"\x10\x00\x00\x00UL\x04\x00\x0c\x00\x00\x00" + data
    back = codec.decode(raw, codec.EXPLICIT_VR_LE)
    assert back[0x00100000].value == 12


def test_undefined_length_sequence_and_items() -> None:
    item = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
        b"\x08\x00\x00\x01\x02\x00\x00\x00AB"  # (0008,0100) CodeValue
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # item delimiter
    )
    data = (
        b"\x08\x00\x32\x10\xff\xff\xff\xff"  # (0008,1032) SQ undefined length
        + item
        + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # empty item, defined length
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimiter
        + b"\x10\x00\x20\x00\x02\x00\x00\x00X "  # (0010,0020)
    )
    ds = codec.decode(data, codec.IMPLICIT_VR_LE)
    seq = ds.ProcedureCodeSequence
    assert len(seq) == 2
    assert seq[0].CodeValue == "AB"
    assert ds.PatientID == "X"
    assert ds["ProcedureCodeSequence"].is_undefined_length
    assert seq[0].is_undefined_length_sequence_item
    assert codec.encode(ds, codec.IMPLICIT_VR_LE) == data
    assert codec.encode(ds, codec.IMPLICIT_VR_LE) == pydicom_bytes(ds, True, True)


def test_implicit_private_tags() -> None:
    ds = Dataset()
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")  # known to pydicom's private dictionary
    ds.add_new(0x00291099, "LO", "??")  # unknown: read back as UN
    back = codec.decode(codec.encode(ds, codec.IMPLICIT_VR_LE), codec.IMPLICIT_VR_LE)
    ref = pydicom_read(codec.encode(ds, codec.IMPLICIT_VR_LE), True, True)
    for tag in ref.keys():
        assert (back[tag].VR, back[tag].value) == (ref[tag].VR, ref[tag].value)
    assert back[0x00291099].VR == "UN"


def test_specific_character_set() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    ds.StudyDescription = "Ünïcode"
    item = Dataset()
    item.CodeMeaning = "日本"
    ds.ProcedureCodeSequence = [item]
    for uid, implicit, little in SYNTAXES:
        data = codec.encode(ds, uid)
        assert plain(data, uid) == pydicom_bytes(ds, implicit, little)
        back = codec.decode(data, uid)
        assert back.PatientName == "Yamada^Tarou=山田^太郎"
        assert back.StudyDescription == "Ünïcode"
        assert back.ProcedureCodeSequence[0].CodeMeaning == "日本"


def test_ambiguous_vr_follows_pydicom() -> None:
    ds = Dataset()
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "US or SS", -5)
    for uid, implicit, little in SYNTAXES[:3]:
        assert codec.encode(ds, uid) == pydicom_bytes(ds, implicit, little)
    back = codec.decode(codec.encode(ds, codec.IMPLICIT_VR_LE), codec.IMPLICIT_VR_LE)
    assert back[0x00280106].VR == "SS"
    assert back[0x00280106].value == -5


def test_is_values() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00201208, "IS", ["12", " 7", "1.0"]))
    back = codec.decode(codec.encode(ds, codec.EXPLICIT_VR_LE), codec.EXPLICIT_VR_LE)
    value = back.NumberOfStudyRelatedInstances
    assert value == [12, 7, 1]
    assert all(isinstance(v, IS) for v in value)


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x00",  # truncated header
        b"\x10\x00\x20\x00\x10\x00\x00\x00AB",  # length overruns
        b"\x08\x00\x32\x10\x10\x00\x00\x00\xfe\xff\x00\xe0\x20\x00\x00\x00",  # item overrun
        b"\x08\x00\x32\x10\xff\xff\xff\xff\xfe\xff\x00\xe0\x00\x00\x00\x00",  # no delimiter
        b"\x08\x00\x32\x10\x08\x00\x00\x00\x10\x00\x20\x00\x00\x00\x00\x00",  # not an item
        b"\x28\x00\x10\x00\x03\x00\x00\x00abc",  # US with 3 bytes
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",  # stray delimiter
    ],
)
def test_decode_errors_are_typed(data: bytes) -> None:
    with pytest.raises(DataSetDecodeError) as info:
        codec.decode(data, codec.IMPLICIT_VR_LE)
    assert info.value.offset is not None


def test_decode_error_bad_vr_and_deflate() -> None:
    with pytest.raises(DataSetDecodeError):
        codec.decode(b"\x10\x00\x20\x00zz\x00\x00", codec.EXPLICIT_VR_LE)
    with pytest.raises(DataSetDecodeError):
        codec.decode(b"\xff\xff\xff", codec.DEFLATED_EXPLICIT_VR_LE)
    full = codec.encode(study_identifier(), codec.DEFLATED_EXPLICIT_VR_LE)
    with pytest.raises(DataSetDecodeError):
        codec.decode(full[:-3], codec.DEFLATED_EXPLICIT_VR_LE)
    assert codec.decode(full + b"\x00", codec.DEFLATED_EXPLICIT_VR_LE) == codec.decode(
        full, codec.DEFLATED_EXPLICIT_VR_LE
    )


def test_decode_accepts_memoryview_and_rejects_unknown_syntax() -> None:
    data = codec.encode(study_identifier(), codec.EXPLICIT_VR_LE)
    assert codec.decode(memoryview(data), codec.EXPLICIT_VR_LE) == codec.decode(
        data, codec.EXPLICIT_VR_LE
    )
    with pytest.raises(DataSetDecodeError):
        codec.decode(data, "1.2.3.4.5")
    # an encapsulated syntax's data set is explicit VR little endian (PS3.5 A.4)
    assert codec.decode(data, "1.2.840.10008.1.2.4.50") == codec.decode(data, codec.EXPLICIT_VR_LE)
    with pytest.raises(DataSetEncodeError):
        codec.encode(Dataset(), "1.2.3")


def test_encode_errors_are_typed() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00280010, "US", 70000, validation_mode=0))
    with pytest.raises(DataSetEncodeError) as info:
        codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert info.value.tag == 0x00280010
    ds = Dataset()
    ds.add(DataElement(0x00080060, "CS", "日本", validation_mode=0))
    with pytest.raises(DataSetEncodeError):
        codec.encode(ds, codec.EXPLICIT_VR_LE)


def rich_identifier() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ["DOE^JOHN", "ROE^JANE=Roe^Jane"]
    ds.ReferringPhysicianName = "SMITH^ANNA"
    ds.PatientID = "PID1"
    ds.OtherPatientIDs = ["A", "B"]
    ds.StudyDescription = "Ümlaut"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.StudyInstanceUID = "1.2.3"
    ds.SOPClassesInStudy = ["1.2.3", "1.2.4"]
    ds.SliceThickness = "5.0"
    ds.ImagePositionPatient = ["-250", "-250.5", "100"]
    ds.InstanceNumber = "17"
    ds.ReferencedFrameNumber = ["1", "2"]
    ds.Rows = 512
    ds.add_new(0x00280106, "US", 3)  # SmallestImagePixelValue, ambiguous 'US or SS'
    ds.PixelRepresentation = 1
    return ds


def _same_object(a: object, b: object, where: str) -> None:
    """Same class and the same instance attributes (names, order and values)."""
    assert type(a) is type(b), where
    assert a == b, where
    if isinstance(a, MultiValue):
        assert isinstance(b, MultiValue)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_object(x, y, f"{where}[{i}]")
    elif hasattr(b, "__dict__"):
        assert list(vars(a)) == list(vars(b)), where
        assert vars(a) == vars(b), where


@pytest.mark.parametrize(("uid", "implicit", "little"), SYNTAXES)
def test_decoded_objects_are_built_like_pydicom_builds_them(
    uid: str, implicit: bool, little: bool
) -> None:
    """The fast construction sets exactly the attributes pydicom's reader ends up with."""
    data = codec.encode(rich_identifier(), uid)
    ours = codec.decode(data, uid)
    theirs = pydicom_read(plain(data, uid), implicit, little)
    for _elem in theirs:  # convert pydicom's raw elements
        pass
    assert set(vars(ours)) == set(vars(theirs))
    for name in ("_read_little", "_read_implicit", "_read_charset", "_private_blocks",
                 "is_undefined_length_sequence_item", "is_decompressed"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.keys()) == list(theirs.keys())
    for tag in theirs.keys():
        a, b = ours[tag], theirs[tag]
        assert type(a) is DataElement and type(a.tag) is type(b.tag)
        assert list(vars(a)) == list(vars(b)), tag
        assert {k: v for k, v in vars(a).items() if k != "_value"} == {
            k: v for k, v in vars(b).items() if k != "_value"}, tag
        _same_object(a.value, b.value, str(tag))
    assert ours == theirs
    assert ours.to_json_dict() == theirs.to_json_dict()


def test_decoded_dataset_is_safely_modifiable() -> None:
    data = codec.encode(rich_identifier(), codec.EXPLICIT_VR_LE)
    ds = codec.decode(data, codec.EXPLICIT_VR_LE)
    other = codec.decode(data, codec.EXPLICIT_VR_LE)
    ds.ImagePositionPatient.append("7.5")
    ds.ImagePositionPatient.append(DSfloat("8"))
    assert isinstance(ds.ImagePositionPatient[3], DSfloat)
    assert ds.ImagePositionPatient == [-250, -250.5, 100, 7.5, 8]
    ds.ReferencedFrameNumber.append(3)
    ds.ReferencedFrameNumber.append("4")
    assert all(isinstance(v, IS) for v in ds.ReferencedFrameNumber)
    ds.SOPClassesInStudy.append("1.2.5")
    assert all(isinstance(v, UID) for v in ds.SOPClassesInStudy)
    ds.PatientName.append("NEW^NAME")
    ds.PatientName.append(PersonName("P^Q"))
    assert all(isinstance(v, PersonName) for v in ds.PatientName)
    assert ds.PatientName[2].family_name == "NEW"
    ds.OtherPatientIDs.append("C")
    ds.PatientID = "CHANGED"
    ds.add_new(0x00100040, "CS", "F")
    del ds.StudyDescription
    # the other decode shares no mutable state with this one
    assert len(other.ImagePositionPatient) == 3 and len(other.PatientName) == 2
    assert other.PatientID == "PID1" and "StudyDescription" in other
    assert other._dict is not ds._dict and other._private_blocks is not ds._private_blocks
    back = codec.decode(codec.encode(ds, codec.EXPLICIT_VR_LE), codec.EXPLICIT_VR_LE)
    assert back == ds
    assert back.PatientSex == "F" and back.PatientName[3] == "P^Q"


def test_multi_valued_charset_read_from_a_file() -> None:
    """A file's multi-valued Specific Character Set is a MultiValue, not a list."""
    import io

    from pydicom import dcmread
    from pydicom.dataset import Dataset as _Dataset

    ds = _Dataset()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    ds.file_meta = _Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    back = dcmread(io.BytesIO(buf.getvalue()))
    data = codec.encode(back, "1.2.840.10008.1.2.1")
    assert data == codec.encode(ds, "1.2.840.10008.1.2.1")
    assert codec.decode(data, "1.2.840.10008.1.2.1").PatientName == "Yamada^Tarou=山田^太郎"
