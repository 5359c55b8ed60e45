"""Reading the files of an :class:`~dimse.archive.Archive`: walking its folder and reading
a file's header without following symlinks or blocking on special files; the lock that keeps
a second process (a second server) off an archive folder and its index.

A file without preamble or File Meta is read as found but kept only when it is clearly a
composite instance (well-formed UIDs, a known transfer syntax). A file cut short or malformed
(see :mod:`dimse.structure_check`) is not kept, though pydicom reads it up to where it breaks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import stat as st_mode
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pdu.errors import DicomError

from ._vr import LONG_VRS
from .structure_check import structure_problem
from .syntax_check import checked_encoding

__all__ = ["HEADER_DEFER_SIZE", "ArchiveInUseError", "read_header"]

#: The archive's logger: files left out of the index are reported where they always were.
log = logging.getLogger("dimse.archive")

#: Values longer than this are not read when indexing a file (they stay on disk).
HEADER_DEFER_SIZE: Final = 1 << 20
_UID_SYNTAX: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
#: Groups a data set read without preamble may start with: File Meta or the first composite
#: group (SOP Common lives in 0008); anything else is not a stored instance.
_FIRST_GROUPS: Final = frozenset({0x0002, 0x0008})
#: (implicit VR, little endian) of a data set read without File Meta -> its transfer syntax.
_ENCODINGS: Final = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
                     (False, False): ExplicitVRBigEndian}
_META_LONG_VRS: Final = frozenset(vr.encode("ascii") for vr in LONG_VRS)
#: Transfer syntaxes whose files hold no Pixel Data (JPIP: referenced pixels) or are read from an
#: inflated copy (so where pydicom stopped is no file offset).
_NO_BULK_CHECK: Final = frozenset({DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.4.94",
                                   "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.204",
                                   "1.2.840.10008.1.2.4.205"})
_ROWS: Final = 0x00280010
_DOCUMENT: Final = 0x00420011  # Encapsulated Document
_ENCAPSULATED_DOCUMENT: Final = "1.2.840.10008.5.1.4.1.1.104."
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")


def _elem(ds: Dataset, keyword: str) -> DataElement | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None or tag not in ds else ds[tag]


def _text(ds: Dataset, keyword: str) -> str | None:
    elem = _elem(ds, keyword)
    if elem is None or elem.is_empty:
        return None
    if elem.VM > 1:
        return "\\".join(str(v).strip(" \0") for v in elem.value)
    return str(elem.value).strip(" \0")


def _files(storage_dir: Path, db_path: Path) -> Iterator[tuple[Path, os.stat_result | str]]:
    """Each entry of the folder to index, sorted, with its ``lstat``; for one that cannot be
    indexed (special file, symlink that dangles, loops, leaves the folder or names no regular
    file), why. Symlinked folders are not entered."""
    suffixes = ("", "-wal", "-shm", "-journal", ".lock")
    skip = {(db.parent, db.name + suffix) for db in (db_path, Path(os.path.realpath(db_path)))
            for suffix in suffixes}
    damaged = {(db.parent, db.name + ".damaged-") for db in (db_path,
                                                            Path(os.path.realpath(db_path)))}
    for root, dirs, files in os.walk(storage_dir):
        dirs.sort()
        here = Path(root)
        aside = tuple(prefix for folder, prefix in damaged if folder == here)
        for name in sorted(files):
            if name.startswith(".tmp-") or (here, name) in skip:
                continue
            if aside and name.startswith(aside):
                continue  # an index moved aside as damaged (archive_db)
            path = here / name
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                log.info("not indexed: %s: %s", path, exc)
                yield path, str(exc)
                continue
            if st_mode.S_ISREG(stat.st_mode):
                yield path, stat
            elif not (st_mode.S_ISLNK(stat.st_mode) and _link_inside(path, storage_dir)):
                log.info("not indexed: %s: not a regular file of the folder", path)
                yield path, "not a regular file of the folder"


def _link_inside(link: Path, storage_dir: Path) -> bool:
    """Whether a symlink resolves to a regular file inside the folder (indexed under its
    own name, so the link is skipped)."""
    try:
        target = Path(os.path.realpath(link, strict=True))
        return st_mode.S_ISREG(os.stat(target).st_mode) and \
            target.is_relative_to(storage_dir)
    except (OSError, RuntimeError):
        return False


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """The data set of a DICOM file up to its pixel data, large values left unread.

    ValueError if it is not a regular file of readable DICOM with Study/Series/SOP Instance
    UIDs (see :func:`_read`).
    """
    return _read(Path(path))[0]


def _open_flags(name: str, flags: int) -> int:
    """``open`` opener: never follow a final symlink, never block (a FIFO would)."""
    return os.open(name, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))


def _read(path: Path, *, own: bool = False) -> tuple[Dataset, os.stat_result]:
    """Header and ``fstat`` of the regular file ``path`` (see :func:`_read_entry`)."""
    ds, stat, _unfinished = _read_entry(path, own=own)
    return ds, stat


def _read_entry(path: Path, *, own: bool = False) -> tuple[Dataset, os.stat_result, bool]:
    """Header and ``fstat`` of the regular file ``path`` (anything else is not read), and
    whether it looks unfinished (see :func:`_lacks_bulk_data`).

    A file without preamble and ``DICM`` prefix, or a bare data set without File Meta
    Information, is read as found (DCMTK's dcmqridx registers those too), but kept only when it
    is clearly a composite instance: its four identifying UIDs present and well formed, and a
    transfer syntax known (from its File Meta, else from the encoding pydicom recognised).

    An OSError once the file is open (an I/O error) is raised as it is; one at the open too
    when ``own`` (a file the archive just wrote: a failure there is a lack of resources, not a
    file it cannot index), else it is a ValueError.
    """
    try:
        fh = open(path, "rb", opener=_open_flags)
    except OSError as exc:
        if own:
            raise
        raise ValueError(f"{path}: cannot open: {exc}") from exc
    with fh:
        stat = os.fstat(fh.fileno())
        if not st_mode.S_ISREG(stat.st_mode):
            raise ValueError(f"{path}: not a regular file")
        strict = False
        try:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, defer_size=HEADER_DEFER_SIZE)
            except InvalidDicomError:
                strict = _forced_candidate(fh)
                if not strict:
                    raise
                ds = pydicom.dcmread(fh, stop_before_pixels=True, defer_size=HEADER_DEFER_SIZE,
                                     force=True)
            unfinished = _lacks_bulk_data(ds, fh.tell(), stat.st_size)
            _check(ds, path, strict)
            _check_structure(fh, stat.st_size, ds)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        except OSError:
            raise
        except Exception as exc:
            raise ValueError(f"{path}: not a readable DICOM file: {exc}") from exc
    return ds, stat, unfinished


def _lacks_bulk_data(ds: Dataset, end: int, size: int) -> bool:
    """Whether a file read up to its pixel data (``end``: where pydicom stopped, ``size``
    bytes in all) ends before the bulk data its header announces: an image without Pixel
    Data, an encapsulated document without its document. Such a file is what a copy still
    running looks like when it is cut between two elements (a cut inside a value fails the
    structure check); see Archive.index's ``settle``."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")).strip(" \0") if meta is not None else ""
    if ts in _NO_BULK_CHECK:
        return False
    if _ROWS in ds and end >= size:  # pydicom stops before (7FE0,00xx), else reads to the end
        return True
    sop_class = _text(ds, "SOPClassUID") or ""
    return sop_class.startswith(_ENCAPSULATED_DOCUMENT) and _DOCUMENT not in ds


def _check_structure(fh: Any, size: int, ds: Dataset) -> None:
    """ValueError when the file's data set is cut short or malformed (a value running past the
    end of the file, pixel data missing its last bytes, a sequence without its delimiter):
    pydicom reads such a file up to where it breaks, and the archive would serve it. The same
    header walk as a received C-STORE gets (:mod:`dimse.structure_check`), in the encoding
    pydicom actually read the body with."""
    encoding = _read_encoding(ds)
    if encoding is None or size == 0:
        return
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
        start = _data_set_start(view)
        with view[start:] as body:
            reason = structure_problem(body, *encoding)
    if reason is not None:
        raise ValueError(f"cut short or malformed: {reason} (data set from byte {start})")


def _read_encoding(ds: Dataset) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) the body was read with: its first raw element's (pydicom
    falls back to the other VR form when the declared one does not parse), else the transfer
    syntax's; None when the body is not walked (deflated, unknown syntax)."""
    expected = checked_encoding(_transfer_syntax(ds))
    if expected is None:
        return None
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            return bool(elem.is_implicit_VR), bool(elem.is_little_endian)
    return expected


def _data_set_start(view: memoryview) -> int:
    """Offset of the data set in a file: after the preamble, ``DICM`` and the File Meta
    elements (group 0002, Explicit VR Little Endian), walked by their lengths."""
    pos = 132 if view[128:132] == b"DICM" else 0
    while pos + 8 <= len(view) and _U16.unpack_from(view, pos)[0] == 0x0002:
        if bytes(view[pos + 4:pos + 6]) in _META_LONG_VRS and pos + 12 <= len(view):
            pos += 12 + _U32.unpack_from(view, pos + 8)[0]
        else:
            pos += 8 + _U16.unpack_from(view, pos + 6)[0]
    return pos


def _forced_candidate(fh: Any) -> bool:
    """Whether a file without ``DICM`` starts like a data set (first tag group 0002 or 0008,
    either byte order); the file is left at its start."""
    fh.seek(0)
    head = fh.read(4)
    fh.seek(0)
    return len(head) == 4 and (int.from_bytes(head[:2], "little") in _FIRST_GROUPS or
                               int.from_bytes(head[:2], "big") in _FIRST_GROUPS)


def _check(ds: Dataset, path: Path, strict: bool) -> None:
    """ValueError unless ``ds`` has the UIDs an archived instance needs; ``strict`` (read
    without preamble): also SOP Class UID, UID syntax and a known transfer syntax."""
    keys = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
    for kw in keys if strict else keys[:3]:
        value = _text(ds, kw)
        if not value:
            raise ValueError(f"no {kw}")
        if strict and (len(value) > 64 or not _UID_SYNTAX.fullmatch(value)):
            raise ValueError(f"{kw} is not a UID")
    if strict and not _transfer_syntax(ds):
        raise ValueError("unknown transfer syntax")


def _transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax of the file ``ds`` was read from: its File Meta's, else the encoding
    pydicom recognised (empty if none is a transfer syntax)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")).strip(" \0") if meta is not None else ""
    if ts:
        return ts
    return str(_ENCODINGS.get(tuple(ds.original_encoding), ""))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- process lock


class ArchiveInUseError(DicomError):
    """Another process holds the archive folder or its index: two servers on one archive
    would each drop the other's rows and temporary files. ``lock`` is the folder or lock
    file, ``pid`` the holder's process id as it wrote it (0 if unknown). ``nested``: the
    archive folder asked for lies inside or around ``lock``, an archive folder held by
    this process or another one (the outer archive would index and clean up the inner one's
    files)."""

    def __init__(self, what: str, lock: Path, pid: int, *, nested: bool = False) -> None:
        self.lock, self.pid, self.nested = lock, pid, nested
        by = f"process {pid}" if pid else "another process"
        if nested:
            super().__init__(f"the {what} is inside or around the archive folder {lock}, in "
                             f"use by {by}: archive folders must not nest")
            return
        lock_file = "" if os.path.isdir(lock) else f" (lock file {lock})"
        super().__init__(f"the {what} is in use by {by}{lock_file}: one server per archive "
                         "folder and index")


@dataclass(slots=True)
class _Held:
    """A lock file held by this process: its descriptor (None: could not be locked, e.g. a
    read-only folder), the archives sharing it, the lock they share for their work, and
    whether it is an archive folder (those must not nest)."""

    fd: int | None
    users: int
    work_lock: threading.RLock
    folder: bool


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def hold(lock: Path, what: str, *, folder: bool = False,
         on_first: Callable[[], None] | None = None) -> threading.RLock:
    """Take the exclusive lock on ``lock`` (a folder, locked itself; else a lock file, made
    if needed) for this process, or share it with the archives of this process that hold it
    already. Returns the threading lock those archives share (so that they never race each
    other either). ArchiveInUseError if another process holds it; :func:`release` when done.

    ``folder``: an archive folder inside or around one held by this or another process is
    refused too. ``on_first`` runs once the file lock is taken by this call (nothing else can
    be writing in the folder then: Archive's temporary-file cleanup), before any other
    archive of this process can share it (it runs under the process-wide guard); if it
    raises, the lock is given back."""
    key = os.path.realpath(lock)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.users += 1
            return held.work_lock
        if folder:
            _refuse_nested_here(key, what)
        fd = _lock_file(lock, what)
        try:
            if folder and fd is not None:
                for parent in Path(key).parents:
                    refuse_if_held(parent, what)
            if on_first is not None and fd is not None:
                on_first()
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        held = _HELD[key] = _Held(fd, 1, threading.RLock(), folder)
        return held.work_lock


def _refuse_nested_here(key: str, what: str) -> None:
    """ArchiveInUseError if an archive folder of this process lies inside or around ``key``."""
    for other, held in _HELD.items():
        if held.folder and (key.startswith(other.rstrip("/") + "/") or
                            other.startswith(key.rstrip("/") + "/")):
            raise ArchiveInUseError(what, Path(other), os.getpid(), nested=True)


def refuse_if_held(folder: Path, what: str) -> None:
    """ArchiveInUseError (nested) if another process holds the archive folder ``folder``
    (tested with a shared flock taken and given back at once; a symlink or a folder that
    cannot be opened counts as free)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC |
                     getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ArchiveInUseError(what, folder, 0, nested=True) from None
    finally:
        os.close(fd)


def release(lock: Path) -> None:
    """Give back a lock taken by :func:`hold` (the file lock goes with its last user)."""
    key = os.path.realpath(lock)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del _HELD[key]
            if held.fd is not None:
                os.close(held.fd)  # releases the flock


def _forget_locks_in_child() -> None:
    """After fork(), in the child: it holds no archive (its copies of the descriptors are
    closed; the parent's keep the flocks), so an Archive it opens is refused while the
    parent holds the folder, and an idle child never keeps a folder locked after the
    parent closed it. The guard is new: another thread may have held it at the fork."""
    global _HELD_GUARD
    _HELD_GUARD = threading.Lock()
    for held in _HELD.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _lock_file(lock: Path, what: str) -> int | None:
    """An open descriptor of ``lock`` holding an exclusive flock (a lock file gets our pid
    written in); None where it cannot be created or locked (a read-only folder, a file
    system without flock: nothing can be stored there, or no lock can help)."""
    try:
        if os.path.isdir(lock):  # no file of ours among the archive's files
            fd = os.open(lock, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("%s: cannot create the lock file %s (%s): not locked", what, lock, exc)
            return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ArchiveInUseError(what, lock, pid) from None
        log.info("%s: cannot lock %s (%s): not locked", what, lock, exc)
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a folder, or opened read-only: the lock holds all the same
    return fd


def _holder(fd: int) -> int:
    """The pid written in a lock file (0 if none can be read)."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or 0)
    except (OSError, ValueError):
        return 0
