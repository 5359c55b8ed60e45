"""Fuzz invariant: on ANY bytes, decode returns a PDU or raises PduDecodeError, nothing else.

Inputs are random bytes and mutations (bit flips, truncations, length-field edits, splices,
insertions) of valid PDUs: hand-made realistic ones, ones from the Hypothesis strategies, and the
captured DCMTK/pynetdicom fixtures when that module exists. A PDU that decodes and re-encodes must
decode to the same value, and the framer must behave like decode on the same bytes.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pdu
from pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PduDecodeError,
    PduEncodeError,
    PduFramer,
    PresentationContextAC,
    PresentationContextRQ,
    PresentationDataValue,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from tests.fixtures.captured import FIXTURES

from . import strategies as S
from .test_roundtrip import ECHOSCU_RQ

_STORAGE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50")
_RICH_INFO = UserInformation.build(
    max_length=16384, implementation_class_uid="1.2.826.0.1.3680043.9.3811.2.1.0",
    implementation_version_name="PYNETDICOM_210",
    role_selections=(RoleSelection("1.2.840.10008.5.1.4.1.1.2", 0, 1),),
    extended_negotiations=(SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", b"\x01"),),
    common_extended_negotiations=(SOPClassCommonExtendedNegotiation(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.4.2", ("1.2.840.10008.5.1.4.1.1.2.1",)),),
    user_identity=UserIdentityRQ(2, True, b"user", b"secret"),
)
HAND_MADE: list[bytes] = [
    ECHOSCU_RQ,
    AAssociateRQ.build(called_ae="ARCHIVE", calling_ae="STORESCU", user_information=_RICH_INFO,
                       presentation_contexts=tuple(
                           PresentationContextRQ(2 * i + 1, f"1.2.840.10008.5.1.4.1.1.{i}",
                                                 _STORAGE) for i in range(6))).encode(),
    AAssociateAC.build(called_ae="ARCHIVE", calling_ae="STORESCU", presentation_contexts=(
        PresentationContextAC(1, 0, _STORAGE[0]), PresentationContextAC(3, 3, None),
        PresentationContextAC(5, 4, "")), user_information=UserInformation.build(
            max_length=0, implementation_class_uid="1.2.3",
            user_identity=UserIdentityAC(b"token"))).encode(),
    PDataTF((PresentationDataValue(1, 3, bytes(range(80))),
             PresentationDataValue(1, 0, b"\x08\x00" * 20))).encode(),
    AAssociateRJ(1, 1, 7).encode(), AReleaseRQ().encode(), AReleaseRP().encode(),
    AAbort(2, 6).encode(),
]
SEEDS: list[bytes] = HAND_MADE + [f.data for f in FIXTURES.values() if len(f.data) < 4096]


def check(data: bytes) -> None:
    """The invariant, for decode and for the framer (fed in two pieces)."""
    try:
        decoded = pdu.decode(data)
    except PduDecodeError as exc:
        assert isinstance(exc.offset, int) and exc.item and exc.field
        decoded = None
    else:
        assert type(decoded) in (AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ,
                                 AReleaseRP, AAbort)
        try:
            again = pdu.encode(decoded)
        except PduEncodeError:
            pass  # e.g. an even context ID or a non-ASCII UID: decoded, but not ours to send
        else:
            assert pdu.decode(again) == decoded
    framer = PduFramer(max_pdata_length=1 << 20, max_other_length=1 << 20)  # inputs are small
    half = len(data) // 2
    try:
        got = framer.feed(data[:half]) + framer.feed(data[half:])
    except PduDecodeError:
        assert decoded is None
    else:
        if decoded is not None:
            assert got == [decoded]


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Apply one to three random mutations."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "pdu-length", "length16", "length32",
                                   "splice", "insert", "delete", "byte"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and buf:
            buf[pos] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x20, 0x30, 0x40, 0x50, 0x51,
                                             0x7F, 0x80, 0xFF]))
        elif op == "truncate":
            del buf[pos:]
        elif op == "pdu-length" and len(buf) >= 6:
            delta = draw(st.integers(-8, 8) | st.integers(0, 0xFFFFFFFF))
            buf[2:6] = struct.pack(">I", max(0, min(0xFFFFFFFF, len(buf) - 6 + delta)))
        elif op == "length16" and len(buf) >= pos + 2:
            buf[pos:pos + 2] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
        elif op == "length32" and len(buf) >= pos + 4:
            buf[pos:pos + 4] = struct.pack(">I", draw(st.integers(0, 300) | st.integers(
                0, 0xFFFFFFFF)))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            cut = draw(st.integers(0, len(other)))
            buf[pos:] = other[cut:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 8))]
    return bytes(buf)


def mutated(seeds: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        return mutate(draw(seeds), draw)
    return build()


_PDU_PREFIX = st.tuples(st.integers(0, 8), st.integers(0, 255), st.integers(0, 300)).map(
    lambda t: struct.pack(">BBI", *t))
random_inputs = st.binary(max_size=400) | st.builds(
    lambda head, body: head + body, _PDU_PREFIX, st.binary(max_size=300))

_FUZZ = settings(max_examples=10_000, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_FUZZ
@given(random_inputs)
def test_random_bytes(data: bytes) -> None:
    check(data)


@_FUZZ
@given(mutated(st.sampled_from(SEEDS)))
def test_mutated_pdus(data: bytes) -> None:
    check(data)


@settings(_FUZZ, max_examples=1_500)
@given(mutated(S.pdus.map(pdu.encode)))
def test_mutated_strategy_pdus(data: bytes) -> None:
    """Mutations of PDUs from the strategies (fewer: generating them costs more)."""
    check(data)


def test_every_seed_is_valid() -> None:
    for data in SEEDS:
        assert pdu.encode(pdu.decode(data)) == data
