"""Fifth audit, command-line tools and archive lifecycle: the defects found by using
``dimse find/echo/qrscp`` as an operator and a DCMTK user would (each test failed before its fix).
"""

from __future__ import annotations

import pytest

from dimse.cli import _parser, main
from tests.peers import free_port

pytestmark = pytest.mark.timeout(120)


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
