"""DIMSE-C messages, services, Query/Retrieve, associations, server and tools.

The asyncio entry points: ``async with dimse.connect(host, port, called_ae=...) as assoc`` for the
requestor and ``dimse.Server`` / ``dimse.serve`` for the acceptor.
"""

from .connect import connect
from .server import Server, serve

__all__ = ["Server", "connect", "serve"]
