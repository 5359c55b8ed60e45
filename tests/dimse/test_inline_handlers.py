"""Plain-function handlers run inline (no task per request), with the same outcomes as async ones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from dimse.association import Association
from dimse.connect import connect
from dimse.errors import ServiceError
from dimse.messages import CEchoRQ, CStoreRQ
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet, RequestContext, file_sink_factory

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
pytestmark = pytest.mark.timeout(60)


def make_ds(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.7.{n}"
    ds.PatientID = f"P{n}"
    return ds


class TaskCounter:
    """Counts the tasks the server's associations create to perform requests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = Association._perform

        def counting(assoc: Association, *args: Any) -> Any:
            self.count += 1
            return original(assoc, *args)

        monkeypatch.setattr(Association, "_perform", counting)


async def test_plain_store_handler_into_a_sink_runs_without_a_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Path]] = []

    def on_store(rq: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> int:
        seen.append((rq.affected_sop_instance_uid, dataset.sink.temp_path))  # type: ignore[union-attr]
        return 0xB000 if rq.affected_sop_instance_uid.endswith(".2") else 0

    registry = HandlerRegistry()
    registry.on_store(on_store, sink=file_sink_factory(tmp_path))
    tasks = TaskCounter(monkeypatch)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT, VERIFICATION]) as assoc:
            assert await assoc.store_many(make_ds(i) for i in range(4)) == [0, 0, 0xB000, 0]
            assert await assoc.echo() == 0  # the default echo handler is a plain function too
    assert tasks.count == 0
    assert [uid[-1] for uid, _ in seen] == ["0", "1", "2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"1.2.826.0.1.3680043.2.1143.7.{i}.dcm" for i in range(4)]  # a warning still commits
    assert pydicom.dcmread(tmp_path / "1.2.826.0.1.3680043.2.1143.7.3.dcm").PatientID == "P3"


async def test_plain_handler_failures_become_statuses(tmp_path: Path) -> None:
    def on_store(rq: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> int:
        if rq.affected_sop_instance_uid.endswith(".1"):
            raise ServiceError(0xA900, "not this one")
        if rq.affected_sop_instance_uid.endswith(".2"):
            raise RuntimeError("boom")
        return 0xC001  # a failure status: the file is discarded

    def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        raise ValueError("no echo today")

    registry = HandlerRegistry()
    registry.on_store(on_store, sink=file_sink_factory(tmp_path))
    registry.on_echo(on_echo)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT, VERIFICATION]) as assoc:
            assert await assoc.store_many(make_ds(i) for i in range(1, 4)) == [
                0xA900, 0x0110, 0xC001]
            assert await assoc.echo() == 0x0110
            assert await assoc.store(make_ds(4)) == 0xC001  # the association is still fine
    assert list(tmp_path.iterdir()) == []


async def test_plain_handler_returning_an_awaitable_finishes_in_a_task(
        monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []

    async def later(dataset: ReceivedDataSet) -> int:
        await asyncio.sleep(0.01)
        received.append(bytes(dataset.data or b""))
        return 0

    def on_store(rq: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> Any:
        return later(dataset)  # a plain function handing back a coroutine

    registry = HandlerRegistry()
    registry.on_store(on_store)  # no sink: the data set arrives in memory
    tasks = TaskCounter(monkeypatch)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            assert await assoc.store_many([make_ds(1), make_ds(2)]) == [0, 0]
    assert tasks.count == 2 and len(received) == 2
    assert b"P1" in received[0] and b"P2" in received[1]


async def test_response_waits_when_the_transport_is_paused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """send_now refuses while writing is paused; the response then goes out from a task."""
    monkeypatch.setattr(Association, "send_now", lambda self, cid, msg: False)
    tasks = TaskCounter(monkeypatch)
    async with Server("SRV") as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
            assert await assoc.echo() == 0
            assert await assoc.echo() == 0
    assert tasks.count == 2


async def test_async_handlers_still_get_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        await asyncio.sleep(0)
        return 0

    class Callable:
        async def __call__(self, rq: CStoreRQ, dataset: ReceivedDataSet,
                           ctx: RequestContext) -> int:
            return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    registry.on_store(Callable())
    assert registry.inline(0x0030) is None and registry.inline(0x0001) is None
    tasks = TaskCounter(monkeypatch)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT, VERIFICATION]) as assoc:
            assert await assoc.echo() == 0
            assert await assoc.store(make_ds(1)) == 0
    assert tasks.count == 2
