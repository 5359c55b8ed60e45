"""The framer with no length limit: memory follows the bytes that came, not the header.

PS3.8 lets a maximum length of 0 mean "no limit", so a peer may announce a 4 GiB P-DATA-TF.
PDUs larger than ``framer.PREALLOCATE`` are collected in a buffer grown as their bytes arrive;
smaller ones still get their whole buffer at once.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

import pdu
from pdu import framer as framer_module
from pdu.framer import PduFramer
from pdu.pdus import PDataTF, PresentationDataValue

BIG = framer_module.PREALLOCATE * 2 + 123


def pdata(size: int) -> bytes:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return pdu.encode(PDataTF((PresentationDataValue(1, 2, body),)))


def test_a_huge_announced_length_costs_only_what_arrives() -> None:
    framer = PduFramer(max_pdata_length=0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert framer.feed(struct.pack(">BBI", 4, 0, 0xFFFFFFFF) + bytes(1000)) == []
        assert framer.feed(bytes(1000)) == []
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert framer.buffered == 6 + 2000  # the header and both chunks
    assert grown < 1 << 20, grown


def test_a_huge_announced_length_after_a_split_header() -> None:
    framer = PduFramer(max_pdata_length=0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert framer.feed(b"\x04\x00\xff") == []
        assert framer.feed(b"\xff\xff\xff" + bytes(10)) == []
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert framer.buffered == 16
    assert grown < 1 << 20, grown


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, BIG + 11), max_size=12), mutable=st.booleans())
def test_a_large_pdu_in_any_chunks_decodes_as_a_whole(cuts: list[int], mutable: bool) -> None:
    data = pdata(BIG) + pdu.encode(pdu.AReleaseRQ())
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    framer = PduFramer(max_pdata_length=0)
    out = []
    for a, b in zip(points, points[1:], strict=False):
        chunk = data[a:b]
        out += framer.feed(bytearray(chunk) if mutable else chunk)
    assert out == [pdu.decode(data[:len(data) - 10]), pdu.AReleaseRQ()]
    assert framer.buffered == 0


def test_small_pdus_still_get_their_buffer_at_once() -> None:
    data = pdata(1000)
    framer = PduFramer(max_pdata_length=0)
    assert framer.feed(data[:7]) == []
    assert framer._body is not None and len(framer._body) == len(data)
    assert framer.feed(data[7:]) == [pdu.decode(data)]
