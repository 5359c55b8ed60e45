"""Audit 10: our C-FIND SCU (``find``, ``python3 -m dimse find``) against DCMTK findscu and
pynetdicom as SCU, all talking to the same SCPs.

A small pynetdicom SCP (:class:`RecordingSCP`, in a thread, 127.0.0.1, free port) records the
raw identifier bytes each SCU sends and answers matches the test chooses, some of them odd
(multi-valued, sequences, private tags, empty values, ISO 2022 / UTF-8 / Latin-1, Pending
0xFF01, a failure after some matches, many matches, values longer than their VR allows). The
answers are built from raw Explicit VR Little Endian bytes, so the SCP sends exactly those bytes.
DCMTK dcmqrscp is the second SCP. Identifiers are compared element by element (tag, VR, value
bytes, padding, sequence structure); what each SCU hands its user is compared value by value.
Differences that were our defects (audit 10 #1-#4) are fixed; their tests name the PS3.4/PS3.5 section.
Notes: /work/notes/audit10/report.md.
"""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt, service_class
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dimse.errors import DataSetDecodeError
from dimse.qr import QueryModel
from dimse.qr_scu import QueryFailed, connect_qr, find
from tests.peers import (
    LOCALHOST,
    dcmqrscp_config,
    dcmtk,
    free_port,
    index_files,
    make_ct,
    run_dcmqrscp,
    settle_pynetdicom,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
EXPLICIT = ExplicitVRLittleEndian
ROOT = "1.2.826.0.1.3680043.10.4344.10."
WAIT = 20.0

# --------------------------------------------------------------------------- raw elements


def elem(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, value bytes exactly as given (no padding added)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def seq(tag: int, *items: bytes) -> bytes:
    """A defined-length sequence of defined-length items."""
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(i)) + i for i in items)
    return elem(tag, "SQ", body)


def raw_dataset(*elements: bytes) -> Dataset:
    """A pydicom Dataset of raw (unconverted) elements: written back byte for byte."""
    data = b"".join(sorted(elements, key=lambda e: struct.unpack("<HH", e[:4])))
    return read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)


@dataclass(frozen=True)
class Element:
    """One element as it was on the wire: path (tags of enclosing sequences), VR, value bytes."""

    path: tuple[int, ...]
    vr: str
    value: bytes
    undefined: bool = False


def walk(data: bytes, path: tuple[int, ...] = ()) -> list[Element]:
    """Explicit VR Little Endian data set bytes -> its elements in order, sequences flattened."""
    out: list[Element] = []
    pos = 0
    while pos < len(data):
        group, el = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | el
        vr = data[pos + 4:pos + 6].decode()
        if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        if vr == "SQ":
            end, items = _items(data, pos, length)
            out.append(Element(path + (tag,), vr, b"", length == 0xFFFFFFFF))
            for n, item in enumerate(items):
                out.extend(walk(item, path + (tag, n)))
            pos = end
            continue
        out.append(Element(path + (tag,), vr, data[pos:pos + length]))
        pos += length
    return out


def _items(data: bytes, pos: int, length: int) -> tuple[int, list[bytes]]:
    """The items of a sequence starting at pos; (end offset, item bodies)."""
    items: list[bytes] = []
    end = pos + length if length != 0xFFFFFFFF else len(data)
    while pos < end:
        g, e, ilen = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (g, e) == (0xFFFE, 0xE0DD):
            return pos, items
        if ilen == 0xFFFFFFFF:
            stop = _item_end(data, pos)
            items.append(data[pos:stop])
            pos = stop + 8
        else:
            items.append(data[pos:pos + ilen])
            pos += ilen
    return pos, items


def _item_end(data: bytes, pos: int) -> int:
    """Offset of the item delimiter closing an undefined-length item starting at pos."""
    depth = 0
    while True:
        g, e = struct.unpack_from("<HH", data, pos)
        if (g, e) == (0xFFFE, 0xE00D) and depth == 0:
            return pos
        if (g, e) in ((0xFFFE, 0xE000),):
            (ilen,) = struct.unpack_from("<I", data, pos + 4)
            pos += 8 if ilen == 0xFFFFFFFF else 8 + ilen
            depth += ilen == 0xFFFFFFFF
            continue
        if (g, e) in ((0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)):
            depth -= (g, e) == (0xFFFE, 0xE00D)
            pos += 8
            continue
        vr = data[pos + 4:pos + 6].decode()
        if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12
            if length == 0xFFFFFFFF:
                continue
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        pos += length


# --------------------------------------------------------------------------- the recording SCP

Answer = tuple[int, Dataset | None]


class RawIdentifier(Dataset):
    """An answer whose identifier goes on the wire as ``raw``, byte for byte (even malformed)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.__dict__["raw"] = raw


def _encode_raw(original: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    """pynetdicom's identifier encoder, but a :class:`RawIdentifier` is sent as its bytes."""
    def encode(ds: Dataset, *args: Any) -> bytes | None:
        if isinstance(ds, RawIdentifier):
            return bytes(ds.__dict__["raw"])
        return original(ds, *args)
    encode.__wrapped__ = original  # type: ignore[attr-defined]
    return encode


@dataclass
class RecordingSCP:
    """pynetdicom C-FIND SCP: records each identifier's raw bytes, answers ``answers``."""

    answers: list[Answer] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    syntaxes: list[str] = field(default_factory=lambda: [EXPLICIT])
    port: int = 0

    def handle(self, event: Any) -> Iterator[Answer]:
        self.received.append(event.request.Identifier.getvalue())
        yield from self.answers

    def __enter__(self) -> RecordingSCP:
        settle_pynetdicom()
        self._patched = not hasattr(service_class.encode, "__wrapped__")
        if self._patched:  # undone in __exit__: other tests see pynetdicom unchanged
            service_class.encode = _encode_raw(service_class.encode)  # type: ignore[assignment]
        ae = AE(ae_title="RECSCP")
        for uid in (STUDY_FIND, PATIENT_FIND, "1.2.840.10008.1.1"):
            ae.add_supported_context(uid, self.syntaxes)
        ae.maximum_pdu_size = 16384
        self.port = free_port()
        self._server = ae.start_server((LOCALHOST, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_FIND, self.handle)])
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        if self._patched:
            service_class.encode = service_class.encode.__wrapped__  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the three SCUs


@dataclass
class Result:
    """What an SCU gave its user: the matches and how the query ended."""

    matches: list[Dataset]
    error: BaseException | None = None
    statuses: list[int] = field(default_factory=list)


def ours(port: int, query: Dataset, model: QueryModel = QueryModel.STUDY_ROOT,
         **kw: Any) -> Result:
    """Our API, in a fresh event loop."""
    async def run() -> Result:
        got: list[Dataset] = []
        try:
            async with connect_qr(LOCALHOST, port, called_ae="RECSCP", models=[model],
                                  connect_timeout=WAIT, dimse_timeout=WAIT) as assoc:
                async for ds in find(assoc, query, model=model, **kw):
                    got.append(ds)
        except Exception as exc:
            return Result(got, exc)
        return Result(got)
    return asyncio.run(asyncio.wait_for(run(), WAIT * 2))


def pynd(port: int, query: Dataset, model: str = STUDY_FIND) -> Result:
    """pynetdicom 3.0.4 as SCU; matches decoded as pydicom decodes them."""
    settle_pynetdicom()
    ae = AE(ae_title="PYND")
    ae.add_requested_context(model, [EXPLICIT, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    assoc = ae.associate(LOCALHOST, port, ae_title="RECSCP")
    assert assoc.is_established
    res = Result([])
    try:
        for status, ident in assoc.send_c_find(query, model):
            if status is None:
                res.error = TimeoutError("no response")
                break
            res.statuses.append(int(status.Status))
            if ident is not None and int(status.Status) in (0xFF00, 0xFF01):
                res.matches.append(ident)
    finally:
        assoc.release()
    return res


def findscu(port: int, query: Dataset, tmp: Path, *args: str) -> tuple[int, list[Dataset], str]:
    """DCMTK findscu with the query as a file, responses extracted (-X) to files."""
    qfile = tmp / "query.dcm"
    write_query(query, qfile)
    out = tmp / "rsp"
    out.mkdir(exist_ok=True)
    cmd = [dcmtk("findscu"), "-S", "-aec", "RECSCP", "-X", "-od", str(out), *args,
           LOCALHOST, str(port), str(qfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT,
                          errors="replace", check=False)
    matches = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return proc.returncode, matches, proc.stdout + proc.stderr


def cli(port: int, *keys: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python3 -m dimse find`` with -k keys."""
    cmd = [sys.executable, "-m", "dimse", "find", "-aec", "RECSCP", *extra]
    for k in keys:
        cmd += ["-k", k]
    cmd += [LOCALHOST, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT, check=False,
                          cwd=Path(__file__).resolve().parents[2], errors="replace")


def write_query(query: Dataset, path: Path) -> None:
    """The query as a Part 10 file (Explicit VR LE) that findscu reads."""
    ds = Dataset()
    ds.update(query)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.file_meta.MediaStorageSOPClassUID = STUDY_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = ROOT + "1"
    ds.save_as(path, enforce_file_format=True)


def study_query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def norm(ds: Dataset) -> list[tuple[str, str, Any]]:
    """What a user sees of a match: (tag, VR, value as text) per element, sequences nested;
    an element whose value cannot be read shows as ERR."""
    out: list[tuple[str, str, Any]] = []
    for tag in sorted(ds.keys()):
        try:
            el = ds[tag]
            if el.VR == "SQ":
                out.append((str(tag), "SQ", [norm(item) for item in el.value]))
                continue
            v = el.value
            shown: Any = [str(x) for x in v] if el.VM > 1 and not isinstance(v, bytes | str) \
                else str(v)
            out.append((str(tag), str(el.VR), shown))
        except Exception as exc:
            out.append((str(tag), "ERR", type(exc).__name__))
    return out


def sent(scp: RecordingSCP, action: Callable[[], object]) -> list[Element] | None:
    """Run an SCU action; the identifier it put on the wire (None if it sent none)."""
    before = len(scp.received)
    action()
    return walk(scp.received[-1]) if len(scp.received) > before else None


@pytest.fixture(scope="module")
def scp() -> Iterator[RecordingSCP]:
    with RecordingSCP() as peer:
        yield peer


@pytest.fixture(scope="module")
def implicit_scp() -> Iterator[RecordingSCP]:
    with RecordingSCP(syntaxes=[ImplicitVRLittleEndian]) as peer:
        yield peer


# --------------------------------------------------------------------------- (1) the wire

L = elem(0x00080052, "CS", b"STUDY ")
U = elem(0x0020000D, "UI", b"1.2.3.4\0")


def _item(**kw: str) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _queries() -> dict[str, Dataset]:
    basic = study_query(PatientName="DOE^J*", PatientID="", StudyDate="20200101-",
                        ModalitiesInStudy=["CT", "MR"], StudyDescription="", StudyTime="",
                        AccessionNumber="A?1", NumberOfStudyRelatedInstances="")
    empty_seq = study_query()
    empty_seq.ReferencedStudySequence = []
    seq_item = study_query()
    seq_item.ReferencedStudySequence = [_item(ReferencedSOPClassUID="",
                                              ReferencedSOPInstanceUID="")]
    private = study_query()
    private.add_new(0x00090010, "LO", "ACME")
    private.add_new(0x00091001, "LO", "")
    latin1 = study_query(SpecificCharacterSet="ISO_IR 100", PatientName="Müller*")
    uid = study_query(StudyInstanceUID="1.2.3", AccessionNumber="A1",
                      TimezoneOffsetFromUTC="+0100")
    series = Dataset()
    series.QueryRetrieveLevel = "SERIES"
    series.StudyInstanceUID = "1.2.840.1"
    series.SeriesInstanceUID = ["1.2.840.1.1", "1.2.840.1.2"]
    series.Modality = "CT"
    series.SeriesNumber = ""
    return {"basic": basic, "empty_seq": empty_seq, "seq_item": seq_item, "private": private,
            "latin1": latin1, "uid_tz": uid, "series_uid_list": series}


@pytest.mark.parametrize("name", list(_queries()))
def test_identifier_on_the_wire_equals_pynetdicom_and_findscu(
        scp: RecordingSCP, tmp_path: Path, name: str) -> None:
    """Same keys, VRs, padding (CS/PN space, UI NUL), sequences, private elements."""
    query = _queries()[name]
    scp.answers = []
    ours_wire = sent(scp, lambda: ours(scp.port, query))
    assert ours_wire is not None
    assert ours_wire == sent(scp, lambda: pynd(scp.port, query))
    assert ours_wire == sent(scp, lambda: findscu(scp.port, query, tmp_path))


@pytest.mark.parametrize("name", ["basic", "seq_item", "private", "latin1"])
def test_identifier_in_implicit_vr_equals_pynetdicom(implicit_scp: RecordingSCP,
                                                     name: str) -> None:
    query = _queries()[name]
    implicit_scp.answers = []
    before = len(implicit_scp.received)
    ours(implicit_scp.port, query)
    pynd(implicit_scp.port, query)
    assert len(implicit_scp.received) == before + 2
    assert implicit_scp.received[-2] == implicit_scp.received[-1]


_ASCII = st.text(st.sampled_from("ABCXYZ019 ^*?-."), max_size=12).map(str.strip)
_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "PatientName": _ASCII, "PatientID": _ASCII, "AccessionNumber": _ASCII,
    "StudyID": _ASCII, "StudyDescription": _ASCII,
    "StudyDate": st.sampled_from(["", "20200101", "20200101-", "-20201231",
                                  "20200101-20201231"]),
    "StudyTime": st.sampled_from(["", "10", "1010", "101010.5", "080000-120000"]),
    "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", "US"]), max_size=3),
    "PatientSex": st.sampled_from(["", "M", "F", "O"]),
    "NumberOfStudyRelatedInstances": st.sampled_from(["", "1", "12"]),
    "StudyInstanceUID": st.one_of(st.just(""), st.lists(
        st.integers(1, 99999).map(lambda n: f"1.2.840.{n}"), min_size=1, max_size=3)),
}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(keys=st.dictionaries(st.sampled_from(sorted(_KEYS)), st.none(), min_size=1)
       .flatmap(lambda d: st.fixed_dictionaries({k: _KEYS[k] for k in d})))
def test_generated_queries_same_bytes_as_pynetdicom(scp: RecordingSCP,
                                                    keys: dict[str, Any]) -> None:
    query = study_query(**keys)
    scp.answers = []
    before = len(scp.received)
    r = ours(scp.port, query)
    assert r.error is None, r.error
    pynd(scp.port, query)
    assert len(scp.received) == before + 2
    assert scp.received[-2] == scp.received[-1]


def test_non_ascii_without_charset_ours_declares_utf8(scp: RecordingSCP) -> None:
    """PS3.5 6.1.2.3 / PS3.4 C.4.1.1.3.1: text outside the default repertoire needs (0008,0005).
    We add ISO_IR 192; pynetdicom (and findscu fed by -k) send the bytes undeclared (theirs)."""
    query = study_query(PatientName="Müller^José")
    ours_wire = sent(scp, lambda: ours(scp.port, query))
    theirs = sent(scp, lambda: pynd(scp.port, query))
    assert ours_wire is not None and theirs is not None
    assert ours_wire[0] == Element((0x00080005,), "CS", b"ISO_IR 192")
    assert [e for e in ours_wire if e.path == (0x00100010,)][0].value == \
        "Müller^José ".encode()
    assert all(e.path != (0x00080005,) for e in theirs)


def test_iso2022_ir58_query_carries_escape_sequences(scp: RecordingSCP) -> None:
    """PS3.5 K.2: ISO 2022 IR 58 text is designated by ESC $ ) A; pydicom 3.0.2 drops the
    escapes (theirs), we send the standard's example bytes."""
    query = study_query(SpecificCharacterSet=["", "ISO 2022 IR 58"],
                        PatientName="Zhang^XiaoDong=张^小东")
    ours_wire = sent(scp, lambda: ours(scp.port, query))
    theirs = sent(scp, lambda: pynd(scp.port, query))
    assert ours_wire is not None and theirs is not None
    pn = [e for e in ours_wire if e.path == (0x00100010,)][0].value
    assert pn == b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"
    assert [e for e in theirs if e.path == (0x00100010,)][0].value != pn


def test_iso2022_japanese_query_same_as_pynetdicom(scp: RecordingSCP) -> None:
    """PS3.5 H.3.1 example bytes, both SCUs."""
    query = study_query(SpecificCharacterSet=["", "ISO 2022 IR 87"],
                        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう")
    ours_wire = sent(scp, lambda: ours(scp.port, query))
    assert ours_wire is not None
    assert ours_wire == sent(scp, lambda: pynd(scp.port, query))
    pn = [e for e in ours_wire if e.path == (0x00100010,)][0].value
    assert pn == (b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^"
                  b"\x1b$B$?$m$&\x1b(B")


def test_text_outside_declared_charset_is_refused_not_replaced(scp: RecordingSCP) -> None:
    """pynetdicom sends '?ukasz' (a different query); we refuse before sending."""
    query = study_query(SpecificCharacterSet="ISO_IR 100", PatientName="Łukasz")
    r: list[Result] = []
    assert sent(scp, lambda: r.append(ours(scp.port, query))) is None
    assert type(r[0].error).__name__ == "DataSetEncodeError"
    theirs = sent(scp, lambda: pynd(scp.port, query))
    assert theirs is not None
    assert [e for e in theirs if e.path == (0x00100010,)][0].value == b"?ukasz"


def test_long_uid_list_goes_as_un_like_pynetdicom(scp: RecordingSCP) -> None:
    """A value over 64 KiB in Explicit VR: UN with a 32-bit length (PS3.5 6.2.2), both SCUs."""
    query = study_query(StudyInstanceUID=[f"1.2.826.0.1.3680043.10.4344.{i}"
                                          for i in range(3000)])
    ours_wire = sent(scp, lambda: ours(scp.port, query))
    assert ours_wire is not None
    assert ours_wire == sent(scp, lambda: pynd(scp.port, query))
    assert [e.vr for e in ours_wire if e.path == (0x0020000D,)] == ["UN"]


def test_strict_refuses_sequence_key_with_two_items(scp: RecordingSCP) -> None:
    query = study_query()
    query.ReferencedStudySequence = [_item(ReferencedSOPInstanceUID="1.2"),
                                     _item(ReferencedSOPInstanceUID="1.3")]
    r: list[Result] = []
    wire = sent(scp, lambda: r.append(ours(scp.port, query)))
    assert wire is None and type(r[0].error).__name__ == "IdentifierError"


def test_strict_level_is_upper_case_on_the_wire(scp: RecordingSCP) -> None:
    query = study_query()
    query.QueryRetrieveLevel = "study"
    r: list[Result] = []
    wire = sent(scp, lambda: r.append(ours(scp.port, query)))
    ok_refused = wire is None and type(r[0].error).__name__ == "IdentifierError"
    ok_upper = wire is not None and Element((0x00080052,), "CS", b"STUDY ") in wire
    assert ok_refused or ok_upper


# --------------------------------------------------------------------------- (2) the answers

JIS = (b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^"
       b"\x1b$B$?$m$&\x1b(B")


def R(*parts: bytes) -> RawIdentifier:
    return RawIdentifier(b"".join(parts))


def _undefined_seq() -> bytes:
    return (struct.pack("<HH", 8, 0x1110) + b"SQ\0\0\xff\xff\xff\xff"
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + elem(0x00081150, "UI", b"1.2\0")
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


ANSWERS: dict[str, list[Answer]] = {
    "multi_valued": [(0xFF00, R(L, elem(0x00080061, "CS", b"CT\\MR\\US"),
                                elem(0x00100010, "PN", b"A^B=C^D "), U))],
    "iso2022_jp": [(0xFF00, R(elem(0x00080005, "CS", b"\\ISO 2022 IR 87 "), L,
                              elem(0x00100010, "PN", JIS), U))],
    "utf8": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 192"), L,
                        elem(0x00100010, "PN", "Müller^José ".encode()), U))],
    "latin1": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 100"), L,
                          elem(0x00100010, "PN", "Müller".encode("latin-1")), U))],
    "cyrillic": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 144"), L,
                            elem(0x00100010, "PN", "Люксембург".encode("iso8859_5")), U))],
    "undeclared_latin1": [(0xFF00, R(L, elem(0x00100010, "PN", "Müller".encode("latin-1")),
                                     U))],
    "unknown_charset": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 999"), L,
                                   elem(0x00100010, "PN", "Müller".encode("latin-1")), U))],
    "bad_utf8": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 192"), L,
                            elem(0x00100010, "PN", b"M\xfcller"), U))],
    "item_charset": [(0xFF00, R(elem(0x00080005, "CS", b"ISO_IR 100"), L, seq(
        0x00081110, elem(0x00080005, "CS", b"ISO_IR 192")
        + elem(0x00081030, "LO", "Müller ".encode())),
        elem(0x00100010, "PN", "Müller".encode("latin-1")), U))],
    "sequences": [(0xFF00, R(L, seq(0x00081110, elem(0x00081150, "UI", b"1.2\0")
                                    + elem(0x00081155, "UI", b"1.3\0")), seq(0x00081032), U))],
    "undefined_length_sequence": [(0xFF00, R(L, _undefined_seq(), U))],
    "private": [(0xFF00, R(L, elem(0x00090010, "LO", b"ACME"), elem(0x00091001, "LO", b"val1"),
                           elem(0x00111001, "UN", b"abcd"), U))],
    "empty_values": [(0xFF00, R(elem(0x00080020, "DA", b""), L, elem(0x00100010, "PN", b""),
                                U, elem(0x00201208, "IS", b"")))],
    "too_long_for_vr": [(0xFF00, R(elem(0x00080050, "SH", b"y" * 30), L,
                                   elem(0x00080060, "CS", b"A" * 40),
                                   elem(0x00081030, "LO", b"x" * 200), U))],
    "invalid_numbers_dates": [(0xFF00, R(elem(0x00080020, "DA", b"2020-01-01"), L,
                                         elem(0x00101030, "DS", b"1,5 "), U,
                                         elem(0x00201208, "IS", b"abc ")))],
    "wrong_vr_and_un": [(0xFF00, R(L, elem(0x00100010, "LO", b"DOE^J "),
                                   elem(0x00100020, "UN", b"PID1"), U))],
    "unsorted_and_group_length": [(0xFF00, R(elem(0x00080000, "UL", struct.pack("<I", 14)),
                                             U, L))],
    "pending_ff01": [(0xFF01, R(L, elem(0x00100010, "PN", b"A^B "), U)), (0xFF00, R(L, U))],
    "cancel_final": [(0xFF00, R(L, U)), (0xFE00, None)],
    "warning_final": [(0xFF00, R(L, U)), (0xB000, None)],
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_matches_as_the_user_sees_them_equal_pynetdicom_and_findscu(
        scp: RecordingSCP, tmp_path: Path, name: str) -> None:
    scp.answers = ANSWERS[name]
    query = study_query(PatientName="")
    mine = ours(scp.port, query)
    assert mine.error is None, mine.error
    theirs = pynd(scp.port, query)
    assert [norm(m) for m in mine.matches] == [norm(m) for m in theirs.matches]
    assert mine.matches
    if name not in ("item_charset", "unsorted_and_group_length"):  # odd/unsorted: DCMTK warns
        rc, files, out = findscu(scp.port, query, tmp_path)
        assert rc == 0, out
        assert [norm(m) for m in mine.matches] == [norm(m) for m in files]


def test_failure_after_matches(scp: RecordingSCP) -> None:
    """The matches before the failure reach the user, then QueryFailed with the status."""
    scp.answers = [(0xFF00, R(L, U)), (0xFF00, R(L, U)), (0xA700, None)]
    mine = ours(scp.port, study_query())
    assert len(mine.matches) == 2
    assert isinstance(mine.error, QueryFailed)
    assert (mine.error.status, mine.error.matches) == (0xA700, 2)
    assert pynd(scp.port, study_query()).statuses == [0xFF00, 0xFF00, 0xA700]


def test_failure_status_with_error_comment(scp: RecordingSCP) -> None:
    status = Dataset()
    status.Status = 0xC000
    status.ErrorComment = "database offline"
    status.OffendingElement = [0x00100010]
    scp.answers = [(0xFF00, R(L, U)), (status, None)]  # type: ignore[list-item]
    mine = ours(scp.port, study_query())
    assert isinstance(mine.error, QueryFailed)
    assert (mine.error.status, mine.error.comment) == (0xC000, "database offline")
    assert list(mine.error.offending_elements) == [0x00100010]


def test_many_matches(scp: RecordingSCP) -> None:
    scp.answers = [(0xFF00, R(L, elem(0x00100010, "PN", b"P%05d " % i), U))
                   for i in range(3000)]
    mine = ours(scp.port, study_query(PatientName=""))
    theirs = pynd(scp.port, study_query(PatientName=""))
    assert mine.error is None
    assert [str(m.PatientName) for m in mine.matches] == \
        [str(m.PatientName) for m in theirs.matches]
    assert len(mine.matches) == 3000


def test_malformed_match_is_a_typed_error_and_association_stays_usable(
        scp: RecordingSCP) -> None:
    """A value length past the end: findscu fails the query, pynetdicom hands out the cut
    value; we raise DataSetDecodeError after the good matches, and the association works."""
    scp.answers = [(0xFF00, R(L, U)), (0xFF00, R(L, U[:-3])), (0xFF00, R(L, U))]

    async def run() -> tuple[int, BaseException | None, int, int]:
        got, err = 0, None
        async with connect_qr(LOCALHOST, scp.port, called_ae="RECSCP",
                              models=[QueryModel.STUDY_ROOT], dimse_timeout=WAIT) as assoc:
            try:
                async for _ in find(assoc, study_query()):
                    got += 1
            except DataSetDecodeError as exc:
                err = exc
            echo = await asyncio.wait_for(assoc.echo(), WAIT)
            scp.answers = [(0xFF00, R(L, U))]
            again = [m async for m in find(assoc, study_query())]
        return got, err, echo, len(again)
    got, err, echo, again = asyncio.run(asyncio.wait_for(run(), WAIT * 2))
    assert (got, echo, again) == (1, 0, 1)
    assert isinstance(err, DataSetDecodeError)


# --------------------------------------------------------------------------- dcmqrscp


def _ct(tmp: Path, n: int, name: str, charset: str | None) -> Path:
    path = make_ct(tmp / f"f{n}.dcm", patient_id=f"P{n}", patient_name="X",
                   study_uid=f"{ROOT}{n}", series_uid=f"{ROOT}{n}.1", sop_uid=f"{ROOT}{n}.1.1")
    ds = dcmread(path)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = "Kopf über" if charset else "Head"
    ds.save_as(path)
    return path


def test_three_scus_same_answers_from_dcmqrscp(tmp_path: Path) -> None:
    """dcmqrscp converts to the query's character set (+Cr default): ours declares ISO_IR 192
    for a non-ASCII query, and still finds the Latin-1 patient, decoded the same way."""
    port = free_port()
    cfg = dcmqrscp_config(tmp_path, "RECSCP", port)
    index_files(cfg, "RECSCP", [_ct(tmp_path, 1, "DOE^JOHN", None),
                                _ct(tmp_path, 2, "Müller^Hans", "ISO_IR 100"),
                                _ct(tmp_path, 3, "Muñoz^José", "ISO_IR 192")])
    queries = [dict(PatientName="M*"), dict(PatientName="Müller*"),
               dict(PatientName="Müller*", SpecificCharacterSet="ISO_IR 100"),
               dict(PatientName="Muñoz*", SpecificCharacterSet="ISO_IR 192"),
               dict(PatientName="", StudyDescription="")]
    with run_dcmqrscp(cfg, port):
        for n, keys in enumerate(queries):
            query = study_query(PatientID="", **keys)
            mine = ours(port, query)
            assert mine.error is None, mine.error
            theirs = pynd(port, query)
            (tmp_path / str(n)).mkdir()
            rc, files, out = findscu(port, query, tmp_path / str(n))
            assert rc == 0, out

            def seen(ms: list[Dataset]) -> list[tuple[str, str, str]]:
                return sorted((str(m.PatientID), str(m.PatientName),
                               str(m.get("StudyDescription", ""))) for m in ms)
            assert seen(mine.matches) == seen(theirs.matches) == seen(files), keys
            assert mine.matches


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("keys", [
    ["StudyInstanceUID", "ReferencedStudySequence[0].ReferencedSOPInstanceUID"],
    ["StudyInstanceUID", "(0009,0010)=ACME", "0009,1001"],
    ["StudyInstanceUID", "ModalitiesInStudy=CT\\MR", "PatientName=A B", "StudyDate=2020-"],
    ["StudyInstanceUID=1.2.3", "TimezoneOffsetFromUTC=+0100", "StudyTime=10-12"],
])
def test_cli_keys_same_wire_as_findscu(scp: RecordingSCP, keys: list[str]) -> None:
    keys = ["QueryRetrieveLevel=STUDY", *keys]
    scp.answers = []
    mine = sent(scp, lambda: cli(scp.port, *keys))
    args = [dcmtk("findscu"), "-S", "-aec", "RECSCP"]
    for k in keys:
        args += ["-k", k]
    theirs = sent(scp, lambda: subprocess.run([*args, LOCALHOST, str(scp.port)],
                                              capture_output=True, timeout=WAIT, check=False))
    assert mine is not None
    assert mine == theirs


def test_cli_declared_latin1_is_encoded_latin1(scp: RecordingSCP) -> None:
    """findscu puts the terminal's UTF-8 bytes under ISO_IR 100 (theirs, PS3.5 6.1.2.3)."""
    scp.answers = []
    wire = sent(scp, lambda: cli(scp.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                 "SpecificCharacterSet=ISO_IR 100", "PatientName=Müller"))
    assert wire is not None
    assert Element((0x00100010,), "PN", "Müller".encode("latin-1")) in wire


def test_cli_prints_matches_then_fails_on_failure_status(scp: RecordingSCP) -> None:
    """findscu exits 0 after a Failure final status; we print the matches and exit 1."""
    scp.answers = [(0xFF00, R(L, U)), (0xFF00, R(L, U)), (0xA700, None)]
    r = cli(scp.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert r.returncode == 1
    assert r.stdout.count("# match") == 2
    assert "0xA700" in r.stderr


def test_cli_json_survives_invalid_number_in_a_match(scp: RecordingSCP) -> None:
    scp.answers = [(0xFF00, R(L, U)),
                   (0xFF00, R(L, elem(0x00101030, "DS", b"1,5 "), U,
                              elem(0x00201208, "IS", b"abc "))),
                   (0xFF00, R(L, U))]
    r = cli(scp.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", extra=("--json",))
    import json
    assert r.returncode == 0, r.stderr
    matches = json.loads(r.stdout)
    assert len(matches) == 3
    # nothing lost: the values the JSON model cannot hold as numbers come as received
    assert matches[1]["00101030"] == {"vr": "DS", "Value": ["1,5"]}
    assert matches[1]["00201208"] == {"vr": "IS", "Value": ["abc"]}
    assert "(0010,1030)" in r.stderr and "(0020,1208)" in r.stderr


def test_cli_json_output_is_valid_json_after_a_failure(scp: RecordingSCP) -> None:
    scp.answers = [(0xFF00, R(L, U)), (0xA700, None)]
    r = cli(scp.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", extra=("--json",))
    import json
    assert r.returncode == 1
    assert len(json.loads(r.stdout)) == 1
