"""Third audit, Query/Retrieve (PS3.4 Annex C) findings.

* Leaving a C-FIND early sends C-CANCEL; the release then waited for nothing and overtook the
  SCP's final FE00 (a pynetdicom SCP never answered it: DimseTimeout). A release now waits for
  every operation's final response first.
* A C-FIND-RSP on another presentation context than its request was taken as the answer.
* Command (0000) and file meta (0002) elements in an identifier were echoed in every match;
  the SCU now refuses them and the SCP ignores them.
* A study or series row took the values of the last file indexed, so a file lacking the study
  description (a key object, a presentation state) blanked it.
* A C-FIND whose SOP class differs from its context's was refused as "not a served model".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from dimse import codec
from dimse.archive import Archive
from dimse.errors import AssociationAborted, DimseTimeout, IdentifierError
from dimse.messages import CFindRQ, CFindRSP, CommandField
from dimse.qr import Level, Mode, QueryModel, sop_class
from dimse.qr_model import Operation
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext
from tests.peers import free_port, wait_port

SR, PR = QueryModel.STUDY_ROOT, QueryModel.PATIENT_ROOT
SR_FIND = sop_class(SR, Operation.FIND)
PR_FIND = sop_class(PR, Operation.FIND)
EXPLICIT = "1.2.840.10008.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
KO = "1.2.840.10008.5.1.4.1.1.88.59"
pytestmark = pytest.mark.timeout(60)


def study_query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


# --------------------------------------------------------------------------- release after cancel


@pytest.fixture
def slow_pynetdicom_scp() -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom Study Root FIND SCP: 50 matches, 20 ms apart, FE00 once cancelled."""
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom import AE, evt

    events: list[str] = []

    def handle(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for i in range(50):
            if event.is_cancelled:
                events.append("FE00")
                yield 0xFE00, None
                return
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            yield 0xFF00, match
            time.sleep(0.02)
        events.append("0000")
        yield 0x0000, None

    def released(event: Any) -> None:
        events.append("released")

    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(SR_FIND)
    ae.dimse_timeout = 10
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, handle),
                                           (evt.EVT_RELEASED, released)])
    try:
        wait_port(port)
        yield port, events
    finally:
        server.shutdown()
    del pynetdicom


async def test_release_waits_for_the_final_response_after_a_cancel(
        slow_pynetdicom_scp: tuple[int, list[str]]) -> None:
    port, events = slow_pynetdicom_scp
    started = time.monotonic()
    async with connect_qr("127.0.0.1", port, called_ae="PYNETSCP", models=[SR],
                          dimse_timeout=8) as assoc:
        got = [m.StudyInstanceUID async for m in assoc.find(study_query(), limit=2)]
    assert got == ["1.2.3.0", "1.2.3.1"]
    assert time.monotonic() - started < 5  # released, not aborted after the DIMSE timeout
    for _ in range(100):
        if "released" in events:
            break
        await asyncio.sleep(0.02)
    assert events == ["FE00", "released"]


async def test_a_release_does_not_wait_past_its_timeout() -> None:
    """An SCP that never sends the final response: the release goes ahead after its timeout
    (the operation's own DIMSE timer would abort, but it is larger here)."""
    stalled = asyncio.Event()

    async def never_ends(ctx: RequestContext) -> None:
        stalled.set()
        await asyncio.sleep(30)

    registry = HandlerRegistry()
    registry.register(CommandField.C_FIND_RQ, never_ends)
    async with Server("SRV", handlers=registry, contexts={SR_FIND: [EXPLICIT]}) as server:
        assoc = await connect_qr("127.0.0.1", server.port, called_ae="SRV", models=[SR],
                                 dimse_timeout=20)
        stream = assoc.find(study_query())
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.wait_for(stalled.wait(), 10)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(DimseTimeout):  # the server does not answer the release either
            await assoc.release(timeout=0.5)
        assert time.monotonic() - started < 5
        await assoc.aclose()


# --------------------------------------------------------------------------- wrong context


async def test_a_response_on_another_context_aborts() -> None:
    async def elsewhere(ctx: RequestContext) -> None:
        rq = ctx.message
        assert isinstance(rq, CFindRQ)
        other = next(c for c in ctx.association.negotiated.contexts.values()
                     if c.context_id != ctx.context.context_id)
        await ctx.association.send_message(other.context_id, CFindRSP(
            message_id_being_responded_to=rq.message_id,
            affected_sop_class_uid=rq.affected_sop_class_uid, status=0))

    registry = HandlerRegistry()
    registry.register(CommandField.C_FIND_RQ, elsewhere)
    async with Server("SRV", handlers=registry,
                      contexts={SR_FIND: [EXPLICIT], PR_FIND: [EXPLICIT]}) as server:
        assoc = await connect_qr("127.0.0.1", server.port, called_ae="SRV", models=[SR, PR],
                                 dimse_timeout=10)
        with pytest.raises(AssociationAborted, match="presentation context"):
            async for _ in assoc.find(study_query(), model=SR):
                pass
        await assoc.aclose()


# --------------------------------------------------------------------------- group 0000/0002


def ct_instance(n: int, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = keys.pop("SOPClassUID", CT)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.55.{n}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1143.55"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.2.1143.55.0.{n}"
    ds.PatientID = "P55"
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT" if ds.SOPClassUID == CT else "KO"
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


@pytest.fixture
def qr_archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "store") as archive:
        archive.store(ct_instance(1, StudyDescription="KNEE", AccessionNumber="A1"))
        yield archive


async def test_command_and_file_meta_keys(qr_archive: Archive) -> None:
    ident = study_query(PatientID="P55", TransferSyntaxUID="", ErrorComment="x")
    server = archive_server(qr_archive, "QRSCP")
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  dimse_timeout=10) as assoc:
        with pytest.raises(IdentifierError, match=r"TransferSyntaxUID \(0002,0010\)"):
            async for _ in assoc.find(ident):
                pass
        matches = [m async for m in assoc.find(ident, mode=Mode.LENIENT)]  # sent anyway
    assert len(matches) == 1
    assert "TransferSyntaxUID" not in matches[0] and "ErrorComment" not in matches[0]
    assert matches[0].PatientID == "P55"


async def test_a_find_on_another_models_context_says_so(qr_archive: Archive) -> None:
    server = archive_server(qr_archive, "QRSCP")
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP", models=[SR, PR],
                                  dimse_timeout=10) as assoc:
        cx = assoc.context_for(SR_FIND)
        data = codec.encode(study_query(), cx.transfer_syntax)
        rsp, _ = await assoc.request(cx, lambda mid: CFindRQ(
            message_id=mid, affected_sop_class_uid=PR_FIND, priority=0), data)
    assert isinstance(rsp, CFindRSP) and rsp.status == 0x0122
    assert rsp.error_comment == "SOP class is not the presentation context's"


# --------------------------------------------------------------------------- shared rows


@pytest.mark.parametrize("order", ["described first", "described last"])
def test_a_file_lacking_study_values_does_not_blank_them(tmp_path: Path, order: str) -> None:
    described = ct_instance(1, StudyDescription="KNEE", AccessionNumber="A1",
                            ProcedureCodeSequence=Sequence([_code("P1")]))
    bare = ct_instance(2, SOPClassUID=KO)  # a key object note: no description, no accession
    files = [described, bare] if order == "described first" else [bare, described]
    with Archive(tmp_path / "store") as archive:
        for ds in files:
            archive.store(ds)
        _assert_study(archive)
    with Archive(tmp_path / "store", db_path=tmp_path / "fresh.sqlite") as rebuilt:
        rebuilt.index()  # the same files, indexed in the folder's order
        _assert_study(rebuilt)


def _code(value: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = value, "LOCAL"
    return item


def _assert_study(archive: Archive) -> None:
    query = study_query(StudyDescription="KNEE", AccessionNumber="",
                        ProcedureCodeSequence=Sequence([Dataset()]))
    [match] = list(archive.find(query, SR, Level.STUDY))
    assert match.AccessionNumber == "A1"
    assert match.ProcedureCodeSequence[0].CodeValue == "P1"
