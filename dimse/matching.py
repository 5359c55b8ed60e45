"""C-FIND attribute matching (PS3.4 C.2.2.2) translated to parameterised SQLite conditions.

The :data:`ATTRIBUTES` table says, for every key the embedded archive indexes, where it lives
(table, column or SQL expression) and how it matches (:class:`Kind`). The same table drives the
schema, indexing, matching and the values returned, in :mod:`dimse.archive`.

Choices (conformance statement material):

* Values are stripped of padding (leading and trailing spaces for all string VRs indexed here,
  NUL for UI); a zero-length key, or one of only ``*`` (``*``, ``**``), is universal matching.
* Wildcards ``*``/``?`` apply to AE, CS, LO, LT, PN, SH, ST, UC, UR, UT keys only; elsewhere they
  are literal characters (so a UI key with ``*`` matches nothing).
* Matching is case-sensitive (SQLite GLOB) except PN: patient and physician names match
  case-insensitively (Unicode upper-case of both sides, character for character so that ``?``
  stays one character: ``ß`` folds to ``ẞ``, not ``SS``; then LIKE ... ESCAPE), ``^`` and ``=``
  are literal, no accent or phonetic folding.
* DA/TM/DT single values and ranges (``A-B``, ``A-``, ``-B``) compare as normalised strings
  (``-`` alone is universal matching); a
  partial time or datetime stands for its whole span (``10`` = 10:00:00 to 10:59:59.999999).
  With combined date-time matching, a DA+TM key pair such as StudyDate+StudyTime matches as
  one datetime range (DA/TM values carry no offset and are compared as they are).
* DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, trailing components optional) compares in UTC: a value
  with its own ``&ZZXX`` offset is shifted by it; a value without one is taken in the offset
  of Timezone Offset From UTC (0008,0201) of its data set (stored instance or request
  identifier) and as UTC when that is absent too. In a DT key, ``-`` followed by exactly four
  digits at the end of a value is that value's offset, not a range separator (``A-B``, ``A-``
  and ``-B`` may each carry offsets; the reading with valid values and offsets, -1200 to
  +1400, wins). A stored DT is compared by the UTC start of its span (a partial ``2020``
  stands for 2020-01-01T00:00 local time) and returned exactly as stored. Values that are not
  valid DT fall back to plain string comparison without an offset.
* A key with several values (VR other than UI) matches if any value matches.
* A stored text (STR/PN) value with several values (``\\``-joined in its column) matches if any
  one of its values matches, each on its own: a wildcard never spans a value separator. Rows
  whose stored value has no ``\\`` keep the plain SQL condition (no Python call); only
  multi-valued rows go to the deterministic SQLite function ``dicom_any``
  (:func:`any_value_matches`), which :func:`register_functions` adds to a connection. Exact
  keys on stored columns are ``cond OR id IN (multi-valued rows that match)`` so the column's
  index still serves them; wildcard keys use ``CASE WHEN instr(col, '\\') ...``.
* A stored DA/TM/DT value with several values (normalised value by value, ``\\``-joined)
  matches if one value is within the key's bounds: ``cond OR id IN (multi-valued rows
  that match)`` through ``dicom_in_range``, so single-valued rows keep the column's index;
  a combined DA+TM pair tries each date with each time (``dicom_pair_in_range``).
* Sequence keys: one request item; its non-empty keys must all match within one item of the
  entity's sequence (only the item keys listed in the table are indexed; no nesting).
* Values are always SQL parameters; the only SQL text built from the request is the fixed set
  of column names and dictionary keywords (validated) from this table.
"""

from __future__ import annotations

import calendar
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

__all__ = [
    "ATTRIBUTES",
    "DATETIME_PAIRS",
    "Attr",
    "Cond",
    "Kind",
    "any_value_in_range",
    "any_value_matches",
    "date_norm",
    "datetime_bounds",
    "datetime_key_bounds",
    "fold_pn",
    "match",
    "match_datetime_pair",
    "match_datetime_pair_values",
    "match_sequence",
    "register_functions",
    "strip_escapes",
    "time_bounds",
    "utc_offset",
]

Cond = tuple[str, list[object]]

_DATED_VRS: Final = frozenset({"DA", "TM", "DT"})
WILDCARD_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_KEYWORD_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_TZ_RE: Final = re.compile(r"[+-]\d{4}$")
_DT_RE: Final = re.compile(r"(\d{4}(?:\d\d){0,5})(?:\.(\d{1,6}))?([+-]\d{4})?")
_DT_MIN: Final = "00010101000000.000000"
_DT_MAX: Final = "99991231235959.999999"


class Kind(Enum):
    """How an attribute is stored and matched."""

    STR = "str"  # text, case-sensitive, wildcards if the VR allows
    PN = "pn"  # text plus an upper-cased copy, case-insensitive
    UID = "uid"  # single value or list of UIDs
    DATE = "date"  # YYYYMMDD
    TIME = "time"  # raw text plus normalised HHMMSS.ffffff copy
    DATETIME = "datetime"  # raw text plus UTC YYYYMMDDHHMMSS.ffffff copy
    INT = "int"  # IS, stored as INTEGER
    SEQ = "seq"  # JSON array of {keyword: text} items


@dataclass(frozen=True, slots=True)
class Attr:
    """One indexed (or computed) attribute.

    ``expr``: SQL value expression for computed attributes (aliases p, st, se, i).
    ``exists``: for multi-valued computed attributes, (FROM...WHERE clause, column) so that a key
    matches if any related row matches.
    """

    keyword: str
    table: str
    column: str
    kind: Kind
    vr: str
    items: tuple[str, ...] = ()
    expr: str = ""
    exists: tuple[str, str] | None = None

    @property
    def computed(self) -> bool:
        return bool(self.expr)


def _a(keyword: str, table: str, column: str, kind: Kind, **kw: object) -> Attr:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attr(keyword, table, column, kind, dictionary_VR(tag), **kw)  # type: ignore[arg-type]


_S, _PN, _U, _D, _T, _I = Kind.STR, Kind.PN, Kind.UID, Kind.DATE, Kind.TIME, Kind.INT
_SERIES_OF_STUDY = "series s2 WHERE s2.study_ref = st.id"
_INST_OF_STUDY = "instance i2 JOIN series s2 ON i2.series_ref = s2.id WHERE s2.study_ref = st.id"

_CODE_ITEMS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")

#: Keyword -> where and how it is indexed. Order within a table = column order.
ATTRIBUTES: Final[Mapping[str, Attr]] = {
    a.keyword: a
    for a in (
        _a("PatientID", "patient", "patient_id", _S),
        _a("IssuerOfPatientID", "patient", "issuer", _S),
        _a("PatientName", "patient", "patient_name", _PN),
        _a("PatientBirthDate", "patient", "birth_date", _D),
        _a("PatientBirthTime", "patient", "birth_time", _T),
        _a("PatientSex", "patient", "sex", _S),
        _a("OtherPatientNames", "patient", "other_names", _PN),
        _a("PatientComments", "patient", "comments", _S),
        _a("OtherPatientIDsSequence", "patient", "other_ids_seq", Kind.SEQ,
           items=("PatientID", "IssuerOfPatientID")),
        _a("StudyInstanceUID", "study", "study_uid", _U),
        _a("StudyDate", "study", "study_date", _D),
        _a("StudyTime", "study", "study_time", _T),
        _a("AccessionNumber", "study", "accession", _S),
        _a("StudyID", "study", "study_id", _S),
        _a("StudyDescription", "study", "description", _S),
        _a("ReferringPhysicianName", "study", "referring", _PN),
        _a("NameOfPhysiciansReadingStudy", "study", "reading", _PN),
        _a("PatientAge", "study", "patient_age", _S),
        _a("ProcedureCodeSequence", "study", "procedure_seq", Kind.SEQ, items=_CODE_ITEMS),
        _a("SeriesInstanceUID", "series", "series_uid", _U),
        _a("Modality", "series", "modality", _S),
        _a("SeriesNumber", "series", "series_number", _I),
        _a("SeriesDescription", "series", "description", _S),
        _a("SeriesDate", "series", "series_date", _D),
        _a("SeriesTime", "series", "series_time", _T),
        _a("BodyPartExamined", "series", "body_part", _S),
        _a("RequestAttributesSequence", "series", "request_seq", Kind.SEQ,
           items=("RequestedProcedureID", "ScheduledProcedureStepID", "AccessionNumber")),
        _a("SOPInstanceUID", "instance", "sop_uid", _U),
        _a("SOPClassUID", "instance", "sop_class", _U),
        _a("InstanceNumber", "instance", "instance_number", _I),
        _a("ContentDate", "instance", "content_date", _D),
        _a("ContentTime", "instance", "content_time", _T),
        _a("AcquisitionDateTime", "instance", "acq_datetime", Kind.DATETIME),
        _a("ConceptNameCodeSequence", "instance", "concept_seq", Kind.SEQ, items=_CODE_ITEMS),
        # computed from the hierarchy
        _a("NumberOfPatientRelatedStudies", "patient", "", _I,
           expr="(SELECT COUNT(*) FROM study t2 WHERE t2.patient_ref = p.id)"),
        _a("NumberOfPatientRelatedSeries", "patient", "", _I,
           expr="(SELECT COUNT(*) FROM series s2 JOIN study t2 ON s2.study_ref = t2.id"
                " WHERE t2.patient_ref = p.id)"),
        _a("NumberOfPatientRelatedInstances", "patient", "", _I,
           expr="(SELECT COUNT(*) FROM instance i2 JOIN series s2 ON i2.series_ref = s2.id"
                " JOIN study t2 ON s2.study_ref = t2.id WHERE t2.patient_ref = p.id)"),
        _a("NumberOfStudyRelatedSeries", "study", "", _I,
           expr="(SELECT COUNT(*) FROM series s2 WHERE s2.study_ref = st.id)"),
        _a("NumberOfStudyRelatedInstances", "study", "", _I,
           expr=f"(SELECT COUNT(*) FROM {_INST_OF_STUDY})"),
        _a("NumberOfSeriesRelatedInstances", "series", "", _I,
           expr="(SELECT COUNT(*) FROM instance i2 WHERE i2.series_ref = se.id)"),
        _a("ModalitiesInStudy", "study", "", _S,
           expr="(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT s2.modality AS m FROM "
                f"{_SERIES_OF_STUDY} AND s2.modality <> '' ORDER BY m))",
           exists=(_SERIES_OF_STUDY, "s2.modality")),
        _a("SOPClassesInStudy", "study", "", _U,
           expr="(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i2.sop_class AS c FROM "
                f"{_INST_OF_STUDY} ORDER BY c))",
           exists=(_INST_OF_STUDY, "i2.sop_class")),
    )
}

#: DA+TM key pairs matched as one datetime range when combined matching is on.
DATETIME_PAIRS: Final = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                         ("ContentDate", "ContentTime"))


def fold_pn(value: str) -> str:
    """The case-folded form PN matching compares: Unicode upper case, character for
    character, so that ``?`` still stands for one character of the name (``ß`` -> ``ẞ``; a
    character whose upper case is several, such as a ligature, is kept as it is)."""
    folded = value.upper()
    if len(folded) == len(value):
        return folded
    return "".join(_fold_char(c) for c in value)


def _fold_char(c: str) -> str:
    upper = c.upper()
    return upper if len(upper) == 1 else "\u1e9e" if c == "\u00df" else c


def date_norm(value: str) -> str:
    """DA value (also the old ``YYYY.MM.DD`` form) -> ``YYYYMMDD``."""
    return value.strip().replace(".", "")


def time_bounds(value: str) -> tuple[str, str]:
    """TM value (possibly partial, old ``HH:MM:SS`` form) -> (first, last) ``HHMMSS.ffffff``."""
    main, _, frac = value.strip().replace(":", "").partition(".")
    main = main[:6]
    lo = (main + "000000")[:6] + "." + (frac + "000000")[:6]
    hi_main = main + "595959"[len(main):] if len(main) < 6 else main
    hi = hi_main + "." + (frac + "999999")[:6]
    return lo, hi


def utc_offset(text: object) -> int | None:
    """``&ZZXX`` (PS3.5 6.2, -1200 to +1400) -> minutes east of UTC; None if not valid."""
    if not isinstance(text, str) or not re.fullmatch(r"[+-]\d{4}", text.strip()):
        return None
    text = text.strip()
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    if int(text[3:5]) > 59 or minutes > (840 if text[0] == "+" else 720):
        return None
    return minutes if text[0] == "+" else -minutes


def _parse_dt(value: str) -> tuple[str, str, int | None] | None:
    """Valid DT text -> (date-time digits, fraction digits, own offset in minutes or None)."""
    m = _DT_RE.fullmatch(value)
    if m is None or m[2] is not None and len(m[1]) != 14:
        return None
    offset = utc_offset(m[3]) if m[3] else None
    if m[3] and offset is None:
        return None
    return m[1], m[2] or "", offset


def _dt_text(d: datetime) -> str:
    return (f"{d.year:04d}{d.month:02d}{d.day:02d}{d.hour:02d}{d.minute:02d}{d.second:02d}"
            f".{d.microsecond:06d}")


def _dt_span(main: str, frac: str) -> tuple[datetime, datetime]:
    """First and last instant of a (partial) DT value, ValueError if it is no date-time."""
    last_day = "31"
    if len(main) == 6:
        last_day = str(calendar.monthrange(int(main[:4]), int(main[4:6]))[1])
    lo = main + "00000101000000"[len(main):] + "." + (frac + "000000")[:6]
    hi = main + ("9999" + "12" + last_day + "235959")[len(main):] + "." + (frac + "999999")[:6]
    fmt = "%Y%m%d%H%M%S.%f"
    return datetime.strptime(lo, fmt), datetime.strptime(hi, fmt)


def datetime_bounds(value: str, offset: str | None = None) -> tuple[str, str]:
    """DT value (possibly partial) -> (first, last) instant of its span in UTC, as
    ``YYYYMMDDHHMMSS.ffffff``. A value without its own offset is in ``offset`` (Timezone
    Offset From UTC), else UTC. Invalid values: string bounds, offset dropped."""
    parsed = _parse_dt(value.strip())
    try:
        if parsed is None:
            raise ValueError(value)
        main, frac, own = parsed
        minutes = own if own is not None else utc_offset(offset) or 0
        lo, hi = _dt_span(main, frac)
    except ValueError:
        main, _, frac = _TZ_RE.sub("", value.strip()).partition(".")
        main = main[:14]
        return (main + "00000101000000"[len(main):] + "." + (frac + "000000")[:6],
                main + "99991231235959"[len(main):] + "." + (frac + "999999")[:6])
    shift = timedelta(minutes=minutes)
    try:
        lo_text = _dt_text(lo - shift)
    except OverflowError:
        lo_text = _DT_MIN if minutes > 0 else _DT_MAX
    try:
        hi_text = _dt_text(hi - shift)
    except OverflowError:
        hi_text = _DT_MIN if minutes > 0 else _DT_MAX
    return lo_text, hi_text


def datetime_key_bounds(value: str, offset: str | None = None) -> tuple[str | None, str | None]:
    """DT key (single value or ``A-B``/``A-``/``-B`` range, each part possibly with its own
    ``&ZZXX``) -> UTC (low, high) bounds, None where open."""
    value = value.strip()
    if _parse_dt(value) is not None:
        return datetime_bounds(value, offset)
    splits = [i for i, c in enumerate(value) if c == "-"]
    for i in splits:
        lo, hi = value[:i], value[i + 1:]
        if (lo or hi) and all(not p or _parse_dt(p) is not None for p in (lo, hi)):
            break
    else:  # no valid reading: the first '-' separates, as for other VRs
        lo, sep, hi = value.partition("-")
        if not sep:
            hi = lo
    return (datetime_bounds(lo, offset)[0] if lo else None,
            datetime_bounds(hi, offset)[1] if hi else None)


_ESCAPE_RE: Final = re.compile("\x1b[\x20-\x2f]*[\x30-\x7e]?")


def strip_escapes(text: str) -> str:
    """``text`` without ISO 2022 escape sequences (PS3.5 6.1.2.5) that a decoder left in it:
    pydicom 3.0 keeps ``ESC $ ) A`` of ISO 2022 IR 58 in the decoded text. After decoding an
    escape sequence is no character of the value, so it is never matched nor stored."""
    return _ESCAPE_RE.sub("", text) if "\x1b" in text else text


def _values(value: object) -> list[str]:
    """Key value (str, number, MultiValue, PersonName...) -> stripped strings."""
    if value is None:
        return []
    if isinstance(value, list | tuple | MultiValue):
        return [strip_escapes(str(v)).strip(" \0") for v in value]
    text = strip_escapes(str(value))
    return [v.strip(" \0") for v in text.split("\\")] if text.strip(" \0") else []


def _range(col: str, lo: str | None, hi: str | None) -> Cond:
    """``col`` within [lo, hi]; an empty value never matches a bound (a non-empty ``lo``
    already excludes ''), and the bare column keeps its index usable."""
    if lo and hi:
        return f"{col} BETWEEN ? AND ?", [lo, hi]
    if lo:
        return f"{col} >= ?", [lo]
    if hi:
        return f"{col} > '' AND {col} <= ?", [hi]
    return "1", []


def _bounds(kind: Kind, v: str, offset: str | None) -> tuple[str | None, str | None]:
    """(low, high) normalised bounds of one DA/TM/DT key value (None where open)."""
    if kind is Kind.DATETIME:
        return datetime_key_bounds(v, offset)
    lo, sep, hi = v.partition("-")
    if not sep:
        hi = lo
    if kind is Kind.DATE:
        return date_norm(lo) or None, date_norm(hi) or None
    return time_bounds(lo)[0] if lo else None, time_bounds(hi)[1] if hi else None


def _wild_glob(value: str) -> str:
    return value.replace("[", "[[]")


def _wild_like(value: str) -> str:
    out = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%").replace("?", "_")


def _match_one(kind: Kind, vr: str, col: str, v: str, offset: str | None = None) -> Cond:
    """One non-empty value against one column."""
    wild = vr in WILDCARD_VRS and ("*" in v or "?" in v)
    if kind is Kind.PN:
        if wild:
            return f"{col} LIKE ? ESCAPE '\\'", [_wild_like(fold_pn(v))]
        return f"{col} = ?", [fold_pn(v)]
    if kind is Kind.DATE:
        if "-" in v:
            lo, _, hi = v.partition("-")
            return _range(col, date_norm(lo) or None, date_norm(hi) or None)
        return f"{col} = ?", [date_norm(v)]
    if kind in (Kind.DATETIME, Kind.TIME):
        return _range(col, *_bounds(kind, v, offset))
    if kind is Kind.INT:
        try:
            return f"{col} = ?", [int(v)]
        except ValueError:
            return "0", []
    if wild:
        return f"{col} GLOB ?", [_wild_glob(v)]
    return f"{col} = ?", [v]


def _per_value(kind: Kind, vr: str, col: str, values: list[str], cond: Cond) -> Cond:
    """``cond`` for single stored values; a stored value holding ``\\`` (several values) is
    matched value by value by ``dicom_any`` instead."""
    keys = "\\".join(fold_pn(v) if kind is Kind.PN else v for v in values)
    sql = (f"(CASE WHEN instr({col}, '\\') > 0 THEN {_ANY_FUNCTION}({col}, ?, ?) "
           f"ELSE {cond[0]} END)")
    return sql, [keys, int(vr in WILDCARD_VRS), *cond[1]]


def match(attr_kind: Kind, vr: str, col: str, value: object, *,
          offset: str | None = None) -> Cond | None:
    """The condition a key value puts on ``col`` (None: universal matching). ``offset``:
    Timezone Offset From UTC of the request, for DT values without their own offset."""
    values = _key_values(vr, value)
    if values is None:
        return None
    cond = _values_cond(attr_kind, vr, col, values, offset)
    if attr_kind in (Kind.STR, Kind.PN):
        return _per_value(attr_kind, vr, col, values, cond)
    return cond


def _key_values(vr: str, value: object) -> list[str] | None:
    """The non-empty key values; None for universal matching, which a value of only ``*``
    also is where wildcards apply (``*`` matches any sequence, a zero-length one too)."""
    values = [v for v in _values(value) if v]
    if not values or vr in WILDCARD_VRS and any(not v.strip("*") for v in values):
        return None
    if vr in _DATED_VRS and "-" in values:  # a range without bounds: no constraint
        return None
    return values


def _exact_column(attr: Attr, alias: str, column: str, value: object) -> Cond | None:
    """Exact (no wildcard) STR/PN keys on a stored column, written so that an index on the
    column still serves single-valued rows: ``cond OR id IN (multi-valued rows whose values
    match)``. A single-value condition never holds for a multi-valued row (key values hold no
    ``\\``), so the OR is exact."""
    values = _key_values(attr.vr, value)
    if values is None:
        return None
    cond = _values_cond(attr.kind, attr.vr, f"{alias}.{column}", values, None)
    keys = "\\".join(fold_pn(v) if attr.kind is Kind.PN else v for v in values)
    return (f"({cond[0]} OR {alias}.id IN (SELECT id FROM {attr.table} WHERE "
            f"instr({column}, '\\') > 0 AND {_ANY_FUNCTION}({column}, ?, 0)))",
            [*cond[1], keys])


def _values_cond(attr_kind: Kind, vr: str, col: str, values: list[str],
                 offset: str | None) -> Cond:
    """Any of the non-empty key ``values`` against a single stored value in ``col``."""
    if attr_kind is Kind.UID or len(values) > 1 and attr_kind is not Kind.PN:
        if attr_kind in (Kind.UID, Kind.STR, Kind.INT) and not any(
            "*" in v or "?" in v for v in values
        ):
            params: list[object] = [int(v) if attr_kind is Kind.INT and v.lstrip("-+").isdigit()
                                    else v for v in values]
            return f"{col} IN ({', '.join('?' * len(values))})", params
    conds = [_match_one(attr_kind, vr, col, v, offset) for v in values]
    if len(conds) == 1:
        return conds[0]
    return "(" + " OR ".join(c for c, _ in conds) + ")", [p for _, ps in conds for p in ps]


def match_column(attr: Attr, alias: str, value: object, *,
                 offset: str | None = None) -> Cond | None:
    """The condition for a key on an :data:`ATTRIBUTES` entry of the table aliased ``alias``
    (``offset``: the request's Timezone Offset From UTC, for DT keys)."""
    if attr.exists is not None:
        inner = match(attr.kind, attr.vr, attr.exists[1], value)
        if inner is None:
            return None
        return f"EXISTS (SELECT 1 FROM {attr.exists[0]} AND {inner[0]})", inner[1]
    if attr.computed:
        return match(attr.kind, attr.vr, attr.expr, value)
    column = attr.column + ("_f" if attr.kind is Kind.PN else "")
    if attr.kind in (Kind.STR, Kind.PN) and not (
            attr.vr in WILDCARD_VRS and any("*" in v or "?" in v for v in _values(value))):
        return _exact_column(attr, alias, column, value)
    if attr.kind in _DATED:
        return _dated_column(attr, alias, value, offset)
    col = f"{alias}.{attr.column}"
    if attr.kind is Kind.PN:
        col += "_f"
    return match(attr.kind, attr.vr, col, value, offset=offset)


_DATED: Final = frozenset({Kind.DATE, Kind.TIME, Kind.DATETIME})


def _dated_column(attr: Attr, alias: str, value: object, offset: str | None) -> Cond | None:
    """DA/TM/DT keys on a stored column: the plain condition (which the column's index can
    serve) for single-valued rows, ``OR id IN`` the multi-valued rows (``\\`` in the
    normalised column) of which one value is within the key's bounds (``dicom_in_range``).
    A multi-valued row that meets the plain condition does so through its first value, so
    the OR is exact, once rows whose first value is empty (the column starts with ``\\``,
    which sorts above every digit: ``20200101-`` would take it) are kept out of the plain
    condition by ``< '\\'`` (normalised values are digits, '.', '+' and '-', all below it)."""
    column = attr.column + ("_n" if attr.kind in (Kind.TIME, Kind.DATETIME) else "")
    cond = match(attr.kind, attr.vr, f"{alias}.{column}", value, offset=offset)
    values = _key_values(attr.vr, value)
    if cond is None or values is None:
        return None
    bounds = json.dumps([_bounds(attr.kind, v, offset) for v in values])
    return (f"(({cond[0]} AND {alias}.{column} < '\\') OR {alias}.id IN (SELECT id FROM "
            f"{attr.table} WHERE "
            f"instr({column}, '\\') > 0 AND {_RANGE_FUNCTION}({column}, ?)))",
            [*cond[1], bounds])


def _item_kind(keyword: str) -> tuple[Kind, str]:
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag) if tag is not None else "LO"
    kind = {"PN": Kind.STR, "UI": Kind.UID, "DA": Kind.DATE}.get(vr, Kind.STR)
    return kind, vr


def match_sequence(attr: Attr, alias: str, item: Iterable[tuple[str, object]]) -> Cond | None:
    """Sequence matching: every non-universal (keyword, value) of the request item must match
    within one item of the stored JSON array. PN item keys use LIKE's ASCII case folding."""
    conds: list[Cond] = []
    for keyword, value in item:
        if keyword not in attr.items or not _KEYWORD_RE.match(keyword):
            continue  # not indexed: ignored (reported as unsupported by the archive)
        kind, vr = _item_kind(keyword)
        col = f"json_extract(j.value, '$.{keyword}')"
        if vr == "PN":
            vals = [v for v in _values(value) if v]
            cond: Cond | None = (f"{col} LIKE ? ESCAPE '\\'", [_wild_like(vals[0])]) if vals and \
                vals[0].strip("*") else None
        else:
            cond = match(kind, vr, col, value)
        if cond is not None:
            conds.append(cond)
    if not conds:
        return None
    where = " AND ".join(c for c, _ in conds)
    return (f"EXISTS (SELECT 1 FROM json_each({alias}.{attr.column}) j WHERE {where})",
            [p for _, ps in conds for p in ps])


def _pair_bounds(date_value: object, time_value: object
                 ) -> tuple[str | None, str | None] | None:
    """(low, high) ``YYYYMMDDHHMMSS.ffffff`` bounds of a DA+TM key pair (None: universal)."""
    dv = [v for v in _values(date_value) if v]
    tv = [v for v in _values(time_value) if v]
    if len(dv) != 1 or len(tv) != 1:
        return None
    d_lo, d_sep, d_hi = dv[0].partition("-")
    t_lo, t_sep, t_hi = tv[0].partition("-")
    if not d_sep:
        d_hi = d_lo
    if not t_sep:
        t_hi = t_lo
    lo = date_norm(d_lo) + (time_bounds(t_lo)[0] if t_lo else "000000.000000") if d_lo else None
    hi = date_norm(d_hi) + (time_bounds(t_hi)[1] if t_hi else "235959.999999") if d_hi else None
    return lo, hi


def _pair_column(date_col: str, time_col: str) -> str:
    return f"({date_col} || COALESCE(NULLIF({time_col}, ''), '000000.000000'))"


def match_datetime_pair(date_col: str, time_col: str, date_value: object,
                        time_value: object) -> Cond | None:
    """Combined date-time range matching of a DA+TM key pair (None if either is universal)."""
    bounds = _pair_bounds(date_value, time_value)
    return None if bounds is None else _range(_pair_column(date_col, time_col), *bounds)


def match_datetime_pair_values(date_col: str, time_col: str, date_value: object,
                               time_value: object) -> Cond | None:
    """:func:`match_datetime_pair` that also serves rows whose date or time is multi-valued
    (``\\`` in the column): one date joined with one time must be in the range
    (``dicom_pair_in_range``, see :func:`register_functions`)."""
    bounds = _pair_bounds(date_value, time_value)
    if bounds is None:
        return None
    cond = _range(_pair_column(date_col, time_col), *bounds)
    return (f"(CASE WHEN instr({date_col}, '\\') > 0 OR instr({time_col}, '\\') > 0 "
            f"THEN {_PAIR_FUNCTION}({date_col}, {time_col}, ?, ?) ELSE {cond[0]} END)",
            [*bounds, *cond[1]])


_ANY_FUNCTION: Final = "dicom_any"


@functools.lru_cache(maxsize=512)
def _value_matcher(keys: str, wild: bool) -> Callable[[str], bool]:
    """Predicate: does one stored value match any of the ``\\``-joined key values?"""
    parts = keys.split("\\")
    if not wild or not any("*" in k or "?" in k for k in parts):
        return frozenset(parts).__contains__
    rx = re.compile("|".join("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                                     for c in k) for k in parts), re.DOTALL)
    return lambda v: rx.fullmatch(v) is not None


def any_value_matches(stored: object, keys: object, wild: object) -> int:
    """SQLite ``dicom_any(stored, keys, wild)``: 1 if one value of the ``\\``-joined ``stored``
    (empty values never match) matches one of the ``\\``-joined ``keys`` exactly, or, when
    ``wild``, as a ``*``/``?`` pattern; else 0. Keys arrive already PN-folded."""
    if not isinstance(stored, str) or not isinstance(keys, str):
        return 0
    matches = _value_matcher(keys, bool(wild))
    return int(any(v and matches(v) for v in stored.split("\\")))


_RANGE_FUNCTION: Final = "dicom_in_range"
_PAIR_FUNCTION: Final = "dicom_pair_in_range"


@functools.lru_cache(maxsize=512)
def _ranges(bounds: str) -> tuple[tuple[str | None, str | None], ...]:
    return tuple((lo, hi) for lo, hi in json.loads(bounds))


def _within(v: str, lo: str | None, hi: str | None) -> bool:
    return bool(v) and (lo is None or v >= lo) and (hi is None or v <= hi)


def any_value_in_range(stored: object, bounds: object) -> int:
    """SQLite ``dicom_in_range(stored, bounds)``: 1 if one value of the ``\\``-joined,
    normalised DA/TM/DT ``stored`` lies within one of the JSON list of (low, high) ``bounds``
    (None = open); empty values never match."""
    if not isinstance(stored, str) or not isinstance(bounds, str):
        return 0
    ranges = _ranges(bounds)
    return int(any(_within(v, lo, hi) for v in stored.split("\\") for lo, hi in ranges))


def any_pair_in_range(dates: object, times: object, lo: object, hi: object) -> int:
    """SQLite ``dicom_pair_in_range``: combined date-time matching of a row whose date or
    time is multi-valued: 1 if one date joined with one time (midnight when there is none)
    lies within [lo, hi] (None = open)."""
    if not isinstance(dates, str):
        return 0
    clock = times.split("\\") if isinstance(times, str) and times else [""]
    low = lo if isinstance(lo, str) else None
    high = hi if isinstance(hi, str) else None
    return int(any(d and _within(d + (t or "000000.000000"), low, high)
                   for d in dates.split("\\") for t in clock))


def register_functions(db: sqlite3.Connection) -> None:
    """Add the SQL functions the conditions of this module call to ``db``."""
    db.create_function(_ANY_FUNCTION, 3, any_value_matches, deterministic=True)
    db.create_function(_RANGE_FUNCTION, 2, any_value_in_range, deterministic=True)
    db.create_function(_PAIR_FUNCTION, 4, any_pair_in_range, deterministic=True)
