"""Query/Retrieve C-FIND SCP: typed async-iterator handlers, statuses, C-CANCEL, an archive.

A :class:`FindHandler` receives a validated :class:`FindRequest` and yields matches (a
``Dataset``, a :class:`Match` to flag unsupported optional keys, or an :class:`EncodedMatch`
whose bytes are sent as they are when their transfer syntax is the context's). The library owns the rest:

* the model comes from the request's SOP class (0122 if we do not serve it as a FIND model);
* the identifier is decoded (C000 if it cannot be) and checked with :func:`dimse.qr.validate_scp`
  (A900/Cxxx with OffendingElement and ErrorComment) before the handler runs;
* each match becomes a Pending response (FF00, or FF01 when optional keys are not supported),
  always carrying QueryRetrieveLevel, and SpecificCharacterSet when a value needs one (PS3.4
  C.4.1.1.3.2: not otherwise, and never empty); sending waits for the socket to
  drain (back-pressure reaches the handler, which is not advanced meanwhile);
* C-CANCEL (matched by MessageIDBeingRespondedTo) ends the query with FE00: the request's cancel
  event (:attr:`RequestContext.cancelled`) is checked between matches and interrupts a handler
  that is busy producing the next one (no polling);
* the handler ending gives 0000; :class:`~dimse.errors.ServiceError` its own status; any other
  exception C001 (logged).

:func:`archive_find_handler` serves a :class:`dimse.archive.Archive`, reading matches in a
worker thread in bounded chunks; :func:`archive_server` builds a complete Q/R SCP around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

from pydicom.dataset import Dataset

from pdu.negotiation import qr_extended_negotiation

from . import codec
from ._vr import EXPLICIT_VR_BE, syntax_for_decode
from .archive import Archive, Duplicate
from .archive_store import archive_sink_factory, archive_store_handler
from .errors import AssociationError, DataSetEncodeError, IdentifierError, ServiceError
from .messages import DATASET_PRESENT, NO_DATASET, CFindRQ, CFindRSP, CommandField
from .qr import (
    DEFAULT_TRANSFER_SYNTAXES,
    MODELS,
    QR_LEVEL,
    SPECIFIC_CHARACTER_SET,
    UTF8_CHARACTER_SET,
    Level,
    Operation,
    QueryModel,
    drop_non_data_elements,
    enhanced_accepted,
    has_non_ascii_text,
    model_for_sop_class,
    parse_level,
    relational_accepted,
    resolve_un,
    tag_name,
    validate_scp,
)
from .server import Server, default_contexts
from .services import (
    HandlerRegistry,
    ReceivedDataSet,
    RequestContext,
    checked_status,
    error_comment,
)
from .status import Status

__all__ = [
    "FIND_SOP_CLASSES",
    "MAX_IDENTIFIER_INFLATED",
    "STATUS_HANDLER_FAILED",
    "FindHandler",
    "EncodedMatch",
    "FindRequest",
    "Match",
    "archive_find_handler",
    "archive_server",
    "archive_store_handler",
    "find_extended_policy",
    "has_required_keys",
    "qr_server_contexts",
    "register_find",
]

log = logging.getLogger(__name__)

#: The handler raised something other than ServiceError.
STATUS_HANDLER_FAILED: Final = 0xC001
#: Matches fetched per worker-thread hop by the archive handler.
ARCHIVE_CHUNK: Final = 256
#: Largest C-FIND identifier a deflated one may inflate to. Identifiers are small (a list of
#: 10,000 UIDs is 650 KB); without a bound a few KB of deflate stream held the event loop for
#: seconds. A larger one is refused with "unable to process".
MAX_IDENTIFIER_INFLATED: Final = 1024 * 1024

#: FIND SOP class UIDs of the models that have one.
FIND_SOP_CLASSES: Final = {info.find: m for m, info in MODELS.items() if info.find is not None}


@dataclass(frozen=True, slots=True)
class Match:
    """A match, optionally flagged: some optional keys were not supported (Pending FF01)."""

    identifier: Dataset
    optional_keys_unsupported: bool = False


@dataclass(frozen=True, slots=True)
class EncodedMatch:
    """A match already encoded (e.g. by :class:`dimse.template.IdentifierTemplate`).

    When ``transfer_syntax`` is the presentation context's, ``data`` is sent as the Pending
    response's data set unchanged; otherwise it is decoded and re-encoded like a Dataset. The
    producer is responsible for the keys the SCP otherwise adds: ``data`` must contain
    QueryRetrieveLevel (checked by an assertion), and SpecificCharacterSet when its values
    need one.
    """

    data: bytes
    transfer_syntax: str
    optional_keys_unsupported: bool = False


@dataclass(frozen=True, slots=True)
class FindRequest:
    """A validated C-FIND request as a handler sees it."""

    identifier: Dataset
    model: QueryModel
    level: Level
    relational: bool
    extended: bytes
    message: CFindRQ
    ctx: RequestContext

    @property
    def datetime_matching(self) -> bool:
        """Combined date-time matching was negotiated (extended negotiation byte 2)."""
        return len(self.extended) > 1 and self.extended[1] == 1


class FindHandler(Protocol):
    """``handler(request)`` -> async iterator of matches."""

    def __call__(self, request: FindRequest) -> AsyncIterator[Dataset | Match | EncodedMatch]: ...


def register_find(registry: HandlerRegistry, handler: FindHandler, *,
                  models: Iterable[QueryModel] = tuple(FIND_SOP_CLASSES.values()),
                  lenient: bool = False) -> None:
    """Serve C-FIND for ``models`` with ``handler`` (``lenient``: see :func:`validate_scp`)."""
    served = frozenset(models)
    registry.register(CommandField.C_FIND_RQ,
                      functools.partial(_perform_find, handler, served, lenient))


def qr_server_contexts(registry: HandlerRegistry,
                       models: Iterable[QueryModel] = tuple(FIND_SOP_CLASSES.values()),
                       transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES,
                       ) -> dict[str, tuple[str, ...]]:
    """The server's default contexts plus the FIND SOP classes of ``models``."""
    contexts = default_contexts(registry)
    for model in models:
        uid = MODELS[model].find
        if uid is not None:
            contexts[uid] = transfer_syntaxes
    return contexts


def find_extended_policy(*, relational: bool = True,
                         datetime_matching: bool = True) -> Callable[[str, bytes], bytes | None]:
    """Extended negotiation answers for the FIND SOP classes (relational, date-time bytes)."""
    flags = bytes((int(relational), int(datetime_matching)))
    return qr_extended_negotiation({uid: flags for uid in FIND_SOP_CLASSES})


# --------------------------------------------------------------------------- the performer


def _response(rq: CFindRQ, status: int, *, comment: str = "",
              offending: tuple[int, ...] = (), dataset: bool = False) -> CFindRSP:
    """The C-FIND-RSP; a status, comment or tag list a handler's ServiceError gave that the
    command cannot carry becomes an encodable failure, so the request is still answered."""
    try:
        status = checked_status(status)
    except ValueError as exc:
        log.error("C-FIND handler: %s", exc)
        status, comment, offending = STATUS_HANDLER_FAILED, str(exc), ()
    offending = tuple(t for t in offending if isinstance(t, int) and 0 <= t <= 0xFFFFFFFF)
    return CFindRSP(
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid,
        status=status,
        offending_element=offending or None,
        error_comment=error_comment(str(comment)) or None,
        command_data_set_type=DATASET_PRESENT if dataset else NO_DATASET,
    )


def _prepare(served: frozenset[QueryModel], lenient: bool, ctx: RequestContext
             ) -> FindRequest | CFindRSP:
    """Decode and validate the request: a FindRequest, or the failure response to send."""
    rq = ctx.message
    assert isinstance(rq, CFindRQ)
    uid = rq.affected_sop_class_uid
    try:
        model, op = model_for_sop_class(uid)
    except KeyError:
        model, op = QueryModel.STUDY_ROOT, Operation.MOVE
    if op is not Operation.FIND or model not in served:
        return _response(rq, Status.SOP_CLASS_NOT_SUPPORTED,
                         comment=f"not a served C-FIND model: {uid}")
    if uid != ctx.context.abstract_syntax:
        return _response(rq, Status.SOP_CLASS_NOT_SUPPORTED,
                         comment="SOP class is not the presentation context's")
    try:
        received = ctx.dataset or ReceivedDataSet(ctx.context.transfer_syntax, b"")
        identifier = resolve_un(received.decode(max_inflated=MAX_IDENTIFIER_INFLATED),
                                little_endian=received.transfer_syntax != EXPLICIT_VR_BE)
    except Exception as exc:
        log.warning("undecodable C-FIND identifier: %s", exc)
        return _response(rq, Status.UNABLE_TO_PROCESS, comment=f"cannot decode identifier: {exc}")
    dropped = drop_non_data_elements(identifier)
    if dropped:
        log.warning("C-FIND identifier holds command/file meta elements, ignored: %s",
                    ", ".join(tag_name(t) for t in dropped))
    extended = ctx.association.negotiated.extended.get(uid, b"")
    relational = relational_accepted(extended)
    failure = validate_scp(identifier, model, Operation.FIND,
                          relational_negotiated=relational, lenient=lenient,
                          enhanced_negotiated=enhanced_accepted(extended, Operation.FIND))
    if failure is not None:
        log.info("C-FIND identifier refused (0x%04X): %s", failure.status,
                 "; ".join(v.message for v in failure.violations))
        return _response(rq, failure.status, comment=failure.comment,
                         offending=failure.offending)
    level = parse_level(identifier[QR_LEVEL].value)
    assert level is not None
    return FindRequest(identifier, model, level, relational, bytes(extended), rq, ctx)


class _SendFailed(AssociationError):
    """A Pending response could not be sent (the association is gone): unlike an
    AssociationError the handler raises itself (a proxy's upstream refused it, say), which is
    the handler's failure and answered 0xC001."""


class _CancelGuard:
    """Interrupts the handler when the request's C-CANCEL arrives while it produces a match.

    One waiter per request on the association's cancel event (no polling, no task per match):
    when it fires while the performing task is inside the handler, that task is cancelled (the
    handler's ``finally`` runs) and the query ends with FE00; between matches the loop checks
    the event before asking the handler again.
    """

    def __init__(self, cancelled: asyncio.Event) -> None:
        self.cancelled = cancelled
        self.in_handler = False
        self.fired = False
        self.task = asyncio.current_task()
        self.waiter = asyncio.ensure_future(cancelled.wait())
        self.waiter.add_done_callback(self._on_cancel)

    def _on_cancel(self, waiter: asyncio.Future[Any]) -> None:
        if not waiter.cancelled() and self.in_handler and self.task is not None:
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        self.waiter.cancel()


def _encode(match: Dataset | Match | EncodedMatch, request: FindRequest, ts: str
            ) -> tuple[bytes, int]:
    """The Pending response's data set bytes and status; encoded matches in ``ts`` pass as is."""
    if isinstance(match, EncodedMatch):
        if match.transfer_syntax == ts:
            assert has_required_keys(match.data, ts), "EncodedMatch lacks QueryRetrieveLevel"
            flagged = match.optional_keys_unsupported
            return match.data, Status.PENDING_WARNING if flagged else Status.PENDING
        decoded = codec.decode(match.data, match.transfer_syntax)
        match = Match(decoded, match.optional_keys_unsupported)
    identifier, status, borrowed = _complete(match, request)
    try:
        return codec.encode(identifier, ts), status
    except DataSetEncodeError:
        # The request's character set, taken for a match that declared none, may not hold
        # its values (ISO_IR 100 and a Japanese name): UTF-8 does, rather than failing the
        # query. A character set the handler declared itself is its own to get right.
        if not borrowed or not has_non_ascii_text(identifier):
            raise
        identifier.SpecificCharacterSet = UTF8_CHARACTER_SET
        return codec.encode(identifier, ts), status


_TAG_LE, _TAG_BE = struct.Struct("<HH2sH"), struct.Struct(">HH2sH")
_LEN_LE, _LEN_BE = struct.Struct("<L"), struct.Struct(">L")
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())


def has_required_keys(data: bytes | memoryview, transfer_syntax: str) -> bool:
    """Whether top-level QueryRetrieveLevel is in ``data`` (a cheap header walk up to
    (0008,0052); True when the layout cannot be walked, e.g. deflated)."""
    syn = syntax_for_decode(transfer_syntax)
    if syn.deflated:
        return True
    head, length = (_TAG_LE, _LEN_LE) if syn.little else (_TAG_BE, _LEN_BE)
    seen: set[int] = set()
    pos, view = 0, memoryview(data)
    while pos + 8 <= len(view):
        group, element, vr, short = head.unpack_from(view, pos)
        tag = group << 16 | element
        if tag > 0x00080052:
            break
        seen.add(tag)
        if syn.implicit:
            size, pos = length.unpack_from(view, pos + 4)[0], pos + 8
        elif vr in _SHORT_VRS:
            size, pos = short, pos + 8
        else:
            size, pos = length.unpack_from(view, pos + 8)[0], pos + 12
        if size == 0xFFFFFFFF:
            return True  # an undefined-length sequence: not walked here
        pos += size
    return 0x00080052 in seen


def _complete(match: Dataset | Match, request: FindRequest) -> tuple[Dataset, int, bool]:
    """The response identifier, its status, and whether its character set is the request's
    (taken for a match that declared none): the level always present; the character set the
    handler's, else the request's, else ISO_IR 192 when a value is not ASCII, else none."""
    status = Status.PENDING
    if isinstance(match, Match):
        status = Status.PENDING_WARNING if match.optional_keys_unsupported else Status.PENDING
        match = match.identifier
    if QR_LEVEL not in match:
        match.QueryRetrieveLevel = request.level.value
    declared = match.get(SPECIFIC_CHARACTER_SET)
    borrowed = False
    if declared is None or declared.is_empty:
        charset = request.identifier.get(SPECIFIC_CHARACTER_SET)
        if charset is not None and not charset.is_empty:
            match.SpecificCharacterSet = charset.value
            borrowed = True
        else:
            if declared is not None:  # an empty value is no value (Type 1C): left out
                del match[SPECIFIC_CHARACTER_SET]
            if has_non_ascii_text(match):
                match.SpecificCharacterSet = UTF8_CHARACTER_SET
    return match, status, borrowed


async def _run_handler(handler: FindHandler, request: FindRequest, guard: _CancelGuard
                       ) -> int:
    """Send one Pending response per match; the final status (FE00 when cancelled)."""
    ctx, rq = request.ctx, request.message
    ts = ctx.context.transfer_syntax
    iterator = aiter(handler(request))
    cancelled = guard.cancelled
    try:
        while True:
            if cancelled.is_set():
                return Status.CANCEL
            guard.in_handler = True
            try:
                match = await anext(iterator)
            except StopAsyncIteration:
                return Status.SUCCESS
            finally:
                guard.in_handler = False
            if cancelled.is_set():
                return Status.CANCEL
            data, status = _encode(match, request, ts)
            try:
                await ctx.respond(_response(rq, status, dataset=True), data)
            except AssociationError as exc:
                raise _SendFailed(str(exc)) from exc
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def _perform_find(handler: FindHandler, served: frozenset[QueryModel], lenient: bool,
                        ctx: RequestContext) -> None:
    rq = ctx.message
    assert isinstance(rq, CFindRQ)
    prepared = _prepare(served, lenient, ctx)
    if isinstance(prepared, CFindRSP):
        await ctx.respond(prepared)
        return
    guard = _CancelGuard(ctx.cancelled)
    comment, offending = "", cast(tuple[int, ...], ())
    try:
        status = await _run_handler(handler, prepared, guard)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not guard.fired or task is None:
            raise
        task.uncancel()
        status = Status.CANCEL
    except ServiceError as exc:
        status, comment, offending = exc.status, exc.comment, exc.offending_elements
    except IdentifierError as exc:
        status, comment, offending = exc.status, str(exc), exc.offending
    except _SendFailed:
        raise  # sending a match failed: the association is gone, nothing to answer
    except Exception as exc:
        log.exception("C-FIND handler failed")
        status, comment = STATUS_HANDLER_FAILED, f"{type(exc).__name__}: {exc}"
    finally:
        guard.close()
    await ctx.respond(_response(rq, status, comment=comment, offending=tuple(offending)))


# --------------------------------------------------------------------------- the archive


_T = TypeVar("_T")


def _chunk(iterator: Iterator[_T], size: int) -> list[_T]:
    return list(itertools.islice(iterator, size))


def archive_find_handler(archive: Archive, *, chunk: int = ARCHIVE_CHUNK) -> FindHandler:
    """A FindHandler over ``archive``: matches read in its worker threads, ``chunk`` at a
    time."""

    async def handle(request: FindRequest) -> AsyncIterator[Dataset | Match | EncodedMatch]:
        try:
            async for match in matches(request):
                yield match
        except sqlite3.DatabaseError as exc:
            raise _index_failed(archive, exc) from exc

    async def matches(request: FindRequest) -> AsyncIterator[Dataset | Match | EncodedMatch]:
        ts = request.ctx.context.transfer_syntax
        if ts in codec.SUPPORTED_TRANSFER_SYNTAXES:
            # Fast path: response identifiers encoded straight from the index rows.
            encoded = await archive.run(
                archive.find_encoded, request.identifier, request.model, request.level, ts,
                datetime_matching=request.datetime_matching)
            flagged = bool(encoded.unsupported)
            while True:
                blobs = await archive.run(_chunk, encoded.matches, chunk)
                for data in blobs:
                    yield EncodedMatch(data, ts, flagged)
                if len(blobs) < chunk:
                    return
        result = await archive.run(
            archive.find_with_status, request.identifier, request.model, request.level,
            datetime_matching=request.datetime_matching)
        flagged = bool(result.unsupported)
        while True:
            batch = await archive.run(_chunk, result.matches, chunk)
            for ds in batch:
                yield Match(ds, flagged) if flagged else ds
            if len(batch) < chunk:
                return

    return handle


def _index_failed(archive: Archive, exc: sqlite3.DatabaseError) -> ServiceError:
    """The failure a C-FIND gets when the index fails under it, logged in one line (no
    traceback): 0xA700 when it is busy or locked, else 0xC001 (damaged since the start-up
    check? a restart checks it again and rebuilds it)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        log.error("C-FIND: the index %s is busy: %s", archive.db_path, exc)
        return ServiceError(Status.OUT_OF_RESOURCES, "index busy")
    log.error("C-FIND: the index %s failed: %s (damaged? a restart checks it and rebuilds it "
              "from the files)", archive.db_path, exc)
    return ServiceError(STATUS_HANDLER_FAILED, f"index failed: {exc}"[:64])


def archive_server(archive: Archive, ae_title: str, *, host: str = "127.0.0.1", port: int = 0,
                   lenient: bool = False, store: bool = True,
                   duplicate: Duplicate = Duplicate.KEEP, **options: Any) -> Server:
    """A Q/R SCP on ``archive``: C-ECHO, C-FIND for the three models, and (``store``) C-STORE
    streamed into the archive folder and indexed at once (see :mod:`dimse.archive_store`)."""
    registry = HandlerRegistry()
    register_find(registry, archive_find_handler(archive), lenient=lenient)
    if store:
        registry.on_store(archive_store_handler(archive, duplicate=duplicate),
                          sink=archive_sink_factory(archive))
    server = Server(ae_title, host=host, port=port, handlers=registry,
                    contexts=qr_server_contexts(registry), **options)
    server.policy = dataclasses.replace(server.policy, extended=find_extended_policy())
    return server
