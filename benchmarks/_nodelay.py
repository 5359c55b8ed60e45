"""Give pynetdicom's sockets TCP_NODELAY, as the issues' reference measurements did.

pynetdicom leaves Nagle's algorithm on, so each of its small writes can wait for a delayed ACK
(tens of milliseconds); comparing against that would flatter us. Call ``pynetdicom_nodelay()``
once in every process that runs a pynetdicom client or server before it opens sockets.
"""

from __future__ import annotations

import socket
from typing import Any


def pynetdicom_nodelay() -> None:
    from pynetdicom import transport

    cls = transport.AssociationSocket
    if getattr(cls, "_bench_nodelay", False):
        return
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        sock = getattr(self, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls._bench_nodelay = True  # type: ignore[attr-defined]
