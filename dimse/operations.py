"""Invoked operations and the timers that watch an association (used by ``dimse.association``).

* :class:`Operation`: one request we invoked, waiting for its response(s), with its DIMSE timer.
  The association restarts the timer on every Pending response and on every sub-operation the
  peer sends (the peer shows it is working), and stops it at the final response.
* :class:`IdleWatch`: the idle timeout. Activity (P-DATA in or out) only stamps a time; a single
  timer checks the stamp when it fires and re-arms itself for the remaining time, so the hot path
  never touches a timer handle. A busy association (requests in flight either way) is never idle.

Both are loop-bound helpers without any DICOM knowledge; expiry actions are callbacks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["IdleWatch", "Operation"]

#: The smallest delay the idle check re-arms itself with (avoids a busy loop near the deadline).
_MIN_IDLE_RECHECK = 0.05


class Operation:
    """One invoked operation waiting for its response(s), and its DIMSE timer."""

    __slots__ = ("context_id", "error", "responses", "timer", "waiter")

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.responses: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None

    def deliver(self, response: Any) -> None:
        self.responses.append(response)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Fail the operation (the first error wins); a waiting :meth:`next` raises it."""
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, loop: asyncio.AbstractEventLoop,
                   fresh: Callable[[BaseException], BaseException]) -> Any:
        """The next response; raises ``fresh(error)`` once failed and nothing is left."""
        while not self.responses:
            if self.error is not None:
                raise fresh(self.error)
            self.waiter = loop.create_future()
            await self.waiter
            self.waiter = None
        return self.responses.popleft()

    # -- DIMSE timer -------------------------------------------------------------------------
    def restart_timer(self, loop: asyncio.AbstractEventLoop, timeout: float | None,
                      expired: Callable[[Operation], None]) -> None:
        """(Re)start the DIMSE timer: ``expired(self)`` runs after ``timeout`` s (None = never)."""
        if timeout is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = loop.call_later(timeout, self._expire, expired)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self, expired: Callable[[Operation], None]) -> None:
        self.timer = None
        expired(self)


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
