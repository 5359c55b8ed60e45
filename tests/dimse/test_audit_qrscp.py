"""Audit fixes of ``dimse qrscp``: stalled associations are dropped, mislabelled data sets refused.

* ``--idle-timeout`` / ``--max-associations`` (passed through :func:`archive_server`): a peer that
  sends 3 bytes of a PDU header and stalls is aborted while other clients are served;
* a data set whose encoding contradicts its presentation context's transfer syntax (an Implicit
  VR body on an Explicit VR context, or the reverse) is answered 0xC000 and nothing is stored.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dimse.archive import Archive
from dimse.archive_store import check_read_encoding
from dimse.association import Association
from dimse.connect import connect
from dimse.errors import AssociationAborted, AssociationRejected, ServiceError
from dimse.instances import encode_instance
from dimse.qr_scp import archive_server
from dimse.server import Server
from dimse.syntax_check import encoding_mismatch
from tests.peers import _wait_listening, free_port, run_process

pytestmark = pytest.mark.timeout(60)

ROOT = "1.2.826.0.1.3680043.10.4646."
#: A wait long enough for a 1 s idle timeout on a loaded CI machine, but bounded.
BOUND = 20.0


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


@pytest.fixture
async def idle_server(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP", idle_timeout=1.0) as srv:
        yield srv


async def _stall_mid_header(port: int) -> Association:
    """An established association on which we then send 3 bytes of a PDU header and stop."""
    assoc = await connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="STALLER",
                          sop_classes=[CTImageStorage])
    transport = assoc.protocol.transport
    assert transport is not None
    transport.write(b"\x04\x00\x00")
    return assoc


async def _echo(port: int) -> int:
    async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="OTHER") as assoc:
        return await assoc.echo()


# --------------------------------------------------------------------------- idle timeout


async def test_stalled_association_aborted_while_others_served(idle_server: Server) -> None:
    stalled = await _stall_mid_header(idle_server.port)
    try:
        assert await asyncio.wait_for(_echo(idle_server.port), BOUND) == 0  # still served
        await asyncio.wait_for(stalled.wait_closed(), BOUND)  # the server dropped the staller
        assert isinstance(stalled.error, AssociationAborted), stalled.error
        assert await asyncio.wait_for(_echo(idle_server.port), BOUND) == 0
    finally:
        stalled.abort()


def test_archive_server_passes_the_limits(archive: Archive) -> None:
    server = archive_server(archive, "QRSCP", idle_timeout=7.0, max_associations=3)
    assert server.idle_timeout == 7.0
    assert server.max_associations == 3
    default = archive_server(archive, "QRSCP")
    assert default.max_associations is None


async def test_cli_idle_timeout_and_max_associations(tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "dimse", "qrscp", "--storage", str(tmp_path / "a"), "--aet",
            "QRSCP", "--port", str(port), "--idle-timeout", "1", "--max-associations", "1"]
    with run_process(args, timeout=120) as proc:
        await asyncio.to_thread(_wait_listening, proc, port, 20)
        stalled = await _stall_mid_header(port)
        try:
            with pytest.raises(AssociationRejected):  # the one slot is taken by the staller
                await asyncio.wait_for(_echo(port), BOUND)
            await asyncio.wait_for(stalled.wait_closed(), BOUND)
            assert isinstance(stalled.error, AssociationAborted), stalled.error
        finally:
            stalled.abort()
        assert await asyncio.wait_for(_echo(port), BOUND) == 0  # the slot is free again
        assert proc.poll() is None, proc.output()


@pytest.mark.parametrize("bad", ["-1", "x", "inf"])
def test_cli_rejects_bad_idle_timeout(bad: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from dimse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["qrscp", "--storage", str(tmp_path), "--aet", "A", "--port", "0",
              "--idle-timeout", bad])
    assert exc.value.code == 2
    assert "--idle-timeout" in capsys.readouterr().err


# --------------------------------------------------------------------------- transfer syntax


def instance(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}1.1.{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ROOT + "1", ROOT + "1.1"
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Doe^Jane", "CT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 2, 8, 8
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.HighBit = 1, 0, 7
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(4))
    return ds


@pytest.fixture
async def server(archive: Archive) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP") as srv:
        yield srv


async def send(port: int, ts: str, data: bytes, n: int) -> int:
    """C-STORE ``data`` as it is on a context accepted with ``ts`` (whatever its encoding)."""
    async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="SENDER",
                       sop_classes=[CTImageStorage], transfer_syntaxes=[ts]) as assoc:
        cx = assoc.storage_context(CTImageStorage, ts)
        return await assoc.store_encoded(CTImageStorage, f"{ROOT}1.1.{n}", data, cx)


def stored_files(archive: Archive) -> list[Path]:
    return [p for p in archive.storage_dir.rglob("*")
            if p.is_file() and not p.name.startswith(".archive.sqlite")]


@pytest.mark.parametrize(("context_ts", "body_ts"), [
    (ExplicitVRLittleEndian, ImplicitVRLittleEndian),  # the audit's repro
    (ImplicitVRLittleEndian, ExplicitVRLittleEndian),
    (ExplicitVRBigEndian, ImplicitVRLittleEndian),
    (RLELossless, ImplicitVRLittleEndian),  # encapsulated: the data set is Explicit VR LE
])
async def test_body_in_another_syntax_fails_c000_and_stores_nothing(
        archive: Archive, server: Server, context_ts: str, body_ts: str) -> None:
    data = encode_instance(instance(1), body_ts)
    assert await send(server.port, context_ts, data, 1) == 0xC000
    assert stored_files(archive) == []
    assert archive.stored_path(f"{ROOT}1.1.1") is None


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                                RLELossless])
async def test_body_in_the_context_syntax_is_stored(archive: Archive, server: Server,
                                                    ts: str) -> None:
    ds = instance(2)
    if ts == RLELossless:  # PS3.5 A.4: encapsulated pixel data (fragments) in such a syntax
        ds.PixelData = encapsulate([bytes(range(4))])
    assert await send(server.port, ts, encode_instance(ds, ts), 2) == 0
    stored = archive.stored_path(f"{ROOT}1.1.2")
    assert stored is not None
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.PatientName == "Doe^Jane"


def test_encoding_mismatch_only_rejects_the_clearly_wrong() -> None:
    ds = instance(3)
    implicit = encode_instance(ds, ImplicitVRLittleEndian)
    explicit = encode_instance(ds, ExplicitVRLittleEndian)
    big = encode_instance(ds, ExplicitVRBigEndian)
    assert encoding_mismatch(implicit, ExplicitVRLittleEndian) is not None
    assert encoding_mismatch(implicit, ExplicitVRBigEndian) is not None
    assert encoding_mismatch(explicit, ImplicitVRLittleEndian) is not None
    for data, ts in ((implicit, ImplicitVRLittleEndian), (explicit, ExplicitVRLittleEndian),
                     (big, ExplicitVRBigEndian), (explicit, RLELossless)):
        assert encoding_mismatch(data, ts) is None, ts
    # not judged: deflated bodies, unknown syntaxes, heads too short to tell
    assert encoding_mismatch(implicit, DeflatedExplicitVRLittleEndian) is None
    assert encoding_mismatch(implicit, "1.2.3.4.5") is None
    assert encoding_mismatch(implicit[:7], ExplicitVRLittleEndian) is None
    # an implicit element whose length bytes spell a VR, yet whose implicit length fits: kept
    plausible = b"\x09\x00\x10\x00" + b"UL\x00\x00" + bytes(0x4C55)
    assert encoding_mismatch(plausible, ImplicitVRLittleEndian) is None
    # an explicit first element that ends the data set while the implicit length overruns it
    lone = b"\x10\x00\x20\x00LO\x02\x00P1"
    assert encoding_mismatch(lone, ImplicitVRLittleEndian) is not None


def test_read_back_check_sees_through_the_vr_guessing_fallback(tmp_path: Path) -> None:
    """A Part 10 file that says Explicit VR LE over an implicit body: pydicom reads it (by
    guessing) and reports the declared encoding; the read-back check still refuses it."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"{ROOT}1.1.4"
    path = tmp_path / "mislabelled.dcm"
    with path.open("wb") as fh:
        fh.write(bytes(128) + b"DICM")
        write_file_meta_info(pydicom.filebase.DicomFileLike(fh), meta)
        fh.write(encode_instance(instance(4), ImplicitVRLittleEndian))
    with pytest.warns(UserWarning, match="implicit VR"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.original_encoding == (False, True)  # the fallback hides it here...
    with pytest.raises(ServiceError) as exc:
        check_read_encoding(ds, ExplicitVRLittleEndian)  # ...but not from the check
    assert exc.value.status == 0xC000
    check_read_encoding(pydicom.dcmread(path, stop_before_pixels=True),
                        ImplicitVRLittleEndian)  # as declared: no complaint (pydicom warns)
