"""PDU codec speed, side by side with pynetdicom's PDU classes on the same bytes.

Run: python3 -m pytest benchmarks/bench_pdu.py --benchmark-enable -q
Each group holds one pair (ours, pynetdicom); the target is ours >= 5x faster.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import partial

import pytest

import pdu
from pdu import (
    AAssociateRQ,
    PDataTF,
    PresentationContextRQ,
    PresentationDataValue,
    UserInformation,
)

pynetdicom_pdu = pytest.importorskip("pynetdicom.pdu")

_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50")
ASSOCIATE_RQ = AAssociateRQ.build(
    called_ae="ARCHIVE", calling_ae="MODALITY",
    presentation_contexts=tuple(
        PresentationContextRQ(2 * i + 1, f"1.2.840.10008.5.1.4.1.1.{i + 1}", _TRANSFER_SYNTAXES)
        for i in range(128)),
    user_information=UserInformation.build(
        max_length=16384, implementation_class_uid="1.2.3.4.5",
        implementation_version_name="BENCH"),
).encode()


def _pdata(size: int) -> bytes:
    return PDataTF((PresentationDataValue(1, 2, bytes(size)),)).encode()


INPUTS: dict[str, tuple[bytes, type]] = {
    "associate-rq-128x3": (ASSOCIATE_RQ, pynetdicom_pdu.A_ASSOCIATE_RQ),
    "p-data-16KiB": (_pdata(16 * 1024), pynetdicom_pdu.P_DATA_TF),
    "p-data-1MiB": (_pdata(1024 * 1024), pynetdicom_pdu.P_DATA_TF),
}
CASES = [(name, impl) for name in INPUTS for impl in ("ours", "pynetdicom")]


def _decoder(name: str, impl: str) -> Callable[[], object]:
    data, theirs = INPUTS[name]
    if impl == "ours":
        return partial(pdu.decode, data)

    def decode() -> object:
        p = theirs()
        p.decode(data)
        return p
    return decode


def _encoder(name: str, impl: str) -> Callable[[], bytes]:
    data, theirs = INPUTS[name]
    if impl == "ours":
        return partial(pdu.encode, pdu.decode(data))
    p = theirs()
    p.decode(data)
    return p.encode  # type: ignore[no-any-return]


# The functions measured take 0.5-40 us, so each round runs many calls (min_time) to keep the
# harness's own timer and loop cost out of the per-call figure; the same settings for both sides.
FAST = pytest.mark.benchmark(min_time=0.0005, warmup=True, disable_gc=True)


@FAST
@pytest.mark.parametrize("name,impl", CASES)
def test_decode(benchmark: pytest.FixtureDef, name: str, impl: str) -> None:  # type: ignore[type-arg]
    benchmark.group = f"decode {name}"  # type: ignore[attr-defined]
    fn = _decoder(name, impl)
    result = benchmark(fn)  # type: ignore[operator]
    if impl == "ours":
        assert pdu.encode(result) == INPUTS[name][0]


@FAST
@pytest.mark.parametrize("name,impl", CASES)
def test_encode(benchmark: pytest.FixtureDef, name: str, impl: str) -> None:  # type: ignore[type-arg]
    benchmark.group = f"encode {name}"  # type: ignore[attr-defined]
    fn = _encoder(name, impl)
    assert benchmark(fn) == INPUTS[name][0]  # type: ignore[operator]


# Floors: what any pure-Python codec with this API must spend on a P-DATA-TF, measured in the same
# run so the ratios above can be read against them. Decode: build the result (two frozen
# dataclass instances, set slot by slot, and a zero-copy memoryview slice) for already-parsed
# header fields, with no parsing or checks at all. Encode: one struct-packed header plus the one
# copy of the data that producing a single ``bytes`` takes.
_new = object.__new__
_PDV_SLOTS = tuple(vars(PresentationDataValue)[f].__set__ for f in ("context_id", "control", "data"))
_PDATA_SLOT = vars(PDataTF)["pdvs"].__set__
_HEADER = struct.Struct(">BBIIBB")


def _decode_floor(data: bytes) -> PDataTF:
    pdv = _new(PresentationDataValue)
    set_cid, set_control, set_data = _PDV_SLOTS
    set_cid(pdv, 1)
    set_control(pdv, 2)
    set_data(pdv, memoryview(data)[12:])
    pdata = _new(PDataTF)
    _PDATA_SLOT(pdata, (pdv,))
    return pdata


def _encode_floor(data: bytes) -> bytes:
    return _HEADER.pack(4, 0, len(data) + 6, len(data) + 2, 1, 2) + data


@FAST
@pytest.mark.parametrize("name", ["p-data-16KiB", "p-data-1MiB"])
def test_decode_floor(benchmark: pytest.FixtureDef, name: str) -> None:  # type: ignore[type-arg]
    benchmark.group = f"decode {name}"  # type: ignore[attr-defined]
    data = INPUTS[name][0]
    assert benchmark(partial(_decode_floor, data)) == pdu.decode(data)  # type: ignore[operator]


@FAST
@pytest.mark.parametrize("name", ["p-data-16KiB", "p-data-1MiB"])
def test_encode_floor(benchmark: pytest.FixtureDef, name: str) -> None:  # type: ignore[type-arg]
    benchmark.group = f"encode {name}"  # type: ignore[attr-defined]
    data = INPUTS[name][0]
    assert benchmark(partial(_encode_floor, data[12:])) == data  # type: ignore[operator]
