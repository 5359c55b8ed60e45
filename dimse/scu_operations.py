"""The requestor-side DIMSE-C operations of an association: C-ECHO, C-STORE, C-FIND.

Mixed into :class:`~dimse.association.Association` (on top of :class:`~dimse.invoking.Invoker`,
which sends requests and collects their responses); each method picks the accepted presentation
context, builds the request and returns the status or the matches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset

from pdu.machine import Role
from pdu.negotiation import AcceptedContext

from . import storage_scu
from .errors import NotNegotiatedError
from .invoking import Invoker
from .messages import CEchoRQ, Priority
from .operations import DEFAULT_BUFFER
from .qr import Mode, QueryModel
from .services import VERIFICATION_SOP_CLASS

if TYPE_CHECKING:
    from .association import Association

__all__ = ["ScuOperations"]


class ScuOperations(Invoker):
    """C-ECHO, C-STORE and C-FIND as an SCU (the association's public invoking API)."""

    if TYPE_CHECKING:
        role: Role

    def _as_association(self) -> Association:
        """Self, typed as the Association this mixin is always part of."""
        return cast("Association", self)

    def context_for(self, abstract_syntax: str, transfer_syntax: str | None = None
                    ) -> AcceptedContext:
        """An accepted context on which we may invoke ``abstract_syntax`` operations."""
        self._check_usable()  # a lost association says so before "not negotiated"
        scp = self.role is Role.ACCEPTOR  # the acceptor invokes where the requestor is SCP
        cx = self.negotiated.context_for(abstract_syntax, transfer_syntax, scp=scp)
        if cx is None:
            extra = f" in {transfer_syntax}" if transfer_syntax else ""
            raise NotNegotiatedError(f"no accepted presentation context for {abstract_syntax}"
                                     f"{extra} on which we may invoke operations")
        return cx

    def storage_context(self, sop_class: str, transfer_syntax: str | None) -> AcceptedContext:
        """The context to send an instance of ``sop_class`` encoded in ``transfer_syntax``
        (see :func:`dimse.storage_scu.storage_context`)."""
        return storage_scu.storage_context(self._as_association(), sop_class, transfer_syntax)

    async def echo(self) -> int:
        """C-ECHO; returns the status."""
        cx = self.context_for(VERIFICATION_SOP_CLASS)
        rsp, _ = await self.request(cx, lambda mid: CEchoRQ(message_id=mid))
        return int(getattr(rsp, "status", 0))

    async def store(self, ds: Dataset, *, priority: int = Priority.MEDIUM,
                    move_originator: tuple[str, int] | None = None) -> int:
        """C-STORE ``ds``; returns the status (NotNegotiatedError before sending if no context)."""
        sop_class, sop_instance, data, cx = storage_scu.prepare_store(self._as_association(), ds)
        return await self.store_encoded(sop_class, sop_instance, data, cx,
                                        priority=priority, move_originator=move_originator)

    async def store_many(self, datasets: Iterable[Dataset], *,
                         priority: int = Priority.MEDIUM) -> list[int]:
        """C-STORE every data set, up to the negotiated window of them in flight at once.

        Returns the statuses in the order of ``datasets``. With the default window (1, 1) the
        C-STOREs go one at a time, each data set encoded while the previous one is on the wire;
        with a wider one (asynchronous operations negotiated) the round trips overlap.
        ``datasets`` is consumed lazily (at most the window's worth ahead of the responses).

        The first error (e.g. NotNegotiatedError, AssociationAborted) stops the run, cancelling
        the stores still running (one cancelled mid-send aborts the association), and is raised
        itself with an attribute ``completed``: a tuple of ``(index, status)`` pairs, in index
        order, for the instances whose C-STORE-RSP arrived before it.
        """
        return await storage_scu.store_many(self._as_association(), datasets, priority)

    async def store_encoded(self, sop_class: str, sop_instance: str, data: bytes | memoryview,
                            context: AcceptedContext, *, priority: int = Priority.MEDIUM,
                            move_originator: tuple[str, int] | None = None) -> int:
        """C-STORE a data set already encoded in ``context``'s transfer syntax."""
        build = storage_scu.store_builder(sop_class, sop_instance, priority, move_originator)
        rsp, _ = await self.request(context, build, data)
        return int(getattr(rsp, "status", 0))

    def find(self, identifier: Dataset, *, model: QueryModel = QueryModel.STUDY_ROOT,
             mode: Mode = Mode.STRICT, limit: int | None = None,
             priority: int = Priority.MEDIUM, buffer: int = DEFAULT_BUFFER
             ) -> AsyncIterator[Dataset]:
        """C-FIND: an async iterator of the matches; same as :func:`dimse.qr_scu.find`."""
        from .qr_scu import find  # qr_scu imports the association module

        return find(self._as_association(), identifier, model=model, mode=mode, limit=limit,
                    priority=priority, buffer=buffer)
