"""C-FIND against real peers on 127.0.0.1, both directions.

Our SCU against DCMTK dcmqrscp (three models) and a pynetdicom SCP (with C-CANCEL); DCMTK
findscu (-P, -S, -O) and a pynetdicom SCU (with C-CANCEL) against our archive SCP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dimse.archive import Archive
from dimse.qr import MODELS, QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr, find
from tests.dimse.test_qr_find import Endless, spy_server
from tests.peers import (
    dcmqrscp_config,
    dcmtk,
    free_port,
    index_files,
    make_ct,
    run_dcmqrscp,
    run_tool_async,
    storage_dir,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
PR, SR, PS = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT, QueryModel.PATIENT_STUDY_ONLY
ROOT = "1.2.826.0.1.3680043.10.4343."


def ct_files(folder: Path) -> list[Path]:
    """Two patients: P1 with studies 1 and 2, P2 with study 3; two instances per series."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pid, study in (("P1", "1"), ("P1", "2"), ("P2", "3")):
        for n in (1, 2):
            out.append(make_ct(folder / f"{study}-{n}.dcm", patient_id=pid,
                               patient_name=f"Doe^{pid}", study_uid=ROOT + study,
                               series_uid=f"{ROOT}{study}.1", sop_uid=f"{ROOT}{study}.1.{n}",
                               study_id=study, accession_number="A" + study))
    return out


def q(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


QUERIES = [
    (PR, q("PATIENT", PatientID="", PatientName=""), "PatientID", ["P1", "P2"]),
    (PR, q("STUDY", PatientID="P1", StudyInstanceUID=""), "StudyInstanceUID",
     [ROOT + "1", ROOT + "2"]),
    (SR, q("STUDY", StudyInstanceUID="", PatientName="Doe^P2"), "StudyInstanceUID", [ROOT + "3"]),
    (SR, q("IMAGE", StudyInstanceUID=ROOT + "1", SeriesInstanceUID=ROOT + "1.1",
           SOPInstanceUID=""), "SOPInstanceUID", [f"{ROOT}1.1.1", f"{ROOT}1.1.2"]),
    (PS, q("STUDY", PatientID="P2", StudyInstanceUID=""), "StudyInstanceUID", [ROOT + "3"]),
    (PS, q("PATIENT", PatientID=""), "PatientID", ["P1", "P2"]),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("find-interop")
    ct_files(folder)
    arc = Archive(folder)
    arc.index()
    yield arc
    arc.close()


# --------------------------------------------------------------------------- our SCU


async def test_our_scu_against_dcmqrscp(tmp_path: Path) -> None:
    port = free_port()
    config = dcmqrscp_config(tmp_path, "DCMQR", port)
    index_files(config, "DCMQR", ct_files(tmp_path / "src"))
    assert storage_dir(config, "DCMQR").is_dir()
    with run_dcmqrscp(config, port):
        async with connect_qr("127.0.0.1", port, called_ae="DCMQR") as assoc:
            for model in (PR, SR, PS):
                assert assoc.negotiated.context_for(MODELS[model].find) is not None
            for model, ident, key, expected in QUERIES:
                got = sorted([str(m.get(key)) async for m in find(assoc, ident, model=model)])
                assert got == expected, (model, ident)
            assert await assoc.echo() == 0


async def test_our_scu_declares_utf8_for_non_ascii_keys_to_dcmqrscp(tmp_path: Path) -> None:
    """A non-ASCII key without Specific Character Set goes out with ISO_IR 192 declared (PS3.4
    C.4.1.1.3.1): dcmqrscp then matches the Latin-1 name it holds (undeclared, it finds none)."""
    import pydicom

    port = free_port()
    config = dcmqrscp_config(tmp_path, "DCMQR", port)
    path = make_ct(tmp_path / "latin1.dcm", patient_id="P9", study_uid=ROOT + "9",
                   series_uid=ROOT + "9.1", sop_uid=ROOT + "9.1.1")
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.save_as(path)
    index_files(config, "DCMQR", [path])
    query = q("PATIENT", PatientID="", PatientName="Müller*")
    with run_dcmqrscp(config, port):
        async with connect_qr("127.0.0.1", port, called_ae="DCMQR") as assoc:
            got = [m async for m in find(assoc, query, model=PR)]
    assert [str(m.PatientID) for m in got] == ["P9"]
    assert str(got[0].PatientName) == "Müller^Jürgen"
    assert "SpecificCharacterSet" not in query  # the caller's data set is left as it was


def _pynetdicom_scp(port: int, matches: int, delay: float, seen: dict[str, object]) -> object:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        Verification,
    )

    def handle_find(event: object) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier  # type: ignore[attr-defined]
        seen["level"] = ident.QueryRetrieveLevel
        seen["sop_class"] = event.context.abstract_syntax  # type: ignore[attr-defined]
        for i in range(matches):
            if event.is_cancelled:  # type: ignore[attr-defined]
                seen["cancelled_after"] = i
                yield 0xFE00, None
                return
            time.sleep(delay)
            ds = Dataset()  # no QueryRetrieveLevel: some peers omit it
            ds.StudyInstanceUID = f"1.2.3.{i}"
            yield 0xFF01 if i % 2 else 0xFF00, ds

    ae = AE(ae_title="PYNETSCP")
    for uid in (PatientRootQueryRetrieveInformationModelFind,
                StudyRootQueryRetrieveInformationModelFind, Verification):
        ae.add_supported_context(uid)
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_C_FIND, handle_find)])


async def test_our_scu_against_pynetdicom_scp_with_cancel() -> None:
    port = free_port()
    seen: dict[str, object] = {}
    server = _pynetdicom_scp(port, 200, 0.002, seen)
    try:
        async with connect_qr("127.0.0.1", port, called_ae="PYNETSCP") as assoc:
            ident = q("STUDY", StudyInstanceUID="")
            got = [m async for m in find(assoc, ident, model=SR)]
            assert len(got) == 200  # FF00 and FF01 alike, no level in the responses
            assert seen["sop_class"] == MODELS[SR].find
            with pytest.raises(Exception) as err:  # Patient/Study Only was not accepted
                find(assoc, q("PATIENT", PatientID=""), model=PS)
            assert type(err.value).__name__ == "NotNegotiatedError"
            got = [m async for m in find(assoc, ident, model=SR, limit=3)]
            assert len(got) == 3
            assert await assoc.echo() == 0
        assert isinstance(seen.get("cancelled_after"), int)
        assert int(seen["cancelled_after"]) < 200  # type: ignore[call-overload]
    finally:
        server.shutdown()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- our SCP


@pytest.mark.parametrize(("flag", "keys", "expected"), [
    ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID"], 2),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName=Doe*"], 3),
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={ROOT}3", "SeriesInstanceUID"], 1),
    ("-O", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName"], 2),
])
async def test_dcmtk_findscu_against_our_scp(archive: Archive, flag: str, keys: list[str],
                                             expected: int) -> None:
    findscu = dcmtk("findscu")
    async with archive_server(archive, "OURQR") as server:
        args = [findscu, "-v", flag, "-aec", "OURQR"]
        for k in keys:
            args += ["-k", k]
        code, out = await run_tool_async([*args, "127.0.0.1", str(server.port)])
    assert code == 0, out
    assert out.count("(Pending)") == expected, out
    assert "Received Final Find Response (Success)" in out, out
    assert out.count("QueryRetrieveLevel") == expected + 1  # the request and every match


async def test_dcmtk_findscu_violation_gets_a900(archive: Archive) -> None:
    findscu = dcmtk("findscu")
    async with archive_server(archive, "OURQR") as server:
        code, out = await run_tool_async([findscu, "-v", "-P", "-aec", "OURQR", "-k",
                                "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                                "127.0.0.1", str(server.port)])
    assert "DataSetDoesNotMatchSOPClass" in out, out
    assert "(Pending)" not in out


def _pynetdicom_find(port: int, ident: Dataset, cancel_after: int | None = None,
                     called_ae: str = "OURQR", dimse_timeout: float = 20) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.network_timeout = 20
    ae.dimse_timeout = dimse_timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    statuses: list[int] = []
    try:
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == FIND)
        for status, _ds in assoc.send_c_find(ident, FIND, msg_id=7):
            if status is None:
                break
            statuses.append(int(status.Status))
            if cancel_after is not None and len(statuses) == cancel_after:
                assoc.send_c_cancel(7, cx.context_id)
    finally:
        assoc.release()
    return statuses


async def test_pynetdicom_scu_against_our_scp(archive: Archive) -> None:
    async with archive_server(archive, "OURQR") as server:
        statuses = await asyncio.wait_for(asyncio.to_thread(
            _pynetdicom_find, server.port, q("STUDY", StudyInstanceUID="", PatientID="")), 30)
    assert statuses == [0xFF00] * 3 + [0x0000]


async def test_pynetdicom_uid_list_longer_than_64k_arrives_as_un_and_matches(archive: Archive
                                                                              ) -> None:
    """4,000 UIDs do not fit UI's 16-bit length in Explicit VR: pydicom sends the key as UN
    (PS3.5 6.2.2); our SCP reads it with its dictionary VR and matches each UID."""
    uids = [f"{ROOT}{n}" for n in range(4, 4000)] + [ROOT + "1", ROOT + "3"]
    ident = q("STUDY", PatientID="")
    ident.StudyInstanceUID = uids
    async with archive_server(archive, "OURQR") as server:
        statuses = await asyncio.wait_for(asyncio.to_thread(
            _pynetdicom_find, server.port, ident), 30)
    assert statuses == [0xFF00] * 2 + [0x0000]


async def test_pynetdicom_scu_cancels_against_our_scp() -> None:
    handler = Endless(delay=0.002)
    server, _spy = spy_server(None, handler)  # type: ignore[arg-type]
    async with server:
        statuses = await asyncio.wait_for(asyncio.to_thread(
            _pynetdicom_find, server.port, q("STUDY", StudyInstanceUID=""), 5, "QRSCP"), 30)
        await asyncio.wait_for(handler.closed.wait(), 5)
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) < 200


async def test_pynetdicom_scu_cancels_a_blocked_large_query_promptly() -> None:
    """The handler hangs after 50 matches (a stuck back end): the C-CANCEL alone must end it.

    pynetdicom gives up after its DIMSE timeout (3 s) without a final response, so FE00 as the
    last status proves our SCP answered the cancel without waiting for the handler.
    """
    handler = Endless(block_after=50)
    server, _spy = spy_server(None, handler)  # type: ignore[arg-type]
    async with server:
        statuses = await asyncio.wait_for(asyncio.to_thread(
            _pynetdicom_find, server.port, q("STUDY", StudyInstanceUID=""), 50, "QRSCP", 3), 30)
        await asyncio.wait_for(handler.closed.wait(), 5)
    assert statuses == [0xFF00] * 50 + [0xFE00]


async def test_cli_qrscp_subprocess_serves_findscu(tmp_path: Path) -> None:
    import sys

    ct_files(tmp_path / "store")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dimse", "qrscp", "--storage", str(tmp_path / "store"),
        "--aet", "CLIQR", "--port", str(port), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"listening" in line
        code, out = await run_tool_async([dcmtk("findscu"), "-v", "-S", "-aec", "CLIQR", "-k",
                                "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                                "127.0.0.1", str(port)])
        assert code == 0 and out.count("(Pending)") == 3, out
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def test_threads_left_behind_are_daemons() -> None:
    """pynetdicom servers are shut down: no non-daemon thread of theirs remains (the module's
    archive, still open here, keeps its own worker threads until it is closed)."""
    leftovers = [t for t in threading.enumerate()
                 if not t.daemon and t is not threading.main_thread()
                 and not t.name.startswith("dimse-archive")]
    assert leftovers == []

