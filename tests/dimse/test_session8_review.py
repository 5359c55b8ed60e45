"""Defects a review of the last two sessions' changes found (notes: audit8/review.md).

* an instance read from an Implicit VR file and then compressed is sent (the first C-STORE fix
  of this session refused it as a mislabelled file);
* a C-FIND handler's own AssociationError (a proxy whose upstream refused it) is the handler's
  failure, answered 0xC001, not "our association is gone" left unanswered;
* native Pixel Data shorter than its image needs is refused even after pydicom converted it
  (the length the file declared is then gone);
* requests arriving after our A-RELEASE-RQ (Sta7) are never claimed as answered, whatever path
  they take (an oversized identifier, an unknown command), and an oversized request where we
  are not SCP is refused 0x0122 like any other request there;
* a request waiting for a slot of a full window fails at once when the association ends.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import warnings
from collections.abc import AsyncIterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from dimse import commands
from dimse.connect import connect
from dimse.errors import AssociationAborted, DataSetEncodeError, DimseTimeout
from dimse.instances import encode_instance
from dimse.messages import CFindRQ
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.qr_scu import QueryFailed, connect_qr
from dimse.server import Server
from dimse.services import HandlerRegistry
from tests.pdu.test_audit7_ul import (
    PATIENT_FIND,
    RELEASE_RP,
    RELEASE_RQ,
    _el,
    accept_raw,
    find_rq,
    our_server,
    pdata,
    raw_acceptor,
    raw_associate,
    read_message,
    read_pdu,
    until,
)
from tests.peers import free_port

WAIT = 5.0


def _query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return query


def test_an_implicit_vr_instance_compressed_by_pydicom_is_sent() -> None:
    pytest.importorskip("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
        ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    ds.compress(RLELossless)
    data = encode_instance(ds, RLELossless)
    back = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)
    back.file_meta = pydicom.Dataset()
    back.file_meta.TransferSyntaxUID = RLELossless
    assert back["PixelData"].is_undefined_length
    assert back.PatientName == ref.PatientName
    assert (back.pixel_array == ref.pixel_array).all()


async def test_a_find_handler_association_error_is_answered_as_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    upstream = free_port()  # nothing listens there

    async def proxy(request: FindRequest) -> AsyncIterator[Dataset]:
        async with connect("127.0.0.1", upstream, called_ae="UPSTREAM", connect_timeout=1):
            pass
        yield Dataset()  # never reached

    registry = HandlerRegistry()
    register_find(registry, proxy)
    async with Server("QR", port=0, handlers=registry,
                      contexts=qr_server_contexts(registry)) as server:
        async with connect_qr("127.0.0.1", server.port, called_ae="QR",
                              dimse_timeout=30) as assoc:
            with pytest.raises(QueryFailed) as info:
                await asyncio.wait_for(_drain(assoc.find(_query())), WAIT)
            assert info.value.status == 0xC001
            assert await assoc.echo() == 0  # our association was fine all along
    assert "C-FIND handler failed" in caplog.text


async def _drain(results: AsyncIterator[Dataset]) -> list[Dataset]:
    return [match async for match in results]


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_pixel_data_cut_short_is_refused_after_pydicom_converted_it(ts: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    assert len(ds.PixelData) == 8130  # read (converted): the declared 8192 is gone
    with pytest.raises(DataSetEncodeError, match="8192") as info:
        encode_instance(ds, ts)
    assert info.value.tag == 0x7FE00010


def test_whole_converted_pixel_data_still_goes_out() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = ds.PixelData  # converted
    assert pixels in encode_instance(ds, ImplicitVRLittleEndian)
    ds.SamplesPerPixel, ds.BitsAllocated = 3, 8
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    for subsampled in ("YBR_FULL_422", "YBR_PARTIAL_422"):  # 2 samples a pixel, not 3
        ds.PhotometricInterpretation = subsampled
        assert ds.PixelData in encode_instance(ds, ExplicitVRLittleEndian)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2 - 2)
    with pytest.raises(DataSetEncodeError):
        encode_instance(ds, ExplicitVRLittleEndian)


def _unknown_command(message_id: int, context_id: int = 5) -> bytes:
    """A command of a field nobody defines (0x0110) on ``context_id``."""
    def element(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, elem, len(value)) + value

    body = (element(0x0002, PATIENT_FIND.encode() + b"\0") + element(0x0100, b"\x10\x01")
            + element(0x0110, struct.pack("<H", message_id)) + element(0x0800, b"\x01\x01"))
    return pdata(context_id, 3, element(0x0000, struct.pack("<L", len(body))) + body)


async def test_requests_after_our_release_are_never_claimed_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        return
        yield  # an async generator that finds nothing

    registry = HandlerRegistry()
    register_find(registry, matches)
    caplog.set_level(logging.INFO, logger="dimse")
    async with our_server(handlers=registry, contexts=qr_server_contexts(registry),
                          artim_timeout=2, max_identifier_length=10) as server:
        reader, writer = await raw_associate(server.port)
        try:
            await until(lambda: any(a.is_established for a in server.associations))
            ours = next(iter(server.associations))
            releasing = asyncio.get_running_loop().create_task(ours.release(timeout=3))
            assert (await read_pdu(reader))[1] == RELEASE_RQ
            writer.write(find_rq(9) + _unknown_command(10))  # oversized, then unknown: Sta7
            await until(lambda: caplog.text.count("arrived after our A-RELEASE-RQ") == 2)
            writer.write(RELEASE_RP)
            await asyncio.wait_for(releasing, WAIT)
            assert (await read_pdu(reader))[0] == -1  # nothing was sent: closed
        finally:
            writer.close()
    assert "refused" not in caplog.text and "answered 0x0211" not in caplog.text


async def test_an_oversized_request_where_we_are_not_scp_is_refused_0122() -> None:
    """The role comes first, as for any request on such a context (our requestor is SCU)."""
    got: list[object] = []

    async def sends_a_find(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_raw(reader, writer)
        command = commands.encode(CFindRQ(message_id=7, affected_sop_class_uid=PATIENT_FIND))
        identifier = _el(0x0008, 0x0052, b"PATIENT") + _el(0x0010, 0x0010, b"DOE^JOHN")
        writer.write(pdata(1, 3, command) + pdata(1, 2, identifier))
        got.append((await read_message(reader))[0])
        writer.write(RELEASE_RQ)
        await read_pdu(reader)

    async with raw_acceptor(sends_a_find) as (port, errors):
        async with connect("127.0.0.1", port, called_ae="X", max_identifier_length=10,
                           contexts=[(PATIENT_FIND, [ImplicitVRLittleEndian])]) as assoc:
            await until(lambda: bool(got))
            assert assoc.error is None
    assert not errors, errors
    assert getattr(got[0], "status", None) == 0x0122


async def test_a_request_waiting_for_a_window_slot_fails_when_the_association_ends() -> None:
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        for i in range(3):
            match = Dataset()
            match.QueryRetrieveLevel, match.StudyInstanceUID = "STUDY", f"1.2.3.{i}"
            yield match
        await asyncio.sleep(60)  # a long search: the final response does not come

    registry = HandlerRegistry()
    register_find(registry, matches)
    server = Server("QR", port=0, handlers=registry, contexts=qr_server_contexts(registry))
    await server.start()
    assoc = await connect_qr("127.0.0.1", server.port, called_ae="QR", dimse_timeout=60)
    results = assoc.find(_query())
    try:
        await anext(results)  # holds the window's only slot, then left unread
        echo = asyncio.ensure_future(assoc.echo())  # waits for that slot
        await asyncio.sleep(0.2)
        assert not echo.done()
        await server.close(timeout=2)  # aborts the association
        with pytest.raises(AssociationAborted) as info:
            await asyncio.wait_for(echo, WAIT)  # not the 60 s DIMSE timeout
        assert not isinstance(info.value, DimseTimeout)
    finally:
        await results.aclose()
        await server.close(timeout=2)
