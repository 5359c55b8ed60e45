"""Embedded archive: a folder of DICOM Part 10 files indexed in SQLite, with Q/R matching.

Tables patient -> study -> series -> instance hold the attributes of
:data:`dimse.matching.ATTRIBUTES`; counts, ModalitiesInStudy and SOPClassesInStudy are computed
by SQL. One connection per archive, guarded by a lock (``check_same_thread=False``) so that
the server may call it from worker threads (:meth:`Archive.run`). Query results stream in pages
(keyset pagination on the row id): the lock is never held while the caller consumes a match,
so an iterator may be advanced from any thread and interleaved with writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dimse.archive_db import IndexDatabaseError as IndexDatabaseError  # re-exported
from dimse.archive_db import open_index
from dimse.archive_db import path_from_db as _from_db
from dimse.archive_db import path_to_db as _to_db
from dimse.archive_files import HEADER_DEFER_SIZE as HEADER_DEFER_SIZE  # re-exported
from dimse.archive_files import ArchiveInUseError as ArchiveInUseError  # re-exported
from dimse.archive_files import (
    _elem,
    _files,
    _read,
    _read_entry,
    _text,
    _transfer_syntax,
    hold,
    read_header,
    refuse_if_held,
    release,
)
from dimse.archive_query import (
    ALIAS,
    PARENT,
    TABLES,
    FindEncodedResult,
    FindResult,
    Plan,
)
from dimse.matching import (
    ATTRIBUTES,
    Attr,
    Kind,
    date_norm,
    datetime_bounds,
    fold_pn,
    register_functions,
    strip_escapes,
    time_bounds,
)
from dimse.qr import Level, QueryModel

__all__ = ["Adopted", "Archive", "ArchiveInUseError", "Duplicate", "FindEncodedResult",
           "FindResult", "IndexDatabaseError", "IndexStats", "InstanceRecord", "read_header"]

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 256
#: Seconds after which an untouched temporary file is a crash leftover (see index()).
STALE_TEMP_AGE: Final = 3600.0
#: Seconds a file that ends before its bulk data must stay unchanged before :meth:`Archive.index`
#: takes it for complete (a copy into the folder may still be running; see index()).
SETTLE_TIME: Final = 5.0
_KEY_COLUMNS: Final = frozenset({"patient_id", "issuer", "study_uid", "series_uid", "sop_uid"})
_UID_OF: Final = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
                  "instance": "SOPInstanceUID"}
_UNSAFE: Final = re.compile(r"[^0-9A-Za-z._-]")

def _file_mode() -> int:
    mask = os.umask(0o022)  # read once, at import (single-threaded), and put back
    os.umask(mask)
    return 0o666 & ~mask


#: Mode of the files the archive writes: what open() would give (mkstemp gives 0600).
FILE_MODE: Final = _file_mode()

#: Bump when what the index stores changes without a change of its DDL (the version written to
#: ``PRAGMA user_version`` is derived from this and the DDL; see Archive._create_schema).
SCHEMA_REVISION: Final = 9  # 9: stamped as ours (application_id), its folder recorded
_META_DDL: Final = "CREATE TABLE IF NOT EXISTS archive_meta (key TEXT PRIMARY KEY, value TEXT)"
# A patient is (ID, issuer, name, birth date): two people sharing an ID stay apart. A series
# is keyed within its study (series UIDs reused across studies occur in the field).
_STRUCTURE: Final = {
    "patient": "id INTEGER PRIMARY KEY, patient_id TEXT NOT NULL, issuer TEXT NOT NULL, "
               "name_key TEXT NOT NULL DEFAULT '', birth_key TEXT NOT NULL DEFAULT ''",
    "study": "id INTEGER PRIMARY KEY, patient_ref INTEGER NOT NULL REFERENCES patient(id), "
             "study_uid TEXT NOT NULL UNIQUE",
    "series": "id INTEGER PRIMARY KEY, study_ref INTEGER NOT NULL REFERENCES study(id), "
              "series_uid TEXT NOT NULL",
    "instance": "id INTEGER PRIMARY KEY, series_ref INTEGER NOT NULL REFERENCES series(id), "
                "sop_uid TEXT NOT NULL UNIQUE, path TEXT NOT NULL UNIQUE, "
                "transfer_syntax TEXT, size INTEGER, mtime_ns INTEGER",
}
_PATIENT_KEY: Final = ("patient_id", "issuer", "name_key", "birth_key")
_EXTRA_DDL: Final = (
    "CREATE UNIQUE INDEX IF NOT EXISTS patient_key ON patient(patient_id, issuer, name_key, "
    "birth_key)",
    "CREATE INDEX IF NOT EXISTS study_parent ON study(patient_ref)",
    "CREATE UNIQUE INDEX IF NOT EXISTS series_key ON series(study_ref, series_uid)",
    "CREATE INDEX IF NOT EXISTS series_uid ON series(series_uid)",
    "CREATE INDEX IF NOT EXISTS instance_parent ON instance(series_ref)",
    "CREATE INDEX IF NOT EXISTS study_date ON study(study_date)",
    "CREATE INDEX IF NOT EXISTS patient_name ON patient(patient_name_f)",
    "CREATE INDEX IF NOT EXISTS study_accession ON study(accession)",
)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What C-MOVE/C-GET need to send one stored instance."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int


class Duplicate(Enum):
    """What :meth:`Archive.adopt` does with an instance whose SOP Instance UID is stored."""

    KEEP = "keep"  # the first instance stays; the new copy is dropped
    REPLACE = "replace"  # the new copy replaces the stored one (DCMTK storescp's default)


@dataclass(frozen=True, slots=True)
class Adopted:
    """Outcome of :meth:`Archive.adopt`: where the instance is, and whether it was known."""

    path: Path
    duplicate: bool


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Outcome of :meth:`Archive.index`: files added, re-read, dropped, unreadable, those
    skipped because another existing file holds their SOP Instance UID (logged as a warning),
    and those left for the next scan as they may still be being copied in (``settle``)."""

    added: int
    updated: int
    removed: int
    failed: tuple[Path, ...]
    duplicates: tuple[Path, ...] = ()
    pending: tuple[Path, ...] = ()
    #: Why each file of ``failed`` was not indexed (one line each).
    reasons: Mapping[Path, str] = field(default_factory=dict)


class _Unsettled(ValueError):
    """A file just modified that ends before its bulk data: maybe a copy still running."""


class _DuplicateFile(ValueError):
    """Another existing file is indexed with this file's SOP Instance UID."""

    def __init__(self, path: Path, indexed: Path) -> None:
        super().__init__(f"{path}: SOP Instance UID already stored in {indexed}")
        self.path, self.indexed = path, indexed


def _multi_value_indexes() -> list[str]:
    """A partial index per stored STR/PN/DA/TM/DT match column over its multi-valued rows
    (``\\`` in the value), which matching's exact and date/time keys look up apart (see
    dimse.matching): a query then visits those rows only, not the whole table."""
    out = []
    suffix = {Kind.PN: "_f", Kind.TIME: "_n", Kind.DATETIME: "_n"}
    for attr in ATTRIBUTES.values():
        if attr.computed or attr.kind not in (Kind.STR, Kind.PN, Kind.DATE, Kind.TIME,
                                              Kind.DATETIME):
            continue
        col = attr.column + suffix.get(attr.kind, "")
        out.append(f"CREATE INDEX IF NOT EXISTS {attr.table}_{col}_multi ON {attr.table}({col}) "
                   f"WHERE instr({col}, '\\') > 0")
    return out


def _columns(table: str) -> list[tuple[str, Attr]]:
    """(column, attr) of a table's stored attributes, with the derived _f/_n columns."""
    out: list[tuple[str, Attr]] = []
    for attr in ATTRIBUTES.values():
        if attr.table != table or attr.computed or attr.column in _KEY_COLUMNS:
            continue
        out.append((attr.column, attr))
        if attr.kind is Kind.PN:
            out.append((attr.column + "_f", attr))
        elif attr.kind in (Kind.TIME, Kind.DATETIME):
            out.append((attr.column + "_n", attr))
    return out



def _stored(ds: Dataset, column: str, attr: Attr) -> object:
    """The value to store in ``column`` for ``attr`` of ``ds``."""
    if attr.kind is Kind.SEQ:
        seq = _elem(ds, attr.keyword)
        if seq is None or seq.VR != "SQ" or not seq.value:
            return None
        items = [{k: strip_escapes(_text(item, k) or "") for k in attr.items}
                 for item in seq.value]
        return json.dumps(items, ensure_ascii=False)
    value = _text(ds, attr.keyword)
    if value is None:
        return None
    value = strip_escapes(value)
    if column.endswith("_f"):
        return fold_pn(value)
    if column.endswith("_n") and attr.kind is Kind.DATETIME:
        tz = _text(ds, "TimezoneOffsetFromUTC")
        return "\\".join(datetime_bounds(v, tz)[0] for v in value.split("\\"))
    if column.endswith("_n"):
        return "\\".join(time_bounds(v)[0] for v in value.split("\\"))
    if attr.kind is Kind.DATE:
        return "\\".join(date_norm(v) for v in value.split("\\"))  # each value on its own
    if attr.kind is Kind.INT:
        try:
            return int(value)
        except ValueError:
            return None
    return value


class _Scan:
    """Counters of one :meth:`Archive.index` run."""

    __slots__ = ("added", "duplicates", "failed", "known", "pending", "reasons", "seen",
                 "settle", "updated")

    def __init__(self, known: dict[str, tuple[int, int]], settle: float) -> None:
        self.known = known
        self.settle = settle
        self.added = self.updated = 0
        self.failed: list[Path] = []
        self.reasons: dict[Path, str] = {}
        self.pending: list[Path] = []
        self.seen: set[str] = set()
        self.duplicates: list[_DuplicateFile] = []

    def fail(self, path: Path, reason: str) -> None:
        self.failed.append(path)
        self.reasons[path] = reason.removeprefix(f"{path}: ")

    def retry(self) -> list[Path]:
        """The duplicates found so far, forgotten (to be tried once more)."""
        paths = [d.path for d in self.duplicates]
        self.duplicates = []
        return paths


_R = TypeVar("_R")


class Archive:
    """A folder of DICOM files indexed in SQLite (``<storage_dir>/.archive.sqlite`` default).

    One process at a time: the archive holds an exclusive flock on its folder and on
    ``<index>.lock`` (named after the index's real path, wherever it is) until :meth:`close`;
    another process gets :class:`ArchiveInUseError`, also for a folder inside or around an
    archive folder held by any process (folders must not nest: the outer one would index the
    inner one's files and remove its live temporary files). Archives of one process on the
    same folder share the lock, and the threading lock that orders their work; one made while
    the first one still removes crash leftovers waits for it. A forked child holds no lock.
    """

    def __init__(self, storage_dir: str | os.PathLike[str],
                 db_path: str | os.PathLike[str] | None = None) -> None:
        self.storage_dir = Path(storage_dir).resolve()
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path) if db_path is not None else \
            self.storage_dir / ".archive.sqlite"
        self._workers: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock_files: list[Path] = []
        #: Files seen with a change time in the future: (mtime_ns, ctime_ns, size), first seen.
        self._future: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._lock = self._hold()
        try:
            self._db = self._open_index()
        except BaseException:
            self._release()
            raise

    def _hold(self) -> threading.RLock:
        """Lock the folder and the index (``<its real path>.lock``, wherever it is) for this
        process, removing the temporary files of crashed stores when this process takes the
        folder (nothing else writes there then); the folder's shared threading lock."""
        locks = [(self.storage_dir, f"archive folder {self.storage_dir}", True)]
        if str(self.db_path) != ":memory:":
            locks.append((Path(os.path.realpath(self.db_path) + ".lock"),
                          f"archive index {self.db_path}", False))
        work: threading.RLock | None = None
        try:
            for path, what, folder in locks:
                taken = hold(path, what, folder=folder,
                             on_first=self._remove_orphans if folder else None)
                self._lock_files.append(path)
                work = work or taken
        except BaseException:
            self._release()
            raise
        assert work is not None
        return work

    def _remove_orphans(self) -> None:
        """Remove every temporary file (``.tmp-*``) in the folder, saying so in one line: this
        process has just locked the folder, so no store of ours or of another server is
        writing one; each is what a store cut short by a crash or kill left. A subfolder that
        another process holds as its archive folder: ArchiveInUseError (folders must not
        nest; that one's temporary files are live)."""
        count = size = 0
        what = f"archive folder {self.storage_dir}"
        for path in self._temp_files(lambda sub: refuse_if_held(sub, what)):
            count, size = _count_removed(path, count, size)
        if count:
            log.warning("removed %d temporary file%s (%d bytes) left in %s by stores that a "
                        "crash or kill cut short", count, "" if count == 1 else "s", size,
                        self.storage_dir)

    def _temp_files(self, on_dir: Callable[[Path], None] | None = None) -> Iterator[Path]:
        """The temporary files (``.tmp-*``) anywhere in the folder; ``on_dir`` sees each
        subfolder before it is entered."""
        for root, dirs, names in os.walk(self.storage_dir):
            if on_dir is not None:
                for name in dirs:
                    on_dir(Path(root, name))
            for name in names:
                if name.startswith(".tmp-"):
                    yield Path(root, name)

    def _release(self) -> None:
        files, self._lock_files = self._lock_files, []
        for path in files:
            release(path)

    async def run(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """``fn(*args, **kwargs)`` (blocking archive work) in the archive's own worker threads.

        Not asyncio's default pool: an application embedding the server may fill that pool
        with blocking clients of this very server, whose requests would then wait for workers
        that wait for them (every C-FIND timed out so in a soak run).
        """
        workers = self._workers
        if workers is None:
            if self._closed:  # a new pool now would never be shut down
                raise sqlite3.ProgrammingError(f"the archive {self.storage_dir} is closed")
            workers = self._workers = ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4),
                                                         thread_name_prefix="dimse-archive")
        future = workers.submit(fn, *args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Dropped by close() before it started, while the caller was not cancelled: fail
            # like work on the closed database (a performer must still answer its request).
            task = asyncio.current_task()
            if future.cancelled() and self._closed and (task is None or not task.cancelling()):
                raise sqlite3.ProgrammingError(
                    f"the archive {self.storage_dir} was closed before the work started"
                ) from None
            raise

    def close(self) -> None:
        """Close the database connection; work handed to :meth:`run` and not started is
        dropped (its caller gets :class:`sqlite3.ProgrammingError`; work under way fails on the
        closed connection, as it would in any thread), and :meth:`run` refuses new work."""
        self._closed = True
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._db.close()
        self._release()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_index(self) -> sqlite3.Connection:
        """The index, checked to be ours, whole and of this folder, with its tables (see
        :mod:`dimse.archive_db`: one of ours that is damaged or of another schema version is
        rebuilt by the next :meth:`index`, the files being the truth)."""
        ddl = [f"CREATE TABLE IF NOT EXISTS {table} ({_STRUCTURE[table]}, " +
               ", ".join(f"{c} {'INTEGER' if a.kind is Kind.INT else 'TEXT'}"
                         for c, a in _columns(table)) + ")" for table in TABLES]
        ddl.append(_META_DDL)
        ddl.extend(_EXTRA_DDL)
        ddl.extend(_multi_value_indexes())
        version = zlib.crc32(f"{SCHEMA_REVISION};{';'.join(ddl)}".encode()) & 0x7FFFFFFF or 1

        def prepare(db: sqlite3.Connection) -> None:
            register_functions(db)
            db.execute("PRAGMA foreign_keys = ON")

        with self._lock:
            return open_index(self.db_path, self.storage_dir, ddl, version, prepare)

    # -- indexing -------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        path = Path(path).resolve()
        try:
            return path.relative_to(self.storage_dir).as_posix()
        except ValueError:
            raise ValueError(f"{path} is outside the archive folder {self.storage_dir}") from None

    def add_file(self, path: str | os.PathLike[str]) -> None:
        """Index one regular file inside the folder (re-index if known). ValueError if it is
        not a composite instance with Study/Series/SOP Instance UIDs, or if another existing
        file is indexed with its SOP Instance UID (that one keeps its place)."""
        path = Path(path).resolve()
        self._add(path, self._relative(path), replace=False)

    def _add(self, path: Path, rel: str, *, replace: bool, settle: float = 0.0) -> None:
        ds, stat, unfinished = _read_entry(path)
        if unfinished and settle > 0:
            age = self._age(rel, stat)
            if age < settle:
                raise _Unsettled(f"{path}: changed {age:.1f} s ago (less than {settle:g} s) "
                                 "and ends before its pixel data or document: a copy still "
                                 "running?")
        with self._lock, self._db:
            self._index(ds, rel, stat, replace=replace)

    def _age(self, rel: str, stat: os.stat_result) -> float:
        """Seconds since the file ``rel`` last changed. A change time in the future (a clock
        ahead of ours: another host's, a zip's local times) counts as a change now, once
        per (mtime, ctime, size): such a file is not left pending until our clock catches
        up."""
        now = time.time()
        changed = max(stat.st_mtime, stat.st_ctime)
        if changed <= now:
            return now - changed
        key = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        with self._lock:
            seen = self._future.get(rel)
            if seen is None or seen[0] != key:
                seen = self._future[rel] = (key, now)
        return now - seen[1]

    def _index(self, ds: Dataset, rel: str, stat: os.stat_result, *, replace: bool) -> None:
        """Upsert the rows of ``ds`` stored at ``rel`` (lock and transaction held).
        ``replace``: ``rel`` becomes the instance's file even if another one exists."""
        self._upsert(ds, rel, _transfer_syntax(ds), stat.st_size, stat.st_mtime_ns,
                     replace=replace)
        self._prune()

    def stored_path(self, sop_instance_uid: str) -> Path | None:
        """Where the instance with this SOP Instance UID is stored, or None if not indexed."""
        with self._lock:
            row = self._db.execute("SELECT path FROM instance WHERE sop_uid = ?",
                                   (sop_instance_uid,)).fetchone()
        return None if row is None else self.storage_dir / _from_db(row[0])

    def counts(self) -> tuple[int, int]:
        """(studies, instances) indexed now."""
        with self._lock:
            row = self._db.execute("SELECT (SELECT count(*) FROM study), "
                                   "(SELECT count(*) FROM instance)").fetchone()
        return int(row[0]), int(row[1])

    def adopt(self, path: str | os.PathLike[str], dataset: Dataset | None = None, *,
              duplicate: Duplicate = Duplicate.KEEP) -> Adopted:
        """Move a complete Part 10 file (written and fsynced elsewhere in the archive folder,
        e.g. a received C-STORE) to ``<study>/<series>/<sop>.dcm`` and index it at once.

        ``dataset`` is the file's header if the caller already read it (see
        :func:`read_header`). If the SOP Instance UID is already stored (and its file exists),
        ``duplicate`` decides: KEEP removes ``path`` and leaves the stored instance untouched,
        REPLACE renames ``path`` over it. ValueError if the UIDs are missing; the source file
        is left in place on any error (the caller removes it).
        """
        source = Path(path)
        self._relative(source)
        ds = read_header(source) if dataset is None else dataset
        target = self._target(ds)
        target.parent.mkdir(parents=True, exist_ok=True)
        sop = str(_text(ds, "SOPInstanceUID"))
        with self._lock:  # the old file goes under the lock that placed the new one
            old = self.stored_path(sop)
            known = old is not None and old.exists()
            if known and duplicate is Duplicate.KEEP:
                assert old is not None
                source.unlink(missing_ok=True)
                return Adopted(old, True)
            self._place(ds, source, target, sop)
            _fsync_dir(target.parent)
            _unlink_replaced(old, target)
        return Adopted(target, known)

    def _place(self, ds: Dataset, source: Path, target: Path, sop: str,
               stat: os.stat_result | None = None) -> None:
        """Index ``source`` under ``target``'s name and move it there, in one transaction
        committed once the file is in place (lock held): no reader (another connection, a
        rescan) ever sees a row whose file is not there yet.

        If indexing fails (a full disk or database) nothing moved and the caller removes
        ``source``, so a failed store never reappears at the next :meth:`index`; if the move
        fails the rows are rolled back. If the commit itself fails the file is moved back
        (the caller removes it); a file it replaced (a REPLACE under the same name) is kept
        as a hard link (``.tmp-*.old``) until the commit and put back then, so the index and
        the file still agree on the old version (without hard links: the next :meth:`index`
        re-reads the new one).
        """
        rel, stat = self._relative(target), stat or source.stat()
        vacant, moved = not target.exists(), False
        backup = None if vacant else _backup(target)
        try:
            with self._db:  # rolled back on an error, committed once the file is there
                self._index(ds, rel, stat, replace=True)
                os.replace(source, target)  # keeps mtime and size, which the index holds
                moved = True
        except BaseException:
            if moved:  # the commit failed
                with contextlib.suppress(Exception):
                    self._db.rollback()
                with contextlib.suppress(OSError):
                    if vacant:
                        os.replace(target, source)
                    elif backup is not None:  # the old version back, in one rename
                        os.replace(backup, target)
                        backup = None
            raise
        finally:
            if backup is not None:
                backup.unlink(missing_ok=True)

    def _target(self, ds: Dataset) -> Path:
        """The final path of an instance: ``<study>/<series>/<sop>.dcm`` (ValueError if a UID
        is missing)."""
        uids = [_text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(uids):
            raise ValueError("an archived instance needs Study/Series/SOP Instance UIDs")
        study, series, sop = (_safe(str(u)) for u in uids)
        return self.storage_dir / study / series / (sop + ".dcm")

    def _upsert_row(self, table: str, key: tuple[str, ...], values: dict[str, object],
                    sop_uid: str) -> int:
        """Insert or update one row. An instance row takes its file's values as they are; a
        patient, study or series row is shared by many files, so a file lacking (or leaving
        empty) one of its attributes keeps the value another file gave it (the last non-empty
        one wins): a key object or presentation state added to a study does not blank its
        description or accession number. A row that no other instance than ``sop_uid`` (being
        indexed) shares takes the file's values as they are: no value outlives every file
        that had it."""
        cols = list(values)
        shared = table != "instance" and self._shared(table, key, values, sop_uid)
        setter = "{0} = COALESCE(excluded.{0}, {0})" if shared else "{0} = excluded.{0}"
        updates = ", ".join(setter.format(c) for c in cols if c not in key)
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates} RETURNING id")
        row = self._db.execute(sql, list(values.values())).fetchone()
        return int(row[0])

    def _shared(self, table: str, key: tuple[str, ...], values: dict[str, object],
                sop_uid: str) -> bool:
        """Whether the ``table`` row of ``key`` has an instance other than ``sop_uid``."""
        alias = ALIAS[table]
        where = " AND ".join(f"{alias}.{c} = ?" for c in key)
        joins = "instance i"
        for child in reversed(TABLES[TABLES.index(table) + 1:]):
            col, parent = PARENT[child]
            joins += f" JOIN {parent} {ALIAS[parent]} ON {ALIAS[child]}.{col} = " \
                     f"{ALIAS[parent]}.id"
        row = self._db.execute(f"SELECT 1 FROM {joins} WHERE {where} AND i.sop_uid <> ? "
                               "LIMIT 1", [*(values[c] for c in key), sop_uid]).fetchone()
        return row is not None

    def _upsert(self, ds: Dataset, rel: str, ts: str, size: int, mtime_ns: int, *,
                replace: bool = True) -> None:
        rows = _rows(ds)  # every value first: a file that fails leaves the tables untouched
        if not replace:
            row = self._db.execute("SELECT path FROM instance WHERE sop_uid = ?",
                                   (rows[-1][1]["sop_uid"],)).fetchone()
            indexed = None if row is None else _from_db(row[0])
            if indexed is not None and indexed != rel and (self.storage_dir / indexed).is_file():
                raise _DuplicateFile(self.storage_dir / rel, self.storage_dir / indexed)
        rows[-1][1].update(path=_to_db(rel), transfer_syntax=ts, size=size, mtime_ns=mtime_ns)
        ref: int | None = None
        for table, values in rows:
            if table == "patient":
                key: tuple[str, ...] = _PATIENT_KEY
            else:
                values[PARENT[table][0]] = ref
                key = (PARENT[table][0], "series_uid") if table == "series" else \
                    (ATTRIBUTES[_UID_OF[table]].column,)
            if table == "instance":
                self._db.execute("DELETE FROM instance WHERE path = ? AND sop_uid <> ?",
                                 (_to_db(rel), values["sop_uid"]))
            ref = self._upsert_row(table, key, values, str(rows[-1][1]["sop_uid"]))

    def _prune(self) -> None:
        """Drop series/studies/patients left without instances."""
        self._db.execute("DELETE FROM series WHERE NOT EXISTS "
                         "(SELECT 1 FROM instance WHERE series_ref = series.id)")
        self._db.execute("DELETE FROM study WHERE NOT EXISTS "
                         "(SELECT 1 FROM series WHERE study_ref = study.id)")
        self._db.execute("DELETE FROM patient WHERE NOT EXISTS "
                         "(SELECT 1 FROM study WHERE patient_ref = patient.id)")

    def index(self, *, settle: float = SETTLE_TIME) -> IndexStats:
        """Scan the folder: (re)index new and changed regular files (by mtime and size), drop
        the entries of removed files. Special files and symlinks are never opened: a symlink
        to a file of the folder is left to that file; others, and unreadable files, fail.

        An indexed instance whose file still exists keeps its place: another file with its
        SOP Instance UID is skipped (one warning naming both), so restarts are stable.

        A file changed less than ``settle`` seconds ago that ends before the bulk data its
        header announces (an image without Pixel Data...) is left for the next scan
        (``pending``; an indexed one keeps its row meanwhile): a copy into the folder cut
        between two elements reads as a valid, shorter data set (``settle=0``: none is; a
        change time in the future, another clock's, counts as a change when first seen).
        Files the archive stores itself are indexed as they are placed, whole."""
        with self._lock:
            known = {_from_db(p): (m, s) for p, m, s in
                     self._db.execute("SELECT path, mtime_ns, size FROM instance")}
        scan = _Scan(known, settle)
        files = list(_files(self.storage_dir, self.db_path))
        # Rows of files gone from disk go first: a file indexed next with their UIDs then
        # finds no stale instance sharing its study (see _upsert_row).
        on_disk = {p.relative_to(self.storage_dir).as_posix() for p, _ in files}
        vanished = [(_to_db(p),) for p in known if p not in on_disk]
        if vanished:
            with self._lock, self._db:
                self._db.executemany("DELETE FROM instance WHERE path = ?", vanished)
                self._prune()
        for path, stat in files:
            if isinstance(stat, str):
                scan.fail(path, stat)
                continue
            rel = path.relative_to(self.storage_dir).as_posix()
            if known.get(rel) == (stat.st_mtime_ns, stat.st_size):
                scan.seen.add(rel)
            else:
                self._scan_file(scan, path, rel)
        for path in scan.retry():  # their twin may have changed or gone later in the scan
            self._scan_file(scan, path, path.relative_to(self.storage_dir).as_posix())
        for dup in scan.duplicates:
            log.warning("not indexed: %s", dup)
        for path in scan.pending:
            log.info("not indexed yet: %s changed less than %g s ago and ends before its "
                     "pixel data or document (a copy still running?); next scan retries",
                     path, settle)
        pending = {p.relative_to(self.storage_dir).as_posix() for p in scan.pending}
        with self._lock:
            self._future = {r: v for r, v in self._future.items() if r in pending}
        self.remove_stale_temp()
        gone = [p for p in known if p not in scan.seen]
        with self._lock, self._db:
            self._db.executemany("DELETE FROM instance WHERE path = ?",
                                 [(_to_db(p),) for p in gone])
            self._prune()
        return IndexStats(scan.added, scan.updated, len(gone), tuple(scan.failed),
                          tuple(d.path for d in scan.duplicates), tuple(scan.pending),
                          scan.reasons)

    def _scan_file(self, scan: _Scan, path: Path, rel: str) -> None:
        """Index one new or changed file of :meth:`index`, counting the outcome in ``scan``."""
        try:
            self._add(path, rel, replace=False, settle=scan.settle)
        except _DuplicateFile as dup:
            scan.duplicates.append(dup)
            return
        except _Unsettled:
            scan.pending.append(path)
            if rel in scan.known:
                scan.seen.add(rel)  # its row stays until the file is whole again
            return
        except (ValueError, OSError) as exc:
            log.info("not indexed: %s", exc)
            scan.fail(path, str(exc))
            return
        scan.seen.add(rel)
        if rel in scan.known:
            scan.updated += 1
        else:
            scan.added += 1

    def remove_stale_temp(self, max_age: float = STALE_TEMP_AGE) -> list[Path]:
        """Delete the temporary files (``.tmp-*``) of writes that a crash interrupted: those
        untouched for ``max_age`` seconds (a live transfer keeps its file's mtime fresh).
        One warning says how many (those found when the archive opened are gone already)."""
        now, removed, size = time.time(), [], 0
        for path in self._temp_files():
            with contextlib.suppress(OSError):
                stat = path.lstat()
                if now - stat.st_mtime > max_age:
                    path.unlink()
                    removed.append(path)
                    size += stat.st_size
        if removed:
            log.warning("removed %d temporary file%s (%d bytes) untouched for over %g s in %s",
                        len(removed), "" if len(removed) == 1 else "s", size, max_age,
                        self.storage_dir)
        return removed

    def remove(self, path: str | os.PathLike[str], *, delete_file: bool = True) -> bool:
        """Drop a file from the index (and from disk); False if it was not indexed."""
        rel = self._relative(Path(path))
        with self._lock, self._db:
            gone = self._db.execute("DELETE FROM instance WHERE path = ?",
                                    (_to_db(rel),)).rowcount
            self._prune()
        if delete_file:
            Path(path).unlink(missing_ok=True)
        return gone > 0

    def store(self, ds: Dataset, *, transfer_syntax: str | None = None) -> Path:
        """Write ``ds`` as a Part 10 file named from its UIDs and index it.

        The file is written to a temporary name in the target folder, flushed to disk and then
        renamed, so a crash never leaves a partial file under the final name.
        """
        uids = [_text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                       "SOPInstanceUID", "SOPClassUID")]
        if not all(uids):
            raise ValueError("store() needs Study/Series/SOP Instance UID and SOP Class UID")
        study, series, sop, sop_class = (str(u) for u in uids)
        folder = self.storage_dir / _safe(study) / _safe(series)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (_safe(sop) + ".dcm")
        out = copy.copy(ds)
        meta = FileMetaDataset(getattr(ds, "file_meta", FileMetaDataset()))
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = UID(transfer_syntax or meta.get("TransferSyntaxUID") or
                                     ExplicitVRLittleEndian)
        out.file_meta = meta
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=folder)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                pydicom.dcmwrite(fh, out, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            written, stat = _read(Path(tmp), own=True)
            with self._lock:  # see adopt(): where the instance was, and its removal
                old = self.stored_path(sop)
                self._place(written, Path(tmp), target, sop, stat)
                _unlink_replaced(old, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    # -- queries --------------------------------------------------------------------------

    def find(self, identifier: Dataset, model: QueryModel, level: Level, *,
             datetime_matching: bool = False) -> Iterator[Dataset]:
        """Stream one response identifier per matching entity at ``level``."""
        return self.find_with_status(identifier, model, level,
                                     datetime_matching=datetime_matching).matches

    def find_with_status(self, identifier: Dataset, model: QueryModel, level: Level, *,
                         datetime_matching: bool = False) -> FindResult:
        """Like :meth:`find`, also telling which requested keys are not indexed."""
        plan = Plan(identifier, model, level, datetime_matching)
        rows = self._pages(plan, plan.select_sql())
        return FindResult((plan.response(row) for row in rows), plan.unsupported)

    def find_encoded(self, identifier: Dataset, model: QueryModel, level: Level,
                     transfer_syntax_uid: str, *,
                     datetime_matching: bool = False) -> FindEncodedResult:
        """Like :meth:`find_with_status`, but each match is the encoded response identifier
        (``dimse.codec.encode`` of the Dataset :meth:`find` yields, byte for byte), made by a
        template compiled once per query from the SQL row values. Streams in pages."""
        plan = Plan(identifier, model, level, datetime_matching)
        sql, encode_rows, templated = plan.encoder(transfer_syntax_uid)
        return FindEncodedResult(encode_rows(self._pages(plan, sql)), plan.unsupported,
                                 transfer_syntax_uid, templated)

    def instances(self, identifier: Dataset, model: QueryModel,
                  level: Level) -> Iterator[InstanceRecord]:
        """Every stored instance at and below the entities the identifier selects."""
        plan = Plan(identifier, model, level, False, table="instance")
        sql = plan.from_where("i.path, i.sop_class, i.sop_uid, i.transfer_syntax, i.size")
        for row in self._pages(plan, sql):
            yield InstanceRecord(self.storage_dir / _from_db(row[1]), row[2] or "", row[3],
                                 row[4] or "",
                                 row[5] or 0)

    def _pages(self, plan: Plan, sql: tuple[str, list[object]]) -> Iterator[tuple[Any, ...]]:
        """Run ``sql`` page by page (id > last id), holding the lock only per page."""
        text, params = sql
        alias = ALIAS[plan.table]
        paged = f"{text} AND {alias}.id > ? ORDER BY {alias}.id LIMIT {PAGE_SIZE}"
        last = -1
        while True:
            with self._lock:
                cur = self._db.execute(paged, [*params, last])
                rows = cur.fetchmany(PAGE_SIZE)
                cur.close()
            yield from rows
            if len(rows) < PAGE_SIZE:
                return
            last = int(rows[-1][0])


def _rows(ds: Dataset) -> list[tuple[str, dict[str, object]]]:
    """(table, column values) of ``ds`` from patient down to instance, keys first.

    ValueError if a value cannot be read (a forced read may hold undecodable elements)."""
    try:
        name = strip_escapes(_text(ds, "PatientName") or "")
        birth = _text(ds, "PatientBirthDate") or ""
        out: list[tuple[str, dict[str, object]]] = [("patient", {
            "patient_id": _text(ds, "PatientID") or "",
            "issuer": _text(ds, "IssuerOfPatientID") or "",
            # PN trailing empty components are not significant ("DOE^JOHN^^" = "DOE^JOHN")
            "name_key": "=".join(g.rstrip("^ ") for g in name.split("=")).rstrip("="),
            "birth_key": birth})]
        for table in TABLES[1:]:
            out.append((table, {ATTRIBUTES[_UID_OF[table]].column: _text(ds, _UID_OF[table])}))
        for table, values in out:
            values.update((c, _stored(ds, c, a)) for c, a in _columns(table))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"unreadable value: {exc}") from exc
    return out



def _count_removed(path: Path, count: int, size: int) -> tuple[int, int]:
    """(files, bytes) removed so far, ``path`` included if it could be removed."""
    try:
        stat = path.lstat()
        path.unlink()
    except OSError:
        return count, size
    return count + 1, size + stat.st_size


def _unlink_replaced(old: Path | None, target: Path) -> None:
    """Remove the file an instance was stored in before it moved to ``target`` (another
    Study/Series UID). Called under the archive lock that placed ``target``: released first,
    a concurrent store of the same SOP Instance could have placed its file at ``old`` in
    between, and this would delete it while the index names it."""
    if old is not None and old != target:
        old.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A hard link to ``target`` under a temporary name (removed at the next start if a
    crash leaves it), or None where none can be made."""
    backup = target.with_name(f".tmp-{uuid.uuid4().hex}.old")
    try:
        os.link(target, backup)
    except OSError:
        return None
    return backup


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(uid: str) -> str:
    """A file-name-safe form of a UID (anything odd replaced; never empty, '.' or '..')."""
    name = _UNSAFE.sub("_", uid.strip())[:120]
    return name if name.strip(".") else "_"
