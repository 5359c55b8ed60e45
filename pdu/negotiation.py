"""Association negotiation as pure functions (PS3.8 9.3.2-9.3.3, PS3.7 Annex D.3.3).

The requestor builds an A-ASSOCIATE-RQ with :func:`build_associate_rq`. The acceptor first runs
:func:`check_association_rq` (protocol version, application context, AE titles), then
:func:`negotiate` answers the RQ under an :class:`AcceptorPolicy` and returns the A-ASSOCIATE-AC
together with the :class:`Negotiated` outcome. The requestor turns the AC it receives into the same
:class:`Negotiated` outcome with :func:`negotiated_from_ac`. No IO, no clocks. The data types and
limits (:class:`Negotiated`, :class:`AcceptedContext`, :class:`AcceptorPolicy`,
:data:`MAX_CONTEXTS`...) are defined in :mod:`pdu.negotiation_types` and re-exported here.

Local choices (documented here because the standard leaves them open):

* A peer Maximum Length below :data:`MIN_PEER_MAX_PDU` (but not 0) cannot carry a useful PDV:
  :func:`check_association_rq` rejects such an RQ with RJ (1, 1, 1), and :func:`negotiate` /
  :func:`negotiated_from_ac` raise :class:`~pdu.errors.RemoteProtocolError` (the caller aborts).
  A missing Maximum Length sub-item is read as :data:`MISSING_MAX_PDU` (a conservative value).
* Presentation contexts whose ID is used more than once in the RQ are all answered with result 2
  (no-reason), so the requestor never sees two different answers for one ID. Contexts with an
  even ID (or 0) are recorded as rejected with result 2 but get no AC item: PS3.8 gives an even
  ID no valid encoding, so the AC answers every context that can be answered, in order.
* A context after whose role selection the requestor has neither the SCU nor the SCP role is
  unusable: the acceptor answers it with result 1 (user-rejection); a requestor that receives such
  an acceptance records it in ``rejected`` with result 1 as well.
* Asynchronous operations window (PS3.7 Annex D.3.3.3, Tables D.3-7 and D.3-8): both the RQ and the
  AC fields are read from the REQUESTOR's point of view. In the RQ the requestor states how many
  operations it may invoke and how many it may perform at once; in the AC the acceptor answers how
  many operations it allows the requestor to invoke (i.e. how many it will perform itself) and
  how many it allows the requestor to perform (i.e. how many it will invoke itself), each "equal
  or less than" the requestor's offer. This is how dcm4che answers too (AC invoked = min(RQ
  invoked, acceptor's own performed limit)). The standard makes this a legal statement, not a
  check: the agreed value of each field is the minimum of both sides (0 = unlimited), so an
  acceptor answering more than offered gets the offer. A missing item on either side means (1, 1).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from ._cursor import uid_bytes
from .constants import (
    DEFAULT_MAX_PDU_LENGTH,
    DICOM_APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    ContextResult,
    RejectReason,
    RejectResult,
    RejectSource,
)
from .errors import PduEncodeError, RemoteProtocolError
from .items import (
    AsynchronousOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from .negotiation_types import (
    MAX_CONTEXTS,
    MIN_PEER_MAX_PDU,
    MISSING_MAX_PDU,
    AcceptedContext,
    AcceptorPolicy,
    ExtendedNegotiationPolicy,
    Negotiated,
    _uid,
)
from .pdus import AAssociateAC, AAssociateRJ, AAssociateRQ

__all__ = [
    "MAX_CONTEXTS",
    "MIN_PEER_MAX_PDU",
    "MISSING_MAX_PDU",
    "AcceptedContext",
    "AcceptorPolicy",
    "ExtendedNegotiationPolicy",
    "Negotiated",
    "build_associate_rq",
    "check_association_rq",
    "negotiate",
    "negotiated_from_ac",
    "qr_extended_negotiation",
]

_MAX_UINT32 = 0xFFFFFFFF
_MAX_UINT16 = 0xFFFF
_DEFAULT_ROLES = (True, False)


def _ae(value: str) -> str:
    """An AE title as compared: spaces and NULs at both ends are not significant."""
    return value.strip(" \x00")


# --------------------------------------------------------------------------- helpers


def _check_uint(value: int, limit: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise PduEncodeError(f"{name} must be an integer in 0..{limit}, got {value!r}")


def _min0(a: int, b: int) -> int:
    """The smaller of two limits where 0 means unlimited."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


def _peer_max_pdu(value: int | None, who: str) -> int:
    """The peer's Maximum Length as a send limit (0 = unlimited); tiny values are an error."""
    if value is None:
        return MISSING_MAX_PDU
    if 0 < value < MIN_PEER_MAX_PDU:
        raise RemoteProtocolError(
            f"{who} Maximum Length {value} is below {MIN_PEER_MAX_PDU}, the smallest we send "
            "in (a 6-byte PDV header and 8 bytes of data, as DCMTK)"
        )
    return value


def _role_map(items: Iterable[RoleSelection]) -> dict[str, tuple[bool, bool]]:
    """SOP class -> (SCU, SCP) from role selection sub-items; the first one per class wins."""
    roles: dict[str, tuple[bool, bool]] = {}
    for item in items:
        roles.setdefault(_uid(item.sop_class_uid), (item.scu_role != 0, item.scp_role != 0))
    return roles


def _combine_roles(
    proposed: tuple[bool, bool] | None, answered: tuple[bool, bool] | None
) -> tuple[bool, bool]:
    """The requestor's roles: defaults unless both sides stated them; an answer never adds a role."""
    if proposed is None or answered is None:
        return _DEFAULT_ROLES
    return (proposed[0] and answered[0], proposed[1] and answered[1])


def _bad_context_ids(contexts: Sequence[PresentationContextRQ]) -> set[int]:
    """IDs that are even, out of 1..255, or used by more than one proposed context."""
    seen: set[int] = set()
    bad: set[int] = set()
    for pc in contexts:
        cid = pc.context_id
        if cid in seen or cid % 2 == 0 or not 1 <= cid <= 255:
            bad.add(cid)
        seen.add(cid)
    return bad


def _first_ts(pc: PresentationContextRQ) -> str:
    """The transfer syntax sub-item of a rejected context's AC item: not significant, but
    present (PS3.8 Table 9-18 has exactly one), so the first proposed one, or Implicit VR
    Little Endian when the (malformed) RQ proposed none or one we could not encode (the
    decoder is lenient: e.g. a UID of more than 64 characters made the whole AC fail)."""
    if pc.transfer_syntaxes:
        first = pc.transfer_syntaxes[0]
        try:
            uid_bytes(first, "transfer syntax")
        except PduEncodeError:
            return _IMPLICIT_VR_LE
        return first
    return _IMPLICIT_VR_LE


_IMPLICIT_VR_LE = "1.2.840.10008.1.2"


# --------------------------------------------------------------------------- requestor


def build_associate_rq(
    called_ae: str,
    calling_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    max_pdu: int = DEFAULT_MAX_PDU_LENGTH,
    roles: Mapping[str, tuple[bool, bool]] = MappingProxyType({}),
    extended: Mapping[str, bytes] = MappingProxyType({}),
    common_extended: Sequence[SOPClassCommonExtendedNegotiation] = (),
    user_identity: UserIdentityRQ | None = None,
    async_window: tuple[int, int] | None = None,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME,
) -> AAssociateRQ:
    """Build an A-ASSOCIATE-RQ proposing ``contexts`` as (abstract syntax, transfer syntaxes).

    Context IDs are assigned 1, 3, 5... in the given order. ``roles`` maps SOP classes to the
    (SCU, SCP) roles we want; ``extended`` maps SOP classes to extended negotiation info. The
    asynchronous operations window is not proposed unless ``async_window`` is given. Raises
    :class:`~pdu.errors.PduEncodeError` (a ValueError) for no or more than 128 contexts, a context
    without transfer syntax, a role or extended negotiation for a SOP class not proposed, or an
    out-of-range number, and for an empty (all-space) AE title: PS3.8 9.3.2 forbids sending one.
    """
    for title, name in ((called_ae, "called_ae"), (calling_ae, "calling_ae")):
        if isinstance(title, str) and not title.strip(" "):
            raise PduEncodeError(f"{name} is empty: an A-ASSOCIATE-RQ must name both AEs "
                                 "(PS3.8 9.3.2: 16 spaces shall not be used)")
    items = _rq_context_items(contexts)
    _check_uint(max_pdu, _MAX_UINT32, "max_pdu")
    abstract = {_uid(pc.abstract_syntax) for pc in items}
    for uid in (*roles, *extended):
        if _uid(uid) not in abstract:
            raise PduEncodeError(f"role or extended negotiation for {uid}, which is not proposed")
    window = None
    if async_window is not None:
        for value in async_window:
            _check_uint(value, _MAX_UINT16, "async_window")
        window = AsynchronousOperationsWindow(async_window[0], async_window[1])
    user_information = UserInformation.build(
        max_length=max_pdu,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
        async_ops_window=window,
        role_selections=tuple(
            RoleSelection(uid, int(scu), int(scp)) for uid, (scu, scp) in roles.items()
        ),
        extended_negotiations=tuple(
            SOPClassExtendedNegotiation(uid, bytes(info)) for uid, info in extended.items()
        ),
        common_extended_negotiations=tuple(common_extended),
        user_identity=user_identity,
    )
    return AAssociateRQ.build(
        called_ae=called_ae,
        calling_ae=calling_ae,
        presentation_contexts=items,
        user_information=user_information,
    )


def _rq_context_items(
    contexts: Sequence[tuple[str, Sequence[str]]],
) -> tuple[PresentationContextRQ, ...]:
    """Presentation context items with IDs 1, 3, 5...; PduEncodeError for a bad list."""
    if not contexts or len(contexts) > MAX_CONTEXTS:
        raise PduEncodeError(f"1..{MAX_CONTEXTS} presentation contexts needed, got {len(contexts)}")
    items = []
    for index, (abstract_syntax, transfer_syntaxes) in enumerate(contexts):
        if isinstance(transfer_syntaxes, str) or not transfer_syntaxes:
            raise PduEncodeError(f"context {abstract_syntax}: a sequence of transfer syntaxes needed")
        items.append(
            PresentationContextRQ(2 * index + 1, abstract_syntax, tuple(transfer_syntaxes))
        )
    return tuple(items)


def negotiated_from_ac(rq: AAssociateRQ, ac: AAssociateAC) -> Negotiated:
    """The requestor's view of the association from the RQ it sent and the AC it received.

    Contexts the AC does not answer count as rejected with result 2; an acceptance naming a
    transfer syntax we did not propose, or leaving the requestor without any role, is recorded as
    rejected (2, resp. 1) rather than used. Raises RemoteProtocolError for a tiny peer max length.
    """
    rq_info, ac_info = rq.user_information, ac.user_information
    peer_max = _peer_max_pdu(ac_info.max_length, "A-ASSOCIATE-AC")
    proposed = _proposed(rq)
    contexts, rejected = _requestor_contexts(proposed, rq, ac)
    proposed_ext = {_uid(item.sop_class_uid) for item in rq_info.extended_negotiations}
    extended: dict[str, bytes] = {}
    for item in ac_info.extended_negotiations:
        if _uid(item.sop_class_uid) in proposed_ext:
            extended.setdefault(_uid(item.sop_class_uid), bytes(item.application_info))
    identity = ac_info.user_identity
    return Negotiated(
        contexts=MappingProxyType(contexts),
        rejected=MappingProxyType(rejected),
        proposed=MappingProxyType(proposed),
        peer_max_pdu=peer_max,
        own_max_pdu=rq_info.max_length or 0,
        peer_implementation_class_uid=ac_info.implementation_class_uid,
        peer_implementation_version_name=ac_info.implementation_version_name,
        async_window=_agreed_window(rq_info.async_ops_window, ac_info.async_ops_window),
        extended=MappingProxyType(extended),
        user_identity_response=(
            bytes(identity.server_response)
            if isinstance(identity, UserIdentityAC) and rq_info.user_identity is not None
            else None
        ),
        common_extended=_common_map(rq_info.common_extended_negotiations),
    )


def _requestor_contexts(
    proposed: Mapping[int, PresentationContextRQ], rq: AAssociateRQ, ac: AAssociateAC
) -> tuple[dict[int, AcceptedContext], dict[int, int]]:
    """The AC's answer to each proposed context, checked: (accepted, rejected)."""
    rq_roles = _role_map(rq.user_information.role_selections)
    ac_roles = _role_map(ac.user_information.role_selections)
    answers: dict[int, PresentationContextAC] = {}
    for item in ac.presentation_contexts:
        answers.setdefault(item.context_id, item)
    contexts: dict[int, AcceptedContext] = {}
    rejected: dict[int, int] = {}
    for cid, pc in proposed.items():
        answer = answers.get(cid)
        if answer is None:
            rejected[cid] = int(ContextResult.NO_REASON)
            continue
        if answer.result != ContextResult.ACCEPTANCE:
            rejected[cid] = int(answer.result)
            continue
        abstract = _uid(pc.abstract_syntax)
        ts = _uid(answer.transfer_syntax or "")
        scu, scp = _combine_roles(rq_roles.get(abstract), ac_roles.get(abstract))
        if ts not in {_uid(t) for t in pc.transfer_syntaxes}:
            rejected[cid] = int(ContextResult.NO_REASON)
        elif not (scu or scp):
            rejected[cid] = int(ContextResult.USER_REJECTION)
        else:
            contexts[cid] = AcceptedContext(cid, abstract, ts, scu, scp)
    return contexts, rejected


def _proposed(rq: AAssociateRQ) -> dict[int, PresentationContextRQ]:
    proposed: dict[int, PresentationContextRQ] = {}
    for pc in rq.presentation_contexts:
        proposed.setdefault(pc.context_id, pc)
    return proposed


def _common_map(
    items: Iterable[SOPClassCommonExtendedNegotiation],
) -> Mapping[str, SOPClassCommonExtendedNegotiation]:
    common: dict[str, SOPClassCommonExtendedNegotiation] = {}
    for item in items:
        common.setdefault(_uid(item.sop_class_uid), item)
    return MappingProxyType(common)


def _agreed_window(
    first: AsynchronousOperationsWindow | None, second: AsynchronousOperationsWindow | None
) -> tuple[int, int]:
    """(invoked, performed) agreed by both sides; (1, 1) unless both stated a window.

    Both items are read from the requestor's point of view (PS3.7 D.3.3.3), so the two fields
    are combined one to one; the acceptor swaps them when it applies the result to itself.
    """
    if first is None or second is None:
        return (1, 1)
    return (_min0(first.invoked, second.invoked), _min0(first.performed, second.performed))


# --------------------------------------------------------------------------- acceptor


def check_association_rq(
    rq: AAssociateRQ, *, called_ae: str | None, calling_allow: Collection[str] | None
) -> AAssociateRJ | None:
    """The A-ASSOCIATE-RJ an acceptor must send for ``rq``, or None when it may negotiate.

    In order: protocol version without bit 0 -> RJ (1, 2, 2); unknown application context ->
    RJ (1, 1, 2); ``called_ae`` given and different -> RJ (1, 1, 7); ``calling_allow`` given and
    the calling AE not in it -> RJ (1, 1, 3); a peer Maximum Length 1..13 -> RJ (1, 1, 1); no
    presentation context with an odd ID (PS3.8 9.3.2 asks for one or more, and an A-ASSOCIATE-AC
    answering none would break 9.3.3) -> RJ (1, 1, 1). AE titles are compared with spaces and
    NULs at both ends stripped, case-sensitively.
    """
    permanent = int(RejectResult.REJECTED_PERMANENT)
    user = int(RejectSource.SERVICE_USER)
    if not rq.protocol_version & 1:
        return AAssociateRJ(
            permanent, int(RejectSource.SERVICE_PROVIDER_ACSE), PROTOCOL_VERSION_NOT_SUPPORTED
        )
    if _uid(rq.application_context) != DICOM_APPLICATION_CONTEXT:
        return AAssociateRJ(permanent, user, int(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED))
    if called_ae is not None and _ae(rq.called_ae) != _ae(called_ae):
        return AAssociateRJ(permanent, user, int(RejectReason.CALLED_AE_NOT_RECOGNIZED))
    if calling_allow is not None and _ae(rq.calling_ae) not in {_ae(a) for a in calling_allow}:
        return AAssociateRJ(permanent, user, int(RejectReason.CALLING_AE_NOT_RECOGNIZED))
    max_length = rq.user_information.max_length
    if max_length is not None and 0 < max_length < MIN_PEER_MAX_PDU:
        return AAssociateRJ(permanent, user, int(RejectReason.NO_REASON))
    if not any(pc.context_id & 1 for pc in rq.presentation_contexts):
        return AAssociateRJ(permanent, user, int(RejectReason.NO_REASON))
    return None


def negotiate(
    rq: AAssociateRQ, policy: AcceptorPolicy, *, identity_response: bytes | None = None
) -> tuple[AAssociateAC, Negotiated]:
    """Answer ``rq`` under ``policy``: the A-ASSOCIATE-AC to send and the negotiated outcome.

    Every proposed context is answered, in order (except even IDs, which cannot be encoded). For each, the chosen transfer syntax is the
    first of OUR preference order that the requestor proposed. Results: 0 accepted, 1 the
    requestor would have no role left, 2 even or duplicate ID, 3 abstract syntax not supported,
    4 no acceptable transfer syntax. Role selection and extended negotiation are answered only for
    SOP classes the requestor asked about and that have an accepted context. A User Identity AC
    is included only when the RQ asks for a positive response and ``identity_response`` is given
    (the server authenticated the user before calling this; ``b""`` when it has nothing to send
    back, e.g. for a username and passcode: PS3.7 D.3.3.7.2, zero-length server response).
    AE titles and access control are :func:`check_association_rq`'s business. Raises RemoteProtocolError for a tiny peer max
    length, PduEncodeError for a policy number out of range.
    """
    info = rq.user_information
    peer_max = _peer_max_pdu(info.max_length, "A-ASSOCIATE-RQ")
    _check_uint(policy.max_pdu, _MAX_UINT32, "policy.max_pdu")
    answers, contexts, rejected = _answer_contexts(rq, policy)
    accepted_classes = {cx.abstract_syntax for cx in contexts.values()}
    role_answers = _role_answers(info.role_selections, policy, accepted_classes)
    extended = _extended_answers(info.extended_negotiations, policy, accepted_classes)
    user_information, identity = _ac_user_information(
        info, policy, role_answers, extended, identity_response
    )
    ac = AAssociateAC.build(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        presentation_contexts=answers,
        user_information=user_information,
        reserved=rq.reserved,
    )
    # echo the AE fields byte for byte (PS3.8 9.3.3: the AC repeats the RQ's values)
    ac = replace(ac, called_ae_raw=rq.called_ae_raw, calling_ae_raw=rq.calling_ae_raw)
    negotiated = Negotiated(
        contexts=MappingProxyType(contexts),
        rejected=MappingProxyType(rejected),
        proposed=MappingProxyType(_proposed(rq)),
        peer_max_pdu=peer_max,
        own_max_pdu=policy.max_pdu,
        peer_implementation_class_uid=info.implementation_class_uid,
        peer_implementation_version_name=info.implementation_version_name,
        async_window=_agreed_window(info.async_ops_window, user_information.async_ops_window),
        extended=MappingProxyType(extended),
        user_identity_response=None if identity is None else identity.server_response,
        common_extended=_common_map(info.common_extended_negotiations),
    )
    return ac, negotiated


def _ac_user_information(
    info: UserInformation,
    policy: AcceptorPolicy,
    role_answers: tuple[RoleSelection, ...],
    extended: Mapping[str, bytes],
    identity_response: bytes | None,
) -> tuple[UserInformation, UserIdentityAC | None]:
    """The AC's user information item and the User Identity AC it carries, if any."""
    window = None
    if info.async_ops_window is not None and policy.async_window is not None:
        theirs, ours = info.async_ops_window, policy.async_window
        window = AsynchronousOperationsWindow(
            _min0(theirs.invoked, ours[0]), _min0(theirs.performed, ours[1])
        )
    identity = None
    asked = info.user_identity
    if isinstance(asked, UserIdentityRQ) and asked.positive_response_requested:
        if identity_response is not None:  # accepted: b"" when there is nothing to send back
            identity = UserIdentityAC(bytes(identity_response))
    user_information = UserInformation.build(
        max_length=policy.max_pdu,
        implementation_class_uid=policy.implementation_class_uid,
        implementation_version_name=policy.implementation_version_name,
        async_ops_window=window,
        role_selections=role_answers,
        extended_negotiations=tuple(
            SOPClassExtendedNegotiation(uid, data) for uid, data in extended.items()
        ),
        user_identity=identity,
    )
    return user_information, identity


def _answer_contexts(
    rq: AAssociateRQ, policy: AcceptorPolicy
) -> tuple[tuple[PresentationContextAC, ...], dict[int, AcceptedContext], dict[int, int]]:
    """Answer every proposed context in order: (AC items, accepted, rejected)."""
    supported = policy.supported
    rq_roles = _role_map(rq.user_information.role_selections)
    bad_ids = _bad_context_ids(rq.presentation_contexts)
    answers: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    rejected: dict[int, int] = {}
    for pc in rq.presentation_contexts:
        cid, abstract = pc.context_id, _uid(pc.abstract_syntax)
        offered = {_uid(t) for t in pc.transfer_syntaxes}
        chosen = next((t for t in supported.get(abstract, ()) if t in offered), None)
        roles = _combine_roles(rq_roles.get(abstract), _role_for(policy, abstract))
        if cid in bad_ids:
            result = ContextResult.NO_REASON
        elif abstract not in supported:
            result = ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif chosen is None:
            result = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
        elif not any(roles):
            result = ContextResult.USER_REJECTION
        else:
            accepted[cid] = AcceptedContext(cid, abstract, chosen, roles[0], roles[1])
            answers.append(PresentationContextAC(cid, int(ContextResult.ACCEPTANCE), chosen))
            continue
        rejected.setdefault(cid, int(result))
        if cid % 2 and 1 <= cid <= 255:  # an even ID has no valid AC encoding: left unanswered
            answers.append(PresentationContextAC(cid, int(result), _first_ts(pc)))
    return tuple(answers), accepted, rejected


def _role_for(policy: AcceptorPolicy, abstract: str) -> tuple[bool, bool] | None:
    return policy.roles.get(abstract)


def _role_answers(
    items: Sequence[RoleSelection], policy: AcceptorPolicy, accepted_classes: set[str]
) -> tuple[RoleSelection, ...]:
    """Role selection answers: for proposed, supported SOP classes with an accepted context."""
    answers = []
    for uid, proposed in _role_map(items).items():
        ours = _role_for(policy, uid)
        if ours is None or uid not in accepted_classes:
            continue
        scu, scp = _combine_roles(proposed, ours)
        answers.append(RoleSelection(uid, int(scu), int(scp)))
    return tuple(answers)


def _extended_answers(
    items: Sequence[SOPClassExtendedNegotiation],
    policy: AcceptorPolicy,
    accepted_classes: set[str],
) -> dict[str, bytes]:
    """Extended negotiation answers from the policy callback, one per proposed SOP class."""
    answers: dict[str, bytes] = {}
    if policy.extended is None:
        return answers
    for item in items:
        uid = _uid(item.sop_class_uid)
        if uid in answers or uid not in accepted_classes:
            continue
        answer = policy.extended(uid, bytes(item.application_info))
        if answer is not None:
            answers[uid] = bytes(answer)
    return answers


def qr_extended_negotiation(
    supported_flags: Mapping[str, bytes | Sequence[int]],
) -> ExtendedNegotiationPolicy:
    """An :attr:`AcceptorPolicy.extended` callback for Query/Retrieve flag bytes (PS3.4 C.5).

    ``supported_flags`` maps SOP class UIDs to the flags we support (byte i = 1: feature i+1, e.g.
    ``b"\\x01"`` = relational queries only). The answer has one byte per requested byte, each 1
    only where the requestor asked for it (value 1) AND we support it: flags are only ever
    cleared, never set. SOP classes not in the mapping, and empty requests, get no answer.
    """
    table = {_uid(uid): bytes(flags) for uid, flags in supported_flags.items()}

    def answer(sop_class_uid: str, requested: bytes) -> bytes | None:
        ours = table.get(_uid(sop_class_uid))
        if ours is None or not requested:
            return None
        return bytes(
            1 if want == 1 and index < len(ours) and ours[index] == 1 else 0
            for index, want in enumerate(requested)
        )

    return answer
