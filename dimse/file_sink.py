"""Received instances written as Part 10 files: the File Meta Information and :class:`FileSink`.

A :class:`FileSink` streams a C-STORE data set into a temp file and puts it in place on commit.
The path from the last fragment to the C-STORE response is kept short, since a sequential SCU
waits on it: the File Meta Information is assembled from cached parts, the anonymous temp file
is opened ahead of need (:class:`SpareFiles`), and closing the committed file waits until the
response is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from pdu.constants import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pdu.machine import Role
from pdu.pdus import is_ae_title

from .messages import CStoreRQ

if TYPE_CHECKING:
    from .services import RequestContext, SinkFactory

__all__ = ["SINK_MEMORY_LIMIT", "FileSink", "SpareFiles", "file_meta_bytes", "file_sink_factory",
           "peer_and_own_titles"]


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
                    sending_ae: str = "", receiving_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the group 0002 File Meta Information (PS3.10 7.1).

    For an instance received over a network, PS3.10 Table 7.1-1 names the peer that sent it
    Sending Application Entity Title (0002,0017), the AE that received it Receiving Application
    Entity Title (0002,0018), and the AE that wrote the file, which is the receiving one here,
    Source Application Entity Title (0002,0016). Each is left out when its title is empty.
    """
    before, after = _meta_parts(sop_class, transfer_syntax, sending_ae, receiving_ae)
    instance = _meta_element(0x0003, b"UI", _pad(sop_instance, b"\x00"))
    length = len(before) + len(instance) + len(after)
    return b"".join((_PREAMBLE_DICM, _GROUP_LENGTH.pack(0x0002, 0, b"UL", 4, length), before,
                     instance, after))


_PREAMBLE_DICM = b"\x00" * 128 + b"DICM"
_GROUP_LENGTH = struct.Struct("<HH2sHL")


@functools.lru_cache(maxsize=256)
def _meta_parts(sop_class: str, transfer_syntax: str, sending_ae: str,
                receiving_ae: str) -> tuple[bytes, bytes]:
    """The meta elements before and after (0002,0003): the same for every instance of a class
    sent in one transfer syntax by one AE to another, so they are built once."""
    titles = ((0x0016, receiving_ae), (0x0017, sending_ae), (0x0018, receiving_ae))
    before = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _pad(sop_class, b"\x00")),
    ))
    after = b"".join((
        _meta_element(0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
        *(_meta_element(element, b"AE", _pad(title, b" ")) for element, title in titles
          if is_ae_title(title)),  # a peer's that is not (read as Latin-1): left out
    ))
    return before, after


#: Data set bytes a :class:`FileSink` keeps in memory before it opens its temp file: a small
#: instance costs one open, one gathered write and one rename; a large one streams.
SINK_MEMORY_LIMIT = 1 << 20
#: Fragments shorter than this are copied into a shared buffer rather than held as views, so a
#: peer sending tiny PDVs costs about a byte per byte held, not an object per fragment; larger
#: ones (the usual case) are held as received, uncopied. At most ~2 * 1 MiB / 4 KiB chunks.
_COPY_BELOW = 4096
_SINK_IDS = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = "/proc/self/fd"
#: Anonymous temp files need O_TMPFILE and /proc to link them in (Linux); 0 when unavailable.
_TMPFILE_FLAGS = (os.O_WRONLY | os.O_TMPFILE | getattr(os, "O_CLOEXEC", 0)
                  if hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD) else 0)


class SpareFiles:
    """One anonymous temp file (``O_TMPFILE``) kept open ahead of need in a folder.

    Creating the inode is the dearest step of writing a small instance; a sink takes the spare
    instead, and a new spare is made (and the committed file closed) by a loop callback that
    runs after the C-STORE response went out. Outside an event loop the work is done at once.
    An unused spare has no name: closing it (or the process ending) leaves nothing behind.
    """

    __slots__ = ("_due", "_fd", "_folder", "_usable")

    def __init__(self, folder: str | Path) -> None:
        self._folder = os.fspath(folder)
        self._fd = -1
        self._usable = bool(_TMPFILE_FLAGS)
        self._due: list[int] = []  # committed files to close in the callback

    def take(self) -> int:
        """The spare's descriptor (-1 when there is none yet)."""
        fd, self._fd = self._fd, -1
        return fd

    def recycle(self, committed_fd: int) -> None:
        """Close ``committed_fd`` and make a new spare, after the response when in a loop."""
        self._due.append(committed_fd)
        if len(self._due) > 1:
            return  # the callback is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self._refill)
        except RuntimeError:  # no running loop: now
            self._refill()

    def _refill(self) -> None:
        due, self._due = self._due, []
        for fd in due:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._fd < 0 and self._usable:
            try:
                self._fd = os.open(self._folder, _TMPFILE_FLAGS, 0o644)
            except OSError:  # no O_TMPFILE here, or the folder is gone: sinks open their own
                self._usable = False

    def close(self) -> None:
        """Close the spare (and any committed file still waiting to be closed)."""
        self._usable = False
        self._due.append(self.take())
        self._refill()

    def __del__(self) -> None:
        for fd in (self._fd, *self._due):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class FileSink:
    """Streams a C-STORE data set into a Part 10 file: a temp file, put in place on commit.

    Fragments are held (as the received views, not copied; tiny ones copied into one buffer)
    until :meth:`finish` or until they pass :data:`SINK_MEMORY_LIMIT`; then the temp file is opened and written with one
    ``os.writev`` per batch: the hot path of small instances. On Linux the temp file is
    anonymous (``O_TMPFILE``) and linked in under its name on commit: one directory entry per
    instance instead of a create and a rename, and nothing left behind by a crash. Elsewhere
    (or when the folder's file system refuses) it is a hidden ``.part`` file, renamed on commit.
    """

    __slots__ = ("_anonymous", "_chunks", "_fd", "_folder", "_held", "_path", "_spare", "_temp",
                 "size")

    def __init__(self, folder: str | Path, request: CStoreRQ, transfer_syntax: str,
                 sending_ae: str = "", spare: SpareFiles | None = None, *,
                 receiving_ae: str = "") -> None:
        uid = request.affected_sop_instance_uid
        name = _safe_name(uid)
        folder = os.fspath(folder)
        self._folder = folder
        self._anonymous = False
        self._path = os.path.join(folder, name + ".dcm")
        self._temp = ""  # named when needed (an anonymous temp file has no name)
        self._chunks: list[bytes | bytearray | memoryview] = [
            file_meta_bytes(request.affected_sop_class_uid, uid, transfer_syntax, sending_ae,
                            receiving_ae)]
        self._held = 0
        self._fd = -1
        self._spare = spare
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
        n = len(fragment)
        chunks = self._chunks
        if n >= _COPY_BELOW:
            chunks.append(fragment)
        elif chunks and type(chunks[-1]) is bytearray:  # runs of small fragments share one buffer
            chunks[-1] += fragment
        else:
            chunks.append(bytearray(fragment))
        self.size += n
        self._held += n
        if self._held >= SINK_MEMORY_LIMIT:
            self._flush()

    def _open(self) -> None:
        if self._spare is not None:
            self._fd = self._spare.take()
            if self._fd >= 0:
                self._anonymous = True
                return
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
        except BaseException:
            self._close()
            raise
        if self._spare is None:
            self._close()
        else:  # the file is in place; closing it can wait until the response is sent
            self._fd = -1
            self._spare.recycle(fd)

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


def peer_and_own_titles(ctx: RequestContext) -> tuple[str, str]:
    """(sending AE, receiving AE) of a C-STORE received in ``ctx``: the peer sent it and we
    received it. As acceptor the peer is the calling AE; as requestor (a C-GET sub-operation,
    or role selection) the peer is the AE we called and we are the calling one."""
    assoc = ctx.association
    if assoc.role is Role.REQUESTOR:
        return assoc.called_ae, assoc.calling_ae
    return assoc.calling_ae, assoc.called_ae


def file_sink_factory(folder: str | Path) -> SinkFactory:
    """A :class:`SinkFactory` writing every received instance to ``folder/<SOPInstanceUID>.dcm``.

    The data set is written as it arrives, never parsed: its File Meta Information (SOP Class
    and Instance UID) comes from the C-STORE-RQ, and the file is kept when the store handler
    returns a success or warning status. A handler that must not trust the peer checks the data
    set against the command (``dataset.decode()``) and answers A900 when they differ, as
    :func:`dimse.archive_store.archive_store_handler` does.
    """
    target = Path(folder)
    spare = SpareFiles(target)

    def open_sink(request: CStoreRQ, ctx: RequestContext) -> FileSink:
        sender, receiver = peer_and_own_titles(ctx)
        return FileSink(target, request, ctx.context.transfer_syntax, sender, spare,
                        receiving_ae=receiver)

    return open_sink
