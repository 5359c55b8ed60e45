"""Defects found by running Orthanc 1.10.1, dcmjs-dimse 0.3.3, GDCM and CTN against us (audit 5).

Each test is self-contained (no peer needed) and failed on the code before its fix.
"""

from __future__ import annotations

import struct
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from dimse import codec
from dimse.archive import Archive
from dimse.archive_store import archive_store_handler
from dimse.connect import connect
from dimse.errors import DataSetDecodeError, DataSetEncodeError
from dimse.file_sink import file_meta_bytes
from dimse.qr import Mode, Operation, QueryModel, validate_scp
from dimse.qr_scp import FindRequest, archive_server, qr_server_contexts, register_find
from dimse.qr_scu import QueryFailed, connect_qr, find
from dimse.server import Server, default_contexts
from dimse.services import HandlerRegistry, ReceivedDataSet, storage_sop_classes
from dimse.template import IdentifierTemplate
from pdu.errors import PduEncodeError
from tests import peers

pytestmark = pytest.mark.timeout(60)

# Storage SOP classes whose names end in "- For Presentation" / "- For Processing" (PS3.4
# Table B.5-1): Orthanc's storage RQ had 12 of them rejected, a dcmjs-dimse store of an MG image
# found no accepted context.
FOR_PRESENTATION_OR_PROCESSING = [
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG
    "1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1",  # intra-oral
    "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5",  # breast projection
    "1.2.840.10008.5.1.4.1.1.14.1", "1.2.840.10008.5.1.4.1.1.14.2",  # IVOCT
    "1.2.840.10008.5.1.4.1.1.501.2.1", "1.2.840.10008.5.1.4.1.1.501.2.2",  # DICOS DX
]


def _store_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.on_store(lambda rq, ds, ctx: 0)
    return registry


@pytest.mark.parametrize("uid", FOR_PRESENTATION_OR_PROCESSING)
def test_default_store_contexts_include_for_presentation_and_processing(uid: str) -> None:
    assert uid in storage_sop_classes()
    assert uid in default_contexts(_store_registry())


def test_storage_commitment_is_no_storage_class() -> None:
    classes = storage_sop_classes()
    assert "1.2.840.10008.1.20.1" not in classes  # Storage Commitment Push Model
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT Image Storage
    assert "1.2.840.10008.5.1.4.1.1.6" in classes  # retired US Image Storage: still archived


async def test_mammography_instance_can_be_stored() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    async with Server("ARCHIVE", handlers=_store_registry()) as server:
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[ds.SOPClassUID], dimse_timeout=5) as assoc:
            assert await assoc.store(ds) == 0


# ----------------------------------------------------------------- characters outside the charset
# Our SCU sent PatientName 'Люк*' declared ISO_IR 100 to Orthanc as '???*' (pydicom's replacement
# characters, with a warning only): '?' is the C-FIND one-character wildcard, so 11 patients
# matched instead of none. The same replacement silently changed C-STORE data sets.


def _cyrillic_query() -> Dataset:
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 100"  # Latin-1 declared ...
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientID = ""
    q.PatientName = "Люк*"  # ... but a Cyrillic value
    return q


@pytest.mark.parametrize("keyword", ["PatientName", "InstitutionName", "StudyDescription"])
def test_a_value_no_declared_charset_holds_is_refused(keyword: str) -> None:
    q = _cyrillic_query()
    setattr(q, keyword, "Люк*")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pydicom replacement warning either
        with pytest.raises(DataSetEncodeError) as info:
            codec.encode(q, codec.EXPLICIT_VR_LE)
    assert info.value.tag == int(Tag(keyword))
    assert "ISO_IR 192" in str(info.value)


def test_template_refuses_it_too() -> None:
    template = IdentifierTemplate(["PatientName", "InstitutionName"], codec.EXPLICIT_VR_LE,
                                  specific_character_set="ISO_IR 100")
    with pytest.raises(DataSetEncodeError):
        template.encode(["Люк*", ""])
    with pytest.raises(DataSetEncodeError):
        template.encode(["", "Люк"])
    assert b"\xc4neas" in template.encode(["\u00c4neas*", ""])  # Latin-1 still fine


@pytest.mark.parametrize(("charset", "name"), [
    ("ISO_IR 100", "\u00c4neas^Fran\u00e7ois"),
    ("ISO_IR 192", "Люк^山田"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    (["", "ISO 2022 IR 87"], "Yamada=Люк"),  # JIS X 0208 has Cyrillic letters
    (["ISO 2022 IR 100", "ISO 2022 IR 144"], "\u00c4neas^Люк"),  # written part by part
])
def test_values_some_declared_charset_holds_still_encode(charset: str | list[str],
                                                          name: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert str(codec.decode(data, codec.EXPLICIT_VR_LE).PatientName) == name


async def test_scu_does_not_send_a_widened_query() -> None:
    seen: list[str] = []

    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        seen.append(str(request.identifier.PatientName))
        return
        yield

    registry = HandlerRegistry()
    register_find(registry, handler)
    async with Server("QR", handlers=registry, contexts=qr_server_contexts(registry)) as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QR", dimse_timeout=5) as assoc:
            with pytest.raises(DataSetEncodeError):
                [m async for m in assoc.find(_cyrillic_query(), model=QueryModel.PATIENT_ROOT)]
            assert await assoc.echo() == 0  # refused locally: the association goes on
    assert seen == []


async def test_scp_handler_match_outside_its_charset_fails_the_find() -> None:
    """A handler's match that its own charset cannot hold used to reach the SCU as '???'."""
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        match = Dataset()
        match.SpecificCharacterSet = "ISO_IR 100"
        match.QueryRetrieveLevel, match.PatientID, match.PatientName = "PATIENT", "1", "Люк"
        yield match

    registry = HandlerRegistry()
    register_find(registry, handler)
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID, query.PatientName = "PATIENT", "", ""
    async with Server("QR", handlers=registry, contexts=qr_server_contexts(registry)) as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QR", dimse_timeout=5) as assoc:
            with pytest.raises(QueryFailed) as info:
                [m async for m in assoc.find(query, model=QueryModel.PATIENT_ROOT)]
            assert info.value.status >> 12 == 0xC
            assert "\\u041b" in str(info.value)  # the character, named in the ErrorComment


# ----------------------------------------------------------------- blank AE titles (audit 5, CLI)
@pytest.mark.parametrize("titles", [{"called_ae": ""}, {"called_ae": "   "},
                                    {"called_ae": "QR", "calling_ae": ""}])
async def test_connect_refuses_a_blank_ae_title_before_sending(titles: dict[str, str]) -> None:
    """16 spaces mean "no name" and shall not be sent (PS3.8 9.3.2); the RQ went out anyway."""
    async with Server("QR") as server:
        with pytest.raises(PduEncodeError, match="empty"):
            async with connect("127.0.0.1", server.port, **titles):  # type: ignore[arg-type]
                pass
        assert not server.associations


# ----------------------------------------------------------------- encapsulated transfer syntaxes
# CTN's send_image stored RLE: a handler reading the data set (ReceivedDataSet.decode) got
# "unsupported transfer syntax", and archive_store_handler without a sink answered 0xC000 to a
# store its association had accepted. PS3.5 A.4: their data set is explicit VR little endian.
SC = "1.2.840.10008.5.1.4.1.1.7"


def _rle_sc() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SC, generate_uid()
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(16))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                  "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_encapsulated_data_sets_decode_as_pydicom_reads_them(name: str) -> None:
    path = get_testdata_file(name)
    original = pydicom.dcmread(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    offset = 132 + 12 + original.file_meta.FileMetaInformationGroupLength  # after group 0002
    back = codec.decode(raw[offset:], original.file_meta.TransferSyntaxUID)
    assert back == original
    assert back["PixelData"].is_undefined_length


def test_unknown_transfer_syntax_still_refused() -> None:
    with pytest.raises(DataSetDecodeError, match="unsupported transfer syntax"):
        codec.decode(b"", "1.2.3.4.5")


async def test_received_rle_data_set_decodes() -> None:
    got: list[Exception | Dataset] = []

    def on_store(rq: object, received: ReceivedDataSet, ctx: object) -> int:
        try:
            got.append(received.decode())
        except Exception as exc:  # recorded for the assertion
            got.append(exc)
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)
    ds = _rle_sc()
    async with Server("ARCHIVE", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           contexts=[(SC, [RLELossless])]) as assoc:
            assert await assoc.store(ds) == 0
    assert isinstance(got[0], Dataset), got[0]
    assert got[0].PixelData == ds.PixelData


async def test_archive_store_handler_without_sink_stores_rle(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    registry = HandlerRegistry()
    registry.on_store(archive_store_handler(archive))  # no sink: decoded in memory
    ds = _rle_sc()
    try:
        async with Server("ARCHIVE", handlers=registry) as server:
            async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                               contexts=[(SC, [RLELossless])]) as assoc:
                assert await assoc.store(ds) == 0
        stored = archive.stored_path(ds.SOPInstanceUID)
        assert stored is not None
        assert pydicom.dcmread(stored).PixelData == ds.PixelData
    finally:
        archive.close()


# ----------------------------------------------------------------- ISO 2022 IR 58 (GB 2312)
# PS3.5 Annex K's example, "Zhang^XiaoDong=张^小东=": each PN component group with Chinese text
# designates GB 2312 to G1 again (ESC $ ) A) and writes it in GR. pydicom 3.0 wrote the GR bytes
# with no designation (our own output read back as Latin-1 mojibake) and read a designated value
# keeping ESC $ ) A in the text.
IR58_CHARSET = ["", "ISO 2022 IR 58"]
ANNEX_K_PN = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    value += b" " if len(value) % 2 else b""
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def test_ir58_pn_encodes_as_ps35_annex_k() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = IR58_CHARSET
    ds.PatientName = "Zhang^XiaoDong=张^小东="
    data = codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert _element(0x0010, 0x0010, b"PN", ANNEX_K_PN) in data
    template = IdentifierTemplate(["PatientName"], codec.EXPLICIT_VR_LE,
                                  specific_character_set=IR58_CHARSET)
    assert _element(0x0010, 0x0010, b"PN", ANNEX_K_PN) in template.encode(
        ["Zhang^XiaoDong=张^小东="])


def test_ir58_text_designates_before_its_first_chinese_character() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = IR58_CHARSET
    ds.InstitutionName = ["北京 Hospital", "Plain", "上海"]
    data = codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert b"\x1b$)A\xb1\xb1\xbe\xa9 Hospital\\Plain\\\x1b$)A\xc9\xcf\xba\xa3" in data
    assert list(codec.decode(data, codec.EXPLICIT_VR_LE).InstitutionName) == [
        "北京 Hospital", "Plain", "上海"]


@pytest.mark.parametrize("raw", [ANNEX_K_PN, ANNEX_K_PN.replace(b"\x1b$)A", b"")])
def test_ir58_decodes_with_or_without_designations(raw: bytes) -> None:
    """Designated as the standard writes it, or bare GR bytes as pydicom (and so pynetdicom)
    wrote them: both read as the name, with no escape characters left in it."""
    data = _element(0x0008, 0x0005, b"CS", b"\\ISO 2022 IR 58") + _element(
        0x0010, 0x0010, b"PN", raw)
    name = codec.decode(data, codec.EXPLICIT_VR_LE).PatientName
    assert str(name) == "Zhang^XiaoDong=张^小东"
    assert name.ideographic == "张^小东"


def test_ir58_round_trip_is_what_dcmtk_reads(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = IR58_CHARSET
    ds.SOPClassUID, ds.SOPInstanceUID = SC, "1.2.826.0.1.3680043.10.4343.58"
    ds.PatientName = "Zhang^XiaoDong=张^小东"
    path = tmp_path / "ir58.dcm"
    path.write_bytes(file_meta_bytes(SC, ds.SOPInstanceUID, codec.EXPLICIT_VR_LE)
                     + codec.encode(ds, codec.EXPLICIT_VR_LE))
    dump = subprocess.run([peers.dcmtk("dcmdump"), "+U8", str(path)], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert "[Zhang^XiaoDong=张^小东]" in dump


# ----------------------------------------------------------------- empty keys of higher levels
# Orthanc adds an empty PatientID and AccessionNumber to every series and instance query, and
# dcmjs-dimse an empty Modality to image queries: each got A900 from our strict SCP, so neither
# peer could browse below the study. An empty key only asks for the higher entity's value back
# (DCMTK's dcmqrscp answers these by default); a non-empty one would be relational matching and
# is still refused.
def _series_query(**extra: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID, q.SeriesInstanceUID = "1.2.3", ""
    for keyword, value in extra.items():
        setattr(q, keyword, value)
    return q


def test_empty_higher_level_keys_pass_strict_scp_validation() -> None:
    assert validate_scp(_series_query(PatientID="", AccessionNumber=""), QueryModel.STUDY_ROOT,
                        Operation.FIND) is None
    image = _series_query(Modality="")
    image.QueryRetrieveLevel, image.SeriesInstanceUID, image.SOPInstanceUID = "IMAGE", "1.2.3.4", ""
    assert validate_scp(image, QueryModel.STUDY_ROOT, Operation.FIND) is None


def test_a_non_empty_higher_level_key_is_still_refused() -> None:
    failure = validate_scp(_series_query(PatientID="", AccessionNumber="A1"),
                           QueryModel.STUDY_ROOT, Operation.FIND)
    assert failure is not None and failure.status == 0xA900
    assert failure.offending == (0x00080050,)


async def test_archive_answers_an_orthanc_series_query_with_the_study_values(
        tmp_path: Path) -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    archive = Archive(tmp_path)
    try:
        archive.store(ct)
        query = _series_query(PatientID="", AccessionNumber="", Modality="")
        query.StudyInstanceUID = ct.StudyInstanceUID
        async with archive_server(archive, "QR") as server, connect_qr(
                "127.0.0.1", server.port, called_ae="QR") as assoc:
            matches = [m async for m in find(assoc, query, model=QueryModel.STUDY_ROOT,
                                             mode=Mode.LENIENT)]  # our SCU would refuse it
        assert len(matches) == 1
        assert matches[0].PatientID == ct.PatientID
        assert matches[0].SeriesInstanceUID == ct.SeriesInstanceUID
        assert matches[0].Modality == "CT"
    finally:
        archive.close()
