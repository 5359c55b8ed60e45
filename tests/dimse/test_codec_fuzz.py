"""Property tests of the identifier codec: differential against pydicom, round trips, fuzzing."""

from __future__ import annotations

import copy
import warnings
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dimse import codec
from dimse.errors import DataSetDecodeError
from tests.dimse.strategies import datasets, identifiers, transfer_syntaxes

FLAGS = {
    codec.IMPLICIT_VR_LE: (True, True),
    codec.EXPLICIT_VR_LE: (False, True),
    codec.EXPLICIT_VR_BE: (False, False),
    codec.DEFLATED_EXPLICIT_VR_LE: (False, True),
}
QUIET = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                 deadline=None)


def reference_bytes(ds: Dataset, uid: str) -> bytes:
    implicit, little = FLAGS[uid]
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, copy.deepcopy(ds))
    return fp.getvalue()


def inflated(data: bytes, uid: str) -> bytes:
    return zlib.decompress(data, -15) if uid == codec.DEFLATED_EXPLICIT_VR_LE else data


def assert_same(ours: Dataset, ref: Dataset, path: str = "", *, strict: bool = True) -> None:
    """Element by element: tag, VR, value (and its type when strict), recursing into SQ."""
    assert sorted(ours.keys()) == sorted(ref.keys()), path
    for tag in ref.keys():
        a, b = ours[tag], ref[tag]
        where = f"{path}/{tag}"
        assert a.VR == b.VR, where
        if a.VR == "SQ":
            assert len(a.value) == len(b.value), where
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                assert_same(x, y, f"{where}[{i}]", strict=strict)
        elif strict:
            assert type(a.value) is type(b.value), where
            assert a.value == b.value, where
        elif not (a.is_empty and b.is_empty):
            assert a.value == b.value, where


def touch_all(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                touch_all(item)
        else:
            str(elem.value)


@QUIET
@given(ds=st.one_of(datasets(), identifiers()), uid=transfer_syntaxes)
def test_encode_equals_pydicom_writer(ds: Dataset, uid: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inflated(codec.encode(ds, uid), uid) == reference_bytes(ds, uid)


@QUIET
@given(ds=st.one_of(datasets(), identifiers()), uid=transfer_syntaxes)
def test_decode_equals_pydicom_reader_and_round_trips(ds: Dataset, uid: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = codec.encode(ds, uid)
        ours = codec.decode(data, uid)
        implicit, little = FLAGS[uid]
        ref = read_dataset(DicomBytesIO(inflated(data, uid)), implicit, little)
        assert_same(ours, ref)
        if not implicit:  # explicit VR keeps VRs: the original comes back
            assert_same(ours, ds, strict=False)
        assert codec.encode(ours, uid) == data


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, byte in edits:
        if buf:
            buf[pos % len(buf)] = byte
    return bytes(buf)


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> tuple[bytes, str]:
    uid = draw(transfer_syntaxes)
    kind = draw(st.sampled_from(["random", "mutated", "truncated"]))
    if kind == "random":
        return draw(st.binary(max_size=200)), uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = codec.encode(draw(datasets(max_elements=4)), uid)
    if kind == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))], uid
    edits: list[Any] = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                     min_size=1, max_size=6))
    return _mutate(data, edits), uid


@settings(max_examples=10_000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(inp=fuzz_inputs())
def test_any_bytes_give_dataset_or_typed_error(inp: tuple[bytes, str]) -> None:
    data, uid = inp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = codec.decode(data, uid)
        except DataSetDecodeError as exc:
            assert str(exc)
            return
        assert isinstance(ds, Dataset)
        touch_all(ds)
