"""C-ECHO and C-STORE against real peers on 127.0.0.1: DCMTK and pynetdicom, both directions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dimse.connect import connect
from dimse.server import Server
from dimse.services import HandlerRegistry, file_sink_factory
from tests.peers import (
    CT_IMAGE_STORAGE,
    dcmtk,
    free_port,
    make_ct,
    run_storescp,
    run_tool_async,
    settle_pynetdicom,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
VERIFICATION = "1.2.840.10008.1.1"


def _ct_files(folder: Path, count: int, rows: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_ct(folder / f"ct{i}.dcm", sop_uid=f"1.2.826.0.1.3680043.2.1143.7.{i}",
                patient_id=f"PID{i}", rows=rows, columns=rows)
        for i in range(count)
    ]


async def test_dcmtk_echoscu_against_our_server() -> None:
    echoscu = dcmtk("echoscu")
    async with Server("OURSCP") as server:
        code, out = await run_tool_async([echoscu, "-v", "-aec", "OURSCP", "127.0.0.1", str(server.port)])
        assert code == 0, out
        assert "Received Echo Response (Success)" in out
        code, out = await run_tool_async([echoscu, "-aec", "WRONG", "127.0.0.1", str(server.port)])
        assert code != 0
        assert "Called AE Title Not Recognized" in out or "Rejected" in out, out


async def test_dcmtk_storescu_against_our_server(tmp_path: Path) -> None:
    storescu = dcmtk("storescu")
    files = _ct_files(tmp_path / "in", 5)
    registry = HandlerRegistry()
    stored: list[str] = []

    async def on_store(rq, dataset, ctx):  # type: ignore[no-untyped-def]
        stored.append(rq.affected_sop_instance_uid)
        return 0

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    registry.on_store(on_store, sink=file_sink_factory(out_dir))
    async with Server("OURSCP", handlers=registry) as server:
        code, out = await run_tool_async([storescu, "-aec", "OURSCP", "127.0.0.1", str(server.port),
                                *map(str, files)])
        assert code == 0, out
    assert len(stored) == 5
    for i in range(5):
        back = pydicom.dcmread(out_dir / f"1.2.826.0.1.3680043.2.1143.7.{i}.dcm")
        original = pydicom.dcmread(files[i])
        assert back.PatientID == f"PID{i}"
        assert back.PixelData == original.PixelData


async def test_our_scu_against_dcmtk_storescp(tmp_path: Path) -> None:
    dcmtk("storescp")
    port = free_port()
    files = _ct_files(tmp_path / "in", 4)
    received = tmp_path / "received"
    with run_storescp(received, port, aet="STORESCP"):
        async with connect("127.0.0.1", port, called_ae="STORESCP",
                           sop_classes=[VERIFICATION, CT_IMAGE_STORAGE]) as assoc:
            assert await assoc.echo() == 0
            for f in files:
                assert await assoc.store(pydicom.dcmread(f)) == 0
    names = sorted(p.name for p in received.iterdir())
    assert len(names) == 4, names
    for f in files:
        original = pydicom.dcmread(f)
        match = [p for p in received.iterdir() if original.SOPInstanceUID in p.name]
        assert len(match) == 1
        back = pydicom.dcmread(match[0])
        assert back.PatientID == original.PatientID
        assert back.PixelData == original.PixelData


@pytest.fixture
def pynetdicom_scp(tmp_path: Path) -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, Verification

    received: list[pydicom.Dataset] = []
    lock = threading.Lock()

    def on_store(event):  # type: ignore[no-untyped-def]
        with lock:
            received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    del pynetdicom
    try:
        yield port, received
    finally:
        server.shutdown()


async def test_our_scu_against_pynetdicom_scp(
    tmp_path: Path, pynetdicom_scp: tuple[int, list[pydicom.Dataset]]
) -> None:
    port, received = pynetdicom_scp
    files = _ct_files(tmp_path, 3)
    async with connect("127.0.0.1", port, called_ae="PYNETSCP",
                       sop_classes=[VERIFICATION, CT_IMAGE_STORAGE]) as assoc:
        assert await assoc.echo() == 0
        for f in files:
            assert await assoc.store(pydicom.dcmread(f)) == 0
    assert sorted(ds.PatientID for ds in received) == ["PID0", "PID1", "PID2"]


async def test_pynetdicom_scu_against_our_server(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    files = _ct_files(tmp_path, 3)
    stored: list[str] = []

    async def on_store(rq, dataset, ctx):  # type: ignore[no-untyped-def]
        stored.append(dataset.decode().PatientID)
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)

    def client(port: int) -> list[int]:
        ae = AE(ae_title="PYNETSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, ae_title="OURSCP")
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_echo().Status)]
            for f in files:
                settle_pynetdicom()  # see there: a pynetdicom race, not ours
                statuses.append(int(assoc.send_c_store(pydicom.dcmread(f)).Status))
        finally:
            assoc.release()
        return statuses

    async with Server("OURSCP", handlers=registry) as server:
        statuses = await asyncio.wait_for(asyncio.to_thread(client, server.port), 60)
    assert statuses == [0, 0, 0, 0]
    assert stored == ["PID0", "PID1", "PID2"]
