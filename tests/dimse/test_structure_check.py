"""structure_check: a data set cut short or malformed is named; a whole one never is."""

from __future__ import annotations

import struct
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dimse import codec
from dimse.structure_check import MAX_DEPTH, structure_problem
from tests.dimse.strategies import datasets

SYNTAXES = [(codec.IMPLICIT_VR_LE, True, True), (codec.EXPLICIT_VR_LE, False, True),
            (codec.EXPLICIT_VR_BE, False, False)]


def encode(ds: Dataset, uid: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return codec.encode(ds, uid)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(), syntax=st.sampled_from(SYNTAXES), undefined=st.booleans())
def test_whole_data_sets_pass(ds: Dataset, syntax: tuple[str, bool, bool],
                              undefined: bool) -> None:
    uid, implicit, little = syntax
    if undefined:  # sequences and items of undefined length too
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    assert structure_problem(encode(ds, uid), implicit, little) is None


def sample(undefined: bool) -> Dataset:
    ds = Dataset()
    ds.PatientID = "P1"
    item = Dataset()
    item.CodeValue = "C1"
    ds.ProcedureCodeSequence = Sequence([item])
    ds.ProcedureCodeSequence.is_undefined_length = undefined
    ds.PixelData = bytes(64)
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize(("uid", "implicit", "little"), SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_a_cut_inside_a_value_or_a_sequence_is_named(uid: str, implicit: bool, little: bool,
                                                    undefined: bool) -> None:
    data = encode(sample(undefined), uid)
    assert structure_problem(data, implicit, little) is None
    pixels_at = len(data) - 64  # the OW value is last: every cut inside it is named
    for cut in range(pixels_at, len(data)):
        assert "(7FE0,0010)" in (structure_problem(data[:cut], implicit, little) or "")
    assert structure_problem(data[:-1], implicit, little) is not None
    assert "overruns" in (structure_problem(data[:-10], implicit, little) or "")


def _hdr(tag: int, length: int) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)


def _explicit_long(tag: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr, length)


ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def test_encapsulated_pixel_data() -> None:
    frags = _hdr(ITEM, 0) + _hdr(ITEM, 4) + b"JPEG"
    whole = _explicit_long(0x7FE00010, b"OB", 0xFFFFFFFF) + frags + _hdr(SEQ_END, 0)
    assert structure_problem(whole, False, True) is None
    assert "without its sequence delimiter" in (structure_problem(whole[:-8], False, True) or "")
    assert "fragment" in (structure_problem(whole[:-10], False, True) or "")


def test_un_of_undefined_length_holds_implicit_items() -> None:
    inner = _hdr(0x00100020, 2) + b"ID"  # Implicit VR LE inside, as PS3.5 6.2.2 says
    data = (_explicit_long(0x00091010, b"UN", 0xFFFFFFFF) + _hdr(ITEM, 0xFFFFFFFF) + inner
            + _hdr(ITEM_END, 0) + _hdr(SEQ_END, 0))
    assert structure_problem(data, False, True) is None
    assert structure_problem(data[:-8], False, True) is not None


@pytest.mark.parametrize(("data", "words"), [
    (_hdr(ITEM_END, 0), "outside an item"),
    (_hdr(SEQ_END, 0), "outside a sequence"),
    (_explicit_long(0x00081115, b"SQ", 0xFFFFFFFF) + _hdr(0x00100010, 0), "where an item"),
    (_explicit_long(0x00081115, b"UT", 0xFFFFFFFF), "undefined length on VR UT"),
    (b"\x10\x00\x10\x00PN", "too few"),
    (_explicit_long(0x00081115, b"SQ", 0xFFFFFFFF) + _hdr(ITEM, 0xFFFFFFFF), "delimiter"),
])
def test_malformed_structures_are_named(data: bytes, words: str) -> None:
    problem = structure_problem(data, False, True)
    assert problem is not None and words in problem


def test_nesting_is_bounded() -> None:
    opening = (_explicit_long(0x00081115, b"SQ", 0xFFFFFFFF) + _hdr(ITEM, 0xFFFFFFFF))
    closing = _hdr(ITEM_END, 0) + _hdr(SEQ_END, 0)
    deep = opening * (MAX_DEPTH + 2) + closing * (MAX_DEPTH + 2)
    assert "nested deeper" in (structure_problem(deep, False, True) or "")
    ok = opening * 10 + closing * 10
    assert structure_problem(ok, False, True) is None


def _explicit_short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def test_items_of_a_defined_length_sequence_are_walked() -> None:
    code = _explicit_short(0x00080100, b"SH", b"C1")
    item = _hdr(ITEM, len(code)) + code
    whole = _explicit_long(0x00081032, b"SQ", len(item)) + item
    assert structure_problem(whole, False, True) is None
    overrun = bytearray(whole)
    overrun[12 + 8 + 6:12 + 8 + 8] = struct.pack("<H", 40)  # the SH claims 40 bytes
    assert "(0008,0100)" in (structure_problem(bytes(overrun), False, True) or "")
    open_item = _hdr(ITEM, 0xFFFFFFFF) + code  # no item delimiter before the SQ ends
    unclosed = _explicit_long(0x00081032, b"SQ", len(open_item)) + open_item
    assert "item without its delimiter" in (structure_problem(unclosed, False, True) or "")
    short = _explicit_long(0x00081032, b"SQ", len(item) + 4) + item + b"\0" * 4
    assert "too few for an item header" in (structure_problem(short, False, True) or "")


def test_pixel_data_of_undefined_length_is_fragments_whatever_its_vr() -> None:
    frags = _hdr(ITEM, 0) + _hdr(ITEM, 4) + b"JPEG" + _hdr(SEQ_END, 0)
    for vr in (b"OB", b"OW", b"UN"):
        assert structure_problem(_explicit_long(0x7FE00010, vr, 0xFFFFFFFF) + frags,
                                 False, True) is None
