"""The ``dimse`` command line: ``python -m dimse find/echo`` against ``python -m dimse qrscp``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimse.cli import main
from tests.peers import free_port, make_ct, run_process, run_tool

pytestmark = pytest.mark.timeout(120)
ROOT = "1.2.826.0.1.3680043.10.4545."


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("cli-store")
    for pid, study in (("P1", "1"), ("P1", "2"), ("P2", "3")):
        make_ct(folder / f"{study}.dcm", patient_id=pid, study_uid=ROOT + study,
                series_uid=f"{ROOT}{study}.1", sop_uid=f"{ROOT}{study}.1.1")
    port = free_port()
    args = [sys.executable, "-m", "dimse", "qrscp", "--storage", str(folder), "--aet", "CLIQR",
            "--port", str(port), "--db", str(folder.parent / "cli-index.sqlite")]
    with run_process(args, timeout=300) as proc:
        from tests.peers import _wait_listening

        _wait_listening(proc, port, 20)
        yield port
        assert proc.poll() is None, proc.output()


def dimse(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool([sys.executable, "-m", "dimse", *args], timeout=60)


def test_find_prints_matches(qrscp: int) -> None:
    r = dimse("find", "-S", "-aec", "CLIQR", "-k", "QueryRetrieveLevel=STUDY", "-k",
              "StudyInstanceUID", "-k", "PatientID=P1", "127.0.0.1", str(qrscp))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("# match") == 2
    assert ROOT + "1" in r.stdout and ROOT + "2" in r.stdout
    assert r.stderr == ""


def test_find_json_with_tags_and_limit(qrscp: int) -> None:
    r = dimse("find", "-P", "--json", "-aec", "CLIQR", "-k", "0008,0052=PATIENT",
              "-k", "(0010,0020)", "-k", "PatientName=", "127.0.0.1", str(qrscp))
    assert r.returncode == 0, r.stderr
    matches = json.loads(r.stdout)
    assert sorted(m["00100020"]["Value"][0] for m in matches) == ["P1", "P2"]
    assert all(m["00080052"]["Value"] == ["PATIENT"] for m in matches)
    r = dimse("find", "--json", "--limit", "1", "-aec", "CLIQR", "-k", "StudyInstanceUID",
              "127.0.0.1", str(qrscp))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 1


def test_find_patient_study_only_and_echo(qrscp: int) -> None:
    r = dimse("find", "-O", "-aec", "CLIQR", "-k", "QueryRetrieveLevel=STUDY", "-k",
              "PatientID=P2", "-k", "StudyInstanceUID", "127.0.0.1", str(qrscp))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("# match") == 1
    r = dimse("echo", "-aec", "CLIQR", "127.0.0.1", str(qrscp))
    assert r.returncode == 0 and "success" in r.stdout


@pytest.mark.parametrize(("args", "code", "words"), [
    (["-k", "NoSuchKeyword=1"], 2, "NoSuchKeyword"),
    (["-k", "QueryRetrieveLevel=SERIES", "-k", "Modality"], 2, "StudyInstanceUID"),
    (["--lenient", "-k", "QueryRetrieveLevel=SERIES", "-k", "Modality"], 1, "0xA900"),
    (["-P", "-k", "QueryRetrieveLevel=IMAGE", "-k", "SOPInstanceUID"], 2, "PatientID"),
    (["-aec", "WRONG", "-k", "StudyInstanceUID"], 1, "called AE title not recognized"),
])
def test_find_user_errors_are_one_line(qrscp: int, args: list[str], code: int,
                                       words: str) -> None:
    full = ["find", "-aec", "CLIQR", *args, "127.0.0.1", str(qrscp)]
    r = dimse(*full)
    assert r.returncode == code, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
    assert words in errors[0]
    assert "Traceback" not in r.stderr


def test_unreachable_host_is_one_line() -> None:
    port = free_port()  # nothing listens there
    r = dimse("find", "-k", "StudyInstanceUID", "127.0.0.1", str(port))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot connect" in r.stderr
    r = dimse("echo", "127.0.0.1", str(port))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_verbose_logs_debug(qrscp: int) -> None:
    r = dimse("find", "-v", "-aec", "CLIQR", "-k", "StudyInstanceUID=1.2.3.999",
              "127.0.0.1", str(qrscp))
    assert r.returncode == 0, r.stderr
    assert "DEBUG" in r.stderr and "0 match(es)" in r.stderr


def test_main_in_process_returns_exit_code() -> None:
    assert main(["find", "-k", "NoSuchKeyword", "127.0.0.1", "1"]) == 2


def test_qrscp_bad_storage_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = dimse("qrscp", "--storage", str(not_a_dir), "--aet", "X", "--port", "0")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not a folder" in r.stderr


def test_usage_error_exits_2() -> None:
    r = dimse("find", "127.0.0.1")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_qrscp_serves_a_folder_with_links_and_a_fifo(tmp_path: Path) -> None:
    """A dangling link, a link loop and a FIFO are reported and skipped; the server starts."""
    import os
    import time

    folder = tmp_path / "store"
    folder.mkdir()
    make_ct(folder / "ok.dcm", sop_uid=ROOT + "9.1.1")
    (folder / "dangling.dcm").symlink_to(folder / "gone.dcm")
    (folder / "loop.dcm").symlink_to(folder / "loop.dcm")
    os.mkfifo(folder / "pipe.dcm")
    port = free_port()
    args = [sys.executable, "-m", "dimse", "qrscp", "--storage", str(folder), "--aet", "LINKS",
            "--port", str(port)]
    with run_process(args, timeout=60) as proc:
        from tests.peers import _wait_listening

        _wait_listening(proc, port, 20)
        deadline = time.monotonic() + 10
        while "listening" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        out = proc.output()
        assert "serving 1 instance in 1 study (1 new, 0 removed, 3 not indexed)" in out, out
        warned = [line for line in out.splitlines() if "not indexed: " in line]
        for name in ("dangling.dcm", "loop.dcm", "pipe.dcm"):
            assert any(line.endswith(f"{name}: not a regular file of the folder")
                       for line in warned), out
        r = dimse("echo", "-aec", "LINKS", "127.0.0.1", str(port))
        assert r.returncode == 0, r.stderr
