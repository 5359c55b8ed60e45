"""Session 6 fixes from the fuzz campaign (notes/audit6/fuzz.md, "for other owners").

- A C-STORE whose data set holds a value its VR cannot hold (a SOP Class UID sent as FL, an
  Instance Number as FD with 2 bytes) is refused with 0xC000 and a warning, streamed or in
  memory; it used to fail in the handler with a logged traceback and 0x0110.
- A deflated C-FIND identifier is inflated to at most MAX_IDENTIFIER_INFLATED bytes: an 11 KB
  deflate bomb used to cost the event loop seconds of CPU.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dimse.archive import Archive
from dimse.archive_store import archive_store_handler
from dimse.connect import connect
from dimse.instances import encode_instance
from dimse.messages import CFindRQ, CFindRSP
from dimse.qr import QueryModel, sop_class
from dimse.qr_model import Operation
from dimse.qr_scp import (
    MAX_IDENTIFIER_INFLATED,
    archive_find_handler,
    archive_server,
    qr_server_contexts,
    register_find,
)
from dimse.server import Server
from dimse.services import HandlerRegistry
from tests.dimse.test_archive_store import ROOT, files, instance, send

pytestmark = pytest.mark.timeout(60)

#: (element header as encoded, the same header with a VR that cannot hold its value)
WRONG_VRS = [(b"\x08\x00\x16\x00UI", b"\x08\x00\x16\x00FL"),   # SOP Class UID: 26 bytes as FL
             (b"\x20\x00\x13\x00IS", b"\x20\x00\x13\x00FD")]   # Instance Number: 2 bytes as FD


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive(tmp_path / "archive")
    yield arc
    arc.close()


def wrong_vr(n: int, header: bytes, replaced: bytes) -> bytes:
    data = encode_instance(instance(n), ExplicitVRLittleEndian)
    assert data.count(header) == 1
    return data.replace(header, replaced)


def handler_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("header", "replaced"), WRONG_VRS)
async def test_value_its_vr_cannot_hold_is_refused_c000_streamed(
        archive: Archive, caplog: pytest.LogCaptureFixture, header: bytes,
        replaced: bytes) -> None:
    async with archive_server(archive, "QRSCP") as srv:
        status = await send(srv.port, CTImageStorage, f"{ROOT}1.1.40", wrong_vr(40, header,
                                                                                replaced))
        assert status == 0xC000
        assert files(archive) == []  # the temporary file is gone too
        good = encode_instance(instance(41), ExplicitVRLittleEndian)
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.41", good) == 0
    assert handler_errors(caplog) == []
    assert any("C-STORE data set refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("header", "replaced"), WRONG_VRS)
async def test_value_its_vr_cannot_hold_is_refused_in_memory(
        archive: Archive, caplog: pytest.LogCaptureFixture, header: bytes,
        replaced: bytes) -> None:
    registry = HandlerRegistry()
    registry.on_store(archive_store_handler(archive))  # no sink: decoded in memory
    async with Server("QRSCP", handlers=registry) as srv:
        status = await send(srv.port, CTImageStorage, f"{ROOT}1.1.42", wrong_vr(42, header,
                                                                                replaced))
        assert status & 0xF000 == 0xC000
    assert files(archive) == []
    assert handler_errors(caplog) == []


def deflate_find_server(archive: Archive) -> Server:
    """C-FIND on ``archive`` in Deflated Explicit VR Little Endian too (an embedder's choice;
    ``qrscp`` accepts only the two uncompressed little endian syntaxes)."""
    registry = HandlerRegistry()
    register_find(registry, archive_find_handler(archive))
    registry.on_store(archive_store_handler(archive))
    return Server("QRSCP", handlers=registry, contexts=qr_server_contexts(
        registry, transfer_syntaxes=(DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian)))


def deflate(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush()


async def test_deflated_identifier_bomb_is_refused_at_once(archive: Archive) -> None:
    # A valid STUDY query followed by a million copies of one private 8-byte element: 8 MB
    # inflated from about 8 KB.
    query = (b"\x08\x00\x52\x00CS\x06\x00STUDY " + b"\x20\x00\x0d\x00UI\x00\x00"
             + b"\x09\x00\x10\x00LO\x00\x00" * 1_000_000)
    bomb = deflate(query)
    assert len(bomb) < 16_384 and len(query) > MAX_IDENTIFIER_INFLATED
    uid = sop_class(QueryModel.STUDY_ROOT, Operation.FIND)
    async with deflate_find_server(archive) as srv, connect(
            "127.0.0.1", srv.port, called_ae="QRSCP", sop_classes=[uid],
            transfer_syntaxes=[DeflatedExplicitVRLittleEndian]) as assoc:
        cx = assoc.context_for(uid, DeflatedExplicitVRLittleEndian)
        started = time.monotonic()
        rsp, _ = await assoc.request(
            cx, lambda mid: CFindRQ(message_id=mid, affected_sop_class_uid=uid), bomb)
        elapsed = time.monotonic() - started
        assert isinstance(rsp, CFindRSP)
        assert rsp.status & 0xF000 == 0xC000
        assert "exceeds" in (rsp.error_comment or "")
        async with connect("127.0.0.1", srv.port, called_ae="QRSCP") as other:
            assert await other.echo() == 0  # the server still serves
    # Not a timing assertion on our speed: the old code spent seconds inflating and decoding.
    assert elapsed < 30


async def test_deflated_identifier_under_the_bound_is_answered(archive: Archive) -> None:
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    uid = sop_class(QueryModel.STUDY_ROOT, Operation.FIND)
    data = encode_instance(instance(43), ExplicitVRLittleEndian)
    async with deflate_find_server(archive) as srv:
        assert await send(srv.port, CTImageStorage, f"{ROOT}1.1.43", data) == 0
        async with connect("127.0.0.1", srv.port, called_ae="QRSCP", sop_classes=[uid],
                           transfer_syntaxes=[DeflatedExplicitVRLittleEndian]) as assoc:
            matches = [m async for m in assoc.find(query, model=QueryModel.STUDY_ROOT)]
    assert [m.StudyInstanceUID for m in matches] == [ROOT + "1"]
