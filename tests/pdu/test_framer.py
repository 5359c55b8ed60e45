"""PduFramer: whole, byte by byte, random splits, trailing partial data, several PDUs per chunk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pdu
from pdu import (
    AAbort,
    AAssociateRQ,
    AReleaseRQ,
    PDataTF,
    PduDecodeError,
    PduFramer,
    PresentationContextRQ,
    PresentationDataValue,
)
from pdu.constants import AbortReason

from . import strategies as S

RQ = AAssociateRQ.build(called_ae="SCP", calling_ae="SCU", presentation_contexts=(
    PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),))
PDATA = PDataTF((PresentationDataValue(1, 3, b"\x00" * 100), PresentationDataValue(1, 2, b"x")))
STREAM_PDUS: list[pdu.Pdu] = [RQ, PDATA, AReleaseRQ(), AAbort(2, 6)]
STREAM = b"".join(p.encode() for p in STREAM_PDUS)


def feed_all(framer: PduFramer, chunks: list[bytes]) -> list[pdu.Pdu]:
    out: list[pdu.Pdu] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_whole_stream_in_one_chunk() -> None:
    framer = PduFramer()
    assert framer.feed(STREAM) == STREAM_PDUS
    assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = PduFramer()
    out: list[pdu.Pdu] = []
    for i in range(len(STREAM)):
        out.extend(framer.feed(STREAM[i:i + 1]))
        emitted = sum(len(p.encode()) for p in out)
        assert framer.buffered == i + 1 - emitted
    assert out == STREAM_PDUS and framer.buffered == 0


def test_trailing_partial_data_is_kept() -> None:
    framer = PduFramer()
    release = AReleaseRQ().encode()
    assert framer.feed(release + PDATA.encode()[:3]) == [AReleaseRQ()]
    assert framer.buffered == 3
    assert framer.feed(PDATA.encode()[3:20]) == []
    assert framer.buffered == 20
    assert framer.feed(PDATA.encode()[20:] + release[:9]) == [PDATA]
    assert framer.buffered == 9
    assert framer.feed(release[9:]) == [AReleaseRQ()]
    assert framer.buffered == 0


def test_input_types_and_zero_copy() -> None:
    data = PDATA.encode()
    (whole,) = PduFramer().feed(data)
    assert isinstance(whole, PDataTF)
    first = whole.pdvs[0].data
    assert isinstance(first, memoryview) and first.obj is data  # sliced from the chunk itself
    source = bytearray(data)
    (copied,) = PduFramer().feed(source)
    source[:] = bytes(len(source))  # the caller may reuse its buffer: our PDU must not change
    assert copied == PDATA
    (from_view,) = PduFramer().feed(memoryview(data))
    assert from_view == PDATA


@settings(max_examples=200)
@given(st.lists(S.pdus, min_size=1, max_size=5), st.data())
def test_random_splits(pdus: list[pdu.Pdu], data: st.DataObject) -> None:
    stream = b"".join(p.encode() for p in pdus)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = PduFramer(max_other_length=0)
    assert feed_all(framer, chunks) == pdus
    assert framer.buffered == 0


def test_max_pdata_length_is_checked_from_the_header() -> None:
    framer = PduFramer(max_pdata_length=16)
    ok = PDataTF((PresentationDataValue(1, 0, b"x" * 10),)).encode()  # PDU-length 16
    assert len(framer.feed(ok)) == 1
    too_big_header = b"\x04\x00\x00\x00\x00\x11"  # PDU-length 17
    with pytest.raises(PduDecodeError) as info:
        framer.feed(too_big_header)  # only the header: refused before any body arrives
    assert (info.value.offset, info.value.item, info.value.field) == (2, "PDataTF", "pdu-length")
    assert info.value.abort_reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert framer.buffered == 0
    with pytest.raises(PduDecodeError):  # unusable afterwards
        framer.feed(ok)


def test_huge_announced_length_allocates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 GiB announcement is refused on the split header, without allocating its body."""
    import pdu.framer as framer_module

    allocations: list[int] = []

    class Spy(bytearray):
        def __init__(self, *args: object) -> None:
            if args and isinstance(args[0], int):
                allocations.append(args[0])
            super().__init__(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(framer_module, "bytearray", Spy, raising=False)
    for pdu_type, limits in ((1, {"max_other_length": 1 << 20}), (4, {"max_pdata_length": 1 << 16})):
        framer = PduFramer(**limits)
        header = bytes([pdu_type, 0]) + b"\xff\xff\xff\xff"
        assert framer.feed(header[:3]) == []
        with pytest.raises(PduDecodeError) as info:
            framer.feed(header[3:] + b"\x00" * 10)
        assert info.value.field == "pdu-length"
    assert allocations == []
    # a PDU within the limit, split, does allocate exactly its size once
    framer = PduFramer(max_pdata_length=1 << 16)
    data = PDATA.encode()
    framer.feed(data[:10])
    assert allocations == [len(data)]


def test_other_pdu_limit_and_zero_means_unlimited() -> None:
    data = RQ.encode()
    with pytest.raises(PduDecodeError) as info:
        PduFramer(max_other_length=len(data) - 7).feed(data)
    assert (info.value.item, info.value.field) == ("AAssociateRQ", "pdu-length")
    assert PduFramer(max_other_length=0).feed(data) == [RQ]
    assert PduFramer(max_other_length=len(data) - 6).feed(data) == [RQ]


def test_unknown_type_and_bad_fixed_size_fail_on_the_header() -> None:
    framer = PduFramer()
    assert framer.feed(b"\x09\x00\x00") == []
    with pytest.raises(PduDecodeError) as info:
        framer.feed(b"\x00\x00\x04")
    assert info.value.abort_reason == AbortReason.UNRECOGNIZED_PDU
    with pytest.raises(PduDecodeError) as info:
        PduFramer().feed(b"\x05\x00\x7f\xff\xff\xff")  # A-RELEASE-RQ claiming 2 GiB
    assert (info.value.item, info.value.field) == ("AReleaseRQ", "pdu-length")


def test_iter_feed_yields_pdus_before_an_error() -> None:
    framer = PduFramer()
    seen = []
    with pytest.raises(PduDecodeError):
        for p in framer.iter_feed(AReleaseRQ().encode() + b"\x04\x00\x00\x00\x00\x00"):
            seen.append(p)
    assert seen == [AReleaseRQ()]
