"""Opening the archive's index database: ours, of our schema, whole, and of this folder.

The index is a cache of the folder (the files are the truth), so an index of ours that is
damaged or of another schema revision is rebuilt from the files, saying so. What is not ours is
never touched: ``--db`` naming another application's database (SQLite or not) or the index of
another archive folder is refused in one line, because rebuilding would drop that
application's tables or that archive's rows.

Ours is recognised by ``PRAGMA application_id`` (stamped since schema revision 9) or, for an
index written before the stamp, by holding only our tables with their key columns.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from pdu.errors import DicomError

__all__ = ["APPLICATION_ID", "IndexDatabaseError", "open_index", "path_from_db", "path_to_db"]

log = logging.getLogger("dimse.archive")

#: ``PRAGMA application_id`` of our index: "DIMS".
APPLICATION_ID: Final = 0x44494D53
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
#: Our tables (before the stamp) and a column of each that no other schema is likely to share.
_SIGNATURES: Final = {
    "patient": {"patient_id", "issuer"},
    "study": {"study_uid"},
    "series": {"series_uid"},
    "instance": {"sop_uid", "path"},
    "archive_meta": {"key", "value"},
}
_FOLDER_KEY: Final = "folder"


class IndexDatabaseError(DicomError):
    """The index database cannot be used and is left as it is: it is not ours (another
    application's database, or no SQLite database at all), it belongs to another archive
    folder, or it is damaged and not known to be ours. ``path`` is the database file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class _Damaged(Exception):
    """The database failed SQLite's check or could not be read (internal)."""


def open_index(db_path: Path, storage_dir: Path, ddl: Sequence[str], version: int,
               prepare: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """The index connection, its schema created (version ``version``, made of ``ddl``), its
    folder recorded. ``prepare`` is applied to each connection made (functions, pragmas)."""
    memory = str(db_path) == ":memory:"
    db = None
    try:
        if not memory and not _is_sqlite(db_path):
            raise _Damaged("not an SQLite database")
        try:
            db = _connect(db_path, prepare)
        except sqlite3.DatabaseError as exc:
            raise _damaged(exc) from None
        state = _ownership(db, db_path)
        if state != "empty":
            problem = _integrity_check(db)
            if problem is not None:
                raise _Damaged(problem)
    except _Damaged as exc:
        if db is not None:
            db.close()
        db = _rebuild_damaged(db_path, storage_dir, str(exc), prepare)
        state = "empty"
    except BaseException:
        if db is not None:
            db.close()
        raise
    try:
        if not memory:
            db.execute("PRAGMA journal_mode = WAL")
            if state == "ours":
                _check_folder(db, db_path, storage_dir)
        _create(db, db_path, storage_dir, ddl, version, fresh=state == "empty")
    except BaseException:
        db.close()
        raise
    return db


def _connect(db_path: Path, prepare: Callable[[sqlite3.Connection], None]
             ) -> sqlite3.Connection:
    db = sqlite3.connect(db_path, check_same_thread=False)
    prepare(db)
    return db


def _is_sqlite(db_path: Path) -> bool:
    """False for a non-empty file that is no SQLite database at all (missing, empty or
    unreadable: True, and sqlite3 says why it cannot open one it cannot read)."""
    try:
        with open(db_path, "rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError:
        return True
    return not head or head == _SQLITE_HEADER


def _ownership(db: sqlite3.Connection, db_path: Path) -> str:
    """"empty", "ours" (stamped, or our four tables from before the stamp), else
    IndexDatabaseError; _Damaged when SQLite cannot read its own catalogue."""
    try:
        app_id, version = (db.execute(f"PRAGMA {p}").fetchone()[0]
                           for p in ("application_id", "user_version"))
        objects = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE "
                             "'sqlite_%'").fetchall()
        tables = [name for kind, name in objects if kind == "table"]
        columns = {t: {row[1] for row in db.execute(f'PRAGMA table_info("{t}")')}
                   for t in tables if t in _SIGNATURES}
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "decode" in str(exc):
            raise _Damaged(str(exc)) from None  # a name in the catalogue is not UTF-8
        raise _damaged(exc) from None
    except UnicodeDecodeError as exc:
        raise _Damaged(f"the catalogue holds a name that is not UTF-8: {exc}") from None
    if app_id == APPLICATION_ID:
        return "ours"
    if not objects and app_id == 0:
        return "empty"
    if app_id == 0 and version != 0 and _legacy(objects, columns):
        return "ours"  # written before the stamp
    what = f"application_id 0x{app_id:08X}" if app_id else \
        "tables " + ", ".join(sorted(tables) or [kind + " " + name for kind, name in objects])
    raise IndexDatabaseError(
        db_path, f"{db_path} is an SQLite database of another application ({what}), not an "
        "index of ours; it is left as it is: name another --db")


def _legacy(objects: list[tuple[str, str]], columns: dict[str, set[str]]) -> bool:
    """Whether a database without our stamp is an index we wrote before the stamp: our four
    tables, each with its key columns, and nothing but them and their indexes. (Any fewer
    and another application's ``instance`` table could pass for ours, and be dropped.)"""
    required = ("patient", "study", "series", "instance")
    if any(t not in columns or not _SIGNATURES[t] <= columns[t] for t in required):
        return False
    return all(kind == "index" or (kind == "table" and name in _SIGNATURES)
               for kind, name in objects)


def _damaged(exc: sqlite3.DatabaseError) -> BaseException:
    """``exc`` as :class:`_Damaged` when SQLite says the file is corrupt or no database; any
    other error (cannot open, read-only, locked) as it is."""
    if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _Damaged(str(exc))
    return exc


def _integrity_check(db: sqlite3.Connection) -> str | None:
    """SQLite's own check of the file: None when it is whole. The full check, not quick_check:
    a page of one index copied over another's passes quick_check, and a C-FIND through that
    index then answers Success with matches missing (about 0.2 s per 200,000 instances)."""
    try:
        rows = db.execute("PRAGMA integrity_check(5)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    except UnicodeDecodeError:  # its report names something whose bytes are damaged
        return "SQLite's integrity check reports damage in a name"
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else "; ".join(found)


def _rebuild_damaged(db_path: Path, storage_dir: Path, problem: str,
                     prepare: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """Move a damaged index aside (it may still help someone) and start an empty one. Only an
    index we can tell is ours: inside the archive folder, or named as ours by default."""
    if str(db_path) == ":memory:":  # pragma: no cover - a new memory database is never damaged
        raise IndexDatabaseError(db_path, f"in-memory index damaged: {problem}")
    inside = Path(os.path.realpath(db_path)).is_relative_to(storage_dir)
    if not inside and db_path.name != ".archive.sqlite":
        raise IndexDatabaseError(
            db_path, f"{db_path} is damaged ({problem}) and is not known to be an index of "
            "ours; it is left as it is: delete it to have the index rebuilt")
    aside = db_path.with_name(f"{db_path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db_path}{suffix}")
        if part.exists():
            os.replace(part, f"{aside}{suffix}")
    log.warning("index %s is damaged (%s): moved aside to %s; rebuilding it from the files in "
                "%s", db_path, problem, aside, storage_dir)
    return _connect(db_path, prepare)


def _check_folder(db: sqlite3.Connection, db_path: Path, storage_dir: Path) -> None:
    """IndexDatabaseError when an index kept outside the folder is another folder's: taking it
    over would delete that archive's rows. (One inside its folder goes with the folder when
    the folder is moved.)"""
    if Path(os.path.realpath(db_path)).is_relative_to(storage_dir):
        return
    try:
        row = db.execute("SELECT value FROM archive_meta WHERE key = ?",
                         (_FOLDER_KEY,)).fetchone()
    except sqlite3.OperationalError:
        return  # written before the folder was recorded
    recorded = None if row is None else path_from_db(row[0])
    if recorded is not None and recorded != str(storage_dir):
        raise IndexDatabaseError(
            db_path, f"{db_path} is the index of the archive folder {recorded}, not of "
            f"{storage_dir}; it is left as it is: name another --db (or delete it to have "
            "it rebuilt for this folder)")


def _create(db: sqlite3.Connection, db_path: Path, storage_dir: Path, ddl: Sequence[str],
            version: int, *, fresh: bool) -> None:
    """Create the tables; an index of ours of another schema revision is dropped (the files
    are the truth: the next :meth:`Archive.index` rebuilds it), saying so."""
    with db:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found != version:
            if not fresh:
                log.warning("index %s was written by another version of this software: "
                            "rebuilding it from the files in %s (the server listens once "
                            "this is done)", db_path, storage_dir)
            for table in reversed(list(_SIGNATURES)):
                db.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in ddl:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("INSERT OR REPLACE INTO archive_meta (key, value) VALUES (?, ?)",
                   (_FOLDER_KEY, path_to_db(str(storage_dir))))


def path_to_db(path: str) -> str | bytes:
    """A path as the index keeps it: text, or, for a name that is no UTF-8 (copied from an old
    Windows share or a zip: Linux names are bytes), its bytes, which SQLite keeps as a BLOB.
    :func:`path_from_db` gives the path back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def path_from_db(value: str | bytes) -> str:
    return value if isinstance(value, str) else os.fsdecode(value)
