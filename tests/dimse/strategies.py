"""Hypothesis strategies for identifiers and arbitrary data sets (shared by several test files).

Every generated value is something pydicom can write and read back unchanged (no trailing
spaces or NULs, valid lengths for binary VRs), so the differential properties hold exactly.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataelem import DataElement

TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
)
transfer_syntaxes = st.sampled_from(TRANSFER_SYNTAXES)

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _word(alphabet: str = _LETTERS, min_size: int = 1, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=min_size, max_size=max_size)


def _inner_text(max_size: int = 24, extra: str = " ._-^") -> st.SearchStrategy[str]:
    """Text without leading/trailing spaces (pydicom strips them on read)."""
    return st.text(_LETTERS + extra, min_size=1, max_size=max_size).map(str.strip).filter(bool)


uids = st.lists(st.integers(0, 99999), min_size=2, max_size=8).map(
    lambda parts: "1.2." + ".".join(str(p) for p in parts)
)
dates = st.dates(min_value=__import__("datetime").date(1900, 1, 1)).map(
    lambda d: d.strftime("%Y%m%d")
)
times = st.times().map(lambda t: t.strftime("%H%M%S"))
date_ranges = st.one_of(
    dates,
    dates.map(lambda d: d + "-"),
    dates.map(lambda d: "-" + d),
    st.tuples(dates, dates).map(lambda p: f"{min(p)}-{max(p)}"),
)
wildcards = st.one_of(_word(_LETTERS + "*?", 1, 10), st.just("*"))
person_names = st.lists(
    st.lists(_word(_LETTERS + " ", 0, 8).map(str.strip), min_size=1, max_size=5).map("^".join),
    min_size=1, max_size=3,
).map(lambda groups: "=".join(groups).rstrip("=^") or "A")

_SCALAR: dict[str, st.SearchStrategy[Any]] = {
    "AE": _word(_LETTERS + "_", 1, 16),
    "AS": st.tuples(st.integers(0, 999), st.sampled_from("DWMY")).map(lambda p: f"{p[0]:03d}{p[1]}"),
    "CS": _word("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", 1, 16),
    "DA": dates,
    "DT": st.datetimes(min_value=__import__("datetime").datetime(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d%H%M%S")),
    "TM": times,
    "DS": st.one_of(st.integers(-9999, 9999).map(str),
                    st.integers(-99999, 99999).map(lambda i: f"{i / 100}")),
    "IS": st.integers(-(2**31), 2**31 - 1).map(str),
    "LO": _inner_text(64), "SH": _inner_text(16), "UC": _inner_text(64),
    "LT": _inner_text(80, " ._-^\\"), "ST": _inner_text(80, " ._-^\\"),
    "UT": _inner_text(80, " ._-^\\"), "UR": _word(_LETTERS + "/:.", 1, 40),
    "UI": uids, "PN": person_names,
    "US": st.integers(0, 2**16 - 1), "SS": st.integers(-(2**15), 2**15 - 1),
    "UL": st.integers(0, 2**32 - 1), "SL": st.integers(-(2**31), 2**31 - 1),
    "UV": st.integers(0, 2**64 - 1), "SV": st.integers(-(2**63), 2**63 - 1),
    "FL": st.floats(width=32, allow_nan=False), "FD": st.floats(allow_nan=False),
    "AT": st.integers(0, 0xFFFFFFFF),
}
_BYTES_SIZE = {"OB": 2, "UN": 2, "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_SINGLE = {"LT", "ST", "UT", "UR"}
ALL_VRS = sorted([*_SCALAR, *_BYTES_SIZE, "SQ"])


def values_for(vr: str) -> st.SearchStrategy[Any]:
    """A value for ``vr``: empty, single or multi-valued (bytes for O* and UN)."""
    if vr in _BYTES_SIZE:
        size = _BYTES_SIZE[vr]
        return st.binary(max_size=24).map(lambda b: b[: len(b) - len(b) % size])
    scalar = _SCALAR[vr]
    empty = st.none() if vr in {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "DS",
                                "IS"} else st.just("")
    if vr in _SINGLE:
        return st.one_of(empty, scalar)
    return st.one_of(empty, scalar, st.lists(scalar, min_size=2, max_size=4))


def _tags_by_vr() -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for tag, (vr, _vm, _name, retired, keyword) in DicomDictionary.items():
        group = tag >> 16
        if retired or not keyword or group in (0x0000, 0x0002, 0x7FE0) or not tag & 0xFFFF:
            continue
        if tag == 0x00080005 or vr not in ALL_VRS or "xx" in keyword:
            continue
        table.setdefault(vr, []).append(tag)
    return table


TAGS_BY_VR = _tags_by_vr()
PRIVATE_CREATOR = "DIMSE TEST CREATOR"


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> DataElement:
    """A public element of any VR (with a tag whose dictionary VR matches)."""
    vrs = [vr for vr in ALL_VRS if vr in TAGS_BY_VR and (vr != "SQ" or depth < 2)]
    vr = draw(st.sampled_from(vrs))
    tag = draw(st.sampled_from(TAGS_BY_VR[vr]))
    if vr == "SQ":
        items = draw(st.lists(datasets(depth + 1), max_size=3))
        return DataElement(tag, "SQ", items)
    return DataElement(tag, vr, draw(values_for(vr)), validation_mode=0)


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0, max_elements: int = 8) -> Dataset:
    """Arbitrary data sets: all VRs, nested sequences, private tags, multi-valued, empties."""
    ds = Dataset()
    for elem in draw(st.lists(elements(depth), max_size=max_elements)):
        ds.add(elem)
    if draw(st.booleans()):
        ds.add_new(0x00090010, "LO", PRIVATE_CREATOR)
        for element in draw(st.sets(st.integers(0x1000, 0x10FF), max_size=3)):
            vr = draw(st.sampled_from(["LO", "US", "OB", "UN", "DS", "UI"]))
            ds.add(DataElement(0x00090000 | element, vr, draw(values_for(vr)), validation_mode=0))
    return ds


# --- C-FIND identifiers -------------------------------------------------------------------
LEVEL_KEYS: dict[str, list[tuple[str, st.SearchStrategy[Any]]]] = {
    "PATIENT": [("PatientName", st.one_of(person_names, wildcards)), ("PatientID", wildcards),
                ("PatientBirthDate", date_ranges), ("PatientSex", st.sampled_from(["M", "F", "O"]))],
    "STUDY": [("StudyInstanceUID", st.one_of(uids, st.lists(uids, min_size=2, max_size=4))),
              ("StudyDate", date_ranges), ("StudyTime", times), ("AccessionNumber", wildcards),
              ("StudyID", wildcards), ("ModalitiesInStudy", st.lists(
                  st.sampled_from(["CT", "MR", "US", "SR"]), min_size=1, max_size=3)),
              ("ReferringPhysicianName", person_names), ("StudyDescription", wildcards),
              ("NumberOfStudyRelatedInstances", st.just(""))],
    "SERIES": [("SeriesInstanceUID", uids), ("Modality", st.sampled_from(["CT", "MR"])),
               ("SeriesNumber", st.integers(0, 999).map(str)), ("SeriesDate", date_ranges)],
    "IMAGE": [("SOPInstanceUID", st.one_of(uids, st.lists(uids, min_size=2, max_size=3))),
              ("SOPClassUID", uids), ("InstanceNumber", st.integers(0, 9999).map(str))],
}


@st.composite
def identifier_items(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """(keyword, value) pairs of a C-FIND-like identifier; values may be empty (universal)."""
    level = draw(st.sampled_from(sorted(LEVEL_KEYS)))
    pairs: list[tuple[str, Any]] = [("QueryRetrieveLevel", level)]
    for levels in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        for keyword, strategy in LEVEL_KEYS[levels]:
            if draw(st.booleans()):
                pairs.append((keyword, draw(st.one_of(st.just(""), strategy))))
        if levels == level:
            break
    return pairs


@st.composite
def identifiers(draw: st.DrawFn) -> Dataset:
    """A C-FIND-like identifier Dataset (optionally with a Specific Character Set)."""
    ds = Dataset()
    if draw(st.booleans()):
        ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192"]))
    for keyword, value in draw(identifier_items()):
        setattr(ds, keyword, value)
    return ds


__all__ = [
    "ALL_VRS", "TAGS_BY_VR", "TRANSFER_SYNTAXES", "datasets", "date_ranges", "elements",
    "identifier_items", "identifiers", "keyword_for_tag", "person_names", "transfer_syntaxes",
    "uids", "values_for", "wildcards",
]
