"""Command set codec: byte layout, round trips, leniency, errors, fuzzing, and differential
tests against pydicom (reader) and pynetdicom (writer)."""

from __future__ import annotations

import logging
import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset
from pydicom.tag import Tag

from dimse import commands
from dimse.commands import CommandEncodeError, UnknownCommandError, decode, encode
from dimse.errors import CommandDecodeError
from dimse.messages import (
    ELEMENTS,
    MESSAGE_TYPES,
    SPECS,
    VR,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
    Presence,
    Priority,
)

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
CT = "1.2.840.10008.5.1.4.1.1.2"


def el(tag: int, value: bytes) -> bytes:
    """One implicit VR LE element."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def us(tag: int, v: int) -> bytes:
    return el(tag, struct.pack("<H", v))


def with_group_length(body: bytes) -> bytes:
    return el(0, struct.pack("<I", len(body))) + body


# --- byte layout ----------------------------------------------------------------------------

def test_echo_rq_matches_the_spec_example_byte_for_byte() -> None:
    expected = bytes.fromhex(
        "00000000 04000000 38000000"               # (0000,0000) UL 4, value 56
        "00000200 12000000" + "312e322e3834302e31303030382e312e3100"  # (0000,0002) UI 18
        "00000001 02000000 3000"                   # (0000,0100) US 0x0030
        "00001001 02000000 0100"                   # (0000,0110) US 1
        "00000008 02000000 0101"                   # (0000,0800) US 0x0101
    )
    assert encode(CEchoRQ(message_id=1)) == expected
    assert decode(expected) == CEchoRQ(message_id=1)


def test_padding_and_group_length() -> None:
    msg = CMoveRQ(message_id=3, affected_sop_class_uid="1.2.3", move_destination="DST",
                  priority=Priority.HIGH)
    data = encode(msg)
    (glen,) = struct.unpack_from("<I", data, 8)
    assert glen == len(data) - 12
    assert b"1.2.3\x00" in data and b"DST " in data
    tags = []
    off = 0
    while off < len(data):
        g, e, n = struct.unpack_from("<HHI", data, off)
        tags.append((g << 16) | e)
        off += 8 + n
        assert n % 2 == 0
    assert tags == sorted(tags) and tags[0] == 0 and 0x100 in tags


# --- round trips ----------------------------------------------------------------------------

_uid = st.from_regex(r"[0-9](\.?[0-9]){0,63}", fullmatch=True).filter(lambda s: len(s) <= 64)
_ae = st.from_regex(r"[A-Z0-9_]([A-Z0-9_ ]{0,14}[A-Z0-9_])?", fullmatch=True)
_lo = st.from_regex(r"[a-zA-Z0-9_.:]([a-zA-Z0-9_.: ]{0,62}[a-zA-Z0-9_.:])?", fullmatch=True)
_values: dict[VR, Any] = {
    VR.US: st.integers(0, 0xFFFF),
    VR.UI: _uid,
    VR.AE: _ae,
    VR.LO: _lo,
    VR.AT: st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=4).map(tuple),
}


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cf = draw(st.sampled_from(sorted(SPECS)))
    kwargs = {}
    for tag, presence in SPECS[cf].fields:
        e = ELEMENTS[tag]
        if presence is Presence.MANDATORY or draw(st.booleans()):
            kwargs[e.attr] = draw(_values[e.vr])
        else:
            kwargs[e.attr] = None
    return MESSAGE_TYPES[cf](**kwargs)


@given(messages())
@settings(max_examples=500)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert len(data) % 2 == 0
    assert decode(data) == msg
    assert decode(memoryview(data)) == msg
    assert decode(bytearray(data)) == msg
    assert encode(decode(data)) == data


@given(messages())
@settings(max_examples=300)
def test_pydicom_reads_our_encoding_to_the_same_values(msg: Message) -> None:
    ds = read_dataset(BytesIO(encode(msg)), True, True)
    assert ds[0x00000100].value == msg.command_field
    assert ds[0x00000000].value == len(encode(msg)) - 12
    for tag, _ in SPECS[msg.command_field].fields:
        e = ELEMENTS[tag]
        value = getattr(msg, e.attr)
        if value is None:
            assert Tag(tag) not in ds
            continue
        got = ds[tag].value
        if e.vr is VR.AT:
            tags = [got] if len(value) == 1 else list(got)
            assert [int(t) for t in tags] == list(value)
        elif e.vr is VR.US:
            assert got == value
        else:
            assert str(got).strip(" \x00") == value


# --- pynetdicom's encoding decodes with ours --------------------------------------------------

def _pynetdicom_command(primitive: Any, message_cls: Any) -> bytes:
    msg = message_cls()
    msg.primitive_to_message(primitive)
    pdata = next(iter(msg.encode_msg(1, 0)))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[0] == 0x03
    return bytes(pdv[1:])


def test_pynetdicom_c_find_rq_decodes() -> None:
    from pynetdicom.dimse_messages import C_FIND_RQ
    from pynetdicom.dimse_primitives import C_FIND

    p = C_FIND()
    p.MessageID = 7
    p.AffectedSOPClassUID = STUDY_FIND
    p.Priority = 2
    p.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    msg = decode(_pynetdicom_command(p, C_FIND_RQ))
    assert msg == CFindRQ(message_id=7, affected_sop_class_uid=STUDY_FIND, priority=Priority.LOW,
                          command_data_set_type=0x0001)
    assert msg.has_dataset and not msg.unexpected


def test_pynetdicom_c_store_rq_decodes() -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    p = C_STORE()
    p.MessageID = 65535
    p.AffectedSOPClassUID = CT
    p.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    p.Priority = 1
    p.MoveOriginatorApplicationEntityTitle = "MOVESCU"
    p.MoveOriginatorMessageID = 12
    p.DataSet = BytesIO(b"\x08\x00\x18\x00\x02\x00\x00\x001\x00")
    msg = decode(_pynetdicom_command(p, C_STORE_RQ))
    assert msg == CStoreRQ(message_id=65535, affected_sop_class_uid=CT,
                           affected_sop_instance_uid="1.2.826.0.1.3680043.2.1125.1",
                           priority=Priority.HIGH, move_originator_ae_title="MOVESCU",
                           move_originator_message_id=12, command_data_set_type=0x0001)


@pytest.mark.parametrize("status", [0xFF00, 0xB000, 0x0000, 0xA702, 0xFE00])
def test_pynetdicom_c_move_rsp_decodes(status: int) -> None:
    from pynetdicom.dimse_messages import C_MOVE_RSP
    from pynetdicom.dimse_primitives import C_MOVE

    p = C_MOVE()
    p.MessageIDBeingRespondedTo = 9
    p.AffectedSOPClassUID = STUDY_MOVE
    p.Status = status
    p.NumberOfCompletedSuboperations = 3
    p.NumberOfFailedSuboperations = 1
    p.NumberOfWarningSuboperations = 2
    if status == 0xFF00:
        p.NumberOfRemainingSuboperations = 4
    else:
        p.Identifier = BytesIO(b"\x08\x00\x58\x00\x06\x00\x00\x001.2.3\x00")
    msg = decode(_pynetdicom_command(p, C_MOVE_RSP))
    assert isinstance(msg, CMoveRSP)
    assert (msg.message_id_being_responded_to, msg.status, msg.affected_sop_class_uid) == (
        9, status, STUDY_MOVE)
    assert (msg.number_of_completed_suboperations, msg.number_of_failed_suboperations,
            msg.number_of_warning_suboperations) == (3, 1, 2)
    assert msg.number_of_remaining_suboperations == (4 if status == 0xFF00 else None)
    assert msg.has_dataset == (status != 0xFF00)


def test_pynetdicom_encoding_is_byte_identical_for_c_echo_rq() -> None:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    p = C_ECHO()
    p.MessageID = 1
    p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert _pynetdicom_command(p, C_ECHO_RQ) == encode(CEchoRQ(message_id=1))


# --- leniency -------------------------------------------------------------------------------

_FIND_BODY = (el(0x0002, b"1.2.840.10008.5.1.4.1.2.2.1\x00") + us(0x0100, 0x0020)
              + us(0x0110, 5) + us(0x0700, 0) + us(0x0800, 0x0001))


def test_missing_or_wrong_group_length_is_tolerated() -> None:
    want = CFindRQ(message_id=5, affected_sop_class_uid=STUDY_FIND)
    assert decode(with_group_length(_FIND_BODY)) == want
    assert decode(_FIND_BODY) == want
    assert decode(el(0, struct.pack("<I", 3)) + _FIND_BODY) == want
    assert decode(el(0, b"") + _FIND_BODY) == want


@pytest.mark.parametrize("pad", [b"\x00", b" "])
def test_uid_padding_nul_or_space(pad: bytes) -> None:
    body = (el(0x0002, b"1.2.3" + pad) + us(0x0100, 0x8001) + us(0x0120, 5) + us(0x0800, 0x0101)
            + us(0x0900, 0) + el(0x1000, b"1.2.4.55" + pad + pad))
    msg = decode(with_group_length(body))
    assert msg == CStoreRSP(message_id_being_responded_to=5, status=0,
                            affected_sop_class_uid="1.2.3", affected_sop_instance_uid="1.2.4.55")


@pytest.mark.parametrize("dstype", [0x0000, 0x0001, 0x0102, 0xFEFE, 0x0100, 0xFFFF])
def test_any_data_set_type_but_0101_means_present(dstype: int) -> None:
    body = _FIND_BODY.replace(us(0x0800, 0x0001), us(0x0800, dstype))
    msg = decode(body)
    assert msg.has_dataset and msg.command_data_set_type == dstype
    assert not decode(body.replace(us(0x0800, dstype), us(0x0800, 0x0101))).has_dataset


def test_unexpected_elements_are_kept_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = _FIND_BODY + us(0x0903, 7) + el(0x1001, b"1.2\x00")
    with caplog.at_level(logging.WARNING, logger="dimse.commands"):
        msg = decode(with_group_length(body))
    assert msg.unexpected == ((0x00000903, b"\x07\x00"), (0x00001001, b"1.2\x00"))
    assert "(0000,0903)" in caplog.text and "(0000,1001)" in caplog.text
    # the spec says C-CANCEL has no AffectedSOPClassUID: reported, not fatal
    cancel = decode(el(0x0002, b"1.2\x00") + us(0x0100, 0x0FFF) + us(0x0120, 5)
                    + us(0x0800, 0x0101))
    assert cancel == CCancelRQ(message_id_being_responded_to=5)
    assert cancel.unexpected == ((0x00000002, b"1.2\x00"),)


def test_elements_out_of_order_and_duplicates_are_tolerated() -> None:
    body = us(0x0800, 0x0101) + us(0x0120, 5) + us(0x0100, 0x0FFF) + us(0x0120, 6)
    msg = decode(body)
    assert msg == CCancelRQ(message_id_being_responded_to=5)


def test_empty_optional_values() -> None:
    body = (us(0x0100, 0x8021) + us(0x0120, 1) + us(0x0800, 0x0101) + us(0x0900, 0xA900)
            + el(0x0901, b"") + el(0x0902, b"") + el(0x1020, b""))
    msg = decode(body)
    assert isinstance(msg, CMoveRSP)
    assert msg.offending_element == () and msg.error_comment == ""
    assert msg.number_of_remaining_suboperations is None


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [0x0002, 0x0110, 0x0700, 0x0800])
def test_missing_mandatory_names_the_tag(missing: int) -> None:
    body = b"".join(part for part in (
        el(0x0002, b"1.2.840.10008.5.1.4.1.2.2.1\x00"), us(0x0100, 0x0020), us(0x0110, 5),
        us(0x0700, 0), us(0x0800, 0x0001)) if struct.unpack_from("<HH", part)[1] != missing)
    with pytest.raises(CommandDecodeError) as exc:
        decode(body)
    assert exc.value.tag == missing
    assert f"(0000,{missing:04X})" in str(exc.value)


def test_missing_command_field() -> None:
    with pytest.raises(CommandDecodeError) as exc:
        decode(us(0x0110, 1))
    assert exc.value.tag == 0x0100
    with pytest.raises(CommandDecodeError):
        decode(b"")


def test_unknown_command_field_carries_message_id() -> None:
    with pytest.raises(UnknownCommandError) as exc:
        decode(us(0x0100, 0x0130) + us(0x0110, 42) + us(0x0800, 0x0101))  # N-ACTION-RQ
    assert exc.value.command_field == 0x0130 and exc.value.message_id == 42
    assert isinstance(exc.value, CommandDecodeError)


def test_truncated_and_overlong_elements() -> None:
    data = encode(CEchoRQ(message_id=1))
    with pytest.raises(CommandDecodeError) as exc:
        decode(data[:-1])
    assert exc.value.tag == 0x0800 and exc.value.offset == len(data) - 10
    with pytest.raises(CommandDecodeError) as exc:
        decode(data + b"\x00\x00\x00")
    assert exc.value.offset == len(data)
    with pytest.raises(CommandDecodeError) as exc:
        decode(data[:-10] + struct.pack("<HHI", 0, 0x800, 0xFFFFFFFF))
    assert exc.value.tag == 0x0800


def test_bad_value_lengths() -> None:
    with pytest.raises(CommandDecodeError) as exc:
        decode(us(0x0100, 0x0030) + el(0x0110, b"\x01\x00\x00\x00") + us(0x0800, 0x0101)
               + el(0x0002, b"1.2\x00"))
    assert exc.value.tag == 0x0110
    with pytest.raises(CommandDecodeError) as exc:
        decode(us(0x0100, 0x8001) + us(0x0120, 1) + us(0x0800, 0x0101) + us(0x0900, 0)
               + el(0x0901, b"\x10\x00\x10\x00\x08\x00"))
    assert exc.value.tag == 0x0901
    with pytest.raises(CommandDecodeError) as exc:
        decode(us(0x0100, 0x0030) + us(0x0110, 1) + us(0x0800, 0x0101) + el(0x0002, b"1.\xff\x00"))
    assert exc.value.tag == 0x0002


def test_encode_errors() -> None:
    with pytest.raises(CommandEncodeError) as exc:
        encode(CFindRQ(message_id=70000, affected_sop_class_uid="1.2"))
    assert exc.value.tag == 0x0110
    with pytest.raises(CommandEncodeError):
        encode(CStoreRQ(message_id=1, affected_sop_class_uid="1.2",
                        affected_sop_instance_uid=None))  # type: ignore[arg-type]
    with pytest.raises(CommandEncodeError):
        encode(CFindRQ(message_id=1, affected_sop_class_uid="1.2.é"))
    with pytest.raises(CommandEncodeError):
        encode(CFindRQ(message_id=1, affected_sop_class_uid="1." * 40))
    with pytest.raises(CommandEncodeError):
        encode(CMoveRQ(message_id=1, affected_sop_class_uid="1.2", move_destination="A" * 17))
    with pytest.raises(CommandEncodeError):
        encode(CStoreRSP(message_id_being_responded_to=1, status=0,
                         offending_element=(1 << 32,)))
    with pytest.raises(CommandEncodeError):
        encode(object())  # type: ignore[arg-type]
    assert isinstance(CommandEncodeError("x"), ValueError)


# --- fuzzing --------------------------------------------------------------------------------

def _decode_or_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except CommandDecodeError:
        return
    assert type(msg) in MESSAGE_TYPES.values()


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_or_error(data)


_known_tags = st.sampled_from(sorted(ELEMENTS) + [0x0903, 0x1001, 0x00080016])
_element = st.builds(
    lambda tag, value, cf: el(tag, struct.pack("<H", cf) if tag == 0x100 else value),
    _known_tags, st.binary(max_size=12), st.sampled_from(sorted(SPECS) + [0x0130, 0xFFFF]),
)


@given(st.lists(_element, max_size=14))
@settings(max_examples=2000)
def test_fuzz_structured_elements(parts: list[bytes]) -> None:
    _decode_or_error(b"".join(parts))


@given(messages(), st.data())
@settings(max_examples=500)
def test_fuzz_mutated_valid_commands(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decode_or_error(bytes(raw[:cut]))


def test_all_message_classes_encode() -> None:
    samples: list[Message] = [
        CEchoRQ(message_id=1), CEchoRSP(message_id_being_responded_to=1),
        CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2"),
        CStoreRSP(message_id_being_responded_to=1, status=0xB000, offending_element=(0x00100010,)),
        CFindRQ(message_id=1, affected_sop_class_uid=STUDY_FIND),
        CFindRSP(message_id_being_responded_to=1, status=0xFF00, command_data_set_type=1),
        CGetRQ(message_id=1, affected_sop_class_uid="1.2"),
        CGetRSP(message_id_being_responded_to=1, status=0, number_of_completed_suboperations=1),
        CMoveRQ(message_id=1, affected_sop_class_uid=STUDY_MOVE, move_destination="X"),
        CMoveRSP(message_id_being_responded_to=1, status=0xA801, error_comment="unknown AE"),
        CCancelRQ(message_id_being_responded_to=1),
    ]
    assert {type(m) for m in samples} == set(MESSAGE_TYPES.values())
    for m in samples:
        assert decode(encode(m)) == m
    assert commands.__all__
