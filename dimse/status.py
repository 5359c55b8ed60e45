"""DIMSE-C status codes: category and meaning per service (PS3.7 Annex C, PS3.4 Annexes B, C).

The category of a code does not depend on the service (PS3.7 C.1-C.5 classes), so
:func:`category` works without one; the *meaning* does ("A702" only exists for C-GET/C-MOVE),
so :func:`describe` and :func:`lookup` take an optional :class:`Service`. Codes given as ranges
("A7xx", "Cxxx"...) are implementation-chosen inside the range; an SCU classifies them by range.
Unknown codes are failures (PS3.7 C.4, DCMTK does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = [
    "Category",
    "Service",
    "Status",
    "StatusInfo",
    "category",
    "describe",
    "is_failure",
    "is_final",
    "is_pending",
    "is_success",
    "is_warning",
    "lookup",
]


class Category(Enum):
    """Status class of PS3.7 Annex C."""

    SUCCESS = "Success"
    PENDING = "Pending"
    CANCEL = "Cancel"
    WARNING = "Warning"
    FAILURE = "Failure"


class Service(Enum):
    """The DIMSE-C services whose status tables differ."""

    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


class Status(IntEnum):
    """Well-known status codes (the first code of a range stands for the range)."""

    SUCCESS = 0x0000
    WARNING_GENERIC = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    PROCESSING_FAILURE = 0x0110
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    INVALID_SOP_INSTANCE = 0x0117
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
    INVALID_PRIOR_RECORD_KEY = 0xA710
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    NO_FRAMES_FOUND = 0xAA00
    UNABLE_TO_CREATE_OBJECT = 0xAA01
    UNABLE_TO_EXTRACT_FRAMES = 0xAA02
    TIME_BASED_REQUEST_INVALID = 0xAA03
    INVALID_REQUEST = 0xAA04
    COERCION_OF_ELEMENTS = 0xB000
    RESPONSE_LIMIT_REACHED = 0xB001
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_WARNING = 0xB007
    UNABLE_TO_PROCESS = 0xC000
    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What a status code means for one service."""

    code: int
    category: Category
    meaning: str
    service: Service | None = None


_S, _P, _C, _W, _F = (Category.SUCCESS, Category.PENDING, Category.CANCEL, Category.WARNING,
                      Category.FAILURE)

#: General codes of PS3.7 Annex C that apply to every DIMSE-C service.
_GENERAL: dict[int, tuple[Category, str]] = {
    0x0000: (_S, "Success"),
    0x0001: (_W, "Warning"),
    0x0107: (_W, "Warning: attribute list error"),
    0x0110: (_F, "Failure: processing failure"),
    0x0116: (_W, "Warning: attribute value out of range"),
    0x0117: (_F, "Failure: invalid SOP instance"),
    0x0122: (_F, "Refused: SOP class not supported"),
    0x0124: (_F, "Refused: not authorized"),
    0x0210: (_F, "Failure: duplicate invocation"),
    0x0211: (_F, "Failure: unrecognized operation"),
    0x0212: (_F, "Failure: mistyped argument"),
    0x0213: (_F, "Failure: resource limitation"),
    0xFE00: (_C, "Cancel"),
}

_RETRIEVE: dict[int, tuple[Category, str]] = {
    0x0000: (_S, "Sub-operations complete: no failures or warnings"),
    0xA701: (_F, "Refused: out of resources, unable to calculate number of matches"),
    0xA702: (_F, "Refused: out of resources, unable to perform sub-operations"),
    0xA900: (_F, "Error: identifier does not match SOP class"),
    0xAA00: (_F, "Failure: none of the frames requested were found in the SOP instance"),
    0xAA01: (_F, "Failure: unable to create new object for this SOP class"),
    0xAA02: (_F, "Failure: unable to extract frames"),
    0xAA03: (_F, "Failure: time-based request received for a non-time-based SOP instance"),
    0xAA04: (_F, "Failure: invalid request"),
    0xB000: (_W, "Warning: sub-operations complete, one or more failures or warnings"),
    0xFE00: (_C, "Cancel: sub-operations terminated due to cancel indication"),
    0xFF00: (_P, "Pending: sub-operations are continuing"),
}

#: Exact codes per service (PS3.4 B.2-1, C.4-1, C.4-2, C.4-3); looked up before ranges.
_EXACT: dict[Service, dict[int, tuple[Category, str]]] = {
    Service.ECHO: {},
    Service.STORE: {
        0xB000: (_W, "Warning: coercion of data elements"),
        0xB006: (_W, "Warning: elements discarded"),
        0xB007: (_W, "Warning: data set does not match SOP class"),
    },
    Service.FIND: {
        0x0000: (_S, "Matching is complete: no final identifier is supplied"),
        0xA700: (_F, "Refused: out of resources"),
        0xA710: (_F, "Failure: invalid prior record key"),
        0xA900: (_F, "Error: identifier does not match SOP class"),
        0xB001: (_W, "Warning: matching reached the response limit"),
        0xFE00: (_C, "Cancel: matching terminated due to cancel request"),
        0xFF00: (_P, "Pending: matches are continuing, current match supplied"),
        0xFF01: (_P, "Pending: matches are continuing, one or more optional keys not supported"),
    },
    Service.MOVE: {**_RETRIEVE, 0xA801: (_F, "Refused: move destination unknown")},
    Service.GET: dict(_RETRIEVE),
}

#: Ranges per service: (low, high, category, meaning), checked after exact codes.
_RANGES: dict[Service, tuple[tuple[int, int, Category, str], ...]] = {
    Service.ECHO: (),
    Service.STORE: (
        (0xA700, 0xA7FF, _F, "Refused: out of resources"),
        (0xA900, 0xA9FF, _F, "Error: data set does not match SOP class"),
        (0xC000, 0xCFFF, _F, "Error: cannot understand"),
    ),
    Service.FIND: ((0xC000, 0xCFFF, _F, "Failed: unable to process"),),
    Service.MOVE: ((0xC000, 0xCFFF, _F, "Failed: unable to process"),),
    Service.GET: ((0xC000, 0xCFFF, _F, "Failed: unable to process"),),
}


def category(code: int, service: Service | None = None) -> Category:
    """The status class of ``code`` (PS3.7 Annex C); unknown codes are failures.

    ``service`` is accepted for symmetry with :func:`describe`; no DIMSE-C code changes class
    between services.
    """
    if code == 0x0000:
        return Category.SUCCESS
    if code == 0xFF00 or code == 0xFF01:
        return Category.PENDING
    if code == 0xFE00:
        return Category.CANCEL
    if (code & 0xF000) == 0xB000 or code in (0x0001, 0x0107, 0x0116):
        return Category.WARNING
    return Category.FAILURE


def lookup(code: int, service: Service | None = None) -> StatusInfo:
    """Category and meaning of ``code`` for ``service`` (or generic when ``service`` is None).

    Resolution order: the service's exact codes, the service's ranges, the general PS3.7 codes,
    then a generic text built from the category.
    """
    if service is not None:
        hit = _EXACT[service].get(code)
        if hit is not None:
            return StatusInfo(code, hit[0], hit[1], service)
        for low, high, cat, meaning in _RANGES[service]:
            if low <= code <= high:
                return StatusInfo(code, cat, meaning, service)
    general = _GENERAL.get(code)
    if general is not None:
        return StatusInfo(code, general[0], general[1], service)
    cat = category(code)
    return StatusInfo(code, cat, _generic_meaning(code, cat), service)


def _generic_meaning(code: int, cat: Category) -> str:
    """Text for a code no table lists (the class is still derived from the code)."""
    if cat is Category.WARNING:
        return "Warning (unknown code)"
    if (code & 0xF000) == 0xC000:
        return "Failed: unable to process"
    if (code & 0xFF00) == 0xA700:
        return "Refused: out of resources"
    if (code & 0xFF00) == 0xA900:
        return "Error: does not match SOP class"
    return "Failure (unknown code)"


def describe(code: int, service: Service | None = None) -> str:
    """Human-readable text: ``"0xA702 Failure (C-MOVE): Refused: out of resources, ..."``."""
    info = lookup(code, service)
    where = f" ({service.value})" if service is not None else ""
    return f"0x{code:04X} {info.category.value}{where}: {info.meaning}"


def is_success(code: int) -> bool:
    return code == 0x0000


def is_pending(code: int) -> bool:
    return code == 0xFF00 or code == 0xFF01


def is_warning(code: int) -> bool:
    return category(code) is Category.WARNING


def is_failure(code: int) -> bool:
    return category(code) is Category.FAILURE


def is_final(code: int) -> bool:
    """True when no further response follows (everything except Pending, PS3.7 9.1.2-9.1.4)."""
    return not is_pending(code)
