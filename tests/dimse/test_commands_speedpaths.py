"""The command codec's speed paths: the fast decoder takes every canonical command set and gives
the same message as the exact decoder; on anything else ``decode`` behaves exactly like the exact
decoder (same message, same exception, same text, tag and offset). Encode error texts per kind."""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimse import commands
from dimse.commands import CommandEncodeError, decode, encode
from dimse.errors import CommandDecodeError
from dimse.messages import (
    SPECS,
    CCancelRQ,
    CEchoRQ,
    CFindRQ,
    CFindRSP,
    CMoveRQ,
    CMoveRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
    Priority,
)
from tests.dimse.test_commands import el, messages, us, with_group_length

CT = "1.2.840.10008.5.1.4.1.1.2"


def _outcome(decoder: Any, data: bytes) -> tuple[Any, ...]:
    """Everything observable about decoding ``data``: the message (with ``unexpected``, which
    equality ignores) or the exception's type, text, tag and offset."""
    try:
        msg = decoder(data)
    except CommandDecodeError as exc:
        return (type(exc), str(exc), exc.tag, exc.offset, getattr(exc, "message_id", None))
    return (type(msg), msg, msg.unexpected, type(getattr(msg, "priority", None)))


def _same_as_exact(data: bytes) -> None:
    assert _outcome(decode, data) == _outcome(commands._decode_exact, data)
    for other in (bytearray(data), memoryview(data)):
        assert _outcome(decode, other) == _outcome(commands._decode_exact, data)
    try:
        fast = commands._decode_fast(data)
    except commands._NOT_FAST:
        return
    if fast is not None:
        assert _outcome(lambda _: fast, data) == _outcome(commands._decode_exact, data)


# --- the fast path is taken for what we (and every sane peer) send ----------------------------

@given(messages())
@settings(max_examples=500)
def test_fast_path_decodes_every_canonical_encoding(msg: Message) -> None:
    data = encode(msg)
    fast = commands._decode_fast(data)
    assert fast == msg and fast.unexpected == ()
    _same_as_exact(data)
    _same_as_exact(data[12:])  # no group length


@pytest.mark.parametrize("priority", [0, 1, 2, 3, 0xFFFF])
def test_priority_enum_exactly_when_0_1_2(priority: int) -> None:
    data = encode(CFindRQ(message_id=1, affected_sop_class_uid="1.2", priority=priority))
    fast = commands._decode_fast(data)
    assert fast is not None and fast.priority == priority
    assert isinstance(fast.priority, Priority) == (priority < 3)
    _same_as_exact(data)


def test_text_at_and_optional_elements_on_the_fast_path() -> None:
    for msg in (
        CStoreRSP(message_id_being_responded_to=1, status=0xA900, error_comment="bad thing",
                  offending_element=(0x00100010, 0x00100020)),
        CMoveRQ(message_id=2, affected_sop_class_uid="1.2", move_destination="DEST"),
        CStoreRQ(message_id=3, affected_sop_class_uid=CT, affected_sop_instance_uid="1.23",
                 move_originator_ae_title="ORIG", move_originator_message_id=9),
        CMoveRSP(message_id_being_responded_to=4, status=0xFF00,
                 number_of_remaining_suboperations=3),
        CCancelRQ(message_id_being_responded_to=5),
    ):
        assert commands._decode_fast(encode(msg)) == msg


# --- everything else: exactly the exact decoder's result ---------------------------------------

_FIND = (el(0x0002, b"1.2\x00") + us(0x0100, 0x0020) + us(0x0110, 5) + us(0x0700, 0)
         + us(0x0800, 0x0001))


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 7, b"\x00" * 9, b"\x00" * 12,
    with_group_length(_FIND), _FIND, el(0, b"\x01\x02") + _FIND,  # group length odd size
    _FIND + el(0x0903, b"\x01\x00"),  # unexpected, at the end
    el(0x0001, struct.pack("<HHIH", 0, 0x0100, 2, 0x8001)) + _FIND,  # a fake CF header first
    _FIND.replace(us(0x0100, 0x0020), us(0x0100, 0x0030)),  # echo: 0x0700 unexpected
    _FIND + us(0x0110, 6),  # duplicate
    us(0x0110, 5) + _FIND[16:],  # out of order, message id duplicated
    _FIND.replace(us(0x0700, 0), b""),  # mandatory missing
    _FIND.replace(us(0x0700, 0), us(0x0700, 0)[:8] + b"\x00" * 4),  # more bytes than its length
    _FIND.replace(us(0x0110, 5), el(0x0110, b"")),  # empty mandatory US
    _FIND.replace(us(0x0110, 5), el(0x0110, b"\x05")),  # odd-size US
    _FIND[:-10] + el(0x0800, b""),  # empty last element: under 10 bytes left
    _FIND[:-1], _FIND[:-3], _FIND + b"\x00", _FIND[:-2] + b"\xff\xff\xff\xff",
    _FIND.replace(b"1.2\x00", b"1.\xe9\x00"),  # non-ASCII UID
    _FIND.replace(b"1.2\x00", b" 1.2"),  # leading pad
    el(0x00080016, b"1.2\x00") + _FIND,  # another group
    us(0x0100, 0x0130) + us(0x0110, 42) + us(0x0800, 0x0101),  # unknown command field
    us(0x0100, 0x8001) + us(0x0120, 1) + us(0x0800, 0x0101) + us(0x0900, 0)
    + el(0x0901, b"\x10\x00\x10\x00\x08\x00"),  # AT of 6 bytes
    us(0x0100, 0x8001) + us(0x0120, 1) + us(0x0800, 0x0101) + us(0x0900, 0)
    + el(0x0902, "é".encode() + b"\xff"),  # LO: utf-8 with replacement
])
def test_unusual_command_sets_match_the_exact_decoder(data: bytes) -> None:
    _same_as_exact(data)


def test_unexpected_elements_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dimse.commands"):
        msg = decode(_FIND + us(0x0110, 6) + el(0x1001, b"1.2\x00"))
    assert msg.unexpected == ((0x00001001, b"1.2\x00"),)
    assert "(0000,1001)" in caplog.text and "duplicates ignored: [272]" in caplog.text


def test_any_buffer_shape() -> None:
    data = encode(CEchoRQ(message_id=1))
    assert decode(memoryview(data).cast("H")) == CEchoRQ(message_id=1)
    assert decode(memoryview(b"xx" + data)[2:]) == CEchoRQ(message_id=1)


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_fuzz_arbitrary_bytes_same_as_exact(data: bytes) -> None:
    _same_as_exact(data)


_tags = st.sampled_from(sorted({t & 0xFFFF for s in SPECS.values() for t, _ in s.fields}
                               | {0x0000, 0x0100, 0x0903}))
_value = st.one_of(st.binary(max_size=8), st.integers(0, 0xFFFF).map(lambda v: struct.pack("<H", v)),
                   st.sampled_from([b"1.2\x00", b"AE ", b"\x10\x00\x10\x00"]))
_cf = st.sampled_from(sorted(SPECS) + [0x0130]).map(lambda v: struct.pack("<H", v))


@given(st.lists(st.tuples(_tags, _value, _cf), max_size=10), st.booleans())
@settings(max_examples=1500)
def test_fuzz_element_soup_same_as_exact(parts: list[tuple[int, bytes, bytes]],
                                         ordered: bool) -> None:
    if ordered:
        parts = sorted(parts)
    _same_as_exact(b"".join(el(tag, cf if tag == 0x100 else value) for tag, value, cf in parts))


@given(messages(), st.data())
@settings(max_examples=500)
def test_fuzz_mutated_canonical_same_as_exact(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _same_as_exact(bytes(raw[:data.draw(st.integers(0, len(raw)))]))


# --- encode: the error texts and padding per kind -----------------------------------------------

@pytest.mark.parametrize("msg, tag, text", [
    (CFindRQ(message_id=70000, affected_sop_class_uid="1.2"), 0x0110,
     "(0000,0110): message_id=70000 is not a 16-bit unsigned integer"),
    (CFindRQ(message_id=1.5, affected_sop_class_uid="1.2"), 0x0110,  # type: ignore[arg-type]
     "(0000,0110): message_id=1.5 is not a 16-bit unsigned integer"),
    (CFindRQ(message_id=1, affected_sop_class_uid="1.2", priority=-1), 0x0700,
     "(0000,0700): priority=-1 is not a 16-bit unsigned integer"),
    (CFindRQ(message_id=1, affected_sop_class_uid="1.é"), 0x0002,
     "(0000,0002): affected_sop_class_uid='1.é' is not an ASCII string"),
    (CFindRQ(message_id=1, affected_sop_class_uid=b"1.2"), 0x0002,  # type: ignore[arg-type]
     "(0000,0002): affected_sop_class_uid=b'1.2' is not an ASCII string"),
    (CFindRQ(message_id=1, affected_sop_class_uid="1.2\\3"), 0x0002,
     "(0000,0002): affected_sop_class_uid='1.2\\\\3' is not a valid UI"),
    (CMoveRQ(message_id=1, affected_sop_class_uid="1.2", move_destination="A" * 17), 0x0600,
     f"(0000,0600): move_destination='{'A' * 17}' is not a valid AE"),
    (CFindRSP(message_id_being_responded_to=1, status=0, error_comment="x" * 65), 0x0902,
     f"(0000,0902): error_comment='{'x' * 65}' is not a valid LO"),
    (CStoreRQ(message_id=1, affected_sop_class_uid="1.2",
              affected_sop_instance_uid=None), 0x1000,  # type: ignore[arg-type]
     "(0000,1000): mandatory affected_sop_instance_uid is missing"),
    (CStoreRSP(message_id_being_responded_to=1, status=0, offending_element=(-1,)), 0x0901,
     "(0000,0901): offending_element=(-1,) is not a sequence of 32-bit tags"),
])
def test_encode_errors_name_the_tag_and_value(msg: Message, tag: int, text: str) -> None:
    with pytest.raises(CommandEncodeError) as exc:
        encode(msg)
    assert exc.value.tag == tag and str(exc.value) == text


def test_encode_pads_odd_values_by_vr_and_leaves_even_ones() -> None:
    data = encode(CMoveRQ(message_id=1, affected_sop_class_uid="1.23", move_destination="ABC"))
    assert el(0x0002, b"1.23") in data and el(0x0600, b"ABC ") in data
    data = encode(CFindRSP(message_id_being_responded_to=1, status=0, error_comment="odd",
                           affected_sop_class_uid="1.2"))
    assert el(0x0002, b"1.2\x00") in data and el(0x0902, b"odd ") in data
    assert struct.unpack_from("<I", data, 8)[0] == len(data) - 12
