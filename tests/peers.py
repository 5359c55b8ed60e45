"""Shared helpers for interop tests: real DCMTK binaries, free ports, bounded subprocesses.

Every interop test talks to peers on 127.0.0.1 only, on ports picked at run time, and kills
only the process groups it started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

DCMTK_DIR = Path("/usr/bin")
LOCALHOST = "127.0.0.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_ELF_MAGIC = b"\x7fELF"


class PeerError(RuntimeError):
    """A test peer did not start or did not behave (message carries its output)."""


def in_ci() -> bool:
    """True when the CI environment variable is set (missing peers then fail, not skip)."""
    return bool(os.environ.get("CI"))


def dcmtk(tool: str) -> str:
    """Absolute path of DCMTK's `tool` under /usr/bin, verified to be DCMTK's ELF binary.

    pynetdicom installs Python console scripts with the same names (findscu, storescp, ...),
    so PATH lookup is not trustworthy. Skips when missing, except under CI where it fails.
    """
    path = DCMTK_DIR / tool
    problem = _dcmtk_problem(path)
    if problem is None:
        return str(path)
    message = f"DCMTK tool {tool!r} unusable: {problem}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _dcmtk_problem(path: Path) -> str | None:
    """Why `path` is not a usable DCMTK binary, or None when it is."""
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"{path} missing or not executable"
    with path.open("rb") as fh:
        if fh.read(4) != _ELF_MAGIC:
            return f"{path} is not an ELF binary (a pynetdicom console script?)"
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} --version failed: {exc}"
    if b"$dcmtk:" not in out:
        return f"{path} --version does not identify DCMTK: {out[:80]!r}"
    return None


def dcmtk_version(tool: str = "echoscu") -> str:
    """DCMTK version string such as 'v3.6.7 2022-04-22' (from `tool --version`)."""
    out = subprocess.run(
        [dcmtk(tool), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    first = out.splitlines()[0] if out else ""
    # "$dcmtk: echoscu v3.6.7 2022-04-22 $"
    parts = first.strip("$ ").split()
    return " ".join(parts[2:]) if len(parts) > 2 else first


async def run_tool_async(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run a command-line peer (e.g. a DCMTK tool) to completion without blocking the event
    loop: (exit code, stdout and stderr). Killed and re-raised when it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def settle_pynetdicom() -> None:
    """Let a pynetdicom SCU's association thread pause again before its next ``send_c_*()``.

    pynetdicom 3.0.4 re-pauses its reactor only after that thread wakes from the previous
    call's checkpoint; a fast SCP's response that arrives in between is taken by the reactor
    (pynetdicom logs "Received unexpected C-STORE service message") and ``send_c_*()`` waits out
    its DIMSE timeout. The reactor loop re-pauses within about a millisecond.
    """
    time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = LOCALHOST) -> None:
    """Block until something accepts TCP connections on host:port; TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s ({last})")


class RunningProcess:
    """A Popen plus the files its stdout/stderr go to, so the output survives the kill."""

    def __init__(self, popen: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.popen = popen
        self._out = out
        self._err = err

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for exit; TimeoutExpired after `timeout` seconds."""
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        """Everything written so far to stdout and stderr (for assertion messages)."""
        out = self._out.read_text(errors="replace") if self._out.exists() else ""
        err = self._err.read_text(errors="replace") if self._err.exists() else ""
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"


@contextlib.contextmanager
def run_process(
    args: Sequence[str], *, cwd: str | Path | None = None, timeout: float = 60.0
) -> Iterator[RunningProcess]:
    """Start `args` in its own process group; on exit terminate, then kill, that group only.

    `timeout` bounds how long the process may live in total: if it is still running when
    the block exits after `timeout` seconds, it is simply killed like any other. Output goes
    to temporary files (no pipe can fill up and block the child); read it with .output().
    """
    tmp = Path(tempfile.mkdtemp(prefix="peer-"))
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        popen = subprocess.Popen(
            list(args), cwd=cwd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc = RunningProcess(popen, out, err)
    deadline = time.monotonic() + timeout
    try:
        yield proc
    finally:
        stop_process_group(popen, grace=max(0.0, min(3.0, deadline - time.monotonic())))


def stop_process_group(popen: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group led by `popen`, wait `grace` s, then SIGKILL it (bounded)."""
    pgid = popen.pid  # start_new_session=True makes the child its own group leader
    if popen.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            popen.wait(timeout=max(grace, 0.2))
        except subprocess.TimeoutExpired:
            pass
    # Children (e.g. dcmqrscp's forked association handlers) may outlive the leader.
    _signal_group(pgid, signal.SIGKILL)
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"process {popen.pid} survived SIGKILL") from exc


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_tool(
    args: Sequence[str], *, timeout: float = 30.0, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived peer command to completion (bounded), in its own process group."""
    popen = subprocess.Popen(
        list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(popen.pid, signal.SIGKILL)
        out, err = popen.communicate(timeout=5)
        raise PeerError(f"{args[0]} timed out after {timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(list(args), popen.returncode, out, err)


# --------------------------------------------------------------------------- DICOM test data


def make_ct(
    path: str | Path,
    *,
    patient_id: str = "PID001",
    patient_name: str = "Test^Patient",
    study_uid: str = "1.2.826.0.1.3680043.2.1143.1",
    series_uid: str = "1.2.826.0.1.3680043.2.1143.1.1",
    sop_uid: str = "1.2.826.0.1.3680043.2.1143.1.1.1",
    study_id: str = "S1",
    accession_number: str = "ACC1",
    modality: str = "CT",
    rows: int = 4,
    columns: int = 4,
) -> Path:
    """Write a small valid Part 10 CT Image Storage file (explicit VR LE, 16-bit pixels)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.AccessionNumber = accession_number
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _set_pixels(ds, rows, columns)
    out = Path(path)
    ds.save_as(out, enforce_file_format=True)
    return out


def _set_pixels(ds: Dataset, rows: int, columns: int) -> None:
    """Attach a tiny deterministic MONOCHROME2 16-bit pixel array."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = b"".join(((i * 37) % 4096).to_bytes(2, "little") for i in range(rows * columns))


# --------------------------------------------------------------------------- dcmqrscp


def dcmqrscp_config(
    tmpdir: str | Path,
    aet: str,
    port: int,
    peers: Mapping[str, tuple[str, int]] | None = None,
    *,
    max_pdu: int = 16384,
) -> Path:
    """Write a dcmqrscp config with one read/write storage area for `aet`; return its path.

    `peers` maps AE titles to (host, port): they become the HostTable, i.e. the C-MOVE
    destinations dcmqrscp knows. The storage folder is <tmpdir>/<aet>.
    """
    tmp = Path(tmpdir)
    storage = tmp / aet
    storage.mkdir(parents=True, exist_ok=True)
    hosts = [
        f"peer{i} = ({peer_aet}, {host}, {peer_port})"
        for i, (peer_aet, (host, peer_port)) in enumerate(sorted((peers or {}).items()))
    ]
    lines = [
        f"NetworkTCPPort  = {port}",
        f"MaxPDUSize      = {max_pdu}",
        "MaxAssociations = 16",
        "HostTable BEGIN",
        *hosts,
        "HostTable END",
        "VendorTable BEGIN",
        "VendorTable END",
        "AETable BEGIN",
        f"{aet} {storage} RW (200, 64mb) ANY",
        "AETable END",
        "",
    ]
    cfg = tmp / "dcmqrscp.cfg"
    cfg.write_text("\n".join(lines))
    return cfg


def storage_dir(config: str | Path, aet: str) -> Path:
    """The storage folder dcmqrscp_config() made for `aet`."""
    return Path(config).parent / aet


def index_files(config: str | Path, aet: str, files: Sequence[str | Path]) -> None:
    """Copy `files` into the storage folder of `aet` and register them with dcmqridx."""
    import shutil

    folder = storage_dir(config, aet)
    targets = []
    for f in files:
        target = folder / Path(f).name
        if Path(f).resolve() != target.resolve():
            shutil.copyfile(f, target)
        targets.append(str(target))
    result = run_tool([dcmtk("dcmqridx"), str(folder), *targets], timeout=30)
    if result.returncode != 0:
        raise PeerError(f"dcmqridx failed ({result.returncode}): {result.stdout}{result.stderr}")


@contextlib.contextmanager
def run_dcmqrscp(
    config: str | Path,
    port: int,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    startup: float = 10.0,
) -> Iterator[RunningProcess]:
    """Start dcmqrscp on `config`, wait until it listens, yield it.

    dcmqrscp forks a child per association (its --single-process mode crashes after the first
    association in 3.6.7); the children stay in the process group that run_process() kills.
    """
    args = [dcmtk("dcmqrscp"), "-c", str(config), *extra_args, str(port)]
    with run_process(args, cwd=Path(config).parent, timeout=timeout) as proc:
        _wait_listening(proc, port, startup)
        yield proc


@contextlib.contextmanager
def run_storescp(
    folder: str | Path,
    port: int,
    *,
    aet: str = "STORESCP",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    startup: float = 10.0,
) -> Iterator[RunningProcess]:
    """Start DCMTK storescp writing into `folder`, wait until it listens, yield it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    args = [dcmtk("storescp"), "-aet", aet, "-od", str(folder), *extra_args, str(port)]
    with run_process(args, cwd=folder, timeout=timeout) as proc:
        _wait_listening(proc, port, startup)
        yield proc


def is_listening(port: int) -> bool | None:
    """Whether a socket listens on TCP `port` per /proc/net/tcp; None if that is unreadable.

    Unlike a probe connection this leaves no trace in the peer (DCMTK logs and may misbehave
    on an empty association).
    """
    try:
        text = Path("/proc/net/tcp").read_text()
    except OSError:
        return None
    want = f":{port:04X}"
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":  # 0A = LISTEN
            return True
    return False


def _wait_listening(proc: RunningProcess, port: int, startup: float) -> None:
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"peer exited early ({proc.poll()})\n{proc.output()}")
        listening = is_listening(port)
        if listening is None:
            wait_port(port, timeout=max(0.1, deadline - time.monotonic()))
            return
        if listening:
            return
        time.sleep(0.05)
    raise PeerError(f"peer not listening on {port} after {startup}s\n{proc.output()}")
