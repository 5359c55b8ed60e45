"""Fourth audit, C-STORE: what we send and what the archive keeps.

* A data set read in one byte order and sent in the other kept its OW/OF/OL/OD/OV bytes as
  they were: the receiver saw corrupted pixel data and waveforms (PS3.5 7.3: those values are
  words in the transfer syntax's byte order). They are now swapped (32/64-bit OW Pixel Data by
  its pixels).
* A Deflated data set of odd length went out as is; DCMTK aborts on the odd fragment (PS3.5
  A.5 pads it with one NUL).
* A full disk or database while indexing left the received file in place, unindexed (it came
  back at the next scan), and answered 0x0110; now nothing stays and the answer is A700.
* A data set cut short (a value past the end, pixel data missing its end, encapsulated pixel
  data without its delimiter) was stored with Success; the archive now answers 0xC000.
"""

from __future__ import annotations

import sqlite3
import warnings
from array import array
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from dimse import codec, storage_scu
from dimse.archive import FILE_MODE, Archive
from dimse.connect import connect
from dimse.messages import CStoreRSP
from dimse.qr_scp import archive_server

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


# --------------------------------------------------------------------------- a full database


def ct(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.66.{n}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1143.66"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1143.66.0"
    ds.PatientID = "P66"
    return ds


def _full(*args: object, **kwargs: object) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_index_leaves_no_file_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with Archive(tmp_path / "store") as archive:
        archive.store(ct(1))
        monkeypatch.setattr(archive, "_index", _full)
        with pytest.raises(sqlite3.OperationalError):
            archive.store(ct(2))
        monkeypatch.undo()
        names = [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()]
        assert not [n for n in names if n.endswith(".2.dcm") or n.startswith(".tmp-")]
        assert archive.index().added == 0  # nothing failed comes back at the next scan
        assert archive.stored_path("1.2.826.0.1.3680043.2.1143.66.2") is None
        assert archive.stored_path("1.2.826.0.1.3680043.2.1143.66.1") is not None


async def test_a_full_database_answers_out_of_resources(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with Archive(tmp_path / "store") as archive:
        server = archive_server(archive, "QRSCP")
        async with server, connect("127.0.0.1", server.port, called_ae="QRSCP",
                                   sop_classes=[ct(0).SOPClassUID], dimse_timeout=10) as assoc:
            monkeypatch.setattr(archive, "_index", _full)
            assert await assoc.store(ct(3)) == 0xA700
            monkeypatch.undo()
            assert await assoc.store(ct(4)) == 0x0000  # and the server goes on
        leftovers = [p.name for p in (tmp_path / "store").rglob("*.dcm")]
        assert leftovers == ["1.2.826.0.1.3680043.2.1143.66.4.dcm"]
        assert not list((tmp_path / "store").rglob(".tmp-*"))
        assert archive.index().added == 0


def test_archive_files_get_the_usual_mode(tmp_path: Path) -> None:
    with Archive(tmp_path / "store") as archive:
        path = archive.store(ct(5))
    assert path.stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # readable by group and others under the usual umask 022


# --------------------------------------------------------------------------- truncated data sets


@pytest.mark.parametrize("cut", [1, 1000, 5000])
async def test_the_archive_refuses_a_data_set_cut_short(tmp_path: Path, cut: int) -> None:
    """pydicom reads such a file (it stops before the pixel data): without the structure walk
    the archive answered Success and kept a file DCMTK cannot open."""
    ds = ct(7)
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(64 * 64 * 2)
    ds["PixelData"].VR = "OW"
    with Archive(tmp_path / "store") as archive:
        server = archive_server(archive, "QRSCP")
        async with server, connect("127.0.0.1", server.port, called_ae="QRSCP",
                                   sop_classes=[ds.SOPClassUID], dimse_timeout=10) as assoc:
            sop_class, sop_instance, data, cx = storage_scu.prepare_store(assoc, ds)
            rsp, _ = await assoc.request(cx, storage_scu.store_builder(
                sop_class, sop_instance, 0, None), data[:-cut])
            assert isinstance(rsp, CStoreRSP) and rsp.status == 0xC000
            assert "(7FE0,0010)" in (rsp.error_comment or "")
            assert await assoc.store(ds) == 0x0000  # the whole one is kept
        assert [p.name for p in (tmp_path / "store").rglob("*.dcm")] == [
            "1.2.826.0.1.3680043.2.1143.66.7.dcm"]
        assert not list((tmp_path / "store").rglob(".tmp-*"))


class _FailingCommit:
    """The archive's connection, with every commit failing as a full disk makes it fail."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def __enter__(self) -> sqlite3.Connection:
        return self.db.__enter__()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.db.rollback()
            raise sqlite3.OperationalError("database or disk is full")
        self.db.__exit__(*exc)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["store", "adopt"])
def test_a_failed_commit_leaves_no_file_either(tmp_path: Path, how: str) -> None:
    with Archive(tmp_path / "store") as archive:
        archive.store(ct(1))
        real = archive._db
        if how == "adopt":
            staged = tmp_path / "store" / "incoming.dcm"
            pydicom.dcmwrite(staged, _with_meta(ct(8)), enforce_file_format=True)
        archive._db = _FailingCommit(real)  # type: ignore[assignment]
        try:
            with pytest.raises(sqlite3.OperationalError):
                if how == "store":
                    archive.store(ct(8))
                else:
                    archive.adopt(staged)
        finally:
            archive._db = real
        if how == "adopt":
            staged.unlink()  # what the caller does with a source left in place
        names = [p.name for p in (tmp_path / "store").rglob("*.dcm")]
        assert names == ["1.2.826.0.1.3680043.2.1143.66.1.dcm"]
        assert archive.index().added == 0


def _with_meta(ds: Dataset) -> Dataset:
    from pydicom.dataset import FileMetaDataset

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = LE
    return ds
