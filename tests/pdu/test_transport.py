"""The asyncio shell around the state machine: writes on a transport closed under it."""

from __future__ import annotations

import asyncio
from typing import Any

from pdu.fsm import State
from pdu.machine import Role, UpperLayerMachine
from pdu.transport import UpperLayerProtocol

from .pair import make_rq


class ClosedHandle(asyncio.Transport):
    """What uvloop hands over when a connect is cancelled by its timeout: the handle is
    already closed, is_closing() still says False, and write() raises RuntimeError."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        self.writes += 1
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                           "the handler is closed")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True


async def test_writes_on_a_handle_closed_under_us_are_dropped() -> None:
    machine = UpperLayerMachine(Role.REQUESTOR)
    machine.associate_request(make_rq())
    indications: list[object] = []
    protocol = UpperLayerProtocol(machine, indications.append)
    handle = ClosedHandle()
    protocol.connection_made(handle)  # sends the A-ASSOCIATE-RQ: the write fails, quietly
    assert handle.writes == 1 and machine.state is State.STA5
    protocol.abort()  # the A-ABORT write fails too; no RuntimeError reaches the caller
    assert handle.writes == 2 and machine.state is State.STA13  # waits for the close (ARTIM)
    protocol.connection_lost(None)
    assert machine.state is State.STA1
