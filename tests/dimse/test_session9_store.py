"""Session 9: encapsulated (compressed) Pixel Data under a native transfer syntax (audit 13 C1).

PS3.5 A.4: only the encapsulated syntaxes carry Pixel Data as fragments with an undefined
length; a native one (Implicit/Explicit VR Little Endian, Explicit VR Big Endian, deflated)
carries it with a defined length. Odil's store tool sends JPEG, RLE and JPEG 2000 files over an
Explicit VR Little Endian context as they are: the archive stored them, and every reader of the
copy then took compressed bytes for pixels. The archive now refuses them (0xC000, as it refuses
the opposite mistake), and our SCU refuses to send one (DataSetEncodeError naming the tag).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
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
from dimse.syntax_check import is_native
from tests.dimse.test_session8_store import ROOT, _read
from tests.dimse.test_session8_store import _native_ct as _ct

pytestmark = pytest.mark.timeout(60)

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
          DeflatedExplicitVRLittleEndian)
_PIXEL_OB_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _mislabelled_bytes(n: int) -> bytes:
    """What Odil sends: Explicit VR LE elements around encapsulated Pixel Data."""
    ds = _ct(n)
    ds.PixelData = encapsulate([b"\x01\x02\x03\x04"])
    data = encode_instance(ds, RLELossless)  # Explicit VR LE body, fragments
    assert _PIXEL_OB_UNDEFINED in data and data.endswith(_SEQ_DELIMITER)
    return data


# --------------------------------------------------------------------------- our SCU


@pytest.mark.parametrize("ts", NATIVE)
@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_a_compressed_file_labelled_native_is_not_sent(name: str, ts: str) -> None:
    ds = _read(name)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the meta lies
    with pytest.raises(DataSetEncodeError, match="PS3.5 A.4") as info:
        encode_instance(ds, ts)
    assert info.value.tag == 0x7FE00010


@pytest.mark.parametrize("ts", NATIVE)
def test_fragments_put_in_a_data_set_by_hand_are_not_sent_native(ts: str) -> None:
    ds = _ct(1)
    ds.PixelData = encapsulate([b"\x01\x02"])
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(DataSetEncodeError, match="native transfer syntax"):
        encode_instance(ds, ts)


@pytest.mark.parametrize("ts", NATIVE)
def test_native_pixels_still_go_out_in_every_native_syntax(ts: str) -> None:
    assert encode_instance(_ct(2), ts)
    assert encode_instance(_read("CT_small.dcm"), ts)


# --------------------------------------------------------------------------- the archive


@pytest.mark.parametrize(("ts", "expected"), [
    (ImplicitVRLittleEndian, True), (ExplicitVRLittleEndian, True), (ExplicitVRBigEndian, True),
    (DeflatedExplicitVRLittleEndian, False),  # a deflate stream, never walked
    (JPEGBaseline8Bit, False), ("1.2.826.0.1.3680043.2.1143.9", False),  # private: not judged
])
def test_which_syntaxes_are_native(ts: str, expected: bool) -> None:
    assert is_native(ts) is expected


def test_structure_check_names_encapsulated_pixel_data_in_a_native_syntax() -> None:
    data = _mislabelled_bytes(3)
    assert structure_problem(data, False, True) is None  # not judged without the flag
    reason = structure_problem(data, False, True, native=True)
    assert reason is not None and "(7FE0,0010)" in reason and "A.4" in reason
    native = encode_instance(_ct(4), ExplicitVRLittleEndian)
    assert structure_problem(native, False, True, native=True) is None


def test_an_icon_inside_is_not_judged() -> None:
    """A.4 binds the top-level Pixel Data; an item's element is the walker's business only."""
    ds = _ct(5)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1, 2, 8
    icon.PixelData = b"\x00\x01"
    ds.IconImageSequence = [icon]
    data = encode_instance(ds, ExplicitVRLittleEndian)
    assert structure_problem(data, False, True, native=True) is None


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


async def _store_on(port: int, ts: str, n: int, data: bytes) -> int:
    async with connect("127.0.0.1", port, called_ae="QRSCP", dimse_timeout=10,
                       contexts=[(CTImageStorage, [ts])]) as assoc:
        cx = assoc.storage_context(CTImageStorage, ts)
        status = await assoc.store_encoded(CTImageStorage, f"{ROOT}{n}", data, cx)
        bad = _read("JPEG2000.dcm")
        bad.file_meta.TransferSyntaxUID = ts
        bad.SOPClassUID = bad.file_meta.MediaStorageSOPClassUID = CTImageStorage
        with pytest.raises(DataSetEncodeError):  # our SCU will not send one ...
            await assoc.store(bad)
        again = encode_instance(_ct(n + 50), ts)  # ... and the association stays usable
        assert await assoc.store_encoded(CTImageStorage, f"{ROOT}{n + 50}", again, cx) == 0
        return status


async def test_the_archive_refuses_fragments_under_a_native_syntax(archive: Archive) -> None:
    async with archive_server(archive, "QRSCP") as srv:
        assert await _store_on(srv.port, ExplicitVRLittleEndian, 10, _mislabelled_bytes(10)) \
            == 0xC000
        good = encode_instance(_ct(11), ExplicitVRLittleEndian)
        assert await _store_on(srv.port, ExplicitVRLittleEndian, 11, good) == 0
    assert archive.stored_path(f"{ROOT}10") is None
    assert archive.stored_path(f"{ROOT}11") is not None
    names = [p.name for p in archive.storage_dir.rglob("*") if p.is_file()]
    assert not [name for name in names if name.startswith(".tmp-")]


async def test_the_in_memory_archive_path_refuses_them_too(archive: Archive) -> None:
    registry = HandlerRegistry()
    registry.on_store(archive_store_handler(archive))  # no sink: held in memory
    async with Server("QRSCP", port=0, handlers=registry,
                      contexts=[(CTImageStorage, [ExplicitVRLittleEndian])]) as srv:
        status = await _store_on(srv.port, ExplicitVRLittleEndian, 12, _mislabelled_bytes(12))
    assert status == 0xC000
    assert archive.stored_path(f"{ROOT}12") is None
