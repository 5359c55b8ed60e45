"""Invoking C-STORE on an association: choosing the context, encoding, and sending many.

Kept apart from :mod:`dimse.association` (which delegates ``store``, ``store_many`` and
``storage_context`` here) so that module holds only the association itself.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset

from pdu.machine import Role
from pdu.negotiation import AcceptedContext

from .errors import DataSetEncodeError
from .instances import UNCOMPRESSED, encode_instance, instance_transfer_syntax, instance_uids
from .messages import CStoreRQ
from .operations import UNLIMITED_WINDOW_CAP

if TYPE_CHECKING:
    from .association import Association

__all__ = ["PreparedStore", "prepare_store", "storage_context", "store_builder", "store_many"]

#: The attributes a C-STORE-RQ takes its Affected SOP Class/Instance UIDs from.
_REQUIRED_UIDS = ((0x00080016, "SOPClassUID"), (0x00080018, "SOPInstanceUID"))

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
    """What a C-STORE of ``ds`` sends: its UIDs, its encoding and the context it goes on.

    A data set without a SOP Class or SOP Instance UID raises DataSetEncodeError naming it;
    anything but a pydicom Dataset raises TypeError.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"C-STORE takes a pydicom Dataset, not {type(ds).__name__}")
    for tag, keyword in _REQUIRED_UIDS:
        if tag not in ds:
            raise DataSetEncodeError(f"cannot C-STORE a data set without {keyword}", tag=tag)
    sop_class, sop_instance = instance_uids(ds)
    for uid, (tag, keyword) in zip((sop_class, sop_instance), _REQUIRED_UIDS, strict=True):
        if not uid:
            raise DataSetEncodeError(f"cannot C-STORE a data set with an empty {keyword}",
                                     tag=tag)
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


async def store_many(assoc: Association, items: Iterable[Dataset], priority: int) -> list[int]:
    """See :meth:`dimse.association.Association.store_many`.

    ``items`` is consumed lazily: at most the window's worth of data sets (one, plus the one
    being encoded ahead, with the default window) is pulled before their responses are in. On
    error the exception raised carries ``completed``: (index, status) pairs, in index order, of
    the instances whose response arrived.
    """
    done: dict[int, int] = {}
    invoked = assoc.negotiated.async_window[1 if assoc.role is Role.ACCEPTOR else 0]
    workers = invoked if invoked > 0 else UNLIMITED_WINDOW_CAP
    if isinstance(items, Sized):
        workers = min(workers, len(items))
    try:
        if workers == 1:
            await _one_at_a_time(assoc, iter(items), done, priority)
        elif workers > 1:
            await _in_window(assoc, iter(items), done, priority, workers)
    except Exception as exc:
        exc.completed = tuple(sorted(done.items()))  # type: ignore[attr-defined]
        raise
    return [done[index] for index in range(len(done))]


async def _in_window(assoc: Association, items: Iterator[Dataset], done: dict[int, int],
                     priority: int, workers: int) -> None:
    """``workers`` C-STOREs in flight; the first error stops the others and is raised as is."""
    work = enumerate(items)  # shared: each worker pulls the next data set when it is free

    async def worker() -> None:
        for index, ds in work:
            done[index] = await assoc.store(ds, priority=priority)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
    except BaseExceptionGroup as errors:
        first = errors.exceptions[0]  # keep its own cause; show the group if others failed too
        raise first from (errors if len(errors.exceptions) > 1 else first.__cause__)


_END = object()


async def _one_at_a_time(assoc: Association, items: Iterator[Dataset], done: dict[int, int],
                         priority: int) -> None:
    """Sequential C-STOREs; the next data set is pulled and encoded while the peer works on this
    one.

    An error preparing the next data set is raised once this one's response is in, as a plain
    loop of ``store`` would.
    """
    following: object = next(items, _END)
    if following is _END:
        return
    prepared = prepare_store(assoc, cast(Dataset, following))
    for index in itertools.count():
        sop_class, sop_instance, data, cx = prepared
        sent = await assoc.send_request(
            cx, store_builder(sop_class, sop_instance, priority, None), data)
        error: Exception | None = None
        try:
            following = next(items, _END)
            if following is not _END:
                prepared = prepare_store(assoc, cast(Dataset, following))
        except Exception as exc:  # raised below, after the response
            error = exc
        rsp, _ = await assoc.final_response(*sent)
        done[index] = int(getattr(rsp, "status", 0))
        if error is not None:
            raise error
        if following is _END:
            return
