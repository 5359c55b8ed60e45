"""Audit 12: the ``dimse qrscp`` process through its life, as a service runs it.

Start-up refusals (port in use, address not on this host, storage a file, index folder
missing), SIGTERM/SIGINT while idle, with associations open and mid C-STORE (every acknowledged
instance indexed after a restart, no temporary file left, the peer not left hanging), a restart
on the same port right after SIGKILL, and the index file on restart: empty, of an older schema,
naming files moved or deleted while the server was down, corrupt, damaged, or another
application's database. The six defects found (audit12 #1-#6) are fixed; their tests pass.
Every process here is started by the test and killed by its pid; waits are bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests import peers

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
STARTED: list[subprocess.Popen[bytes]] = []


# --------------------------------------------------------------------------- helpers


def make_file(path: Path, study: str, series: str, sop: str, *, pixels: int = 64,
              date: str = "20260101") -> Path:
    """A small CT Part 10 file (explicit VR little endian) with ``pixels`` bytes of Pixel Data."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality, ds.StudyDate = "AUDIT^TWELVE", "A12", "CT", date
    ds.AccessionNumber = "ACC" + sop.rsplit(".", 1)[-1]
    ds.Rows = max(1, pixels // 2 // 50000)
    ds.Columns = pixels // 2 // ds.Rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0" * pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class Qrscp:
    """One ``python -m dimse qrscp`` child; output to files so nothing blocks on a pipe."""

    def __init__(self, storage: Path, port: int, *extra: str, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("out*")))
        self.out, self.err = logs / f"out{n}", logs / f"err{n}"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dimse", "qrscp", "--storage", str(storage),
                 "--aet", "ARCHIVE", "--port", str(port), "--rescan", "0", *extra],
                cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        STARTED.append(self.proc)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def ready(self, timeout: float = 30.0) -> str:
        """The start-up line; fails if the process exits or says nothing in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout()
            if "listening on" in text:
                return text.splitlines()[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no start-up line (rc {self.proc.poll()}): {self.stderr()!r}")

    def exited(self, timeout: float = 20.0) -> int:
        """The exit code of a process expected to end by itself."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"still running after {timeout} s: {self.stderr()!r}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        return self.exited(timeout)

    @property
    def port(self) -> int:
        match = re.search(r"listening on [^ ]+:(\d+)", self.stdout())
        assert match, self.stdout()
        return int(match.group(1))


@pytest.fixture(autouse=True)
def _kill_started() -> Iterator[None]:
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def serving(line: str) -> tuple[int, int]:
    """(instances, studies) of a start-up line."""
    match = re.search(r"serving (\d+) instances? in (\d+) stud", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def index_rows(db: Path) -> int:
    con = sqlite3.connect(db, timeout=10)
    try:
        return int(con.execute("SELECT count(*) FROM instance").fetchone()[0])
    finally:
        con.close()


def temp_files(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.rglob(".tmp-*"))


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def find_count(port: int, *keys: str) -> tuple[int, str]:
    """Matches of a DCMTK findscu Study Root query, and its last status line."""
    args = [peers.dcmtk("findscu"), "-v", "-S", "-aec", "ARCHIVE", "-to", "20", "-ta", "20",
            "-td", "20"]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=40, check=False)
    text = done.stdout + done.stderr
    final = [line for line in text.splitlines() if "Final Find Response" in line]
    return text.count("Find Response:"), final[-1] if final else text[-300:]


@pytest.fixture()
def archive_folder(tmp_path: Path) -> Path:
    """An archive folder of 20 instances in 2 studies, indexed once by a qrscp run."""
    storage = tmp_path / "arch"
    for i in range(20):
        make_file(storage / "in" / f"{i}.dcm", f"1.2.12.{i % 2}", f"1.2.12.{i % 2}.1",
                  f"1.2.12.{i % 2}.1.{i}")
    server = Qrscp(storage, 0, logs=tmp_path / "logs")
    assert serving(server.ready()) == (20, 2)
    assert server.stop() == 0
    return storage


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("case", ["port in use", "address not on this host", "storage is a file",
                                  "index folder missing"])
def test_startup_refusal_is_one_line_and_nonzero(tmp_path: Path, case: str) -> None:
    """Each start-up mistake: one 'dimse qrscp: error:' line, exit 1 or 2, no traceback."""
    storage, extra, port = tmp_path / "arch", [], 0
    busy = socket.socket()
    try:
        if case == "port in use":
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
        elif case == "address not on this host":
            extra = ["--bind", "192.0.2.1"]  # TEST-NET-1, never assigned here
        elif case == "storage is a file":
            storage = tmp_path / "afile"
            storage.write_bytes(b"x")
        else:
            extra = ["--db", str(tmp_path / "missing" / "index.sqlite")]
        server = Qrscp(storage, port, *extra, logs=tmp_path / "logs")
        code = server.exited()
    finally:
        busy.close()
    err = server.stderr()
    assert code in (1, 2), err
    assert err.startswith("dimse qrscp: error:") and err.count("\n") == 1, err
    assert server.stdout() == ""


def test_port_zero_reports_the_port_it_listens_on(tmp_path: Path) -> None:
    server = Qrscp(tmp_path / "arch", 0, logs=tmp_path / "logs")
    server.ready()
    assert server.port != 0
    peers.wait_port(server.port, timeout=10)
    assert server.stop() == 0


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_idle_with_open_associations(tmp_path: Path, sig: int) -> None:
    """SIGTERM / Ctrl-C with three idle associations: exit 0 promptly, no traceback, and every
    peer sees its association end (A-ABORT or a closed connection), none hangs."""
    server = Qrscp(tmp_path / "arch", 0, logs=tmp_path / "logs")
    server.ready()
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(_associate_rq())
        assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        socks.append(sock)
    try:
        assert server.stop(sig, timeout=15) == 0
        for sock in socks:
            assert _until_closed(sock)[:1] in (b"", b"\x07")  # EOF, or an A-ABORT then EOF
    finally:
        for sock in socks:
            sock.close()
    no_traceback(server.stderr())


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (header and body)."""
    sock.settimeout(10)
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed the connection (a reset counts as closed)."""
    sock.settimeout(10)
    parts = []
    try:
        while chunk := sock.recv(65536):
            parts.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def _associate_rq() -> bytes:
    """An A-ASSOCIATE-RQ for Verification, calling ME, called ARCHIVE."""
    from pdu.negotiation import build_associate_rq

    rq = build_associate_rq("ARCHIVE", "ME", [("1.2.840.10008.1.1", ("1.2.840.10008.1.2",))])
    return bytes(rq.encode())


def test_sigterm_mid_large_store_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while storescu sends a 40 MB instance: exit 0, storescu fails (no hang), no
    temporary file left, and the instance is not indexed after a restart."""
    big = make_file(tmp_path / "src" / "big.dcm", "1.2.12.9", "1.2.12.9.1", "1.2.12.9.1.1",
                    pixels=40_000_000)
    storage = tmp_path / "arch"
    server = Qrscp(storage, 0, logs=tmp_path / "logs")
    server.ready()
    scu = subprocess.Popen([peers.dcmtk("storescu"), "-aec", "ARCHIVE", "127.0.0.1",
                            str(server.port), str(big)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    STARTED.append(scu)  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        temps = list(storage.rglob(".tmp-*"))
        if temps and temps[0].stat().st_size > 1_000_000:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the store never started")
    assert server.stop(timeout=15) == 0
    assert scu.wait(timeout=20) != 0
    assert temp_files(storage) == []
    no_traceback(server.stderr())
    again = Qrscp(storage, 0, logs=tmp_path / "logs")
    assert serving(again.ready()) == (0, 0)
    assert again.stop() == 0


def test_sigterm_during_many_stores_keeps_every_acknowledged(tmp_path: Path) -> None:
    """SIGTERM while storescu sends 150 instances in one association: every instance it got
    success for is indexed after a restart, the index equals the folder, no temp file."""
    src = tmp_path / "src"
    for i in range(150):
        make_file(src / f"{i:03d}.dcm", "1.2.12.8", "1.2.12.8.1", f"1.2.12.8.1.{i}",
                  pixels=100_000)
    storage = tmp_path / "arch"
    server = Qrscp(storage, 0, logs=tmp_path / "logs")
    server.ready()
    scu = subprocess.Popen([peers.dcmtk("storescu"), "-v", "-aec", "ARCHIVE", "127.0.0.1",
                            str(server.port), "--scan-directories", str(src)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    STARTED.append(scu)  # type: ignore[arg-type]
    assert scu.stdout is not None
    acked = 0
    for line in scu.stdout:  # stop once 20 are acknowledged, mid-association
        acked += "Received Store Response (Success)" in line
        if acked == 20:
            break
    assert server.stop(timeout=15) == 0
    rest, _ = scu.communicate(timeout=20)
    acked += rest.count("Received Store Response (Success)")
    assert 20 <= acked < 150
    assert temp_files(storage) == []
    again = Qrscp(storage, 0, logs=tmp_path / "logs")
    instances, _ = serving(again.ready())
    assert again.stop() == 0
    files = [p for p in storage.rglob("*.dcm") if not p.name.startswith(".")]
    assert instances == len(files) == index_rows(storage / ".archive.sqlite") >= acked


def test_graceful_stop_says_so_in_one_line(tmp_path: Path) -> None:
    server = Qrscp(tmp_path / "arch", 0, logs=tmp_path / "logs")
    server.ready()
    assert server.stop() == 0
    after = (server.stdout().splitlines()[1:] + server.stderr().splitlines())
    assert len(after) == 1, after


# --------------------------------------------------------------------------- restart


def test_restart_on_same_port_right_after_sigkill(tmp_path: Path) -> None:
    """kill -9 with an association open, then a restart on the same port at once: no
    'address in use', the folder lock is free, the counts are right."""
    storage = tmp_path / "arch"
    make_file(storage / "a.dcm", "1.2.12.7", "1.2.12.7.1", "1.2.12.7.1.1")
    server = Qrscp(storage, 0, logs=tmp_path / "logs")
    assert serving(server.ready()) == (1, 1)
    port = server.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(_associate_rq())
        assert _read_pdu(sock)[0] == 0x02
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        again = Qrscp(storage, port, logs=tmp_path / "logs")
        line = again.ready()
    finally:
        sock.close()
    assert serving(line) == (1, 1) and f":{port}," in line
    assert again.stop() == 0


@pytest.mark.parametrize("damage", ["zero bytes", "older schema"])
def test_empty_or_older_index_is_rebuilt(archive_folder: Path, tmp_path: Path,
                                         damage: str) -> None:
    db = archive_folder / ".archive.sqlite"
    if damage == "zero bytes":
        db.write_bytes(b"")
    else:
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version = 1")
        con.commit()
        con.close()
    server = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    assert serving(server.ready()) == (20, 2)
    assert find_count(server.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")[0] == 2
    assert server.stop() == 0


def test_files_moved_and_deleted_while_down(archive_folder: Path, tmp_path: Path) -> None:
    """Files moved into sub-folders, one deleted and one replaced by another instance while
    the server was down: the restart's counts and a C-FIND agree with the folder."""
    moved = archive_folder / "deeper" / "still"
    moved.mkdir(parents=True)
    for i in range(10):
        shutil.move(archive_folder / "in" / f"{i}.dcm", moved / f"{i}.dcm")
    (archive_folder / "in" / "10.dcm").unlink()
    make_file(archive_folder / "in" / "11.dcm", "1.2.12.5", "1.2.12.5.1", "1.2.12.5.1.1")
    server = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    line = server.ready()
    assert serving(line) == (19, 3), line
    assert "2 removed" in line or "removed" in line
    count, final = find_count(server.port, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert count == 3 and "Success" in final
    assert server.stop() == 0


# --------------------------------------------------------------------------- damaged index


def test_foreign_database_is_refused_not_overwritten(tmp_path: Path) -> None:
    other = tmp_path / "ris.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE patient (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO patient (name) VALUES (?)", [("Alice",), ("Bob",)])
    con.commit()
    con.close()
    server = Qrscp(tmp_path / "arch", 0, "--db", str(other), logs=tmp_path / "logs")
    code = server.exited(timeout=20) if "listening" not in _first_output(server) \
        else server.stop()
    con = sqlite3.connect(other)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM patient ORDER BY id")]
    except sqlite3.OperationalError as exc:  # our table replaced theirs: "no such column"
        names = [f"lost: {exc}"]
    finally:
        con.close()
    assert names == ["Alice", "Bob"]
    assert code != 0 and server.stderr().startswith("dimse qrscp: error:")


def _first_output(server: Qrscp, timeout: float = 30.0) -> str:
    """What the process said first: its start-up line, or its error once it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "listening" in server.stdout() or server.proc.poll() is not None:
            break
        time.sleep(0.05)
    return server.stdout() + server.stderr()


@pytest.mark.parametrize("damage", ["not a database", "page 2 trashed"])
def test_corrupt_index_is_rebuilt_or_clearly_refused(archive_folder: Path, tmp_path: Path,
                                                     damage: str) -> None:
    db = archive_folder / ".archive.sqlite"
    data = db.read_bytes()
    if damage == "not a database":
        db.write_bytes(b"this is not an SQLite database\n" * 200)
    else:
        db.write_bytes(data[:4096] + b"\xff" * 4096 + data[8192:])
    server = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    said = _first_output(server)
    if "listening" in said:  # rebuilt
        assert serving(said) == (20, 2)
        assert server.stop() == 0
        return
    err = server.stderr()
    assert server.exited() != 0 and err.count("\n") == 1
    assert str(db) in err and "read-only" not in err and "unexpected" not in err, err


def test_damaged_secondary_index_gives_no_wrong_answer(archive_folder: Path,
                                                       tmp_path: Path) -> None:
    for i in range(200):  # enough studies for study_date to span several pages
        make_file(archive_folder / "more" / f"{i}.dcm", f"1.2.13.{i}", f"1.2.13.{i}.1",
                  f"1.2.13.{i}.1.1", date="20250101" if i % 20 else "20240202")
    first = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    assert serving(first.ready()) == (220, 202)
    assert first.stop() == 0
    db = archive_folder / ".archive.sqlite"
    con = sqlite3.connect(db)
    try:
        pages = dict(con.execute("SELECT name, max(pageno) FROM dbstat WHERE name IN "
                                 "('study_date', 'study_accession') GROUP BY name").fetchall())
        size = int(con.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat")
    finally:
        con.close()
    data = bytearray(db.read_bytes())
    victim, source = (pages["study_date"] - 1) * size, (pages["study_accession"] - 1) * size
    data[victim:victim + size] = data[source:source + size]  # a page of another index
    db.write_bytes(bytes(data))
    server = Qrscp(archive_folder, 0, logs=tmp_path / "logs3")
    said = _first_output(server)
    if "listening" not in said:  # a clear refusal is fine too
        assert server.exited() != 0 and "Traceback" not in server.stderr()
        return
    count, final = find_count(server.port, "QueryRetrieveLevel=STUDY", "StudyDate=20240202",
                              "StudyInstanceUID")
    assert server.stop() == 0
    assert (count, "Success" in final) == (10, True) or "Success" not in final


def test_index_lock_released_after_sigterm(archive_folder: Path, tmp_path: Path) -> None:
    """A second server on the folder is refused while the first runs, and starts once the
    first has stopped on SIGTERM."""
    first = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    first.ready()
    second = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    assert second.exited() == 1 and "in use by another process" in second.stderr()
    assert first.stop() == 0
    third = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    assert serving(third.ready()) == (20, 2)
    assert third.stop() == 0
    assert not os.path.exists(archive_folder / ".tmp-x")


def test_schema_upgrade_rebuild_is_announced(archive_folder: Path, tmp_path: Path) -> None:
    con = sqlite3.connect(archive_folder / ".archive.sqlite")
    con.execute("PRAGMA user_version = 12345")  # what an older SCHEMA_REVISION wrote
    con.commit()
    con.close()
    server = Qrscp(archive_folder, 0, logs=tmp_path / "logs2")
    assert serving(server.ready()) == (20, 2)
    assert server.stop() == 0
    said = server.stdout().splitlines()[1:] + server.stderr().splitlines()
    assert any("index" in line.lower() for line in said), said


def test_index_of_another_folder_is_refused(archive_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    server = Qrscp(other, 0, "--db", str(archive_folder / ".archive.sqlite"),
                   logs=tmp_path / "logs2")
    if "listening" in _first_output(server):
        assert server.stop() == 0
    else:
        assert server.exited() != 0
    assert index_rows(archive_folder / ".archive.sqlite") == 20
