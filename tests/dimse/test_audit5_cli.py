"""Fifth audit, command-line tools and archive lifecycle: the defects found by using
``dimse find/echo/qrscp`` as an operator and a DCMTK user would (each test failed before its fix).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dimse.archive import Archive
from dimse.archive_files import read_header
from dimse.cli import _parser, main
from tests.peers import _wait_listening, free_port, make_ct, run_process, run_tool

pytestmark = pytest.mark.timeout(120)
ROOT = "1.2.826.0.1.3680043.10.4545.5."


# --------------------------------------------------------------------------- arguments


def test_verbose_before_the_command_is_kept() -> None:
    """``dimse -v find`` (the -v that ``dimse --help`` shows) was reset by the command's own
    -v default and silently ignored."""
    args = _parser().parse_args(["-v", "find", "-k", "StudyInstanceUID", "127.0.0.1", "104"])
    assert args.verbose is True
    args = _parser().parse_args(["find", "-v", "-k", "StudyInstanceUID", "127.0.0.1", "104"])
    assert args.verbose is True
    args = _parser().parse_args(["echo", "127.0.0.1", "104"])
    assert args.verbose is False


@pytest.mark.parametrize("argv", [
    ["qrscp", "--storage", "x", "--aet", "X", "--port", "70000"],  # listened on 70000 % 65536
    ["qrscp", "--storage", "x", "--aet", "X", "--port", "-1"],
    ["echo", "127.0.0.1", "70000"],
    ["echo", "127.0.0.1", "-5"],
    ["echo", "127.0.0.1", "0"],
    ["find", "--timeout", "nan", "127.0.0.1", "104"],  # "unexpected ValueError"
    ["find", "--timeout", "0", "127.0.0.1", "104"],
    ["echo", "--timeout", "-1", "127.0.0.1", "104"],
])
def test_out_of_range_port_and_timeout_are_usage_errors(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_qrscp_port_zero_and_max_are_accepted() -> None:
    for port in ("0", "65535"):
        args = _parser().parse_args(["qrscp", "--storage", "x", "--aet", "X", "--port", port])
        assert args.port == int(port)


@pytest.mark.parametrize("key", ["NumberOfStudyRelatedInstances=abc", "PatientWeight=heavy"])
def test_bad_key_value_is_a_usage_error(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A value pydicom refuses for the VR (IS/DS) was 'unexpected ValueError', exit 1, with no
    word of which -k key was wrong."""
    assert main(["find", "-k", key, "127.0.0.1", str(free_port())]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("dimse find: error: bad -k key") and key in err


# --------------------------------------------------------------------------- output


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``dimse qrscp`` on a folder with a non-ASCII patient name (UTF-8)."""
    folder = tmp_path_factory.mktemp("audit5-cli")
    make_ct(folder / "a.dcm", patient_id="P1", study_uid=ROOT + "1", series_uid=ROOT + "1.1",
            sop_uid=ROOT + "1.1.1")
    ds = pydicom.dcmread(folder / "a.dcm")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=山田^太郎"
    ds.save_as(folder / "a.dcm")
    port = free_port()
    with run_process(_qrscp_args(folder, port), timeout=300) as proc:
        _wait_listening(proc, port, 20)
        yield port
        assert proc.poll() is None, proc.output()


def _qrscp_args(folder: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dimse", "qrscp", "--storage", str(folder), "--aet", "A5",
            "--port", str(port), *extra]


def _find_args(port: int) -> list[str]:
    return [sys.executable, "-m", "dimse", "find", "-aec", "A5", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "PatientName", "-k", "StudyInstanceUID", "127.0.0.1", str(port)]


def test_closed_stdout_pipe_is_quiet(qrscp: int) -> None:
    """``dimse find ... | head`` printed 'error: [Errno 32] Broken pipe' and exited 1; now it
    stops quietly with 141, what a C tool killed by SIGPIPE gives."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first match is printed
    try:
        proc = subprocess.run(_find_args(qrscp), stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_non_ascii_names_on_an_ascii_stdout(qrscp: int) -> None:
    """A Japanese patient name on an ASCII stdout was 'unexpected UnicodeEncodeError', exit 1,
    and nothing printed; now the characters are escaped."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    r = subprocess.run(_find_args(qrscp), capture_output=True, text=True, timeout=60, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "M\\xfcller^J\\xfcrgen=\\u5c71\\u7530^\\u592a\\u90ce" in r.stdout


def test_pydicom_value_warning_is_one_log_line() -> None:
    """A doubtful -k value was reported twice: pydicom's log record, then a raw Python warning
    with a line of pydicom's source."""
    r = run_tool([sys.executable, "-m", "dimse", "find", "-k", "StudyDate=garbage",
                  "127.0.0.1", str(free_port())], timeout=60)
    assert r.returncode == 1  # nothing listens there
    assert "UserWarning" not in r.stderr and "warn_and_log" not in r.stderr, r.stderr
    assert r.stderr.count("Invalid value for VR DA") == 1, r.stderr


def test_qrscp_start_does_not_print_pydicom_noise(tmp_path: Path) -> None:
    """Indexing a file whose encoding pydicom corrects printed a warning naming no file (and
    the same again as a raw Python warning)."""
    shutil.copy(get_testdata_file("SC_rgb_jpeg.dcm"), tmp_path / "mislabelled.dcm")
    port = free_port()
    with run_process(_qrscp_args(tmp_path, port), timeout=60) as proc:
        _wait_listening(proc, port, 20)
        deadline = time.monotonic() + 10
        while "listening" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        out = proc.output()
    assert "(1 new, 0 removed, 0 not indexed)" in out, out
    assert "pydicom" not in out and "Warning" not in out, out


def test_index_database_that_cannot_be_opened_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only folder (or a --db in a missing folder) was 'unexpected OperationalError:
    unable to open database file', naming no file."""
    db = tmp_path / "missing" / "index.sqlite"
    code = main(["qrscp", "--storage", str(tmp_path), "--aet", "X", "--port", "0",
                 "--db", str(db)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(db) in err and "--db" in err, err


# --------------------------------------------------------------------------- lifecycle


def _study_uids(port: int) -> set[str]:
    r = run_tool([sys.executable, "-m", "dimse", "find", "--json", "-aec", "A5", "-k",
                  "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", str(port)],
                 timeout=60)
    assert r.returncode == 0, r.stderr
    return {m["0020000D"]["Value"][0] for m in json.loads(r.stdout)}


def _until(predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)


def _rescan_totals(output: str) -> tuple[int, int]:
    """(new, removed) summed over the 'rescan: N new, M removed' lines of qrscp's log."""
    found = re.findall(r"rescan: (\d+) new, (\d+) removed", output)
    return sum(int(n) for n, _ in found), sum(int(m) for _, m in found)


def test_files_added_and_removed_while_running_are_found(tmp_path: Path) -> None:
    """The folder was indexed at start only: a file copied in while qrscp ran stayed invisible
    and a deleted one kept matching until a restart. ``--rescan`` (default 60 s) indexes them;
    a file that stays unreadable or duplicated is warned about once, not at every rescan."""
    make_ct(tmp_path / "a.dcm", study_uid=ROOT + "1", series_uid=ROOT + "1.1",
            sop_uid=ROOT + "1.1.1")
    shutil.copy(tmp_path / "a.dcm", tmp_path / "a-copy.dcm")  # same SOP Instance UID
    (tmp_path / "notes.txt").write_text("not DICOM")
    port = free_port()
    with run_process(_qrscp_args(tmp_path, port, "--rescan", "0.2"), timeout=120) as proc:
        _wait_listening(proc, port, 20)
        assert _study_uids(port) == {ROOT + "1"}
        staging = tmp_path.parent / f"{tmp_path.name}-staging"
        staging.mkdir()
        make_ct(staging / "b.dcm", patient_id="P2", study_uid=ROOT + "2",
                series_uid=ROOT + "2.1", sop_uid=ROOT + "2.1.1")
        (staging / "b.dcm").rename(tmp_path / "b.dcm")  # never seen half-written
        (tmp_path / "a.dcm").unlink()
        (tmp_path / "a-copy.dcm").unlink()
        _until(lambda: _study_uids(port) == {ROOT + "2"}, "b.dcm found, a.dcm dropped")
        # a rescan may fall between the steps above: count over every rescan line
        _until(lambda: _rescan_totals(proc.output()) == (1, 1), "the rescans reported")
        time.sleep(1)  # a few more rescans
        out = proc.output()
    assert out.count("notes.txt") == 1, out
    assert out.count("SOP Instance UID already stored") == 1, out


@pytest.mark.parametrize("title", ["", "   ", "X" * 17, "A\\B", "Ä5", "A\tB"])
@pytest.mark.parametrize("option", [["qrscp", "--storage", "x", "--port", "0", "--aet"],
                                    ["echo", "127.0.0.1", "104", "-aet"],
                                    ["find", "127.0.0.1", "104", "-aec"]])
def test_impossible_ae_titles_are_usage_errors(option: list[str], title: str) -> None:
    """``qrscp --aet`` of 17 characters (or empty, or with a backslash) was accepted: the
    server listened under a title no peer can send and rejected every association."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([*option, title])
    assert exc.value.code == 2


def test_ae_title_outer_spaces_are_dropped() -> None:
    args = _parser().parse_args(["qrscp", "--storage", "x", "--port", "0", "--aet", " A5 "])
    assert args.aet == "A5"
    args = _parser().parse_args(["echo", "-aec", "ARCHIVE ", "127.0.0.1", "104"])
    assert args.called_aet == "ARCHIVE"


@pytest.mark.parametrize("cut", ["header", "pixel data", "last byte"])
def test_truncated_files_are_not_indexed(tmp_path: Path, cut: str) -> None:
    """A file cut short (a copy interrupted, a full disk) was indexed and served: pydicom reads
    it up to where it breaks. The archive's C-STORE already refused such data sets."""
    whole = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    pixels = whole.index(b"\xe0\x7f\x10\x00")
    end = {"header": 4000, "pixel data": pixels + 100, "last byte": len(whole) - 1}[cut]
    (tmp_path / "cut.dcm").write_bytes(whole[:end])
    (tmp_path / "whole.dcm").write_bytes(whole)
    with pytest.raises(ValueError, match="cut short or malformed"):
        read_header(tmp_path / "cut.dcm")
    assert read_header(tmp_path / "whole.dcm").SOPInstanceUID
    with Archive(tmp_path, tmp_path / "index.sqlite") as archive:
        stats = archive.index()
    assert stats.failed == (tmp_path / "cut.dcm",)


def test_well_formed_test_files_stay_indexed() -> None:
    """The structure check refuses only broken files: of pydicom's test files, only the two
    made truncated on purpose are newly refused."""
    refused = []
    for name in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm")):
        try:
            read_header(name)
        except ValueError as exc:
            if "cut short" in str(exc):
                refused.append(Path(name).name)
    assert sorted(refused) == ["MR_truncated.dcm", "rtplan_truncated.dcm"]


def test_archive_counts_what_qrscp_says_it_serves(tmp_path: Path) -> None:
    """The start-up line said only what changed ("0 new" after a restart of a full archive)."""
    for n, (study, sop) in enumerate([("1", "1.1.1"), ("1", "1.1.2"), ("2", "2.1.1")]):
        make_ct(tmp_path / f"{n}.dcm", study_uid=ROOT + study, series_uid=ROOT + study + ".1",
                sop_uid=ROOT + sop)
    with Archive(tmp_path) as archive:
        assert archive.counts() == (0, 0)
        archive.index()
        assert archive.counts() == (2, 3)
