"""The asyncio DICOM server: one task per association, access control, limits, TLS.

    registry = HandlerRegistry()
    registry.on_store(my_store_handler, sink=file_sink_factory("/data/incoming"))
    async with Server("ARCHIVE", port=11112, handlers=registry) as server:
        await server.serve_forever()

Access control, in the order applied to each A-ASSOCIATE-RQ (PS3.8 Table 9-21 codes):

* protocol version, application context, called AE title (must equal ours unless
  ``require_called_ae=False``) -> RJ (1, 2, 2) / (1, 1, 2) / (1, 1, 7);
* calling AE title not in ``calling_allow`` -> RJ (1, 1, 3);
* peer address not in ``peer_allow`` -> RJ (1, 1, 3) as well (the connection is accepted at TCP
  level and refused at association level, so the peer learns why and no half-open socket remains);
* more than ``max_associations`` associations at once -> RJ (2, 3, 2) "local limit exceeded";
* the ``authenticator`` refuses the user identity (or none is sent while ``require_identity``)
  -> RJ (1, 1, 1).

An RQ none of whose presentation contexts we accept is still answered with an A-ASSOCIATE-AC
(every context rejected), as DCMTK and pynetdicom do (PS3.8 allows it; spec notes section 6);
every request on it then fails with NotNegotiatedError on the requestor side.

Sizes a peer could make us hold: an identifier (the data set of any message but a C-STORE
request) longer than ``max_identifier_length`` (16 MiB) is read and dropped, and its request is
refused with 0xA700 (0xA701 for C-MOVE/C-GET); ``max_dataset_length`` (None: no limit) bounds
every data set, a C-STORE's held in memory included, by aborting the association.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from pydicom.uid import AllTransferSyntaxes

from pdu.constants import (
    DEFAULT_MAX_PDU_LENGTH,
    LOCAL_LIMIT_EXCEEDED,
    RejectReason,
    RejectResult,
    RejectSource,
)
from pdu.errors import ProtocolError
from pdu.fsm import State
from pdu.items import UserIdentityRQ
from pdu.machine import Role
from pdu.negotiation import AcceptorPolicy, check_association_rq, negotiate
from pdu.pdus import AAssociateRJ, AAssociateRQ
from pdu.transport import UpperLayerProtocol

from .assembly import DEFAULT_MAX_IDENTIFIER_LENGTH
from .association import Association
from .errors import AssociationError
from .messages import CommandField
from .services import VERIFICATION_SOP_CLASS, HandlerRegistry, storage_sop_classes
from .tls_accept import TlsAcceptor

__all__ = ["Authenticator", "Server", "default_contexts", "serve"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: ``(identity, peer) -> (accepted, server_response)``; the response is sent back when the
#: requestor asked for a positive response.
Authenticator = Callable[[UserIdentityRQ, tuple[str, int] | None],
                         Awaitable[tuple[bool, bytes | None]]]

_UNCOMPRESSED_PREFERENCE = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
)


def default_contexts(handlers: HandlerRegistry) -> dict[str, tuple[str, ...]]:
    """Verification, plus every storage SOP class in any transfer syntax when C-STORE is handled."""
    contexts: dict[str, tuple[str, ...]] = {VERIFICATION_SOP_CLASS: _UNCOMPRESSED_PREFERENCE[:2]}
    if CommandField.C_STORE_RQ in handlers:
        others = tuple(str(ts) for ts in AllTransferSyntaxes
                       if str(ts) not in _UNCOMPRESSED_PREFERENCE)
        every = _UNCOMPRESSED_PREFERENCE + others
        for uid in storage_sop_classes():
            contexts[uid] = every
    return contexts


def _rj(result: int, source: int, reason: int) -> AAssociateRJ:
    return AAssociateRJ(result=result, source=source, reason=reason)


class Server:
    """A DICOM server (association acceptor); see the module docstring."""

    def __init__(
        self,
        ae_title: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        handlers: HandlerRegistry | None = None,
        contexts: Mapping[str, Sequence[str]] | None = None,
        scp_roles: Mapping[str, tuple[bool, bool]] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        require_called_ae: bool = True,
        calling_allow: Collection[str] | None = None,
        peer_allow: Collection[str] | None = None,
        max_associations: int | None = None,
        authenticator: Authenticator | None = None,
        require_identity: bool = False,
        max_pdu: int = DEFAULT_MAX_PDU_LENGTH,
        async_window: tuple[int, int] | None = None,
        artim_timeout: float = 30.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
        keepalive: bool = False,
        max_identifier_length: int | None = DEFAULT_MAX_IDENTIFIER_LENGTH,
        max_dataset_length: int | None = None,
    ) -> None:
        self.ae_title = ae_title.strip()
        self.host = host
        self._port = port
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.policy = AcceptorPolicy(
            contexts=dict(contexts) if contexts is not None else default_contexts(self.handlers),
            scp_roles=dict(scp_roles or {}), max_pdu=max_pdu, async_window=async_window,
        )
        self.ssl = ssl
        self.require_called_ae = require_called_ae
        self.calling_allow = (None if calling_allow is None
                              else frozenset(a.strip() for a in calling_allow))
        self.peer_allow = None if peer_allow is None else frozenset(peer_allow)
        self.max_associations = max_associations
        self.authenticator = authenticator
        self.require_identity = require_identity
        self.max_pdu = max_pdu
        self.artim_timeout = artim_timeout
        self.dimse_timeout = dimse_timeout
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.max_identifier_length = max_identifier_length
        self.max_dataset_length = max_dataset_length
        #: How long an ended association waits for its cancelled handlers' cleanup (close()
        #: waits for these waits, within its own timeout).
        self.handler_grace = 5.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._associations: set[Association] = set()
        self._accepted = 0
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> Server:
        """Listen (a server already listening keeps its socket, as ``asyncio.Server`` does:
        ``async with await serve(...)`` is fine)."""
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(self._accept, self.host, self._port,
                                                reuse_address=True)
        return self

    def _accept(self) -> asyncio.BaseProtocol:
        """Protocol factory of the listener. Over TLS the server runs the handshake itself
        (:class:`TlsAcceptor`), so that close() can drop a connection still shaking hands; it
        is bounded like the wait for the A-ASSOCIATE-RQ (ARTIM), not by asyncio's 60 s default,
        so a peer that connects and sends nothing is dropped as soon."""
        if self.ssl is None:
            return self._new_connection()
        return TlsAcceptor(self.ssl, self.artim_timeout, self._new_connection, self._handshakes,
                           lambda: self._closing)

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def associations(self) -> frozenset[Association]:
        """The associations being served right now."""
        return frozenset(self._associations)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, abort every association and wait until no task is left."""
        self._closing = True
        if self._server is not None:
            # asyncio 3.11 leaves open (until garbage collection) a connection it accepted but
            # had not attached to the server yet when the server closes: let those attach
            # first (two loop turns), each one then closed at once as _closing says.
            for _ in range(2):
                await asyncio.sleep(0)
            self._server.close()
        handshakes = list(self._handshakes)
        for handshake in handshakes:
            handshake.cancel()  # start_tls closes the socket
        if handshakes:
            await asyncio.wait(handshakes, timeout=1.0)
        for assoc in list(self._associations):
            assoc.abort()
            assoc.protocol.close_transport()
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            # A connection accepted in the very turn the listener closed is still dropped
            # unattached by asyncio 3.11; a young-generation collection frees it (it sits in a
            # reference cycle), and its transport closes the socket.
            gc.collect(1)

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- one association -------------------------------------------------------------------------
    def _new_connection(self) -> UpperLayerProtocol:
        """The protocol of one connection; over TLS made once the handshake has succeeded.
        The association is served (and counted) once the connection is made (``on_connected``)."""
        assoc = Association(
            Role.ACCEPTOR, handlers=self.handlers, max_pdu=self.max_pdu,
            artim_timeout=self.artim_timeout, dimse_timeout=self.dimse_timeout,
            idle_timeout=self.idle_timeout, keepalive=self.keepalive,
            max_identifier_length=self.max_identifier_length,
            max_dataset_length=self.max_dataset_length,
        )
        assoc.protocol.on_connected = lambda: self._connected(assoc)
        return assoc.protocol

    def _connected(self, assoc: Association) -> None:
        if self._closing:
            assoc.protocol.close_transport()  # a TLS handshake that ended after close()
            return
        self._associations.add(assoc)
        task = asyncio.get_running_loop().create_task(self._serve(assoc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, assoc: Association) -> None:
        accepted = False
        try:
            rq = await assoc.wait_associate_request()
            accepted = await self._answer(assoc, rq)
            await assoc.wait_closed()
        except AssociationError:
            pass  # the peer went away (ARTIM expiry, abort, closed connection)
        except Exception:
            log.exception("association from %s failed", assoc.peer)
            assoc.abort()
        finally:
            if accepted:
                self._accepted -= 1
            self._associations.discard(assoc)
            _log_peer_end(assoc)
            if not assoc.protocol.closed.done():
                assoc.protocol.close_transport()
                await asyncio.wait([assoc.protocol.closed], timeout=1.0)
            await assoc.wait_performed(timeout=self.handler_grace)  # cancelled handlers' cleanup

    async def _answer(self, assoc: Association, rq: AAssociateRQ) -> bool:
        """Accept or reject ``rq``; True when accepted (an association slot is then taken).

        The slot is reserved before the authenticator is awaited, so that concurrent requests
        cannot overshoot ``max_associations``, and given back on every other outcome, including
        a peer that leaves (or aborts) while it is being authenticated.
        """
        if _gone(assoc, rq):  # e.g. an invalid PDU came in the same read as the RQ
            return False
        rj = self._access_control(assoc, rq)
        if rj is not None:
            self._reject(assoc, rq, rj)
            return False
        self._accepted += 1
        accepted = False
        try:
            accepted = await self._decide(assoc, rq)
        finally:
            if not accepted:
                self._accepted -= 1
        return accepted

    async def _decide(self, assoc: Association, rq: AAssociateRQ) -> bool:
        rj, identity_response = await self._check_identity(rq, assoc)
        if _gone(assoc, rq):  # gone while we authenticated
            return False
        if rj is not None:
            self._reject(assoc, rq, rj)
            return False
        try:
            ac, negotiated = negotiate(rq, self.policy,
                                       identity_response=identity_response)
        except ProtocolError as exc:
            log.warning("aborting association from %s: %s", assoc.peer, exc)
            assoc.abort()
            return False
        if not negotiated.contexts:
            log.info("association from %s (%s): no presentation context accepted",
                     assoc.peer, rq.calling_ae)
        assoc.accept(ac, negotiated)
        return True

    @staticmethod
    def _reject(assoc: Association, rq: AAssociateRQ, rj: AAssociateRJ) -> None:
        log.info("rejecting association from %s (%s -> %s): %s/%s/%s", assoc.peer,
                 rq.calling_ae, rq.called_ae, rj.result, rj.source, rj.reason)
        assoc.reject(rj)

    def _access_control(self, assoc: Association, rq: AAssociateRQ) -> AAssociateRJ | None:
        """AE titles, peer address and the association limit (see the module docstring)."""
        rj = check_association_rq(
            rq, called_ae=self.ae_title if self.require_called_ae else None,
            calling_allow=self.calling_allow,
        )
        if rj is not None:
            return rj
        peer = assoc.peer
        if self.peer_allow is not None and (peer is None or peer[0] not in self.peer_allow):
            return _rj(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER,
                       RejectReason.CALLING_AE_NOT_RECOGNIZED)
        if self.max_associations is not None and self._accepted >= self.max_associations:
            return _rj(RejectResult.REJECTED_TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                       LOCAL_LIMIT_EXCEEDED)
        return None

    async def _check_identity(
        self, rq: AAssociateRQ, assoc: Association
    ) -> tuple[AAssociateRJ | None, bytes | None]:
        identity = rq.user_information.user_identity
        refused = _rj(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER,
                      RejectReason.NO_REASON)
        if not isinstance(identity, UserIdentityRQ):
            return (refused if self.require_identity else None), None
        if self.authenticator is None:
            return (refused if self.require_identity else None), None
        try:
            verdict = await _unless_closed(assoc, self.authenticator(identity, assoc.peer))
        except Exception:
            log.exception("user identity authenticator failed")
            return refused, None
        if verdict is None:  # the peer left, or the server closes: _decide sees it is gone
            return refused, None
        ok, response = verdict
        if not ok:
            return refused, None
        if not identity.positive_response_requested:
            return None, None
        # accepted and a response asked for: a User Identity AC goes back in any case, empty
        # when the authenticator has nothing to send (PS3.7 D.3.3.7.2)
        return None, b"" if response is None else response


async def _unless_closed(assoc: Association, work: Awaitable[_T]) -> _T | None:
    """``work``'s result, or None (``work`` cancelled) if the connection closes first: an
    authenticator must not keep an association nobody can answer, nor hold up close()."""
    task = asyncio.ensure_future(work)
    await asyncio.wait((task, assoc.protocol.closed), return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return None


def _gone(assoc: Association, rq: AAssociateRQ) -> bool:
    """True (and logged) when the association can no longer be answered: the peer aborted,
    closed, or sent an invalid PDU (the core then aborted) after its A-ASSOCIATE-RQ."""
    if assoc.machine.state is State.STA3:
        return False
    log.info("association from %s (%s) ended before it was answered", assoc.peer,
             rq.calling_ae)
    return True


def _log_peer_end(assoc: Association) -> None:
    """One line for an association the peer ended without a release (or never started):
    its A-ABORT, a closed connection, its silence (ARTIM), and the C-STORE lost with it.
    Ends decided here (idle timeout, protocol errors, close()) are logged where decided."""
    why = assoc.ended_by_peer
    if why is None:
        return
    dropped = assoc.dropped
    lost = "" if dropped is None else (
        f"; C-STORE {getattr(dropped, 'message_id', '?')} (SOP Instance "
        f"{getattr(dropped, 'affected_sop_instance_uid', '?')}) incomplete, discarded")
    who = f" ({assoc.rq.calling_ae})" if assoc.rq is not None else ""
    if assoc.rq is None and assoc.protocol.bytes_received == 0 and "ARTIM" not in why:
        return  # a bare TCP connect and close (a port probe): nothing to say
    log.info("association from %s%s ended: %s%s", assoc.peer, who, why, lost)


async def serve(ae_title: str, host: str = "127.0.0.1", port: int = 0, **options: object
                ) -> Server:
    """Create and start a :class:`Server` (keyword options as for ``Server``)."""
    server = Server(ae_title, host=host, port=port, **options)  # type: ignore[arg-type]
    return await server.start()
