"""The data of association negotiation: limits, the outcome and the acceptor's policy.

:class:`Negotiated` is what both sides of one association agree on (accepted contexts with the
requestor's roles, PDU limits, asynchronous operations window, extended negotiation), and
:class:`AcceptorPolicy` what an acceptor supports. The pure functions that produce and consume
them live in :mod:`pdu.negotiation`, which re-exports every name here. No IO, no clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .constants import (
    DEFAULT_MAX_PDU_LENGTH,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from .items import PresentationContextRQ, SOPClassCommonExtendedNegotiation

__all__ = [
    "MAX_CONTEXTS",
    "MIN_PEER_MAX_PDU",
    "MISSING_MAX_PDU",
    "AcceptedContext",
    "AcceptorPolicy",
    "ExtendedNegotiationPolicy",
    "Negotiated",
]

#: At most 128 presentation contexts fit the odd IDs 1..255 (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
#: Smallest non-zero peer Maximum Length we accept: a 6-byte PDV header plus 8 bytes of data
#: (DCMTK refuses to send below 14 as well).
MIN_PEER_MAX_PDU = 14
#: Maximum Length assumed when the peer omits the (mandatory) sub-item: the smallest common default.
MISSING_MAX_PDU = 16384

#: ``extended(sop_class_uid, requested_info) -> accepted_info or None`` (None = no answer).
ExtendedNegotiationPolicy = Callable[[str, bytes], bytes | None]


def _uid(value: str) -> str:
    """A UID as compared: trailing NUL and space padding removed (PS3.8 Annex F tolerance)."""
    return value.rstrip("\x00 ").lstrip(" ")


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """One accepted presentation context.

    ``scu_role`` / ``scp_role`` are the roles of the ASSOCIATION REQUESTOR on this context after
    role selection (default: the requestor is SCU only, the acceptor SCP).
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    scu_role: bool = True
    scp_role: bool = False


def _frozen_map() -> Mapping[Any, Any]:
    """An empty read-only mapping (default of the Negotiated mapping fields)."""
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of association negotiation, identical on both sides of one association.

    ``peer_max_pdu`` is the largest P-DATA-TF PDU-length we may send and ``own_max_pdu`` the one
    we announced (both 0 = unlimited). ``async_window`` is (invoked, performed) from the
    requestor's point of view, (1, 1) when not negotiated. ``extended`` maps SOP class UIDs to the
    accepted extended negotiation info; ``common_extended`` holds the requestor's common extended
    negotiation items (there is no AC form).
    """

    contexts: Mapping[int, AcceptedContext]
    rejected: Mapping[int, int]
    proposed: Mapping[int, PresentationContextRQ]
    peer_max_pdu: int
    own_max_pdu: int
    peer_implementation_class_uid: str | None = None
    peer_implementation_version_name: str | None = None
    async_window: tuple[int, int] = (1, 1)
    extended: Mapping[str, bytes] = field(default_factory=_frozen_map)
    user_identity_response: bytes | None = None
    common_extended: Mapping[str, SOPClassCommonExtendedNegotiation] = field(
        default_factory=_frozen_map
    )

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None, *, scp: bool = False
    ) -> AcceptedContext | None:
        """The accepted context with the lowest ID for ``abstract_syntax`` (and transfer syntax).

        ``scp=False`` asks for a context on which the requestor may act as SCU (it sends the
        requests, the usual case); ``scp=True`` for one on which the requestor acts as SCP (the
        acceptor sends the requests, e.g. C-STORE sub-operations of a C-GET).
        """
        wanted_as = _uid(abstract_syntax)
        wanted_ts = None if transfer_syntax is None else _uid(transfer_syntax)
        for context_id in sorted(self.contexts):
            cx = self.contexts[context_id]
            if cx.abstract_syntax != wanted_as:
                continue
            if wanted_ts is not None and cx.transfer_syntax != wanted_ts:
                continue
            if cx.scp_role if scp else cx.scu_role:
                return cx
        return None


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    """What an acceptor supports.

    ``contexts`` maps abstract syntaxes to transfer syntaxes in OUR preference order.
    ``scp_roles`` maps SOP classes to the (SCU, SCP) roles we accept for the requestor when it
    proposes role selection; SOP classes missing here get no answer (default roles apply).
    ``extended`` answers SOP class extended negotiation (see :func:`qr_extended_negotiation`).
    ``async_window`` is the (invoked, performed) window we allow the requestor, read from the
    requestor's side as in the AC (PS3.7 D.3.3.3): ``invoked`` bounds the requests it may have
    outstanding with us (the number we perform at once), ``performed`` the requests we may have
    outstanding with it (e.g. C-STORE sub-operations of a C-GET). None = we do not negotiate it
    (synchronous operation, the AC has no window item).
    """

    contexts: Mapping[str, Sequence[str]]
    scp_roles: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)
    extended: ExtendedNegotiationPolicy | None = None
    max_pdu: int = DEFAULT_MAX_PDU_LENGTH
    async_window: tuple[int, int] | None = None
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME
    #: ``contexts`` with every UID normalized, computed once at construction (an acceptor with
    #: every storage SOP class in every transfer syntax holds ~7,000 UIDs: normalizing them on
    #: each :func:`negotiate` call cost milliseconds per association).
    supported: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    #: ``scp_roles`` keyed by normalized UID, computed once at construction.
    roles: Mapping[str, tuple[bool, bool]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Normalize the UIDs once; the policy is frozen, so the cache cannot go stale.

        ``contexts`` and ``scp_roles`` are read here: mutating those mappings afterwards has no
        effect (build a new policy, e.g. with :func:`dataclasses.replace`).
        """
        supported = {_uid(k): tuple(_uid(t) for t in v) for k, v in self.contexts.items()}
        roles: dict[str, tuple[bool, bool]] = {}
        for uid, (scu, scp) in self.scp_roles.items():
            roles.setdefault(_uid(uid), (bool(scu), bool(scp)))
        object.__setattr__(self, "supported", MappingProxyType(supported))
        object.__setattr__(self, "roles", MappingProxyType(roles))
