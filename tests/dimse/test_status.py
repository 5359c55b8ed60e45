"""Status codes: category per PS3.7 Annex C and meaning per service (dimse.md section 5)."""

from __future__ import annotations

import pytest

from dimse.status import (
    Category,
    Service,
    Status,
    category,
    describe,
    is_failure,
    is_final,
    is_pending,
    is_success,
    is_warning,
    lookup,
)

S, P, C, W, F = (Category.SUCCESS, Category.PENDING, Category.CANCEL, Category.WARNING,
                 Category.FAILURE)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, S), (0xFF00, P), (0xFF01, P), (0xFE00, C),
        (0x0001, W), (0x0107, W), (0x0116, W), (0xB000, W), (0xB001, W), (0xB006, W),
        (0xB007, W), (0xBFFF, W),
        (0x0110, F), (0x0117, F), (0x0122, F), (0x0124, F), (0x0210, F), (0x0211, F),
        (0x0212, F), (0x0213, F), (0xA700, F), (0xA701, F), (0xA702, F), (0xA7FF, F),
        (0xA801, F), (0xA900, F), (0xA9FF, F), (0xAA00, F), (0xAA04, F), (0xC000, F),
        (0xC311, F), (0xCFFF, F),
        (0x1234, F), (0xFFFF, F), (0xFE01, F),  # unknown -> failure
    ],
)
def test_category_by_code(code: int, expected: Category) -> None:
    assert category(code) is expected
    for service in Service:
        assert category(code, service) is expected
        assert lookup(code, service).category is expected


def test_category_matches_dcmtk_classification_for_every_code() -> None:
    """The DCMTK-style bit tests of dimse.md 5.1, checked over the whole 16-bit space."""
    for s in range(0x10000):
        if s == 0:
            want = S
        elif s in (0xFF00, 0xFF01):
            want = P
        elif s == 0xFE00:
            want = C
        elif (s & 0xF000) == 0xB000 or s in (0x0001, 0x0107, 0x0116):
            want = W
        else:
            want = F
        assert category(s) is want, hex(s)


@pytest.mark.parametrize(
    ("code", "service", "words"),
    [
        (0x0000, Service.ECHO, "Success"),
        (0x0122, Service.ECHO, "SOP class not supported"),
        (0x0210, Service.ECHO, "duplicate invocation"),
        (0x0211, Service.ECHO, "unrecognized operation"),
        (0x0212, Service.ECHO, "mistyped argument"),
        (0xA712, Service.STORE, "out of resources"),
        (0xA9AB, Service.STORE, "does not match SOP class"),
        (0xC211, Service.STORE, "cannot understand"),
        (0xB000, Service.STORE, "coercion"),
        (0xB006, Service.STORE, "discarded"),
        (0xB007, Service.STORE, "does not match"),
        (0x0124, Service.STORE, "not authorized"),
        (0xA700, Service.FIND, "out of resources"),
        (0xA900, Service.FIND, "identifier does not match"),
        (0xC311, Service.FIND, "unable to process"),
        (0xFE00, Service.FIND, "Cancel"),
        (0xFF00, Service.FIND, "current match supplied"),
        (0xFF01, Service.FIND, "optional keys not supported"),
        (0x0000, Service.FIND, "Matching is complete"),
        (0xA701, Service.MOVE, "number of matches"),
        (0xA702, Service.MOVE, "unable to perform sub-operations"),
        (0xA801, Service.MOVE, "move destination unknown"),
        (0xAA00, Service.MOVE, "frames"),
        (0xAA04, Service.GET, "invalid request"),
        (0xB000, Service.GET, "one or more failures"),
        (0xFE00, Service.GET, "cancel indication"),
        (0xFF00, Service.GET, "continuing"),
        (0x0000, Service.MOVE, "no failures"),
        (0xC511, Service.MOVE, "unable to process"),
    ],
)
def test_meaning_per_service(code: int, service: Service, words: str) -> None:
    info = lookup(code, service)
    assert info.code == code and info.service is service
    assert words.lower() in info.meaning.lower()
    text = describe(code, service)
    assert text.startswith(f"0x{code:04X} {info.category.value} ({service.value}):")
    assert info.meaning in text


def test_move_destination_unknown_is_move_only() -> None:
    assert "destination" in lookup(0xA801, Service.MOVE).meaning
    assert "destination" not in lookup(0xA801, Service.GET).meaning
    assert lookup(0xA801, Service.GET).category is F


def test_describe_without_service_and_unknown_codes() -> None:
    assert describe(0x0000) == "0x0000 Success: Success"
    assert describe(0xFE00) == "0xFE00 Cancel: Cancel"
    assert lookup(0x1234).meaning == "Failure (unknown code)"
    assert lookup(0xB123).meaning == "Warning (unknown code)"
    assert "unable to process" in lookup(0xC999).meaning


def test_predicates_and_enum() -> None:
    assert is_success(Status.SUCCESS) and not is_success(0xFF00)
    assert is_pending(Status.PENDING) and is_pending(Status.PENDING_WARNING)
    assert is_warning(Status.COERCION_OF_ELEMENTS) and is_failure(Status.UNABLE_TO_PROCESS)
    assert is_final(0x0000) and is_final(0xFE00) and is_final(0xA702) and not is_final(0xFF01)
    assert Status.MOVE_DESTINATION_UNKNOWN == 0xA801
    for member in Status:
        assert lookup(member, Service.MOVE).category is category(member)
