"""Audit 14: an independent review of session 9's changes (TLS acceptor, release on intact
errors in connect(), the index opening checks and non-UTF-8 paths, Q/R sequence keys and level
recasing, encapsulated Pixel Data under a native syntax). The three defects found (audit14 #1-#3) are fixed;
the other tests pin behaviour checked and found right.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dimse.archive import Archive, IndexDatabaseError
from dimse.connect import connect
from dimse.errors import AssociationError, IdentifierError
from dimse.server import Server
from tests.dimse.test_tls import _contexts, certificate  # noqa: F401 (fixture)
from tests.fixtures.captured import FIXTURES

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = "1.2.826.0.1.3680043.10.4646.14."


def write(folder: Path, n: int, name: str | None = None) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{ROOT}{n}.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}{n}", f"{ROOT}{n}.1"
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = "P", "Doe^J", "20250101", "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{n}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def _latin1(parent: Path, name: bytes) -> Path:
    return Path(os.fsdecode(bytes(parent) + b"/" + name))


# --------------------------------------------------------------------------- the index (3)


def test_a_folder_whose_name_is_not_utf8_opens(tmp_path: Path) -> None:
    root = _latin1(tmp_path, b"M\xfcller")
    write(root, 1)
    with Archive(root) as arc:
        assert arc.index().added == 1
    with Archive(root) as arc:  # and again: the recorded folder matches
        assert arc.counts() == (1, 1)


def test_a_foreign_database_with_one_table_named_like_ours_is_left_untouched(
        tmp_path: Path) -> None:
    other = tmp_path / "viewer.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE instance (id INTEGER PRIMARY KEY, sop_uid TEXT, path TEXT, "
               "note TEXT)")
    db.execute("INSERT INTO instance (sop_uid, path, note) VALUES ('1.2.3', 'a.dcm', 'keep')")
    db.commit()
    db.close()
    try:
        with pytest.raises(IndexDatabaseError):
            Archive(tmp_path / "archive", other).close()
    finally:
        rows = sqlite3.connect(other).execute("SELECT note FROM instance").fetchall()
        assert rows == [("keep",)]


def test_an_index_and_folder_named_through_symlinks_and_relative_paths_are_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    write(real, 1)
    os.symlink(real, tmp_path / "link")
    with Archive(tmp_path / "link", tmp_path / "idx.sqlite") as arc:
        assert arc.index().added == 1
    os.symlink(tmp_path / "idx.sqlite", tmp_path / "idxlink.sqlite")
    with Archive(real, tmp_path / "idxlink.sqlite") as arc:
        assert arc.counts() == (1, 1)
    monkeypatch.chdir(tmp_path)
    with Archive("real", "idx.sqlite") as arc:
        assert arc.counts() == (1, 1)


def test_non_utf8_names_survive_subfolders_renames_duplicates_and_remove(
        tmp_path: Path) -> None:
    root = tmp_path / "a"
    write(root, 1)
    write(root, 2)
    sub = _latin1(root, b"d\xe9j\xe0")
    sub.mkdir()
    first = _latin1(sub, b"M\xfcller.dcm")
    (root / "1.dcm").rename(first)
    twin = _latin1(root, b"Z\xfc.dcm")
    shutil.copy(root / "2.dcm", twin)
    with Archive(root) as arc:
        stats = arc.index()
        assert (stats.added, stats.failed, stats.duplicates) == (2, (), (twin,))
        assert arc.stored_path(f"{ROOT}1.1.1") == first
        renamed = _latin1(sub, b"N\xf6.dcm")
        first.rename(renamed)
        stats = arc.index()
        assert (stats.added, stats.removed) == (1, 1)
        assert arc.stored_path(f"{ROOT}1.1.1") == renamed
        (root / "2.dcm").unlink()  # the kept copy goes: its non-UTF-8 twin takes over
        assert arc.index().added == 1
        assert arc.stored_path(f"{ROOT}2.1.1") == twin
        assert arc.remove(renamed)
        assert arc.counts() == (1, 1)


# --------------------------------------------------------------------------- TLS acceptor (1)

LOOPS: list[str] = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover
    pass


def run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def _still_open(socks: list[socket.socket], seconds: float) -> int:
    """How many of ``socks`` the server has not closed within ``seconds`` (blocking)."""
    deadline = time.monotonic() + seconds
    count = 0
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            sock.recv(16)
        except TimeoutError:
            count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


@pytest.mark.parametrize("loop", LOOPS)
def test_close_drops_connections_accepted_just_before_it(
        loop: str, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    server_ctx, _ = _contexts(*certificate)

    async def main() -> None:
        left = 0
        for turns in range(1, 6):  # close() after 1..5 loop turns: the accept is under way
            server = await Server("SRV", ssl=server_ctx, artim_timeout=30).start()
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                     for _ in range(8)]
            for _ in range(turns):
                await asyncio.sleep(0)
            await server.close()
            left += await asyncio.to_thread(_still_open, socks, 2.0)
        assert left == 0, f"{left} connection(s) still open 2 s after Server.close()"

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mutual_tls_refuses_a_client_without_certificate_quickly(
        loop: str, version: ssl.TLSVersion, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    """CERT_REQUIRED on the server: a client with no certificate fails fast (TLS 1.3: after it
    thinks the handshake is done), and the server keeps no handshake or association."""
    cert, key = certificate
    server_ctx, _ = _contexts(cert, key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cert)
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cert)
    bare.maximum_version = version
    with_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with_cert.load_verify_locations(cert)
    with_cert.load_cert_chain(cert, key)
    with_cert.maximum_version = version

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx, artim_timeout=10) as server:
            started = time.monotonic()
            with pytest.raises((AssociationError, OSError)):
                async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=bare,
                                   connect_timeout=5, dimse_timeout=5) as assoc:
                    await assoc.echo()
            assert time.monotonic() - started < 4
            async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=with_cert,
                               connect_timeout=5) as assoc:
                assert await assoc.echo() == 0
            for _ in range(100):
                if not server._handshakes and not server.associations:
                    break
                await asyncio.sleep(0.02)
            assert not server._handshakes and not server.associations

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_garbage_half_close_and_mid_handshake_drops_leave_nothing(
        loop: str, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    server_ctx, client_ctx = _contexts(*certificate)

    async def main() -> None:
        async with Server("SRV", ssl=server_ctx, artim_timeout=5) as server:
            for payload, how in [(b"\x16\x03\x01\x00\x05hello", "close"),
                                 (b"GET / HTTP/1.0\r\n\r\n", "eof"),
                                 (b"", "eof"), (b"\x16\x03", "abort")] * 10:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(payload)
                if how == "eof":
                    writer.write_eof()
                elif how == "abort":
                    writer.transport.abort()
                    continue
                await writer.drain()
                writer.close()
            async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=client_ctx,
                               connect_timeout=5) as assoc:
                assert await assoc.echo() == 0
            for _ in range(250):
                if not server._handshakes:
                    break
                await asyncio.sleep(0.02)
            assert not server._handshakes

    run(loop, main)


# --------------------------------------------------------------------------- connect() (2)


async def test_release_after_an_intact_error_is_bounded_by_the_dimse_timeout() -> None:
    """A peer that never answers the A-RELEASE-RQ: the block's IdentifierError reaches the
    caller after dimse_timeout, and the peer sees RELEASE-RQ then A-ABORT."""
    seen: list[int] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.read(6)
            if len(head) < 6:
                return
            await reader.readexactly(int.from_bytes(head[2:6], "big"))
            seen.append(head[0])
            if head[0] == 1:
                writer.write(FIXTURES["echoscu/assoc/02-associate-ac"].data)

    srv = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(IdentifierError, match="bad key"):
            async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="ECHOSCU",
                               dimse_timeout=0.5, connect_timeout=5):
                raise IdentifierError("bad key")
        assert time.monotonic() - started < 5
        for _ in range(50):
            if 7 in seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [1, 5, 7]
    finally:
        srv.close()
