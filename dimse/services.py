"""Service handlers: typed protocols, the registry keyed by command field, the status policy.

A server (or the performer side of any association, e.g. an SCU answering the C-STORE
sub-operations of its own C-GET) looks up a :class:`Performer` by the request's command field in a
:class:`HandlerRegistry`. The registry wraps small typed user handlers:

* :class:`EchoHandler` ``(request, ctx) -> status`` (default: success);
* :class:`StoreHandler` ``(request, dataset, ctx) -> status | None``, where ``dataset`` is a
  :class:`ReceivedDataSet`: the encoded bytes, or the :class:`DataSetSink` the fragments were
  streamed into (a :class:`FileSink` writes a Part 10 file without holding the instance).

A handler fails a request by raising :class:`~dimse.errors.ServiceError`; any other exception
becomes a failure status chosen by :func:`failure_status` and is logged, never propagated.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydicom.dataset import Dataset

from pdu.negotiation import AcceptedContext

from .errors import DataSetDecodeError, ServiceError
from .file_sink import SINK_MEMORY_LIMIT, FileSink, file_meta_bytes, file_sink_factory
from .messages import CEchoRQ, CEchoRSP, CommandField, CStoreRQ, CStoreRSP, Message
from .status import Category, category

if TYPE_CHECKING:
    import asyncio

    from .association import Association

__all__ = [
    "SINK_MEMORY_LIMIT",
    "VERIFICATION_SOP_CLASS",
    "Answered",
    "DataSetSink",
    "EchoHandler",
    "FileSink",
    "HandlerRegistry",
    "Performer",
    "ReceivedDataSet",
    "RequestContext",
    "SinkFactory",
    "StoreHandler",
    "checked_status",
    "error_comment",
    "failure_status",
    "file_meta_bytes",
    "file_sink_factory",
    "storage_sop_classes",
]

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@functools.cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pydicom knows (its UID dictionary), retired ones included, sorted.

    Selected by "Storage" anywhere in the name: DX, MG, intra-oral, breast projection and IVOCT
    classes end in "- For Presentation" / "- For Processing". Storage Commitment is no storage
    class (it is N-ACTION/N-EVENT-REPORT).
    """
    from pydicom._uid_dict import UID_dictionary

    return tuple(sorted(
        uid for uid, entry in UID_dictionary.items()
        if entry[1] == "SOP Class" and "Storage" in entry[0]
        and not entry[0].startswith("Storage Commitment")
    ))


# --------------------------------------------------------------------------- data set sinks


class DataSetSink(Protocol):
    """Receives a data set fragment by fragment as the PDVs arrive."""

    def write(self, fragment: memoryview) -> None: ...

    def finish(self) -> None:
        """The last fragment arrived: flush and close (but keep the result until commit)."""

    def commit(self) -> None:
        """The handler accepted the instance: make the result permanent."""

    def discard(self) -> None:
        """The transfer was aborted or the handler failed: remove every trace."""


class SinkFactory(Protocol):
    """Opens a sink for an incoming C-STORE request whose data set is about to arrive."""

    def __call__(self, request: CStoreRQ, ctx: RequestContext) -> DataSetSink: ...


@dataclass(frozen=True, slots=True)
class ReceivedDataSet:
    """The data set of a request: in memory (``data``) or streamed into ``sink``.

    ``error`` is set when the data set could not be stored while it arrived (the sink could
    not be opened or written); the handler is then not called and the request fails.
    """

    transfer_syntax: str
    data: bytes | memoryview | None = None
    sink: DataSetSink | None = None
    error: BaseException | None = None

    def decode(self, *, max_inflated: int | None = None) -> Dataset:
        """The data set as a pydicom Dataset (reads the file back for a :class:`FileSink`).

        ``max_inflated`` bounds a deflated data set once inflated (DataSetDecodeError beyond):
        a few KB of deflate stream can stand for gigabytes.
        """
        if self.data is not None:
            from . import codec

            return codec.decode(self.data, self.transfer_syntax, max_inflated=max_inflated)
        if isinstance(self.sink, FileSink):
            import pydicom

            return pydicom.dcmread(self.sink.temp_path)
        raise DataSetDecodeError("the data set went to a sink that cannot be read back")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One incoming request as seen by a performer: where it came from and what it carries."""

    association: Association
    context: AcceptedContext
    message: Message
    dataset: ReceivedDataSet | None

    @property
    def calling_ae(self) -> str:
        return self.association.calling_ae

    @property
    def called_ae(self) -> str:
        """The AE title the peer called: ours, as this association knows it."""
        return self.association.called_ae

    @property
    def peer(self) -> tuple[str, int] | None:
        return self.association.peer

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when the peer's C-CANCEL for this request arrives (while it is performed)."""
        return self.association.cancel_event(getattr(self.message, "message_id", -1))

    async def respond(self, response: Message, dataset: bytes | None = None) -> None:
        """Send one response (a Pending one, or the final one) on the request's context."""
        await self.association.send_message(self.context.context_id, response, dataset)

    def respond_now(self, response: Message) -> Awaitable[None] | None:
        """Send a response without a data set now if the connection takes it at once (None);
        otherwise the awaitable that sends it."""
        if self.association.send_now(self.context.context_id, response):
            return None
        return self.respond(response)


class EchoHandler(Protocol):
    """``(request, ctx) -> status``: a coroutine function, or a plain one (run inline)."""

    def __call__(self, request: CEchoRQ, ctx: RequestContext, /
                 ) -> Awaitable[int | None] | int | None: ...


class StoreHandler(Protocol):
    """``(request, dataset, ctx) -> status``: a coroutine function, or a plain one (inline)."""

    def __call__(
        self, request: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext, /
    ) -> Awaitable[int | None] | int | None: ...


#: What runs a request: it sends the response(s) itself through ``RequestContext.respond``.
Performer = Callable[[RequestContext], Awaitable[None]]
#: A performer run at once, in the callback that received the request (no task): it returns
#: None when the request is done and answered, or an awaitable finishing it in a task.
InlinePerformer = Callable[[RequestContext], Awaitable[None] | None]


def failure_status(command_field: int, exc: BaseException) -> int:
    """The status for a handler that raised ``exc`` (anything but ServiceError)."""
    if command_field == CommandField.C_STORE_RQ:
        if isinstance(exc, OSError):
            return 0xA700  # refused: out of resources (disk full, permissions...)
        if isinstance(exc, DataSetDecodeError):
            return 0xC000  # error: cannot understand
    return 0x0110  # processing failure


def checked_status(status: object) -> int:
    """``status`` when it is a 16-bit code, else ValueError: a bad return fails the request.

    Checked before the response is built, so that every request still gets one response
    (PS3.7 9.1.1) instead of a command that cannot be encoded.
    """
    if isinstance(status, int) and 0 <= status <= 0xFFFF:
        return int(status)
    raise ValueError(f"handler returned invalid status {status!r}")


def error_comment(text: str) -> str:
    """``text`` as an ErrorComment can carry it: ASCII, at most 64 characters (LO)."""
    return text.encode("ascii", "replace").decode("ascii")[:64]


def _error_fields(exc: BaseException, command_field: int) -> tuple[int, str, tuple[int, ...]]:
    """Status, comment and offending elements answering ``exc``, always encodable."""
    if isinstance(exc, ServiceError):
        try:
            status = checked_status(exc.status)
        except ValueError as bad:
            exc = bad
        else:
            offending = tuple(t for t in exc.offending_elements
                              if isinstance(t, int) and 0 <= t <= 0xFFFFFFFF)
            return status, error_comment(str(exc.comment)), offending
    if isinstance(exc, DataSetDecodeError):  # the peer's bytes, not the handler's failure
        log.warning("data set of command 0x%04X refused: %s", command_field, exc)
    else:
        log.exception("handler for command 0x%04X failed", command_field, exc_info=exc)
    return failure_status(command_field, exc), error_comment(f"{type(exc).__name__}: {exc}"), ()


def _default_echo(request: CEchoRQ, ctx: RequestContext) -> int:
    return 0x0000


class HandlerRegistry:
    """Performers keyed by the request's command field, built from typed handlers.

    A handler written as a plain function (not ``async def``) is run inline: in the callback
    that received the request, with its response sent from there when the connection takes it,
    so no task is made per request (the fast path of C-ECHO and of C-STORE into a sink).
    """

    def __init__(self) -> None:
        self._performers: dict[int, Performer] = {}
        self._inline: dict[int, InlinePerformer] = {}
        self._sinks: SinkFactory | None = None
        self.on_echo(_default_echo)

    def register(self, command_field: int, performer: Performer,
                 inline: InlinePerformer | None = None) -> None:
        """Install a raw performer (used by the Q/R services), and its inline form if any."""
        self._performers[int(command_field)] = performer
        if inline is None:
            self._inline.pop(int(command_field), None)
        else:
            self._inline[int(command_field)] = inline

    def get(self, command_field: int) -> Performer | None:
        return self._performers.get(command_field)

    def inline(self, command_field: int) -> InlinePerformer | None:
        """The inline performer for ``command_field``, when its handler is a plain function."""
        return self._inline.get(command_field)

    def __contains__(self, command_field: int) -> bool:
        return command_field in self._performers

    def on_echo(self, handler: EchoHandler) -> None:
        self.register(CommandField.C_ECHO_RQ, functools.partial(_perform_echo, handler),
                      _inline_form(_echo_now, handler))

    def on_store(self, handler: StoreHandler, sink: SinkFactory | None = None) -> None:
        """C-STORE: ``sink`` (optional) receives the data set as it arrives."""
        self._sinks = sink
        self.register(CommandField.C_STORE_RQ, functools.partial(_perform_store, handler),
                      _inline_form(_store_now, handler))

    def streams(self, request: Message) -> bool:
        """Whether the data set of ``request`` goes to a sink as it arrives."""
        return self._sinks is not None and isinstance(request, CStoreRQ)

    def sink_for(self, request: Message, ctx: RequestContext) -> DataSetSink | None:
        """Open a sink for the data set of ``request`` (when :meth:`streams` says so)."""
        if self._sinks is not None and isinstance(request, CStoreRQ):
            return self._sinks(request, ctx)
        return None


def _inline_form(now: Callable[[Any, RequestContext], Awaitable[None] | None],
                 handler: object) -> InlinePerformer | None:
    """``now`` bound to ``handler`` when the handler is a plain function (else None)."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)):  # noqa: B004 (an async __call__ counts)
        return None
    return functools.partial(now, handler)


async def _outcome(result: Awaitable[int | None] | int | None) -> int | None:
    return await result if inspect.isawaitable(result) else result


# --------------------------------------------------------------------------- C-ECHO


def _echo_response(rq: CEchoRQ, status: int | None, exc: Exception | None) -> CEchoRSP:
    comment = ""
    if exc is None:
        try:
            status = checked_status(0 if status is None else status)
        except ValueError as bad:
            exc = bad
    if exc is not None:
        status, comment, _ = _error_fields(exc, CommandField.C_ECHO_RQ)
    return CEchoRSP(message_id_being_responded_to=rq.message_id,
                    affected_sop_class_uid=rq.affected_sop_class_uid,
                    status=cast(int, status), error_comment=comment or None)


def _echo_refused(rq: CEchoRQ, req: RequestContext) -> CEchoRSP | None:
    """0x0122 for a C-ECHO on a context whose abstract syntax is not its SOP class (as for
    every other request: PS3.8 Annex E, a message travels on its SOP class's context)."""
    if rq.affected_sop_class_uid == req.context.abstract_syntax:
        return None
    log.warning("C-ECHO-RQ for %s on context %d (%s): refused 0x0122", rq.affected_sop_class_uid,
                req.context.context_id, req.context.abstract_syntax)
    return CEchoRSP(message_id_being_responded_to=rq.message_id,
                    affected_sop_class_uid=rq.affected_sop_class_uid, status=0x0122,
                    error_comment=error_comment("C-ECHO on a presentation context of "
                                                f"{req.context.abstract_syntax}"))


async def _perform_echo(handler: EchoHandler, req: RequestContext,
                        started: Awaitable[int | None] | None = None) -> None:
    """Perform a C-ECHO (or finish one whose plain handler returned ``started``)."""
    rq = cast(CEchoRQ, req.message)
    if started is None and (refused := _echo_refused(rq, req)) is not None:
        await req.respond(refused)
        return
    try:
        status = await _outcome(handler(rq, req) if started is None else started)
    except Exception as exc:
        await req.respond(_echo_response(rq, None, exc))
    else:
        await req.respond(_echo_response(rq, status, None))


def _echo_now(handler: EchoHandler, req: RequestContext) -> Awaitable[None] | None:
    rq = cast(CEchoRQ, req.message)
    refused = _echo_refused(rq, req)
    if refused is not None:
        return req.respond_now(refused)
    try:
        result = handler(rq, req)
    except Exception as exc:
        return req.respond_now(_echo_response(rq, None, exc))
    if inspect.isawaitable(result):  # a plain function that returned an awaitable
        return _perform_echo(handler, req, result)
    return req.respond_now(_echo_response(rq, result, None))


# --------------------------------------------------------------------------- C-STORE


def _received(req: RequestContext) -> ReceivedDataSet:
    return req.dataset or ReceivedDataSet(req.context.transfer_syntax, b"")


def _store_response(rq: CStoreRQ, dataset: ReceivedDataSet, status: int | None,
                    exc: Exception | None) -> CStoreRSP:
    """Commit or discard the sink by the outcome, and the response saying it."""
    sink = dataset.sink
    if exc is None:
        try:
            status = checked_status(0 if status is None else status)
            if sink is not None:
                if category(status) in (Category.SUCCESS, Category.WARNING):
                    sink.commit()
                else:
                    sink.discard()
        except Exception as error:  # an invalid status, or the disk is full on commit
            exc = error
    comment, offending = "", cast(tuple[int, ...], ())
    if exc is not None:  # a handler never crashes the association
        if sink is not None:
            sink.discard()
        status, comment, offending = _error_fields(exc, CommandField.C_STORE_RQ)
    return CStoreRSP(
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid,
        affected_sop_instance_uid=rq.affected_sop_instance_uid,
        status=cast(int, status),
        error_comment=comment or None,
        offending_element=offending or None,
    )


async def _perform_store(handler: StoreHandler, req: RequestContext,
                         started: Awaitable[int | None] | None = None) -> None:
    """Perform a C-STORE (or finish one whose plain handler returned ``started``)."""
    rq = cast(CStoreRQ, req.message)
    dataset = _received(req)
    try:
        if started is None:
            if dataset.error is not None:
                raise dataset.error
            started = handler(rq, dataset, req)  # type: ignore[assignment]
        status = await _outcome(started)
    except Exception as exc:
        response = _store_response(rq, dataset, None, exc)
    except BaseException:  # cancelled (association aborted): no partial file stays behind
        if dataset.sink is not None:
            dataset.sink.discard()
        raise
    else:
        response = _store_response(rq, dataset, status, None)
    await req.respond(response)


class Answered:
    """The awaitable sending a response that is decided: its data set's sink is already
    committed or discarded, so an abort before it is sent must not discard the sink again."""

    __slots__ = ("_send",)

    def __init__(self, send: Awaitable[None]) -> None:
        self._send = send

    def __await__(self) -> Generator[Any, None, None]:
        return self._send.__await__()

    def close(self) -> None:
        """Never sent (the association ended first): no "never awaited" warning."""
        if isinstance(self._send, Coroutine):
            self._send.close()


def _answered(send: Awaitable[None] | None) -> Awaitable[None] | None:
    return None if send is None else Answered(send)


def _store_now(handler: StoreHandler, req: RequestContext) -> Awaitable[None] | None:
    rq = cast(CStoreRQ, req.message)
    dataset = _received(req)
    try:
        if dataset.error is not None:
            raise dataset.error
        result = handler(rq, dataset, req)
    except Exception as exc:
        return _answered(req.respond_now(_store_response(rq, dataset, None, exc)))
    if inspect.isawaitable(result):  # a plain function that returned an awaitable
        return _perform_store(handler, req, result)
    return _answered(req.respond_now(_store_response(rq, dataset, result, None)))
