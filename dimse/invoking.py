"""The invoking side of an association: sending DIMSE messages and awaiting their responses.

:class:`Invoker` is a mixin of :class:`~dimse.association.Association` (the one public class):
it holds the methods that send messages (:meth:`~Invoker.send_message`,
:meth:`~Invoker.send_now`), pick message IDs, invoke operations (:meth:`~Invoker.request` and
its two halves :meth:`~Invoker.send_request` / :meth:`~Invoker.final_response`,
:meth:`~Invoker.request_stream`), retire them, send C-CANCEL, and handle the DIMSE timeout. The
association owns the state these methods use (declared below for the type checker) and the
dispatch that delivers incoming responses to the pending :class:`~dimse.operations.Operation`.

Operations in flight are bounded by the negotiated asynchronous operations window (a semaphore;
with the default window (1, 1) operations are serialized). Every response is awaited under the
DIMSE timeout, which a Pending response or an incoming sub-operation restarts; on expiry the
association is aborted and :class:`~dimse.errors.DimseTimeout` raised. Only C-FIND, C-GET and
C-MOVE responses may be Pending (:func:`is_final`). Sending is bounded too: a peer that reads
nothing for the DIMSE timeout gets the same treatment, and a message whose sending stops after its
first fragment and before its last (e.g. its task was cancelled) aborts the association, since the
fragments of a message must be contiguous (PS3.8 Annex E). After a release, calls raise
:class:`~dimse.errors.AssociationError` saying so.

Flow control (:meth:`Invoker.request_stream`): each invoked operation buffers at most ``buffer``
responses for its consumer; above that, reading from the socket pauses (resumed at half), and the
DIMSE timers are suspended meanwhile (they time the peer, not our consumer). A consumer that
leaves early makes the operation drain in the background (optionally after a C-CANCEL).

Also here: :func:`_fresh`, the copy of a stored association error that is raised instead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pdu.constants import AbortSource
from pdu.fsm import State
from pdu.machine import UpperLayerMachine
from pdu.negotiation import AcceptedContext, Negotiated
from pdu.transport import UpperLayerProtocol

from . import commands
from .assembly import fragment
from .errors import AssociationAborted, AssociationError, DimseTimeout
from .messages import CCancelRQ, Message
from .operations import DEFAULT_BUFFER, DeadlineWatch, IdleWatch, Operation, ReadGate
from .services import ReceivedDataSet
from .status import is_pending

__all__ = ["Invoker", "Response", "is_final"]

_E = TypeVar("_E", bound=BaseException)

log = logging.getLogger(__name__)

#: The responses that may be Pending (C-GET-RSP, C-FIND-RSP, C-MOVE-RSP).
_MULTI_RESPONSE = frozenset({0x8010, 0x8020, 0x8021})

#: A response message and its data set, if any.
Response = tuple[Message, ReceivedDataSet | None]


#: PDUs of one message smaller than this together go out in one write (one system call).
JOIN_LIMIT = 16384


def _joined(pdus: Iterator[bytes]) -> Iterator[bytes]:
    """The message's PDUs, small consecutive ones joined into one write.

    The command set and the data set travel in PDUs of their own, as DCMTK and pynetdicom send
    them (PS3.8 9.3.5 also allows one PDU with both PDVs, but GDCM 3.0 loses every second
    C-FIND response sent that way); joining the small ones keeps one write per response.
    """
    held = b""
    for pdu_bytes in pdus:
        if held:
            if len(held) + len(pdu_bytes) <= JOIN_LIMIT:
                held += pdu_bytes
                continue
            yield held
        if len(pdu_bytes) < JOIN_LIMIT:
            held = pdu_bytes
        else:
            held = b""
            yield pdu_bytes
    if held:
        yield held


class Invoker:
    """Invoking DIMSE operations; mixed into :class:`~dimse.association.Association`."""

    # State owned and initialised by Association.__init__ / _setup.
    _loop: asyncio.AbstractEventLoop
    protocol: UpperLayerProtocol
    machine: UpperLayerMachine
    dimse_timeout: float | None
    _error: AssociationError | None
    _pending: dict[int, Operation]
    _releasing: bool  # our release() has begun: no new request
    _drained: asyncio.Future[None] | None  # resolved when the last pending operation ends
    _next_id: int
    _window: asyncio.Semaphore | None
    _send_lock: asyncio.Lock
    _gate: ReadGate
    _idle: IdleWatch
    _deadlines: DeadlineWatch
    _released: asyncio.Future[None]
    _release_reason: str | None

    if TYPE_CHECKING:
        @property
        def negotiated(self) -> Negotiated: ...

        def _fail(self, error: AssociationError) -> None: ...

    # -- sending -------------------------------------------------------------------------------
    async def send_message(self, context_id: int, message: Message,
                           dataset: bytes | memoryview | None = None) -> None:
        """Send one DIMSE message (command + optional data set) on ``context_id``.

        A message's fragments must be contiguous on the wire (PS3.8 Annex E): if sending stops
        after the first fragment and before the last (cancellation, a stalled peer), the
        association is aborted, since nothing else can ever be sent on it. Cancelled before
        its first fragment, the association stays usable. Each wait for the peer to read is
        bounded by the DIMSE timeout (DimseTimeout, association aborted).
        """
        await self.send_encoded(context_id, self._encode_command(message), dataset)

    def _encode_command(self, message: Message) -> bytes:
        """The command set of ``message``. A response echoing a value of the peer's request
        that our encoder refuses (a UID over 64 characters...) is sent with the value as
        received; one that cannot be encoded at all aborts the association: a request is never
        left unanswered (PS3.7 9.3). Our own requests raise CommandEncodeError, nothing sent."""
        try:
            return commands.encode(message)
        except commands.CommandEncodeError as exc:
            if not message.command_field & 0x8000:
                raise
            try:
                command = commands.encode(message, echo=True)
            except commands.CommandEncodeError:
                log.error("cannot encode %s (%s): aborting the association",
                          type(message).__name__, exc)
                self._fail(AssociationAborted(f"aborted: cannot encode a response ({exc})",
                                              source=AbortSource.SERVICE_USER, reason=0))
                self.protocol.abort()
                raise AssociationAborted(f"aborted: cannot encode a response ({exc})") from exc
            log.warning("%s sent with the request's value as received: %s",
                        type(message).__name__, exc)
            return command

    async def send_encoded(self, context_id: int, command: bytes,
                           dataset: bytes | memoryview | None = None) -> None:
        """:meth:`send_message` for a command set already encoded."""
        self._check_usable()
        peer_max = self.negotiated.peer_max_pdu
        protocol = self.protocol
        async with self._send_lock:
            sent = 0
            try:
                for chunk in _joined(fragment(context_id, command, dataset, peer_max,
                                              coalesce=False)):
                    if protocol.writing_paused:
                        await self._drain()
                    self._check_usable()
                    protocol.send_pdata_bytes(chunk)
                    sent += 1
            except BaseException as exc:
                if sent:
                    self._abort_mid_message(exc)
                raise
        self._idle.last_activity = self._loop.time()

    def _check_usable(self) -> None:
        """Raise the AssociationError saying why nothing can be sent any more, if so."""
        if self._error is not None:
            raise _fresh(self._error)
        if self._released.done():
            raise AssociationError(self._release_reason or "association released")
        state = self.machine.state
        if state is not State.STA6 and state is not State.STA8:  # Evt9 has no action elsewhere
            raise AssociationError(f"cannot send in {state.name}: the association is being "
                                   "released (no P-DATA after our A-RELEASE-RQ, PS3.8 9.2) or "
                                   "is not established")

    async def _drain(self) -> None:
        """Wait until the peer reads again, at most the DIMSE timeout (then abort)."""
        try:
            async with asyncio.timeout(self.dimse_timeout):
                await self.protocol.drain()
        except ConnectionError as exc:
            raise (_fresh(self._error) if self._error is not None
                   else AssociationAborted("connection lost")) from exc
        except TimeoutError as exc:
            self._fail(AssociationAborted("aborted: the peer read nothing within the DIMSE "
                                          f"timeout ({self.dimse_timeout} s) while we sent",
                                          source=AbortSource.SERVICE_USER, reason=0))
            self.protocol.abort()
            raise DimseTimeout(f"the peer read nothing for {self.dimse_timeout} s while we "
                               "sent a message; association aborted") from exc

    def _abort_mid_message(self, exc: BaseException) -> None:
        """Sending stopped inside a message: abort (its remaining fragments cannot follow)."""
        if self._error is None and not self._released.done():
            why = "cancelled" if isinstance(exc, asyncio.CancelledError) else repr(exc)
            self._fail(AssociationAborted(
                f"aborted: sending a DIMSE message stopped after some of its fragments ({why})",
                source=AbortSource.SERVICE_USER, reason=0))
        self.protocol.abort()

    def send_now(self, context_id: int, message: Message) -> bool:
        """Send a message without a data set at once, if nothing is queued before it and the
        transport is not paused (True); False when it must wait (use :meth:`send_message`)."""
        self._check_usable()
        protocol = self.protocol
        if self._send_lock.locked() or protocol.writing_paused:
            return False
        for pdu_bytes in fragment(context_id, self._encode_command(message), None,
                                  self.negotiated.peer_max_pdu):
            protocol.send_pdata_bytes(pdu_bytes)
        self._idle.last_activity = self._loop.time()
        return True

    def _new_message_id(self) -> int:
        pending = self._pending
        while True:
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in pending:
                return self._next_id

    # -- invoking ------------------------------------------------------------------------------
    async def request(self, context: AcceptedContext, build: Any,
                      dataset: bytes | memoryview | None = None) -> Response:
        """Invoke one operation with a single final response; ``build(message_id) -> Message``.

        Pending responses are skipped. The same bookkeeping as :meth:`request_stream`, without
        an async generator per call (the hot path of C-STORE and C-ECHO).
        """
        sent = await self.send_request(context, build, dataset)
        return await self.final_response(*sent)

    async def send_request(self, context: AcceptedContext, build: Any,
                            dataset: bytes | memoryview | None
                            ) -> tuple[int, Operation, asyncio.Semaphore | None]:
        """The first half of :meth:`request`: take a window slot and a message ID, send the
        request, start its DIMSE timer; :meth:`final_response` is the second half."""
        window = await self._take_slot()
        message_id = self._new_message_id()
        op = Operation(context.context_id, self._gate, self._loop,
                       timeout=self.dimse_timeout, expired=self._dimse_timeout,
                       watch=self._deadlines)
        op.on_final = functools.partial(self._on_final, op, window)
        self._pending[message_id] = op
        try:
            await self.send_message(context.context_id, build(message_id), dataset)
        except BaseException:
            self._retire(message_id, op, window)
            raise
        op.restart_timer()
        return message_id, op, window

    async def final_response(self, message_id: int, op: Operation,
                              window: asyncio.Semaphore | None) -> Response:
        """Wait for the final response of a sent request (Pending ones are skipped)."""
        try:
            while True:
                response = await op.next(_fresh)
                if is_final(response[0]):
                    return response
        finally:
            if op.final or op.error is not None or self._error is not None:
                self._retire(message_id, op, window)
            else:  # cancelled before the final response: it frees the ID when it comes
                op.drain(functools.partial(self._retire, message_id, op, window))

    async def request_stream(self, context: AcceptedContext, build: Any,
                             dataset: bytes | memoryview | None = None, *,
                             buffer: int = DEFAULT_BUFFER, cancel_on_exit: bool = False
                             ) -> AsyncGenerator[Response, None]:
        """Invoke one operation and yield every response until the final (non-Pending) one.

        At most ``buffer`` responses wait for the consumer before reading from the socket pauses
        (it resumes at half); the DIMSE timer does not run meanwhile. A consumer leaving early
        (break, ``aclose()``, cancellation) makes the operation drain in the background: later
        responses are dropped until the final one, which frees the message ID and the window
        slot; ``cancel_on_exit`` also sends C-CANCEL for it.
        """
        window = await self._take_slot()
        message_id = self._new_message_id()
        op = Operation(context.context_id, self._gate, self._loop, buffer=buffer,
                       timeout=self.dimse_timeout, expired=self._dimse_timeout,
                       watch=self._deadlines)
        op.on_final = functools.partial(self._on_final, op, window)
        op.stream = True
        self._pending[message_id] = op
        retire = functools.partial(self._retire, message_id, op, window)
        sent = False
        try:
            await self.send_message(context.context_id, build(message_id), dataset)
            sent = True
            op.restart_timer()
            while True:
                response = await op.next(_fresh)
                yield response
                if is_final(response[0]):
                    return
        finally:
            if not sent or op.final or op.error is not None or self._error is not None:
                retire()
            else:  # abandoned before the final response
                op.drain(retire)
                if cancel_on_exit:
                    await self._cancel_abandoned(context, message_id, op)

    async def _take_slot(self) -> asyncio.Semaphore | None:
        """A slot of the asynchronous operations window (None when there is no window). The
        wait ends with DimseTimeout after a DIMSE timeout in which nothing arrived on the
        association: a slot held by an operation whose responses nobody reads would otherwise
        block every later request for good. A queue behind operations that progress waits."""
        if self._releasing:
            raise AssociationError("association being released: no new request")
        self._check_usable()
        window = self._window
        if window is None:
            return None
        if not window.locked():  # a slot is free: no wait, so no timer (the hot path)
            await window.acquire()
            return window
        while True:
            seen = self._idle.last_activity
            try:
                async with asyncio.timeout(self.dimse_timeout):
                    await window.acquire()
                break
            except TimeoutError as exc:
                if self._idle.last_activity == seen:
                    raise DimseTimeout(
                        f"no operation slot freed and nothing received for "
                        f"{self.dimse_timeout} s (the asynchronous operations window is full: "
                        "is an operation's iterator left unread?)") from exc
        if self._releasing or self._error is not None:  # while we waited: not ours to use
            window.release()
            self._check_usable()  # the association failed: its error
            raise AssociationError("association being released: no new request")
        return window

    def _free_slot(self, op: Operation, window: asyncio.Semaphore | None) -> None:
        if window is not None and not op.slot_freed:
            op.slot_freed = True
            window.release()

    def _on_final(self, op: Operation, window: asyncio.Semaphore | None) -> None:
        """The final response arrived: the operation no longer counts against the window or
        a release, even if its consumer has not read it yet."""
        self._free_slot(op, window)
        self._check_drained()

    def _retire(self, message_id: int, op: Operation, window: asyncio.Semaphore | None) -> None:
        op.stop_timer()
        op.release_hold()  # a consumer gone with responses buffered must not keep reading paused
        if self._pending.get(message_id) is op:
            del self._pending[message_id]
            self._free_slot(op, window)
            self._check_drained()

    def _outstanding(self) -> bool:
        """Whether an operation still waits for its final response."""
        return any(not op.final and op.error is None for op in self._pending.values())

    def _check_drained(self) -> None:
        if self._drained is not None and not self._outstanding():  # only when awaited
            self._wake_drained()

    def _wake_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def _wait_outstanding(self) -> None:
        """Wait until every operation we invoked has its final response: a release must not
        overtake them (PS3.4 C.4.1.3: after a C-CANCEL the SCP still sends its final
        response). The caller bounds the wait."""
        while self._outstanding() and self._error is None:
            self._drained = self._loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    async def _cancel_abandoned(self, context: AcceptedContext, message_id: int,
                                op: Operation) -> None:
        """C-CANCEL an operation its consumer left; its final response must follow in time."""
        op.await_final_after_cancel()
        with contextlib.suppress(AssociationError):
            await self.cancel(context, message_id)

    async def cancel_unread(self) -> None:
        """C-CANCEL each C-FIND/C-GET/C-MOVE still running that nobody is reading right now (an
        iterator broken out of but still referenced): at the end of an ``async with`` block
        nobody can read it any more, and the release would wait for all of its responses."""
        for message_id, op in list(self._pending.items()):
            if (op.stream and not op.final and not op.draining
                    and (op.waiter is None or op.waiter.done())):
                context = self.negotiated.contexts.get(op.context_id)
                if context is None:
                    continue
                op.await_final_after_cancel()
                with contextlib.suppress(AssociationError):
                    await self.cancel(context, message_id)

    async def cancel(self, context: AcceptedContext, message_id: int) -> None:
        """Send C-CANCEL for an outstanding C-FIND/C-GET/C-MOVE."""
        await self.send_message(context.context_id,
                                CCancelRQ(message_id_being_responded_to=message_id))

    # -- DIMSE timeout (the timers live in dimse.operations) -----------------------------------
    def _on_gate(self, paused: bool) -> None:
        """Reading paused by us: the DIMSE timers wait (the delay is ours, not the peer's)."""
        for op in self._pending.values():
            op.suspend_timer(paused)

    def _dimse_timeout(self, op: Operation) -> None:
        error = DimseTimeout(f"no response within {self.dimse_timeout} s; association aborted")
        op.fail(error)
        self._fail(AssociationAborted("aborted after a DIMSE timeout",
                                      source=AbortSource.SERVICE_USER, reason=0))
        self.protocol.abort()


def is_final(message: Message) -> bool:
    """Whether a response ends its operation. Only C-FIND, C-GET and C-MOVE have Pending
    responses; any other (C-STORE, C-ECHO: PS3.4 B.2, A.4) has exactly one, final whatever its
    status says (as other toolkits take it): a stray 0xFF00 must not make us wait forever."""
    return (message.command_field not in _MULTI_RESPONSE
            or not is_pending(getattr(message, "status", 0)))


def _fresh(error: _E) -> _E:
    """A copy of a stored error to raise: raising the stored object itself would attach the
    raising frames' traceback to it, so the association (which keeps ``error``) would pin their
    locals, e.g. the 20 MB data set of an aborted C-STORE, for as long as it lives."""
    cls = type(error)
    fresh = cls.__new__(cls, *error.args)  # not cls(...): __init__ signatures differ
    fresh.__dict__.update(vars(error))
    return fresh
