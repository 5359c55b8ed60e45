"""The message table and the message dataclasses agree with PS3.7 (dimse.md sections 2-3)."""

from __future__ import annotations

import dataclasses

import pytest

from dimse.messages import (
    DATASET_PRESENT,
    ELEMENTS,
    MESSAGE_TYPES,
    NO_DATASET,
    SPECS,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CommandField,
    CStoreRQ,
    DataSetRule,
    Presence,
    Priority,
)

M, C, U = Presence.MANDATORY, Presence.CONDITIONAL, Presence.OPTIONAL

# An independent transcription of PS3.7 9.3 (keyword -> usage) to check the table against.
EXPECTED = {
    0x0030: ({"AffectedSOPClassUID": M, "MessageID": M, "CommandDataSetType": M}, "never"),
    0x8030: ({"AffectedSOPClassUID": U, "MessageIDBeingRespondedTo": M, "CommandDataSetType": M,
              "Status": M, "ErrorComment": C}, "never"),
    0x0001: ({"AffectedSOPClassUID": M, "MessageID": M, "Priority": M, "CommandDataSetType": M,
              "AffectedSOPInstanceUID": M, "MoveOriginatorApplicationEntityTitle": U,
              "MoveOriginatorMessageID": U}, "required"),
    0x8001: ({"AffectedSOPClassUID": U, "MessageIDBeingRespondedTo": M, "CommandDataSetType": M,
              "Status": M, "OffendingElement": C, "ErrorComment": C,
              "AffectedSOPInstanceUID": U}, "never"),
    0x0020: ({"AffectedSOPClassUID": M, "MessageID": M, "Priority": M,
              "CommandDataSetType": M}, "required"),
    0x8020: ({"AffectedSOPClassUID": U, "MessageIDBeingRespondedTo": M, "CommandDataSetType": M,
              "Status": M, "OffendingElement": C, "ErrorComment": C}, "conditional"),
    0x0010: ({"AffectedSOPClassUID": M, "MessageID": M, "Priority": M,
              "CommandDataSetType": M}, "required"),
    0x0021: ({"AffectedSOPClassUID": M, "MessageID": M, "Priority": M, "CommandDataSetType": M,
              "MoveDestination": M}, "required"),
    0x0FFF: ({"MessageIDBeingRespondedTo": M, "CommandDataSetType": M}, "never"),
}
_RETRIEVE_RSP = ({"AffectedSOPClassUID": U, "MessageIDBeingRespondedTo": M,
                  "CommandDataSetType": M, "Status": M, "OffendingElement": C, "ErrorComment": C,
                  "NumberOfRemainingSuboperations": C, "NumberOfCompletedSuboperations": C,
                  "NumberOfFailedSuboperations": C, "NumberOfWarningSuboperations": C},
                 "conditional")
EXPECTED[0x8010] = _RETRIEVE_RSP
EXPECTED[0x8021] = _RETRIEVE_RSP


@pytest.mark.parametrize("cf", sorted(EXPECTED))
def test_spec_table_matches_ps37(cf: int) -> None:
    fields, dataset = EXPECTED[cf]
    spec = SPECS[cf]
    assert {ELEMENTS[t].keyword: p for t, p in spec.fields} == fields
    assert spec.dataset is DataSetRule(dataset)
    assert [t for t, _ in spec.fields] == sorted(t for t, _ in spec.fields)
    assert set(spec.mandatory) | set(spec.conditional) | set(spec.optional) == {
        t for t, _ in spec.fields}


def test_every_command_field_has_a_class_and_response_bit() -> None:
    assert set(SPECS) == set(MESSAGE_TYPES) == set(CommandField)
    for cf, cls in MESSAGE_TYPES.items():
        assert cls.command_field == cf
        assert SPECS[cf].name.endswith("-RQ") == (not cf & 0x8000)
        if cf & 0x8000:
            assert cf & 0x7FFF in SPECS


def test_defaults_and_has_dataset() -> None:
    echo = CEchoRQ(message_id=1)
    assert echo.affected_sop_class_uid == "1.2.840.10008.1.1"
    assert not echo.has_dataset and echo.is_request
    assert CEchoRSP(message_id_being_responded_to=1).status == 0
    store = CStoreRQ(message_id=2, affected_sop_class_uid="1.2", affected_sop_instance_uid="1.3")
    assert store.has_dataset and store.priority is Priority.MEDIUM
    assert store.command_data_set_type == DATASET_PRESENT
    rsp = CFindRSP(message_id_being_responded_to=2, status=0xFF00)
    assert not rsp.has_dataset and not rsp.is_request
    pending = dataclasses.replace(rsp, command_data_set_type=DATASET_PRESENT)
    assert pending.has_dataset
    for odd in (0x0000, 0x0102, 0xFEFE, 0xFFFF):
        assert dataclasses.replace(rsp, command_data_set_type=odd).has_dataset
    assert dataclasses.replace(rsp, command_data_set_type=NO_DATASET) == rsp
    assert CCancelRQ(message_id_being_responded_to=5).spec.name == "C-CANCEL-RQ"


def test_messages_are_frozen_slotted_keyword_only() -> None:
    msg = CMoveRQ(message_id=1, affected_sop_class_uid="1.2", move_destination="DEST")
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.message_id = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    with pytest.raises(TypeError):
        CFindRQ(1, "1.2")  # type: ignore[misc]


def test_unexpected_is_not_compared() -> None:
    a = CGetRSP(message_id_being_responded_to=1, status=0)
    b = CGetRSP(message_id_being_responded_to=1, status=0, unexpected=((0x00000903, b"\x01\x00"),))
    assert a == b
    assert CMoveRSP(message_id_being_responded_to=1, status=0) != a
