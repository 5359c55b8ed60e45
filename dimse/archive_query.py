"""Archive queries: the SQL plan of one C-FIND and its answers, as Datasets or as bytes.

:class:`Plan` turns a request identifier into joins, parameterised WHERE conditions (see
:mod:`dimse.matching`) and the columns of the response keys. :meth:`Plan.response` builds the
pydicom Dataset of one row (the general path); :meth:`Plan.encoder` compiles the response layout
once into two :class:`dimse.template.IdentifierTemplate` (empty and ``ISO_IR 192`` character
set) and encodes each row straight from its SQL values, with the value conversions done by SQL.
Both paths produce the same bytes (tests/dimse/test_archive_encoded.py).

The character set of a response is ``ISO_IR 192`` when a returned stored value of a VR that
(0008,0005) governs (SH, LO, ST, LT, UC, UT, PN; sequence keys as their stored JSON) has a
non-ASCII character, else empty; SQL computes this flag per row, for both paths. Values of
other VRs (CS, UI, DA, TM, DT, AS, IS) use the default repertoire and do not take part.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dimse._codec_encode import encode
from dimse._vr import CHARSET_VRS
from dimse.errors import IdentifierError
from dimse.matching import (
    ATTRIBUTES,
    DATETIME_PAIRS,
    Attr,
    Cond,
    Kind,
    match_column,
    match_datetime_pair_values,
    match_sequence,
)
from dimse.qr import (
    MODELS,
    QR_LEVEL,
    SPECIFIC_CHARACTER_SET,
    UNIQUE_KEYS,
    UTF8_CHARACTER_SET,
    Level,
    QueryModel,
)
from dimse.template import IdentifierTemplate

__all__ = ["ALIAS", "LEVEL_TABLE", "PARENT", "TABLES", "FindEncodedResult", "FindResult", "Plan"]

TABLES: Final = ("patient", "study", "series", "instance")
ALIAS: Final = {"patient": "p", "study": "st", "series": "se", "instance": "i"}
LEVEL_TABLE: Final = {Level.PATIENT: "patient", Level.STUDY: "study", Level.SERIES: "series",
                      Level.IMAGE: "instance"}
PARENT: Final = {"study": ("patient_ref", "patient"), "series": ("study_ref", "study"),
                 "instance": ("series_ref", "series")}
_TIMEZONE: Final = 0x00080201  # Timezone Offset From UTC: DT keys without an offset use it
_NOT_KEYS: Final = frozenset({QR_LEVEL, SPECIFIC_CHARACTER_SET, _TIMEZONE, 0x00080053})

Row = tuple[Any, ...]
RowEncoder = Callable[[Iterable[Row]], Iterator[bytes]]
_Encode = Callable[[Sequence[Any]], bytes]


@dataclass(frozen=True, slots=True)
class FindResult:
    """Matches plus the requested keys the archive does not index (returned empty; the SCP may
    answer Pending with FF01 when ``unsupported`` is not empty)."""

    matches: Iterator[Dataset]
    unsupported: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FindEncodedResult:
    """Encoded response identifiers (the bytes ``codec.encode`` gives for :class:`FindResult`'s
    Datasets, in ``transfer_syntax_uid``), the unsupported keys, and whether the compiled
    template served the query (``False``: a key kind needed the Dataset path)."""

    matches: Iterator[bytes]
    unsupported: tuple[int, ...]
    transfer_syntax_uid: str
    templated: bool


def response_value(attr: Attr, raw: object, request: object) -> object:
    """DB value -> pydicom element value."""
    if raw is None or raw == "":
        return None
    if attr.kind is Kind.SEQ:
        wanted = [e.keyword for e in request[0]] if isinstance(request, DicomSequence) and \
            len(request) and len(request[0]) else list(attr.items)
        items = []
        for stored in json.loads(str(raw)):
            item = Dataset()
            for k in wanted:
                setattr(item, k, stored.get(k, "") or None)
            items.append(item)
        return DicomSequence(items)
    if isinstance(raw, str) and "\\" in raw:
        return raw.split("\\")
    return raw


class Plan:
    """One query: the tables joined, the WHERE conditions and the columns returned."""

    def __init__(self, identifier: Dataset, model: QueryModel, level: Level,
                 datetime_matching: bool, table: str | None = None) -> None:
        info = MODELS[model]
        if level not in info.levels or level not in LEVEL_TABLE:
            raise IdentifierError(f"{model.name} has no {level.value} level in the archive",
                                  offending=(QR_LEVEL,))
        self.identifier, self.model, self.level = identifier, model, level
        self.level_table = LEVEL_TABLE[level]
        self.table = table or self.level_table
        depth = TABLES.index(self.level_table)
        self.available = set(TABLES[: depth + 1])
        self.unique_tags = [UNIQUE_KEYS[lv] for lv in info.levels[: info.levels.index(level) + 1]]
        self.conds: list[Cond] = []
        self.unsupported: tuple[int, ...] = ()
        self.out: list[tuple[int, Attr | None]] = []  # (tag, attr) in response order
        self._analyse(datetime_matching)

    def _analyse(self, datetime_matching: bool) -> None:
        ds = self.identifier
        keys = [e for e in ds if int(e.tag) not in _NOT_KEYS]
        paired: set[str] = set()
        tz = ds.get(_TIMEZONE)
        offset = str(tz.value).strip() if tz is not None and tz.value else None
        if datetime_matching:
            paired = self._datetime_pairs()
        unsupported = []
        for elem in keys:
            attr = ATTRIBUTES.get(elem.keyword or "")
            if attr is None or attr.table not in self.available:
                unsupported.append(int(elem.tag))
                self.out.append((int(elem.tag), None))
                continue
            self.out.append((int(elem.tag), attr))
            if attr.keyword in paired:
                continue
            alias = ALIAS[attr.table]
            if attr.kind is Kind.SEQ:
                item = elem.value[0] if elem.value else Dataset()
                cond = match_sequence(attr, alias, ((e.keyword, e.value) for e in item))
            else:
                cond = match_column(attr, alias, elem.value, offset=offset)
            if cond is not None:
                self.conds.append(cond)
        present = {t for t, _ in self.out}
        for tag in self.unique_tags:
            if tag not in present:
                kw = keyword_for_tag(tag)
                self.out.append((tag, ATTRIBUTES[kw]))
        self.unsupported = tuple(unsupported)

    def _datetime_pairs(self) -> set[str]:
        used: set[str] = set()
        for d_kw, t_kw in DATETIME_PAIRS:
            d, t = ATTRIBUTES.get(d_kw), ATTRIBUTES.get(t_kw)
            if d is None or t is None or d.table not in self.available:
                continue
            if d_kw not in self.identifier or t_kw not in self.identifier:
                continue
            alias = ALIAS[d.table]
            cond = match_datetime_pair_values(f"{alias}.{d.column}", f"{alias}.{t.column}_n",
                                       self.identifier[d_kw].value, self.identifier[t_kw].value)
            if cond is not None:
                self.conds.append(cond)
                used.update((d_kw, t_kw))
        return used

    def _joins(self) -> str:
        depth = TABLES.index(self.table)
        sql = f"{self.table} {ALIAS[self.table]}"
        for child in reversed(TABLES[1: depth + 1]):
            col, parent = PARENT[child]
            sql += f" JOIN {parent} {ALIAS[parent]} ON {ALIAS[child]}.{col} = {ALIAS[parent]}.id"
        return sql

    def from_where(self, columns: str) -> tuple[str, list[object]]:
        where = " AND ".join(c for c, _ in self.conds) or "1"
        params = [p for _, ps in self.conds for p in ps]
        return f"SELECT {ALIAS[self.table]}.id, {columns} FROM {self._joins()} WHERE {where}", \
            params

    def _vr(self, tag: int) -> str:
        request = self.identifier.get(tag)
        return request.VR if request is not None else dictionary_VR(tag)

    def _flag_sql(self) -> str:
        """1 when a returned stored text column of a VR that the character set governs has a
        non-ASCII character (UTF-8 bytes outnumber characters), else 0."""
        cols = [f"coalesce({ALIAS[a.table]}.{a.column}, '')" for _, a in self.out
                if a is not None and not a.computed and (a.vr in CHARSET_VRS or a.vr == "SQ")]
        if not cols:
            return "0"
        text = " || ".join(cols)
        return f"(length(CAST({text} AS BLOB)) <> length({text}))"

    def select_sql(self, *, encoded: bool = False) -> tuple[str, list[object]]:
        """Columns: row id, character set flag, then (``encoded``: the level and) one value per
        response key, converted by SQL to what the template takes when ``encoded``."""
        exprs = [self._flag_sql()]
        if encoded:
            exprs.append(f"'{self.level.value}'")
        for _, attr in self.out:
            exprs.append(_value_sql(attr, encoded))
        return self.from_where(", ".join(exprs))

    def response(self, row: Row) -> Dataset:
        """One response identifier (row of ``select_sql()``): requested keys, unique keys,
        level, character set."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        for (tag, attr), raw in zip(self.out, row[2:], strict=True):
            request = self.identifier.get(tag)
            vr = request.VR if request is not None else dictionary_VR(tag)
            value = None if attr is None else response_value(attr, raw, request.value
                                                             if request is not None else None)
            ds.add_new(tag, vr, value)
        if row[1]:
            ds.SpecificCharacterSet = UTF8_CHARACTER_SET
        return ds

    def encoder(self, transfer_syntax_uid: str) -> tuple[tuple[str, list[object]], RowEncoder,
                                                           bool]:
        """(SQL, rows -> encoded identifiers, templated). The template needs unambiguous VRs
        and SQ only for sequence keys; otherwise rows go through :meth:`response` and encode."""
        keys = [(QR_LEVEL, "CS"), *((tag, self._vr(tag)) for tag, _ in self.out)]
        seqs = [(i + 3, attr, tag) for i, (tag, attr) in enumerate(self.out)
                if attr is not None and attr.kind is Kind.SEQ]
        try:
            if any(self._vr(tag) != "SQ" for _, _, tag in seqs):
                raise ValueError("sequence key without SQ VR")
            plain, utf8 = _templates(tuple(keys), transfer_syntax_uid)
        except ValueError:
            def slow(rows: Iterable[Row]) -> Iterator[bytes]:
                return (encode(self.response(r), transfer_syntax_uid) for r in rows)

            return self.select_sql(), slow, False
        if not seqs:
            return self.select_sql(encoded=True), _fast(plain.encode, utf8.encode), True
        converters = [(i, _seq_converter(attr, self.identifier.get(tag)))
                      for i, attr, tag in seqs]
        return (self.select_sql(encoded=True),
                _converted(plain.encode, utf8.encode, converters), True)


@functools.lru_cache(maxsize=256)
def _templates(keys: tuple[tuple[int, str], ...],
               transfer_syntax_uid: str) -> tuple[IdentifierTemplate, IdentifierTemplate]:
    """The (no, ISO_IR 192) character set templates of a response layout, compiled once
    (templates are immutable, so queries and threads share them). An ASCII-only response has
    no (0008,0005): an empty one is not allowed (Type 1C), PS3.4 C.4.1.1.3.2 leaves it out."""
    return (IdentifierTemplate(keys, transfer_syntax_uid, skip=2),
            IdentifierTemplate(keys, transfer_syntax_uid, specific_character_set=UTF8_CHARACTER_SET, skip=2))


def _value_sql(attr: Attr | None, encoded: bool) -> str:
    """SQL value of one response key; ``encoded``: text the template encodes as find() does."""
    if attr is None:
        return "NULL"
    value = attr.expr if attr.computed else f"{ALIAS[attr.table]}.{attr.column}"
    if not encoded:
        return value
    if attr.kind is Kind.INT:
        return f"CAST({value} AS TEXT)"
    return value


def _fast(plain: _Encode, utf8: _Encode) -> RowEncoder:
    encoders = (plain, utf8)

    def encode_rows(rows: Iterable[Row]) -> Iterator[bytes]:
        return (encoders[r[1]](r) for r in rows)

    return encode_rows


def _converted(plain: _Encode, utf8: _Encode,
               converters: list[tuple[int, Callable[[object], object]]]) -> RowEncoder:
    encoders = (plain, utf8)

    def encode_rows(rows: Iterable[Row]) -> Iterator[bytes]:
        for r in rows:
            values = list(r)
            for i, fn in converters:
                values[i] = fn(values[i])
            yield encoders[r[1]](values)

    return encode_rows


def _seq_converter(attr: Attr, request: Any) -> Callable[[object], object]:
    value = request.value if request is not None else None

    def convert(raw: object) -> object:
        return response_value(attr, raw, value)

    return convert
