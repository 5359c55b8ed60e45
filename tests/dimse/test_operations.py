"""Operation buffers and the read gate, without sockets: high/low water marks, starvation,
draining, and the DIMSE timer suspended while we pause reading."""

from __future__ import annotations

import asyncio

import pytest

from dimse.operations import Operation, ReadGate

pytestmark = pytest.mark.timeout(10)


class Reads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.changes: list[bool] = []

    def gate(self) -> ReadGate:
        return ReadGate(lambda: self.calls.append("pause"), lambda: self.calls.append("resume"),
                        self.changes.append)


def _fresh(error: BaseException) -> BaseException:
    return error


async def test_high_and_low_water_marks() -> None:
    reads = Reads()
    gate = reads.gate()
    op = Operation(1, gate, asyncio.get_running_loop(), buffer=4)
    for i in range(3):
        op.deliver(i, False)
    assert not gate.paused
    op.deliver(3, False)
    assert gate.paused and reads.calls == ["pause"]
    assert await op.next(_fresh) == 0 and gate.paused  # 3 left: above the low-water mark (2)
    assert await op.next(_fresh) == 1
    assert not gate.paused and reads.calls == ["pause", "resume"]
    assert reads.changes == [True, False]


async def test_a_starved_consumer_reopens_a_gate_held_by_another() -> None:
    reads = Reads()
    gate = reads.gate()
    loop = asyncio.get_running_loop()
    slow, hungry = Operation(1, gate, loop, buffer=1), Operation(3, gate, loop, buffer=1)
    slow.deliver("a", False)
    assert gate.paused
    waiting = asyncio.ensure_future(hungry.next(_fresh))
    await asyncio.sleep(0)
    assert not gate.paused  # liveness: the hungry consumer needs the socket
    hungry.deliver("b", False)
    assert await waiting == "b"
    assert gate.paused  # the slow consumer's hold applies again


async def test_drain_releases_the_gate_and_retires_on_the_final_response() -> None:
    gate = Reads().gate()
    op = Operation(1, gate, asyncio.get_running_loop(), buffer=2)
    op.deliver(1, False)
    op.deliver(2, False)
    assert gate.paused
    retired: list[bool] = []
    op.drain(lambda: retired.append(True))
    assert not gate.paused and not op.responses and not retired
    op.deliver(3, False)  # dropped
    assert not op.responses
    op.deliver(4, True)
    assert retired == [True]


async def test_timer_suspended_while_paused_and_restarted_in_full() -> None:
    expired: list[Operation] = []
    gate = Reads().gate()
    op = Operation(1, gate, asyncio.get_running_loop(), timeout=0.05, expired=expired.append)
    op.restart_timer()
    op.suspend_timer(True)
    await asyncio.sleep(0.1)
    assert expired == [] and op.timer is None and op.timer_wanted
    op.deliver("pending", False)  # a response while suspended does not arm the timer
    assert op.timer is None
    op.suspend_timer(False)
    assert op.timer is not None
    await asyncio.sleep(0.1)
    assert expired == [op]


async def test_deadline_watch_one_timer_for_many_operations() -> None:
    """Restarted deadlines move; only the operations past theirs expire; stopped ones never."""
    from dimse.operations import DeadlineWatch

    loop = asyncio.get_running_loop()
    watch = DeadlineWatch(loop)
    expired: list[Operation] = []
    gate = Reads().gate()
    ops = [Operation(i, gate, loop, timeout=0.05, expired=expired.append, watch=watch)
           for i in range(3)]
    for op in ops:
        op.restart_timer()
    ops[1].stop_timer()
    assert ops[1] not in watch.operations
    await asyncio.sleep(0.03)
    ops[2].restart_timer()  # pushed back: must survive the first check
    await asyncio.sleep(0.04)
    assert expired == [ops[0]]
    await asyncio.sleep(0.05)
    assert expired == [ops[0], ops[2]]
    assert not watch.operations
    watch.close()
