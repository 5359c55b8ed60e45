"""Hypothesis strategies for every PDU, item and sub-item of the ``pdu`` package.

Every strategy produces values that encode and decode back to an equal value (decoded values are
normalised: UIDs without a trailing NUL, AE titles without padding, extra sub-items at the
positions they end up in). Other test modules may import these.
"""

from __future__ import annotations

from hypothesis import strategies as st

from pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    ApplicationContextItem,
    AReleaseRP,
    AReleaseRQ,
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PDataTF,
    Pdu,
    PresentationContextAC,
    PresentationContextRQ,
    PresentationDataValue,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    UserSubItem,
)

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
context_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)

#: UIDs: 1 to 6 numeric components (at most 59 characters).
uids = st.lists(st.integers(0, 10**8), min_size=1, max_size=6).map(
    lambda parts: ".".join(map(str, parts)))
_AE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\")
#: AE titles as decoded: printable ASCII, no backslash, no padding (may be blank).
ae_titles = st.text(alphabet=_AE_CHARS, max_size=16).map(lambda s: s.strip(" "))


@st.composite
def ae_with_raw(draw: st.DrawFn) -> tuple[str, bytes | None]:
    """An AE title and, sometimes, a non-canonical 16-byte field it was received as."""
    value = draw(ae_titles)
    data = value.encode("ascii")
    style = draw(st.sampled_from(["canonical", "nul", "leading", "mixed"]))
    room = 16 - len(data)
    if style == "canonical" or room == 0:
        return value, None
    if style == "nul":
        raw = data.ljust(16, b"\x00")
    elif style == "leading":
        lead = draw(st.integers(1, room))
        raw = (b" " * lead + data).ljust(16, b" ")
    else:
        raw = (data + b"\x00").ljust(16, b" ")
    return value, (None if raw == data.ljust(16, b" ") else raw)


def unknown_items(exclude: frozenset[int] = frozenset()) -> st.SearchStrategy[UnknownItem]:
    """Items of types outside ``exclude`` kept as raw bytes."""
    return st.builds(UnknownItem, u8.filter(lambda t: t not in exclude),
                     st.binary(max_size=24), u8)


def _extras(known: int, kinds: st.SearchStrategy[UnknownItem], first: int = 0,
            ) -> st.SearchStrategy[tuple[tuple[int, UnknownItem], ...]]:
    """Unknown sub-items with the positions (>= ``first``) they take among ``known`` known ones."""
    @st.composite
    def build(draw: st.DrawFn) -> tuple[tuple[int, UnknownItem], ...]:
        items = draw(st.lists(kinds, max_size=2))
        total = known + len(items)
        positions = sorted(draw(st.permutations(range(first, total)))[:len(items)])
        return tuple(zip(positions, items, strict=True))
    return build()


application_contexts = st.builds(ApplicationContextItem, uids)


@st.composite
def presentation_contexts_rq(draw: st.DrawFn) -> PresentationContextRQ:
    syntaxes = tuple(draw(st.lists(uids, max_size=4)))
    # the abstract syntax stays the first sub-item; a second 0x30 is kept as an unknown item
    extras = draw(_extras(1 + len(syntaxes), unknown_items(frozenset({0x40})), first=1))
    return PresentationContextRQ(draw(context_ids), draw(uids), syntaxes, extras,
                                 draw(st.binary(min_size=3, max_size=3)))


@st.composite
def presentation_contexts_ac(draw: st.DrawFn) -> PresentationContextAC:
    result = draw(st.integers(0, 4) | u8)
    syntax = draw(uids) if result == 0 else draw(st.none() | st.just("") | uids)
    extras = draw(_extras(0 if syntax is None else 1, unknown_items(frozenset({0x40}))))
    return PresentationContextAC(draw(context_ids), result, syntax, extras,
                                 draw(st.binary(min_size=2, max_size=2)))


max_lengths = st.builds(MaximumLength, u32)
implementation_class_uids = st.builds(ImplementationClassUID, uids)
implementation_version_names = st.builds(
    ImplementationVersionName, st.text(alphabet=_AE_CHARS, min_size=1, max_size=16))
async_windows = st.builds(AsynchronousOperationsWindow, u16, u16)
role_selections = st.builds(RoleSelection, uids, st.integers(0, 1) | u8, st.integers(0, 1) | u8)
extended_negotiations = st.builds(SOPClassExtendedNegotiation, uids, st.binary(max_size=16))
common_extended_negotiations = st.builds(
    SOPClassCommonExtendedNegotiation, uids, uids,
    st.lists(uids, max_size=3).map(tuple), st.just(0) | u8)
user_identities_rq = st.builds(UserIdentityRQ, st.integers(1, 5) | u8, st.booleans(),
                               st.binary(max_size=32), st.binary(max_size=16))
user_identities_ac = st.builds(UserIdentityAC, st.binary(max_size=32))
unknown_sub_items = unknown_items(frozenset(range(0x51, 0x5A)))

#: Every kind of user information sub-item.
user_sub_items: st.SearchStrategy[UserSubItem] = st.one_of(
    max_lengths, implementation_class_uids, implementation_version_names, async_windows,
    role_selections, extended_negotiations, common_extended_negotiations, user_identities_rq,
    user_identities_ac, unknown_sub_items,
)


@st.composite
def user_informations(draw: st.DrawFn) -> UserInformation:
    """Usually the standard shape (max length, class UID first), sometimes any sub-items."""
    if draw(st.booleans()):
        return UserInformation(tuple(draw(st.lists(user_sub_items, max_size=6))))
    return UserInformation.build(
        max_length=draw(u32), implementation_class_uid=draw(uids),
        implementation_version_name=draw(st.none() | implementation_version_names.map(
            lambda i: i.name)),
        async_ops_window=draw(st.none() | async_windows),
        role_selections=tuple(draw(st.lists(role_selections, max_size=2))),
        extended_negotiations=tuple(draw(st.lists(extended_negotiations, max_size=2))),
        common_extended_negotiations=tuple(draw(st.lists(common_extended_negotiations,
                                                         max_size=2))),
        user_identity=draw(st.none() | user_identities_rq | user_identities_ac),
    )


_ASSOC_ITEM_TYPES = frozenset({0x10, 0x20, 0x21, 0x50})


def _associate(cls: type, contexts: st.SearchStrategy) -> st.SearchStrategy:
    @st.composite
    def build(draw: st.DrawFn) -> AAssociateRQ | AAssociateAC:
        called, called_raw = draw(ae_with_raw())
        calling, calling_raw = draw(ae_with_raw())
        items = [draw(application_contexts), *draw(st.lists(contexts, max_size=4)),
                 draw(user_informations()),
                 *draw(st.lists(unknown_items(_ASSOC_ITEM_TYPES), max_size=2))]
        if draw(st.booleans()):
            items = list(draw(st.permutations(items)))
        reserved = draw(st.just(bytes(32)) | st.binary(min_size=32, max_size=32))
        return cls(called, calling, tuple(items), draw(st.just(1) | u16), reserved,
                   draw(st.just(0) | u16), called_raw, calling_raw)  # type: ignore[no-any-return]
    return build()


associate_rqs: st.SearchStrategy[AAssociateRQ] = _associate(AAssociateRQ,
                                                            presentation_contexts_rq())
associate_acs: st.SearchStrategy[AAssociateAC] = _associate(AAssociateAC,
                                                            presentation_contexts_ac())
associate_rjs = st.builds(AAssociateRJ, st.integers(1, 2) | u8, st.integers(1, 3) | u8,
                          st.integers(0, 7) | u8)
aborts = st.builds(AAbort, st.sampled_from([0, 2]) | u8, st.integers(0, 6) | u8)
release_rqs = st.just(AReleaseRQ())
release_rps = st.just(AReleaseRP())
pdvs = st.builds(PresentationDataValue, context_ids, st.integers(0, 3) | u8,
                 st.binary(max_size=64))
pdata_tfs = st.lists(pdvs, min_size=1, max_size=4).map(lambda v: PDataTF(tuple(v)))

#: Any of the seven PDUs.
pdus: st.SearchStrategy[Pdu] = st.one_of(
    associate_rqs, associate_acs, associate_rjs, pdata_tfs, release_rqs, release_rps, aborts)
