"""An independent oracle of the Query/Retrieve identifier rules, and Hypothesis properties that
hold our SCU-side (:func:`dimse.qr.check_identifier`, :func:`dimse.qr.validate_request`) and
SCP-side (:func:`dimse.qr.validate_scp`) checks to it.

The oracle is written from PS3.4 (Annex C, Y, Z) and /work/shared/spec/query-retrieve.md, not
from dimse/qr*.py: its own key table, its own reading of every rule, each with the section it
comes from. Where our code deviates from the letter of the standard on purpose (documented in the
digest or the code), the oracle says so in a comment, marked DESIGN.

Identifiers are generated as a list of (tag, VR, value) entries, so the oracle reads what was
meant, never what pydicom made of it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dimse.errors import IdentifierError
from dimse.qr import Mode, Operation, QueryModel, check_identifier, validate_request, validate_scp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PR, SR, PSO = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT, QueryModel.PATIENT_STUDY_ONLY
CIR, WOB = QueryModel.COMPOSITE_INSTANCE_ROOT, QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK
FIND, MOVE, GET = Operation.FIND, Operation.MOVE, Operation.GET

# --------------------------------------------------------------------------------------------
# The oracle's own tables (PS3.4 C.3, C.6, Y.3.1, Z.3.1)

QRL = 0x00080052
CHARSET, TIMEZONE, VIEW = 0x00080005, 0x00080201, 0x00080053
RETRIEVE_AE, AVAILABILITY, FILESET_ID, FILESET_UID = 0x00080054, 0x00080056, 0x00880130, 0x00880140
PATIENT_ID, STUDY_UID, SERIES_UID, SOP_UID = 0x00100020, 0x0020000D, 0x0020000E, 0x00080018
SIMPLE_FRAMES, CALC_FRAMES, TIME_RANGE = 0x00081161, 0x00081162, 0x00081163
PRIVATE = 0x00091010

#: Model -> levels top to bottom (C.3.1, C.3.2, C.3.3 / PS3.4-2004, Y.3.1, Z.3.1: Without Bulk
#: Data is "a one level hierarchy: Composite Instance", level IMAGE).
LEVELS: dict[QueryModel, tuple[str, ...]] = {
    PR: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    SR: ("STUDY", "SERIES", "IMAGE"),
    PSO: ("PATIENT", "STUDY"),
    CIR: ("IMAGE", "FRAME"),
    WOB: ("IMAGE",),
}
OPERATIONS: dict[QueryModel, tuple[Operation, ...]] = {
    PR: (FIND, MOVE, GET), SR: (FIND, MOVE, GET), PSO: (FIND, MOVE, GET),
    CIR: (MOVE, GET), WOB: (GET,),
}
#: Relational query/retrieve exists for the three Annex C models only (Y.4.1.2.2: "except that
#: Relational-retrieve shall not be supported"; Annex Z has none either).
RELATIONAL_MODELS = frozenset({PR, SR, PSO})
UNIQUE = {"PATIENT": PATIENT_ID, "STUDY": STUDY_UID, "SERIES": SERIES_UID, "IMAGE": SOP_UID}

#: Non-unique keys (R and O) by information entity, tag -> (VR, a matching value).
ENTITY_KEYS: dict[str, dict[int, tuple[str, str]]] = {
    "PATIENT": {0x00100010: ("PN", "DOE^J*"), 0x00100030: ("DA", "19700101"),
                0x00100040: ("CS", "F")},
    "STUDY": {0x00080020: ("DA", "20200101-"), 0x00080050: ("SH", "A1"),
              0x00081030: ("LO", "KNEE*"), 0x00081032: ("SQ", "")},
    "SERIES": {0x00080060: ("CS", "CT"), 0x00200011: ("IS", "2"), 0x00400275: ("SQ", "")},
    "IMAGE": {0x00200013: ("IS", "1"), 0x00080016: ("UI", "1.2.840.10008.5.1.4.1.1.2")},
}


def entity_level(entity: str, model: QueryModel) -> str | None:
    """The level an entity's keys belong to in ``model`` (C.3.2: in Study Root "Attributes of
    patients are considered to be Attributes of studies"); None: the model has no such level."""
    if model is SR and entity == "PATIENT":
        return "STUDY"
    if model in (CIR, WOB):  # Y.3.1 / Z.3.1: the instance level holds only SOP Instance UID
        return "IMAGE"
    return entity if entity in LEVELS[model] else None


# --------------------------------------------------------------------------------------------
# Identifier specs


class Kind(Enum):
    """Why the oracle says an identifier is not valid."""

    LEVEL = "Query/Retrieve Level missing, invalid or not in the model"
    UNIQUE_ABOVE = "unique key of a higher level not one single value"
    KEY_ABOVE = "required/optional key of a higher level (hierarchical query)"
    KEY_BELOW = "key below the level"
    NON_UNIQUE = "a key other than a unique key in a retrieve"
    LEVEL_KEY = "unique key of the level missing or in a form not allowed"
    FRAME = "FRAME level needs exactly one frame range key"
    NOT_ALLOWED = "an attribute the request may not carry (or not with that value)"
    NO_KEYS = "no keys at all"


@dataclass(frozen=True)
class Entry:
    """One element of a generated identifier; ``value`` is a str, a list of str (multi-valued),
    or for SQ "" (no item) / "item" (one empty item)."""

    tag: int
    vr: str
    value: str | tuple[str, ...]

    def values(self) -> tuple[str, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)

    @property
    def empty(self) -> bool:
        """Zero length; a single value of padding only is the same (PS3.5 6.2: spaces pad
        strings, and pydicom reads a blank UI value as empty)."""
        return self.value == () or (isinstance(self.value, str) and not self.value.strip(" \0"))


@dataclass(frozen=True)
class Case:
    model: QueryModel
    op: Operation
    relational: bool
    enhanced: bool
    entries: tuple[Entry, ...]

    def get(self, tag: int) -> Entry | None:
        return next((e for e in self.entries if e.tag == tag), None)

    def dataset(self) -> Dataset:
        ds = Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for e in self.entries:
                if e.vr == "SQ":
                    ds.add_new(e.tag, "SQ", Sequence([Dataset()] if e.value == "item" else []))
                else:
                    value = list(e.value) if isinstance(e.value, tuple) else e.value
                    ds.add_new(e.tag, e.vr, value)
        return ds


@dataclass
class Verdict:
    """The oracle's answer: every (kind, tag) broken; empty means the identifier is valid."""

    problems: set[tuple[Kind, int]] = field(default_factory=set)

    def add(self, kind: Kind, tag: int) -> None:
        self.problems.add((kind, tag))

    @property
    def tags(self) -> set[int]:
        return {t for _, t in self.problems}

    @property
    def kinds(self) -> set[Kind]:
        return {k for k, _ in self.problems}


# --------------------------------------------------------------------------------------------
# The oracle


def _single(entry: Entry | None) -> bool:
    """A present, single, non-empty value usable for Single Value Matching of a unique key
    (C.2.2.1.1: a single value identifies one entity; UI has no wild card matching, and an LO
    value with '*' or '?' is Wild Card Matching, C.2.2.2.4 note 4, not a single value)."""
    if entry is None or entry.empty or len(entry.values()) != 1:
        return False
    value = entry.values()[0].strip(" \0")
    return bool(value) and "*" not in value and "?" not in value


def _uid_list(entry: Entry | None) -> bool:
    """One UID or a List of UIDs (C.2.2.2.2: "Each item in the list shall contain a single UID
    value"): non-empty, no empty item, no wild card."""
    if entry is None or entry.empty:
        return False
    return all(v.strip(" \0") and "*" not in v and "?" not in v for v in entry.values())


def oracle(case: Case) -> Verdict:
    """What PS3.4 says about ``case``: the problems an SCU must not send without saying so."""
    verdict = Verdict()
    level = _level(case, verdict)
    if level is None:
        return verdict
    levels = LEVELS[case.model]
    idx = levels.index(level)
    relational = case.relational and case.model in RELATIONAL_MODELS
    above = levels[:idx]
    _general(case, verdict)
    for lv in above:
        entry = case.get(UNIQUE[lv])
        # C.4.1.2.1 / C.4.2.2.1 / C.4.3.2.1: "a single value in the Unique Key Attribute for
        # each level above". Relational search (C.4.1.2.2.1) allows any combination of keys;
        # relational retrieve (C.4.2.2.2.1) only lets them be left out (digest 6.2).
        if relational and case.op is FIND:
            continue
        if entry is None and relational:
            continue
        if not _single(entry):
            verdict.add(Kind.UNIQUE_ABOVE, UNIQUE[lv])
    above_uniques = {UNIQUE[lv] for lv in above if lv in UNIQUE}
    for entry in case.entries:
        _classify(case, verdict, entry, level, idx, above_uniques, relational)
    if case.op is FIND:
        _find_level_key(case, verdict, level)
    elif level == "FRAME":
        frames = [case.get(t) for t in (SIMPLE_FRAMES, CALC_FRAMES, TIME_RANGE)]
        present = [e for e in frames if e is not None]
        if len(present) != 1 or present[0].empty:  # Y.4.1.1.3.1: "One of the Frame Range Keys"
            for tag in [e.tag for e in present] or [SIMPLE_FRAMES, CALC_FRAMES, TIME_RANGE]:
                verdict.add(Kind.FRAME, tag)
    else:
        _retrieve_level_key(case, verdict, level)
    return verdict


def _level(case: Case, verdict: Verdict) -> str | None:
    entry = case.get(QRL)
    # C.4.1.1.3.1 / C.4.2.1.4.1 / C.4.3.1.3.1: the identifier "shall contain" the level.
    if entry is None or len(entry.values()) != 1:
        verdict.add(Kind.LEVEL, QRL)
        return None
    # DESIGN: CS values are upper case (PS3.5), but the level is read leniently on case and
    # padding, as DCMTK does (digest section 2).
    value = entry.values()[0].strip(" \0").upper()
    if value not in LEVELS[case.model]:
        verdict.add(Kind.LEVEL, QRL)
        return None
    return value


def _general(case: Case, verdict: Verdict) -> None:
    """Attributes that are no keys: when a request may carry them (C.4.x.1.3.1)."""
    find = case.op is FIND
    for entry in case.entries:
        tag = entry.tag
        if tag == CHARSET:
            # C.2.2.2: "shall not have a zero length value"; Y.4.1.1.3.1 and Z.4.2.1.3.1:
            # "Specific Character Set (0008,0005) shall not be present".
            if entry.empty or case.model in (CIR, WOB):
                verdict.add(Kind.NOT_ALLOWED, tag)
        elif tag == VIEW:
            # C.4.1.1.3.1 / C.4.2.1.4.1: "may be included if Enhanced Multi-Frame Image
            # Conversion has been accepted ... It shall not be included otherwise"; values
            # "CLASSIC" or "ENHANCED" (C.4.1.2.2.2).
            if not case.enhanced or entry.values() not in (("CLASSIC",), ("ENHANCED",)):
                verdict.add(Kind.NOT_ALLOWED, tag)
        elif tag == TIMEZONE and find:
            if entry.empty:  # C.4.1.1.3.1: "it shall not be sent with a zero-length value"
                verdict.add(Kind.NOT_ALLOWED, tag)
        elif tag == AVAILABILITY and find:
            # C.4.1.1.3.2: "This Data Element shall not be included in a C-FIND request."
            verdict.add(Kind.NOT_ALLOWED, tag)


_FIND_GENERAL = {QRL, CHARSET, TIMEZONE, VIEW, RETRIEVE_AE, AVAILABILITY, FILESET_ID, FILESET_UID}
_RETRIEVE_GENERAL = {QRL, CHARSET, VIEW}


def _entity_of(tag: int) -> str | None:
    for entity, keys in ENTITY_KEYS.items():
        if tag in keys:
            return entity
    for entity, unique in UNIQUE.items():
        if tag == unique:
            return entity
    return "FRAME" if tag in (SIMPLE_FRAMES, CALC_FRAMES, TIME_RANGE) else None


def _classify(case: Case, verdict: Verdict, entry: Entry, level: str, idx: int,
              above_uniques: set[int], relational: bool) -> None:
    tag = entry.tag
    general = _FIND_GENERAL if case.op is FIND else _RETRIEVE_GENERAL
    if tag in general or tag in above_uniques:
        return
    levels = LEVELS[case.model]
    entity = _entity_of(tag)
    if case.model is CIR and tag in (STUDY_UID, SERIES_UID):
        # DESIGN (dimse/qr_model.py, PS3.17 LL.1): a Composite Instance Root IMAGE request may
        # carry the instance's study and series UIDs, single-valued.
        if level == "IMAGE" and not _single(entry):
            verdict.add(Kind.NON_UNIQUE, tag)
        return
    if entity == "FRAME" and case.model is CIR:
        kl: str | None = "FRAME"
    elif entity is None:
        kl = None  # a private or unknown attribute: an optional key of the level, if anything
    else:
        kl = entity_level(entity, case.model)
    kidx = len(levels) if (entity is not None and kl is None) else (
        levels.index(kl) if kl is not None else None)
    if kidx is not None and kidx > idx:
        verdict.add(Kind.KEY_BELOW, tag)  # C.4.1.1.3.1: keys allowable for the level only
    elif case.op is not FIND:
        # C.2.2.1.2 / C.2.2.1.3: Required and Optional Keys "shall not be contained in the
        # Identifier of C-MOVE and C-GET requests" (C.4.2.1.4.1: unique keys only).
        if tag != UNIQUE.get(level) and not (level == "FRAME" and entity == "FRAME"):
            verdict.add(Kind.NON_UNIQUE, tag)
    elif kidx is not None and kidx < idx and not relational:
        # C.4.1.2.1: "No Required or Optional Keys shall be specified that are associated with
        # levels above the Query/Retrieve level."
        verdict.add(Kind.KEY_ABOVE, tag)


def _find_level_key(case: Case, verdict: Verdict, level: str) -> None:
    tag = UNIQUE[level]
    entry = case.get(tag)
    if not [e for e in case.entries if e.tag not in _FIND_GENERAL]:
        # DESIGN (digest 10, pynetdicom's qrscp): an identifier with no key at all is reported
        # as such, not as the missing unique key of the level.
        verdict.add(Kind.NO_KEYS, QRL)
    elif entry is None:
        # C.4.1.2.1 (and C.4.1.2.2.1 for relational queries): "The Unique Key Attribute
        # associated with the Query/Retrieve level shall be contained in the C-FIND request".
        verdict.add(Kind.LEVEL_KEY, tag)
    elif not entry.empty:
        # ... "and may specify Single Value Matching, Universal Value Matching, or List of UID
        # Matching" (lists: UI only, C.2.2.2.2).
        values = entry.values()
        if level != "PATIENT" and not _uid_list(entry):
            verdict.add(Kind.LEVEL_KEY, tag)
        elif level == "PATIENT" and len(values) > 1:
            verdict.add(Kind.LEVEL_KEY, tag)
        # DESIGN: a wild card in Patient ID at the PATIENT level is accepted (tests/dimse/
        # test_qr.py); the letter of C.4.1.2.1 does not list Wild Card Matching for the unique
        # key (see /work/notes/audit6/rules.md).


def _retrieve_level_key(case: Case, verdict: Verdict, level: str) -> None:
    tag = UNIQUE[level]
    entry = case.get(tag)
    if level == "PATIENT":
        # C.4.2.2.1: "a single value for one unique key if the level of retrieve is above the
        # STUDY level"; C.4.2.1.4.1 note 1: "only Single Value Matching value may be specified
        # for Patient ID".
        ok = _single(entry)
    else:
        ok = _uid_list(entry)  # "one UID, or a list of UIDs" (STUDY, SERIES, IMAGE)
    if not ok:
        verdict.add(Kind.LEVEL_KEY, tag)


# --------------------------------------------------------------------------------------------
# What our SCP is documented to do with a verdict (digest section 10 and dimse/qr.py)

#: DESIGN (validate_scp docstring, digest 10): a strict SCP still answers these, since it can
#: do so unambiguously: an *empty* key of a higher level only asks for a value back (Orthanc,
#: dcmjs-dimse send them); the level's unique key left out of a C-FIND is matched as universal
#: (DCMTK's dcmqrscp with --check-find does not require it either); a response-only or empty
#: conditional attribute changes no match.
def scp_tolerates(case: Case, kind: Kind, tag: int) -> bool:
    if kind is Kind.KEY_ABOVE:
        entry = case.get(tag)
        return entry is not None and entry.empty
    if kind is Kind.LEVEL_KEY and case.op is FIND:
        return case.get(tag) is None
    if kind is Kind.NOT_ALLOWED:
        return tag != VIEW  # a view the SCP did not agree to would be silently ignored
    return False


#: Problems a lenient SCP still fails (dimse/qr.py LENIENT_SCP_PASSES is the complement).
LENIENT_FAILS = frozenset({Kind.LEVEL, Kind.LEVEL_KEY, Kind.FRAME})


# --------------------------------------------------------------------------------------------
# Strategies

UID1, UID2 = "1.2.826.0.1.3680043.10.543.1", "1.2.826.0.1.3680043.10.543.2"
UI_FORMS: dict[str, str | tuple[str, ...]] = {"single": UID1, "list": (UID1, UID2), "empty": "", "wildcard": "1.2.826*",
            "empty item": (UID1, ""), "spaces": "  "}
LO_FORMS: dict[str, str | tuple[str, ...]] = {"single": "PID1", "list": ("PID1", "PID2"), "empty": "", "wildcard": "PID*",
            "question": "PID?", "spaces": "  "}


def _unique_entry(level: str, form: str) -> Entry:
    tag = UNIQUE[level]
    if level == "PATIENT":
        return Entry(tag, "LO", LO_FORMS[form if form in LO_FORMS else "single"])
    return Entry(tag, "UI", UI_FORMS[form if form in UI_FORMS else "single"])


_FORM = st.sampled_from(["single"] * 6 + ["absent"] * 2 + sorted(set(UI_FORMS) | set(LO_FORMS)))


@st.composite
def cases(draw: st.DrawFn, models: Iterable[QueryModel] = tuple(LEVELS)) -> Case:
    """Identifiers across models x levels x operations x relational, mostly near-valid."""
    model = draw(st.sampled_from(list(models)))
    op = draw(st.sampled_from(OPERATIONS[model]))
    levels = LEVELS[model]
    level = draw(st.sampled_from(levels))
    entries: list[Entry] = []
    level_value = draw(st.sampled_from(
        [level] * 8 + [level.lower(), level + " ", "FOO", "", "absent", "multi"]
        + [lv for lv in ("PATIENT", "STUDY", "SERIES", "IMAGE", "FRAME") if lv not in levels]))
    if level_value == "multi":
        entries.append(Entry(QRL, "CS", (level, level)))
    elif level_value != "absent":
        entries.append(Entry(QRL, "CS", level_value))
    idx = levels.index(level)
    for lv in levels[:idx]:
        form = draw(_FORM)
        if lv in UNIQUE and form != "absent":
            entries.append(_unique_entry(lv, form))
    if level in UNIQUE:
        form = draw(_FORM)
        if form != "absent":
            entries.append(_unique_entry(level, form))
    if level == "FRAME":
        for tag, vr, value in ((SIMPLE_FRAMES, "UL", (1, 3)), (CALC_FRAMES, "UL", (1, 5, 1)),
                               (TIME_RANGE, "FD", (0.0, 1.5))):
            if draw(st.sampled_from([True, False, False])) or (
                    tag == SIMPLE_FRAMES and draw(st.booleans())):
                entries.append(Entry(tag, vr, tuple(str(v) for v in value)))
    entries.extend(draw(_extras(model, op)))
    unique: dict[int, Entry] = {}
    for e in entries:
        unique.setdefault(e.tag, e)
    return Case(model, op, draw(st.booleans()), draw(st.booleans()), tuple(unique.values()))


@st.composite
def _extras(draw: st.DrawFn, model: QueryModel, op: Operation) -> list[Entry]:
    out: list[Entry] = []
    count = draw(st.integers(0, 3))
    pool = [(tag, vr, value) for keys in ENTITY_KEYS.values()
            for tag, (vr, value) in keys.items()]
    pool += [(STUDY_UID, "UI", UID1), (SERIES_UID, "UI", UID1), (PRIVATE, "LO", "x"),
             (CHARSET, "CS", "ISO_IR 192"), (TIMEZONE, "SH", "+0100"), (VIEW, "CS", "CLASSIC"),
             (VIEW, "CS", "FOO"), (RETRIEVE_AE, "AE", ""), (AVAILABILITY, "CS", ""),
             (PATIENT_ID, "LO", "PID1")]
    for _ in range(count):
        tag, vr, value = draw(st.sampled_from(pool))
        empty = draw(st.booleans())
        if vr == "SQ":
            out.append(Entry(tag, vr, "" if empty else "item"))
        else:
            out.append(Entry(tag, vr, "" if empty else value))
    return out


# --------------------------------------------------------------------------------------------
# Properties

PROPERTY = settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow],
                    deadline=None)


@PROPERTY
@given(cases())
def test_scu_check_agrees_with_the_oracle(case: Case) -> None:
    """check_identifier finds a problem exactly when the standard says there is one, and names
    the same elements."""
    verdict = oracle(case)
    found = check_identifier(case.dataset(), case.model, case.op, relational=case.relational,
                             enhanced=case.enhanced)
    ours = {t for v in found for t in v.tags}
    assert bool(found) == bool(verdict.problems), (verdict.problems, found)
    assert ours == verdict.tags, (verdict.problems, found)
    assert all(0 < len(v.comment) <= 64 for v in found)


@PROPERTY
@given(cases())
def test_scu_modes(case: Case) -> None:
    """STRICT raises exactly on a problem (A900, naming the elements); LENIENT sends it anyway
    with one warning per problem; RELATIONAL is refused unless negotiated."""
    ds, verdict = case.dataset(), oracle(replace_relational(case, False))
    if verdict.problems:
        with pytest.raises(IdentifierError) as err:
            validate_request(ds, case.model, case.op, enhanced_negotiated=case.enhanced)
        assert set(err.value.offending) == verdict.tags
    else:
        assert validate_request(ds, case.model, case.op, enhanced_negotiated=case.enhanced) == []
    logger = logging.getLogger("dimse.qr")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        lenient = validate_request(ds, case.model, case.op, Mode.LENIENT,
                                   enhanced_negotiated=case.enhanced)
    finally:
        logger.setLevel(previous)
    assert {t for v in lenient for t in v.tags} == verdict.tags
    with pytest.raises(IdentifierError, match="not negotiated"):
        validate_request(ds, case.model, case.op, Mode.RELATIONAL)


def replace_relational(case: Case, relational: bool) -> Case:
    return Case(case.model, case.op, relational, case.enhanced, case.entries)


@PROPERTY
@given(cases())
def test_scp_answers_every_identifier_as_documented(case: Case) -> None:
    """The strict SCP fails exactly the problems it does not tolerate by design, with A900
    (Error: Data Set does not match SOP Class, C.4.1.1.4), an OffendingElement naming only
    elements at fault, and a short ErrorComment; the lenient SCP fails a subset of those."""
    ds, verdict = case.dataset(), oracle(case)
    failing = {(k, t) for k, t in verdict.problems if not scp_tolerates(case, k, t)}
    failure = validate_scp(ds, case.model, case.op, relational_negotiated=case.relational,
                           enhanced_negotiated=case.enhanced)
    assert (failure is not None) == bool(failing), (failing, failure)
    if failure is not None:
        assert failure.status == 0xA900
        assert failure.offending and set(failure.offending) <= verdict.tags
        assert 0 < len(failure.comment) <= 64
    lenient = validate_scp(ds, case.model, case.op, relational_negotiated=case.relational,
                           lenient=True, enhanced_negotiated=case.enhanced)
    if lenient is not None:
        assert failure is not None and lenient.status == 0xA900
    if any(k in LENIENT_FAILS for k, _ in failing):
        assert lenient is not None


# --------------------------------------------------------------------------------------------
# End to end: violating identifiers from peers that do not validate, to our archive SCP


def _ds(level: str | None, **keys: object) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


#: (model, identifier, expected final status, OffendingElement expected in the response)
E2E = [
    (SR, _ds(None, StudyInstanceUID=""), 0xA900, QRL),  # level missing
    (SR, _ds("PATIENT", PatientID=""), 0xA900, QRL),  # not a Study Root level
    (PSO, _ds("SERIES", PatientID="P1", StudyInstanceUID="1.2", SeriesInstanceUID=""),
     0xA900, QRL),  # Patient/Study Only has no SERIES level
    (PR, _ds("STUDY", StudyInstanceUID=""), 0xA900, PATIENT_ID),  # unique key above missing
    (PR, _ds("STUDY", PatientID="P*", StudyInstanceUID=""), 0xA900, PATIENT_ID),  # wild card
    (SR, _ds("STUDY", StudyInstanceUID="", SOPInstanceUID=""), 0xA900, SOP_UID),  # key below
    (SR, _ds("STUDY", StudyInstanceUID="", QueryRetrieveView="CLASSIC"), 0xA900, VIEW),
    # tolerated by design: answered with matches and Success
    (SR, _ds("STUDY", PatientName="Doe*"), 0x0000, None),  # level's unique key left out
    (SR, _ds("SERIES", StudyInstanceUID="1.2.826.0.1.3680043.10.4242.1", PatientID="",
             SeriesInstanceUID=""), 0x0000, None),  # empty key of a higher level
]


@pytest.fixture(scope="module")
def qr_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterable[object]:
    from dimse.archive import Archive
    from tests.dimse.test_qr_find import fill, layout

    arc = Archive(tmp_path_factory.mktemp("rules-archive"))
    fill(arc, layout())
    yield arc
    arc.close()


def _pynetdicom_session(port: int) -> tuple[list[tuple[int, int | None, str, int]], int, int]:
    """Every E2E identifier on one pynetdicom association, then a C-ECHO on it and one on a
    fresh association: ([(status, offending, comment, pending)], echo, fresh echo)."""
    from pynetdicom import AE

    from dimse.qr import sop_class

    ae = AE(ae_title="PYSCU")
    for model in (PR, SR, PSO):
        ae.add_requested_context(sop_class(model, FIND))
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    results: list[tuple[int, int | None, str, int]] = []
    assoc = ae.associate("127.0.0.1", port, ae_title="OURQR")
    assert assoc.is_established
    try:
        for model, ident, _, _ in E2E:
            pending, final = 0, None
            for status, _ident in assoc.send_c_find(ident, sop_class(model, FIND)):
                assert status is not None, "no response (association lost or timed out)"
                if status.Status in (0xFF00, 0xFF01):
                    pending += 1
                else:
                    final = status
            assert final is not None
            offending = final.get("OffendingElement")
            results.append((int(final.Status), int(offending) if offending is not None else None,
                            str(final.get("ErrorComment", "")), pending))
        echo = int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
    fresh = ae.associate("127.0.0.1", port, ae_title="OURQR")
    try:
        fresh_echo = int(fresh.send_c_echo().Status)
    finally:
        fresh.release()
    return results, echo, fresh_echo


@pytest.mark.timeout(60)
async def test_pynetdicom_violations_get_the_documented_answer(qr_archive: object) -> None:
    import asyncio

    from dimse.qr_scp import archive_server

    pytest.importorskip("pynetdicom")
    async with archive_server(qr_archive, "OURQR") as server:  # type: ignore[arg-type]
        results, echo, fresh = await asyncio.wait_for(
            asyncio.to_thread(_pynetdicom_session, server.port), 45)
    for (model, ident, status, offending), (got, got_offending, comment, pending) in zip(
            E2E, results, strict=True):
        assert got == status, (model, ident, hex(got), comment)
        if status == 0xA900:
            assert got_offending == offending and comment and pending == 0, (ident, comment)
        else:
            assert pending > 0 and got_offending is None
    assert echo == 0 and fresh == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flag", "keys", "offending"), [
    ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID"], "(0008,0052)"),
    ("-P", ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2", "SeriesInstanceUID"],
     "(0010,0020)"),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "InstanceNumber"], "(0020,0013)"),
])
async def test_dcmtk_findscu_violations_get_a900_with_details(
        qr_archive: object, flag: str, keys: list[str], offending: str) -> None:
    from dimse.qr_scp import archive_server
    from tests.peers import dcmtk, run_tool_async

    findscu, echoscu = dcmtk("findscu"), dcmtk("echoscu")
    args = [findscu, "-d", flag, "-aec", "OURQR"]
    for key in keys:
        args += ["-k", key]
    async with archive_server(qr_archive, "OURQR") as server:  # type: ignore[arg-type]
        _, out = await run_tool_async([*args, "127.0.0.1", str(server.port)], 30)
        code, echo = await run_tool_async(
            [echoscu, "-aec", "OURQR", "127.0.0.1", str(server.port)], 30)
    assert "0xa900" in out and "Received Find Response" not in out, out
    assert f"AT {offending}" in out and "ErrorComment" in out, out
    assert code == 0, echo
