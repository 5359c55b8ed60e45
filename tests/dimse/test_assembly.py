"""PDVs <-> DIMSE messages: fragmentation at the boundaries, reassembly (whole, one PDV at a
time, random splits), streaming, protocol violations, and byte-exactness against pynetdicom."""

from __future__ import annotations

import random
import struct
import tracemalloc
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimse import commands
from dimse.assembly import (
    CommandReceived,
    DataFragment,
    MessageAssembler,
    MessageReceived,
    fragment,
    fragment_message,
)
from dimse.errors import AssemblyError, CommandDecodeError
from dimse.messages import (
    CCancelRQ,
    CEchoRQ,
    CFindRQ,
    CFindRSP,
    CStoreRQ,
    Message,
)
from pdu import PresentationDataValue as Pdv
from pdu import decode as decode_pdu
from pdu.constants import UNLIMITED_SEND_CAP

STORE = CStoreRQ(message_id=3, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                 affected_sop_instance_uid="1.2.3.4.5.6")
FIND_RSP = CFindRSP(message_id_being_responded_to=7, status=0xFF00,
                    affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1", command_data_set_type=1)


def parse_pdata(pdu_bytes: bytes) -> list[tuple[int, int, bytes]]:
    """Independent P-DATA-TF parser: [(context id, control, fragment)], checking every length."""
    pdu_type, _, length = struct.unpack_from(">BBI", pdu_bytes)
    assert pdu_type == 4 and length == len(pdu_bytes) - 6
    out = []
    pos = 6
    while pos < len(pdu_bytes):
        item_len, ctx, ctrl = struct.unpack_from(">IBB", pdu_bytes, pos)
        assert item_len >= 2 and pos + 4 + item_len <= len(pdu_bytes)
        out.append((ctx, ctrl, pdu_bytes[pos + 6:pos + 4 + item_len]))
        pos += 4 + item_len
    assert pos == len(pdu_bytes)
    return out


def check_fragments(pdus: list[bytes], context_id: int, command: bytes, dataset: bytes | None,
                    peer_max: int) -> list[list[tuple[int, int, bytes]]]:
    """Every invariant of PS3.8 Annex E / dimse.md 1.3 for one message's PDUs."""
    limit = peer_max or UNLIMITED_SEND_CAP
    parsed = [parse_pdata(p) for p in pdus]
    pdvs = [pdv for pdu in parsed for pdv in pdu]
    assert all(len(p) - 6 <= limit for p in pdus)
    assert all(ctx == context_id for ctx, _, _ in pdvs)
    cmd = [(c, f) for _, c, f in pdvs if c & 1]
    data = [(c, f) for _, c, f in pdvs if not c & 1]
    assert pdvs[:len(cmd)] == [(context_id, c, f) for c, f in cmd]  # commands first
    assert [c for c, _ in cmd] == [1] * (len(cmd) - 1) + [3]
    assert b"".join(f for _, f in cmd) == command
    if dataset is None:
        assert not data
    else:
        assert [c for c, _ in data] == [0] * (len(data) - 1) + [2]
        assert b"".join(f for _, f in data) == dataset
    for frags in (cmd, data):
        assert all(len(f) % 2 == 0 for _, f in frags[:-1])  # only a last fragment may be odd
    return parsed


def reassemble(pdus: list[bytes], assembler: MessageAssembler | None = None) -> list[object]:
    assembler = assembler or MessageAssembler()
    events: list[object] = []
    for p in pdus:
        events += assembler.feed_all(decode_pdu(p).pdvs)  # type: ignore[union-attr]
    assert not assembler.in_progress
    return events


# --- fragmentation at the boundaries ----------------------------------------------------------

@pytest.mark.parametrize("peer_max", [8, 9, 12, 13, 14, 15, 16, 100, 101, 16384, 0])
@pytest.mark.parametrize("size", [0, 1, 2, 6, 7, 8, 9, 200, 16378, 16379, 40000])
@pytest.mark.parametrize("coalesce", [True, False])
def test_boundaries(peer_max: int, size: int, coalesce: bool) -> None:
    command = commands.encode(STORE)
    dataset = bytes(random.Random(size).randbytes(size))
    pdus = list(fragment(5, command, dataset, peer_max, coalesce=coalesce))
    parsed = check_fragments(pdus, 5, command, dataset, peer_max)
    limit = peer_max or UNLIMITED_SEND_CAP
    if not coalesce:
        assert all(len(pdu) == 1 for pdu in parsed)
    # a PDU that ends with a non-last fragment is as full as an even fragment allows
    for pdu_bytes, pdvs in zip(pdus, parsed, strict=True):
        if not pdvs[-1][1] & 2:
            assert limit - (len(pdu_bytes) - 6) <= 1
    assert reassemble(pdus) == [MessageReceived(5, STORE, dataset)]


def test_exact_layout_peer_max_14() -> None:
    command = bytes(range(20))
    pdus = list(fragment(1, command, b"abcdefghij", 14))
    assert [parse_pdata(p) for p in pdus] == [
        [(1, 1, command[0:8])], [(1, 1, command[8:16])],
        [(1, 3, command[16:20])],  # 4 bytes + 6 overhead = 10; 4 left: too small to share
        [(1, 0, b"abcdefgh")], [(1, 2, b"ij")],
    ]
    assert pdus[0] == b"\x04\x00\x00\x00\x00\x0e\x00\x00\x00\x0a\x01\x01" + command[:8]


def test_peer_max_13_rounds_fragments_down_to_even() -> None:
    pdus = list(fragment(1, bytes(14), None, 13))
    assert [len(f) for p in pdus for _, _, f in parse_pdata(p)] == [6, 6, 2]


def test_command_and_first_data_fragment_share_a_pdu() -> None:
    command = commands.encode(FIND_RSP)
    identifier = bytes(300)
    (only,) = fragment(1, command, identifier, 16384)
    assert [(c, len(f)) for _, c, f in parse_pdata(only)] == [(3, len(command)), (2, 300)]
    limit = len(command) + 6 + 6 + 100
    first, second = fragment(1, command, identifier[:150], limit)
    assert [(c, len(f)) for _, c, f in parse_pdata(first)] == [(3, len(command)), (0, 100)]
    assert [(c, len(f)) for _, c, f in parse_pdata(second)] == [(2, 50)]
    separate = list(fragment(1, command, identifier, 16384, coalesce=False))
    assert [[c for _, c, _ in parse_pdata(p)] for p in separate] == [[3], [2]]


def test_unlimited_peer_uses_the_send_cap() -> None:
    dataset = bytes(UNLIMITED_SEND_CAP + 10)
    pdus = list(fragment(1, b"\x00" * 10, dataset, 0, coalesce=False))
    assert [len(p) - 6 for p in pdus] == [16, UNLIMITED_SEND_CAP, 16 + 6]


def test_empty_data_set_is_one_empty_last_pdv() -> None:
    pdus = list(fragment(1, b"\x00\x00", b"", 16384, coalesce=False))
    assert parse_pdata(pdus[-1]) == [(1, 2, b"")]


@given(command_size=st.integers(0, 300), dataset_size=st.one_of(st.none(), st.integers(0, 3000)),
       peer_max=st.one_of(st.just(0), st.integers(8, 600)), coalesce=st.booleans(),
       context_id=st.integers(0, 255))
@settings(max_examples=400)
def test_fragment_properties(command_size: int, dataset_size: int | None, peer_max: int,
                             coalesce: bool, context_id: int) -> None:
    rng = random.Random(command_size * 7919 + (dataset_size or 0))
    command = rng.randbytes(command_size)
    dataset = None if dataset_size is None else rng.randbytes(dataset_size)
    pdus = list(fragment(context_id, command, dataset, peer_max, coalesce=coalesce))
    check_fragments(pdus, context_id, command, dataset, peer_max)


def test_memoryview_and_bytearray_inputs_and_no_whole_copy() -> None:
    dataset = bytearray(8 << 20)
    dataset[-1] = 7
    view = memoryview(dataset).cast("I")  # not a byte view: still fragmented per byte
    tracemalloc.start()
    try:
        total = 0
        peak_before = tracemalloc.get_traced_memory()[1]
        for pdu_bytes in fragment(1, b"\x01\x02", view, 16384):
            total += len(pdu_bytes)
        peak = tracemalloc.get_traced_memory()[1] - peak_before
    finally:
        tracemalloc.stop()
    assert total > len(dataset)
    assert peak < 1 << 20  # only one PDU at a time is materialised, never the 8 MiB data set
    assert pdu_bytes.endswith(b"\x07")


def test_fragment_argument_checks() -> None:
    with pytest.raises(ValueError):
        list(fragment(1, b"", None, 7))
    with pytest.raises(ValueError):
        list(fragment(256, b"", None, 100))
    with pytest.raises(ValueError):
        list(fragment_message(1, STORE, None, 100))
    with pytest.raises(ValueError):
        list(fragment_message(1, CEchoRQ(message_id=1), b"xx", 100))


# --- byte-exactness against pynetdicom --------------------------------------------------------

def _pynetdicom_pdus(primitive: object, message_cls: type, context_id: int,
                     max_pdu: int) -> list[bytes]:
    from pynetdicom.pdu import P_DATA_TF

    msg = message_cls()
    msg.primitive_to_message(primitive)  # type: ignore[attr-defined]
    out = []
    for p_data in msg.encode_msg(context_id, max_pdu):  # type: ignore[attr-defined]
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


@pytest.mark.parametrize("max_pdu", [16384, 0, 100, 64, 1000])
def test_c_store_rq_matches_pynetdicom_byte_for_byte(max_pdu: int) -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    dataset = random.Random(max_pdu).randbytes(5000)
    p = C_STORE()
    p.MessageID = STORE.message_id
    p.AffectedSOPClassUID = STORE.affected_sop_class_uid
    p.AffectedSOPInstanceUID = STORE.affected_sop_instance_uid
    p.Priority = 0
    p.DataSet = BytesIO(dataset)
    theirs = _pynetdicom_pdus(p, C_STORE_RQ, 3, max_pdu)
    ours = list(fragment_message(3, STORE, dataset, max_pdu, coalesce=False))
    assert ours == theirs
    assert reassemble(theirs) == [MessageReceived(3, STORE, dataset)]


def test_c_find_rsp_matches_pynetdicom_byte_for_byte() -> None:
    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND

    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    p = C_FIND()
    p.MessageIDBeingRespondedTo = 7
    p.AffectedSOPClassUID = FIND_RSP.affected_sop_class_uid
    p.Status = 0xFF00
    p.Identifier = BytesIO(identifier)
    theirs = _pynetdicom_pdus(p, C_FIND_RSP, 1, 16384)
    assert list(fragment_message(1, FIND_RSP, identifier, 16384, coalesce=False)) == theirs


# --- reassembly -----------------------------------------------------------------------------

def _split_pdvs(context_id: int, data: bytes, kind: int, rng: random.Random) -> list[Pdv]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6)))) \
        if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return [Pdv(context_id, kind | (2 if i == len(pieces) - 1 else 0), memoryview(piece))
            for i, piece in enumerate(pieces)]


@given(seed=st.integers(0, 2**32), size=st.one_of(st.none(), st.integers(0, 500)))
@settings(max_examples=300)
def test_reassembly_of_random_splits(seed: int, size: int | None) -> None:
    rng = random.Random(seed)
    message: Message = FIND_RSP if size is not None else CCancelRQ(message_id_being_responded_to=9)
    dataset = None if size is None else rng.randbytes(size)
    pdvs = _split_pdvs(7, commands.encode(message), 1, rng)
    if dataset is not None:
        pdvs += _split_pdvs(7, dataset, 0, rng)
    assembler = MessageAssembler()
    events = [assembler.feed(pdv) for pdv in pdvs]
    assert events[:-1] == [None] * (len(pdvs) - 1)
    assert events[-1] == MessageReceived(7, message, dataset)
    assert not assembler.in_progress and assembler.context_id is None


def test_several_messages_and_contexts_in_sequence() -> None:
    assembler = MessageAssembler()
    stream = []
    expected = []
    for i, ctx in enumerate((1, 3, 1, 5)):
        msg = CFindRQ(message_id=i, affected_sop_class_uid="1.2")
        stream += list(fragment_message(ctx, msg, bytes([i]) * 40, 30))
        expected.append(MessageReceived(ctx, msg, bytes([i]) * 40))
        stream += list(fragment_message(ctx, CEchoRQ(message_id=i), None, 30))
        expected.append(MessageReceived(ctx, CEchoRQ(message_id=i), None))
    assert reassemble(stream, assembler) == expected


def test_streaming_mode_hands_fragments_to_a_sink() -> None:
    def only_store(context_id: int, message: Message) -> bool:
        return isinstance(message, CStoreRQ)

    assembler = MessageAssembler(only_store)
    dataset = random.Random(1).randbytes(50000)
    events = reassemble(list(fragment_message(1, STORE, dataset, 16384)), assembler)
    assert events[0] == CommandReceived(1, STORE)
    fragments = events[1:]
    assert all(isinstance(e, DataFragment) and e.context_id == 1 for e in fragments)
    assert [e.last for e in fragments] == [False] * (len(fragments) - 1) + [True]  # type: ignore[attr-defined]
    assert b"".join(e.data for e in fragments) == dataset  # type: ignore[attr-defined]
    assert len(fragments) == 4
    # other messages stay buffered; messages without a data set come whole
    events = reassemble(list(fragment_message(3, FIND_RSP, b"ab", 0))
                        + list(fragment_message(3, CEchoRQ(message_id=2), None, 0)), assembler)
    assert events == [MessageReceived(3, FIND_RSP, b"ab"), MessageReceived(3, CEchoRQ(message_id=2),
                                                                           None)]


# --- protocol violations --------------------------------------------------------------------

CMD = commands.encode(STORE)


def test_data_fragment_before_any_command() -> None:
    with pytest.raises(AssemblyError, match="no command set"):
        MessageAssembler().feed(Pdv(1, 0x02, b"xx"))


def test_data_fragment_before_command_is_complete() -> None:
    a = MessageAssembler()
    assert a.feed(Pdv(1, 0x01, CMD[:10])) is None
    assert a.in_progress and a.context_id == 1
    with pytest.raises(AssemblyError, match="before the command set is complete"):
        a.feed(Pdv(1, 0x00, b"xx"))


@pytest.mark.parametrize("phase", ["command", "dataset"])
def test_pdv_on_another_context_mid_message(phase: str) -> None:
    a = MessageAssembler()
    if phase == "command":
        a.feed(Pdv(1, 0x01, CMD[:10]))
        bad = Pdv(3, 0x03, CMD[10:])
    else:
        a.feed(Pdv(1, 0x03, CMD))
        bad = Pdv(3, 0x02, b"xx")
    with pytest.raises(AssemblyError, match="context 3 while a message on context 1"):
        a.feed(bad)


def test_command_fragment_after_command_ended() -> None:
    a = MessageAssembler()
    assert a.feed(Pdv(1, 0x03, CMD)) is None
    with pytest.raises(AssemblyError, match="after the command set ended"):
        a.feed(Pdv(1, 0x03, CMD))


def test_size_limits() -> None:
    a = MessageAssembler(max_command_length=20)
    with pytest.raises(AssemblyError, match="command set"):
        a.feed(Pdv(1, 0x01, bytes(22)))
    b = MessageAssembler(max_dataset_length=100)
    b.feed(Pdv(1, 0x03, CMD))
    b.feed(Pdv(1, 0x00, bytes(60)))
    with pytest.raises(AssemblyError, match="exceeds 100 bytes"):
        b.feed(Pdv(1, 0x02, bytes(60)))


def test_bad_command_set_raises_command_decode_error() -> None:
    with pytest.raises(CommandDecodeError):
        MessageAssembler().feed(Pdv(1, 0x03, b"\x00\x00\x00\x01\x02\x00"))


def test_discard_drops_a_partial_message() -> None:
    a = MessageAssembler()
    a.feed(Pdv(1, 0x03, CMD))
    a.feed(Pdv(1, 0x00, b"xxxx"))
    a.discard()
    assert not a.in_progress
    assert reassemble(list(fragment_message(2, STORE, b"yy", 0)), a) == [
        MessageReceived(2, STORE, b"yy")]
