"""Differential C-FIND harness: generated archives and queries, DCMTK dcmqrscp against our archive.

One archive model (patients > studies > series > instances, every value a string or None for an
absent attribute) is written as Part 10 files, loaded into dcmqrscp (dcmqridx) and into our
:class:`dimse.archive.Archive`, and queried on both with pynetdicom as a neutral SCU.

:func:`expected` is a small reference matcher of PS3.4 C.2.2.2 over the model, parameterised by a
:class:`Dialect`: the choices the standard leaves to the SCP (or dcmqrscp's known deviations) are
its flags. Our answer must equal ``expected(OURS)``, dcmqrscp's ``expected(DCMQRSCP)``; entities
where the two dialects agree must be answered alike by both peers. A difference the dialects do
not explain is either our defect or an unknown dcmqrscp deviation, to be decided from the standard.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dimse.archive import Archive
from dimse.qr_scp import archive_server
from tests.peers import LOCALHOST, dcmqrscp_config, dcmtk, run_tool, storage_dir

CT = "1.2.840.10008.5.1.4.1.1.2"
PR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
SR_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
ROOT = "1.2.826.0.1.3680043.10.4344."
LATIN1 = "ISO_IR 100"

Entity = dict[str, str | None]


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """An archive: entities per level (attributes keyword -> value, None = absent) and links."""

    patients: list[Entity] = field(default_factory=list)
    studies: list[Entity] = field(default_factory=list)  # "_patient": index into patients
    series: list[Entity] = field(default_factory=list)  # "_study"
    instances: list[Entity] = field(default_factory=list)  # "_series"

    def chain(self, inst: Entity) -> tuple[Entity, Entity, Entity]:
        se = self.series[int(str(inst["_series"]))]
        stu = self.studies[int(str(se["_study"]))]
        return self.patients[int(str(stu["_patient"]))], stu, se

    def charset(self, inst: Entity) -> str:
        """ISO_IR 100 when any text of the instance is not ASCII, else '' (default)."""
        values = [v for e in (*self.chain(inst), inst) for k, v in e.items()
                  if not k.startswith("_") and v]
        return LATIN1 if any(not v.isascii() for v in values) else ""


PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "StudyDescription")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber")
IMAGE_KEYS = ("SOPInstanceUID", "InstanceNumber")
VR = {"PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
      "StudyInstanceUID": "UI", "StudyDate": "DA", "StudyTime": "TM", "AccessionNumber": "SH",
      "StudyID": "SH", "StudyDescription": "LO", "ModalitiesInStudy": "CS",
      "SeriesInstanceUID": "UI", "Modality": "CS", "SeriesNumber": "IS",
      "SOPInstanceUID": "UI", "InstanceNumber": "IS"}
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}

_NAME_PARTS = ("DOE", "Doe", "doe", "SMITH", "Smith", "Müller", "MÜLLER", "müller", "José",
               "JOSÉ", "Straße", "O'Neil", "Li", "Ab", "ab", "A B", "Ñandú", "Zoë")
_TEXT = ("CT CHEST", "ct chest", "Chest", "Abdomen", "Kopf über", "KOPF ÜBER", "Brust*", "a_b",
         "x%y", "A", "AB", "[x]")
_IDS = ("A1", "a1", "A10", "ACC-1", "ACC_2", "12", "123", "X Y", "Z")
_DATES = ("20190101", "20191231", "20200101", "20200229", "20200615", "20201231", "20210101",
          "19700101", "20000101")
_TIMES = ("000000", "080000", "101010", "1010", "10", "101010.5", "101010.123456", "101059",
          "120000.000001", "235959.999999", "2359", "23")


def _maybe(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """A value, sometimes an empty one or an absent attribute."""
    return st.one_of(strategy, strategy, strategy, st.just(""), st.none())


_pn = st.lists(st.sampled_from(_NAME_PARTS), min_size=1, max_size=3).map("^".join)
person_names = st.one_of(_pn, _pn, _pn, st.tuples(_pn, _pn).map("=".join))
dates = st.sampled_from(_DATES)
times = st.sampled_from(_TIMES)
numbers = st.integers(0, 12).map(str)


_EXAMPLE = itertools.count(1)


@st.composite
def models(draw: st.DrawFn, max_instances: int = 30) -> Model:
    """An archive of 1-3 patients, 1-3 studies each, 1-2 series, 1-3 instances (capped)."""
    m = Model()
    n_uid = 0
    # UIDs never seen in an earlier example: a study re-indexed from other files is not what
    # this harness compares (see test_stale_entity_values in the test module).
    stem = f"{ROOT}{next(_EXAMPLE)}."

    def uid() -> str:
        nonlocal n_uid
        n_uid += 1
        return f"{stem}{n_uid}"

    example = stem.rsplit(".", 2)[-2]
    for p in range(draw(st.integers(1, 3))):
        m.patients.append({
            "PatientID": f"{draw(st.sampled_from(('P', 'p', 'PID', 'X-')))}{p}-{example}",
            "PatientName": draw(_maybe(person_names)),
            "PatientBirthDate": draw(_maybe(dates)), "PatientSex": draw(_maybe(
                st.sampled_from(("M", "F", "O"))))})
        for _ in range(draw(st.integers(1, 3))):
            m.studies.append({
                "_patient": str(p), "StudyInstanceUID": uid(), "StudyDate": draw(_maybe(dates)),
                "StudyTime": draw(_maybe(times)), "AccessionNumber": draw(_maybe(
                    st.sampled_from(_IDS))), "StudyID": draw(_maybe(st.sampled_from(_IDS))),
                "StudyDescription": draw(_maybe(st.sampled_from(_TEXT)))})
            for _ in range(draw(st.integers(1, 2))):
                m.series.append({
                    "_study": str(len(m.studies) - 1), "SeriesInstanceUID": uid(),
                    "Modality": draw(_maybe(st.sampled_from(("CT", "MR", "US", "OT")))),
                    "SeriesNumber": draw(_maybe(numbers))})
                for _ in range(draw(st.integers(1, 3))):
                    if len(m.instances) < max_instances:
                        m.instances.append({
                            "_series": str(len(m.series) - 1), "SOPInstanceUID": uid(),
                            "InstanceNumber": draw(_maybe(numbers))})
    used = {str(i["_series"]) for i in m.instances}  # drop series/studies left without files
    m.series = [s if str(n) in used else {**s, "_empty": "1"} for n, s in enumerate(m.series)]
    return m


def write_files(m: Model, folder: Path, prefix: str) -> list[Path]:
    """One Part 10 file per instance (no pixel data), ISO_IR 100 when a value needs it."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, inst in enumerate(m.instances):
        ds = Dataset()
        cs = m.charset(inst)
        if cs:
            ds.SpecificCharacterSet = cs
        ds.SOPClassUID = CT
        for entity in (*m.chain(inst), inst):
            for key, value in entity.items():
                if not key.startswith("_") and value is not None:
                    ds.add_new(key, VR[key], value)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT
        meta.MediaStorageSOPInstanceUID = inst["SOPInstanceUID"]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{prefix}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    """One C-FIND: model ('PR'/'SR'), level, keys in request order (value '' = universal)."""

    model: str
    level: str
    keys: tuple[tuple[str, str], ...]

    def dataset(self) -> Dataset:
        ds = Dataset()
        if any(not v.isascii() for _, v in self.keys):
            ds.SpecificCharacterSet = LATIN1
        ds.QueryRetrieveLevel = self.level
        for key, value in self.keys:
            if VR[key] == "UI" and "\\" in value:
                ds.add_new(key, "UI", value.split("\\"))
            else:
                ds.add_new(key, VR[key], value or None)
        return ds

    @property
    def charset(self) -> str:
        return LATIN1 if any(not v.isascii() for _, v in self.keys) else ""


def _case(draw: st.DrawFn, text: str) -> str:
    mode = draw(st.sampled_from(("same", "same", "upper", "lower", "swap")))
    return {"same": text, "upper": text.upper(), "lower": text.lower(),
            "swap": text.swapcase()}[mode]


def _wildcard(draw: st.DrawFn, text: str) -> str:
    """A pattern derived from ``text``: prefix*, *suffix, *middle*, ? for some characters."""
    if not text:
        return draw(st.sampled_from(("*", "?", "**", "*?*")))
    i = draw(st.integers(0, len(text)))
    j = draw(st.integers(i, len(text)))
    form = draw(st.sampled_from(("prefix", "suffix", "middle", "qmarks", "star", "mixed")))
    if form == "prefix":
        return text[:i] + "*"
    if form == "suffix":
        return "*" + text[j:]
    if form == "middle":
        return "*" + text[i:j] + "*"
    if form == "star":
        return "*"
    chars = list(text)
    for k in draw(st.lists(st.integers(0, len(text) - 1), max_size=3)):
        chars[k] = "?"
    pattern = "".join(chars)
    return pattern if form == "qmarks" else pattern[:j] + "*"


def _text_key(draw: st.DrawFn, pool: Sequence[str | None], key: str) -> str:
    values = [v for v in pool if v] or ["NOPE"]
    base = draw(st.sampled_from(values))
    kind = draw(st.sampled_from(("exact", "exact", "wild", "wild", "wild", "universal",
                                 "universal", "other")))
    if kind == "universal":
        return ""
    if kind == "other":
        return draw(st.sampled_from(("NOPE", "Z*", "?", "*Q*")))
    if VR[key] == "PN":
        base = _case(draw, base)
    value = base if kind == "exact" else _wildcard(draw, base)
    return draw(st.sampled_from(("", "", "", " "))) + value  # padding is not significant


def _date_key(draw: st.DrawFn, pool: Sequence[str | None], domain: Sequence[str]) -> str:
    values = [v for v in pool if v] + list(domain)
    a, b = sorted(draw(st.lists(st.sampled_from(values), min_size=2, max_size=2)))
    form = draw(st.sampled_from(("single", "range", "from", "to", "universal", "dash")))
    return {"single": a, "range": f"{a}-{b}", "from": f"{a}-", "to": f"-{b}",
            "universal": "", "dash": "-"}[form]


def _time_key(draw: st.DrawFn, pool: Sequence[str | None]) -> str:
    values = [v for v in pool if v] + list(_TIMES)
    a, b = draw(st.lists(st.sampled_from(values), min_size=2, max_size=2))
    if _tm_point(a) > _tm_point(b):
        a, b = b, a
    form = draw(st.sampled_from(("single", "range", "from", "to", "universal", "dash")))
    return {"single": a, "range": f"{a}-{b}", "from": f"{a}-", "to": f"-{b}",
            "universal": "", "dash": "-"}[form]


def _uid_key(draw: st.DrawFn, pool: Sequence[str]) -> str:
    picked = draw(st.lists(st.sampled_from([*pool, ROOT + "999"]), min_size=1, max_size=3))
    return draw(st.sampled_from(("\\".join(picked), picked[0], "")))


def _number_key(draw: st.DrawFn, pool: Sequence[str | None]) -> str:
    values = [v for v in pool if v] or ["1"]
    v = draw(st.sampled_from(values))
    return draw(st.sampled_from((v, v, "", "", "99", "0" + v)))


def _key_value(draw: st.DrawFn, key: str, pool: Sequence[str | None]) -> str:
    vr = VR[key]
    if vr == "UI":
        return _uid_key(draw, [v for v in pool if v])
    if vr == "DA":
        return _date_key(draw, pool, _DATES)
    if vr == "TM":
        return _time_key(draw, pool)
    if vr == "IS":
        return _number_key(draw, pool)
    return _text_key(draw, pool, key)


LEVEL_KEYS = {"PATIENT": PATIENT_KEYS, "STUDY": (*STUDY_KEYS, "ModalitiesInStudy"),
              "SERIES": SERIES_KEYS, "IMAGE": IMAGE_KEYS}


@st.composite
def queries(draw: st.DrawFn, m: Model) -> Query:
    """A hierarchical query (PS3.4 C.4.1.2.1) on ``m``: single-valued unique keys above the level
    (taken from one real chain, sometimes from another), keys of the level below them."""
    model = draw(st.sampled_from(("PR", "SR")))
    levels = ("PATIENT", "STUDY", "SERIES", "IMAGE") if model == "PR" else \
        ("STUDY", "SERIES", "IMAGE")
    level = draw(st.sampled_from(levels))
    inst = draw(st.sampled_from(m.instances))
    other = draw(st.sampled_from(m.instances))
    chain = dict(zip(("PATIENT", "STUDY", "SERIES"), m.chain(inst), strict=True))
    keys: list[tuple[str, str]] = []
    for above in levels[: levels.index(level)]:
        source = chain[above] if draw(st.integers(0, 5)) else \
            dict(zip(("PATIENT", "STUDY", "SERIES"), m.chain(other), strict=True))[above]
        keys.append((UNIQUE[above], str(source[UNIQUE[above]])))
    candidates = list(LEVEL_KEYS[level])
    if model == "SR" and level == "STUDY":
        candidates += PATIENT_KEYS
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    for key in chosen:
        keys.append((key, _key_value(draw, key, _pool(m, key))))
    if UNIQUE[level] not in chosen:  # dcmqrscp returns only requested keys
        keys.append((UNIQUE[level], ""))
    return Query(model, level, tuple(keys))


def _pool(m: Model, key: str) -> list[str | None]:
    if key == "ModalitiesInStudy":
        key = "Modality"
    for entities in (m.patients, m.studies, m.series, m.instances):
        if entities and key in entities[0]:
            return [e[key] for e in entities]
    raise KeyError(key)


# --------------------------------------------------------------------------- the reference


@dataclass(frozen=True)
class Dialect:
    """The matching choices of one SCP, as far as this harness can tell them apart.

    ``pn_case_sensitive``: PS3.4 C.2.2.2.1.1 and C.2.2.2.4 let PN matching be case-sensitive or
    not (we: insensitive; dcmqrscp: sensitive). ``tm_point``: C.2.2.2.1.3 leaves TM/DA/DT
    single-value matching implementation dependent ("matched by meaning"): dcmqrscp reads a
    partial time (``1010``) as its first instant, we as its whole span (10:10:00-10:10:59.999999),
    also as a range bound. ``bytewise``: dcmqrscp's '?' is one byte of the compared encoding (UTF-8
    once it converts because request and record character sets differ); C.2.2.2.4 says one
    character (dcmqrscp deviation). ``is_text``: dcmqrscp compares IS as text ('01' != '1');
    C.2.2.2.1 single value matching of an IS is by value for us. ``modalities_in_study``:
    dcmqrscp does not support that optional key (C.2.2.1.3: neither matched nor returned).
    ``stars_match_empty``: a pattern of only '*' characters ('**') matches a zero-length value
    (dcmqrscp; C.2.2.2.4: '*' matches any sequence including zero length).
    ``dash_universal``: a DA/TM key of '-' alone (no bound; C.2.2.2.5 defines only 'A-B', 'A-'
    and '-B') is universal matching for us, also for a zero-length value; dcmqrscp matches
    every value it can read as a date or time, not a zero-length one.
    """

    name: str
    pn_case_sensitive: bool
    tm_point: bool
    bytewise: bool
    is_text: bool
    modalities_in_study: bool
    stars_match_empty: bool
    dash_universal: bool


OURS = Dialect("ours", pn_case_sensitive=False, tm_point=False, bytewise=False, is_text=False,
               modalities_in_study=True, stars_match_empty=True, dash_universal=True)
DCMQRSCP = Dialect("dcmqrscp", pn_case_sensitive=True, tm_point=True, bytewise=True,
                   is_text=True, modalities_in_study=False, stars_match_empty=True,
                   dash_universal=False)


def _fold(text: str) -> str:
    """Upper case character for character (ß -> ẞ; a character whose upper case is several is
    kept): our documented PN folding."""
    return "".join(u if len(u := c.upper()) == 1 else "\u1e9e" if c == "\u00df" else c
                   for c in text)


def _tm_span(text: str) -> tuple[float, float]:
    main, _, frac = text.partition(".")
    hh, mm, ss = int(main[0:2]), int(main[2:4] or 0), int(main[4:6] or 0)
    start = hh * 3600 + mm * 60 + ss + (float("0." + frac) if frac else 0.0)
    width = {2: 3600, 4: 60}.get(len(main), 1)
    if frac:
        return start, start + 10 ** -len(frac) - 1e-7
    return start, start + width - 1e-7


def _tm_point(text: str) -> float:
    return _tm_span(text)[0]


def _wild(pattern: str, value: str) -> bool:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.DOTALL) is not None


@dataclass(frozen=True)
class Context:
    """Character sets of the request and of the record being matched (for dcmqrscp's bytes)."""

    request: str
    record: str


def _encoding(ctx: Context) -> str:
    return "latin-1" if ctx.request == ctx.record else "utf-8"


def key_matches(d: Dialect, key: str, want: str, have: str | None, ctx: Context,
                modalities: Sequence[str] = ()) -> bool:
    """Does one stored value (None: absent) match one key value under dialect ``d``?"""
    want = want.strip(" ")
    vr = VR[key]
    if not want:
        return True
    text = vr in ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT")
    if key == "ModalitiesInStudy":  # a study without modality has a zero-length value
        if not d.modalities_in_study or want == "*":
            return True
        return any(_text_match(d, vr, want, m, ctx) for m in modalities) or \
            (not modalities and d.stars_match_empty and not want.strip("*"))
    have = (have or "").strip(" ")
    if text:
        if want.strip("*") == "":
            return d.stars_match_empty or bool(have) or want == "*"
        return bool(have) and _text_match(d, vr, want, have, ctx)
    if not have:
        return vr in ("DA", "TM") and want == "-" and d.dash_universal
    if vr == "UI":
        return have in want.split("\\")
    if vr == "IS":
        if d.is_text:
            return want == have
        try:
            return int(want) == int(have)
        except ValueError:
            return False
    if vr == "DA":
        lo, sep, hi = want.partition("-")
        if not sep:
            return have == want
        return (not lo or lo <= have) and (not hi or have <= hi)
    if vr == "TM":
        return _tm_match(d, want, have)
    raise AssertionError(key)


def _text_match(d: Dialect, vr: str, want: str, have: str, ctx: Context) -> bool:
    if vr == "PN" and not d.pn_case_sensitive:
        want, have = _fold(want), _fold(have)
    if d.bytewise:
        enc = _encoding(ctx)
        want = want.encode(enc).decode("latin-1")
        have = have.encode(enc).decode("latin-1")
    return _wild(want, have)


def _tm_match(d: Dialect, want: str, have: str) -> bool:
    point = _tm_point(have)
    lo, sep, hi = want.partition("-")
    if not sep:
        hi = lo
    if d.tm_point:
        low = _tm_point(lo) if lo else None
        high = _tm_point(hi) if hi else None
    else:
        low = _tm_span(lo)[0] if lo else None
        high = _tm_span(hi)[1] if hi else None
    eps = 1e-9
    return (low is None or point >= low - eps) and (high is None or point <= high + eps)


def expected(m: Model, q: Query, d: Dialect) -> dict[str, dict[str, str]]:
    """Unique key -> returned values of the requested keys, for the entities ``q`` matches."""
    out: dict[str, dict[str, str]] = {}
    for inst in m.instances:
        patient, study, series = m.chain(inst)
        entities = {"PATIENT": patient, "STUDY": study, "SERIES": series, "IMAGE": inst}
        ctx = Context(q.charset, m.charset(inst))
        modalities = [str(s["Modality"]) for s in m.series
                      if s["_study"] == series["_study"] and s["Modality"]
                      and "_empty" not in s]
        ok = True
        values: dict[str, str] = {}
        for key, want in q.keys:
            owner = next(e for e in entities.values() if key in e) if \
                key != "ModalitiesInStudy" else study
            have = owner.get(key) if key != "ModalitiesInStudy" else None
            if not key_matches(d, key, want, have, ctx, modalities):
                ok = False
                break
            if key == "ModalitiesInStudy":
                if d.modalities_in_study:
                    values[key] = "\\".join(sorted(set(modalities)))
            else:
                values[key] = normal(key, have)
        if ok:
            out[str(entities[q.level][UNIQUE[q.level]])] = values
    return out


def normal(key: str, value: object) -> str:
    """A returned value as compared: text without padding, IS as a number, lists sorted."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(sorted(normal(key, v) for v in value))  # type: ignore[attr-defined]
    text = str(value).strip(" \0")
    if VR[key] == "IS" and text:
        try:
            return str(int(text))
        except ValueError:
            return text
    return text


# --------------------------------------------------------------------------- the peers


def ask(port: int, aet: str, q: Query, timeout: float = 15.0) -> tuple[int, dict[str, dict[str, str]]]:
    """Run ``q`` with a pynetdicom SCU: (final status, unique key -> returned values)."""
    from pynetdicom import AE

    ae = AE(ae_title="DIFFSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    uid = PR_FIND if q.model == "PR" else SR_FIND
    ae.add_requested_context(uid)
    assoc = ae.associate(LOCALHOST, port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"association with {aet} on {port} failed")
    status, found = -1, {}
    try:
        for rsp, ident in assoc.send_c_find(q.dataset(), uid):
            if not rsp or "Status" not in rsp:
                raise RuntimeError(f"no response from {aet}")
            status = int(rsp.Status)
            if status in (0xFF00, 0xFF01) and ident is not None:
                unique = normal(UNIQUE[q.level], ident.get(UNIQUE[q.level]))
                values = {k: normal(k, ident[k].value) for k, _ in q.keys if k in ident}
                if unique in found:
                    raise AssertionError(f"{aet}: {unique} returned twice")
                found[unique] = values
    finally:
        assoc.release()
    return status, found


class Dcmqrscp:
    """dcmqrscp's storage area, emptied and reloaded (dcmqridx) per archive model."""

    def __init__(self, tmp: Path, port: int, aet: str = "DCMQR") -> None:
        self.aet, self.port = aet, port
        self.config = dcmqrscp_config(tmp, aet, port)
        self.folder = storage_dir(self.config, aet)
        self.dcmqridx = dcmtk("dcmqridx")  # checked once, not per load

    def load(self, files: Sequence[Path]) -> None:
        for old in self.folder.iterdir():
            old.unlink()
        targets = []
        for f in files:
            shutil.copyfile(f, self.folder / f.name)
            targets.append(str(self.folder / f.name))
        result = run_tool([self.dcmqridx, str(self.folder), *targets], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"dcmqridx: {result.stdout}{result.stderr}")


class OurPeer:
    """Our archive server on 127.0.0.1 (port chosen at run time), in its own event loop thread;
    :meth:`load` replaces the archive folder's files and re-indexes."""

    def __init__(self, folder: Path, aet: str = "OURQR") -> None:
        self.aet = aet
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.archive = Archive(folder)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = archive_server(self.archive, aet, store=False)
        self._call(self.server.start())
        self.port = self.server.port
        self._n = 0

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def load(self, m: Model) -> list[Path]:
        self._n += 1
        for old in self.folder.iterdir():
            if old.is_dir():
                shutil.rmtree(old)
        files = write_files(m, self.folder / f"ex{self._n}", "i")
        stats = self.archive.index()
        if stats.failed or stats.duplicates:
            raise RuntimeError(f"archive index: {stats}")
        return files

    def close(self) -> None:
        try:
            self._call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.archive.close()


def explain(m: Model, q: Query, ours: Mapping[str, Mapping[str, str]],
            theirs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Problems: where a peer departs from its dialect's reference, or where the peers differ on
    an entity both dialects agree on (empty: the difference is fully explained)."""
    problems = []
    want_ours, want_theirs = expected(m, q, OURS), expected(m, q, DCMQRSCP)
    for name, got, want in (("ours", ours, want_ours), ("dcmqrscp", theirs, want_theirs)):
        if set(got) != set(want):
            problems.append(f"{name}: extra {sorted(set(got) - set(want))} "
                            f"missing {sorted(set(want) - set(got))}")
        for unique in set(got) & set(want):
            for key, value in want[unique].items():
                if got[unique].get(key, "") != value:
                    problems.append(f"{name}: {unique} {key}={got[unique].get(key)!r}, "
                                    f"stored {value!r}")
    agreed = {u for u in set(want_ours) | set(want_theirs)
              if (u in want_ours) == (u in want_theirs)}
    for unique in agreed:
        if (unique in ours) != (unique in theirs):
            problems.append(f"peers differ on {unique} though both dialects agree")
    return problems


def describe(m: Model, q: Query) -> str:
    """The model and query, printed for a failing example."""
    lines = [f"query {q.model} {q.level} {q.keys}"]
    for inst in m.instances:
        p, s, se = m.chain(inst)
        lines.append(" | ".join(
            ", ".join(f"{k}={v!r}" for k, v in e.items() if not k.startswith("_"))
            for e in (p, s, se, inst)))
    return "\n".join(lines)


Check = Callable[[Model, Query], list[str]]


def scenarios() -> st.SearchStrategy[tuple[Model, list[Query]]]:
    """An archive model with 1-4 queries on it."""
    return models().flatmap(lambda m: st.tuples(
        st.just(m), st.lists(queries(m), min_size=1, max_size=4)))


def iter_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*.dcm")))
