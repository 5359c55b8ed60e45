"""Invoked operations, socket-read flow control and the idle watch (used by ``dimse.association``).

* :class:`ReadGate`: whether the association reads from the socket. Reading pauses when the
  performer backlog is too long, or when an operation's response buffer reached its high-water
  mark (a consumer lags) and no other consumer is starved waiting for a response (one slow
  consumer must not stall the others sharing the socket: liveness beats the bound then).
  ``closing`` (release, drain) forces reading on.
* :class:`Operation`: one request we invoked, its bounded response buffer (high-water ``buffer``,
  low-water ``buffer // 2``) and its DIMSE timer. The timer measures the *peer*: it is restarted
  by every Pending response and sub-operation, and suspended while the gate keeps reading paused
  (then the delay is ours), restarted in full when reading resumes. An operation abandoned by its
  consumer *drains*: later responses are dropped, and the final one retires it.
* :class:`DeadlineWatch`: the DIMSE timers of all operations of an association. Restarting a
  timer only stamps a deadline (a float); one loop timer, armed at the earliest deadline, checks
  the stamps when it fires and re-arms itself for the next one. A request/response pair thus
  costs no ``call_later``/``cancel`` (which dominated the timer cost per small C-STORE).
* :class:`IdleWatch`: the idle timeout. Activity (P-DATA in or out) only stamps a time; a single
  timer checks the stamp when it fires and re-arms itself for the remaining time, so the hot path
  never touches a timer handle. A busy association (requests in flight either way) is never idle.

All are loop-bound helpers without any DICOM knowledge; expiry actions are callbacks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["CANCEL_DRAIN_TIMEOUT", "DEFAULT_BUFFER", "UNLIMITED_WINDOW_CAP", "DeadlineWatch",
           "IdleWatch", "Operation", "ReadGate"]

#: The smallest delay the idle check re-arms itself with (avoids a busy loop near the deadline).
_MIN_IDLE_RECHECK = 0.05
#: Responses buffered per operation before reading pauses (the high-water mark).
DEFAULT_BUFFER = 32
#: How long the final response may take after a C-CANCEL when no DIMSE timeout is set.
CANCEL_DRAIN_TIMEOUT = 30.0
#: Operations run at once (performed, or invoked by store_many) when the negotiated
#: asynchronous operations window says "unlimited" (0).
UNLIMITED_WINDOW_CAP = 64


class ReadGate:
    """Pauses and resumes reading from the socket; see the module docstring."""

    __slots__ = ("_on_change", "_pause", "_resume", "backlog", "closing", "holds", "paused",
                 "starved")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 on_change: Callable[[bool], None]) -> None:
        self._pause, self._resume, self._on_change = pause, resume, on_change
        self.holds: set[object] = set()  # operations whose buffer is above the high-water mark
        self.backlog = False  # too many requests being performed
        self.closing = False  # release or abort under way: read whatever comes
        self.starved = 0  # consumers waiting on an empty buffer
        self.paused = False

    def hold(self, owner: object) -> None:
        self.holds.add(owner)
        self.update()

    def release(self, owner: object) -> None:
        if owner in self.holds:
            self.holds.discard(owner)
            self.update()

    def update(self) -> None:
        paused = not self.closing and (self.backlog or (bool(self.holds) and not self.starved))
        if paused is not self.paused:
            self.paused = paused
            (self._pause if paused else self._resume)()
            self._on_change(paused)


class DeadlineWatch:
    """One loop timer for the DIMSE deadlines of many operations; see the module docstring."""

    __slots__ = ("_at", "_handle", "_loop", "operations")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the armed handle fires
        self.operations: set[Operation] = set()  # those with a deadline set

    def add(self, op: Operation, deadline: float) -> None:
        """``op`` has a (new) deadline: make sure the timer fires no later than it."""
        self.operations.add(op)
        if self._handle is None or deadline < self._at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        due = [op for op in self.operations if op.timer is not None and op.timer <= now]
        for op in due:
            op._expire()
        self.operations = {op for op in self.operations if op.timer is not None}
        if self.operations:
            self._arm(min(op.timer for op in self.operations if op.timer is not None))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.operations.clear()


class Operation:
    """One invoked operation: its response buffer, its DIMSE timer; see the module docstring."""

    __slots__ = ("_expired", "_loop", "_watch", "context_id", "draining", "error", "final", "gate",
                 "high", "holding", "low", "on_final", "on_retire", "responses", "slot_freed",
                 "stream", "suspended", "timeout", "timer", "timer_wanted", "waiter")

    def __init__(self, context_id: int, gate: ReadGate, loop: asyncio.AbstractEventLoop, *,
                 buffer: int = DEFAULT_BUFFER, timeout: float | None = None,
                 expired: Callable[[Operation], None] | None = None,
                 watch: DeadlineWatch | None = None) -> None:
        self.context_id = context_id
        self.gate = gate
        self._loop = loop
        self.high = max(1, buffer)
        self.low = self.high // 2
        self.responses: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.final = False  # the final response arrived
        self.holding = False  # this operation keeps the gate paused
        self.draining = False  # abandoned by its consumer: drop responses until the final
        self.on_retire: Callable[[], None] | None = None  # run once when a draining op ends
        self.on_final: Callable[[], None] | None = None  # run once when the final response came
        self.slot_freed = False  # its asynchronous operations window slot was given back
        self.stream = False  # a C-FIND/C-GET/C-MOVE read through an iterator (C-CANCEL applies)
        self.timeout = timeout
        self._expired = expired
        self._watch = watch
        self.timer: float | None = None  # the loop time of the DIMSE deadline, when running
        self.timer_wanted = False  # the timer should run (when not suspended)
        self.suspended = gate.paused  # reading is paused by us: the timer waits

    def deliver(self, response: Any, final: bool) -> None:
        """A response arrived (``final``: the non-Pending one that ends the operation)."""
        if final:
            self.final = True
            self.stop_timer()
            on_final, self.on_final = self.on_final, None
            if on_final is not None:
                on_final()
        elif self.timeout is not None:
            self.restart_timer()
        if self.draining:
            if final:
                self._retire()
            return
        self.responses.append(response)
        if not final and not self.holding and len(self.responses) >= self.high:
            self.holding = True
            self.gate.hold(self)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Fail the operation (the first error wins); a waiting :meth:`next` raises it."""
        if self.error is None:
            self.error = error
        self.stop_timer()
        self.gate.release(self)
        self.holding = False
        if self.draining:
            self._retire()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, fresh: Callable[[BaseException], BaseException]) -> Any:
        """The next response; raises ``fresh(error)`` once failed and nothing is left."""
        responses = self.responses
        while not responses:
            if self.error is not None:
                raise fresh(self.error)
            self.waiter = self._loop.create_future()
            gate = self.gate
            gate.starved += 1
            if gate.paused:
                gate.update()  # another consumer holds the gate: we need data, read on
            try:
                await self.waiter
            finally:
                self.waiter = None
                gate.starved -= 1
                if gate.holds:
                    gate.update()
        response = responses.popleft()
        if self.holding and len(responses) <= self.low:
            self.holding = False
            self.gate.release(self)
        return response

    def release_hold(self) -> None:
        """Stop holding the read gate (the operation ends, whatever its consumer did)."""
        if self.holding:
            self.holding = False
            self.gate.release(self)

    def drain(self, on_retire: Callable[[], None]) -> None:
        """The consumer left: drop buffered and later responses; ``on_retire`` at the end."""
        self.draining = True
        self.on_retire = on_retire
        self.responses.clear()
        if self.holding:
            self.holding = False
            self.gate.release(self)
        if self.final or self.error is not None:
            self._retire()

    def await_final_after_cancel(self) -> None:
        """C-CANCEL sent: the final response must come within the DIMSE timeout (or 30 s)."""
        if self.timeout is None:
            self.timeout = CANCEL_DRAIN_TIMEOUT
        self.restart_timer()

    def _retire(self) -> None:
        on_retire, self.on_retire = self.on_retire, None
        if on_retire is not None:
            on_retire()

    # -- DIMSE timer -------------------------------------------------------------------------
    def restart_timer(self) -> None:
        """(Re)start the DIMSE timer (no-op without a timeout; deferred while suspended)."""
        if self.timeout is None:
            return
        self.timer_wanted = True
        if self.suspended:
            self._forget()
            return
        deadline = self.timer = self._loop.time() + self.timeout
        watch = self._watch
        if watch is None:
            watch = self._watch = DeadlineWatch(self._loop)
        watch.add(self, deadline)

    def stop_timer(self) -> None:
        self.timer_wanted = False
        self._forget()

    def _forget(self) -> None:
        self.timer = None
        if self._watch is not None:
            self._watch.operations.discard(self)

    def suspend_timer(self, suspended: bool) -> None:
        """Reading paused by us (True): the timer stops; resumed (False): it restarts in full."""
        self.suspended = suspended
        if suspended:
            self._forget()
        elif self.timer_wanted:
            self.restart_timer()

    def _expire(self) -> None:
        self.timer = None
        self.timer_wanted = False
        if self._expired is not None:
            self._expired(self)


class IdleWatch:
    """The idle timeout of one association; see the module docstring.

    ``busy()`` tells whether requests are in flight (then the association is not idle);
    ``on_idle(quiet_seconds)`` runs once when the association has been quiet for ``timeout`` s.
    """

    __slots__ = ("_busy", "_loop", "_on_idle", "_timer", "last_activity", "stopped", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None,
                 busy: Callable[[], bool], on_idle: Callable[[float], None]) -> None:
        self._loop = loop
        self.timeout = timeout
        self._busy = busy
        self._on_idle = on_idle
        self._timer: asyncio.TimerHandle | None = None
        #: Loop time of the last activity; the owner stamps it on every P-DATA in or out.
        self.last_activity = loop.time()
        self.stopped = False

    def start(self) -> None:
        """Arm the watch (no-op without a timeout)."""
        if self.timeout:
            self._arm(self.timeout)

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._check)

    def _check(self) -> None:
        timeout = self.timeout
        assert timeout is not None
        self._timer = None
        if self.stopped:
            return
        quiet = self._loop.time() - self.last_activity
        if quiet < timeout:
            self._arm(max(timeout - quiet, _MIN_IDLE_RECHECK))
        elif self._busy():
            self._arm(timeout)
        else:
            self._on_idle(quiet)
