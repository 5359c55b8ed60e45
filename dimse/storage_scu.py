"""Invoking C-STORE on an association: choosing the context, encoding, and sending many.

Kept apart from :mod:`dimse.association` (which delegates ``store``, ``store_many`` and
``storage_context`` here) so that module holds only the association itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pdu.machine import Role
from pdu.negotiation import AcceptedContext

from .instances import UNCOMPRESSED, encode_instance, instance_transfer_syntax, instance_uids
from .messages import CStoreRQ
from .operations import UNLIMITED_WINDOW_CAP

if TYPE_CHECKING:
    from .association import Association

__all__ = ["PreparedStore", "prepare_store", "storage_context", "store_builder", "store_many"]

#: What a C-STORE sends: SOP class and instance UIDs, the encoded data set, its context.
PreparedStore = tuple[str, str, bytes, AcceptedContext]


def storage_context(assoc: Association, sop_class: str,
                    transfer_syntax: str | None) -> AcceptedContext:
    """The context to send an instance of ``sop_class`` encoded in ``transfer_syntax``.

    The exact transfer syntax is preferred; an uncompressed instance (or one of unknown
    encoding) may go on any uncompressed context (the codec transcodes); a compressed one needs
    its own transfer syntax (NotNegotiatedError otherwise).
    """
    assoc._check_usable()  # a lost association says so before "not negotiated"
    negotiated = assoc.negotiated
    scp = assoc.role is Role.ACCEPTOR
    if transfer_syntax is not None:
        cx = negotiated.context_for(sop_class, transfer_syntax, scp=scp)
        if cx is not None:
            return cx
    if transfer_syntax is None or transfer_syntax in UNCOMPRESSED:
        for ts in UNCOMPRESSED:
            cx = negotiated.context_for(sop_class, ts, scp=scp)
            if cx is not None:
                return cx
    return assoc.context_for(sop_class, transfer_syntax)


def prepare_store(assoc: Association, ds: Dataset) -> PreparedStore:
    """What a C-STORE of ``ds`` sends: its UIDs, its encoding and the context it goes on."""
    sop_class, sop_instance = instance_uids(ds)
    cx = storage_context(assoc, sop_class, instance_transfer_syntax(ds))
    return sop_class, sop_instance, encode_instance(ds, cx.transfer_syntax), cx


def store_builder(sop_class: str, sop_instance: str, priority: int,
                  move_originator: tuple[str, int] | None) -> Callable[[int], CStoreRQ]:
    """``build(message_id)`` for a C-STORE-RQ (the message ID is chosen when it is sent)."""
    ae, originator_id = move_originator if move_originator is not None else (None, None)

    def build(message_id: int) -> CStoreRQ:
        return CStoreRQ(message_id=message_id, affected_sop_class_uid=sop_class,
                        affected_sop_instance_uid=sop_instance, priority=priority,
                        move_originator_ae_title=ae, move_originator_message_id=originator_id)

    return build


async def store_many(assoc: Association, items: list[Dataset], priority: int) -> list[int]:
    """See :meth:`dimse.association.Association.store_many`."""
    statuses = [0] * len(items)
    invoked = assoc.negotiated.async_window[1 if assoc.role is Role.ACCEPTOR else 0]
    workers = min(len(items), invoked if invoked > 0 else UNLIMITED_WINDOW_CAP)
    if workers == 1:
        await _one_at_a_time(assoc, items, statuses, priority)
    elif workers > 1:
        work = iter(enumerate(items))

        async def worker() -> None:
            for index, ds in work:
                statuses[index] = await assoc.store(ds, priority=priority)

        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
    return statuses


async def _one_at_a_time(assoc: Association, items: list[Dataset], statuses: list[int],
                         priority: int) -> None:
    """Sequential C-STOREs; the next data set is encoded while the peer works on this one.

    An error preparing the next data set is raised once this one's response is in, as a plain
    loop of ``store`` would.
    """
    prepared = prepare_store(assoc, items[0])
    for index in range(len(items)):
        sop_class, sop_instance, data, cx = prepared
        sent = await assoc.send_request(
            cx, store_builder(sop_class, sop_instance, priority, None), data)
        error: Exception | None = None
        if index + 1 < len(items):
            try:
                prepared = prepare_store(assoc, items[index + 1])
            except Exception as exc:  # raised below, after the response
                error = exc
        rsp, _ = await assoc.final_response(*sent)
        statuses[index] = int(getattr(rsp, "status", 0))
        if error is not None:
            raise error
