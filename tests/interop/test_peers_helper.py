"""Tests of tests/peers.py: the helpers every interop test relies on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests import peers

pytestmark = pytest.mark.interop


def test_dcmtk_returns_absolute_dcmtk_binary() -> None:
    path = peers.dcmtk("echoscu")
    assert path == "/usr/bin/echoscu"
    with open(path, "rb") as fh:
        assert fh.read(4) == b"\x7fELF"
    assert peers.dcmtk_version().startswith("v3.")


def test_dcmtk_missing_tool_skips_or_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        peers.dcmtk("no-such-dcmtk-tool")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception):
        peers.dcmtk("no-such-dcmtk-tool")


def test_dcmtk_rejects_a_python_console_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "findscu"
    fake.write_text("#!/usr/bin/env python3\nprint('pynetdicom')\n")
    fake.chmod(0o755)
    monkeypatch.setattr(peers, "DCMTK_DIR", tmp_path)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not an ELF"):
        peers.dcmtk("findscu")


def test_free_port_is_bindable_and_wait_port_sees_listener() -> None:
    port = peers.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as srv:
        srv.bind((peers.LOCALHOST, port))
        srv.listen()
        assert peers.is_listening(port) in (True, None)
        peers.wait_port(port, timeout=5)


def test_wait_port_times_out_when_nothing_listens() -> None:
    port = peers.free_port()
    with pytest.raises(TimeoutError):
        peers.wait_port(port, timeout=0.3)


def test_run_process_kills_the_whole_group() -> None:
    # A parent that ignores SIGTERM and a grandchild: both must be gone afterwards.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with peers.run_process([sys.executable, "-c", code], timeout=5) as proc:
        grandchild = _read_pid(proc)
        assert proc.poll() is None
    assert proc.poll() is not None
    # SIGKILL is delivered asynchronously and the orphan is reaped by init: allow it a moment.
    deadline = time.monotonic() + 5.0
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(grandchild)
    assert "--- stdout ---" in proc.output()


def _read_pid(proc: peers.RunningProcess) -> int:
    """Wait (bounded) until the child printed its grandchild's pid."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = proc.output().split("--- stdout ---\n", 1)[1].split("\n", 1)[0].strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"no pid printed\n{proc.output()}")


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_make_ct_writes_valid_part10(tmp_path: Path) -> None:
    path = peers.make_ct(tmp_path / "ct.dcm", patient_id="P9", sop_uid="1.2.3.4.5")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == peers.CT_IMAGE_STORAGE
    assert ds.SOPInstanceUID == "1.2.3.4.5"
    assert ds.PatientID == "P9"
    assert ds.pixel_array.shape == (4, 4)
    assert peers.run_tool([peers.dcmtk("dcmdump"), str(path)]).returncode == 0


def test_echoscu_against_helper_dcmqrscp(tmp_path: Path) -> None:
    port = peers.free_port()
    cfg = peers.dcmqrscp_config(tmp_path, "QRSCP", port, {"DEST": ("127.0.0.1", 1)})
    text = cfg.read_text()
    assert f"NetworkTCPPort  = {port}" in text
    assert "(DEST, 127.0.0.1, 1)" in text
    with peers.run_dcmqrscp(cfg, port) as proc:
        ok = peers.run_tool([peers.dcmtk("echoscu"), "-aec", "QRSCP", "127.0.0.1", str(port)])
        bad = peers.run_tool([peers.dcmtk("echoscu"), "-aec", "WRONG", "127.0.0.1", str(port)])
    assert ok.returncode == 0, ok.stderr + proc.output()
    assert bad.returncode != 0
    assert "Reject" in bad.stderr + bad.stdout


def test_findscu_finds_indexed_file(tmp_path: Path) -> None:
    port = peers.free_port()
    cfg = peers.dcmqrscp_config(tmp_path / "qr", "QRSCP", port)
    ct = peers.make_ct(tmp_path / "ct.dcm", patient_id="FINDME")
    peers.index_files(cfg, "QRSCP", [ct])
    args = [peers.dcmtk("findscu"), "-P", "-aec", "QRSCP", "-k", "QueryRetrieveLevel=PATIENT",
            "-k", "PatientID=FINDME", "127.0.0.1", str(port)]
    with peers.run_dcmqrscp(cfg, port) as proc:
        result = peers.run_tool(args)
    assert result.returncode == 0, result.stderr + proc.output()
    assert "FINDME" in result.stdout + result.stderr


def test_run_tool_times_out() -> None:
    with pytest.raises(peers.PeerError, match="timed out"):
        peers.run_tool([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_run_process_collects_output() -> None:
    with peers.run_process([sys.executable, "-c", "print('hello'); import sys; "
                            "print('oops', file=sys.stderr)"]) as proc:
        proc.wait(timeout=10)
    assert "hello" in proc.output() and "oops" in proc.output()
    assert proc.popen.returncode == 0
    assert isinstance(proc.popen, subprocess.Popen)


def test_recorder_captures_echoscu_session(tmp_path: Path) -> None:
    from tests.recorder import Direction, recording

    port = peers.free_port()
    cfg = peers.dcmqrscp_config(tmp_path, "QRSCP", port)
    with peers.run_dcmqrscp(cfg, port), recording(port) as rec:
        result = peers.run_tool(
            [peers.dcmtk("echoscu"), "-aec", "QRSCP", "127.0.0.1", str(rec.port)]
        )
        rec.wait_closed(1, timeout=10)
    assert result.returncode == 0, result.stderr
    got = [(p.pdu_type, p.direction) for p in rec.pdus()]
    up, down = Direction.TO_SERVER, Direction.TO_CLIENT
    assert got == [(1, up), (2, down), (4, up), (4, down), (5, up), (6, down)]
    conn = rec.proxy.connections[0]
    assert conn.trailing(up) == b"" and conn.trailing(down) == b""
    assert b"".join(p.data for p in rec.pdus() if p.direction is up) == conn.stream(up)


def test_split_pdus_keeps_whole_pdus_only() -> None:
    from tests.recorder import split_pdus

    release = bytes.fromhex("05000000000400000000")
    assert split_pdus(release + release[:7]) == [release]
    assert split_pdus(b"") == []
