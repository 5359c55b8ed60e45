"""Fourth audit, C-STORE: what we send and what the archive keeps.

* A data set read in one byte order and sent in the other kept its OW/OF/OL/OD/OV bytes as
  they were: the receiver saw corrupted pixel data and waveforms (PS3.5 7.3: those values are
  words in the transfer syntax's byte order). They are now swapped (32/64-bit OW Pixel Data by
  its pixels).
* A Deflated data set of odd length went out as is; DCMTK aborts on the odd fragment (PS3.5
  A.5 pads it with one NUL).
"""

from __future__ import annotations

import warnings
from array import array

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from dimse import codec

LE, BE, IMPLICIT = codec.EXPLICIT_VR_LE, codec.EXPLICIT_VR_BE, codec.IMPLICIT_VR_LE
DEFLATED = codec.DEFLATED_EXPLICIT_VR_LE


def read(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None
    return pydicom.dcmread(path)


def swapped(data: bytes, size: int) -> bytes:
    words = array({2: "H", 4: "I", 8: "Q"}[size], data)
    words.byteswap()
    return words.tobytes()


def reread(data: bytes, uid: str) -> Dataset:
    return read_dataset(DicomBytesIO(data), uid == IMPLICIT, uid != BE)


@pytest.mark.parametrize(("name", "tag", "size"), [
    ("MR_small_bigendian.dcm", 0x7FE00010, 2),  # 16-bit pixels, big endian source
    ("MR_small.dcm", 0x7FE00010, 2),
    ("rtdose.dcm", 0x7FE00010, 4),  # 32 bits allocated: the pixels are the words
    ("waveform_ecg.dcm", None, 2),  # WaveformData (OW) inside WaveformSequence
])
@pytest.mark.parametrize("target", [LE, IMPLICIT, BE])
def test_word_values_change_byte_order_with_the_syntax(name: str, tag: int | None, size: int,
                                                       target: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read(name)
        source_little = ds.original_encoding[1]
        back = reread(codec.encode(ds, target), target)
    if tag is None:  # the waveform
        original = ds.WaveformSequence[0].WaveformData
        sent = back.WaveformSequence[0].WaveformData
    else:
        original, sent = ds[tag].value, back[tag].value
    target_little = target != BE
    expected = original if source_little == target_little else swapped(original, size)
    assert sent == expected
    assert len(sent) == len(original)


def test_a_data_set_built_in_memory_is_written_as_given() -> None:
    ds = Dataset()
    ds.PatientID = "X"
    ds.add_new(0x00660023, "OW", b"\x01\x02\x03\x04")  # no byte order known: not swapped
    for uid in (LE, BE):
        assert reread(codec.encode(ds, uid), uid)[0x00660023].value == b"\x01\x02\x03\x04"


def test_a_round_trip_through_the_other_byte_order_is_exact() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read("MR_small_bigendian.dcm")
        as_le = codec.encode(ds, LE)
        back_be = codec.encode(codec.decode(as_le, LE), BE)
    assert reread(back_be, BE).PixelData == ds.PixelData


@pytest.mark.parametrize("n", range(1, 40))
def test_deflated_data_sets_have_even_length(n: int) -> None:
    ds = Dataset()
    ds.PatientID = "P" * (n % 60 + 1)
    ds.PatientComments = bytes(range(n * 7 % 256)).hex()
    data = codec.encode(ds, DEFLATED)
    assert len(data) % 2 == 0
    assert codec.decode(data, DEFLATED).PatientComments == ds.PatientComments
