"""C.2.2.2 matching translated to SQL: each kind, against SQLite and a reference matcher."""

from __future__ import annotations

import re
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from dimse.matching import (
    ATTRIBUTES,
    Kind,
    date_norm,
    datetime_bounds,
    fold_pn,
    match,
    match_datetime_pair,
    register_functions,
    time_bounds,
)


def run(kind: Kind, vr: str, stored: str | int | None, key: object) -> bool:
    """Does ``stored`` match ``key``? Evaluated by SQLite on a one-row table."""
    db = sqlite3.connect(":memory:")
    register_functions(db)
    db.execute("CREATE TABLE t (c)")
    value = stored
    if kind is Kind.PN and isinstance(stored, str):
        value = fold_pn(stored)
    elif kind is Kind.TIME and isinstance(stored, str):
        value = time_bounds(stored)[0]
    elif kind is Kind.DATETIME and isinstance(stored, str):
        value = datetime_bounds(stored)[0]
    db.execute("INSERT INTO t VALUES (?)", (value,))
    cond = match(kind, vr, "c", key)
    if cond is None:
        return True
    sql, params = cond
    return db.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()[0] == 1


def test_normalisers() -> None:
    assert date_norm("2020.01.15") == "20200115"
    assert time_bounds("10") == ("100000.000000", "105959.999999")
    assert time_bounds("10:15:30.5") == ("101530.500000", "101530.599999")
    assert time_bounds("101530") == ("101530.000000", "101530.999999")
    assert datetime_bounds("2020") == ("20200101000000.000000", "20201231235959.999999")
    assert datetime_bounds("20200115101530+0100")[0] == "20200115091530.000000"  # UTC


def test_universal() -> None:
    assert match(Kind.STR, "LO", "c", "") is None
    assert match(Kind.STR, "LO", "c", None) is None
    assert match(Kind.STR, "LO", "c", "*") is None
    assert match(Kind.UID, "UI", "c", "*") is not None  # no wildcards on UI


def test_single_value_and_padding() -> None:
    assert run(Kind.STR, "LO", "ABC", " ABC ")
    assert not run(Kind.STR, "LO", "ABC", "abc")  # case-sensitive
    assert not run(Kind.STR, "LO", None, "ABC")  # empty entity never matches
    assert run(Kind.PN, "PN", "Doe^John", "DOE^JOHN")  # PN case-insensitive
    assert run(Kind.PN, "PN", "Müller^Jürgen", "müller^jürgen")
    assert run(Kind.INT, "IS", 3, "3") and not run(Kind.INT, "IS", 3, "4")
    assert not run(Kind.INT, "IS", 3, "x")


def test_wildcards() -> None:
    assert run(Kind.STR, "LO", "CT Chest", "CT*")
    assert run(Kind.STR, "LO", "CT Chest", "CT?Chest")
    assert not run(Kind.STR, "LO", "CT Chest", "ct*")
    assert not run(Kind.STR, "LO", "CT", "CT?")
    assert run(Kind.STR, "LO", "a[b]", "a[b*")  # GLOB class characters are literal
    assert run(Kind.PN, "PN", "Doe^John", "doe^j*")
    assert run(Kind.PN, "PN", "100%_x", "100%_*")  # LIKE specials are literal
    assert not run(Kind.PN, "PN", "100ab", "100%_*")
    assert not run(Kind.UID, "UI", "1.2.3", "1.2.*")  # UI: '*' is literal


def test_uid_list_and_multiple_values() -> None:
    assert run(Kind.UID, "UI", "1.2.3", "1.2.4\\1.2.3")
    assert run(Kind.UID, "UI", "1.2.3", ["1.2.4", "1.2.3"])
    assert not run(Kind.UID, "UI", "1.2.3", "1.2.4\\1.2.5")
    assert run(Kind.STR, "CS", "MR", ["CT", "MR"])
    assert run(Kind.STR, "CS", "MR", ["CT", "M?"])


def test_date_ranges() -> None:
    for key, expected in [("20200115", True), ("20200116", False), ("20200101-", True),
                          ("20200116-", False), ("-20200115", True), ("-20200114", False),
                          ("20200101-20200131", True), ("20200201-20200229", False),
                          ("2020.01.01-2020.01.31", True)]:
        assert run(Kind.DATE, "DA", "20200115", key) is expected, key
    assert not run(Kind.DATE, "DA", None, "-20201231")  # no value never matches a range


def test_time_ranges() -> None:
    for key, expected in [("1015", True), ("10", True), ("11", False), ("1000-1100", True),
                          ("1016-", False), ("-1015", True), ("-1014", False),
                          ("101530", True), ("10:00-10:20", True)]:
        assert run(Kind.TIME, "TM", "101530.25", key) is expected, key


def test_datetime_ranges() -> None:
    assert run(Kind.DATETIME, "DT", "20200115101530", "2020-")
    assert run(Kind.DATETIME, "DT", "20200115101530", "20200115-20200116")
    assert not run(Kind.DATETIME, "DT", "20200115101530", "202001151016-")
    assert run(Kind.DATETIME, "DT", "20200115101530", "20200115")


def test_combined_date_time_pair() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (d, tm)")
    rows = [("20200101", "230000"), ("20200102", "050000"), ("20200102", "120000"),
            ("20200101", "120000")]
    db.executemany("INSERT INTO t VALUES (?, ?)", [(d, time_bounds(t)[0]) for d, t in rows])
    cond = match_datetime_pair("d", "tm", "20200101-20200102", "2200-0600")
    assert cond is not None
    sql, params = cond
    got = db.execute(f"SELECT d, tm FROM t WHERE {sql} ORDER BY d, tm", params).fetchall()
    assert [(d, t[:6]) for d, t in got] == [("20200101", "230000"), ("20200102", "050000")]
    assert match_datetime_pair("d", "tm", "", "2200-0600") is None


def _reference(pattern: str, value: str, fold: bool) -> bool:
    if fold:
        pattern, value = fold_pn(pattern), fold_pn(value)
    if pattern == "*":
        return True
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.DOTALL) is not None


_TEXT = st.text(alphabet="ab%_[]^*?xÄä ", min_size=1, max_size=8).map(str.strip).filter(bool)


@settings(max_examples=300)
@given(pattern=_TEXT, value=_TEXT, pn=st.booleans())
def test_wildcards_agree_with_reference(pattern: str, value: str, pn: bool) -> None:
    kind, vr = (Kind.PN, "PN") if pn else (Kind.STR, "LO")
    assert run(kind, vr, value, pattern) is _reference(pattern, value, pn)


@given(value=st.text(min_size=1, max_size=20).filter(lambda v: "\\" not in v and v.strip()))
def test_values_are_parameters_never_sql(value: str) -> None:
    for kind, vr in [(Kind.STR, "LO"), (Kind.PN, "PN"), (Kind.UID, "UI"), (Kind.DATE, "DA"),
                     (Kind.TIME, "TM"), (Kind.INT, "IS")]:
        cond = match(kind, vr, "c", value)
        if cond is None:
            continue
        sql, _ = cond
        stripped = re.sub(r"\bc\b|\?|\b(instr|dicom_any|CASE|WHEN|THEN|ELSE|END)\b", "", sql)
        assert set(stripped) <= set(" =()<>,INOTLUKEGBSCAPWDRF'\\10"), sql


def test_attribute_table_is_consistent() -> None:
    for kw, attr in ATTRIBUTES.items():
        assert attr.keyword == kw
        assert attr.table in ("patient", "study", "series", "instance")
        assert attr.computed or attr.column
