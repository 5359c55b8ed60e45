"""Identifier codec benchmarks: ours vs pynetdicom.dsutils vs pydicom's writer/reader.

Run: python3 -m pytest benchmarks/bench_codec.py --benchmark-enable -q
Targets (vs pynetdicom): encode >= 10x, decode + reading every value >= 5x, template >= 30x.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import dsutils

from dimse import codec

TS = codec.EXPLICIT_VR_LE

STUDY_KEYS: list[tuple[str, Any]] = [
    ("SpecificCharacterSet", "ISO_IR 100"),
    ("StudyDate", "20240131"),
    ("StudyTime", "101500"),
    ("AccessionNumber", "A123456"),
    ("QueryRetrieveLevel", "STUDY"),
    ("ModalitiesInStudy", ["CT", "SR"]),
    ("ReferringPhysicianName", "SMITH^ANNA"),
    ("StudyDescription", "CT THORAX WITH CONTRAST"),
    ("PatientName", "DOE^JOHN"),
    ("PatientID", "PID000123"),
    ("PatientBirthDate", "19700101"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.12345678901234567890"),
    ("NumberOfStudyRelatedInstances", "245"),
]

IMAGE_EXTRA: list[tuple[str, Any]] = [
    ("InstanceCreationDate", "20240131"), ("InstanceCreationTime", "101512"),
    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
    ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.1.2.3.4.5.6.7"),
    ("SeriesDate", "20240131"), ("ContentDate", "20240131"), ("SeriesTime", "101500"),
    ("ContentTime", "101512"), ("Modality", "CT"), ("Manufacturer", "ACME"),
    ("InstitutionName", "GENERAL HOSPITAL"), ("StationName", "CT01"),
    ("SeriesDescription", "AXIAL 5MM"), ("PatientSex", "M"), ("PatientAge", "054Y"),
    ("BodyPartExamined", "CHEST"), ("SliceThickness", "5.0"), ("KVP", "120"),
    ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.1.2.3.4"), ("StudyID", "1"),
    ("SeriesNumber", "3"), ("InstanceNumber", "17"), ("ImagePositionPatient", ["-250", "-250", "100"]),
    ("ImageOrientationPatient", ["1", "0", "0", "0", "1", "0"]),
    ("FrameOfReferenceUID", "1.2.826.0.1.3680043.8.498.9"), ("SliceLocation", "100.0"),
    ("Rows", 512), ("Columns", 512),
]
IMAGE_KEYS = [(k, v) for k, v in STUDY_KEYS if k != "QueryRetrieveLevel"]
IMAGE_KEYS += [("QueryRetrieveLevel", "IMAGE"), *IMAGE_EXTRA]
IMAGE_KEYS = IMAGE_KEYS[:40]


def make(keys: list[tuple[str, Any]]) -> Dataset:
    ds = Dataset()
    for kw, value in keys:
        setattr(ds, kw, value)
    return ds


def read_all(ds: Dataset) -> int:
    """Touch every value (what an SCU does with a match)."""
    n = 0
    for elem in ds:
        if elem.value is not None:
            n += 1
    return n


def pydicom_encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


def pydicom_decode(data: bytes) -> Dataset:
    return read_dataset(DicomBytesIO(data), False, True)


CASES = {"study13": STUDY_KEYS, "image40": IMAGE_KEYS}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, list[tuple[str, Any]]]:
    assert len(CASES[request.param]) in (13, 40)
    return request.param, CASES[request.param]


def _encoders() -> dict[str, Callable[[Dataset], bytes]]:
    return {
        "ours": lambda ds: codec.encode(ds, TS),
        "pynetdicom": lambda ds: dsutils.encode(ds, False, True),
        "pydicom": pydicom_encode,
    }


@pytest.mark.parametrize("impl", ["ours", "pynetdicom", "pydicom"])
def test_encode(benchmark: Any, case: tuple[str, list[tuple[str, Any]]], impl: str) -> None:
    name, keys = case
    benchmark.group = f"encode-{name}"
    ds = make(keys)
    fn = _encoders()[impl]
    assert benchmark(fn, ds) == codec.encode(ds, TS)


@pytest.mark.parametrize("impl", ["ours", "pynetdicom", "pydicom"])
def test_decode(benchmark: Any, case: tuple[str, list[tuple[str, Any]]], impl: str) -> None:
    name, keys = case
    benchmark.group = f"decode-{name}"
    data = codec.encode(make(keys), TS)
    decoders: dict[str, Callable[[bytes], Dataset]] = {
        "ours": lambda b: codec.decode(b, TS),
        "pynetdicom": lambda b: dsutils.decode(BytesIO(b), False, True),
        "pydicom": pydicom_decode,
    }
    fn = decoders[impl]
    assert benchmark(lambda: read_all(fn(data))) == len(keys)


@pytest.mark.parametrize("impl", ["template", "pynetdicom"])
def test_template_encode(
    benchmark: Any, case: tuple[str, list[tuple[str, Any]]], impl: str
) -> None:
    name, keys = case
    benchmark.group = f"template-{name}"
    fields = [(k, v) for k, v in keys if k != "SpecificCharacterSet"]
    template = codec.IdentifierTemplate(
        [k for k, _ in fields], TS, specific_character_set="ISO_IR 100"
    )
    values = [v for _, v in fields]
    expected = codec.encode(make(keys), TS)
    if impl == "template":
        assert benchmark(template.encode, values) == expected
    else:
        # the equivalent work with pynetdicom: build a Dataset per match, then encode it
        assert benchmark(lambda: dsutils.encode(make(keys), False, True)) == expected
