"""C-STORE of files that cannot be sent as they are (audit 7, storage D1-D3).

* a value cut short by a truncated file is refused naming its tag, in every transfer syntax and
  on both the raw fast path and the codec, before anything is sent; the association stays usable;
* a file whose meta says an encapsulated (Explicit VR) syntax over an Implicit VR body gets a
  typed DataSetEncodeError, not pydicom's bare TypeError;
* native (defined-length) Pixel Data is never sent in an encapsulated syntax (PS3.5 A.4), while
  Pixel Data built with ``encapsulate()`` (fragments, but a defined length until pydicom's
  ``dcmwrite`` fixes it) goes out with the undefined length A.4 requires.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dimse.archive import Archive
from dimse.archive_store import archive_store_handler
from dimse.connect import connect
from dimse.errors import DataSetEncodeError
from dimse.instances import encode_instance
from dimse.qr_scp import archive_server
from dimse.server import Server
from dimse.services import HandlerRegistry
from dimse.structure_check import structure_problem
from dimse.syntax_check import is_encapsulated

ALL_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                    DeflatedExplicitVRLittleEndian)
ROOT = "1.2.826.0.1.3680043.2.1143.8."
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
_PIXEL_OB_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _read(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name))


@pytest.mark.parametrize("ts", ALL_UNCOMPRESSED)
@pytest.mark.parametrize(("name", "tag"), [
    ("MR_truncated.dcm", 0x7FE00010),  # pixel data: 8192 bytes declared, 8130 in the file
    ("rtplan_truncated.dcm", 0x300A00B0),  # a sequence cut inside its items
])
def test_a_value_cut_short_is_refused_naming_its_tag(name: str, tag: int, ts: str) -> None:
    ds = _read(name)
    raw = ds._dict[tag]
    assert raw.length != len(raw.value)  # the file really is cut there
    with pytest.raises(DataSetEncodeError, match="truncated") as info:
        encode_instance(ds, ts)
    assert info.value.tag == tag


def test_a_value_cut_short_in_an_encapsulated_syntax_is_refused() -> None:
    ds = _read("JPEG2000.dcm")
    cut = ds._dict[0x00080008]._replace(length=ds._dict[0x00080008].length + 2)
    ds._dict[0x00080008] = cut
    with pytest.raises(DataSetEncodeError, match="truncated") as info:
        encode_instance(ds, str(ds.file_meta.TransferSyntaxUID))
    assert info.value.tag == 0x00080008


def test_whole_files_still_encode_on_the_fast_path() -> None:
    ds = _read("CT_small.dcm")
    data = encode_instance(ds, ExplicitVRLittleEndian)
    pixels = bytes(ds._dict[0x7FE00010].value)
    assert b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", len(pixels)) + pixels in data


def test_implicit_body_under_an_explicit_encapsulated_meta_is_a_typed_error() -> None:
    ds = _read("SC_rgb_jpeg.dcm")  # meta: JPEG Baseline; body: Implicit VR LE
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    with pytest.raises(DataSetEncodeError, match="Implicit VR"):
        encode_instance(ds, JPEGBaseline8Bit)


def _native_ct(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{ROOT}{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ROOT + "1", ROOT + "1.1"
    ds.PatientID, ds.PatientName, ds.Modality = "P8", "Doe^Jane", "CT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 2, 8, 8
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.HighBit = 1, 0, 7
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(4))
    return ds


@pytest.mark.parametrize("ts", [JPEGBaseline8Bit, RLELossless, "1.2.840.10008.1.2.4.90"])
def test_native_pixel_data_is_never_sent_as_encapsulated(ts: str) -> None:
    with pytest.raises(DataSetEncodeError, match="PS3.5 A.4") as info:
        encode_instance(_native_ct(1), ts)
    assert info.value.tag == 0x7FE00010


def test_native_pixel_data_of_a_mislabelled_file_is_refused() -> None:
    ds = _read("CT_small.dcm")  # native pixels, now claimed to be JPEG
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    with pytest.raises(DataSetEncodeError, match="native"):
        encode_instance(ds, JPEGBaseline8Bit)


def test_encapsulated_pixel_data_of_defined_length_goes_out_undefined() -> None:
    frames = [b"\x01\x02\x03\x04", b"\x05\x06"]
    ds = _native_ct(2)
    ds.PixelData = encapsulate(frames)
    assert not ds["PixelData"].is_undefined_length  # as pydicom leaves it before dcmwrite
    data = encode_instance(ds, RLELossless)
    at = data.index(_PIXEL_OB_UNDEFINED)
    body = data[at + len(_PIXEL_OB_UNDEFINED):]
    assert body.endswith(_SEQ_DELIMITER)
    assert list(generate_frames(body[:-8], number_of_frames=2)) == frames
    assert not ds["PixelData"].is_undefined_length  # the caller's data set is left as it was


def test_encapsulated_files_still_go_out_byte_for_byte() -> None:
    ds = _read("JPEG2000.dcm")
    data = encode_instance(ds, str(ds.file_meta.TransferSyntaxUID))
    fragments = bytes(ds._dict[0x7FE00010].value)
    assert data.endswith(_PIXEL_OB_UNDEFINED + fragments + _SEQ_DELIMITER)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    archive = Archive(tmp_path / "archive")
    async with archive_server(archive, "QRSCP") as srv:
        yield srv
    archive.close()


async def test_a_refused_file_leaves_the_association_usable(server: Server) -> None:
    bad, good = _read("rtplan_truncated.dcm"), _read("rtplan.dcm")
    good.SOPInstanceUID = ROOT + "99"
    async with connect("127.0.0.1", server.port, called_ae="QRSCP", dimse_timeout=10,
                       contexts=[(RT_PLAN, [ImplicitVRLittleEndian])]) as assoc:
        with pytest.raises(DataSetEncodeError):
            await assoc.store(bad)
        assert await assoc.store(good) == 0


def test_a_truncated_value_is_caught_before_any_byte_is_built() -> None:
    """The header written for a raw value is the declared length only when the value is whole:
    a stale length would make the peer read the next element's header as value bytes."""
    ds = _read("CT_small.dcm")
    tag = 0x00100010
    raw = ds._dict[tag]
    ds._dict[tag] = raw._replace(value=raw.value[:-2])
    with pytest.raises(DataSetEncodeError) as info:
        encode_instance(ds, ExplicitVRLittleEndian)
    assert info.value.tag == tag


def _explicit(ds: Dataset) -> bytes:
    return encode_instance(ds, ExplicitVRLittleEndian)


def test_structure_check_names_native_pixel_data_in_an_encapsulated_syntax() -> None:
    native = _explicit(_native_ct(3))
    assert structure_problem(native, False, True) is None
    reason = structure_problem(native, False, True, encapsulated=True)
    assert reason is not None and "(7FE0,0010)" in reason and "A.4" in reason
    ds = _native_ct(4)
    ds.PixelData = encapsulate([b"\x01\x02"])
    assert structure_problem(encode_instance(ds, RLELossless), False, True,
                             encapsulated=True) is None


def test_structure_check_lets_an_icon_keep_native_pixels() -> None:
    """A.4 binds the top-level Pixel Data only; an icon's may stay native."""
    ds = _native_ct(5)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1, 2, 8
    icon.PixelData = b"\x00\x01"
    ds.IconImageSequence = [icon]
    ds.PixelData = encapsulate([b"\x01\x02"])
    data = encode_instance(ds, JPEGBaseline8Bit)
    assert structure_problem(data, False, True, encapsulated=True) is None


@pytest.mark.parametrize(("ts", "expected"), [
    (ImplicitVRLittleEndian, False), (ExplicitVRLittleEndian, False), (ExplicitVRBigEndian, False),
    (DeflatedExplicitVRLittleEndian, False), (JPEGBaseline8Bit, True), (RLELossless, True),
    ("1.2.840.10008.1.2.4.201", True), ("1.2.840.10008.1.2.1.98", True),
    ("1.2.826.0.1.3680043.2.1143.9", False),  # private: not known, not judged
])
def test_which_syntaxes_are_encapsulated(ts: str, expected: bool) -> None:
    assert is_encapsulated(ts) is expected


def _native_explicit_bytes(n: int) -> bytes:
    """A native-pixel CT as Explicit VR LE bytes: what a peer mislabelling it sends."""
    return encode_instance(_native_ct(n), ExplicitVRLittleEndian)


async def _store_on(port: int, ts: str, n: int, data: bytes) -> int:
    async with connect("127.0.0.1", port, called_ae="QRSCP", dimse_timeout=10,
                       contexts=[(CTImageStorage, [ts])]) as assoc:
        cx = assoc.storage_context(CTImageStorage, ts)
        return await assoc.store_encoded(CTImageStorage, f"{ROOT}{n}", data, cx)


@pytest.mark.parametrize("ts", [JPEGBaseline8Bit, RLELossless])
async def test_the_archive_refuses_native_pixels_under_an_encapsulated_syntax(
        tmp_path: Path, ts: str) -> None:
    archive = Archive(tmp_path / "archive")
    try:
        async with archive_server(archive, "QRSCP") as srv:
            assert await _store_on(srv.port, ts, 10, _native_explicit_bytes(10)) == 0xC000
            good = _native_ct(11)
            good.PixelData = encapsulate([b"\x01\x02\x03\x04"])
            assert await _store_on(srv.port, ts, 11, encode_instance(good, ts)) == 0
        assert archive.stored_path(f"{ROOT}10") is None
        stored = archive.stored_path(f"{ROOT}11")
        assert stored is not None
        assert list(generate_frames(pydicom.dcmread(stored).PixelData,
                                    number_of_frames=1)) == [b"\x01\x02\x03\x04"]
        names = [p.name for p in (tmp_path / "archive").rglob("*") if p.is_file()]
        assert not [name for name in names if name.startswith(".tmp-")]
    finally:
        archive.close()


async def test_the_in_memory_archive_path_refuses_them_too(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    registry = HandlerRegistry()
    registry.on_store(archive_store_handler(archive))  # no sink: the data set is held in memory
    try:
        async with Server("QRSCP", port=0, handlers=registry,
                          contexts=[(CTImageStorage, [JPEGBaseline8Bit])]) as srv:
            status = await _store_on(srv.port, JPEGBaseline8Bit, 12, _native_explicit_bytes(12))
        assert status == 0xC000  # cannot understand (pydicom refuses to write it as well)
        assert archive.stored_path(f"{ROOT}12") is None
    finally:
        archive.close()


def test_empty_pixel_data_in_an_encapsulated_syntax_goes_out_empty() -> None:
    ds = _native_ct(6)
    ds.PixelData = b""
    empty_ob = b"\xe0\x7f\x10\x00OB\x00\x00" + bytes(4)  # (7FE0,0010) OB, length 0
    assert encode_instance(ds, JPEGBaseline8Bit).endswith(empty_ob)
