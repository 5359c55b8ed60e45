"""The asyncio association: DIMSE requests and responses over one upper-layer connection.

One :class:`Association` serves both sides of a connection (requestor or acceptor) and both roles
of DIMSE at once: it *invokes* operations (``echo()``, ``store()``, ``request()``) and *performs*
the requests the peer sends (looked up in a :class:`~dimse.services.HandlerRegistry`), so an SCU
can answer the C-STORE sub-operations of its own C-GET. There is one dispatch point for incoming
messages: responses resolve the pending operation with the same message ID, requests go to their
performer in a task of their own.

This module holds establishment, the dispatch of incoming messages, performing requests, the
idle timeout, the requestor-side operations (echo, store, find) and release/abort. The invoking
machinery (sending messages, ``request``/``send_request``/``final_response``/``request_stream``,
C-CANCEL, the asynchronous operations window, the DIMSE timeout and flow control) is the mixin
:class:`dimse.invoking.Invoker`, which :class:`Association` inherits; see that module.

Performed requests get a cancel event (:meth:`Association.cancel_event`), set when the peer's
C-CANCEL for their message ID arrives. Requests queued beyond the performed window (plus a
backlog) pause reading from the socket.

Query/Retrieve from the association itself::

    async for match in assoc.find(query, model=QueryModel.STUDY_ROOT, limit=100):
        ...

(``assoc.find`` is :func:`dimse.qr_scu.find`, also callable as ``find(assoc, query, ...)``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from pdu.constants import AbortSource
from pdu.errors import ProtocolError
from pdu.fsm import State
from pdu.machine import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    Closed,
    Output,
    PDataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
    Role,
    UpperLayerMachine,
)
from pdu.negotiation import AcceptedContext, Negotiated, negotiated_from_ac
from pdu.pdus import AAssociateAC, AAssociateRJ, AAssociateRQ, PDataTF
from pdu.transport import UpperLayerProtocol

from . import commands
from .assembly import (
    DEFAULT_MAX_IDENTIFIER_LENGTH,
    CommandReceived,
    DataFragment,
    MessageReceived,
    OversizedRequest,
    UnrecognizedRequest,
)
from .errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
)
from .inbound import ROLE_REFUSED, InboundStores
from .instances import instance_transfer_syntax
from .invoking import Response, _fresh, is_final
from .messages import (
    MESSAGE_TYPES,
    CCancelRQ,
    Message,
)
from .operations import (
    UNLIMITED_WINDOW_CAP,
    DeadlineWatch,
    IdleWatch,
    Operation,
    ReadGate,
)
from .scu_operations import ScuOperations
from .services import (
    Answered,
    HandlerRegistry,
    ReceivedDataSet,
    RequestContext,
)

__all__ = ["Association", "Response", "instance_transfer_syntax"]

log = logging.getLogger(__name__)

#: Requests queued beyond the window before we stop reading from the peer.
_BACKLOG = 16


class Association(ScuOperations):
    """One DICOM association, requestor or acceptor; see the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        handlers: HandlerRegistry | None = None,
        max_pdu: int,
        artim_timeout: float = 30.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
        keepalive: bool = False,
        max_identifier_length: int | None = DEFAULT_MAX_IDENTIFIER_LENGTH,
        max_dataset_length: int | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.role = role
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.dimse_timeout = dimse_timeout
        self.idle_timeout = idle_timeout
        self.machine = UpperLayerMachine(role, artim_timeout=artim_timeout,
                                         max_pdata_length=max_pdu)
        self.protocol = UpperLayerProtocol(self.machine, self._on_indication, keepalive=keepalive,
                                           on_pdata=self._on_pdata)
        self.rq: AAssociateRQ | None = None
        self._negotiated: Negotiated | None = None
        self._established: asyncio.Future[Negotiated] = self._loop.create_future()
        self._associate_rq: asyncio.Future[AAssociateRQ] = self._loop.create_future()
        self._released: asyncio.Future[None] = self._loop.create_future()
        self._release_reason: str | None = None  # why nothing can be sent after a release
        self._closed = asyncio.Event()
        self._error: AssociationError | None = None
        self._pending: dict[int, Operation] = {}
        self._drained: asyncio.Future[None] | None = None
        self._releasing = False
        self._next_id = 0
        self._window: asyncio.Semaphore | None = None
        self._perform_limit = 1
        self._performing = asyncio.Semaphore(1)
        self._read_limit = 1 + _BACKLOG
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancels: dict[int, asyncio.Event] = {}  # per request being performed
        #: Performer tasks not started yet (see _drop_unstarted).
        self._unstarted: dict[asyncio.Task[None], tuple[RequestContext, Awaitable[None] | None]
                              ] = {}
        self._gate = ReadGate(self.protocol.pause_reading, self.protocol.resume_reading,
                              self._on_gate)
        self._inbound = InboundStores(self, max_identifier_length, max_dataset_length)
        self._idle = IdleWatch(self._loop, idle_timeout, self._busy, self._on_idle)
        self._deadlines = DeadlineWatch(self._loop)
        self._release_due = False
        #: Why the peer (or its silence) ended the association, when nothing was logged for
        #: it here: the server logs it once (see :meth:`Server._serve`).
        self.ended_by_peer: str | None = None
        #: The C-STORE whose data set was being received when the association ended.
        self.dropped: Message | None = None
        self._rejected = False
        for fut in (self._established, self._associate_rq, self._released):
            fut.add_done_callback(_consume)

    # -- public state --------------------------------------------------------------------------
    @property
    def negotiated(self) -> Negotiated:
        if self._negotiated is None:
            raise AssociationError("the association is not established")
        return self._negotiated

    @property
    def calling_ae(self) -> str:
        return self.rq.calling_ae if self.rq is not None else ""

    @property
    def called_ae(self) -> str:
        return self.rq.called_ae if self.rq is not None else ""

    @property
    def peer(self) -> tuple[str, int] | None:
        return self.protocol.peer

    @property
    def is_established(self) -> bool:
        return self._negotiated is not None and self._error is None and not self._released.done()

    @property
    def error(self) -> AssociationError | None:
        """Why the association ended abnormally (None while alive or after a normal release)."""
        return self._error

    def is_cancelled(self, message_id: int) -> bool:
        """Whether the peer sent a C-CANCEL for the request with this message ID."""
        event = self._cancels.get(message_id)
        return event is not None and event.is_set()

    def cancel_event(self, message_id: int) -> asyncio.Event:
        """Set when a C-CANCEL arrives for the request we perform with ``message_id``.

        Each request gets a fresh event (a reused message ID starts uncancelled); KeyError when
        no request with that ID is being performed.
        """
        return self._cancels[message_id]

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def wait_performed(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout``) until the requests being performed have finished, e.g.
        the handler tasks an abort cancelled, whose cleanup may still run."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- establishment ---------------------------------------------------------------------------
    async def established(self) -> Negotiated:
        """Requestor: wait for the A-ASSOCIATE-AC (raises AssociationRejected/Aborted)."""
        return await asyncio.shield(self._established)

    async def wait_associate_request(self) -> AAssociateRQ:
        """Acceptor: wait for the peer's A-ASSOCIATE-RQ (raises AssociationAborted)."""
        return await asyncio.shield(self._associate_rq)

    def accept(self, ac: AAssociateAC, negotiated: Negotiated) -> None:
        """Acceptor: send the A-ASSOCIATE-AC and start serving."""
        self._setup(negotiated)
        self.protocol.call(self.machine.accept, ac)
        if not self._established.done():
            self._established.set_result(negotiated)

    def reject(self, rj: AAssociateRJ) -> None:
        """Acceptor: send the A-ASSOCIATE-RJ (the requestor closes the connection)."""
        self._rejected = True  # the peer closes the connection: a normal end
        self.protocol.call(self.machine.reject, rj)

    def _setup(self, negotiated: Negotiated) -> None:
        self._negotiated = negotiated
        invoked, performed = negotiated.async_window
        if self.role is Role.ACCEPTOR:
            invoked, performed = performed, invoked
        self._window = asyncio.Semaphore(invoked) if invoked > 0 else None
        self._perform_limit = performed if performed > 0 else UNLIMITED_WINDOW_CAP
        self._performing = asyncio.Semaphore(self._perform_limit)
        # Reading stops only when the peer queues far more than the window allows: below that
        # we keep reading so that C-CANCEL and A-ABORT are seen while requests are performed.
        self._read_limit = self._perform_limit + _BACKLOG
        self._idle.timeout = self.idle_timeout
        self._idle.start()

    # -- indications from the upper layer --------------------------------------------------------
    def _on_indication(self, out: Output) -> None:
        if isinstance(out, PDataIndication):
            self._on_pdata(out.pdu)
        elif isinstance(out, AssociateAccepted):
            self._on_accepted(out.ac)
        elif isinstance(out, AssociateIndication):
            self.rq = out.rq
            if not self._associate_rq.done():
                self._associate_rq.set_result(out.rq)
        elif isinstance(out, AssociateRejected):
            rj = out.rj
            self._fail(AssociationRejected(rj.result, rj.source, rj.reason))
        elif isinstance(out, ReleaseIndication):
            self._on_release_indication()
        elif isinstance(out, ReleaseConfirmation):
            if self.machine.awaiting_release_response:  # acceptor side of a collision
                self.protocol.call(self.machine.release_response)
            self._finish_release("association released")
        elif isinstance(out, AbortIndication):
            kind = "A-P-ABORT" if out.provider else "A-ABORT"
            why = ""
            if self._error is None and not self._released.done():
                self._note_peer_end(out)
                if out.provider and self.ended_by_peer:
                    why = f": {self.ended_by_peer}"
            self._fail(AssociationAborted(
                f"{kind} (source {out.source}, reason {out.reason}){why}",
                source=out.source, reason=out.reason))
        elif isinstance(out, Closed):
            self._on_closed()

    def _on_accepted(self, ac: AAssociateAC) -> None:
        assert self.rq is not None
        try:
            negotiated = negotiated_from_ac(self.rq, ac)
        except ProtocolError as exc:
            self._fail(AssociationAborted(f"unusable A-ASSOCIATE-AC: {exc}"))
            self.protocol.abort()
            return
        self._setup(negotiated)
        if not self._established.done():
            self._established.set_result(negotiated)

    def _on_release_indication(self) -> None:
        """The peer asked to release: answer once the requests we are performing are done."""
        if self.machine.state.name == "STA9":  # requestor side of a collision: answer now
            self.protocol.call(self.machine.release_response)
            return
        self._release_due = True
        self._maybe_release_response()

    def _maybe_release_response(self) -> None:
        if self._release_due and not self._tasks and self.machine.awaiting_release_response:
            self._release_due = False
            self.protocol.call(self.machine.release_response)
            self._finish_release("association released by the peer")

    def _finish_release(self, reason: str) -> None:
        if self._release_reason is None:
            self._release_reason = reason
        if not self._released.done():
            self._released.set_result(None)
        for op in list(self._pending.values()):
            op.fail(AssociationAborted("association released with the operation outstanding"))

    def _note_peer_end(self, out: AbortIndication) -> None:
        """Record why the peer ended the association (an invalid PDU is logged by the core)."""
        if not out.provider:
            self.ended_by_peer = f"A-ABORT from the peer (source {out.source}, reason {out.reason})"
        elif self.protocol.artim_fired:
            self.ended_by_peer = "ARTIM timer expired"
        elif self.protocol.connection_is_lost:
            self.ended_by_peer = "connection closed by the peer without A-RELEASE"

    def _on_closed(self) -> None:
        if not self._released.done() and self._error is None:
            if not self._rejected and self.protocol.state_at_close is not State.STA13:
                self.ended_by_peer = ("no A-ASSOCIATE-RQ within the ARTIM timeout"
                                      if self.protocol.artim_fired else "connection closed"
                                      if self.rq is not None else
                                      "connection closed before an A-ASSOCIATE-RQ")
            self._fail(AssociationAborted("connection closed"))
        self._inbound.discard()
        self._idle.stop()
        self._deadlines.close()
        self._closed.set()

    def _fail(self, error: AssociationError) -> None:
        """The association ended abnormally: every waiter gets ``error``; handlers stop."""
        if self._error is None:
            self._error = error
        for fut in (self._established, self._associate_rq, self._released):
            if not fut.done():
                fut.set_exception(_fresh(error))
        for op in list(self._pending.values()):
            op.fail(error)
            self._free_slot(op, self._window)  # a request waiting for a slot fails at once
        self._wake_drained()
        self.protocol.interrupt_drain()
        for task in self._tasks:
            task.cancel()
        self.dropped = self._inbound.discard() or self.dropped

    # -- incoming messages -----------------------------------------------------------------------
    def _on_pdata(self, pdu: PDataTF) -> None:
        self._idle.last_activity = self._loop.time()
        assembler = self._inbound.assembler
        try:
            for pdv in pdu.pdvs:
                event = assembler.feed(pdv)
                if event is None:
                    continue
                if type(event) is MessageReceived:
                    self._dispatch(event.context_id, event.message, event.dataset)
                elif type(event) is DataFragment:
                    self._inbound.fragment(event)
                elif type(event) is CommandReceived:
                    self._inbound.start(event)
                elif type(event) is UnrecognizedRequest:
                    self._unrecognized(event)
                elif type(event) is OversizedRequest:
                    self._oversized(event)
        except ProtocolError as exc:
            log.warning("aborting: %s", exc)
            self._fail(AssociationAborted(f"protocol error: {exc}"))
            self.protocol.abort()

    def _dispatch(self, context_id: int, message: Message, data: bytes | None) -> None:
        if message.command_field & 0x8000:
            self._on_response(message, context_id, data)
        elif isinstance(message, CCancelRQ):  # unknown or completed message IDs are ignored
            event = self._cancels.get(message.message_id_being_responded_to)
            if event is not None:
                event.set()
        else:
            cx = self._request_context(context_id)
            if cx is None:
                return
            dataset = None if data is None else ReceivedDataSet(cx.transfer_syntax, data)
            request = RequestContext(self, cx, message, dataset)
            if self.may_perform(cx):
                self._on_request(request)
            elif self._after_our_release(message):
                _drop_unstarted(request, None)
            else:
                self._refuse_role(request)

    def _refuse_role(self, request: RequestContext) -> None:
        """Answer 0x0122 to a request on a context where we are not SCP (role selection)."""
        log.warning("%s on context %d, where we are not SCP: refused 0x0122",
                    type(request.message).__name__, request.context.context_id)
        self._spawn(self._unsupported(request, 0x0122, ROLE_REFUSED))

    def may_perform(self, cx: AcceptedContext) -> bool:
        """Whether we may perform (be SCP for) requests on ``cx``: the requestor only where role
        selection made it SCP, the acceptor where the requestor kept its SCU role."""
        return cx.scp_role if self.role is Role.REQUESTOR else cx.scu_role

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (an answer) as a tracked task, so a release waits for it."""
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._performed)

    def _unrecognized(self, event: UnrecognizedRequest) -> None:
        """Answer a request of a command field we do not know with 0x0211 (PS3.7)."""
        cx = self._request_context(event.context_id)
        if cx is None or self._after_our_release(event):
            return
        log.warning("unrecognized operation 0x%04X (message ID %d) on context %d: answered "
                    "0x0211", event.command_field, event.message_id, event.context_id)
        command = commands.encode_unrecognized(event.command_field, event.message_id,
                                               event.sop_class_uid)
        self._spawn(self._answer_unrecognized(cx.context_id, command))

    def _oversized(self, event: OversizedRequest) -> None:
        """Refuse a request whose identifier was longer than our limit (read and dropped)."""
        cx = self._request_context(event.context_id)
        if cx is None or self._after_our_release(event.message):
            return
        request = RequestContext(self, cx, event.message, None)
        if not self.may_perform(cx):  # as any request there: the role comes first
            self._refuse_role(request)
            return
        log.warning("%s (message ID %s) on context %d: data set longer than %d bytes, "
                    "refused", type(event.message).__name__,
                    getattr(event.message, "message_id", "?"),
                    event.context_id, event.limit)
        # C-MOVE/C-GET have no plain 'out of resources'; A701 is theirs (PS3.4 C.4.2.1.5, C.4.3.1.4)
        status = 0xA701 if event.message.command_field in (0x0010, 0x0021) else 0xA700
        self._spawn(self._unsupported(request, status, f"data set longer than {event.limit} bytes"))

    async def _answer_unrecognized(self, context_id: int, command: bytes) -> None:
        try:
            await self.send_encoded(context_id, command)
        except AssociationError:
            pass  # the association is gone; nothing to answer

    def _on_response(self, message: Message, context_id: int, data: Any) -> None:
        message_id = getattr(message, "message_id_being_responded_to", -1)
        op = self._pending.get(message_id)
        if op is None:
            log.warning("response to no outstanding request: %r", message)
            return
        cx = self.negotiated.contexts.get(context_id)
        if context_id != op.context_id or cx is None:
            # a response travels on its request's context (PS3.8 Annex E): from another one
            # its SOP class and transfer syntax cannot be trusted
            why = (f"response to message {message_id} on presentation context {context_id}; "
                   f"the request went on context {op.context_id}")
            log.warning("aborting: %s", why)
            self._fail(AssociationAborted(f"protocol error: {why}"))
            self.protocol.abort()
            return
        ts = cx.transfer_syntax
        dataset = None if data is None else ReceivedDataSet(ts, data)
        op.deliver((message, dataset), is_final(message))

    def _request_context(self, context_id: int) -> AcceptedContext | None:
        """The accepted context a request arrived on; aborts when there is none."""
        cx = self.negotiated.contexts.get(context_id)
        if cx is None:
            log.warning("aborting: request on presentation context %d, which was not accepted "
                        "(PS3.8 Annex E)", context_id)
            self._fail(AssociationAborted(f"request on unaccepted context {context_id}"))
            self.protocol.abort()
        return cx

    def _after_our_release(self, message: object) -> bool:
        """Whether a request arrived after our A-RELEASE-RQ (the peer sent it before it saw
        ours): nothing can be sent in Sta7, so it cannot be answered, only logged."""
        if self.machine.state is not State.STA7:
            return False
        log.warning("%r arrived after our A-RELEASE-RQ: it cannot be answered (PS3.8 Sta7)",
                    message)
        return True

    def _on_request(self, request: RequestContext) -> None:
        if self._after_our_release(request.message):
            _drop_unstarted(request, None)  # a streamed C-STORE leaves no temporary file
            return
        for op in self._pending.values():  # a sub-operation shows the peer is working
            if op.timer_wanted:
                op.restart_timer()
        message = request.message
        cancel = self._track(request)
        rest: Awaitable[None] | None = None
        inline = self.handlers.inline(message.command_field) if not self._tasks else None
        if inline is not None:  # nothing else is being performed: the order is kept
            try:
                rest = inline(request)
            except AssociationError:
                pass  # the association is gone; nothing to answer
            except Exception:
                log.exception("performer for %r failed", message)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self._handler_escaped(message, exc)
                return
            if rest is None:
                self._untrack(message, cancel)
                self._maybe_release_response()
                return
        task = self._loop.create_task(self._perform(request, cancel, rest))
        self._tasks.add(task)
        self._unstarted[task] = (request, rest)
        task.add_done_callback(self._performed)
        if len(self._tasks) >= self._read_limit and not self._gate.backlog:
            self._gate.backlog = True
            self._gate.update()

    def _handler_escaped(self, message: Message, exc: BaseException) -> None:
        """A handler raised a BaseException that no service turns into a status: the request
        cannot be answered, so the association is aborted at once (never left waiting)."""
        log.error("performer for %r raised %s: aborting the association", message,
                  type(exc).__name__, exc_info=exc)
        self._fail(AssociationAborted(f"aborted: a handler raised {type(exc).__name__}",
                                      source=AbortSource.SERVICE_USER, reason=0))
        self.protocol.abort()

    def _track(self, request: RequestContext) -> asyncio.Event:
        """A fresh cancel event for the request (a reused message ID starts uncancelled)."""
        event = self._cancels[getattr(request.message, "message_id", -1)] = asyncio.Event()
        return event

    def _untrack(self, message: Message, cancel: asyncio.Event) -> None:
        message_id = getattr(message, "message_id", -1)
        if self._cancels.get(message_id) is cancel:
            del self._cancels[message_id]

    async def _perform(self, request: RequestContext, cancel: asyncio.Event,
                       started: Awaitable[None] | None = None) -> None:
        """Perform a request in its task (or finish one an inline performer started)."""
        message = request.message
        self._unstarted.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        try:
            if started is not None:
                await started
            else:
                performer = self.handlers.get(message.command_field)
                async with self._performing:
                    if performer is None:
                        await self._unsupported(request)
                    else:
                        await performer(request)
        except AssociationError:
            pass  # the association is gone; nothing to answer
        except Exception:
            log.exception("performer for %r failed", message)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # we were cancelled (the association ended, a C-CANCEL...)
            self._handler_escaped(message, exc)  # a handler's own stray CancelledError
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._handler_escaped(message, exc)
        finally:
            self._untrack(message, cancel)

    def _performed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        unstarted = self._unstarted.pop(task, None)
        if unstarted is not None:
            _drop_unstarted(*unstarted)
        if self._gate.backlog and len(self._tasks) < self._read_limit:
            self._gate.backlog = False
            self._gate.update()
        self._maybe_release_response()

    async def _unsupported(self, request: RequestContext, status: int = 0x0211,
                           comment: str | None = None) -> None:
        """A failure response (default 0x0211, unrecognized operation) to ``request``."""
        rq = request.message
        rsp_type: Any = MESSAGE_TYPES.get(rq.command_field | 0x8000)
        if rsp_type is None:
            return
        rsp = rsp_type(
            message_id_being_responded_to=getattr(rq, "message_id", 0),
            affected_sop_class_uid=getattr(rq, "affected_sop_class_uid", None),
            status=status, error_comment=comment,
        )
        try:
            await request.respond(rsp)
        except AssociationError:
            pass  # the association is gone; nothing to answer

    # -- idle timeout (the watch lives in dimse.operations) -------------------------------------
    def _busy(self) -> bool:
        """Requests in flight either way: the association is not idle."""
        return bool(self._tasks or self._pending)

    def _on_idle(self, quiet: float) -> None:
        log.info("aborting association idle for %.1f s", quiet)
        self._fail(AssociationAborted("idle timeout"))
        self.protocol.abort()

    # -- ending ----------------------------------------------------------------------------------
    async def release(self, timeout: float | None = None) -> None:
        """A-RELEASE, once every operation we invoked has its final response; aborts (and
        raises DimseTimeout) when both have not happened within ``timeout`` in all (default:
        the DIMSE timeout)."""
        if self._error is not None or self._closed.is_set() or self._released.done():
            return  # aborted, closed, or already released (by us or by the peer)
        self._releasing = True  # new requests are refused from now on
        self._gate.closing = True  # read the A-RELEASE-RP whatever consumers lag
        self._gate.update()
        limit = timeout or self.dimse_timeout
        waiting = ("the final responses of the operations still outstanding (a find iterator "
                   "left unread? close it, e.g. with contextlib.aclosing)")
        try:
            async with asyncio.timeout(limit):
                await self._wait_outstanding()
                waiting = "our answers to the requests we are performing"
                await self._wait_performed()
                if self._error is not None or self._closed.is_set() or self._released.done():
                    return  # lost (or released by the peer) while the last responses came
                with contextlib.suppress(ProtocolError):
                    self.protocol.call(self.machine.release_request)
                waiting = "the A-RELEASE-RP"
                await asyncio.shield(self._released)
                await self._closed.wait()
        except TimeoutError as exc:
            self.abort()
            raise DimseTimeout(f"waited {limit} s for {waiting}; association aborted") from exc
        except AssociationAborted:
            return  # the peer aborted instead of answering: nothing left to release
        except asyncio.CancelledError:  # a graceful close cancelled falls back to an abort
            self.abort()
            self.protocol.close_transport()
            raise

    async def _wait_performed(self) -> None:
        """Wait until every request of the peer we are performing has been answered: after our
        A-RELEASE-RQ nothing more can be sent (Sta7), so it must not overtake them. The caller
        bounds the wait; a handler releasing from inside itself is not waited for."""
        me = asyncio.current_task()
        while self._error is None and (tasks := self._tasks - {me}):
            await asyncio.wait(tasks)

    def abort(self) -> None:
        """A-ABORT (source service-user); safe to call at any time."""
        if self._error is None and not self._closed.is_set():
            self._fail(AssociationAborted("aborted by the local user",
                                          source=AbortSource.SERVICE_USER, reason=0))
        self.protocol.abort()

    async def aclose(self) -> None:
        """Abort and wait until the connection is closed (bounded by ARTIM on the peer side)."""
        self.abort()
        self.protocol.close_transport()
        await self._closed.wait()


def _drop_unstarted(request: RequestContext, started: Awaitable[None] | None) -> None:
    """A performer task cancelled (by an abort) before its first step never runs a line, so
    the cleanup in its ``except``/``finally`` never happens: the C-STORE sink holding the
    complete data set is discarded here (no temporary file stays behind), unless its handler
    already decided (only the response was left to send: :class:`Answered`), and the awaitable
    an inline performer returned is closed (no "never awaited" warning)."""
    if isinstance(started, Answered):  # its sink is committed or discarded already
        started.close()
        return
    if isinstance(started, Coroutine):
        started.close()
    dataset = request.dataset
    if dataset is not None and dataset.sink is not None:
        try:
            dataset.sink.discard()
        except Exception:
            log.exception("discarding the data set of %r failed", request.message)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (nobody may be waiting on it)."""
    if not fut.cancelled():
        fut.exception()
