"""Query/Retrieve identifier rules (PS3.4 C.4), read from the information-model tables.

The tables themselves (:data:`MODELS`, the key tables, SOP class and presentation context
helpers) live in :mod:`dimse.qr_model` and are re-exported here, so ``dimse.qr`` stays the one
import for Q/R. The SCU's checks (:func:`check_identifier`, :func:`validate_request`) and the
SCP's (:func:`validate_scp`) are the same rules read from those tables, so the two sides cannot
drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dimse.errors import IdentifierError
from dimse.qr_model import (
    # The tables the rules read (underscored: package-internal) and every public name of
    # dimse.qr_model, re-exported so `from dimse.qr import ...` keeps working.
    _COMPOSITE_TOLERATED,
    _GENERAL_FIND,
    _GENERAL_RETRIEVE,
    DEFAULT_TRANSFER_SYNTAXES,
    FRAME_RANGE_KEYS,
    MODELS,
    QR_LEVEL,
    UNIQUE_KEYS,
    KeyType,
    Level,
    ModelInfo,
    Operation,
    QrContext,
    QueryModel,
    contexts_for,
    enhanced_accepted,
    key_level,
    keys_for,
    model_for_sop_class,
    parse_level,
    relational_accepted,
    required_keys,
    sop_class,
    tag_name,
)
from dimse.qr_model import SPECIFIC_CHARACTER_SET as SPECIFIC_CHARACTER_SET  # re-export
from dimse.qr_model import UTF8_CHARACTER_SET as UTF8_CHARACTER_SET  # re-export
from dimse.status import Status

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "FRAME_RANGE_KEYS",
    "MODELS",
    "UNIQUE_KEYS",
    "Failure",
    "KeyType",
    "Level",
    "Mode",
    "ModelInfo",
    "Operation",
    "QrContext",
    "QueryModel",
    "Rule",
    "Violation",
    "check_identifier",
    "contexts_for",
    "drop_non_data_elements",
    "enhanced_accepted",
    "has_non_ascii_text",
    "key_level",
    "keys_for",
    "model_for_sop_class",
    "parse_level",
    "relational_accepted",
    "required_keys",
    "sop_class",
    "tag_name",
    "validate_request",
    "validate_scp",
    "resolve_un",
    "with_character_set",
    "with_level_key",
]

log = logging.getLogger(__name__)

_I, _F = Level.IMAGE, Level.FRAME

# ---------------------------------------------------------------------------------------------
# Identifier rules


class Rule(Enum):
    """Kinds of identifier violations; lenient SCPs let the ``LENIENT_SCP_PASSES`` ones by."""

    UNREADABLE = "unreadable"
    LEVEL_MISSING = "level missing"
    LEVEL_INVALID = "level invalid"
    LEVEL_NOT_IN_MODEL = "level not in model"
    UNIQUE_ABOVE = "unique key above the level"
    KEY_ABOVE = "non-unique key above the level"
    KEY_BELOW = "key below the level"
    NON_UNIQUE = "non-unique key in a retrieve"
    UNIQUE_AT_LEVEL = "unique key of the level"
    FRAME_KEYS = "frame keys"
    NO_KEYS = "no keys"
    LEVEL_KEY_MISSING = "C-FIND without the unique key of the level"
    NOT_A_REQUEST_KEY = "an attribute the request may not carry, or not empty"
    VIEW = "Query/Retrieve View not negotiated or invalid"
    NOT_DATA_ELEMENT = "command or file meta element"
    SEQUENCE_ITEMS = "sequence matching key with more than one item"


_QR_VIEW: Final = 0x00080053
_TIMEZONE: Final = 0x00080201
_AVAILABILITY: Final = 0x00080056
_VIEWS: Final = frozenset({"CLASSIC", "ENHANCED"})

#: Groups never in a data set (PS3.5 7.1): the command set and the file meta information.
_NOT_DATA_GROUPS: Final = frozenset({0x0000, 0x0002})


def drop_non_data_elements(ds: Dataset) -> list[int]:
    """Remove group 0000 and 0002 elements from a received identifier (an SCP neither matches
    nor returns them, as DCMTK's does not); return their tags."""
    tags = [int(e.tag) for e in ds if int(e.tag) >> 16 in _NOT_DATA_GROUPS]
    for tag in tags:
        del ds[tag]
    return tags


#: Rules a lenient SCP lets pass (the archive then matches relationally whatever keys it has,
#: and ignores keys below the level). Level problems, an unbounded retrieve (unique key of the
#: level missing, empty or wildcard) and frame-key errors always fail.
LENIENT_SCP_PASSES: Final = frozenset(
    {Rule.UNIQUE_ABOVE, Rule.KEY_ABOVE, Rule.KEY_BELOW, Rule.NON_UNIQUE, Rule.NO_KEYS}
)

#: Rules even a strict SCP lets pass, because it answers them unambiguously: a C-FIND without
#: the unique key of its level is matched as if that key were universal (DCMTK's dcmqrscp does
#: not require it even with --check-find, and most SCUs leave it out). Our SCU adds it
#: (:func:`with_level_key`).
#: So is an attribute that changes no match (an empty Specific Character Set is the default
#: repertoire; Instance Availability is a response attribute). A Query/Retrieve View is not:
#: ignoring it would answer with the other view's instances.
SCP_TOLERATES: Final = frozenset({Rule.LEVEL_KEY_MISSING, Rule.NOT_A_REQUEST_KEY})


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the elements at fault, a precise message, a short ErrorComment."""

    rule: Rule
    tags: tuple[int, ...]
    message: str
    comment: str
    status: int = Status.IDENTIFIER_DOES_NOT_MATCH


@dataclass(frozen=True, slots=True)
class Failure:
    """What an SCP answers for an invalid identifier: status, OffendingElement, ErrorComment."""

    status: int
    offending: tuple[int, ...]
    comment: str
    violations: tuple[Violation, ...]

    def as_service_error(self) -> Exception:
        """The equivalent :class:`dimse.errors.ServiceError` for a handler to raise."""
        from dimse.errors import ServiceError

        return ServiceError(self.status, self.comment, self.offending)


class Mode(Enum):
    """How an SCU treats identifier violations before sending."""

    STRICT = "strict"  # hierarchical rules, raise IdentifierError
    LENIENT = "lenient"  # log one warning per violation, send anyway
    RELATIONAL = "relational"  # relational rules (needs negotiation), raise IdentifierError


def _value_problem(elem: DataElement | None, *, allow_multi: bool) -> str | None:
    """Why ``elem`` is not a usable unique-key value (None if it is)."""
    if elem is None:
        return "missing"
    if elem.is_empty:
        return "empty"
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    if not allow_multi and len(values) > 1:
        return f"has {len(values)} values"
    if any(isinstance(v, str) and ("*" in v or "?" in v) for v in values):
        return "has a wildcard"
    if any(isinstance(v, str) and not v.strip(" \0") for v in values):
        return "has an empty value"
    return None


class _Checker:
    """Collects the violations of one identifier (one instance per check)."""

    def __init__(self, ds: Dataset, model: QueryModel, op: Operation, relational: bool,
                 enhanced: bool) -> None:
        self.ds, self.model, self.op = ds, model, op
        self.info = MODELS[model]
        self.relational = relational and self.info.relational
        self.enhanced = enhanced
        self.out: list[Violation] = []
        self.verb = "query" if op is Operation.FIND else "retrieve"

    def add(self, rule: Rule, tags: Iterable[int], message: str, comment: str,
            status: int = Status.IDENTIFIER_DOES_NOT_MATCH) -> None:
        self.out.append(Violation(rule, tuple(tags), message, comment[:64], status))

    def prefix(self, level: Level) -> str:
        return f"{level.value} level {self.verb} under {self.model.name}"

    def run(self) -> list[Violation]:
        level = self.check_level()
        if level is None:
            return self.out
        idx = self.info.levels.index(level)
        above = self.info.levels[:idx]
        self.check_general(level)
        self.check_unique_above(level, above)
        self.check_keys(level, idx, {UNIQUE_KEYS[lv] for lv in above if lv in UNIQUE_KEYS})
        if self.op is Operation.FIND:
            self.check_find_level(level)
        elif level is _F:
            self.check_frame_keys()
        else:
            self.check_retrieve_unique(level)
        return self.out

    def check_level(self) -> Level | None:
        elem = self.ds.get(QR_LEVEL)
        qrl = tag_name(QR_LEVEL)
        if elem is None:
            self.add(Rule.LEVEL_MISSING, [QR_LEVEL],
                     f"{self.verb} under {self.model.name} needs {qrl}",
                     "QueryRetrieveLevel (0008,0052) missing")
            return None
        level = parse_level(elem.value) if elem.VM == 1 else None
        if level is None:
            self.add(Rule.LEVEL_INVALID, [QR_LEVEL],
                     f"{qrl} value {elem.value!r} is not one of "
                     f"{', '.join(lv.value for lv in self.info.levels)}",
                     f"QueryRetrieveLevel {str(elem.value)[:20]!r} invalid")
            return None
        if level not in self.info.levels:
            self.add(Rule.LEVEL_NOT_IN_MODEL, [QR_LEVEL],
                     f"{qrl}: {self.model.name} has no {level.value} level (allowed: "
                     f"{', '.join(lv.value for lv in self.info.levels)})",
                     f"level {level.value} not in {self.model.name}")
            return None
        return level

    def check_general(self, level: Level) -> None:
        """Attributes that are no keys, where the request may carry them (PS3.4 C.4.1.1.3.1,
        C.4.2.1.4.1, C.4.3.1.3.1, Y.4.1.1.3.1, Z.4.2.1.3.1)."""
        where = self.prefix(level)
        charset = self.ds.get(SPECIFIC_CHARACTER_SET)
        if charset is not None and not self.info.character_set:
            self.add(Rule.NOT_A_REQUEST_KEY, [SPECIFIC_CHARACTER_SET], f"{where} must not "
                     f"contain {tag_name(SPECIFIC_CHARACTER_SET)}", "SpecificCharacterSet "
                     "not allowed")
        elif charset is not None and charset.is_empty:  # C.2.2.2: never zero length
            self.add(Rule.NOT_A_REQUEST_KEY, [SPECIFIC_CHARACTER_SET],
                     f"{where}: {tag_name(SPECIFIC_CHARACTER_SET)} must not be empty",
                     "SpecificCharacterSet empty")
        timezone = self.ds.get(_TIMEZONE)
        if self.op is Operation.FIND and timezone is not None and timezone.is_empty:
            self.add(Rule.NOT_A_REQUEST_KEY, [_TIMEZONE], f"{where}: {tag_name(_TIMEZONE)} "
                     "must not be sent empty (C.4.1.1.3.1)", "TimezoneOffsetFromUTC empty")
        if self.op is Operation.FIND and _AVAILABILITY in self.ds:  # C.4.1.1.3.2
            self.add(Rule.NOT_A_REQUEST_KEY, [_AVAILABILITY], f"{where} must not contain "
                     f"{tag_name(_AVAILABILITY)}, a response attribute",
                     "InstanceAvailability not allowed in a request")
        view = self.ds.get(_QR_VIEW)
        if view is None:
            return
        if not self.enhanced:  # "It shall not be included otherwise."
            self.add(Rule.VIEW, [_QR_VIEW], f"{where}: {tag_name(_QR_VIEW)} needs Enhanced "
                     "Multi-Frame Image Conversion accepted in extended negotiation",
                     "QueryRetrieveView not negotiated")
        elif view.VM != 1 or str(view.value).strip() not in _VIEWS:
            self.add(Rule.VIEW, [_QR_VIEW], f"{where}: {tag_name(_QR_VIEW)} must be CLASSIC "
                     f"or ENHANCED, not {view.value!r}", "QueryRetrieveView invalid")

    def check_unique_above(self, level: Level, above: tuple[Level, ...]) -> None:
        if self.relational and self.op is Operation.FIND:
            return  # relational search: higher keys are ordinary matching keys
        for lv in above:
            tag = UNIQUE_KEYS[lv]
            problem = _value_problem(self.ds.get(tag), allow_multi=False)
            if problem is None or (self.relational and problem == "missing"):
                continue
            self.add(Rule.UNIQUE_ABOVE, [tag],
                     f"{self.prefix(level)} needs {tag_name(tag)} single-valued: {problem}",
                     f"{tag_name(tag)} {problem}")

    def check_keys(self, level: Level, idx: int, above_uniques: set[int]) -> None:
        general = _GENERAL_FIND if self.op is Operation.FIND else _GENERAL_RETRIEVE
        for elem in self.ds:
            tag = int(elem.tag)
            if tag >> 16 in _NOT_DATA_GROUPS:
                self.add(Rule.NOT_DATA_ELEMENT, [tag], f"{self.prefix(level)} must not contain "
                         f"{tag_name(tag)}: groups 0000 (command) and 0002 (file meta) are not "
                         "data set elements", f"{tag_name(tag)} is no data set element")
                continue
            if elem.VR == "SQ" and self.op is Operation.FIND:
                self.check_sequence_key(level, tag, elem, tag_name(tag))
            if tag in general or tag in above_uniques:
                continue
            if self.model is QueryModel.COMPOSITE_INSTANCE_ROOT and tag in _COMPOSITE_TOLERATED:
                problem = _value_problem(elem, allow_multi=False)
                if problem is not None and level is _I:
                    self.add(Rule.NON_UNIQUE, [tag], f"{self.prefix(level)}: {tag_name(tag)} "
                             f"must be single-valued if present: {problem}",
                             f"{tag_name(tag)} {problem}")
                continue
            kl = key_level(tag, self.model)
            kidx = self.info.levels.index(kl) if kl in self.info.levels else None
            if kl is not None and kidx is None:
                kidx = len(self.info.levels)  # e.g. a SERIES key under Patient/Study Only
            self.classify(level, idx, tag, kidx)

    def check_sequence_key(self, level: Level, key: int, elem: DataElement, path: str) -> None:
        """PS3.4 C.2.2.2.6: a sequence matching key holds a single item (which may be empty),
        as do the sequences nested in it; with two, which one to match would be a guess. The
        offending element is the key (``key``), the message names the nested sequence."""
        items = elem.value or ()
        if len(items) > 1:
            self.add(Rule.SEQUENCE_ITEMS, [key],
                     f"{self.prefix(level)}: {path} has {len(items)} items, a sequence matching "
                     "key holds one (PS3.4 C.2.2.2.6)", f"{tag_name(int(elem.tag))} has "
                     f"{len(items)} items")
        for item in items:
            for inner in item:
                if inner.VR == "SQ":
                    self.check_sequence_key(level, key, inner,
                                            f"{path} > {tag_name(int(inner.tag))}")

    def classify(self, level: Level, idx: int, tag: int, kidx: int | None) -> None:
        name = tag_name(tag)
        if kidx is not None and kidx > idx:
            self.add(Rule.KEY_BELOW, [tag], f"{self.prefix(level)} must not contain {name}, "
                     "a key below the level", f"{name} below {level.value} level")
        elif self.op is not Operation.FIND:
            if tag != UNIQUE_KEYS.get(level) and not (level is _F and tag in FRAME_RANGE_KEYS):
                self.add(Rule.NON_UNIQUE, [tag], f"{self.prefix(level)} may contain only "
                         f"unique keys, not {name}", f"non-unique key {name}")
        elif kidx is not None and kidx < idx and not self.relational:
            self.add(Rule.KEY_ABOVE, [tag], f"{self.prefix(level)} must not contain {name}, "
                     "a non-unique key above the level (hierarchical)",
                     f"{name} above {level.value} level")

    def check_find_level(self, level: Level) -> None:
        tag = UNIQUE_KEYS[level]
        elem = self.ds.get(tag)
        if not _has_keys(self.ds):
            self.add(Rule.NO_KEYS, [QR_LEVEL], f"{self.prefix(level)} contains no keys",
                     "identifier contains no keys")
        elif elem is None:
            # PS3.4 C.4.1.2.1 (and C.4.1.2.2.1, relational): "The Unique Key Attribute
            # associated with the Query/Retrieve level shall be contained in the C-FIND request".
            self.add(Rule.LEVEL_KEY_MISSING, [tag], f"{self.prefix(level)} needs "
                     f"{tag_name(tag)}, the unique key of the level (zero length to match all)",
                     f"{tag_name(tag)} missing")
        elif not elem.is_empty:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            if elem.VR == "UI" and any("*" in str(v) or "?" in str(v) for v in values):
                self.add(Rule.UNIQUE_AT_LEVEL, [tag], f"{self.prefix(level)}: {tag_name(tag)} "
                         "is UI and cannot use wildcards", f"wildcard in {tag_name(tag)}")
            elif elem.VR == "UI" and any(not str(v).strip(" \0") for v in values):
                # PS3.4 C.2.2.2.2: "Each item in the list shall contain a single UID value".
                self.add(Rule.UNIQUE_AT_LEVEL, [tag], f"{self.prefix(level)}: {tag_name(tag)} "
                         "has an empty UID in its value", f"empty UID in {tag_name(tag)}")
            elif elem.VR != "UI" and len(values) > 1:
                self.add(Rule.UNIQUE_AT_LEVEL, [tag], f"{self.prefix(level)}: {tag_name(tag)} "
                         "value lists are only allowed for UI keys",
                         f"list in {tag_name(tag)}")

    def check_retrieve_unique(self, level: Level) -> None:
        tag = UNIQUE_KEYS[level]
        # PS3.4 C.4.2.2.1 / C.4.3.2.1: a list of UIDs at the STUDY, SERIES or IMAGE level, but
        # "a single value ... if the level of retrieve is above the STUDY level" (Patient ID).
        several = level is not Level.PATIENT
        problem = _value_problem(self.ds.get(tag), allow_multi=several)
        if problem is not None:
            wanted = "one or more values" if several else "a single value"
            self.add(Rule.UNIQUE_AT_LEVEL, [tag], f"{self.prefix(level)} needs {tag_name(tag)} "
                     f"with {wanted}: {problem}", f"{tag_name(tag)} {problem}")

    def check_frame_keys(self) -> None:
        present = [t for t in FRAME_RANGE_KEYS if t in self.ds]
        if len(present) != 1 or self.ds[present[0]].is_empty:
            self.add(Rule.FRAME_KEYS, sorted(present) or sorted(FRAME_RANGE_KEYS),
                     f"{self.prefix(_F)} needs exactly one non-empty of SimpleFrameList, "
                     f"CalculatedFrameList, TimeRange (got {len(present)})",
                     f"need one frame range key, got {len(present)}")


def check_identifier(
    ds: Dataset, model: QueryModel, operation: Operation, *, relational: bool = False,
    enhanced: bool = False,
) -> list[Violation]:
    """Every rule ``ds`` breaks as a ``model`` ``operation`` identifier (empty: valid).

    ``relational`` applies the relaxed rules of PS3.4 C.4.1.2.2/C.4.2.2.2 (only meaningful when
    negotiated); ``enhanced``: Enhanced Multi-Frame Image Conversion was negotiated, so a
    Query/Retrieve View may be given. ValueError if the model has no such operation.
    """
    sop_class(model, operation)
    try:
        return _Checker(ds, model, operation, relational, enhanced).run()
    except Exception as exc:  # a value pydicom cannot decode, a non-Dataset...
        return [Violation(Rule.UNREADABLE, (), f"identifier cannot be processed: {exc}",
                          f"unable to process identifier: {type(exc).__name__}"[:64],
                          Status.UNABLE_TO_PROCESS)]


def _raise(violations: list[Violation]) -> None:
    tags = [t for v in violations for t in v.tags]
    raise IdentifierError("; ".join(v.message for v in violations),
                          offending=dict.fromkeys(tags), status=violations[0].status)


def validate_request(
    ds: Dataset,
    model: QueryModel,
    operation: Operation,
    mode: Mode = Mode.STRICT,
    relational_negotiated: bool = False,
    *,
    enhanced_negotiated: bool = False,
) -> list[Violation]:
    """Check an identifier before an SCU sends it.

    STRICT raises :class:`IdentifierError` on any hierarchical violation; LENIENT logs one
    warning per violation and returns them (relational rules if negotiated); RELATIONAL applies
    the relational rules and raises, and is itself an error unless relational query/retrieve
    was negotiated.
    """
    if mode is Mode.RELATIONAL and not relational_negotiated:
        raise IdentifierError(
            f"relational {operation.value} under {model.name} was not negotiated",
            offending=(QR_LEVEL,))
    relational = mode is Mode.RELATIONAL or (mode is Mode.LENIENT and relational_negotiated)
    violations = check_identifier(ds, model, operation, relational=relational,
                                  enhanced=enhanced_negotiated)
    if violations and mode is not Mode.LENIENT:
        _raise(violations)
    for v in violations:
        log.warning("identifier rule broken (sent anyway): %s", v.message)
    return violations


def validate_scp(
    ds: Dataset,
    model: QueryModel,
    operation: Operation,
    *,
    relational_negotiated: bool = False,
    lenient: bool = False,
    enhanced_negotiated: bool = False,
) -> Failure | None:
    """Check a received identifier; the Failure to answer with, or None to process it.

    Lenient mode logs and lets the rules in :data:`LENIENT_SCP_PASSES` by; a level the model
    does not have is always a failure (never an empty success). Strict mode too lets an *empty*
    non-unique key of a higher level by (a return key; the SCU side still refuses to send one),
    and the rules in :data:`SCP_TOLERATES`.
    """
    violations = check_identifier(ds, model, operation, relational=relational_negotiated,
                                  enhanced=enhanced_negotiated)
    # An empty key of a higher level only asks for that entity's value back (Orthanc adds an
    # empty PatientID and AccessionNumber to every series query, dcmjs-dimse an empty Modality
    # to image queries): answered as DCMTK's dcmqrscp does by default, never matched on.
    violations = [v for v in violations if not (v.rule is Rule.KEY_ABOVE and _all_empty(ds, v))
                  and v.rule not in SCP_TOLERATES]
    if lenient:
        passed = [v for v in violations if v.rule in LENIENT_SCP_PASSES]
        for v in passed:
            log.warning("identifier rule broken (processed leniently): %s", v.message)
        violations = [v for v in violations if v.rule not in LENIENT_SCP_PASSES]
    if not violations:
        return None
    first = violations[0]
    tags = tuple(dict.fromkeys(t for v in violations for t in v.tags))
    comment = first.comment if len(violations) == 1 else f"{first.comment} (+{len(violations) - 1})"
    if len(comment) > 64:
        comment = first.comment[:64]
    return Failure(first.status, tags, comment, tuple(violations))


def _all_empty(ds: Dataset, violation: Violation) -> bool:
    return all(tag in ds and ds[tag].is_empty for tag in violation.tags)


#: VRs whose values use the Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})


def _has_keys(ds: Dataset) -> bool:
    """Whether a C-FIND identifier holds a key, not only the level and its general
    attributes (character set, timezone, view, retrieve location)."""
    return any(int(e.tag) not in _GENERAL_FIND for e in ds)


def with_level_key(identifier: Dataset, model: QueryModel, *, canonical_level: bool = True
                   ) -> Dataset:
    """The C-FIND identifier to send: as given, or a copy that (``canonical_level``) spells the
    level as its defined term (``study`` -> ``STUDY``: CS is upper case, PS3.5 6.2) and, when it
    lacks the unique key of its level, holds that key at zero length (universal matching, so the
    same matches) as PS3.4 C.4.1.2.1 requires. A level that is missing, unknown or not in
    ``model``, and an identifier with no key at all, are left for the identifier check."""
    elem = identifier.get(QR_LEVEL)
    level = parse_level(elem.value) if elem is not None and elem.VM == 1 else None
    if level is None or level not in MODELS[model].levels or level not in UNIQUE_KEYS:
        return identifier
    tag = UNIQUE_KEYS[level]
    recase = canonical_level and elem is not None and elem.value != level.value
    add_key = tag not in identifier and _has_keys(identifier)
    if not (recase or add_key):
        return identifier
    ds = Dataset()
    ds.update(identifier)
    if recase:
        log.info("Query/Retrieve Level %r sent as %s", elem.value, level.value)
        ds.add_new(QR_LEVEL, "CS", level.value)
    if not add_key:
        return ds
    ds.add_new(tag, "LO" if level is Level.PATIENT else "UI", "")
    log.info("C-FIND identifier lacks %s, the unique key of the %s level: sent empty",
             tag_name(tag), level.value)
    return ds


def has_non_ascii_text(ds: Dataset) -> bool:
    """Whether a text value of ``ds`` (or of its sequence items) is outside the default
    repertoire, so that Specific Character Set (0008,0005) must say how it is encoded."""
    return _non_ascii(ds)


def _non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        value = elem.value
        if elem.VR == "SQ":
            if any(_non_ascii(item) for item in value or ()):
                return True
        elif elem.VR in _TEXT_VRS and value is not None:
            values = value if isinstance(value, MultiValue | list) else (value,)
            if not all(str(v).isascii() for v in values):
                return True
    return False


def with_character_set(identifier: Dataset) -> Dataset:
    """The identifier to send: as given, or, when it holds text outside the default repertoire
    and no Specific Character Set (0008,0005) value, a copy that declares ``ISO_IR 192`` (UTF-8);
    an empty (0008,0005) of an identifier in the default repertoire is left out of the copy.

    PS3.4 C.4.1.1.3.1 requires (0008,0005) in such a query; without it a peer decodes the bytes
    as ASCII and, as DCMTK's dcmqrscp does, matches nothing.
    """
    declared = identifier.get(SPECIFIC_CHARACTER_SET)
    if declared is not None and declared.value:
        return identifier
    non_ascii = _non_ascii(identifier)
    if not non_ascii and declared is None:
        return identifier
    ds = Dataset()
    ds.update(identifier)
    if not non_ascii:  # PS3.4 C.2.2.2: never zero length; absent is the default repertoire
        del ds[SPECIFIC_CHARACTER_SET]
        return ds
    ds.SpecificCharacterSet = UTF8_CHARACTER_SET
    log.info("identifier has non-ASCII text and no Specific Character Set: sending ISO_IR 192")
    return ds


def resolve_un(identifier: Dataset, little_endian: bool = True) -> Dataset:
    """Give each UN element of a received identifier (and of its sequence items) its dictionary
    VR, in place; returns ``identifier``.

    pydicom does this on its own only when the value fits the known VR's 16-bit length, but a
    peer sends a longer value as UN in Explicit VR (PS3.5 6.2.2): a list of several thousand
    UIDs as a C-FIND or retrieve key is one. Elements with no single dictionary VR stay UN.
    """
    for elem in list(identifier):
        if elem.VR == "SQ":
            for item in elem.value or ():
                resolve_un(item, little_endian)
            continue
        if elem.VR != "UN" or not isinstance(elem.value, bytes):
            continue
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            continue
        if vr in ("UN", "SQ") or " " in vr:  # unknown, nested, or "US or SS": leave as is
            continue
        raw = RawDataElement(elem.tag, vr, len(elem.value), elem.value, 0, False,
                             little_endian)
        try:
            identifier[elem.tag] = convert_raw_data_element(raw, ds=identifier)
        except Exception as exc:  # a value that does not parse as its VR stays UN
            log.debug("UN element %s kept as UN: %s", elem.tag, exc)
    return identifier
