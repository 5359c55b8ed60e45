"""Query/Retrieve C-FIND SCU: root-specific negotiation and an async iterator of matches.

    async with connect_qr("127.0.0.1", 11112, called_ae="ARCHIVE") as assoc:
        async for match in find(assoc, query, model=QueryModel.PATIENT_ROOT):
            ...

Every request travels on the presentation context of its own model's FIND SOP class, whatever
the level; a model the peer did not accept fails with NotNegotiatedError before anything is
sent. The identifier is checked with :func:`dimse.qr.validate_request` first.

Flow control is the association's (:meth:`Association.request_stream`): at most ``buffer``
undecoded responses (plus one socket read) wait for the consumer before reading pauses, and the
DIMSE timer does not run while we are the slow side. Stopping early (``limit=``, ``aclose()``,
leaving the ``async for`` loop, or cancelling the consuming task) sends C-CANCEL; the association
drains the rest up to the final response in the background, so it stays usable (the next
request waits for the drain when the operations window is full). ``assoc.find(...)`` is the
same as ``find(assoc, ...)``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Any, Final

from pydicom.dataset import Dataset

from . import codec
from .association import Association, Response
from .connect import DEFAULT_TRANSFER_SYNTAXES, Connector, connect
from .errors import ServiceError
from .messages import CFindRQ, CFindRSP, Priority
from .operations import DEFAULT_BUFFER
from .qr import (
    MODELS,
    Mode,
    Operation,
    QueryModel,
    enhanced_accepted,
    relational_accepted,
    sop_class,
    validate_request,
    with_character_set,
    with_level_key,
)
from .services import VERIFICATION_SOP_CLASS
from .status import Category, Service, category, describe, is_pending

__all__ = [
    "FIND_MODELS",
    "QueryFailed",
    "connect_qr",
    "find",
    "find_contexts",
]

log = logging.getLogger(__name__)

#: The models that have a C-FIND SOP class, in proposal order.
FIND_MODELS: Final = tuple(m for m, info in MODELS.items() if info.find is not None)


class QueryFailed(ServiceError):
    """The peer ended a C-FIND with a Failure (or unknown) status.

    ``status``, ``comment`` (ErrorComment) and ``offending_elements`` (OffendingElement) come from
    the final response; ``matches`` counts the Pending responses received before it.
    """

    def __init__(self, status: int, comment: str = "", offending_elements: Iterable[int] = (),
                 *, matches: int = 0) -> None:
        super().__init__(status, comment, offending_elements)
        self.matches = matches
        self.args = (f"C-FIND failed: {describe(status, Service.FIND)}"
                     + (f": {comment}" if comment else "")
                     + (f" (offending: {', '.join(f'{t:08X}' for t in self.offending_elements)})"
                        if self.offending_elements else ""),)


def find_contexts(
    models: Iterable[QueryModel] = FIND_MODELS,
    *,
    relational: bool = False,
    verification: bool = True,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[list[tuple[str, tuple[str, ...]]], dict[str, bytes]]:
    """Presentation contexts and 0x56 extended negotiation for the FIND SOP classes of ``models``.

    Returns ``(contexts, extended)`` ready for :func:`dimse.connect.connect`. ``relational``
    proposes the relational-queries byte.
    """
    contexts: list[tuple[str, tuple[str, ...]]] = []
    extended: dict[str, bytes] = {}
    for model in dict.fromkeys(models):
        uid = MODELS[model].find
        if uid is None:
            raise ValueError(f"{model.name} has no C-FIND SOP class")
        contexts.append((uid, tuple(transfer_syntaxes)))
        if relational and MODELS[model].relational:
            extended[uid] = b"\x01"
    if verification:
        contexts.append((VERIFICATION_SOP_CLASS, tuple(transfer_syntaxes)))
    return contexts, extended


def connect_qr(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "DIMSE_PY",
    models: Iterable[QueryModel] = FIND_MODELS,
    relational: bool = False,
    **options: Any,
) -> Connector:
    """:func:`dimse.connect.connect` proposing the FIND contexts of ``models`` plus Verification."""
    contexts, extended = find_contexts(models, relational=relational)
    return connect(host, port, called_ae=called_ae, calling_ae=calling_ae, contexts=contexts,
                   extended=extended, **options)


def find(
    assoc: Association,
    identifier: Dataset,
    *,
    model: QueryModel = QueryModel.STUDY_ROOT,
    mode: Mode = Mode.STRICT,
    limit: int | None = None,
    priority: int = Priority.MEDIUM,
    buffer: int = DEFAULT_BUFFER,
) -> AsyncIterator[Dataset]:
    """C-FIND ``identifier`` under ``model``; an async iterator of the matching identifiers.

    Raises at once (nothing sent): NotNegotiatedError when the peer did not accept the model's
    FIND SOP class, IdentifierError when the identifier breaks the model's rules (``mode``;
    RELATIONAL needs relational queries accepted in extended negotiation). While iterating:
    :class:`QueryFailed` on a Failure final status, AssociationError when the association dies.
    ``limit`` stops after that many matches with a C-CANCEL.
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    uid = sop_class(model, Operation.FIND)
    cx = assoc.context_for(uid)
    accepted = assoc.negotiated.extended.get(uid)
    identifier = with_character_set(with_level_key(identifier, model))
    validate_request(identifier, model, Operation.FIND, mode, relational_accepted(accepted),
                     enhanced_negotiated=enhanced_accepted(accepted, Operation.FIND))
    data = codec.encode(identifier, cx.transfer_syntax)

    def build(message_id: int) -> CFindRQ:
        return CFindRQ(message_id=message_id, affected_sop_class_uid=uid, priority=int(priority))

    responses = assoc.request_stream(cx, build, data, buffer=max(1, buffer), cancel_on_exit=True)
    return _matches(responses, limit)


async def _matches(responses: AsyncGenerator[Response, None], limit: int | None
                   ) -> AsyncIterator[Dataset]:
    """Decode Pending identifiers; the final status ends the iteration (or raises).

    Leaving early (``limit``, break, ``aclose()``, cancellation) closes the response stream,
    which sends C-CANCEL and lets the association drain the rest in the background.
    """
    count = 0
    try:
        async for message, dataset in responses:
            if not is_pending(int(getattr(message, "status", 0))):
                assert isinstance(message, CFindRSP)
                _finish(message, count)
                return
            if dataset is None:
                log.warning("Pending C-FIND response without an identifier: %r", message)
                continue
            count += 1
            yield dataset.decode()
            if limit is not None and count >= limit:
                return
    finally:
        await responses.aclose()


def _finish(rsp: CFindRSP, count: int) -> None:
    """Turn the final response into a return (Success, Cancel, Warning) or an exception."""
    status = int(rsp.status)
    cat = category(status, Service.FIND)
    if cat in (Category.SUCCESS, Category.CANCEL):
        return
    if cat is Category.WARNING:
        log.warning("C-FIND ended with %s", describe(status, Service.FIND))
        return
    raise QueryFailed(status, rsp.error_comment or "", rsp.offending_element or (),
                      matches=count)
