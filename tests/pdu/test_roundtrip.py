"""Round trips: decode(encode(x)) == x and encode(decode(b)) == b, for every PDU and item."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pdu
from pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    AsynchronousOperationsWindow,
    PDataTF,
    PduEncodeError,
    PresentationContextAC,
    PresentationContextRQ,
    PresentationDataValue,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from pdu.constants import DEFAULT_MAX_PDU_LENGTH, IMPLEMENTATION_CLASS_UID
from tests.fixtures.captured import FIXTURES

from . import strategies as S

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def roundtrip(p: pdu.Pdu) -> None:
    data = pdu.encode(p)
    assert p.encode() == data
    decoded = pdu.decode(data)
    assert decoded == p
    assert type(decoded) is type(p)
    assert pdu.encode(decoded) == data
    # bytearray and memoryview inputs decode the same
    assert pdu.decode(bytearray(data)) == p
    assert pdu.decode(memoryview(data)) == p


@settings(max_examples=300)
@given(S.pdus)
def test_any_pdu_roundtrips(p: pdu.Pdu) -> None:
    roundtrip(p)


@pytest.mark.parametrize("strategy", [
    S.associate_rqs, S.associate_acs, S.associate_rjs, S.pdata_tfs, S.release_rqs,
    S.release_rps, S.aborts,
], ids=["rq", "ac", "rj", "pdata", "release-rq", "release-rp", "abort"])
@settings(max_examples=80)
@given(data=st.data())
def test_each_pdu_type_roundtrips(strategy: st.SearchStrategy[pdu.Pdu], data: st.DataObject
                                  ) -> None:
    roundtrip(data.draw(strategy))


@pytest.mark.parametrize("name", [
    "max_lengths", "implementation_class_uids", "implementation_version_names",
    "async_windows", "role_selections", "extended_negotiations",
    "common_extended_negotiations", "user_identities_rq", "user_identities_ac",
    "unknown_sub_items",
])
@settings(max_examples=60)
@given(data=st.data())
def test_each_user_sub_item_roundtrips(name: str, data: st.DataObject) -> None:
    items = tuple(data.draw(st.lists(getattr(S, name), min_size=1, max_size=3)))
    for kind in (AAssociateRQ, AAssociateAC):
        p = kind.build(called_ae="A", calling_ae="B", user_information=UserInformation(items))
        roundtrip(p)
        assert pdu.decode(p.encode()).user_information.sub_items == items


@settings(max_examples=100)
@given(S.presentation_contexts_rq(), S.presentation_contexts_ac())
def test_presentation_context_items_roundtrip(rq_ctx: PresentationContextRQ,
                                              ac_ctx: PresentationContextAC) -> None:
    rq = AAssociateRQ.build(called_ae="A", calling_ae="B", presentation_contexts=(rq_ctx,))
    ac = AAssociateAC.build(called_ae="A", calling_ae="B", presentation_contexts=(ac_ctx,))
    roundtrip(rq)
    roundtrip(ac)
    assert pdu.decode(rq.encode()).presentation_contexts == (rq_ctx,)  # type: ignore[union-attr]
    assert pdu.decode(ac.encode()).presentation_contexts == (ac_ctx,)  # type: ignore[union-attr]


@pytest.mark.skipif(not FIXTURES, reason="captured fixtures not available")
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_captured_pdus_are_byte_exact(name: str) -> None:
    data = FIXTURES[name].data
    decoded = pdu.decode(data)
    assert decoded.pdu_type == data[0]
    assert pdu.encode(decoded) == data


@pytest.mark.skipif("echoscu/assoc/01-associate-rq" not in FIXTURES, reason="no fixture")
def test_dcmtk_echoscu_rq_fields() -> None:
    rq = pdu.decode(FIXTURES["echoscu/assoc/01-associate-rq"].data)
    assert isinstance(rq, AAssociateRQ)
    assert (rq.called_ae, rq.calling_ae) == ("QRSCP", "DCMTKSCU")
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    (ctx,) = rq.presentation_contexts
    assert (ctx.context_id, ctx.abstract_syntax, ctx.transfer_syntaxes) == (
        1, VERIFICATION, (IMPLICIT_LE,))
    assert ctx.reserved == b"\x00\xff\x00"  # DCMTK fills byte 6; kept for byte-exactness
    assert rq.user_information.max_length == 16384
    assert rq.user_information.implementation_version_name is not None


# An A-ASSOCIATE-RQ shaped like DCMTK echoscu's, built by hand and annotated.
ECHOSCU_RQ = bytes.fromhex(
    "01 00 000000cd"                              # A-ASSOCIATE-RQ, PDU-length 205
    "0001 0000"                                   # protocol version 1, reserved
    "414e592d534350202020202020202020"            # called AE 'ANY-SCP'
    "4543484f534355202020202020202020"            # calling AE 'ECHOSCU'
    + "00" * 32                                   # reserved
    + "10 00 0015 312e322e3834302e31303030382e332e312e312e31"  # application context
    "20 00 002e 01 00 ff 00"                      # presentation context 1 (DCMTK: 0xFF)
    "30 00 0011 312e322e3834302e31303030382e312e31"  # abstract syntax: Verification
    "40 00 0011 312e322e3834302e31303030382e312e32"  # transfer syntax: implicit VR LE
    "50 00 003a"                                  # user information, 58 bytes
    "51 00 0004 00004000"                         # max length 16384
    "52 00 001b 312e322e3237362e302e373233303031302e332e302e332e362e37"  # class UID
    "55 00 000f 4f4646495334445f44434d544b3336"   # version name (15 chars)
)


def test_hand_built_echoscu_rq() -> None:
    rq = pdu.decode(ECHOSCU_RQ)
    assert isinstance(rq, AAssociateRQ)
    assert len(ECHOSCU_RQ) == 6 + 205
    assert (rq.protocol_version, rq.called_ae, rq.calling_ae) == (1, "ANY-SCP", "ECHOSCU")
    assert rq.presentation_contexts == (
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,), reserved=b"\x00\xff\x00"),)
    info = rq.user_information
    assert info.max_length == 16384
    assert info.implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert info.implementation_version_name == "OFFIS4D_DCMTK36"
    assert info.async_ops_window is None and info.user_identity is None
    assert info.role_selections == () and info.extended_negotiations == ()
    assert pdu.encode(rq) == ECHOSCU_RQ


def test_build_defaults_and_accessors() -> None:
    rq = AAssociateRQ.build(
        called_ae="ARCHIVE", calling_ae="ME",
        presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (EXPLICIT_LE, IMPLICIT_LE)),),
    )
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert rq.user_information.max_length == DEFAULT_MAX_PDU_LENGTH
    assert rq.user_information.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    data = rq.encode()
    assert data[10:26] == b"ARCHIVE".ljust(16) and data[26:42] == b"ME".ljust(16)
    roundtrip(rq)
    info = UserInformation.build(
        max_length=0, implementation_class_uid="1.2.3", implementation_version_name="V1",
        async_ops_window=AsynchronousOperationsWindow(0, 1),
        role_selections=(RoleSelection("1.2.4", 0, 1),),
        extended_negotiations=(SOPClassExtendedNegotiation("1.2.5", b"\x01\x01"),),
        common_extended_negotiations=(SOPClassCommonExtendedNegotiation("1.2.6", "1.2.7",
                                                                        ("1.2.8",)),),
        user_identity=UserIdentityRQ(2, True, b"user", b"pass"),
    )
    assert [type(i).item_type for i in info.sub_items] == [  # type: ignore[union-attr]
        0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58]
    assert (info.max_length, info.async_ops_window) == (0, AsynchronousOperationsWindow(0, 1))
    assert info.user_identity == UserIdentityRQ(2, True, b"user", b"pass")
    ac = AAssociateAC.build(called_ae="ARCHIVE", calling_ae="ME", user_information=info,
                            presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT_LE),
                                                   PresentationContextAC(3, 3, None)))
    roundtrip(ac)
    assert pdu.decode(ac.encode()).user_information == info  # type: ignore[union-attr]


def test_ae_titles_are_stripped_and_raw_fields_kept() -> None:
    rq = AAssociateRQ.build(called_ae="X", calling_ae="Y")
    data = bytearray(rq.encode())
    data[10:26] = b"  CALLED\x00\x00\x00\x00\x00\x00\x00\x00"
    data[26:42] = b" " * 16  # blank: not a decode error
    decoded = pdu.decode(bytes(data))
    assert isinstance(decoded, AAssociateRQ)
    assert (decoded.called_ae, decoded.calling_ae) == ("CALLED", "")
    assert decoded.called_ae_raw == bytes(data[10:26]) and decoded.calling_ae_raw is None
    assert pdu.encode(decoded) == bytes(data)
    # changing the title drops the raw field and re-pads with spaces
    from dataclasses import replace
    assert replace(decoded, called_ae="NEW").encode()[10:26] == b"NEW".ljust(16)


def test_uid_trailing_nul_is_stripped() -> None:
    """The one tolerance that is not byte-exact: one trailing NUL after a UID is dropped."""
    rq = AAssociateRQ.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),))
    data = rq.encode()
    nul = data.replace(b"\x30\x00\x00\x11" + VERIFICATION.encode(),
                       b"\x30\x00\x00\x12" + VERIFICATION.encode() + b"\x00")
    nul = nul[:2] + (int.from_bytes(nul[2:6], "big") + 1).to_bytes(4, "big") + nul[6:]
    nul = nul.replace(b"\x20\x00\x00\x2e", b"\x20\x00\x00\x2f")
    decoded = pdu.decode(nul)
    assert decoded == rq
    assert pdu.encode(decoded) == data


def test_pdv_data_is_a_slice_of_the_input() -> None:
    data = PDataTF((PresentationDataValue(1, 0, b"a" * 10), PresentationDataValue(1, 3, b"bc"))
                   ).encode()
    decoded = pdu.decode(data)
    assert isinstance(decoded, PDataTF)
    first, second = decoded.pdvs
    assert isinstance(first.data, memoryview) and first.data.obj is data
    assert bytes(first.data) == b"a" * 10 and bytes(second.data) == b"bc"
    assert (first.is_command, first.is_last, second.is_command, second.is_last) == (
        False, False, True, True)
    assert data[:6] == b"\x04\x00\x00\x00\x00\x18"


def test_pdata_accepts_bytes_like_data() -> None:
    payload = bytearray(b"0123")
    strided = memoryview(b"0a1b2c3d")[::2]
    for data in (payload, memoryview(payload), memoryview(bytes(payload)).cast("H"), strided,
                 memoryview(b"xx0123")[2:]):
        expected = b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x06\x01\x020123"
        assert PDataTF((PresentationDataValue(1, 2, data),)).encode() == expected
        assert pdu.encode(PDataTF([PresentationDataValue(1, 2, data)])) == expected  # type: ignore[arg-type]
        two = pdu.encode(PDataTF((PresentationDataValue(1, 2, data),) * 2))
        assert two == b"\x04\x00\x00\x00\x00\x14" + (b"\x00\x00\x00\x06\x01\x020123" * 2)


def test_pdata_hot_path_matches_checked_path() -> None:
    """pdu.encode's inline single-PDV path and the general path give the same bytes."""
    for data in (b"", b"x" * 300, memoryview(b"_" * 12 + b"y" * 70000)[12:]):
        for cid, control in ((1, 0), (255, 3), (17, 2)):
            fast = pdu.encode(PDataTF((PresentationDataValue(cid, control, data),)))
            header = PresentationDataValue(cid, control, b"")
            pair = pdu.encode(PDataTF((header, PresentationDataValue(cid, control, data))))
            assert fast[6:] == pair[12:] and fast[:6] == struct.pack(">BBI", 4, 0, len(data) + 6)


def test_fixed_pdus_bytes() -> None:
    assert AReleaseRQ().encode() == bytes.fromhex("05000000000400000000")
    assert AReleaseRP().encode() == bytes.fromhex("06000000000400000000")
    assert AAbort(2, 6).encode() == bytes.fromhex("07000000000400000206")
    assert AAbort().encode() == bytes.fromhex("07000000000400000000")
    assert AAssociateRJ(1, 1, 7).encode() == bytes.fromhex("03000000000400010107")


@pytest.mark.parametrize("bad", [
    PDataTF(()),
    PDataTF((PresentationDataValue(2, 0, b""),)),
    PDataTF((PresentationDataValue(0, 0, b""),)),
    PDataTF((PresentationDataValue(257, 0, b""),)),
    PDataTF((PresentationDataValue(1, 256, b""),)),
    PDataTF((PresentationDataValue(1, 0, "text"),)),  # type: ignore[arg-type]
    PDataTF((PresentationDataValue(-1, 0, b""),)),
    PDataTF((PresentationDataValue(1, -1, b""),)),
    PDataTF((PresentationDataValue(1.0, 0, b""),)),  # type: ignore[arg-type]
    PDataTF((PresentationDataValue(257, 0, memoryview(b"x")),)),
    PDataTF((PresentationDataValue(1, 256, memoryview(b"x")),)),
    PDataTF((PresentationDataValue(2, 0, memoryview(b"x")),)),
    PDataTF(None),  # type: ignore[arg-type]
    PDataTF(((1, 0, b"x"),)),  # type: ignore[arg-type]
    AAbort(256, 0),
    AAssociateRJ(-1, 1, 1),
    AAssociateRQ.build(called_ae="A" * 17, calling_ae="B"),
    AAssociateRQ.build(called_ae="A\\B", calling_ae="B"),
    AAssociateRQ.build(called_ae="Ä", calling_ae="B"),
    AAssociateRQ.build(called_ae=" A", calling_ae="B"),
    AAssociateRQ.build(called_ae="A", calling_ae="B", application_context="1." * 40),
    AAssociateRQ.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextRQ(2, VERIFICATION, (IMPLICIT_LE,)),)),
    AAssociateRQ.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextRQ(1, "1.2.é", (IMPLICIT_LE,)),)),
    AAssociateRQ.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextRQ(1, "", (IMPLICIT_LE,)),)),
    AAssociateAC.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextAC(1, 0, None),)),
    AAssociateAC.build(called_ae="A", calling_ae="B", presentation_contexts=(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),)),  # type: ignore[arg-type]
    AAssociateRQ.build(called_ae="A", calling_ae="B", user_information=UserInformation.build(
        max_length=-1)),
    AAssociateRQ.build(called_ae="A", calling_ae="B", user_information=UserInformation.build(
        implementation_version_name="X" * 17)),
    AAssociateRQ.build(called_ae="A", calling_ae="B", user_information=UserInformation.build(
        implementation_version_name="")),
    AAssociateRQ.build(called_ae="A", calling_ae="B", user_information=UserInformation((
        UserIdentityAC(b"x" * 70000),))),
    AAssociateRQ.build(called_ae="A", calling_ae="B", user_information=UserInformation((
        UnknownItem(0x99, b"x" * 70000),))),
    AAssociateRQ("A", "B", ()),
], ids=lambda p: type(p).__name__)
def test_encode_validates(bad: pdu.Pdu) -> None:
    with pytest.raises(PduEncodeError):
        pdu.encode(bad)


def test_encode_rejects_non_pdus() -> None:
    with pytest.raises(PduEncodeError):
        pdu.encode("not a pdu")  # type: ignore[arg-type]


_FIELD = st.integers(-2, 300) | st.booleans() | st.sampled_from([1.0, "1", None])
_DATA = st.binary(max_size=64).flatmap(lambda b: st.sampled_from(
    [b, bytearray(b), memoryview(b), memoryview(b"ab" + b)[2:], memoryview(b + b)[::2]]))


@given(cid=_FIELD, control=_FIELD, data=_DATA)
def test_pdata_encode_checks_every_field(cid: object, control: object, data: object) -> None:
    """One PDV, any field values: the encoded bytes, or PduEncodeError when a field is invalid."""
    p = PDataTF((PresentationDataValue(cid, control, data),))  # type: ignore[arg-type]
    valid = isinstance(cid, int) and 1 <= cid <= 255 and cid % 2 == 1 and \
        isinstance(control, int) and 0 <= control <= 255
    if not valid:
        with pytest.raises(PduEncodeError):
            pdu.encode(p)
        return
    payload = bytes(data)  # type: ignore[call-overload]
    assert pdu.encode(p) == struct.pack(">BBIIBB", 4, 0, len(payload) + 6, len(payload) + 2,
                                        cid, control) + payload
