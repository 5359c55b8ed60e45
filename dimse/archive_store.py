"""C-STORE into an :class:`~dimse.archive.Archive` without holding the instance in memory.

:class:`ArchiveSink` receives the data set fragment by fragment (small buffered writes on the
event loop) into a hidden temporary Part 10 file inside the archive folder: preamble, ``DICM``,
the File Meta Information built from the C-STORE-RQ and the presentation context, then the data
set bytes exactly as received (for Deflated Explicit VR Little Endian they already are the
deflated stream the file needs). :func:`archive_store_handler` then, in a worker thread, fsyncs
the file, reads its header back, checks it against the command, renames it atomically to
``<study>/<series>/<sop>.dcm`` and indexes it (:meth:`Archive.adopt`): a C-FIND right after the
response finds it. On abort or failure the temporary file is removed; nothing half-written is
ever indexed.

Statuses (PS3.4 Table B.2-1):

* 0xA700 (refused: out of resources): the file cannot be written, synced or renamed;
* 0xC000 (cannot understand): the data set cannot be read, lacks SOP Class/Instance UID, or is
  not encoded in its presentation context's transfer syntax (PS3.8 Annex E; checked on the first
  element headers by :mod:`dimse.syntax_check`, then against pydicom's reading of the file, so
  that pydicom's VR-guessing fallback cannot hide a mislabelled body);
* 0xA900 (data set does not match SOP class): its SOP Class UID or SOP Instance UID differs
  from the command's Affected SOP Class/Instance UID, or it lacks Study/Series Instance UID.
  A failure, not the B007 warning: a warning means "stored", and an archive must not store an
  instance under an identity other than the one the SCU was told (DCMTK storescp does the same);
* a SOP Instance UID already stored: :attr:`Duplicate.KEEP` (default) keeps the first instance,
  drops the new copy and answers 0x0000, as the SCU's goal (the archive holds the instance) is
  met and PS3.4 defines no duplicate status for C-STORE; :attr:`Duplicate.REPLACE` overwrites
  (DCMTK storescp's behaviour).

If the association is aborted while an instance that arrived whole is being placed, the placing
completes: the instance is kept (a resend is then a duplicate), never lost or half-indexed.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Final

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .archive import FILE_MODE, HEADER_DEFER_SIZE, Adopted, Archive, Duplicate
from .errors import ServiceError
from .file_sink import peer_and_own_titles
from .messages import CStoreRQ
from .services import (
    DataSetSink,
    ReceivedDataSet,
    RequestContext,
    SinkFactory,
    StoreHandler,
    file_meta_bytes,
)
from .structure_check import structure_problem
from .syntax_check import (
    HEAD_SIZE,
    checked_encoding,
    encoding_mismatch,
    is_encapsulated,
    is_native,
)

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATASET_MISMATCH",
    "STATUS_OUT_OF_RESOURCES",
    "ArchiveSink",
    "archive_sink_factory",
    "archive_store_handler",
    "check_encoding",
    "check_read_encoding",
    "check_identity",
]

log = logging.getLogger(__name__)

STATUS_OUT_OF_RESOURCES: Final = 0xA700
STATUS_DATASET_MISMATCH: Final = 0xA900
STATUS_CANNOT_UNDERSTAND: Final = 0xC000
#: Write buffer of a sink: each flush to the page cache stays short on the event loop.
WRITE_BUFFER: Final = 256 * 1024

_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_STUDY, _SERIES = 0x0020000D, 0x0020000E


def _value(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    return "" if elem is None or elem.value is None else str(elem.value).strip(" \0")


def check_identity(ds: Dataset, request: CStoreRQ) -> None:
    """ServiceError unless ``ds`` carries the UIDs of the command and those the archive needs."""
    for tag, name in ((_SOP_CLASS, "SOP Class UID"), (_SOP_INSTANCE, "SOP Instance UID")):
        if not _value(ds, tag):
            raise ServiceError(STATUS_CANNOT_UNDERSTAND, f"no {name} in the data set", (tag,))
    pairs = ((_SOP_CLASS, request.affected_sop_class_uid, "SOP Class UID"),
             (_SOP_INSTANCE, request.affected_sop_instance_uid, "SOP Instance UID"))
    for tag, expected, name in pairs:
        if _value(ds, tag) != expected.strip(" \0"):
            raise ServiceError(STATUS_DATASET_MISMATCH,
                               f"{name} differs from the command's"[:64], (tag,))
    for tag, name in ((_STUDY, "Study Instance UID"), (_SERIES, "Series Instance UID")):
        if not _value(ds, tag):
            raise ServiceError(STATUS_DATASET_MISMATCH, f"no {name} in the data set", (tag,))


def check_encoding(head: bytes | bytearray | memoryview, transfer_syntax: str, size: int) -> None:
    """ServiceError 0xC000 when the data set starting with ``head`` (``size`` bytes in all) is
    clearly not encoded in ``transfer_syntax`` (see :func:`encoding_mismatch`)."""
    reason = encoding_mismatch(head, transfer_syntax, size)
    if reason is not None:
        raise ServiceError(STATUS_CANNOT_UNDERSTAND, reason[:64])


def check_structure(path: Path, offset: int, size: int, transfer_syntax: str) -> None:
    """ServiceError 0xC000 when the data set of ``size`` bytes at ``offset`` in ``path`` is cut
    short or malformed (see :func:`dimse.structure_check.structure_problem`; in an encapsulated
    syntax, native Pixel Data too, and in a native syntax encapsulated Pixel Data, PS3.5 A.4): pydicom would read it anyway (it stops before the
    pixel data, or pads a short value), and the archive would keep a file no other reader opens
    or sends. PS3.4 B.2.3: "cannot understand"."""
    encoding = checked_encoding(transfer_syntax)
    if encoding is None or size == 0:
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm, \
            memoryview(mm) as view, view[offset:offset + size] as data_set:
        _walk(data_set, encoding, transfer_syntax)


def check_structure_bytes(data_set: bytes | memoryview, transfer_syntax: str) -> None:
    """:func:`check_structure` for a data set held in memory."""
    encoding = checked_encoding(transfer_syntax)
    if encoding is not None and data_set:
        _walk(data_set, encoding, transfer_syntax)


def _walk(data_set: bytes | memoryview, encoding: tuple[bool, bool], transfer_syntax: str
          ) -> None:
    reason = structure_problem(data_set, *encoding, is_encapsulated(transfer_syntax),
                               is_native(transfer_syntax))
    if reason is not None:
        raise _refused(reason)


def _refused(reason: str) -> ServiceError:
    """The 0xC000 failure ("cannot understand", PS3.4 B.2.3) for a data set the archive will
    not keep, logged once here."""
    log.warning("C-STORE data set refused: %s", reason)
    return ServiceError(STATUS_CANNOT_UNDERSTAND, reason[:64])


def _out_of_resources(sop: str, what: str, exc: BaseException) -> ServiceError:
    """The 0xA700 failure ("refused: out of resources", PS3.4 B.2.3) of an instance the
    archive cannot keep (a full or read-only disk, a locked or full index), logged once here,
    in one line without a traceback: an operational condition, not a bug, and the status
    alone tells the peer nothing of the cause."""
    log.error("C-STORE of SOP Instance %s refused (0xA700): %s: %s", sop, what, exc)
    return ServiceError(STATUS_OUT_OF_RESOURCES, f"{what}: {exc}"[:64])


def check_read_encoding(ds: Dataset, transfer_syntax: str) -> None:
    """ServiceError 0xC000 when pydicom read ``ds`` in another encoding than ``transfer_syntax``
    says: its fallback guesses the VR form when the declared one does not parse, and
    ``ds.original_encoding`` then still reports the declared one, so the raw elements (each
    records the encoding it was actually read with) are what is compared."""
    expected = checked_encoding(transfer_syntax)
    if expected is None:
        return
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement):
            continue
        read_as = (elem.is_implicit_VR, elem.is_little_endian)
        if read_as != expected:
            form = "Implicit" if read_as[0] else "Explicit"
            raise ServiceError(STATUS_CANNOT_UNDERSTAND,
                               f"{form} VR body on another context's syntax at {tag}"[:64])
        return  # every element of the top level is read like the first


class ArchiveSink:
    """A C-STORE data set streamed into a temporary Part 10 file inside the archive folder.

    States: open -> placing -> placed, or -> discarded. :meth:`place` (worker thread) and
    :meth:`discard` (event loop) agree through a lock held only to switch state: once placing
    started, discard leaves the file to :meth:`place`, which either indexes it or removes it.
    """

    def __init__(self, archive: Archive, request: CStoreRQ, transfer_syntax: str,
                 sending_ae: str = "", receiving_ae: str = "") -> None:
        self.archive = archive
        self.request = request
        self.transfer_syntax = transfer_syntax
        self._sop = request.affected_sop_instance_uid.strip(" \0")
        try:
            fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=archive.storage_dir)
        except OSError as exc:  # a read-only or full folder
            raise _out_of_resources(self._sop, "cannot create a file", exc) from exc
        with contextlib.suppress(OSError):
            os.fchmod(fd, FILE_MODE)  # as any file the archive keeps (mkstemp makes it 0600)
        self.temp_path = Path(name)
        self._lock = threading.Lock()
        self._state = "open"
        self._file = os.fdopen(fd, "wb", buffering=WRITE_BUFFER)
        try:
            meta = file_meta_bytes(request.affected_sop_class_uid,
                                   request.affected_sop_instance_uid, transfer_syntax, sending_ae,
                                   receiving_ae)
            self._file.write(meta)
        except BaseException as exc:
            self._remove()
            if isinstance(exc, OSError):
                raise _out_of_resources(self._sop, "cannot write", exc) from exc
            raise
        self._meta_size = len(meta)
        self._head = bytearray()  # the data set's first bytes, for the syntax check
        self.size = 0
        self.result: Adopted | None = None

    def write(self, fragment: memoryview) -> None:
        """Append a fragment (buffered). A full disk: ServiceError 0xA700, logged once."""
        try:
            self._file.write(fragment)
        except OSError as exc:
            raise _out_of_resources(self._sop, "cannot write", exc) from exc
        if len(self._head) < HEAD_SIZE:  # kept as it arrives: no read-back for the check
            self._head += fragment[:HEAD_SIZE - len(self._head)]
        self.size += len(fragment)

    def finish(self) -> None:
        """The whole data set arrived (flushing and syncing happen in :meth:`place`)."""

    def place(self, duplicate: Duplicate = Duplicate.KEEP) -> Adopted:
        """Sync, check and move the file into the archive, indexed (blocking: worker thread).

        ServiceError with the status to answer on failure; the temporary file is then gone.
        """
        with self._lock:
            if self._state != "open":
                raise ServiceError(STATUS_OUT_OF_RESOURCES, f"sink already {self._state}")
            self._state = "placing"
        try:
            self.result = self._place(duplicate)
        except BaseException:
            with self._lock:
                self._state = "discarded"
            self._remove()
            raise
        with self._lock:
            self._state = "placed"
        return self.result

    def _place(self, duplicate: Duplicate) -> Adopted:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:  # ENOSPC often shows only here, at the flush or the fsync
            raise _out_of_resources(self._sop, "cannot write", exc) from exc
        check_encoding(self._head, self.transfer_syntax, self.size)
        try:
            check_structure(self.temp_path, self._meta_size, self.size, self.transfer_syntax)
            ds = pydicom.dcmread(self.temp_path, stop_before_pixels=True,
                                 defer_size=HEADER_DEFER_SIZE)
        except OSError as exc:  # too many open files, an I/O error reading it back
            raise _out_of_resources(self._sop, "cannot read back", exc) from exc
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(STATUS_CANNOT_UNDERSTAND,
                               f"unreadable data set: {exc}"[:64]) from exc
        try:
            check_read_encoding(ds, self.transfer_syntax)
            check_identity(ds, self.request)
            adopted = self.archive.adopt(self.temp_path, ds, duplicate=duplicate)
        except (OSError, sqlite3.Error) as exc:  # e.g. "database or disk is full"
            raise _out_of_resources(self._sop, "cannot store", exc) from exc
        except ServiceError:
            raise
        except Exception as exc:
            # pydicom converts a value when it is first read: one its VR cannot hold (a UID
            # sent as FL, an odd length for FD) raises there, in our checks or in indexing.
            raise _refused(f"unreadable value: {exc}") from exc
        if adopted.duplicate:
            log.info("SOP Instance %s already stored: %s", self.request.affected_sop_instance_uid,
                     "kept the first" if duplicate is Duplicate.KEEP else "replaced")
        return adopted

    def commit(self) -> None:
        """Place the instance if the handler did not (blocking; the archive handler always
        places it in a worker thread first)."""
        if self._state == "open":
            self.place()

    def discard(self) -> None:
        """Remove the temporary file unless :meth:`place` has taken it over."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "discarded"
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


def archive_sink_factory(archive: Archive) -> SinkFactory:
    """A :class:`SinkFactory` streaming each received instance into ``archive``'s folder."""

    def open_sink(request: CStoreRQ, ctx: RequestContext) -> DataSetSink:
        return ArchiveSink(archive, request, ctx.context.transfer_syntax,
                           *peer_and_own_titles(ctx))

    return open_sink


def archive_store_handler(archive: Archive, *,
                          duplicate: Duplicate = Duplicate.KEEP) -> StoreHandler:
    """A C-STORE handler storing each instance into ``archive``, indexed before the response.

    With :func:`archive_sink_factory` as the sink the instance is never in memory; without a
    sink (data set received in memory) it is decoded and written by :meth:`Archive.store`.
    """

    async def store(request: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> int:
        sink = dataset.sink
        if isinstance(sink, ArchiveSink):
            await archive.run(sink.place, duplicate)
            return 0
        if dataset.data is not None:
            check_encoding(dataset.data[:HEAD_SIZE], dataset.transfer_syntax,
                           len(dataset.data))
            check_structure_bytes(dataset.data, dataset.transfer_syntax)
        ds = dataset.decode()  # DataSetDecodeError: 0xC000, logged by the services layer
        check_identity(ds, request)
        try:
            known = archive.stored_path(request.affected_sop_instance_uid)
            if duplicate is Duplicate.KEEP and known is not None and known.exists():
                return 0
            await archive.run(archive.store, ds, transfer_syntax=dataset.transfer_syntax)
        except (OSError, sqlite3.Error) as exc:  # a full disk, a locked or full index
            raise _out_of_resources(request.affected_sop_instance_uid.strip(" \0"),
                                    "cannot store", exc) from exc
        except ValueError as exc:  # a value the index cannot read (Archive.store's ValueError)
            raise _refused(str(exc)) from exc
        return 0

    return store
