"""``dimse.connect(...)``: open an association as requestor, as an async context manager.

    async with connect("127.0.0.1", 11112, called_ae="STORESCP",
                       sop_classes=[CT_IMAGE_STORAGE]) as assoc:
        status = await assoc.store(ds)

A normal exit from the ``async with`` block releases the association; an exception aborts it.
``await connect(...)`` returns the established :class:`~dimse.association.Association` without the
context manager (the caller then calls ``release()`` or ``abort()``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import ssl as ssl_module
from collections.abc import Coroutine, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pdu.constants import DEFAULT_MAX_PDU_LENGTH
from pdu.items import UserIdentityRQ
from pdu.machine import Role
from pdu.negotiation import build_associate_rq

from .assembly import DEFAULT_MAX_IDENTIFIER_LENGTH
from .association import Association
from .errors import (
    AssociationAborted,
    AssociationError,
    DataSetDecodeError,
    DataSetEncodeError,
    DimseTimeout,
    IdentifierError,
    NotNegotiatedError,
    ServiceError,
)
from .services import VERIFICATION_SOP_CLASS, HandlerRegistry

__all__ = ["DEFAULT_TRANSFER_SYNTAXES", "UVLOOP_ENV", "Connector", "connect", "run",
           "uvloop_available"]

#: Set to ``0`` to keep :func:`run` on the default asyncio loop even when uvloop is installed.
UVLOOP_ENV = "DIMSE_UVLOOP"

#: What we propose for every abstract syntax unless told otherwise.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2",  # implicit VR little endian
)


def _contexts(
    contexts: Sequence[tuple[str, Sequence[str]]] | None,
    sop_classes: Sequence[str] | None,
    transfer_syntaxes: Sequence[str],
) -> list[tuple[str, Sequence[str]]]:
    if contexts is not None:
        return list(contexts)
    classes = list(sop_classes) if sop_classes else [VERIFICATION_SOP_CLASS]
    return [(uid, tuple(transfer_syntaxes)) for uid in classes]


#: Exceptions after which the association is known intact: a failure status answered by the
#: peer (ServiceError, QueryFailed), or a request our side refused to build or send
#: (IdentifierError, NotNegotiatedError, DataSetEncodeError), or a response data set that
#: would not decode (its message was whole). Any other exception in the block aborts.
_ASSOCIATION_INTACT: tuple[type[BaseException], ...] = (
    ServiceError, IdentifierError, NotNegotiatedError, DataSetEncodeError, DataSetDecodeError,
)


class Connector:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, host: str, port: int, options: dict[str, Any]) -> None:
        self._host = host
        self._port = port
        self._options = options
        self._assoc: Association | None = None

    def __await__(self) -> Generator[Any, None, Association]:
        return self._open().__await__()

    async def __aenter__(self) -> Association:
        if self._assoc is not None:
            raise RuntimeError("this connect() is already in an async with block; call "
                               "connect() again for a second association")
        self._assoc = await self._open()
        return self._assoc

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assoc = self._assoc
        self._assoc = None
        if assoc is None:
            return
        # After a failure status, or a request refused before it was sent, the association is
        # as good as before: it ends normally (PS3.8 A-RELEASE) rather than with an A-ABORT the
        # peer would log as a fault, and the block's exception still propagates.
        if exc_type is not None and not (isinstance(exc, _ASSOCIATION_INTACT)
                                         and assoc.is_established):
            _abort_and_close(assoc)
            return
        try:
            await assoc.cancel_unread()  # nobody can read those after the block
            await assoc.release()
        except BaseException as failed:  # cancelled or failed: never leave it open
            _abort_and_close(assoc)
            if exc_type is None or not isinstance(failed, Exception):
                raise

    async def _open(self) -> Association:
        o = self._options
        assoc = Association(
            Role.REQUESTOR, handlers=o["handlers"], max_pdu=o["max_pdu"],
            artim_timeout=o["artim_timeout"], dimse_timeout=o["dimse_timeout"],
            idle_timeout=o["idle_timeout"], keepalive=o["keepalive"],
            max_identifier_length=o["max_identifier_length"],
            max_dataset_length=o["max_dataset_length"],
        )
        rq = build_associate_rq(
            o["called_ae"], o["calling_ae"], o["contexts"], max_pdu=o["max_pdu"],
            roles=o["roles"], extended=o["extended"], user_identity=o["user_identity"],
            async_window=o["async_window"],
        )
        assoc.rq = rq
        assoc.machine.associate_request(rq)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(o["connect_timeout"]):
                await loop.create_connection(
                    lambda: assoc.protocol, self._host, self._port, ssl=o["ssl"],
                    server_hostname=o["server_hostname"] if o["ssl"] is not None else None,
                )
                await assoc.established()
        except TimeoutError as exc:
            await _shut(assoc)
            raise DimseTimeout(f"association with {self._host}:{self._port} not established "
                               f"within {o['connect_timeout']} s") from exc
        except OSError as exc:
            assoc.protocol.connection_lost(exc)  # Evt17 in Sta4: back to Sta1
            raise AssociationAborted(f"cannot connect to {self._host}:{self._port}: {exc}"
                                     ) from exc
        except AssociationError as exc:
            await _shut(assoc)
            explained = _explain(exc, assoc, f"{self._host}:{self._port}", o["ssl"] is not None)
            if explained is exc:
                raise
            raise explained from (assoc.protocol.lost_reason or exc)
        except BaseException:
            _abort_and_close(assoc)
            raise
        return assoc


def _explain(exc: AssociationError, assoc: Association, where: str, tls: bool
             ) -> AssociationError:
    """Say why the connection ended before the A-ASSOCIATE-AC, which a bare A-P-ABORT does not:
    the transport's error (a TLS alert, such as a client certificate the peer requires or
    refuses: TLS 1.3 reports it only after our side of the handshake is done), or a peer that
    closed without answering at all (what a TLS-only peer does to plain TCP)."""
    protocol = assoc.protocol
    if not isinstance(exc, AssociationAborted) or not protocol.connection_is_lost:
        return exc
    lost = protocol.lost_reason
    detail = f"{lost}; {exc}" if lost is not None else str(exc)
    if protocol.bytes_received == 0:
        hint = "" if tls else "; a peer that expects TLS does this (pass ssl=...)"
        text = f"{where} closed the connection without answering the A-ASSOCIATE-RQ ({detail}){hint}"
    elif lost is not None:
        text = f"connection to {where} lost before the A-ASSOCIATE-AC ({detail})"
    else:
        return exc
    return AssociationAborted(text, source=exc.source, reason=exc.reason)


def _abort_and_close(assoc: Association) -> None:
    """A-ABORT, then close our end as soon as it is written: the caller keeps no handle on an
    association that failed (or whose block raised), so nothing may stay open waiting for the
    peer to close (PS3.8 Sta13 would hold the socket for up to ARTIM)."""
    assoc.abort()
    assoc.protocol.close_transport()


async def _shut(assoc: Association, grace: float = 1.0) -> None:
    """:func:`_abort_and_close`, and wait (briefly) until the socket is really closed."""
    _abort_and_close(assoc)
    try:
        async with asyncio.timeout(grace):
            await assoc.wait_closed()
    except TimeoutError:
        pass


def connect(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "DIMSE_PY",
    contexts: Sequence[tuple[str, Sequence[str]]] | None = None,
    sop_classes: Sequence[str] | None = None,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    roles: Mapping[str, tuple[bool, bool]] | None = None,
    extended: Mapping[str, bytes] | None = None,
    user_identity: UserIdentityRQ | None = None,
    async_window: tuple[int, int] | None = None,
    max_pdu: int = DEFAULT_MAX_PDU_LENGTH,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float = 30.0,
    artim_timeout: float = 30.0,
    dimse_timeout: float | None = 30.0,
    idle_timeout: float | None = None,
    handlers: HandlerRegistry | None = None,
    keepalive: bool = False,
    max_identifier_length: int | None = DEFAULT_MAX_IDENTIFIER_LENGTH,
    max_dataset_length: int | None = None,
) -> Connector:
    """Associate with ``host:port`` as requestor (see the module docstring).

    ``contexts`` lists (abstract syntax, transfer syntaxes) pairs; or give ``sop_classes`` (each
    proposed with ``transfer_syntaxes``); with neither, only Verification is proposed.
    ``handlers`` performs the requests the peer sends on this association (e.g. the C-STORE
    sub-operations of a C-GET). ``max_identifier_length`` bounds a response's identifier, and
    ``max_dataset_length`` every data set the peer sends (see :mod:`dimse.server`); a response
    over either aborts the association. Errors: AssociationRejected, AssociationAborted,
    DimseTimeout.
    """
    options: dict[str, Any] = {
        "called_ae": called_ae, "calling_ae": calling_ae,
        "contexts": _contexts(contexts, sop_classes, transfer_syntaxes),
        "roles": dict(roles or {}), "extended": dict(extended or {}),
        "user_identity": user_identity, "async_window": async_window, "max_pdu": max_pdu,
        "ssl": ssl, "server_hostname": server_hostname or host,
        "connect_timeout": connect_timeout, "artim_timeout": artim_timeout,
        "dimse_timeout": dimse_timeout, "idle_timeout": idle_timeout,
        "handlers": handlers, "keepalive": keepalive,
        "max_identifier_length": max_identifier_length, "max_dataset_length": max_dataset_length,
    }
    return Connector(host, port, options)


_T = TypeVar("_T")


def uvloop_available() -> bool:
    """Whether the optional uvloop event loop is installed (extra ``speed``)."""
    return importlib.util.find_spec("uvloop") is not None


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool | None = None,
        freeze_gc: bool = True) -> _T:
    """``asyncio.run(main)`` for a program's entry point, on uvloop when it is installed (or when
    ``use_uvloop`` is True).

    uvloop measured ~30% more associations per second and ~7% faster small C-STOREs ours<->ours
    (benchmarks/RESULTS-e2e.md). ``use_uvloop=None`` picks it when installed unless the
    environment variable ``DIMSE_UVLOOP=0``; True without uvloop raises ImportError.

    ``freeze_gc`` (default) calls :func:`gc.collect` then :func:`gc.freeze` first: everything
    alive at that point
    (modules, pydicom's dictionaries) leaves the cyclic collector's generations, so the many
    short-lived objects of each association no longer trigger collections that walk them all
    (+20% associations per second from 64 concurrent clients).
    """
    if freeze_gc:
        gc.collect()  # garbage left by an earlier run() must not be frozen alive for good
        gc.freeze()
    if use_uvloop is None:
        use_uvloop = os.environ.get(UVLOOP_ENV, "1") != "0" and uvloop_available()
    if not use_uvloop:
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
