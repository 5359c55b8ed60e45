"""File Meta AE titles of received instances (PS3.10 Table 7.1-1).

Source Application Entity Title (0002,0016) names the AE that wrote the file, which for a
received C-STORE is the receiving one; Sending (0002,0017) and Receiving (0002,0018) name the
two ends of the association. A peer's title that is no valid AE value is left out, never a
reason to fail the store.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dimse.archive import Archive
from dimse.connect import connect
from dimse.file_sink import FileSink, file_meta_bytes
from dimse.messages import CStoreRQ
from dimse.qr_scp import archive_server
from dimse.server import Server
from dimse.services import HandlerRegistry, file_sink_factory
from dimse.status import Status

SUCCESS = Status.SUCCESS

pytestmark = pytest.mark.timeout(60)

UID = "1.2.826.0.1.3680043.10.4343.77.1"


def _meta(raw: bytes) -> FileMetaDataset:
    return pydicom.dcmread(io.BytesIO(raw)).file_meta


def _instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID + ".8", UID + ".8.1"
    ds.PatientID, ds.PatientName, ds.Modality = "P77", "Doe^Meta", "CT"
    return ds


def test_sending_and_receiving_titles_in_their_elements() -> None:
    meta = _meta(file_meta_bytes(CTImageStorage, UID, ExplicitVRLittleEndian, "MODALITY",
                                 "ARCHIVE"))
    assert meta.SendingApplicationEntityTitle == "MODALITY"
    assert meta.ReceivingApplicationEntityTitle == "ARCHIVE"
    assert meta.SourceApplicationEntityTitle == "ARCHIVE"  # the writer: the receiving AE
    assert meta.FileMetaInformationGroupLength == len(
        file_meta_bytes(CTImageStorage, UID, ExplicitVRLittleEndian, "MODALITY", "ARCHIVE")) - 144


@pytest.mark.parametrize("title", ["CAF\u00c9", "A\\B", "TAB\tAE", "X" * 17])
def test_a_title_that_is_no_ae_value_is_left_out(title: str) -> None:
    """The Upper Layer reads titles as Latin-1: a non-ASCII one must not fail the file."""
    raw = file_meta_bytes(CTImageStorage, UID, ExplicitVRLittleEndian, title, "ARCHIVE")
    meta = _meta(raw)
    assert "SendingApplicationEntityTitle" not in meta
    assert meta.ReceivingApplicationEntityTitle == "ARCHIVE"
    sink = FileSink(Path("/nonexistent-never-opened"), CStoreRQ(
        message_id=1, affected_sop_class_uid=CTImageStorage, affected_sop_instance_uid=UID),
        ExplicitVRLittleEndian, title, receiving_ae=title)
    assert sink.size == 0  # built without touching the title's encoding


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


@pytest.fixture
async def archive_scp(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP") as srv:
        yield srv


async def _store(port: int, called_ae: str) -> int:
    async with connect("127.0.0.1", port, called_ae=called_ae, calling_ae="MODALITY",
                       sop_classes=[CTImageStorage],
                       transfer_syntaxes=[ExplicitVRLittleEndian]) as assoc:
        return await assoc.store(_instance())


async def test_archive_file_names_sender_and_receiver(archive: Archive,
                                                      archive_scp: Server) -> None:
    assert await _store(archive_scp.port, "QRSCP") == SUCCESS
    path = archive.stored_path(UID)
    assert path is not None
    meta = pydicom.dcmread(path).file_meta
    assert (meta.SourceApplicationEntityTitle, meta.SendingApplicationEntityTitle,
            meta.ReceivingApplicationEntityTitle) == ("QRSCP", "MODALITY", "QRSCP")


async def test_file_sink_names_sender_and_receiver(tmp_path: Path) -> None:
    async def keep(rq: CStoreRQ, dataset: object, ctx: object) -> int:
        return SUCCESS

    registry = HandlerRegistry()
    registry.on_store(keep, sink=file_sink_factory(tmp_path))
    server = Server("STORE_SCP", port=0, host="127.0.0.1", handlers=registry)
    async with server:
        assert await _store(server.port, "STORE_SCP") == SUCCESS
    meta = pydicom.dcmread(tmp_path / f"{UID}.dcm").file_meta
    assert (meta.SourceApplicationEntityTitle, meta.SendingApplicationEntityTitle,
            meta.ReceivingApplicationEntityTitle) == ("STORE_SCP", "MODALITY", "STORE_SCP")


async def test_peer_with_a_latin1_calling_title_still_stores(
        archive: Archive, archive_scp: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our encoder refuses such a title, so the requestor's side is made to send it as a
    non-conforming peer would; the receiver used to answer 0x0110 to every C-STORE."""
    import pdu.pdus

    plain = pdu.pdus._ae_field  # only our encoder is patched: the receiver's checks stay
    monkeypatch.setattr(pdu.pdus, "_ae_field", lambda value, raw, name: (
        value.encode("latin-1").ljust(16, b" ") if value == "CAF\u00c9"
        else plain(value, raw, name)))
    async with connect("127.0.0.1", archive_scp.port, called_ae="QRSCP",
                       calling_ae="CAF\u00c9", sop_classes=[CTImageStorage],
                       transfer_syntaxes=[ExplicitVRLittleEndian]) as assoc:
        assert await assoc.store(_instance()) == SUCCESS
    path = archive.stored_path(UID)
    assert path is not None
    meta = pydicom.dcmread(path).file_meta
    assert "SendingApplicationEntityTitle" not in meta
    assert meta.ReceivingApplicationEntityTitle == "QRSCP"
