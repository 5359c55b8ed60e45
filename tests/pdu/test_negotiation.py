"""Tests of pdu.negotiation: contexts, roles, max length, extended negotiation, RQ checks."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pdu
from pdu.constants import (
    DEFAULT_MAX_PDU_LENGTH,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    ContextResult,
)
from pdu.errors import PduEncodeError, RemoteProtocolError
from pdu.items import (
    AsynchronousOperationsWindow,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from pdu.negotiation import (
    MAX_CONTEXTS,
    MIN_PEER_MAX_PDU,
    MISSING_MAX_PDU,
    AcceptedContext,
    AcceptorPolicy,
    Negotiated,
    build_associate_rq,
    check_association_rq,
    negotiate,
    negotiated_from_ac,
    qr_extended_negotiation,
)
from pdu.pdus import AAssociateAC, AAssociateRJ, AAssociateRQ

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.1.3"
ABSTRACTS = (VERIFICATION, CT, MR, FIND, MOVE, GET)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG = "1.2.840.10008.1.2.2"
JPEG = "1.2.840.10008.1.2.4.50"
SYNTAXES = (IMPLICIT, EXPLICIT, DEFLATED, BIG, JPEG)


def roundtrip(p: AAssociateRQ | AAssociateAC) -> AAssociateRQ | AAssociateAC:
    out = pdu.decode(pdu.encode(p))
    assert isinstance(out, type(p))
    return out


def rq_with(contexts: tuple[PresentationContextRQ, ...], **ui: object) -> AAssociateRQ:
    """An RQ with arbitrary (possibly invalid) context items, through the codec."""
    info = UserInformation.build(
        max_length=ui.pop("max_length", DEFAULT_MAX_PDU_LENGTH),  # type: ignore[arg-type]
        implementation_class_uid="1.2.3.4",
        **ui,  # type: ignore[arg-type]
    )
    rq = AAssociateRQ.build(called_ae="SCP", calling_ae="SCU", presentation_contexts=contexts,
                            user_information=info)
    if any(pc.context_id % 2 == 0 or "\x00" in pc.abstract_syntax for pc in contexts):
        return rq  # our encoder refuses these; a lenient decoder could yield this same RQ
    out = roundtrip(rq)
    assert isinstance(out, AAssociateRQ)
    return out


def both_sides(
    rq: AAssociateRQ, policy: AcceptorPolicy, identity_response: bytes | None = None
) -> tuple[AAssociateAC, Negotiated, Negotiated]:
    """Negotiate on a decoded RQ, decode the AC and return (AC, acceptor view, requestor view)."""
    wire_rq = roundtrip(rq)
    assert isinstance(wire_rq, AAssociateRQ)
    ac, accepted = negotiate(wire_rq, policy, identity_response=identity_response)
    wire_ac = roundtrip(ac)
    assert isinstance(wire_ac, AAssociateAC)
    return wire_ac, accepted, negotiated_from_ac(rq, wire_ac)


def assert_same_outcome(acceptor: Negotiated, requestor: Negotiated) -> None:
    assert dict(requestor.contexts) == dict(acceptor.contexts)
    assert dict(requestor.rejected) == dict(acceptor.rejected)
    assert dict(requestor.proposed) == dict(acceptor.proposed)
    assert requestor.async_window == acceptor.async_window
    assert dict(requestor.extended) == dict(acceptor.extended)
    assert requestor.user_identity_response == acceptor.user_identity_response
    assert requestor.peer_max_pdu == acceptor.own_max_pdu
    assert requestor.own_max_pdu == acceptor.peer_max_pdu


# ----------------------------------------------------------------------------- build_associate_rq


def test_build_assigns_odd_ids_and_our_user_information() -> None:
    rq = build_associate_rq("SCP", "SCU", [(VERIFICATION, [IMPLICIT]), (CT, (EXPLICIT, IMPLICIT)),
                                           (CT, [JPEG])])
    assert [pc.context_id for pc in rq.presentation_contexts] == [1, 3, 5]
    assert rq.presentation_contexts[1].transfer_syntaxes == (EXPLICIT, IMPLICIT)
    info = rq.user_information
    assert info.max_length == DEFAULT_MAX_PDU_LENGTH
    assert info.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert info.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert info.async_ops_window is None  # not proposed by default
    assert info.role_selections == () and info.extended_negotiations == ()
    assert roundtrip(rq) == rq


def test_build_128_contexts_is_the_limit() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])] * MAX_CONTEXTS)
    ids = [pc.context_id for pc in rq.presentation_contexts]
    assert ids == list(range(1, 256, 2))
    roundtrip(rq)
    with pytest.raises(PduEncodeError):
        build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])] * (MAX_CONTEXTS + 1))
    with pytest.raises(ValueError):  # PduEncodeError is also a ValueError
        build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])] * 200)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(contexts=[]),
        dict(contexts=[(CT, [])]),
        dict(contexts=[(CT, IMPLICIT)]),  # a bare string is not a list of syntaxes
        dict(roles={MR: (True, True)}),
        dict(extended={MR: b"\x01"}),
        dict(max_pdu=-1),
        dict(max_pdu=1 << 32),
        dict(async_window=(1, 70000)),
    ],
)
def test_build_rejects_bad_requests(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"contexts": [(CT, [IMPLICIT])]}
    args.update(kwargs)
    with pytest.raises(PduEncodeError):
        build_associate_rq("SCP", "SCU", **args)  # type: ignore[arg-type]


def test_build_optional_items() -> None:
    identity = UserIdentityRQ(2, True, b"user", b"secret")
    common = SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2")
    rq = build_associate_rq(
        "SCP", "SCU", [(GET, [IMPLICIT]), (CT, [IMPLICIT])], max_pdu=0,
        roles={CT: (False, True)}, extended={GET: b"\x01\x00"}, common_extended=[common],
        user_identity=identity, async_window=(3, 0),
    )
    info = roundtrip(rq).user_information
    assert info.max_length == 0
    assert info.role_selections == (RoleSelection(CT, 0, 1),)
    assert info.extended_negotiations == (SOPClassExtendedNegotiation(GET, b"\x01\x00"),)
    assert info.common_extended_negotiations == (common,)
    assert info.user_identity == identity
    assert info.async_ops_window == AsynchronousOperationsWindow(3, 0)


# ----------------------------------------------------------------------------- presentation contexts


@pytest.mark.parametrize(
    ("proposed", "ours", "chosen"),
    [
        ((EXPLICIT, IMPLICIT), (IMPLICIT, EXPLICIT), IMPLICIT),
        ((IMPLICIT, EXPLICIT), (EXPLICIT, IMPLICIT), EXPLICIT),
        ((JPEG, BIG, IMPLICIT), (DEFLATED, IMPLICIT, BIG), IMPLICIT),
        ((JPEG,), (EXPLICIT, JPEG), JPEG),
    ],
)
def test_acceptor_prefers_its_own_order(
    proposed: tuple[str, ...], ours: tuple[str, ...], chosen: str
) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, proposed)])
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={CT: ours}))
    assert ac.presentation_contexts[0].transfer_syntax == chosen
    assert acc.contexts[1] == AcceptedContext(1, CT, chosen, True, False)
    assert_same_outcome(acc, req)


def test_each_result_code() -> None:
    """0 accepted, 1 no role left, 2 duplicate ID, 3 abstract syntax, 4 transfer syntaxes."""
    contexts = (
        PresentationContextRQ(1, CT, (EXPLICIT,)),
        PresentationContextRQ(3, GET, (IMPLICIT,)),
        PresentationContextRQ(5, MR, (IMPLICIT,)),
        PresentationContextRQ(5, CT, (IMPLICIT,)),
        PresentationContextRQ(7, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(9, CT, (JPEG, BIG)),
    )
    rq = rq_with(contexts, role_selections=(RoleSelection(GET, 0, 1),))
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT, EXPLICIT), GET: (IMPLICIT,),
                                      MR: (IMPLICIT,)}, scp_roles={GET: (True, False)})
    ac, negotiated = negotiate(rq, policy)
    results = [(pc.context_id, pc.result) for pc in ac.presentation_contexts]
    assert results == [(1, 0), (3, 1), (5, 2), (5, 2), (7, 3), (9, 4)]
    assert set(negotiated.contexts) == {1}
    assert dict(negotiated.rejected) == {3: 1, 5: 2, 7: 3, 9: 4}
    # rejected answers echo the first proposed syntax (the receiver must not test it)
    assert ac.presentation_contexts[4].transfer_syntax == IMPLICIT
    assert ac.user_information.role_selections == ()  # nothing accepted for GET
    req = negotiated_from_ac(rq, roundtrip(ac))  # type: ignore[arg-type]
    assert set(req.contexts) == {1}
    assert dict(req.rejected) == {3: 1, 5: 2, 7: 3, 9: 4}


def test_even_and_duplicate_ids_are_rejected_not_crashing() -> None:
    contexts = (
        PresentationContextRQ(1, CT, (IMPLICIT,)),
        PresentationContextRQ(2, CT, (IMPLICIT,)),
        PresentationContextRQ(3, CT, (IMPLICIT,)),
        PresentationContextRQ(3, MR, (IMPLICIT,)),
        PresentationContextRQ(255, MR, (IMPLICIT,)),
        PresentationContextRQ(0, MR, (IMPLICIT,)),
    )
    rq = rq_with(contexts)
    ac, negotiated = negotiate(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,), MR: (IMPLICIT,)}))
    answers = [(pc.context_id, pc.result) for pc in ac.presentation_contexts]
    # even IDs have no valid AC encoding: recorded as rejected, not answered
    assert answers == [(1, 0), (3, 2), (3, 2), (255, 0)]
    assert set(negotiated.contexts) == {1, 255}
    assert dict(negotiated.rejected) == {2: 2, 3: 2, 0: 2}
    assert negotiated.proposed[3].abstract_syntax == CT  # the first proposal under an ID
    roundtrip(ac)


def test_ac_answers_every_context_in_order() -> None:
    proposals = [(ABSTRACTS[i % 6], [SYNTAXES[i % 5]]) for i in range(40)]
    rq = build_associate_rq("SCP", "SCU", proposals)
    ac, _ = negotiate(rq, AcceptorPolicy(contexts={CT: SYNTAXES, FIND: (IMPLICIT,)}))
    assert [pc.context_id for pc in ac.presentation_contexts] == list(range(1, 80, 2))


def test_uids_compared_without_padding() -> None:
    rq = rq_with((PresentationContextRQ(1, CT + "\x00", (IMPLICIT + " ",)),
                  PresentationContextRQ(3, MR + " ", (EXPLICIT + "\x00",))))
    _, negotiated = negotiate(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,), MR + " ": [EXPLICIT]}))
    assert negotiated.contexts[1] == AcceptedContext(1, CT, IMPLICIT)
    assert negotiated.contexts[3] == AcceptedContext(3, MR, EXPLICIT)


def test_policy_normalizes_once_at_construction() -> None:
    policy = AcceptorPolicy(contexts={CT + "\x00": [IMPLICIT + " "], MR: (EXPLICIT,)},
                            scp_roles={GET + " ": (1, 0), GET: (False, True)})  # type: ignore[dict-item]
    assert dict(policy.supported) == {CT: (IMPLICIT,), MR: (EXPLICIT,)}
    assert dict(policy.roles) == {GET: (True, False)}  # first entry per UID wins
    with pytest.raises(TypeError):
        policy.supported[CT] = ()  # type: ignore[index]
    # negotiate() reads the cache only: a policy whose cache says otherwise answers by the cache
    object.__setattr__(policy, "supported", {MR: (EXPLICIT,)})
    _, negotiated = negotiate(build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])]), policy)
    assert dict(negotiated.rejected) == {1: int(ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)}
    # dataclasses.replace builds a new policy: the cache follows the new contexts
    again = dataclasses.replace(policy, contexts={CT: (IMPLICIT,)})
    assert dict(again.supported) == {CT: (IMPLICIT,)} and again == dataclasses.replace(again)


def test_no_contexts_supported_gives_an_ac_with_all_rejected() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT]), (MR, [IMPLICIT])])
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={}))
    assert [pc.result for pc in ac.presentation_contexts] == [3, 3]
    assert acc.contexts == {} and dict(acc.rejected) == {1: 3, 3: 3}
    assert_same_outcome(acc, req)


def test_context_for() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [JPEG]), (CT, [IMPLICIT]), (GET, [IMPLICIT]),
                                           (MR, [IMPLICIT])], roles={MR: (False, True)})
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT, JPEG), GET: (IMPLICIT,), MR: (IMPLICIT,)},
                            scp_roles={MR: (True, True)})
    _, acc, req = both_sides(rq, policy)
    for n in (acc, req):
        assert n.context_for(CT) == AcceptedContext(1, CT, JPEG)
        assert n.context_for(CT, IMPLICIT) == AcceptedContext(3, CT, IMPLICIT)
        assert n.context_for(CT, EXPLICIT) is None
        assert n.context_for(CT, scp=True) is None
        assert n.context_for(MR) is None
        assert n.context_for(MR, scp=True) == AcceptedContext(7, MR, IMPLICIT, False, True)
        assert n.context_for(VERIFICATION) is None


def test_requestor_ignores_bad_acceptances() -> None:
    """No answer -> 2; a transfer syntax we did not propose -> 2; unknown IDs are ignored."""
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT]), (MR, [IMPLICIT]), (FIND, [BIG])])
    from pdu.items import PresentationContextAC

    ac = AAssociateAC.build(called_ae="SCP", calling_ae="SCU", presentation_contexts=(
        PresentationContextAC(1, 0, EXPLICIT), PresentationContextAC(5, 0, BIG),
        PresentationContextAC(9, 0, BIG), PresentationContextAC(5, 4, None)))
    n = negotiated_from_ac(rq, roundtrip(ac))  # type: ignore[arg-type]
    assert set(n.contexts) == {5}
    assert dict(n.rejected) == {1: 2, 3: 2}


def test_even_id_from_the_wire_gets_an_encodable_ac() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT]), (MR, [IMPLICIT])])
    data = bytearray(pdu.encode(rq))
    second = data.index(bytes((0x20, 0)), data.index(bytes((0x20, 0)), 74) + 1)
    assert data[second + 4] == 3
    data[second + 4] = 4  # the second context now claims the even ID 4
    wire = pdu.decode(bytes(data))
    assert isinstance(wire, AAssociateRQ)
    ac, negotiated = negotiate(wire, AcceptorPolicy(contexts={CT: (IMPLICIT,), MR: (IMPLICIT,)}))
    assert [(pc.context_id, pc.result) for pc in ac.presentation_contexts] == [(1, 0)]
    assert dict(negotiated.rejected) == {4: 2}
    roundtrip(ac)


# ----------------------------------------------------------------------------- role selection

ROLE_CHOICES = [None, (True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("proposed", ROLE_CHOICES)
@pytest.mark.parametrize("supported", ROLE_CHOICES)
def test_role_selection_matrix(
    proposed: tuple[bool, bool] | None, supported: tuple[bool, bool] | None
) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT]), (VERIFICATION, [IMPLICIT])],
                            roles={} if proposed is None else {CT: proposed})
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT,), VERIFICATION: (IMPLICIT,)},
                            scp_roles={} if supported is None else {CT: supported})
    ac, acc, req = both_sides(rq, policy)
    assert_same_outcome(acc, req)
    assert acc.contexts[3] == AcceptedContext(3, VERIFICATION, IMPLICIT, True, False)
    answers = ac.user_information.role_selections
    if proposed is None or supported is None:
        # no negotiation: no answer, default roles (requestor SCU only)
        assert answers == ()
        assert acc.contexts[1] == AcceptedContext(1, CT, IMPLICIT, True, False)
        return
    expected = (proposed[0] and supported[0], proposed[1] and supported[1])
    if expected == (False, False):
        assert ac.presentation_contexts[0].result == ContextResult.USER_REJECTION
        assert dict(acc.rejected) == {1: 1} and answers == ()
        return
    assert answers == (RoleSelection(CT, int(expected[0]), int(expected[1])),)
    # the answer never turns a proposed 0 into 1
    assert answers[0].scu_role <= proposed[0] and answers[0].scp_role <= proposed[1]
    assert acc.contexts[1] == AcceptedContext(1, CT, IMPLICIT, *expected)


def test_role_answers_only_for_proposed_sop_classes() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT]), (MR, [IMPLICIT])],
                            roles={CT: (True, True)})
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT,), MR: (IMPLICIT,)},
                            scp_roles={CT: (True, True), MR: (True, True), GET: (True, True)})
    ac, acc, req = both_sides(rq, policy)
    assert ac.user_information.role_selections == (RoleSelection(CT, 1, 1),)
    assert acc.contexts[3].scp_role is False
    assert_same_outcome(acc, req)


@pytest.mark.parametrize(
    ("proposed", "answered", "expected"),
    [
        ((False, True), (True, True), (False, True)),   # a peer setting a 0 to 1 is ignored
        ((True, False), (True, True), (True, False)),
        ((False, True), None, (True, False)),            # omitted answer: defaults
        (None, (False, True), (True, False)),            # answer to nothing: ignored
        ((True, True), (False, False), None),            # no role left: unusable
    ],
)
def test_requestor_role_interpretation(
    proposed: tuple[bool, bool] | None, answered: tuple[bool, bool] | None,
    expected: tuple[bool, bool] | None,
) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])],
                            roles={} if proposed is None else {CT: proposed})
    from pdu.items import PresentationContextAC

    roles = () if answered is None else (RoleSelection(CT, *map(int, answered)),)
    ac = AAssociateAC.build(
        called_ae="SCP", calling_ae="SCU",
        presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT),),
        user_information=UserInformation.build(max_length=0, implementation_class_uid="1.2",
                                               role_selections=roles))
    n = negotiated_from_ac(rq, roundtrip(ac))  # type: ignore[arg-type]
    if expected is None:
        assert n.contexts == {} and dict(n.rejected) == {1: 1}
    else:
        assert n.contexts[1] == AcceptedContext(1, CT, IMPLICIT, *expected)


# ----------------------------------------------------------------------------- extended negotiation


def test_extended_negotiation_answers_only_what_is_supported() -> None:
    rq = build_associate_rq(
        "SCP", "SCU", [(FIND, [IMPLICIT]), (MOVE, [IMPLICIT]), (GET, [IMPLICIT]), (CT, [IMPLICIT])],
        extended={FIND: b"\x01\x01\x01\x01\x01", MOVE: b"\x01", GET: b"\x01\x01", CT: b"\x01"},
    )
    policy = AcceptorPolicy(
        contexts={FIND: (IMPLICIT,), MOVE: (IMPLICIT,), CT: (EXPLICIT,)},
        extended=qr_extended_negotiation({FIND: b"\x01\x00\x01", MOVE: b"\x01\x01",
                                          GET: b"\x01\x01", CT: b"\x01"}),
    )
    ac, acc, req = both_sides(rq, policy)
    assert dict(acc.extended) == {FIND: b"\x01\x00\x01\x00\x00", MOVE: b"\x01"}
    # GET and CT have no accepted context: no answer even though the callback would give one
    assert {i.sop_class_uid for i in ac.user_information.extended_negotiations} == {FIND, MOVE}
    assert_same_outcome(acc, req)


def test_extended_negotiation_without_policy_or_request() -> None:
    rq = build_associate_rq("SCP", "SCU", [(FIND, [IMPLICIT])], extended={FIND: b"\x01"})
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={FIND: (IMPLICIT,)}))
    assert ac.user_information.extended_negotiations == () and acc.extended == {}
    assert_same_outcome(acc, req)
    rq = build_associate_rq("SCP", "SCU", [(FIND, [IMPLICIT])])
    policy = AcceptorPolicy(contexts={FIND: (IMPLICIT,)},
                            extended=qr_extended_negotiation({FIND: b"\x01"}))
    ac, acc, req = both_sides(rq, policy)
    assert ac.user_information.extended_negotiations == () and req.extended == {}


def test_qr_callback_details() -> None:
    answer = qr_extended_negotiation({FIND: [1, 1, 0, 1]})
    assert answer(MOVE, b"\x01") is None  # not supported at all
    assert answer(FIND, b"") is None  # nothing requested
    assert answer(FIND, b"\x01") == b"\x01"  # a one-byte RQ gets a one-byte AC
    assert answer(FIND, b"\x00\x01\x01\x01\x01\x01") == b"\x00\x01\x00\x01\x00\x00"
    assert answer(FIND, b"\x02\x01") == b"\x00\x01"  # only 1 counts as a request
    assert answer(FIND + "\x00", b"\x01") == b"\x01"


@given(
    requested=st.binary(min_size=0, max_size=12),
    supported=st.lists(st.integers(0, 2), max_size=12),
)
def test_qr_callback_only_clears_flags(requested: bytes, supported: list[int]) -> None:
    out = qr_extended_negotiation({FIND: supported})(FIND, requested)
    if not requested:
        assert out is None
        return
    assert out is not None and len(out) == len(requested)
    for index, value in enumerate(out):
        assert value in (0, 1)
        if value:
            assert requested[index] == 1 and supported[index] == 1


# ----------------------------------------------------------------------------- async window


@pytest.mark.parametrize(
    ("proposed", "ours", "agreed", "answered"),
    [
        (None, None, (1, 1), False),
        (None, (5, 5), (1, 1), False),
        ((5, 5), None, (1, 1), False),  # we omit it: (1, 1) applies
        ((5, 3), (2, 4), (2, 3), True),
        ((0, 0), (4, 0), (4, 0), True),  # 0 = unlimited
        ((0, 7), (0, 0), (0, 7), True),
        ((1, 1), (0, 9), (1, 1), True),
    ],
)
def test_async_window(
    proposed: tuple[int, int] | None, ours: tuple[int, int] | None,
    agreed: tuple[int, int], answered: bool,
) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], async_window=proposed)
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}, async_window=ours))
    window = ac.user_information.async_ops_window
    assert (window is not None) == answered
    if window is not None:
        assert (window.invoked, window.performed) == agreed
    assert acc.async_window == req.async_window == agreed


def test_requestor_takes_min_even_if_the_acceptor_answers_more() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], async_window=(2, 2))
    ac = AAssociateAC.build(called_ae="SCP", calling_ae="SCU", user_information=UserInformation.build(
        max_length=0, implementation_class_uid="1.2",
        async_ops_window=AsynchronousOperationsWindow(0, 5)))
    assert negotiated_from_ac(rq, ac).async_window == (2, 2)


# ----------------------------------------------------------------------------- max length


@pytest.mark.parametrize(
    ("ours_rq", "ours_ac"),
    [(0, 0), (0, 16384), (16384, 0), (65536, 4096), (MIN_PEER_MAX_PDU, 0xFFFFFFFF)],
)
def test_max_length_both_directions(ours_rq: int, ours_ac: int) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], max_pdu=ours_rq)
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}, max_pdu=ours_ac))
    assert ac.user_information.max_length == ours_ac
    assert acc.peer_max_pdu == ours_rq and acc.own_max_pdu == ours_ac
    assert req.peer_max_pdu == ours_ac and req.own_max_pdu == ours_rq


@pytest.mark.parametrize("tiny", [1, 8, MIN_PEER_MAX_PDU - 1])
def test_tiny_peer_max_length_is_an_error(tiny: int) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], max_pdu=tiny)
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT,)})
    assert check_association_rq(rq, called_ae=None, calling_allow=None) == AAssociateRJ(1, 1, 1)
    with pytest.raises(RemoteProtocolError):
        negotiate(rq, policy)
    good = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])])
    ac, _ = negotiate(good, dataclasses.replace(policy, max_pdu=tiny))
    with pytest.raises(RemoteProtocolError):
        negotiated_from_ac(good, ac)


def test_missing_max_length_is_read_conservatively() -> None:
    rq = rq_with((PresentationContextRQ(1, CT, (IMPLICIT,)),), max_length=None)
    assert rq.user_information.max_length is None
    ac, negotiated = negotiate(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}))
    assert negotiated.peer_max_pdu == MISSING_MAX_PDU


def test_policy_max_pdu_out_of_range() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])])
    with pytest.raises(PduEncodeError):
        negotiate(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}, max_pdu=-5))


def test_implementation_identity_exchanged() -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], implementation_class_uid="1.2.3",
                            implementation_version_name="PEER_1")
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT,)})
    ac, acc, req = both_sides(rq, policy)
    assert (acc.peer_implementation_class_uid, acc.peer_implementation_version_name) == (
        "1.2.3", "PEER_1")
    assert (req.peer_implementation_class_uid, req.peer_implementation_version_name) == (
        IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    policy = AcceptorPolicy(contexts={CT: (IMPLICIT,)}, implementation_version_name=None)
    ac, acc, req = both_sides(rq, policy)
    assert ac.user_information.implementation_version_name is None
    assert req.peer_implementation_version_name is None


def test_common_extended_negotiation_is_recorded_not_answered() -> None:
    common = SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2", (MR,))
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], common_extended=[common])
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}))
    assert ac.user_information.common_extended_negotiations == ()
    assert dict(acc.common_extended) == {CT: common} == dict(req.common_extended)


# ----------------------------------------------------------------------------- user identity

IDENTITY_CASES = [
    (UserIdentityRQ(2, True, b"me", b"pw"), b"", b""),
    (UserIdentityRQ(5, True, b"jwt"), b"token", b"token"),
    (UserIdentityRQ(2, False, b"me", b"pw"), b"", None),   # no positive response requested
    (UserIdentityRQ(1, True, b"me"), None, None),           # the server gives no response
    (None, b"token", None),                                 # nothing asked
]


@pytest.mark.parametrize(("identity", "response", "expected"), IDENTITY_CASES)
def test_user_identity_ac_only_when_requested_and_given(
    identity: UserIdentityRQ | None, response: bytes | None, expected: bytes | None
) -> None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], user_identity=identity)
    ac, acc, req = both_sides(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}), response)
    sent = ac.user_information.user_identity
    if expected is None:
        assert sent is None
    else:
        assert sent == UserIdentityAC(expected)
    assert acc.user_identity_response == req.user_identity_response == expected


# ----------------------------------------------------------------------------- check_association_rq


def make_rq(**kwargs: object) -> AAssociateRQ:
    args: dict[str, object] = dict(called_ae="ARCHIVE", calling_ae="ME",
                                   presentation_contexts=(PresentationContextRQ(1, CT,
                                                                                (IMPLICIT,)),))
    args.update(kwargs)
    rq = AAssociateRQ.build(**args)  # type: ignore[arg-type]
    out = roundtrip(rq)
    assert isinstance(out, AAssociateRQ)
    return out


@pytest.mark.parametrize(
    ("rq_args", "called", "allow", "expected"),
    [
        ({}, None, None, None),
        ({}, "ARCHIVE", ["ME", "OTHER"], None),
        ({}, "  ARCHIVE ", [" ME"], None),  # spaces are not significant
        ({"protocol_version": 3}, "ARCHIVE", None, None),  # extra bits are fine
        ({"protocol_version": 2}, "ARCHIVE", ["ME"], (1, 2, 2)),
        ({"protocol_version": 0}, None, None, (1, 2, 2)),
        ({"application_context": "1.2.3.4"}, None, None, (1, 1, 2)),
        ({}, "OTHER", None, (1, 1, 7)),
        ({}, "archive", None, (1, 1, 7)),  # AE titles are case-sensitive
        ({}, "ARCHIVE", ["YOU"], (1, 1, 3)),
        ({}, "ARCHIVE", [], (1, 1, 3)),
        ({"called_ae": "X"}, "ARCHIVE", ["YOU"], (1, 1, 7)),  # called AE checked first
        ({"presentation_contexts": ()}, None, None, (1, 1, 1)),  # PS3.8 9.3.2: one or more
    ],
)
def test_check_association_rq(
    rq_args: dict[str, object], called: str | None, allow: list[str] | None,
    expected: tuple[int, int, int] | None,
) -> None:
    rj = check_association_rq(make_rq(**rq_args), called_ae=called, calling_allow=allow)
    if expected is None:
        assert rj is None
    else:
        assert rj == AAssociateRJ(*expected)
        assert isinstance(pdu.decode(pdu.encode(rj)), AAssociateRJ)


@pytest.mark.parametrize("context_id", [0, 2])
def test_only_even_context_ids_are_rejected(context_id: int) -> None:
    """As sent on the wire (our encoder refuses even IDs): nothing an AC could answer."""
    def with_first_id(rq: AAssociateRQ, new_id: int) -> AAssociateRQ:
        data = bytearray(pdu.encode(rq))
        at = 74 + 4 + len(rq.application_context)  # the first presentation context item
        assert data[at] == 0x20 and data[at + 4] == 1
        data[at + 4] = new_id
        out = pdu.decode(bytes(data))
        assert isinstance(out, AAssociateRQ)
        assert out.presentation_contexts[0].context_id == new_id
        return out

    rq = with_first_id(make_rq(), context_id)
    assert check_association_rq(rq, called_ae=None, calling_allow=None) == AAssociateRJ(1, 1, 1)
    mixed = with_first_id(make_rq(presentation_contexts=(
        PresentationContextRQ(1, CT, (IMPLICIT,)), PresentationContextRQ(3, CT, (IMPLICIT,)))),
        context_id)
    assert check_association_rq(mixed, called_ae=None, calling_allow=None) is None


def test_check_tolerates_nul_padded_ae_titles() -> None:
    rq = build_associate_rq("ARCHIVE", "ME", [(CT, [IMPLICIT])])
    data = bytearray(pdu.encode(rq))
    data[10 + 7:10 + 16] = bytes(9)  # called AE "ARCHIVE" NUL-padded
    wire = pdu.decode(bytes(data))
    assert isinstance(wire, AAssociateRQ)
    assert check_association_rq(wire, called_ae="ARCHIVE", calling_allow={"ME"}) is None
    ac, _ = negotiate(wire, AcceptorPolicy(contexts={CT: (IMPLICIT,)}))
    assert pdu.encode(ac)[10:26] == bytes(data[10:26])  # the AC echoes the RQ's field


# ----------------------------------------------------------------------------- properties

uids = st.sampled_from(ABSTRACTS)
syntax_lists = st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=4, unique=True)
role_pairs = st.tuples(st.booleans(), st.booleans())
flags = st.binary(min_size=1, max_size=5).map(lambda b: bytes(x & 1 for x in b))
windows = st.none() | st.tuples(st.integers(0, 5), st.integers(0, 5))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[AAssociateRQ, AcceptorPolicy, bytes | None]:
    proposals = draw(st.lists(st.tuples(uids, syntax_lists), min_size=1, max_size=12))
    proposed_uids = sorted({a for a, _ in proposals})
    roles = draw(st.dictionaries(st.sampled_from(proposed_uids), role_pairs))
    extended = draw(st.dictionaries(st.sampled_from(proposed_uids), flags))
    identity = draw(st.none() | st.builds(UserIdentityRQ, st.integers(1, 5), st.booleans(),
                                          st.binary(min_size=1, max_size=8)))
    rq = build_associate_rq(
        "SCP", "SCU", proposals, max_pdu=draw(st.sampled_from([0, 16384, 65536])),
        roles=roles, extended=extended, user_identity=identity, async_window=draw(windows))
    policy = AcceptorPolicy(
        contexts=draw(st.dictionaries(uids, syntax_lists)),
        scp_roles=draw(st.dictionaries(uids, role_pairs)),
        extended=qr_extended_negotiation(draw(st.dictionaries(uids, flags))),
        max_pdu=draw(st.sampled_from([0, 4096, 1 << 20])),
        async_window=draw(windows),
    )
    return rq, policy, draw(st.none() | st.binary(max_size=8))


@settings(max_examples=300)
@given(scenarios())
def test_round_trip_both_sides_agree(
    scenario: tuple[AAssociateRQ, AcceptorPolicy, bytes | None],
) -> None:
    rq, policy, identity_response = scenario
    ac, acc, req = both_sides(rq, policy, identity_response)
    assert_same_outcome(acc, req)
    answers = ac.presentation_contexts
    assert [a.context_id for a in answers] == [p.context_id for p in rq.presentation_contexts]
    assert set(acc.contexts) | set(acc.rejected) == set(acc.proposed)
    assert not set(acc.contexts) & set(acc.rejected)
    for cid, cx in acc.contexts.items():
        proposal = acc.proposed[cid]
        ours = list(policy.contexts[cx.abstract_syntax])
        # the first of OUR syntaxes that was proposed
        assert cx.transfer_syntax == next(t for t in ours if t in proposal.transfer_syntaxes)
        assert cx.scu_role or cx.scp_role
    for answer in ac.user_information.role_selections:
        asked = next(r for r in rq.user_information.role_selections
                     if r.sop_class_uid == answer.sop_class_uid)
        assert answer.scu_role <= asked.scu_role and answer.scp_role <= asked.scp_role
    for uid, info in acc.extended.items():
        asked_info = next(e.application_info for e in rq.user_information.extended_negotiations
                          if e.sop_class_uid == uid)
        assert all(a <= b for a, b in zip(info, asked_info, strict=False))


# ----------------------------------------------------------------------------- pynetdicom oracle


def pynetdicom_outcome(
    proposals: list[tuple[str, list[str]]], supported: dict[str, list[str]],
    rq_roles: dict[str, tuple[bool, bool]], ac_roles: dict[str, tuple[bool, bool]],
) -> dict[int, tuple[int, str | None]]:
    presentation = pytest.importorskip("pynetdicom.presentation")
    rq_contexts = []
    for index, (abstract, syntaxes) in enumerate(proposals):
        cx = presentation.PresentationContext()
        cx.context_id = 2 * index + 1
        cx.abstract_syntax = abstract
        cx.transfer_syntax = list(syntaxes)
        rq_contexts.append(cx)
    ac_contexts = []
    for abstract, syntaxes in supported.items():
        cx = presentation.PresentationContext()
        cx.abstract_syntax = abstract
        cx.transfer_syntax = list(syntaxes)
        if abstract in ac_roles:
            cx.scu_role, cx.scp_role = ac_roles[abstract]
        ac_contexts.append(cx)
    results, _ = presentation.negotiate_as_acceptor(rq_contexts, ac_contexts, rq_roles or None)
    return {
        cx.context_id: (cx.result, str(cx.transfer_syntax[0]) if cx.result == 0 else None)
        for cx in results
    }


@st.composite
def oracle_scenarios(draw: st.DrawFn) -> tuple[
    list[tuple[str, list[str]]], dict[str, list[str]],
    dict[str, tuple[bool, bool]], dict[str, tuple[bool, bool]],
]:
    proposals = draw(st.lists(st.tuples(uids, syntax_lists), min_size=1, max_size=10))
    supported = draw(st.dictionaries(uids, syntax_lists, min_size=1))
    rq_roles = draw(st.dictionaries(st.sampled_from(sorted({a for a, _ in proposals})),
                                    role_pairs))
    ac_roles = draw(st.dictionaries(uids, role_pairs))
    return proposals, supported, rq_roles, ac_roles


@settings(max_examples=200)
@given(oracle_scenarios())
def test_same_outcome_as_pynetdicom(
    scenario: tuple[list[tuple[str, list[str]]], dict[str, list[str]],
                    dict[str, tuple[bool, bool]], dict[str, tuple[bool, bool]]],
) -> None:
    proposals, supported, rq_roles, ac_roles = scenario
    expected = pynetdicom_outcome(proposals, supported, rq_roles, ac_roles)
    rq = build_associate_rq("SCP", "SCU", proposals, roles=rq_roles)
    policy = AcceptorPolicy(contexts=supported, scp_roles=ac_roles)
    ac, negotiated = negotiate(rq, policy)
    ours = {a.context_id: (a.result, a.transfer_syntax if a.result == 0 else None)
            for a in ac.presentation_contexts}
    assert ours == expected


@pytest.mark.parametrize("proposed", ROLE_CHOICES)
@pytest.mark.parametrize("supported", ROLE_CHOICES)
def test_role_matrix_same_as_pynetdicom(
    proposed: tuple[bool, bool] | None, supported: tuple[bool, bool] | None
) -> None:
    proposals = [(GET, [IMPLICIT]), (CT, [EXPLICIT, IMPLICIT]), (CT, [JPEG])]
    rq_roles = {} if proposed is None else {CT: proposed}
    ac_roles = {} if supported is None else {CT: supported}
    supported_syntaxes = {CT: [IMPLICIT, EXPLICIT], GET: [IMPLICIT]}
    expected = pynetdicom_outcome(proposals, supported_syntaxes, rq_roles, ac_roles)
    rq = build_associate_rq("SCP", "SCU", proposals, roles=rq_roles)
    ac, _ = negotiate(rq, AcceptorPolicy(contexts=supported_syntaxes, scp_roles=ac_roles))
    ours = {a.context_id: (a.result, a.transfer_syntax if a.result == 0 else None)
            for a in ac.presentation_contexts}
    assert ours == expected


def test_a_context_without_transfer_syntax_still_gets_one_in_its_ac_item() -> None:
    """PS3.8 Table 9-18: the AC item holds exactly one transfer syntax sub-item (not
    significant when the result is not acceptance)."""
    rq = make_rq(presentation_contexts=(PresentationContextRQ(1, CT, ()),
                                        PresentationContextRQ(3, CT, (IMPLICIT,))))
    ac, negotiated = negotiate(rq, AcceptorPolicy(contexts={CT: (IMPLICIT,)}))
    first, second = pdu.decode(pdu.encode(ac)).presentation_contexts  # type: ignore[union-attr]
    assert first.result == ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert first.transfer_syntax == IMPLICIT
    assert second.result == ContextResult.ACCEPTANCE and set(negotiated.contexts) == {3}
