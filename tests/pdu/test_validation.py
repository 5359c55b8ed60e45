"""Malformed PDUs built by hand: each raises PduDecodeError naming offset, item, field and reason."""

from __future__ import annotations

import struct

import pytest

import pdu
from pdu import PduDecodeError, PduFramer
from pdu.constants import AbortReason

INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE
UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER


def item(item_type: int, value: bytes, first: int = 0) -> bytes:
    return struct.pack(">BBH", item_type, first, len(value)) + value


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


APP = item(0x10, b"1.2.840.10008.3.1.1.1")
PC = item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2.840.10008.1.1")
          + item(0x40, b"1.2.840.10008.1.2"))
PC_AC = item(0x21, b"\x01\x00\x00\x00" + item(0x40, b"1.2.840.10008.1.2"))
MAXLEN = item(0x51, u32(16384))
CLASS_UID = item(0x52, b"1.2.3.4")


def ui(*subs: bytes) -> bytes:
    return item(0x50, MAXLEN + CLASS_UID + b"".join(subs))


def assoc(items: bytes, pdu_type: int = 1) -> bytes:
    body = u16(1) + u16(0) + b"CALLED".ljust(16) + b"CALLING".ljust(16) + bytes(32) + items
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def fails(data: bytes, offset: int, item_name: str, field: str,
          reason: AbortReason = INVALID) -> PduDecodeError:
    with pytest.raises(PduDecodeError) as info:
        pdu.decode(data)
    err = info.value
    assert (err.offset, err.item, err.field, err.abort_reason) == (offset, item_name, field, reason)
    assert str(err).startswith(f"{item_name}.{field} at offset {offset}: ")
    # the framer reports the same error for the same bytes, however they arrive
    framer = PduFramer(max_pdata_length=0, max_other_length=0)
    with pytest.raises(PduDecodeError) as info2:
        for i in range(len(data)):
            framer.feed(data[i:i + 1])
        if len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
            raise PduDecodeError("incomplete", offset=offset, item=item_name, field=field,
                                 abort_reason=reason)
    assert (info2.value.item, info2.value.field) == (item_name, field)
    return err


def test_valid_base_pdus_decode() -> None:
    """The building blocks below are valid; each test breaks one thing."""
    assert isinstance(pdu.decode(assoc(APP + PC + ui())), pdu.AAssociateRQ)
    assert isinstance(pdu.decode(assoc(APP + PC_AC + ui(), 2)), pdu.AAssociateAC)


# --------------------------------------------------------------------------- PDU level
@pytest.mark.parametrize("data", [b"", b"\x04", b"\x01\x00\x00\x00\x00"])
def test_truncated_header(data: bytes) -> None:
    fails(data, len(data), "PDU", "pdu-header")


def test_truncated_body() -> None:
    fails(b"\x05\x00\x00\x00\x00\x04\x00\x00", 8, "AReleaseRQ", "pdu-length")
    fails(assoc(APP + PC + ui())[:-1], 6 + 68 + len(APP + PC + ui()) - 1, "AAssociateRQ",
          "pdu-length")


def test_bytes_after_the_pdu() -> None:
    with pytest.raises(PduDecodeError) as info:
        pdu.decode(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00\x07")
    assert (info.value.offset, info.value.item, info.value.field) == (10, "AReleaseRQ",
                                                                      "pdu-length")


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_unknown_pdu_type(pdu_type: int) -> None:
    fails(bytes([pdu_type]) + b"\x00\x00\x00\x00\x04\x00\x00\x00\x00", 0, "PDU", "pdu-type",
          AbortReason.UNRECOGNIZED_PDU)


@pytest.mark.parametrize("pdu_type,name", [(3, "AAssociateRJ"), (5, "AReleaseRQ"),
                                            (6, "AReleaseRP"), (7, "AAbort")])
@pytest.mark.parametrize("length", [0, 3, 5, 100])
def test_fixed_size_pdu_of_wrong_size(pdu_type: int, name: str, length: int) -> None:
    fails(bytes([pdu_type, 0]) + u32(length) + bytes(length), 2, name, "pdu-length")


def test_associate_shorter_than_fixed_part() -> None:
    fails(b"\x01\x00" + u32(67) + bytes(67), 2, "AAssociateRQ", "pdu-length")
    fails(b"\x02\x00" + u32(0), 2, "AAssociateAC", "pdu-length")


# --------------------------------------------------------------------------- P-DATA-TF
def test_pdata_without_pdv() -> None:
    fails(b"\x04\x00\x00\x00\x00\x00", 2, "PDataTF", "pdu-length")


@pytest.mark.parametrize("item_length", [0, 1])
def test_pdv_shorter_than_its_header(item_length: int) -> None:
    fails(b"\x04\x00" + u32(6) + u32(item_length) + b"\x01\x03", 6, "PresentationDataValue",
          "item-length")


def test_pdv_overrunning_the_pdu() -> None:
    good = u32(4) + b"\x01\x00ab"
    fails(b"\x04\x00" + u32(8 + 7) + good + u32(5) + b"\x01\x02a", 14,
          "PresentationDataValue", "item-length")


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00\x02\x01"])
def test_pdu_ending_inside_a_pdv_header(tail: bytes) -> None:
    good = u32(4) + b"\x01\x00ab"
    fails(b"\x04\x00" + u32(8 + len(tail)) + good + tail, 14, "PresentationDataValue",
          "item-length")


# --------------------------------------------------------------------------- items
def test_item_overrunning_the_pdu() -> None:
    bad = APP[:2] + u16(200) + APP[4:]
    fails(assoc(bad + PC + ui()), 76, "ApplicationContextItem", "item-length")


def test_truncated_item_header() -> None:
    data = assoc(APP + PC + ui() + b"\x60\x00")
    fails(data, len(data) - 2, "AAssociateRQ", "item-header")


@pytest.mark.parametrize("length", [0, 3])
def test_presentation_context_shorter_than_4(length: int) -> None:
    bad = item(0x20, b"\x01\x00\x00\x00"[:length])
    fails(assoc(APP + bad + ui()), 74 + len(APP) + 2, "PresentationContextRQ", "item-length")
    bad_ac = item(0x21, b"\x01\x00\x00\x00"[:length])
    fails(assoc(APP + bad_ac + ui(), 2), 74 + len(APP) + 2, "PresentationContextAC",
          "item-length")


def test_sub_item_overrunning_its_presentation_context() -> None:
    inner = item(0x30, b"1.2.840.10008.1.1")
    bad = item(0x20, b"\x01\x00\x00\x00" + inner[:2] + u16(100) + inner[4:])
    at = 74 + len(APP) + 4 + 4 + 2
    fails(assoc(APP + bad + ui()), at, "AbstractSyntax", "item-length")


def test_presentation_context_without_abstract_syntax() -> None:
    bad = item(0x20, b"\x01\x00\x00\x00" + item(0x40, b"1.2"))
    err = fails(assoc(APP + bad + ui()), 74 + len(APP) + len(bad), "PresentationContextRQ",
                "abstract-syntax")
    assert "no abstract syntax" in err.message


def test_transfer_syntax_before_abstract_syntax() -> None:
    bad = item(0x20, b"\x01\x00\x00\x00" + item(0x40, b"1.2") + item(0x30, b"1.2.3"))
    fails(assoc(APP + bad + ui()), 74 + len(APP) + 4 + 4 + 7, "AbstractSyntax", "item-type",
          UNEXPECTED)


def test_duplicate_and_missing_mandatory_items() -> None:
    fails(assoc(APP + APP + PC + ui()), 74 + len(APP), "ApplicationContextItem", "item-type",
          UNEXPECTED)
    fails(assoc(APP + PC + ui() + ui()), 74 + len(APP + PC + ui()), "UserInformation",
          "item-type", UNEXPECTED)
    data = assoc(PC + ui())
    fails(data, len(data), "AAssociateRQ", "application-context")
    data = assoc(APP + PC)
    fails(data, len(data), "AAssociateRQ", "user-information")


def test_wrong_presentation_context_kind() -> None:
    fails(assoc(APP + PC_AC + ui()), 74 + len(APP), "PresentationContextAC", "item-type",
          UNEXPECTED)
    fails(assoc(APP + PC + ui(), 2), 74 + len(APP), "PresentationContextRQ", "item-type",
          UNEXPECTED)


# --------------------------------------------------------------------------- user information
def _sub_at(extra_before: bytes = b"") -> int:
    """Offset of the first sub-item after MAXLEN + CLASS_UID (+ extra) in assoc(APP+PC+ui())."""
    return 74 + len(APP + PC) + 4 + len(MAXLEN + CLASS_UID + extra_before)


@pytest.mark.parametrize("length", [0, 2, 3, 5, 8])
def test_max_length_sub_item_not_4_bytes(length: int) -> None:
    bad = item(0x51, bytes(length))
    fails(assoc(APP + PC + ui(bad)), _sub_at() + 2, "MaximumLength", "item-length")


@pytest.mark.parametrize("length", [0, 2, 6])
def test_async_window_not_4_bytes(length: int) -> None:
    bad = item(0x53, bytes(length))
    fails(assoc(APP + PC + ui(bad)), _sub_at() + 2, "AsynchronousOperationsWindow",
          "item-length")


def test_sub_item_overrunning_user_information() -> None:
    bad = item(0x55, b"VERSION")[:2] + u16(50) + b"VERSION"
    fails(assoc(APP + PC + ui(bad)), _sub_at() + 2, "ImplementationVersionName", "item-length")


def test_role_selection_errors() -> None:
    at = _sub_at()
    overrun = item(0x54, u16(10) + b"1.2.3" + b"\x01\x00")
    fails(assoc(APP + PC + ui(overrun)), at + 4, "RoleSelection", "uid-length")
    missing_role = item(0x54, u16(5) + b"1.2.3" + b"\x01")
    fails(assoc(APP + PC + ui(missing_role)), at + 4 + 2 + 5 + 1, "RoleSelection", "scp-role")
    extra = item(0x54, u16(5) + b"1.2.3" + b"\x01\x00\x00")
    fails(assoc(APP + PC + ui(extra)), at + 4 + 2 + 5 + 2, "RoleSelection", "item-length")


def test_extended_negotiation_uid_overrun() -> None:
    bad = item(0x56, u16(9) + b"1.2.3")
    fails(assoc(APP + PC + ui(bad)), _sub_at() + 4, "SOPClassExtendedNegotiation",
          "sop-class-uid-length")


def test_common_extended_negotiation_errors() -> None:
    at = _sub_at() + 4
    head = u16(3) + b"1.2" + u16(3) + b"1.3"
    list_overrun = item(0x57, head + u16(10) + u16(3) + b"1.4")
    fails(assoc(APP + PC + ui(list_overrun)), at + len(head), "SOPClassCommonExtendedNegotiation",
          "related-general-sop-class-identification-length")
    entry_overrun = item(0x57, head + u16(5) + u16(4) + b"1.4")
    fails(assoc(APP + PC + ui(entry_overrun)), at + len(head) + 2,
          "SOPClassCommonExtendedNegotiation", "related-general-sop-class-uid-length")
    missing_service = item(0x57, u16(3) + b"1.2")
    fails(assoc(APP + PC + ui(missing_service)), at + 5, "SOPClassCommonExtendedNegotiation",
          "service-class-uid-length")
    trailing = item(0x57, head + u16(0) + b"\x00")
    fails(assoc(APP + PC + ui(trailing)), at + len(head) + 2,
          "SOPClassCommonExtendedNegotiation", "item-length")


def test_user_identity_errors() -> None:
    at = _sub_at() + 4
    bad_flag = item(0x58, b"\x01\x02" + u16(1) + b"u" + u16(0))
    fails(assoc(APP + PC + ui(bad_flag)), at + 1, "UserIdentityRQ",
          "positive-response-requested")
    primary_overrun = item(0x58, b"\x01\x00" + u16(9) + b"u" + u16(0))
    fails(assoc(APP + PC + ui(primary_overrun)), at + 2, "UserIdentityRQ",
          "primary-field-length")
    no_secondary = item(0x58, b"\x01\x00" + u16(1) + b"u")
    fails(assoc(APP + PC + ui(no_secondary)), at + 5, "UserIdentityRQ",
          "secondary-field-length")
    ac_trailing = item(0x59, u16(1) + b"r" + b"!")
    fails(assoc(APP + PC_AC + ui(ac_trailing), 2), 74 + len(APP + PC_AC) + 4
          + len(MAXLEN + CLASS_UID) + 4 + 3, "UserIdentityAC", "item-length")


def test_unknown_items_and_sub_items_are_kept_not_rejected() -> None:
    unknown_sub = item(0x99, b"\x01\x02", first=7)
    unknown_item = item(0x60, b"xyz", first=1)
    unknown_in_pc = item(0x77, b"?")
    pc = item(0x20, b"\x01\x00\xff\x00" + item(0x30, b"1.2") + unknown_in_pc + item(0x40, b"1.3"))
    data = assoc(APP + unknown_item + pc + ui(unknown_sub))
    rq = pdu.decode(data)
    assert isinstance(rq, pdu.AAssociateRQ)
    assert rq.variable_items[1] == pdu.UnknownItem(0x60, b"xyz", 1)
    assert rq.user_information.sub_items[-1] == pdu.UnknownItem(0x99, b"\x01\x02", 7)
    (ctx,) = rq.presentation_contexts
    assert (ctx.abstract_syntax, ctx.transfer_syntaxes) == ("1.2", ("1.3",))
    assert ctx.extra_sub_items == ((1, pdu.UnknownItem(0x77, b"?")),)
    assert pdu.encode(rq) == data


def test_rejected_ac_context_without_transfer_syntax() -> None:
    ac = pdu.decode(assoc(APP + item(0x21, b"\x01\x00\x03\x00") + ui(), 2))
    assert isinstance(ac, pdu.AAssociateAC)
    assert ac.presentation_contexts == (pdu.PresentationContextAC(1, 3, None),)


def test_odd_inputs_never_escape_as_other_exceptions() -> None:
    for data in (b"\x01\x00" + u32(68) + bytes(68), bytes(range(256)) * 3,
                 b"\x02\x00" + u32(0xFFFFFFFF), b"\x04\x00" + u32(6) + u32(0xFFFFFFFF) + b"\x01\x01"):
        with pytest.raises(PduDecodeError):
            pdu.decode(data)
    with pytest.raises(PduDecodeError):
        pdu.decode("text")  # type: ignore[arg-type]
