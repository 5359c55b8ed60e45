"""Query/Retrieve C-FIND SCU: root-specific negotiation and an async iterator of matches.

    async with connect_qr("127.0.0.1", 11112, called_ae="ARCHIVE") as assoc:
        async for match in find(assoc, query, model=QueryModel.PATIENT_ROOT):
            ...

Every request travels on the presentation context of its own model's FIND SOP class, whatever
the level; a model the peer did not accept fails with NotNegotiatedError before anything is
sent. The identifier is checked with :func:`dimse.qr.validate_request` first.

Flow control: a pump task moves responses from the association into a small bounded queue; when
the consumer falls behind, the pump pauses reading from the socket, so at most ``buffer``
decoded-to-be responses plus one socket read are held. Stopping early (``limit=``, ``aclose()``,
leaving the ``async for`` loop, or cancelling the consuming task) sends C-CANCEL and drains the
responses up to the final one, so the association stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.dataset import Dataset

from pdu.negotiation import AcceptedContext

from . import codec
from .association import Association, Response
from .connect import DEFAULT_TRANSFER_SYNTAXES, Connector, connect
from .errors import AssociationAborted, ServiceError
from .messages import CFindRQ, CFindRSP, Priority
from .qr import (
    MODELS,
    Mode,
    Operation,
    QueryModel,
    relational_accepted,
    sop_class,
    validate_request,
)
from .services import VERIFICATION_SOP_CLASS
from .status import Category, Service, category, describe, is_pending

__all__ = [
    "FIND_MODELS",
    "FindStream",
    "QueryFailed",
    "connect_qr",
    "find",
    "find_contexts",
]

log = logging.getLogger(__name__)

#: The models that have a C-FIND SOP class, in proposal order.
FIND_MODELS: Final = tuple(m for m, info in MODELS.items() if info.find is not None)
#: Responses queued between the network and the consumer before reading is paused.
DEFAULT_BUFFER: Final = 32
#: How long we wait for the final response after a C-CANCEL when no DIMSE timeout is set.
CANCEL_DRAIN_TIMEOUT: Final = 30.0


class QueryFailed(ServiceError):
    """The peer ended a C-FIND with a Failure (or unknown) status.

    ``status``, ``comment`` (ErrorComment) and ``offending_elements`` (OffendingElement) come from
    the final response; ``matches`` counts the Pending responses received before it.
    """

    def __init__(self, status: int, comment: str = "", offending_elements: Iterable[int] = (),
                 *, matches: int = 0) -> None:
        super().__init__(status, comment, offending_elements)
        self.matches = matches
        self.args = (f"C-FIND failed: {describe(status, Service.FIND)}"
                     + (f": {comment}" if comment else "")
                     + (f" (offending: {', '.join(f'{t:08X}' for t in self.offending_elements)})"
                        if self.offending_elements else ""),)


def find_contexts(
    models: Iterable[QueryModel] = FIND_MODELS,
    *,
    relational: bool = False,
    verification: bool = True,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[list[tuple[str, tuple[str, ...]]], dict[str, bytes]]:
    """Presentation contexts and 0x56 extended negotiation for the FIND SOP classes of ``models``.

    Returns ``(contexts, extended)`` ready for :func:`dimse.connect.connect`. ``relational``
    proposes the relational-queries byte.
    """
    contexts: list[tuple[str, tuple[str, ...]]] = []
    extended: dict[str, bytes] = {}
    for model in dict.fromkeys(models):
        uid = MODELS[model].find
        if uid is None:
            raise ValueError(f"{model.name} has no C-FIND SOP class")
        contexts.append((uid, tuple(transfer_syntaxes)))
        if relational and MODELS[model].relational:
            extended[uid] = b"\x01"
    if verification:
        contexts.append((VERIFICATION_SOP_CLASS, tuple(transfer_syntaxes)))
    return contexts, extended


def connect_qr(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "DIMSE_PY",
    models: Iterable[QueryModel] = FIND_MODELS,
    relational: bool = False,
    **options: Any,
) -> Connector:
    """:func:`dimse.connect.connect` proposing the FIND contexts of ``models`` plus Verification."""
    contexts, extended = find_contexts(models, relational=relational)
    return connect(host, port, called_ae=called_ae, calling_ae=calling_ae, contexts=contexts,
                   extended=extended, **options)


@dataclass(slots=True)
class _Final:
    """The end of the stream: the final response, or the error that ended it."""

    response: CFindRSP | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class FindStream:
    """State of one C-FIND as seen from the SCU (exposed through :func:`find`'s iterator)."""

    assoc: Association
    context: AcceptedContext
    model: QueryModel
    data: bytes
    priority: int
    buffer: int
    message_id: int | None = None
    cancel_sent: bool = False
    draining: bool = False
    final: CFindRSP | None = None
    queue: asyncio.Queue[Response | _Final] = field(init=False)
    pump: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.buffer)

    def start(self) -> None:
        self.pump = asyncio.get_running_loop().create_task(self._run())

    def _build(self, message_id: int) -> CFindRQ:
        self.message_id = message_id
        return CFindRQ(message_id=message_id, affected_sop_class_uid=self.context.abstract_syntax,
                       priority=self.priority)

    async def _run(self) -> None:
        """Pump: association -> bounded queue, pausing the socket when the queue is full."""
        queue, protocol = self.queue, self.assoc.protocol
        final = _Final()
        try:
            async for response in self.assoc.request_stream(self.context, self._build, self.data):
                if not is_pending(int(getattr(response[0], "status", 0))):
                    final.response = response[0]  # type: ignore[assignment]
                    break
                if self.draining:
                    continue
                if queue.full():
                    protocol.pause_reading()
                    try:
                        await queue.put(response)
                    finally:
                        protocol.resume_reading()
                else:
                    queue.put_nowait(response)
            else:
                final.error = AssociationAborted("C-FIND ended without a final response")
        except BaseException as exc:  # delivered to the consumer, never lost
            final.error = exc
        if not self.draining:
            await queue.put(final)
        else:
            self._put_final(final)

    def _put_final(self, final: _Final) -> None:
        while self.queue.full():  # the consumer drains: make room for the final item
            self.queue.get_nowait()
        self.queue.put_nowait(final)

    async def cancel(self) -> None:
        """Send C-CANCEL once (after the request went out); later responses are dropped."""
        self.draining = True
        ended = self.pump is not None and self.pump.done()
        while not self.queue.empty():  # unblock a pump waiting on a full queue
            item = self.queue.get_nowait()
            if isinstance(item, _Final):
                self.queue.put_nowait(item)
                ended = True
                break
        if ended or self.cancel_sent or self.message_id is None or self.final is not None:
            return
        self.cancel_sent = True
        with contextlib.suppress(AssociationAborted):
            await self.assoc.cancel(self.context, self.message_id)

    async def drain(self) -> None:
        """Wait (bounded) for the final response after a cancel; abort the association if the
        peer never sends it."""
        pump = self.pump
        if pump is None or self.final is not None:
            return
        timeout = self.assoc.dimse_timeout or CANCEL_DRAIN_TIMEOUT
        done, _ = await asyncio.wait([pump], timeout=timeout)
        if not done:
            log.warning("no final C-FIND response %s s after C-CANCEL; aborting", timeout)
            pump.cancel()
            self.assoc.abort()


def find(
    assoc: Association,
    identifier: Dataset,
    *,
    model: QueryModel = QueryModel.STUDY_ROOT,
    mode: Mode = Mode.STRICT,
    limit: int | None = None,
    priority: int = Priority.MEDIUM,
    buffer: int = DEFAULT_BUFFER,
) -> AsyncIterator[Dataset]:
    """C-FIND ``identifier`` under ``model``; an async iterator of the matching identifiers.

    Raises at once (nothing sent): NotNegotiatedError when the peer did not accept the model's
    FIND SOP class, IdentifierError when the identifier breaks the model's rules (``mode``;
    RELATIONAL needs relational queries accepted in extended negotiation). While iterating:
    :class:`QueryFailed` on a Failure final status, AssociationError when the association dies.
    ``limit`` stops after that many matches with a C-CANCEL.
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    uid = sop_class(model, Operation.FIND)
    cx = assoc.context_for(uid)
    relational = relational_accepted(assoc.negotiated.extended.get(uid))
    validate_request(identifier, model, Operation.FIND, mode, relational)
    data = codec.encode(identifier, cx.transfer_syntax)
    stream = FindStream(assoc, cx, model, data, int(priority), max(1, buffer))
    return _matches(stream, limit)


async def _matches(stream: FindStream, limit: int | None) -> AsyncIterator[Dataset]:
    """The consumer side: decode Pending identifiers; stop early with a C-CANCEL."""
    stream.start()
    count = 0
    try:
        while True:
            item = await stream.queue.get()
            if isinstance(item, _Final):
                stream.final = item.response
                _finish(item, count)
                return
            if stream.draining:
                continue
            message, dataset = item
            if dataset is None:
                log.warning("Pending C-FIND response without an identifier: %r", message)
                continue
            match = dataset.decode()
            count += 1
            yield match
            if limit is not None and count >= limit:
                await stream.cancel()
    finally:
        if stream.final is None:
            await _stop(stream)


async def _stop(stream: FindStream) -> None:
    """Early exit (aclose, break, task cancelled, error): C-CANCEL, then drain to the end."""
    try:
        await stream.cancel()
        await stream.drain()
    except asyncio.CancelledError:
        if stream.pump is not None:
            stream.pump.cancel()
        raise


def _finish(item: _Final, count: int) -> None:
    """Turn the final response into a return (Success, Cancel, Warning) or an exception."""
    if item.error is not None:
        raise item.error
    rsp = item.response
    assert rsp is not None
    status = int(rsp.status)
    cat = category(status, Service.FIND)
    if cat in (Category.SUCCESS, Category.CANCEL):
        return
    if cat is Category.WARNING:
        log.warning("C-FIND ended with %s", describe(status, Service.FIND))
        return
    raise QueryFailed(status, rsp.error_comment or "", rsp.offending_element or (),
                      matches=count)
