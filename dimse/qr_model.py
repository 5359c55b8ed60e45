"""Query/Retrieve information models (PS3.4 Annex C, Y, Z) as data.

One table, :data:`MODELS`, holds every model's SOP class UIDs and levels; the key tables say
which level each attribute belongs to and which keys are unique/required. The identifier rules
that read these tables (SCU and SCP side alike) live in :mod:`dimse.qr`, which re-exports every
public name defined here; import them from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pydicom.datadict import keyword_for_tag, tag_for_keyword

__all__ = [
    "UTF8_CHARACTER_SET",
    "DEFAULT_TRANSFER_SYNTAXES",
    "FRAME_RANGE_KEYS",
    "MODELS",
    "QR_LEVEL",
    "SPECIFIC_CHARACTER_SET",
    "UNIQUE_KEYS",
    "KeyType",
    "Level",
    "ModelInfo",
    "Operation",
    "QrContext",
    "QueryModel",
    "contexts_for",
    "enhanced_accepted",
    "key_level",
    "keys_for",
    "model_for_sop_class",
    "parse_level",
    "relational_accepted",
    "required_keys",
    "sop_class",
    "tag_name",
]

QR_LEVEL: Final = 0x00080052
SPECIFIC_CHARACTER_SET: Final = 0x00080005
#: The Specific Character Set value for UTF-8: the one every value can be sent in.
UTF8_CHARACTER_SET: Final = "ISO_IR 192"


class Operation(Enum):
    """The DIMSE-C operation a Q/R SOP class performs."""

    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


class Level(Enum):
    """Query/Retrieve Level (0008,0052) defined terms; FRAME only in Composite Instance Root."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"
    FRAME = "FRAME"


class QueryModel(Enum):
    """Query/Retrieve information models."""

    PATIENT_ROOT = "Patient Root"
    STUDY_ROOT = "Study Root"
    PATIENT_STUDY_ONLY = "Patient/Study Only"  # retired, still seen
    COMPOSITE_INSTANCE_ROOT = "Composite Instance Root"  # MOVE/GET only (Annex Y)
    COMPOSITE_INSTANCE_WITHOUT_BULK = "Composite Instance Without Bulk Data"  # GET only (Annex Z)


class KeyType(Enum):
    """Key types of PS3.4 C.6: unique, required, optional."""

    UNIQUE = "U"
    REQUIRED = "R"
    OPTIONAL = "O"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One row of the model table.

    ``patient_in_study``: patient attributes are STUDY-level keys (Study Root hierarchy).
    ``relational``: the relational query/retrieve extended negotiation byte applies.
    ``character_set``: identifiers may carry Specific Character Set (not in Annex Y and Z
    requests, Y.4.1.1.3.1, Z.4.2.1.3.1).
    """

    model: QueryModel
    find: str | None
    move: str | None
    get: str | None
    levels: tuple[Level, ...]
    retired: bool = False
    relational: bool = True
    patient_in_study: bool = False
    character_set: bool = True

    def uid(self, operation: Operation) -> str | None:
        """The SOP class UID for ``operation`` (None if the model lacks it)."""
        return {Operation.FIND: self.find, Operation.MOVE: self.move, Operation.GET: self.get}[
            operation
        ]


_P, _ST, _SE, _I, _F = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE, Level.FRAME
_QR = "1.2.840.10008.5.1.4.1.2."

#: THE table: models, SOP class UIDs per operation, levels top to bottom.
MODELS: Final[Mapping[QueryModel, ModelInfo]] = {
    m.model: m
    for m in (
        ModelInfo(QueryModel.PATIENT_ROOT, _QR + "1.1", _QR + "1.2", _QR + "1.3",
                  (_P, _ST, _SE, _I)),
        ModelInfo(QueryModel.STUDY_ROOT, _QR + "2.1", _QR + "2.2", _QR + "2.3",
                  (_ST, _SE, _I), patient_in_study=True),
        ModelInfo(QueryModel.PATIENT_STUDY_ONLY, _QR + "3.1", _QR + "3.2", _QR + "3.3",
                  (_P, _ST), retired=True),
        ModelInfo(QueryModel.COMPOSITE_INSTANCE_ROOT, None, _QR + "4.2", _QR + "4.3",
                  (_I, _F), relational=False, character_set=False),
        # PS3.4 Z.3.1: "a one level hierarchy: Composite Instance"; Z.4.2.1.3.1: the level
        # "shall be IMAGE" and the identifier holds SOP Instance UID(s).
        ModelInfo(QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK, None, None, _QR + "5.3",
                  (_I,), relational=False, character_set=False),
    )
}

_BY_UID: Final[dict[str, tuple[QueryModel, Operation]]] = {
    uid: (info.model, op)
    for info in MODELS.values()
    for op in Operation
    if (uid := info.uid(op)) is not None
}


def _t(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - table typo
        raise KeyError(keyword)
    return int(tag)


#: Unique key per level (FRAME has none: it is selected by SOP Instance UID plus frame keys).
UNIQUE_KEYS: Final[Mapping[Level, int]] = {
    _P: _t("PatientID"), _ST: _t("StudyInstanceUID"), _SE: _t("SeriesInstanceUID"),
    _I: _t("SOPInstanceUID"),
}

#: Frame-level keys of Composite Instance Root Retrieve (exactly one per FRAME request).
FRAME_RANGE_KEYS: Final = frozenset(
    _t(k) for k in ("SimpleFrameList", "CalculatedFrameList", "TimeRange")
)

_REQUIRED: Final[Mapping[Level, tuple[str, ...]]] = {
    _P: ("PatientName",),
    _ST: ("StudyDate", "StudyTime", "AccessionNumber", "StudyID"),
    _SE: ("Modality", "SeriesNumber"),
    _I: ("InstanceNumber",),
}

# Natural level (information entity) of the attributes this library knows; any other attribute
# is taken as an optional key of the level being queried.
_LEVEL_KEYWORDS: Final[Mapping[Level, tuple[str, ...]]] = {
    _P: ("PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
         "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
         "OtherPatientIDsSequence", "OtherPatientIDs", "OtherPatientNames", "EthnicGroup",
         "PatientComments", "PatientSpeciesDescription", "PatientBreedDescription",
         "ResponsiblePerson", "PatientMotherBirthName", "NumberOfPatientRelatedStudies",
         "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"),
    _ST: ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID",
          "IssuerOfAccessionNumberSequence", "ModalitiesInStudy", "SOPClassesInStudy",
          "AnatomicRegionsInStudyCodeSequence", "ReferringPhysicianName", "StudyDescription",
          "ProcedureCodeSequence", "NameOfPhysiciansReadingStudy",
          "AdmittingDiagnosesDescription", "ReferencedStudySequence", "PatientAge",
          "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
          "OtherStudyNumbers", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
          "StudyStatusID", "StudyPriorityID"),
    _SE: ("Modality", "SeriesNumber", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances",
          "SeriesDate", "SeriesTime", "SeriesDescription", "BodyPartExamined", "Laterality",
          "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
          "RequestAttributesSequence", "ProtocolName", "OperatorsName"),
    _I: ("InstanceNumber", "SOPInstanceUID", "SOPClassUID", "RelatedGeneralSOPClassUID",
         "AlternateRepresentationSequence", "AvailableTransferSyntaxUID",
         "ConceptNameCodeSequence", "ContentTemplateSequence", "ContentDate", "ContentTime",
         "AcquisitionDate", "AcquisitionTime", "AcquisitionNumber", "ImageType", "Rows",
         "Columns", "NumberOfFrames", "BitsAllocated", "ImageComments", "CompletionFlag",
         "VerificationFlag"),
    _F: ("SimpleFrameList", "CalculatedFrameList", "TimeRange"),
}

_NATURAL_LEVEL: Final[Mapping[int, Level]] = {
    _t(kw): lv for lv, kws in _LEVEL_KEYWORDS.items() for kw in kws
}

# Elements that are not keys and may appear in any identifier of the operation.
_GENERAL_FIND: Final = frozenset(
    _t(k) for k in ("QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC",
                    "QueryRetrieveView", "RetrieveAETitle", "InstanceAvailability",
                    "StorageMediaFileSetID", "StorageMediaFileSetUID")
)
_GENERAL_RETRIEVE: Final = frozenset(
    _t(k) for k in ("QueryRetrieveLevel", "SpecificCharacterSet", "QueryRetrieveView")
)
# Composite Instance Root IMAGE requests may carry the study/series UIDs (PS3.17 LL.1).
_COMPOSITE_TOLERATED: Final = frozenset((_t("StudyInstanceUID"), _t("SeriesInstanceUID")))


def tag_name(tag: int) -> str:
    """``PatientID (0010,0020)``: keyword and tag, as every message names an element."""
    kw = keyword_for_tag(tag) or "Unknown"
    return f"{kw} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def model_for_sop_class(uid: str) -> tuple[QueryModel, Operation]:
    """The model and operation a Q/R SOP class UID selects; KeyError if it is not one."""
    try:
        return _BY_UID[uid.strip().rstrip("\0")]
    except KeyError:
        raise KeyError(f"{uid!r} is not a Query/Retrieve SOP class") from None


def sop_class(model: QueryModel, operation: Operation) -> str:
    """The SOP class UID of ``model`` for ``operation``; ValueError if the model lacks it."""
    uid = MODELS[model].uid(operation)
    if uid is None:
        raise ValueError(f"{model.name} has no {operation.value} SOP class")
    return uid


def parse_level(value: object) -> Level | None:
    """A Query/Retrieve Level value -> Level, lenient on case and padding (None if unknown)."""
    if not isinstance(value, str):
        return None
    try:
        return Level(value.strip(" \0").upper())
    except ValueError:
        return None


def key_level(tag: int, model: QueryModel) -> Level | None:
    """The level ``tag`` belongs to in ``model`` (None: unknown attribute)."""
    natural = _NATURAL_LEVEL.get(tag)
    if natural is None:
        return None
    info = MODELS[model]
    if info.model is QueryModel.COMPOSITE_INSTANCE_ROOT:
        return _F if natural is _F else _I
    if info.model is QueryModel.COMPOSITE_INSTANCE_WITHOUT_BULK:
        return _I  # one level: any other attribute is a non-unique key of it
    if info.patient_in_study and natural is _P:
        return _ST
    return natural


def keys_for(model: QueryModel, level: Level) -> Mapping[int, KeyType]:
    """Standard unique/required keys (and the known optional ones) of ``level`` in ``model``."""
    info = MODELS[model]
    if level not in info.levels:
        raise ValueError(f"{model.name} has no {level.value} level")
    out: dict[int, KeyType] = {}
    for tag in _NATURAL_LEVEL:
        if key_level(tag, model) is level:
            out[tag] = KeyType.OPTIONAL
    for kw in _REQUIRED.get(level, ()):
        out[_t(kw)] = KeyType.REQUIRED
    if info.patient_in_study and level is _ST:
        out[_t("PatientName")] = KeyType.REQUIRED
        out[_t("PatientID")] = KeyType.REQUIRED  # not unique in Study Root
    if level in UNIQUE_KEYS:
        out[UNIQUE_KEYS[level]] = KeyType.UNIQUE
    return out


def required_keys(model: QueryModel, level: Level) -> frozenset[int]:
    """Unique and required keys of ``level``: the ones an SCP must match and return."""
    return frozenset(t for t, k in keys_for(model, level).items() if k is not KeyType.OPTIONAL)


# ---------------------------------------------------------------------------------------------
# Presentation contexts and extended negotiation

DEFAULT_TRANSFER_SYNTAXES: Final = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True, slots=True)
class QrContext:
    """A presentation context an SCU should propose, with its 0x56 extended negotiation bytes
    (empty: send no sub-item)."""

    abstract_syntax: str
    model: QueryModel
    operation: Operation
    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES
    extended_negotiation: bytes = b""


def contexts_for(
    models: Iterable[QueryModel],
    operations: Iterable[Operation],
    *,
    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES,
    relational: bool = False,
) -> list[QrContext]:
    """One context per existing (model, operation) pair, in the given order, no duplicates.

    With ``relational`` the relational-queries/retrieval byte (byte 1) is proposed where it
    applies (not for the Composite Instance models, PS3.4 Y.5.1.1).
    """
    ops = list(dict.fromkeys(operations))
    out: list[QrContext] = []
    for model in dict.fromkeys(models):
        info = MODELS[model]
        for op in ops:
            uid = info.uid(op)
            if uid is None:
                continue
            ext = b"\x01" if relational and info.relational else b""
            out.append(QrContext(uid, model, op, tuple(transfer_syntaxes), ext))
    return out


def enhanced_accepted(accepted_info: bytes | None, operation: Operation) -> bool:
    """Whether the acceptor's 0x56 info agreed to Enhanced Multi-Frame Image Conversion: byte 5
    for C-FIND (PS3.4 C.5.1.1), byte 2 for C-MOVE/C-GET (C.5.2.1, C.5.3.1)."""
    index = 4 if operation is Operation.FIND else 1
    return accepted_info is not None and len(accepted_info) > index and accepted_info[index] == 1


def relational_accepted(accepted_info: bytes | None) -> bool:
    """Whether the acceptor's 0x56 info agreed to relational query/retrieval (byte 1 == 1)."""
    return accepted_info is not None and len(accepted_info) > 0 and accepted_info[0] == 1
