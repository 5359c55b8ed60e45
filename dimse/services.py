"""Service handlers: typed protocols, the registry keyed by command field, the status policy.

A server (or the performer side of any association, e.g. an SCU answering the C-STORE
sub-operations of its own C-GET) looks up a :class:`Performer` by the request's command field in a
:class:`HandlerRegistry`. The registry wraps small typed user handlers:

* :class:`EchoHandler` ``(request, ctx) -> status`` (default: success);
* :class:`StoreHandler` ``(request, dataset, ctx) -> status | None``, where ``dataset`` is a
  :class:`ReceivedDataSet`: the encoded bytes, or the :class:`DataSetSink` the fragments were
  streamed into (a :class:`FileSink` writes a Part 10 file without holding the instance).

A handler fails a request by raising :class:`~dimse.errors.ServiceError`; any other exception
becomes a failure status chosen by :func:`failure_status` and is logged, never propagated.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from pydicom.dataset import Dataset

from pdu.constants import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pdu.negotiation import AcceptedContext

from .errors import DataSetDecodeError, ServiceError
from .messages import CEchoRQ, CEchoRSP, CommandField, CStoreRQ, CStoreRSP, Message
from .status import Category, category

if TYPE_CHECKING:
    import asyncio

    from .association import Association

__all__ = [
    "VERIFICATION_SOP_CLASS",
    "DataSetSink",
    "EchoHandler",
    "FileSink",
    "HandlerRegistry",
    "Performer",
    "ReceivedDataSet",
    "RequestContext",
    "SinkFactory",
    "StoreHandler",
    "failure_status",
    "file_sink_factory",
    "storage_sop_classes",
]

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@functools.cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pydicom knows (its UID dictionary), sorted."""
    from pydicom._uid_dict import UID_dictionary

    return tuple(sorted(
        uid for uid, entry in UID_dictionary.items()
        if entry[1] == "SOP Class" and entry[0].endswith("Storage") and "Retired" not in entry[0]
    ))


# --------------------------------------------------------------------------- data set sinks


class DataSetSink(Protocol):
    """Receives a data set fragment by fragment as the PDVs arrive."""

    def write(self, fragment: memoryview) -> None: ...

    def finish(self) -> None:
        """The last fragment arrived: flush and close (but keep the result until commit)."""

    def commit(self) -> None:
        """The handler accepted the instance: make the result permanent."""

    def discard(self) -> None:
        """The transfer was aborted or the handler failed: remove every trace."""


class SinkFactory(Protocol):
    """Opens a sink for an incoming C-STORE request whose data set is about to arrive."""

    def __call__(self, request: CStoreRQ, ctx: RequestContext) -> DataSetSink: ...


@dataclass(frozen=True, slots=True)
class ReceivedDataSet:
    """The data set of a request: in memory (``data``) or streamed into ``sink``.

    ``error`` is set when the data set could not be stored while it arrived (the sink could
    not be opened or written); the handler is then not called and the request fails.
    """

    transfer_syntax: str
    data: bytes | memoryview | None = None
    sink: DataSetSink | None = None
    error: BaseException | None = None

    def decode(self) -> Dataset:
        """The data set as a pydicom Dataset (reads the file back for a :class:`FileSink`)."""
        if self.data is not None:
            from . import codec

            return codec.decode(self.data, self.transfer_syntax)
        if isinstance(self.sink, FileSink):
            import pydicom

            return pydicom.dcmread(self.sink.temp_path)
        raise DataSetDecodeError("the data set went to a sink that cannot be read back")


_ELEMENT_SHORT = struct.Struct("<HH2sH")  # explicit VR LE header with a 2-byte length
_ELEMENT_LONG = struct.Struct("<HH2s2xL")  # OB/UN...: reserved bytes + 4-byte length


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return _ELEMENT_LONG.pack(0x0002, element, vr, len(value)) + value
    return _ELEMENT_SHORT.pack(0x0002, element, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the group 0002 File Meta Information (PS3.10 7.1)."""
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _pad(sop_class, b"\x00")),
        _meta_element(0x0003, b"UI", _pad(sop_instance, b"\x00")),
        _meta_element(0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
        *((_meta_element(0x0016, b"AE", _pad(source_ae, b" ")),) if source_ae else ()),
    ))
    group_length = _meta_element(0x0000, b"UL", struct.pack("<L", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


#: Data set bytes a :class:`FileSink` keeps in memory before it opens its temp file: a small
#: instance costs one open, one gathered write and one rename; a large one streams.
SINK_MEMORY_LIMIT = 1 << 20
_SINK_IDS = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = "/proc/self/fd"
#: Anonymous temp files need O_TMPFILE and /proc to link them in (Linux); 0 when unavailable.
_TMPFILE_FLAGS = (os.O_WRONLY | os.O_TMPFILE | getattr(os, "O_CLOEXEC", 0)
                  if hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD) else 0)


class FileSink:
    """Streams a C-STORE data set into a Part 10 file: a temp file, put in place on commit.

    Fragments are held (as the received views, not copied) until :meth:`finish` or until they
    pass :data:`SINK_MEMORY_LIMIT`; then the temp file is opened and written with one
    ``os.writev`` per batch: the hot path of small instances. On Linux the temp file is
    anonymous (``O_TMPFILE``) and linked in under its name on commit: one directory entry per
    instance instead of a create and a rename, and nothing left behind by a crash. Elsewhere
    (or when the folder's file system refuses) it is a hidden ``.part`` file, renamed on commit.
    """

    __slots__ = ("_anonymous", "_chunks", "_fd", "_folder", "_held", "_path", "_temp", "size")

    def __init__(self, folder: str | Path, request: CStoreRQ, transfer_syntax: str,
                 source_ae: str = "") -> None:
        uid = request.affected_sop_instance_uid
        name = _safe_name(uid)
        folder = os.fspath(folder)
        self._folder = folder
        self._anonymous = False
        self._path = os.path.join(folder, name + ".dcm")
        self._temp = ""  # named when needed (an anonymous temp file has no name)
        self._chunks: list[bytes | memoryview] = [
            file_meta_bytes(request.affected_sop_class_uid, uid, transfer_syntax, source_ae)]
        self._held = 0
        self._fd = -1
        self.size = 0

    @property
    def path(self) -> Path:
        """Where the instance is once committed."""
        return Path(self._path)

    @property
    def temp_path(self) -> Path:
        """The file holding the data set until commit (complete after ``finish``).

        For an anonymous temp file this is its ``/proc/self/fd`` link (readable until commit).
        """
        if self._anonymous and self._fd >= 0:
            return Path(f"{_PROC_FD}/{self._fd}")
        return Path(self._temp_name())

    def _temp_name(self) -> str:
        if not self._temp:
            base = os.path.basename(self._path)[:-4]
            self._temp = os.path.join(self._folder,
                                      f".{base}.{os.getpid()}.{next(_SINK_IDS)}.part")
        return self._temp

    def write(self, fragment: memoryview) -> None:
        self._chunks.append(fragment)
        n = len(fragment)
        self.size += n
        self._held += n
        if self._held >= SINK_MEMORY_LIMIT:
            self._flush()

    def _open(self) -> None:
        if _TMPFILE_FLAGS:
            try:
                self._fd = os.open(self._folder, _TMPFILE_FLAGS, 0o644)
            except OSError:  # e.g. a file system without O_TMPFILE: a named temp file
                pass
            else:
                self._anonymous = True
                return
        self._fd = os.open(self._temp_name(), _TEMP_FLAGS, 0o644)

    def _flush(self) -> None:
        if self._fd < 0:
            self._open()
        chunks, self._chunks, self._held = self._chunks, [], 0
        while chunks:
            batch = chunks[:_IOV_MAX]
            del chunks[:_IOV_MAX]
            total = sum(len(c) for c in batch)
            written = os.writev(self._fd, batch)
            if written < total:  # a short write: finish this batch the slow way
                rest = b"".join(batch)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]

    def finish(self) -> None:
        """The last fragment is in: the temp file is complete (closed unless anonymous)."""
        self._flush()
        if not self._anonymous:
            self._close()

    def commit(self) -> None:
        if self._chunks or (self._fd >= 0 and not self._anonymous):
            self.finish()
        if not self._anonymous:
            os.replace(self._temp_name(), self._path)
            return
        fd = self._fd
        source = f"{_PROC_FD}/{fd}"
        try:  # src_dir_fd: linkat with AT_SYMLINK_FOLLOW (the path is absolute, fd unused)
            try:
                os.link(source, self._path, src_dir_fd=fd, follow_symlinks=True)
            except FileExistsError:  # an existing file is replaced, as os.replace does
                os.link(source, self._temp_name(), src_dir_fd=fd, follow_symlinks=True)
                os.replace(self._temp, self._path)
        finally:
            self._close()

    def discard(self) -> None:
        self._chunks, self._held = [], 0
        anonymous = self._anonymous and self._fd >= 0
        self._close()
        if not anonymous and self._temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _iov_max() -> int:
    """How many buffers one ``os.writev`` takes (POSIX guarantees 16; Linux allows 1024)."""
    try:
        return max(16, min(int(os.sysconf("SC_IOV_MAX")), 1024))
    except (AttributeError, ValueError, OSError):
        return 16


_IOV_MAX = _iov_max()


_PLAIN_UID = re.compile(r"[0-9.]+")


def _safe_name(uid: str) -> str:
    """A file name from a UID (only digits and dots are kept)."""
    if _PLAIN_UID.fullmatch(uid):
        return uid
    name = "".join(ch for ch in uid if ch.isdigit() or ch == ".")
    return name or "instance"


def file_sink_factory(folder: str | Path) -> SinkFactory:
    """A :class:`SinkFactory` writing every received instance to ``folder/<SOPInstanceUID>.dcm``."""
    target = Path(folder)

    def open_sink(request: CStoreRQ, ctx: RequestContext) -> DataSetSink:
        return FileSink(target, request, ctx.context.transfer_syntax, ctx.calling_ae)

    return open_sink


# --------------------------------------------------------------------------- requests and handlers


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One incoming request as seen by a performer: where it came from and what it carries."""

    association: Association
    context: AcceptedContext
    message: Message
    dataset: ReceivedDataSet | None

    @property
    def calling_ae(self) -> str:
        return self.association.calling_ae

    @property
    def peer(self) -> tuple[str, int] | None:
        return self.association.peer

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when the peer's C-CANCEL for this request arrives (while it is performed)."""
        return self.association.cancel_event(getattr(self.message, "message_id", -1))

    async def respond(self, response: Message, dataset: bytes | None = None) -> None:
        """Send one response (a Pending one, or the final one) on the request's context."""
        await self.association.send_message(self.context.context_id, response, dataset)


class EchoHandler(Protocol):
    def __call__(self, request: CEchoRQ, ctx: RequestContext) -> Awaitable[int | None]: ...


class StoreHandler(Protocol):
    def __call__(
        self, request: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext
    ) -> Awaitable[int | None]: ...


#: What runs a request: it sends the response(s) itself through ``RequestContext.respond``.
Performer = Callable[[RequestContext], Awaitable[None]]


def failure_status(command_field: int, exc: BaseException) -> int:
    """The status for a handler that raised ``exc`` (anything but ServiceError)."""
    if command_field == CommandField.C_STORE_RQ:
        if isinstance(exc, OSError):
            return 0xA700  # refused: out of resources (disk full, permissions...)
        if isinstance(exc, DataSetDecodeError):
            return 0xC000  # error: cannot understand
    return 0x0110  # processing failure


def _error_fields(exc: BaseException, command_field: int) -> tuple[int, str, tuple[int, ...]]:
    if isinstance(exc, ServiceError):
        return exc.status, exc.comment, exc.offending_elements
    log.exception("handler for command 0x%04X failed", command_field, exc_info=exc)
    comment = f"{type(exc).__name__}: {exc}"[:64]
    return failure_status(command_field, exc), comment, ()


async def _default_echo(request: CEchoRQ, ctx: RequestContext) -> int:
    return 0x0000


class HandlerRegistry:
    """Performers keyed by the request's command field, built from typed handlers."""

    def __init__(self) -> None:
        self._performers: dict[int, Performer] = {}
        self._sinks: SinkFactory | None = None
        self.on_echo(_default_echo)

    def register(self, command_field: int, performer: Performer) -> None:
        """Install a raw performer (used by the Q/R services)."""
        self._performers[int(command_field)] = performer

    def get(self, command_field: int) -> Performer | None:
        return self._performers.get(command_field)

    def __contains__(self, command_field: int) -> bool:
        return command_field in self._performers

    def on_echo(self, handler: EchoHandler) -> None:
        self.register(CommandField.C_ECHO_RQ, functools.partial(_perform_echo, handler))

    def on_store(self, handler: StoreHandler, sink: SinkFactory | None = None) -> None:
        """C-STORE: ``sink`` (optional) receives the data set as it arrives."""
        self._sinks = sink
        self.register(CommandField.C_STORE_RQ, functools.partial(_perform_store, handler))

    def streams(self, request: Message) -> bool:
        """Whether the data set of ``request`` goes to a sink as it arrives."""
        return self._sinks is not None and isinstance(request, CStoreRQ)

    def sink_for(self, request: Message, ctx: RequestContext) -> DataSetSink | None:
        """Open a sink for the data set of ``request`` (when :meth:`streams` says so)."""
        if self._sinks is not None and isinstance(request, CStoreRQ):
            return self._sinks(request, ctx)
        return None


async def _perform_echo(handler: EchoHandler, req: RequestContext) -> None:
    rq = req.message
    assert isinstance(rq, CEchoRQ)
    comment, offending = "", cast(tuple[int, ...], ())
    try:
        status = await handler(rq, req)
        status = 0 if status is None else status
    except Exception as exc:
        status, comment, offending = _error_fields(exc, CommandField.C_ECHO_RQ)
    await req.respond(CEchoRSP(
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid,
        status=status,
        error_comment=comment or None,
    ))
    del offending


async def _perform_store(handler: StoreHandler, req: RequestContext) -> None:
    rq = req.message
    assert isinstance(rq, CStoreRQ)
    dataset = req.dataset or ReceivedDataSet(req.context.transfer_syntax, b"")
    comment, offending = "", cast(tuple[int, ...], ())
    try:
        if dataset.error is not None:
            raise dataset.error
        status = await handler(rq, dataset, req)
        status = 0 if status is None else status
        if dataset.sink is not None:
            if category(status) in (Category.SUCCESS, Category.WARNING):
                dataset.sink.commit()
            else:
                dataset.sink.discard()
    except Exception as exc:  # a handler never crashes the association
        if dataset.sink is not None:
            dataset.sink.discard()
        status, comment, offending = _error_fields(exc, CommandField.C_STORE_RQ)
    except BaseException:  # cancelled (association aborted): no partial file stays behind
        if dataset.sink is not None:
            dataset.sink.discard()
        raise
    await req.respond(CStoreRSP(
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid,
        affected_sop_instance_uid=rq.affected_sop_instance_uid,
        status=status,
        error_comment=comment or None,
        offending_element=offending or None,
    ))
