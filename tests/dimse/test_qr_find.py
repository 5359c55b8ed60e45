"""C-FIND through the network, our SCU against our SCP (in process, 127.0.0.1).

Every model x level, each identifier rule broken on both sides, root-specific contexts, the
status policy of the SCP, C-CANCEL both ways (limit, aclose, break, task cancellation), flow
control and flat memory on a 10,000-match query.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dimse.archive import Archive
from dimse.errors import IdentifierError, NotNegotiatedError, ServiceError
from dimse.qr import MODELS, Level, Mode, QueryModel
from dimse.qr_scp import (
    STATUS_HANDLER_FAILED,
    FindRequest,
    Match,
    archive_find_handler,
    archive_server,
    find_extended_policy,
    qr_server_contexts,
    register_find,
)
from dimse.qr_scu import QueryFailed, connect_qr, find, find_contexts
from dimse.server import Server
from dimse.services import HandlerRegistry

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")]

PR, SR, PS = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT, QueryModel.PATIENT_STUDY_ONLY
ROOT = "1.2.826.0.1.3680043.10.4242."
# patient -> [(study suffix, [(modality, instances)])]
LAYOUT = {"P1": [("1", [("CT", 2), ("MR", 1)]), ("2", [("CT", 1)])],
          "P2": [("3", [("US", 3)])]}


def instance(pid: str, study: str, series: int, modality: str, number: int) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName = pid, f"Doe^{pid}"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyID = ROOT + study, "20240101", study
    ds.AccessionNumber, ds.StudyTime = "A" + study, "120000"
    ds.SeriesInstanceUID, ds.SeriesNumber = f"{ROOT}{study}.{series}", series
    ds.Modality = modality
    ds.SOPInstanceUID = f"{ROOT}{study}.{series}.{number}"
    ds.SOPClassUID, ds.InstanceNumber = CTImageStorage, number
    return ds


def fill(archive: Archive, datasets: Iterator[Dataset]) -> None:
    """Index data sets straight into the archive in one transaction (no files needed)."""
    with archive._lock, archive._db:
        for n, ds in enumerate(datasets):
            archive._upsert(ds, f"x/{n}.dcm", ExplicitVRLittleEndian, 10, 0)


def layout() -> Iterator[Dataset]:
    for pid, studies in LAYOUT.items():
        for study, series in studies:
            for s, (modality, count) in enumerate(series, 1):
                for i in range(1, count + 1):
                    yield instance(pid, study, s, modality, i)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    arc = Archive(tmp_path_factory.mktemp("qr-archive"))
    fill(arc, layout())
    yield arc
    arc.close()


@contextlib.asynccontextmanager
async def serving(archive: Archive, **kw: object) -> AsyncIterator[Server]:
    async with archive_server(archive, "QRSCP", **kw) as server:  # type: ignore[arg-type]
        yield server


def q(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# model, level, identifier, expected number of matches
VALID = [
    (PR, "PATIENT", q("PATIENT", PatientID="", PatientName=""), 2),
    (PR, "STUDY", q("STUDY", PatientID="P1", StudyInstanceUID=""), 2),
    (PR, "SERIES", q("SERIES", PatientID="P1", StudyInstanceUID=ROOT + "1", Modality=""), 2),
    (PR, "IMAGE", q("IMAGE", PatientID="P1", StudyInstanceUID=ROOT + "1",
                    SeriesInstanceUID=ROOT + "1.1", SOPInstanceUID=""), 2),
    (SR, "STUDY", q("STUDY", StudyInstanceUID="", PatientName="Doe*"), 3),
    (SR, "SERIES", q("SERIES", StudyInstanceUID=ROOT + "3", SeriesInstanceUID=""), 1),
    (SR, "IMAGE", q("IMAGE", StudyInstanceUID=ROOT + "3", SeriesInstanceUID=ROOT + "3.1",
                    SOPInstanceUID="", InstanceNumber=""), 3),
    (PS, "PATIENT", q("PATIENT", PatientID="P*"), 2),
    (PS, "STUDY", q("STUDY", PatientID="P2", StudyInstanceUID="", StudyDate=""), 1),
]


@pytest.mark.parametrize(("model", "level", "ident", "expected"), VALID,
                         ids=[f"{m.name}-{lv}" for m, lv, _, _ in VALID])
async def test_every_model_and_level(archive: Archive, model: QueryModel, level: str,
                                     ident: Dataset, expected: int) -> None:
    async with serving(archive) as server, \
            connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        matches = [m async for m in find(assoc, ident, model=model)]
    assert len(matches) == expected
    for m in matches:
        assert m.QueryRetrieveLevel == level
        # values in the default repertoire: no (0008,0005), never an empty one (PS3.4
        # C.4.1.1.3.2, Type 1C); a non-ASCII name brings ISO_IR 192
        assert m.get("SpecificCharacterSet", "ISO_IR 192") == "ISO_IR 192"
        assert ("SpecificCharacterSet" in m) == (not str(m.get("PatientName", "")).isascii())
        for keyword in ident.dir():
            assert keyword in m, keyword


# (model, identifier, offending tag) for each kind of violation of a C-FIND identifier
VIOLATIONS = {
    "level missing": (SR, Dataset(), 0x00080052),
    "level invalid": (SR, q("FOO", StudyInstanceUID=""), 0x00080052),
    "level not in model": (SR, q("PATIENT", PatientID=""), 0x00080052),
    "level not in psonly": (PS, q("SERIES", PatientID="P1", StudyInstanceUID=ROOT + "1",
                                  SeriesInstanceUID=""), 0x00080052),
    "unique above missing": (PR, q("STUDY", StudyInstanceUID=""), 0x00100020),
    "unique above wildcard": (PR, q("STUDY", PatientID="P*", StudyInstanceUID=""), 0x00100020),
    "key above": (SR, q("SERIES", StudyInstanceUID=ROOT + "1", StudyDate="20240101",
                        Modality=""), 0x00080020),
    "key below": (SR, q("STUDY", StudyInstanceUID="", SOPInstanceUID=""), 0x00080018),
    "unique at level wildcard": (SR, q("STUDY", StudyInstanceUID="1.2*"), 0x0020000D),
    "no keys": (SR, q("STUDY"), 0x00080052),
}


@dataclass
class Spy:
    """A FindHandler wrapper recording what reached the handler."""

    inner: object
    requests: list[FindRequest] = field(default_factory=list)

    def __call__(self, request: FindRequest) -> AsyncIterator[Dataset | Match]:
        self.requests.append(request)
        return self.inner(request)  # type: ignore[operator,no-any-return]


def spy_server(archive: Archive, handler: object = None, *, lenient: bool = False,
               models: tuple[QueryModel, ...] = (PR, SR, PS)) -> tuple[Server, Spy]:
    registry = HandlerRegistry()
    spy = Spy(handler or archive_find_handler(archive))
    register_find(registry, spy, models=models, lenient=lenient)
    server = Server("QRSCP", handlers=registry, contexts=qr_server_contexts(registry))
    import dataclasses

    server.policy = dataclasses.replace(server.policy, extended=find_extended_policy())
    return server, spy


@pytest.mark.parametrize("kind", list(VIOLATIONS))
async def test_violation_refused_on_both_sides(archive: Archive, kind: str) -> None:
    model, ident, tag = VIOLATIONS[kind]
    server, spy = spy_server(archive)
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        with pytest.raises(IdentifierError) as err:
            find(assoc, ident, model=model)
        assert tag in err.value.offending
        assert spy.requests == []  # strict SCU: nothing was sent
        with pytest.raises(QueryFailed) as failed:
            async for _ in find(assoc, ident, model=model, mode=Mode.LENIENT):
                pass
        assert failed.value.status == 0xA900
        assert tag in failed.value.offending_elements
        assert failed.value.comment
        assert spy.requests == []  # the SCP refused before calling the handler
        assert await assoc.echo() == 0  # the association survived


async def test_relational_needs_negotiation_and_then_passes(archive: Archive) -> None:
    ident = q("SERIES", Modality="CT", SeriesInstanceUID="")
    async with serving(archive) as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
            with pytest.raises(IdentifierError):
                find(assoc, ident, model=SR, mode=Mode.RELATIONAL)
        async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                              relational=True) as assoc:
            matches = [m async for m in find(assoc, ident, model=SR, mode=Mode.RELATIONAL)]
            lenient = [m async for m in find(assoc, ident, model=SR, mode=Mode.LENIENT)]
    assert len(matches) == 2 == len(lenient)


async def test_lenient_scp_processes_hierarchy_violations(archive: Archive) -> None:
    server, spy = spy_server(archive, lenient=True)
    ident = q("STUDY", StudyInstanceUID="")
    ident.PatientID = "P2"
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        got = [m async for m in find(assoc, q("SERIES", Modality="US", SeriesInstanceUID=""),
                                     model=SR, mode=Mode.LENIENT)]
        assert [m.Modality for m in got] == ["US"]
        with pytest.raises(QueryFailed):  # a level the model lacks still fails
            async for _ in find(assoc, q("PATIENT", PatientID=""), model=SR, mode=Mode.LENIENT):
                pass
    assert len(spy.requests) == 1


async def test_request_travels_on_its_models_context(archive: Archive) -> None:
    server, spy = spy_server(archive)
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        for model, _, ident, _ in VALID:
            async for _ in find(assoc, ident, model=model):
                pass
    assert [r.ctx.context.abstract_syntax for r in spy.requests] == \
        [MODELS[m].find for m, _, _, _ in VALID]
    assert [r.model for r in spy.requests] == [m for m, _, _, _ in VALID]


async def test_model_not_accepted_fails_locally(archive: Archive) -> None:
    server, spy = spy_server(archive)
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  models=[SR]) as assoc:
        with pytest.raises(NotNegotiatedError):
            find(assoc, q("PATIENT", PatientID=""), model=PR)
        assert len([m async for m in find(assoc, q("STUDY", StudyInstanceUID=""))]) == 3
    assert len(spy.requests) == 1


async def test_model_not_served_is_0122(archive: Archive) -> None:
    server, spy = spy_server(archive, models=(SR,))  # contexts accept all three
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        with pytest.raises(QueryFailed) as failed:
            async for _ in find(assoc, q("PATIENT", PatientID=""), model=PR):
                pass
    assert failed.value.status == 0x0122
    assert spy.requests == []


def test_find_contexts() -> None:
    contexts, extended = find_contexts([PR, SR], relational=True, verification=False)
    assert [uid for uid, _ in contexts] == [MODELS[PR].find, MODELS[SR].find]
    assert extended == {MODELS[PR].find: b"\x01", MODELS[SR].find: b"\x01"}
    with pytest.raises(ValueError):
        find_contexts([QueryModel.COMPOSITE_INSTANCE_ROOT])


# --------------------------------------------------------------------------- SCP status policy


async def _run_with(handler: object, ident: Dataset | None = None) -> list[Dataset]:
    server, _ = spy_server(None, handler)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        return [m async for m in find(assoc, ident or q("STUDY", StudyInstanceUID=""))]


async def test_handler_matches_get_level_and_charset() -> None:
    async def handler(request: FindRequest) -> AsyncIterator[Dataset | Match]:
        ds = Dataset()
        ds.StudyInstanceUID = "1.2.3"
        yield ds
        yield Match(ds, optional_keys_unsupported=True)  # FF01

    got = await _run_with(handler)
    assert len(got) == 2
    for m in got:
        assert m.QueryRetrieveLevel == "STUDY"
        assert "SpecificCharacterSet" not in m  # ASCII only: left out, not sent empty


async def test_handler_exception_is_a_failure_status(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        yield q("STUDY", StudyInstanceUID="1.2.3")
        raise RuntimeError("database on fire")

    with pytest.raises(QueryFailed) as failed:
        await _run_with(handler)
    assert failed.value.status == STATUS_HANDLER_FAILED
    assert "database on fire" in failed.value.comment
    assert failed.value.matches == 1
    assert "C-FIND handler failed" in caplog.text


async def test_handler_service_error_status() -> None:
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        raise ServiceError(0xA700, "too many matches")
        yield Dataset()  # pragma: no cover

    with pytest.raises(QueryFailed) as failed:
        await _run_with(handler)
    assert (failed.value.status, failed.value.comment) == (0xA700, "too many matches")


# --------------------------------------------------------------------------- C-CANCEL


class Endless:
    """A handler producing matches until cancelled; records how it ended."""

    def __init__(self, delay: float = 0.0, block_after: int | None = None) -> None:
        self.delay = delay
        self.block_after = block_after
        self.produced = 0
        self.closed = asyncio.Event()

    async def __call__(self, request: FindRequest) -> AsyncIterator[Dataset]:
        try:
            while True:
                if self.block_after is not None and self.produced >= self.block_after:
                    await asyncio.Event().wait()  # a handler stuck on a slow back end
                await asyncio.sleep(self.delay)
                self.produced += 1
                yield q("STUDY", StudyInstanceUID=f"1.2.3.{self.produced}")
        finally:
            self.closed.set()


@contextlib.asynccontextmanager
async def endless_assoc(handler: Endless) -> AsyncIterator[object]:
    server, _ = spy_server(None, handler)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  dimse_timeout=10) as assoc:
        yield assoc


async def test_limit_sends_cancel_and_drains() -> None:
    handler = Endless(delay=0.001)
    async with endless_assoc(handler) as assoc:
        got = [m async for m in find(assoc, q("STUDY", StudyInstanceUID=""),  # type: ignore[arg-type]
                                     limit=5)]
        assert len(got) == 5
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert await assoc.echo() == 0  # type: ignore[attr-defined]


async def test_cancel_reaches_a_blocked_handler_promptly() -> None:
    handler = Endless(block_after=3)
    async with endless_assoc(handler) as assoc:
        got = [m async for m in find(assoc, q("STUDY", StudyInstanceUID=""),  # type: ignore[arg-type]
                                     limit=3)]
        assert len(got) == 3
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert await assoc.echo() == 0  # type: ignore[attr-defined]


async def test_aclose_and_break_cancel() -> None:
    handler = Endless(delay=0.001)
    async with endless_assoc(handler) as assoc:
        matches = find(assoc, q("STUDY", StudyInstanceUID=""))  # type: ignore[arg-type]
        assert (await anext(matches)).StudyInstanceUID
        await matches.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(handler.closed.wait(), 5)
        handler.closed.clear()
        async for _ in find(assoc, q("STUDY", StudyInstanceUID="")):  # type: ignore[arg-type]
            break
        gc.collect()
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert await assoc.echo() == 0  # type: ignore[attr-defined]


async def test_cancelling_the_consumer_task_cancels_the_query() -> None:
    handler = Endless(delay=0.001)
    async with endless_assoc(handler) as assoc:
        seen = asyncio.Event()

        async def consume() -> None:
            async for _ in find(assoc, q("STUDY", StudyInstanceUID="")):  # type: ignore[arg-type]
                seen.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(seen.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert await assoc.echo() == 0  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- flow control, memory


async def test_slow_consumer_holds_the_scp_back() -> None:
    big = "x" * 8000

    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(5_000):
            produced[0] = i + 1
            ds = q("STUDY", StudyInstanceUID=f"1.2.3.{i}")
            ds.StudyDescription = "D"
            ds.PatientComments = big
            yield ds

    produced = [0]
    server, _ = spy_server(None, handler)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        matches = find(assoc, q("STUDY", StudyInstanceUID=""), buffer=8)
        for _ in range(5):
            await anext(matches)
        await asyncio.sleep(0.5)  # the consumer stalls: buffers fill, then everything waits
        stalled_at = produced[0]
        assert stalled_at < 5_000 // 2, stalled_at  # 40 MB were not read ahead
        count = 5 + len([m async for m in matches])
    assert count == 5_000


def _big_matches(count: int, size: int = 8000) -> object:
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(count):
            ds = q("STUDY", StudyInstanceUID=f"1.2.3.{i}")
            ds.PatientComments = "x" * size
            yield ds
    return handler


async def test_consumer_slower_than_the_dimse_timeout_gets_every_match() -> None:
    """Reading paused by our back-pressure suspends the DIMSE timer: only the peer is timed."""
    server, _ = spy_server(None, _big_matches(200))  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  dimse_timeout=0.3) as assoc:
        got, paused = 0, []
        async for _ in find(assoc, q("STUDY", StudyInstanceUID=""), buffer=4):
            got += 1
            if got in (1, 60, 150):
                await asyncio.sleep(0.7)  # longer than dimse_timeout, twice over
                paused.append(assoc._gate.paused)
        assert got == 200
        assert paused[0] and any(paused), paused  # the test really ran with reading paused
        assert await assoc.echo() == 0


async def test_break_while_reading_is_paused_cancels_and_drains() -> None:
    handler = Endless()
    big = "y" * 8000

    async def padded(request: FindRequest) -> AsyncIterator[Dataset]:
        async for ds in handler(request):
            ds.PatientComments = big
            yield ds

    server, _ = spy_server(None, padded)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  dimse_timeout=5) as assoc:
        async for _ in find(assoc, q("STUDY", StudyInstanceUID=""), buffer=2):
            await asyncio.sleep(0.3)
            assert assoc._gate.paused
            break
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert await asyncio.wait_for(assoc.echo(), 5) == 0
        assert not assoc._pending and not assoc._gate.paused


async def test_association_find_method() -> None:
    handler = Endless()
    async with endless_assoc(handler) as assoc:
        got = [m async for m in assoc.find(  # type: ignore[attr-defined]
            q("STUDY", StudyInstanceUID=""), model=SR, limit=4)]
        assert [m.StudyInstanceUID for m in got] == [f"1.2.3.{i}" for i in range(1, 5)]
        await asyncio.wait_for(handler.closed.wait(), 5)


def _big_archive(path: Path, n: int) -> Archive:
    """n instances of one series, inserted straight into the index tables (fast, no files)."""
    arc = Archive(path)
    db = arc._db
    with arc._lock, db:
        pid = db.execute("INSERT INTO patient (patient_id, issuer, patient_name, patient_name_f) "
                         "VALUES ('BIG', '', 'Big^Pat', 'BIG^PAT') RETURNING id").fetchone()[0]
        sid = db.execute("INSERT INTO study (patient_ref, study_uid, study_date) VALUES "
                         "(?, ?, '20200101') RETURNING id", (pid, ROOT + "9")).fetchone()[0]
        seid = db.execute("INSERT INTO series (study_ref, series_uid, modality) VALUES "
                          "(?, ?, 'CT') RETURNING id", (sid, ROOT + "9.1")).fetchone()[0]
        db.executemany("INSERT INTO instance (series_ref, sop_uid, sop_class, instance_number, "
                       "path, transfer_syntax, size) VALUES (?, ?, ?, ?, ?, ?, 10)",
                       ((seid, f"{ROOT}9.1.{i}", CTImageStorage, i, f"x/{i}.dcm",
                         ExplicitVRLittleEndian) for i in range(n)))
    return arc


@pytest.mark.slow
async def test_ten_thousand_matches_with_flat_memory(tmp_path: Path) -> None:
    arc = _big_archive(tmp_path, 10_000)
    ident = q("IMAGE", StudyInstanceUID=ROOT + "9", SeriesInstanceUID=ROOT + "9.1",
              SOPInstanceUID="", InstanceNumber="")
    peaks: list[int] = []
    try:
        async with serving(arc) as server, \
                connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
            tracemalloc.start()
            count, last = 0, Dataset()
            async for m in find(assoc, ident):
                count, last = count + 1, m
                if count in (1_000, 10_000):
                    peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    finally:
        tracemalloc.stop()
        arc.close()
    assert count == 10_000
    small, full = peaks
    assert full < small * 1.5 + 500_000, (small, full)  # flat: not proportional to matches
    assert full < 8_000_000, full
    assert last.SOPInstanceUID == f"{ROOT}9.1.9999"


# --------------------------------------------------------------------------- pre-encoded matches


def _encoded(uid: str, ts: str, *, complete: bool = True) -> bytes:
    from dimse import codec

    ds = q("STUDY", StudyInstanceUID=uid) if complete else Dataset()
    if complete:
        ds.SpecificCharacterSet = "ISO_IR 100"
    else:
        ds.StudyInstanceUID = uid
    return codec.encode(ds, ts)


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_has_required_keys_walks_headers(ts: str) -> None:
    from dimse.qr_scp import has_required_keys

    assert has_required_keys(_encoded("1.2.3", ts), ts)
    assert not has_required_keys(_encoded("1.2.3", ts, complete=False), ts)


async def test_encoded_matches_pass_through_or_are_transcoded() -> None:
    from dimse.qr_scp import EncodedMatch

    sent: list[bytes] = []

    async def handler(request: FindRequest) -> AsyncIterator[EncodedMatch]:
        ts = request.ctx.context.transfer_syntax
        same = _encoded("1.2.3.1", ts)
        sent.append(same)
        yield EncodedMatch(same, ts)
        other = "1.2.840.10008.1.2.2" if ts != "1.2.840.10008.1.2.2" else "1.2.840.10008.1.2"
        yield EncodedMatch(_encoded("1.2.3.2", other), other, optional_keys_unsupported=True)

    server, _ = spy_server(None, handler)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP") as assoc:
        got = [m async for m in find(assoc, q("STUDY", StudyInstanceUID=""))]
    assert [m.StudyInstanceUID for m in got] == ["1.2.3.1", "1.2.3.2"]
    assert all(m.QueryRetrieveLevel == "STUDY" and "SpecificCharacterSet" in m for m in got)
    assert sent and got[0].SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize("error,status", [
    (ServiceError(70000, "too big"), 0xC001),
    (ServiceError(0xA700, "Überlauf " * 20), 0xA700),
    (ServiceError(0xC000, "x", (0x00100010, -5, "bad")), 0xC000),  # type: ignore[arg-type]
])
async def test_unencodable_handler_error_still_answers(error: ServiceError, status: int) -> None:
    """A ServiceError whose status, comment or tags the command cannot carry still gets a
    final response (PS3.7 9.1.1), never silence."""
    async def failing(request: FindRequest) -> AsyncIterator[Dataset]:
        # a fresh copy: raising the module-level parameter itself would pin this test's
        # frames (and its associations) in its __traceback__ for the rest of the session
        raise ServiceError(error.status, error.comment, error.offending_elements)
        yield q("STUDY")  # pragma: no cover

    server, _ = spy_server(None, failing)  # type: ignore[arg-type]
    async with server, connect_qr("127.0.0.1", server.port, called_ae="QRSCP",
                                  dimse_timeout=5) as assoc:
        with pytest.raises(QueryFailed) as failed:
            async for _ in find(assoc, q("STUDY", StudyInstanceUID="")):
                pass
    assert failed.value.status == status
    assert failed.value.comment.isascii() and len(failed.value.comment) <= 64


@pytest.mark.parametrize(("declared", "request_charset", "expected"), [
    (None, None, "ISO_IR 192"),  # a non-ASCII name and no charset anywhere: UTF-8 declared
    ("", None, "ISO_IR 192"),  # an empty value is no declaration
    ("", "ISO_IR 100", "ISO_IR 100"),  # the request's, as before
    ("ISO_IR 100", None, "ISO_IR 100"),  # the handler's own
])
async def test_handler_match_charset_declared_for_its_values(
        declared: str | None, request_charset: str | None, expected: str) -> None:
    """A non-ASCII match with no or an empty (0008,0005) was written in the default encoding
    with an empty Specific Character Set: Latin-1 bytes the SCU read as ASCII."""
    async def handler(request: FindRequest) -> AsyncIterator[Dataset]:
        ds = Dataset()
        if declared is not None:
            ds.SpecificCharacterSet = declared
        ds.StudyInstanceUID, ds.PatientName = "1.2.3", "M\u00fcller^Hans"
        yield ds

    ident = q("STUDY", StudyInstanceUID="", PatientName="")
    if request_charset is not None:
        ident.SpecificCharacterSet = request_charset
    got = await _run_with(handler, ident)
    assert [(m.SpecificCharacterSet, str(m.PatientName)) for m in got] == [
        (expected, "M\u00fcller^Hans")]


def test_archive_response_bytes_carry_no_empty_charset(archive: Archive) -> None:
    """The encoded fast path wrote (0008,0005) with length 0 into every ASCII-only response."""
    ident = q("STUDY", StudyInstanceUID="", PatientID="")
    result = archive.find_encoded(ident, QueryModel.STUDY_ROOT, Level.STUDY,
                                  ExplicitVRLittleEndian)
    assert result.templated
    encoded = list(result.matches)
    assert encoded
    for data in encoded:
        assert not bytes(data).startswith(b"\x08\x00\x05\x00")
        assert b"\x08\x00\x05\x00CS\x00\x00" not in bytes(data)
