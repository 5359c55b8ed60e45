"""SCP-side audit findings: every request gets exactly one response (PS3.7 9.1.1).

A handler returning a status that is not a 16-bit code (or raising a ServiceError with one)
used to make the response unencodable, so the SCU waited forever; now it gets a failure.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom.dataset import Dataset

from dimse import storage_scu
from dimse.association import Association
from dimse.connect import connect
from dimse.errors import ServiceError
from dimse.messages import CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP
from dimse.server import Server
from dimse.services import (
    FileSink,
    HandlerRegistry,
    ReceivedDataSet,
    RequestContext,
    file_sink_factory,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
BAD_STATUSES: list[Any] = [70000, -1, 0x10000, "abc", 1.5]
pytestmark = pytest.mark.timeout(60)


def make_ds() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.9.1"
    ds.PatientID = "P1"
    return ds


async def store_rsp(assoc: Association) -> CStoreRSP:
    sop_class, sop_instance, data, cx = storage_scu.prepare_store(assoc, make_ds())
    rsp, _ = await assoc.request(cx, storage_scu.store_builder(sop_class, sop_instance, 2, None),
                                 data)
    return cast(CStoreRSP, rsp)


async def echo_rsp(assoc: Association) -> CEchoRSP:
    rsp, _ = await assoc.request(assoc.context_for(VERIFICATION),
                                 lambda mid: CEchoRQ(message_id=mid))
    return cast(CEchoRSP, rsp)


def returning(value: Any, asynchronous: bool) -> Callable[..., Any]:
    def plain(*args: Any) -> Any:
        return value

    async def coroutine(*args: Any) -> Any:
        return value

    return coroutine if asynchronous else plain


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_invalid_handler_status_gives_a_failure_response(
        tmp_path: Path, asynchronous: bool) -> None:
    registry = HandlerRegistry()
    registry.on_store(returning(0, asynchronous))  # C-STORE offered from the start
    async with Server("SRV", handlers=registry) as server:
        for bad in BAD_STATUSES:
            registry.on_store(returning(bad, asynchronous), sink=file_sink_factory(tmp_path))
            registry.on_echo(returning(bad, asynchronous))
            async with connect("127.0.0.1", server.port, called_ae="SRV",
                               sop_classes=[CT, VERIFICATION], dimse_timeout=10) as assoc:
                for rsp in (await store_rsp(assoc), await echo_rsp(assoc)):
                    assert rsp.status == 0x0110, bad
                    assert "invalid status" in (rsp.error_comment or ""), bad
                assert await assoc.echo() == 0x0110  # the association still works
    assert list(tmp_path.iterdir()) == []  # the sink was discarded


async def test_unencodable_service_error_still_gets_a_response(tmp_path: Path) -> None:
    """A ServiceError with a bad status, a non-ASCII/long comment or bad tags is answered."""
    errors = iter([ServiceError(0x12345, "bad"), ServiceError(0xA900, "é" * 100, (1 << 40, 0x10,)),
                   ValueError("ü" * 100)])

    async def on_store(rq: CStoreRQ, ds: ReceivedDataSet, ctx: RequestContext) -> int:
        raise next(errors)

    registry = HandlerRegistry()
    registry.on_store(on_store, sink=file_sink_factory(tmp_path))
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT],
                           dimse_timeout=10) as assoc:
            first, second, third = [await store_rsp(assoc) for _ in range(3)]
    assert first.status == 0x0110
    assert "invalid status" in (first.error_comment or "")
    assert second.status == 0xA900
    assert second.error_comment == "?" * 64
    assert second.offending_element == (0x10,)
    assert third.status == 0x0110
    assert len(third.error_comment or "") == 64
    assert list(tmp_path.iterdir()) == []


async def test_valid_statuses_are_unchanged(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    registry.on_store(returning(0xB000, False), sink=file_sink_factory(tmp_path))
    registry.on_echo(returning(None, True))
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           sop_classes=[CT, VERIFICATION], dimse_timeout=10) as assoc:
            assert (await store_rsp(assoc)).status == 0xB000
            assert await assoc.echo() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.826.0.1.3680043.2.1143.9.1.dcm"]



# ------------------------------------------------------------------ FileSink memory per fragment


def test_tiny_fragments_do_not_cost_an_object_each(tmp_path: Path) -> None:
    """500,000 one-byte PDVs (under SINK_MEMORY_LIMIT, so all held) stay within a few MB."""
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT,
                  affected_sop_instance_uid="1.2.3.4", priority=0)
    sink = FileSink(tmp_path, rq, "1.2.840.10008.1.2.1")
    payload = bytes(range(256)) * 1954  # 500,224 bytes
    views = memoryview(payload)
    tracemalloc.start()
    try:
        for i in range(len(payload)):
            sink.write(views[i:i + 1])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * len(payload)  # one memoryview per byte held was ~200 bytes per byte
    sink.commit()
    assert (tmp_path / "1.2.3.4.dcm").read_bytes().endswith(payload)
    assert sink.size == len(payload)


def test_large_fragments_are_held_uncopied_between_small_ones(tmp_path: Path) -> None:
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT,
                  affected_sop_instance_uid="1.2.3.5", priority=0)
    sink = FileSink(tmp_path, rq, "1.2.840.10008.1.2.1")
    big = memoryview(b"B" * 65536)
    source = bytearray(b"a")
    pieces = [memoryview(source), memoryview(b"b"), big, memoryview(b"c"), big]
    for piece in pieces:
        sink.write(piece)
    source[0] = ord("z")  # a small fragment was copied: the buffer may change afterwards
    assert sum(c is big for c in sink._chunks) == 2  # the views, not copies
    assert len(sink._chunks) == 5  # meta, b"ab", big, b"c", big
    sink.commit()
    data = (tmp_path / "1.2.3.5.dcm").read_bytes()
    assert data.endswith(b"ab" + b"B" * 65536 + b"c" + b"B" * 65536)
