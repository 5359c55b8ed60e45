"""Command-line tools: ``dimse echo``, ``dimse find`` and ``dimse qrscp``.

    dimse qrscp --storage DIR --aet ARCHIVE --port 11112 [--bind ADDR] [--db PATH] \\
        [--lenient] [--idle-timeout SECONDS] [--max-associations N] [--rescan SECONDS]
    dimse find -S -k QueryRetrieveLevel=STUDY -k PatientName=SMITH* -k StudyInstanceUID \\
        -aec ARCHIVE 127.0.0.1 11112 [--json] [--limit N] [--lenient]
    dimse echo -aec ARCHIVE 127.0.0.1 11112

A user mistake (bad key, unreachable host, rejected association, identifier breaking the
model's rules, a failure status) prints one line to stderr and exits non-zero; ``-v`` turns on
debug logging.

``dimse qrscp --idle-timeout`` (default 600 s, 0: never) aborts an association on which nothing
has moved for that long while no request is in progress, such as a peer that sent part of a PDU
header and stalled; ``--max-associations N`` rejects (RJ transient, "local limit exceeded") the
associations beyond N at once, so stalled peers cannot take every slot. The folder is indexed
at start and then every ``--rescan`` seconds (default 60; 0: at start only), so files copied in
or deleted by hand while it runs are found without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import signal
import sqlite3
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from pydicom.dataset import Dataset

from pdu.pdus import is_ae_title

from .connect import run
from .errors import (
    AssociationRejected,
    DicomError,
    IdentifierError,
    NotNegotiatedError,
)
from .keys import KeyError_, KeySpec, apply_keys, parse_key
from .qr import MODELS, QR_LEVEL, Mode, QueryModel

if TYPE_CHECKING:
    from .archive import Archive

__all__ = ["main"]

log = logging.getLogger("dimse.cli")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
#: Exit code when stdout's reader went away (``dimse find ... | head``): 128 + SIGPIPE, what a
#: C tool killed by SIGPIPE reports to the shell.
EXIT_PIPE: Final = 141
#: ``dimse qrscp --idle-timeout`` default: a stalled peer is dropped after 10 minutes.
DEFAULT_IDLE_TIMEOUT: Final = 600.0
#: ``dimse qrscp --rescan`` default: files copied into or deleted from the folder by hand are
#: found within a minute (an lstat per file; a changed file is re-read).
DEFAULT_RESCAN: Final = 60.0

_REJECT_REASONS: Final = {
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized", (1, 7): "called AE title not recognized",
    (2, 1): "no reason given", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


class _OutputClosed(Exception):
    """stdout's reader closed the pipe (``dimse find ... | head``): stop quietly."""


class UserError(Exception):
    """A mistake to report in one line (exit code in ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- parsing


def _parser() -> argparse.ArgumentParser:
    # -v before or after the command: the command's own -v must not reset the first one to
    # False (argparse copies a subparser's defaults over the namespace), hence SUPPRESS there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    parser = argparse.ArgumentParser(prog="dimse", description="DICOM command-line tools: "
                                     "echo, find and qrscp.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def network(p: argparse.ArgumentParser) -> None:
        p.add_argument("-aet", "--calling-aet", type=_ae_title, default="DIMSE_PY",
                       help="our AE title")
        p.add_argument("-aec", "--called-aet", type=_ae_title, default="ANY-SCP",
                       help="the peer's AE title")
        p.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS",
                       help="connect/DIMSE timeout (default 30)")
        p.add_argument("host")
        p.add_argument("port", type=_port)

    echo = sub.add_parser("echo", parents=[common], help="C-ECHO a peer")
    network(echo)

    find = sub.add_parser("find", parents=[common], help="C-FIND query")
    model = find.add_mutually_exclusive_group()
    model.add_argument("-P", "--patient", dest="model", action="store_const",
                       const=QueryModel.PATIENT_ROOT, help="Patient Root model")
    model.add_argument("-S", "--study", dest="model", action="store_const",
                       const=QueryModel.STUDY_ROOT, help="Study Root model (default)")
    model.add_argument("-O", "--psonly", dest="model", action="store_const",
                       const=QueryModel.PATIENT_STUDY_ONLY, help="Patient/Study Only model")
    find.add_argument("-k", "--key", action="append", default=[], metavar="KEY[=VALUE]",
                      help="keyword or tag, with a matching value or empty (return key)")
    find.add_argument("--json", action="store_true", help="print matches as DICOM JSON")
    find.add_argument("--lenient", action="store_true",
                      help="send an identifier that breaks the rules (warn only)")
    find.add_argument("--relational", action="store_true",
                      help="propose relational queries and use the relational rules")
    find.add_argument("--limit", type=int, default=None, help="stop (C-CANCEL) after N matches")
    network(find)

    qrscp = sub.add_parser("qrscp", parents=[common], help="serve a folder as a Q/R SCP")
    qrscp.add_argument("--storage", required=True, help="folder of DICOM files (indexed)")
    qrscp.add_argument("--aet", type=_ae_title, required=True, help="our AE title")
    qrscp.add_argument("--port", type=_listen_port, required=True,
                       help="TCP port (0: any free port)")
    qrscp.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    qrscp.add_argument("--db", default=None, help="index database (default in the folder)")
    qrscp.add_argument("--lenient", action="store_true",
                       help="process identifiers with hierarchy violations relationally")
    qrscp.add_argument("--idle-timeout", type=_seconds, default=DEFAULT_IDLE_TIMEOUT,
                       metavar="SECONDS",
                       help="abort an association quiet for this long, e.g. a peer stalled "
                            f"mid-PDU (default {DEFAULT_IDLE_TIMEOUT:g}; 0: never)")
    qrscp.add_argument("--max-associations", type=_count, default=0, metavar="N",
                       help="reject associations beyond N at once (default 0: no limit)")
    qrscp.add_argument("--rescan", type=_seconds, default=DEFAULT_RESCAN, metavar="SECONDS",
                       help="index files added, changed or removed in the folder out of band "
                            f"every SECONDS (default {DEFAULT_RESCAN:g}; 0: at start only)")
    return parser


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0 and finite: {text!r}")
    return value


def _ae_title(text: str) -> str:
    """argparse type: an AE title, 1 to 16 printable ASCII characters without a backslash
    (PS3.5 AE; outer spaces are not significant and are dropped). A ``qrscp --aet`` that no
    peer can send was accepted, and every association then rejected."""
    value = text.strip(" ")
    if not value:
        raise argparse.ArgumentTypeError("an AE title cannot be empty or only spaces")
    if not is_ae_title(value):
        raise argparse.ArgumentTypeError(
            f"not an AE title (1 to 16 printable ASCII characters, no backslash): {text!r}")
    return value


def _timeout(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"a timeout must be more than 0 seconds: {text!r}")
    return value


def _listen_port(text: str) -> int:
    """argparse type: a TCP port to listen on, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0 to 65535: {text!r}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port to connect to, 1 to 65535."""
    value = _listen_port(text)
    if value == 0:
        raise argparse.ArgumentTypeError("port 0 cannot be connected to")
    return value


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _identifier(keys: Sequence[str], model: QueryModel) -> Dataset:
    """The identifier the ``-k`` keys describe; a key or value that cannot be used (such as
    ``NumberOfStudyRelatedInstances=abc``, which pydicom refuses) is a usage error."""
    ds = Dataset()
    for key in keys:
        try:
            apply_keys([_level_upper(parse_key(key))], ds)
        except KeyError_ as exc:
            raise UserError(f"bad -k key: {exc}", EXIT_USAGE) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise UserError(f"bad -k key {key!r}: {exc}", EXIT_USAGE) from None
    if QR_LEVEL not in ds:
        ds.QueryRetrieveLevel = MODELS[model].levels[0].value
    return ds


def _level_upper(spec: KeySpec) -> KeySpec:
    """``QueryRetrieveLevel=study`` as ``QueryRetrieveLevel=STUDY``: the level is sent as its
    defined term anyway (CS is upper case), and pydicom would warn about the value first."""
    if spec.path == ((QR_LEVEL, 0),) and spec.value is not None:
        return dataclasses.replace(spec, value=spec.value.upper())
    return spec


# --------------------------------------------------------------------------- commands


async def _echo(args: argparse.Namespace) -> int:
    from .connect import connect

    async with connect(args.host, args.port, called_ae=args.called_aet,
                       calling_ae=args.calling_aet, connect_timeout=args.timeout,
                       dimse_timeout=args.timeout) as assoc:
        status = await assoc.echo()
    if status != 0:
        raise UserError(f"C-ECHO answered with status 0x{status:04X}")
    print(f"C-ECHO {args.host}:{args.port} ({args.called_aet}): success")
    return EXIT_OK


def _emit(out: TextIO, text: str, *, flush: bool = False) -> None:
    """Write to stdout; a closed pipe becomes :class:`_OutputClosed` (not an error to report,
    and not to be confused with a peer's socket closing)."""
    try:
        out.write(text)
        if flush:
            out.flush()
    except BrokenPipeError:
        raise _OutputClosed from None


def _json_dict(ds: Dataset, where: str = "") -> dict[str, object]:
    """``ds`` in the DICOM JSON model (PS3.18 F.2), element by element, so that one value the
    model cannot hold (an IS of ``abc``, a DS of ``1,5``: PS3.5 6.2 forbids them, yet a peer sends
    them) does not lose the match: it is written as the strings received, with a warning naming
    the tag, and a sequence holding one keeps its other items and elements."""
    result: dict[str, object] = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        try:
            result[key] = elem.to_json_dict(None, 1024)
            continue
        except (ValueError, TypeError, OverflowError) as exc:
            problem = exc
        path = f"{where}({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            result[key] = {"vr": "SQ", "Value": [_json_dict(item, f"{path}[{i}]")
                                                 for i, item in enumerate(elem.value)]}
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        log.warning("match value %s %s is not valid for its VR (%s); written as received",
                    path, elem.VR, problem)
        result[key] = {"vr": elem.VR,
                       "Value": [None if v is None or v == "" else str(v) for v in values]}
    return result


def _write_match(out: TextIO, ds: Dataset, index: int, as_json: bool) -> None:
    if as_json:
        _emit(out, ("[\n" if index == 0 else ",\n") + json.dumps(_json_dict(ds)))
    else:
        _emit(out, f"# match {index + 1}\n{ds}\n\n")


def _stdout() -> TextIO:
    """stdout, set to print a character its encoding lacks (an ASCII or Latin-1 terminal and a
    Japanese patient name) as an escape instead of failing with UnicodeEncodeError."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    return sys.stdout


async def _find(args: argparse.Namespace) -> int:
    from .qr_scu import connect_qr, find

    model: QueryModel = args.model or QueryModel.STUDY_ROOT
    identifier = _identifier(args.key, model)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1", EXIT_USAGE)
    mode = Mode.RELATIONAL if args.relational else Mode.LENIENT if args.lenient else Mode.STRICT
    out = _stdout()
    count = 0
    try:
        async with connect_qr(args.host, args.port, called_ae=args.called_aet,
                              calling_ae=args.calling_aet, models=[model],
                              relational=args.relational, connect_timeout=args.timeout,
                              dimse_timeout=args.timeout) as assoc:
            async with contextlib.aclosing(find(assoc, identifier, model=model, mode=mode,
                                                limit=args.limit)) as matches:  # type: ignore[type-var]
                async for ds in matches:
                    _write_match(out, ds, count, args.json)
                    count += 1
    finally:
        # The JSON array is closed even when the query fails after some matches (a Failure
        # status, a dropped association): stdout stays valid JSON, the exit code tells the rest.
        if args.json and count:
            with contextlib.suppress(_OutputClosed):
                _emit(out, "\n]\n", flush=True)
    if args.json and not count:
        _emit(out, "[]\n", flush=True)
    log.info("%d match(es)", count)
    return EXIT_OK


async def _qrscp(args: argparse.Namespace) -> int:
    from .archive import Archive
    from .qr_scp import archive_server

    storage = Path(args.storage)
    if storage.exists() and not storage.is_dir():
        raise UserError(f"--storage {storage} is not a folder", EXIT_USAGE)
    try:
        archive = Archive(storage, args.db)
    except sqlite3.Error as exc:
        db = args.db or storage / ".archive.sqlite"
        hint = (" (a read-only folder? --db PATH puts the index elsewhere)"
                if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_READONLY,
                                                              sqlite3.SQLITE_CANTOPEN)
                else "")
        raise UserError(f"cannot open the index database {db}: {exc}{hint}") from None
    once = _OncePerMessage()
    logging.getLogger("dimse.archive").addFilter(once)
    try:
        stats = await archive.run(archive.index)
        failed = _report_failed(stats.failed, frozenset(), stats.reasons)
        server = archive_server(archive, args.aet, host=args.bind, port=args.port,
                                lenient=args.lenient, idle_timeout=args.idle_timeout or None,
                                max_associations=args.max_associations or None)
        async with server:
            studies, instances = archive.counts()
            print(f"dimse qrscp: {args.aet} listening on {args.bind}:{server.port}, serving "
                  f"{_plural(instances, 'instance')} in {_plural(studies, 'study', 'studies')} "
                  f"({stats.added + stats.updated} "
                  f"new, {stats.removed} removed, {len(stats.failed) + len(stats.duplicates)} "
                  f"not indexed{_pending(stats.pending, args.rescan)})", flush=True)
            rescans = asyncio.create_task(_rescan(archive, args.rescan, failed))
            try:
                signame = await _stopped()
                live = len(server.associations)
                aborted = f" ({_plural(live, 'association')} aborted)" if live else ""
                print(f"dimse qrscp: stopping on {signame}{aborted}", flush=True)
            finally:
                rescans.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rescans
    finally:
        logging.getLogger("dimse.archive").removeFilter(once)
        archive.close()
    return EXIT_OK


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


async def _stopped() -> str:
    """Return the signal's name on SIGTERM or SIGINT."""
    stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def on(sig: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on, sig)
    return await stop


def _pending(pending: tuple[Path, ...], rescan: float) -> str:
    """The start-up summary's note of files left for a later scan (a copy still running?)."""
    if not pending:
        return ""
    when = "the next rescan indexes them" if rescan else \
        "--rescan 0: not indexed before a restart"
    return f", {len(pending)} pending (being copied in?): {when}"


async def _rescan(archive: Archive, every: float, failed: frozenset[Path]) -> None:
    """Every ``every`` seconds (0: never), index the files added, changed or removed out of
    band, and say so when something changed. A failing scan (say the disk is full) is
    reported and the server goes on."""
    while every:
        await asyncio.sleep(every)
        try:
            stats = await archive.run(archive.index)
        except (sqlite3.Error, OSError) as exc:
            log.warning("rescan of %s failed: %s", archive.storage_dir, exc)
            continue
        new_failures = len(set(stats.failed) - failed)
        failed = _report_failed(stats.failed, failed, stats.reasons)
        if stats.added or stats.updated or stats.removed or new_failures:
            print(f"dimse qrscp: rescan: {stats.added + stats.updated} new, "
                  f"{stats.removed} removed, {new_failures} newly not indexed", flush=True)


def _report_failed(failed: Sequence[Path], known: frozenset[Path],
                   reasons: Mapping[Path, str]) -> frozenset[Path]:
    """Warn about the files that could not be indexed, each with its reason, except those
    already reported by the previous scan; the set to pass next time."""
    for bad in failed:
        if bad not in known:
            log.warning("not indexed: %s: %s", bad, reasons.get(bad) or "not a regular, "
                        "readable DICOM file with Study/Series/SOP Instance UIDs")
    return frozenset(failed)


class _OncePerMessage(logging.Filter):
    """Lets each 'not indexed: ...' record of the archive through once: a rescan finds the same
    duplicate SOP Instance UIDs again and need not warn about them every time."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("not indexed:"):
            return True
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


# --------------------------------------------------------------------------- errors and main


def _describe(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """One line and an exit code for an error raised by a command."""
    if isinstance(exc, UserError):
        return str(exc), exc.code
    if isinstance(exc, AssociationRejected):
        why = _REJECT_REASONS.get((exc.source, exc.reason), f"reason {exc.reason}")
        kind = "permanently" if exc.result == 1 else "transiently"
        return f"association rejected {kind} by {args.host}:{args.port}: {why}", EXIT_FAILURE
    if isinstance(exc, NotNegotiatedError):
        return f"the peer did not accept the presentation context: {exc}", EXIT_FAILURE
    if isinstance(exc, IdentifierError):
        return f"identifier breaks the model's rules: {exc} (use --lenient to send it anyway)", \
            EXIT_USAGE
    if isinstance(exc, DicomError | OSError | TimeoutError):
        return f"{exc}", EXIT_FAILURE
    return f"unexpected {type(exc).__name__}: {exc}", EXIT_FAILURE


_COMMANDS: Final = {"echo": _echo, "find": _find, "qrscp": _qrscp}


def _quiet_pydicom(args: argparse.Namespace) -> None:
    """pydicom reports a doubtful value twice, as a log record and as a Python warning with a
    line of its own source: keep the log record only. ``qrscp`` without -v also drops
    pydicom's records below ERROR: they name no file (the archive reports each file it could
    not index)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    if args.command == "qrscp" and not args.verbose:
        logging.getLogger("pydicom").setLevel(logging.ERROR)


def _stdout_to_devnull() -> None:
    """After a closed pipe, point stdout at /dev/null so that the interpreter's final flush
    does not print 'Exception ignored ... BrokenPipeError'."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dimse`` console script and ``python -m dimse``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        with warnings.catch_warnings():
            _quiet_pydicom(args)
            return run(_COMMANDS[args.command](args))  # uvloop when installed (extra "speed")
    except KeyboardInterrupt:
        return 130
    except _OutputClosed:
        _stdout_to_devnull()
        return EXIT_PIPE
    except Exception as exc:
        line, code = _describe(exc, args)
        if args.verbose and not isinstance(exc, DicomError | OSError):
            log.debug("details", exc_info=exc)  # a traceback only for the unexpected
        print(f"dimse {args.command}: error: {line}", file=sys.stderr)
        return code
