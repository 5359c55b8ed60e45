"""DIMSE-C messages (PS3.7 section 9.3) and the one table of message specs.

:data:`SPECS` is the single source of truth: for every command field it lists which group-0000
elements the message has (mandatory, conditional or user-optional) and whether a data set
follows. The codec in :mod:`dimse.commands` is driven by it, and an import-time check makes sure
every message dataclass has exactly the attributes its spec names.

Messages are frozen, slotted, keyword-only dataclasses; attribute names are the snake_case
form of the PS3.7 keywords. ``None`` means "element absent". ``unexpected`` holds elements a
decoded command set carried that its spec does not list, as ``(tag, raw value)`` pairs; it is not
encoded and not compared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import ClassVar

__all__ = [
    "DATASET_PRESENT",
    "ELEMENTS",
    "MESSAGE_TYPES",
    "NO_DATASET",
    "SPECS",
    "VERIFICATION_SOP_CLASS",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "CommandField",
    "DataSetRule",
    "Element",
    "Message",
    "MessageSpec",
    "Presence",
    "Priority",
    "Request",
    "Response",
    "VR",
]

#: CommandDataSetType value meaning "no data set follows" (PS3.7 E.1-1). Any other value means one
#: follows; receivers must test ``!= NO_DATASET``.
NO_DATASET = 0x0101
#: What we send when a data set follows (the value DCMTK and pynetdicom send).
DATASET_PRESENT = 0x0001
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


class CommandField(IntEnum):
    """(0000,0100) values of DIMSE-C; a response is its request with bit 15 set."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    C_CANCEL_RQ = 0x0FFF


class Priority(IntEnum):
    """(0000,0700) Priority."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


class VR(Enum):
    """The value representations used in DIMSE-C command sets."""

    UL = "UL"
    US = "US"
    UI = "UI"
    AE = "AE"
    LO = "LO"
    AT = "AT"


@dataclass(frozen=True, slots=True)
class Element:
    """A group-0000 element: its tag, PS3.7 keyword, message attribute name and VR."""

    tag: int
    keyword: str
    attr: str
    vr: VR


#: Every command element a DIMSE-C message can carry, by tag.
ELEMENTS: dict[int, Element] = {
    e.tag: e
    for e in (
        Element(0x00000000, "CommandGroupLength", "", VR.UL),
        Element(0x00000002, "AffectedSOPClassUID", "affected_sop_class_uid", VR.UI),
        Element(0x00000100, "CommandField", "", VR.US),
        Element(0x00000110, "MessageID", "message_id", VR.US),
        Element(0x00000120, "MessageIDBeingRespondedTo", "message_id_being_responded_to", VR.US),
        Element(0x00000600, "MoveDestination", "move_destination", VR.AE),
        Element(0x00000700, "Priority", "priority", VR.US),
        Element(0x00000800, "CommandDataSetType", "command_data_set_type", VR.US),
        Element(0x00000900, "Status", "status", VR.US),
        Element(0x00000901, "OffendingElement", "offending_element", VR.AT),
        Element(0x00000902, "ErrorComment", "error_comment", VR.LO),
        Element(0x00001000, "AffectedSOPInstanceUID", "affected_sop_instance_uid", VR.UI),
        Element(0x00001020, "NumberOfRemainingSuboperations",
                "number_of_remaining_suboperations", VR.US),
        Element(0x00001021, "NumberOfCompletedSuboperations",
                "number_of_completed_suboperations", VR.US),
        Element(0x00001022, "NumberOfFailedSuboperations",
                "number_of_failed_suboperations", VR.US),
        Element(0x00001023, "NumberOfWarningSuboperations",
                "number_of_warning_suboperations", VR.US),
        Element(0x00001030, "MoveOriginatorApplicationEntityTitle",
                "move_originator_ae_title", VR.AE),
        Element(0x00001031, "MoveOriginatorMessageID", "move_originator_message_id", VR.US),
    )
}


class Presence(Enum):
    """PS3.7 usage of an element in a message: M, C or U."""

    MANDATORY = "M"
    CONDITIONAL = "C"
    OPTIONAL = "U"


class DataSetRule(Enum):
    """Whether a data set follows the command set."""

    NEVER = "never"
    REQUIRED = "required"
    CONDITIONAL = "conditional"


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One row of the message table: what a message with this command field contains.

    ``fields`` excludes CommandGroupLength and CommandField (always present, handled by the
    codec) and is sorted by tag, which is the encoding order.
    """

    command_field: CommandField
    name: str
    fields: tuple[tuple[int, Presence], ...]
    dataset: DataSetRule

    @property
    def mandatory(self) -> tuple[int, ...]:
        return tuple(t for t, p in self.fields if p is Presence.MANDATORY)

    @property
    def conditional(self) -> tuple[int, ...]:
        return tuple(t for t, p in self.fields if p is Presence.CONDITIONAL)

    @property
    def optional(self) -> tuple[int, ...]:
        return tuple(t for t, p in self.fields if p is Presence.OPTIONAL)

    @property
    def attrs(self) -> tuple[str, ...]:
        return tuple(ELEMENTS[t].attr for t, _ in self.fields)


M, C, U = Presence.MANDATORY, Presence.CONDITIONAL, Presence.OPTIONAL
_CLASS_UID, _MSG_ID, _RSP_ID = 0x00000002, 0x00000110, 0x00000120
_DEST, _PRIO, _DSTYPE, _STATUS = 0x00000600, 0x00000700, 0x00000800, 0x00000900
_OFFENDING, _COMMENT, _INSTANCE = 0x00000901, 0x00000902, 0x00001000
_COUNTERS = ((0x00001020, C), (0x00001021, C), (0x00001022, C), (0x00001023, C))
_ORIGINATOR = ((0x00001030, U), (0x00001031, U))
_RQ = ((_CLASS_UID, M), (_MSG_ID, M), (_PRIO, M), (_DSTYPE, M))
_RSP = ((_CLASS_UID, U), (_RSP_ID, M), (_DSTYPE, M), (_STATUS, M))
_ERRORS = ((_OFFENDING, C), (_COMMENT, C))


def _spec(cf: CommandField, name: str, fields: tuple[tuple[int, Presence], ...],
          dataset: DataSetRule) -> MessageSpec:
    return MessageSpec(cf, name, tuple(sorted(fields)), dataset)


#: THE message table (PS3.7 Tables 9.3-1 .. 9.3-13 and 9.3-11 for C-CANCEL).
SPECS: dict[int, MessageSpec] = {
    s.command_field: s
    for s in (
        _spec(CommandField.C_ECHO_RQ, "C-ECHO-RQ",
              ((_CLASS_UID, M), (_MSG_ID, M), (_DSTYPE, M)), DataSetRule.NEVER),
        _spec(CommandField.C_ECHO_RSP, "C-ECHO-RSP",
              (*_RSP, (_COMMENT, C)), DataSetRule.NEVER),
        _spec(CommandField.C_STORE_RQ, "C-STORE-RQ",
              (*_RQ, (_INSTANCE, M), *_ORIGINATOR), DataSetRule.REQUIRED),
        _spec(CommandField.C_STORE_RSP, "C-STORE-RSP",
              (*_RSP, *_ERRORS, (_INSTANCE, U)), DataSetRule.NEVER),
        _spec(CommandField.C_FIND_RQ, "C-FIND-RQ", _RQ, DataSetRule.REQUIRED),
        _spec(CommandField.C_FIND_RSP, "C-FIND-RSP", (*_RSP, *_ERRORS), DataSetRule.CONDITIONAL),
        _spec(CommandField.C_GET_RQ, "C-GET-RQ", _RQ, DataSetRule.REQUIRED),
        _spec(CommandField.C_GET_RSP, "C-GET-RSP",
              (*_RSP, *_ERRORS, *_COUNTERS), DataSetRule.CONDITIONAL),
        _spec(CommandField.C_MOVE_RQ, "C-MOVE-RQ", (*_RQ, (_DEST, M)), DataSetRule.REQUIRED),
        _spec(CommandField.C_MOVE_RSP, "C-MOVE-RSP",
              (*_RSP, *_ERRORS, *_COUNTERS), DataSetRule.CONDITIONAL),
        _spec(CommandField.C_CANCEL_RQ, "C-CANCEL-RQ",
              ((_RSP_ID, M), (_DSTYPE, M)), DataSetRule.NEVER),
    )
}

Unexpected = tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class _Base:
    """Behaviour shared by every message (no fields of its own)."""

    command_field: ClassVar[CommandField]

    @property
    def spec(self) -> MessageSpec:
        return SPECS[self.command_field]

    @property
    def has_dataset(self) -> bool:
        """True when CommandDataSetType says a data set follows (``!= 0x0101``)."""
        return getattr(self, "command_data_set_type") != NO_DATASET  # noqa: B009

    @property
    def is_request(self) -> bool:
        return not self.command_field & 0x8000


@dataclass(frozen=True, slots=True, kw_only=True)
class CEchoRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_ECHO_RQ
    message_id: int
    affected_sop_class_uid: str = VERIFICATION_SOP_CLASS
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CEchoRSP(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_ECHO_RSP
    message_id_being_responded_to: int
    status: int = 0x0000
    affected_sop_class_uid: str | None = VERIFICATION_SOP_CLASS
    error_comment: str | None = None
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CStoreRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_STORE_RQ
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = Priority.MEDIUM
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None
    command_data_set_type: int = DATASET_PRESENT
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CStoreRSP(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_STORE_RSP
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CFindRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_FIND_RQ
    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM
    command_data_set_type: int = DATASET_PRESENT
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CFindRSP(_Base):
    """C-FIND-RSP; a Pending response carries an identifier: set ``command_data_set_type``."""

    command_field: ClassVar[CommandField] = CommandField.C_FIND_RSP
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CGetRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_GET_RQ
    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM
    command_data_set_type: int = DATASET_PRESENT
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CGetRSP(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_GET_RSP
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CMoveRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_MOVE_RQ
    message_id: int
    affected_sop_class_uid: str
    move_destination: str
    priority: int = Priority.MEDIUM
    command_data_set_type: int = DATASET_PRESENT
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CMoveRSP(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_MOVE_RSP
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CCancelRQ(_Base):
    command_field: ClassVar[CommandField] = CommandField.C_CANCEL_RQ
    message_id_being_responded_to: int
    command_data_set_type: int = NO_DATASET
    unexpected: Unexpected = field(default=(), compare=False, repr=False)


Request = CEchoRQ | CStoreRQ | CFindRQ | CGetRQ | CMoveRQ | CCancelRQ
Response = CEchoRSP | CStoreRSP | CFindRSP | CGetRSP | CMoveRSP
Message = Request | Response

#: Command field -> message class.
MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.command_field: cls
    for cls in (CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, CFindRQ, CFindRSP, CGetRQ, CGetRSP,
                CMoveRQ, CMoveRSP, CCancelRQ)
}


def _check_table() -> None:
    """Fail at import if a message class and its spec disagree (keeps the table authoritative)."""
    if set(MESSAGE_TYPES) != set(SPECS):
        raise RuntimeError("MESSAGE_TYPES and SPECS list different command fields")
    for cf, cls in MESSAGE_TYPES.items():
        names = {f.name for f in dataclasses.fields(cls)} - {"unexpected"}
        if names != set(SPECS[cf].attrs):
            raise RuntimeError(f"{cls.__name__} fields {sorted(names)} != spec "
                               f"{sorted(SPECS[cf].attrs)}")


_check_table()
