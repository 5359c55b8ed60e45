"""Audit 7: C-STORE fidelity across transfer syntaxes with files nobody hand-picked.

pydicom's bundled test files (explicit/implicit LE, big endian, deflated, JPEG, JPEG-LS,
JPEG 2000, RLE, multi-frame, private and odd-length elements) and a few crafted ones go:

* from our SCU to DCMTK storescp writing bit-preserving (``+B``): what it stores is what we sent,
  so each received data set is compared with the file element by element (values; VRs when both
  ends are explicit; encapsulated Pixel Data byte-identical in its own syntax);
* from our SCU to an Implicit-VR-only storescp: uncompressed files are transcoded faithfully,
  compressed ones are refused with NotNegotiatedError before anything is sent;
* from DCMTK storescu and pynetdicom into the embedded archive: stored files equal the sent data
  sets and an IMAGE-level C-FIND finds each one.
"""

from __future__ import annotations

import asyncio
import copy
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from dimse.archive import Archive
from dimse.connect import connect
from dimse.errors import DataSetEncodeError, NotNegotiatedError
from dimse.qr import QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr
from tests.peers import dcmtk, free_port, run_storescp, run_tool_async, settle_pynetdicom

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90),
              pytest.mark.filterwarnings("ignore::UserWarning")]

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
BIG, DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
UNCOMPRESSED = {EXPLICIT, IMPLICIT, BIG, DEFLATED}
CT = "1.2.840.10008.5.1.4.1.1.2"

#: One file per encoding and then some: sequences, private tags, multi-frame, odd lengths.
OWN_SYNTAX_FILES = (
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
    "JPEG2000.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jls_lossy_line.dcm",
    "MR_small_RLE.dcm", "SC_rgb_rle_16bit_2frame.dcm", "rtdose_expb.dcm", "waveform_ecg.dcm",
    "test-SR.dcm", "SC_rgb_small_odd_big_endian.dcm", "liver_expb_1frame.dcm", "rtplan.dcm",
    "ExplVR_BigEnd.dcm",
)
#: Uncompressed files a peer that takes only Implicit VR LE must receive intact.
TRANSCODED_FILES = (
    "CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtdose_expb.dcm",
    "SC_rgb_small_odd_big_endian.dcm", "test-SR.dcm", "waveform_ecg.dcm", "rtplan.dcm",
)
#: Data Set Trailing Padding: no meaning, may be dropped (PS3.10 7.2); DCMTK storescu does.
_PADDING = 0xFFFCFFFC
_WORD = {"OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _read(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _ts(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def _text(value: object) -> object:
    if value is None or value == "" or value == b"":
        return None  # an empty value reads as None or "" depending on the VR known
    if isinstance(value, bytes) and len(value) < 256:
        return value.rstrip(b"\0 ")
    return value.rstrip("\0 ") if isinstance(value, str) else value


def differences(sent: Dataset, got: Dataset, *, vrs: bool, swapped: bool = False,
                where: str = "") -> list[str]:
    """What differs between two data sets, group lengths and file meta aside.

    ``vrs``: compare VRs (both ends explicit). ``swapped``: ``sent`` was read big endian and
    ``got`` little endian, so byte values of OF/OL/OD/OV words are compared swapped (OW Pixel
    Data is compared as pixel values by the caller).
    """
    keys_a = {int(t) for t in sent.keys() if t.element and t.group != 2} - {_PADDING}
    keys_b = {int(t) for t in got.keys() if t.element and t.group != 2} - {_PADDING}
    out = [f"{where}{t:08X} only in {'sent' if t in keys_a else 'received'}"
           for t in sorted(keys_a ^ keys_b)]
    for tag in sorted(keys_a & keys_b):
        a, b = sent[tag], got[tag]
        here = f"{where}{tag:08X}"
        if not vrs and b.VR == "UN" and a.VR != "UN":
            continue  # a private element through Implicit VR: its VR is lost (PS3.5 7.1.3)
        if vrs and a.VR != b.VR:
            out.append(f"{here} VR {a.VR} -> {b.VR}")
        if a.VR == "SQ":
            if len(a.value) != len(b.value):
                out.append(f"{here} {len(a.value)} items -> {len(b.value)}")
                continue
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                out += differences(x, y, vrs=vrs, swapped=swapped, where=f"{here}[{i}].")
            continue
        if swapped and tag == 0x7FE00010:
            continue
        va, vb = a.value, b.value
        if swapped and isinstance(va, bytes) and a.VR in _WORD:
            n = _WORD[a.VR]
            va = b"".join(va[i:i + n][::-1] for i in range(0, len(va), n))
        if _text(va) != _text(vb):
            out.append(f"{here} {a.VR} {str(va)[:30]!r} -> {str(vb)[:30]!r}")
    return out


def _same_pixels(sent: Dataset, got: Dataset) -> bool:
    import numpy as np

    return bool(np.array_equal(sent.pixel_array, got.pixel_array))


@pytest.fixture
def storescp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    """storescp writing exactly what it receives (+B); ``extra`` from the test's parameter."""
    extra: list[str] = getattr(request, "param", ["+xa"])
    folder = tmp_path / "rx"
    port = free_port()
    with run_storescp(folder, port, extra_args=[*extra, "-pm", "+B"], timeout=80):
        yield port, folder


def _take_one(folder: Path) -> Dataset:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    ds = pydicom.dcmread(files[0])
    files[0].unlink()
    return ds


async def test_each_file_arrives_intact_in_its_own_transfer_syntax(
        storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    files = [(name, _read(name)) for name in OWN_SYNTAX_FILES]
    contexts = sorted({(str(ds.SOPClassUID), _ts(ds)) for _, ds in files})
    report: dict[str, list[str]] = {}
    async with connect("127.0.0.1", port, called_ae="STORESCP", dimse_timeout=20,
                       contexts=[(sop, [ts]) for sop, ts in contexts]) as assoc:
        for name, ds in files:
            assert await assoc.store(ds) == 0, name
            got = _take_one(folder)
            assert str(got.file_meta.TransferSyntaxUID) == _ts(ds), name
            report[name] = differences(ds, got, vrs=not ds.is_implicit_VR)
            if _ts(ds) not in UNCOMPRESSED:  # encapsulated: the very same fragments
                assert got.PixelData == ds.PixelData, name
    assert {name: diff for name, diff in report.items() if diff} == {}


@pytest.mark.parametrize("storescp", [["+xi"]], indirect=True)
async def test_implicit_only_peer_gets_uncompressed_files_transcoded(
        storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    files = [(name, _read(name)) for name in TRANSCODED_FILES]
    proposed = [(sop, [EXPLICIT, BIG, DEFLATED, IMPLICIT])
                for sop in sorted({str(ds.SOPClassUID) for _, ds in files})]
    async with connect("127.0.0.1", port, called_ae="STORESCP", dimse_timeout=20,
                       contexts=proposed) as assoc:
        for name, ds in files:
            assert await assoc.store(ds) == 0, name
            got = _take_one(folder)
            assert got.file_meta.TransferSyntaxUID == IMPLICIT
            big = ds.is_little_endian is False
            assert differences(ds, got, vrs=False, swapped=big) == [], name
            if "PixelData" in ds:
                assert _same_pixels(ds, got), name


@pytest.mark.parametrize("storescp", [["+xi"]], indirect=True)
async def test_compressed_file_refused_before_sending_batch_stops_as_documented(
        storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    ct, jpeg, mr = _read("CT_small.dcm"), _read("SC_rgb_jpeg_dcmtk.dcm"), _read("MR_small.dcm")
    sops = sorted({str(d.SOPClassUID) for d in (ct, jpeg, mr)})
    async with connect("127.0.0.1", port, called_ae="STORESCP", dimse_timeout=20,
                       contexts=[(sop, [_ts(jpeg), EXPLICIT, IMPLICIT]) for sop in sops]) as assoc:
        with pytest.raises(NotNegotiatedError, match=_ts(jpeg)):
            await assoc.store(jpeg)
        assert await assoc.store(ct) == 0  # the association is untouched
        _take_one(folder)
        with pytest.raises(NotNegotiatedError) as failed:
            await assoc.store_many([ct, jpeg, mr])
        assert failed.value.completed == ((0, 0),)  # type: ignore[attr-defined]
        assert await assoc.store(mr) == 0  # the first error stops the run, nothing else
    assert len(list(folder.iterdir())) == 2


def _crafted_mismatch(ds: Dataset, meta_ts: str, body_implicit: bool) -> Dataset:
    """``ds`` written with one body encoding, its meta then rewritten to say ``meta_ts``."""
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = IMPLICIT if body_implicit else EXPLICIT
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    true_meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
    first, second = io.BytesIO(), io.BytesIO()
    pydicom.filewriter.write_file_meta_info(first, true_meta)
    true_meta.TransferSyntaxUID = meta_ts
    pydicom.filewriter.write_file_meta_info(second, true_meta)
    body = raw[132 + len(first.getvalue()):]
    return pydicom.dcmread(io.BytesIO(raw[:132] + second.getvalue() + body))


async def test_crafted_files(storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    ct = _read("CT_small.dcm")
    big = copy.deepcopy(ct)
    huge = bytes(range(256)) * 16_384  # 4 MiB private OB, several PDUs
    big.private_block(0x0011, "AUDIT7", create=True).add_new(0x01, "OB", huge)
    charset = copy.deepcopy(ct)
    charset.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    charset.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    charset.file_meta.TransferSyntaxUID = IMPLICIT
    buffer = io.BytesIO()
    charset.save_as(buffer, enforce_file_format=True)
    charset = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    cases = {"huge private OB": big, "ISO 2022 charset": charset,
             "meta explicit, body implicit": _crafted_mismatch(ct, EXPLICIT, True),
             "meta implicit, body explicit": _crafted_mismatch(ct, IMPLICIT, False)}
    async with connect("127.0.0.1", port, called_ae="STORESCP", dimse_timeout=20,
                       contexts=[(CT, [EXPLICIT])]) as assoc:
        for name, ds in cases.items():
            assert await assoc.store(ds) == 0, name
            got = _take_one(folder)
            assert differences(ds, got, vrs=False) == [], name
            assert str(got.PatientName) == str(ds.PatientName), name  # decoded alike
        with pytest.raises(DataSetEncodeError, match="SOPClassUID"):
            await assoc.store(Dataset())  # an empty data set: typed refusal, nothing sent
        assert await assoc.store(ct) == 0  # and the association is still usable
    assert differences(ct, _take_one(folder), vrs=True) == []


async def _find_images(port: int, ds: Dataset) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    async with connect_qr("127.0.0.1", port, called_ae="ARCHIVE") as assoc:
        return [m async for m in assoc.find(query, model=QueryModel.STUDY_ROOT)]


def _archived(folder: Path, ds: Dataset) -> Dataset:
    paths = list(folder.rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert len(paths) == 1, (ds.SOPInstanceUID, paths)
    return pydicom.dcmread(paths[0])


@pytest.mark.parametrize("option", ["-xb", "-xi", "-xd"])
async def test_dcmtk_storescu_folder_into_archive_then_find(tmp_path: Path, option: str) -> None:
    names = ("CT_small.dcm", "rtdose_expb.dcm", "waveform_ecg.dcm", "test-SR.dcm",
             "SC_rgb_small_odd_big_endian.dcm", "rtplan.dcm")
    source = tmp_path / "in" / "nested"
    source.mkdir(parents=True)
    for name in names:
        (source / name).write_bytes(Path(get_testdata_file(name) or "").read_bytes())
    store = tmp_path / "archive"
    async with archive_server(Archive(store), "ARCHIVE") as server:
        code, out = await run_tool_async(
            [dcmtk("storescu"), "-aec", "ARCHIVE", "+sd", "+r", option, "127.0.0.1",
             str(server.port), str(tmp_path / "in")], timeout=60)
        assert code == 0, out
        for name in names:
            sent = _read(name)
            got = _archived(store, sent)
            explicit = option != "-xi" and not sent.is_implicit_VR
            big = sent.is_little_endian is False
            assert differences(sent, got, vrs=explicit, swapped=big) == [], name
            if big and "PixelData" in sent and (option == "-xb" or sent.BitsAllocated <= 16):
                # 32-bit OW: DCMTK swaps 16-bit words when it leaves big endian, pydicom
                # (and our codec) swap 32-bit values; values then differ, by DCMTK's doing
                assert _same_pixels(sent, got), name
            matches = await _find_images(server.port, sent)
            assert [m.SOPInstanceUID for m in matches] == [sent.SOPInstanceUID], name


async def test_dcmtk_storescu_encapsulated_into_archive_byte_identical(tmp_path: Path) -> None:
    cases = {"SC_rgb_jpeg_dcmtk.dcm": "-xy", "JPEG2000.dcm": "-xw", "MR_small_RLE.dcm": "-xr"}
    store = tmp_path / "archive"
    async with archive_server(Archive(store), "ARCHIVE") as server:
        for name, option in cases.items():
            path = get_testdata_file(name) or ""
            code, out = await run_tool_async(
                [dcmtk("storescu"), "-aec", "ARCHIVE", option, "127.0.0.1", str(server.port),
                 path], timeout=30)
            assert code == 0, out
            sent = _read(name)
            got = _archived(store, sent)
            assert got.file_meta.TransferSyntaxUID == _ts(sent)
            assert got.PixelData == sent.PixelData, name
            assert await _find_images(server.port, sent), name


async def test_pynetdicom_into_archive_in_own_syntaxes(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE

    names = ("image_dfl.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle_16bit_2frame.dcm",
             "emri_small_jpeg_2k_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    datasets = [_read(n) for n in names if get_testdata_file(n) is not None]

    def client(port: int) -> list[int]:
        ae = AE(ae_title="PYNETDICOM")
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, [_ts(ds)])
        assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
        assert assoc.is_established
        statuses = []
        try:
            for ds in datasets:
                statuses.append(int(assoc.send_c_store(ds).Status))
                settle_pynetdicom()
        finally:
            assoc.release()
        return statuses

    store = tmp_path / "archive"
    async with archive_server(Archive(store), "ARCHIVE") as server:
        statuses = await asyncio.wait_for(asyncio.to_thread(client, server.port), 60)
        assert statuses == [0] * len(datasets)
        for ds in datasets:
            got = _archived(store, ds)
            assert got.file_meta.TransferSyntaxUID == _ts(ds)
            assert differences(ds, got, vrs=not ds.is_implicit_VR) == []
            assert got.PixelData == ds.PixelData
            assert await _find_images(server.port, ds)


def test_file_meta_helper_is_not_needed_for_in_memory_data_sets() -> None:
    """A data set built in memory (no file meta) still names its SOP UIDs for C-STORE."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, "1.2.3"
    ds.file_meta = FileMetaDataset()
    from dimse.instances import instance_transfer_syntax, instance_uids

    assert instance_uids(ds) == (CT, "1.2.3")
    assert instance_transfer_syntax(ds) is None
