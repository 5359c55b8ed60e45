"""DIMSE message benchmarks: ours vs pynetdicom.

Run: python3 -m pytest benchmarks/bench_dimse.py --benchmark-enable -q

* ``find_rsp_pdata``: a pending C-FIND-RSP (command set + 13-element STUDY identifier, Explicit
  VR LE) from message objects to encoded P-DATA-TF bytes for a peer max PDU of 16384.
  Ours: ``dimse.codec.encode`` + ``commands.encode`` + ``assembly.fragment``. pynetdicom:
  ``dsutils.encode`` + ``C_FIND`` primitive -> ``C_FIND_RSP.primitive_to_message`` ->
  ``encode_msg(context_id, max_pdu)`` -> ``P_DATA_TF.from_primitive().encode()``.
* ``command_encode`` / ``command_decode``: the C-FIND-RSP command set alone (decode includes
  reading every value, since pydicom converts lazily).
* ``store_fragment``: a 4 MiB C-STORE data set fragmented for a 16 KiB peer.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import dsutils
from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu import P_DATA_TF

from dimse import codec, commands
from dimse.assembly import MessageAssembler, MessageReceived, fragment
from dimse.messages import CFindRSP, CStoreRQ
from pdu import decode as decode_pdu

TS = codec.EXPLICIT_VR_LE
MAX_PDU = 16384
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_KEYS: list[tuple[str, Any]] = [
    ("SpecificCharacterSet", "ISO_IR 100"), ("StudyDate", "20240131"), ("StudyTime", "101500"),
    ("AccessionNumber", "A123456"), ("QueryRetrieveLevel", "STUDY"),
    ("ModalitiesInStudy", ["CT", "SR"]), ("ReferringPhysicianName", "SMITH^ANNA"),
    ("StudyDescription", "CT THORAX WITH CONTRAST"), ("PatientName", "DOE^JOHN"),
    ("PatientID", "PID000123"), ("PatientBirthDate", "19700101"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.12345678901234567890"),
    ("NumberOfStudyRelatedInstances", "245"),
]
RSP = CFindRSP(message_id_being_responded_to=7, status=0xFF00, affected_sop_class_uid=FIND_MODEL,
               command_data_set_type=0x0001)


def study_identifier() -> Dataset:
    ds = Dataset()
    for keyword, value in STUDY_KEYS:
        setattr(ds, keyword, value)
    return ds


def ours_find_rsp(ds: Dataset) -> list[bytes]:
    identifier = codec.encode(ds, TS)
    return list(fragment(1, commands.encode(RSP), identifier, MAX_PDU))


def pynetdicom_find_rsp(ds: Dataset) -> list[bytes]:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = FIND_MODEL
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(dsutils.encode(ds, False, True))
    msg = C_FIND_RSP()
    msg.primitive_to_message(primitive)
    out = []
    for p_data in msg.encode_msg(1, MAX_PDU):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def _identifier_of(pdus: list[bytes]) -> tuple[Any, bytes | None]:
    assembler = MessageAssembler()
    (event,) = [e for p in pdus for e in assembler.feed_all(decode_pdu(p).pdvs)]  # type: ignore[union-attr]
    assert isinstance(event, MessageReceived)
    return event.message, event.dataset


def test_outputs_agree() -> None:
    """Both sides produce the same message and identifier (ours packs them in one PDU)."""
    ds = study_identifier()
    assert len(ds) == 13
    ours, theirs = ours_find_rsp(ds), pynetdicom_find_rsp(ds)
    assert len(ours) == 1 and len(theirs) == 2
    assert _identifier_of(ours) == _identifier_of(theirs)


@pytest.mark.benchmark(group="find_rsp_pdata")
def test_find_rsp_pdata_ours(benchmark: Any) -> None:
    ds = study_identifier()
    benchmark(ours_find_rsp, ds)


@pytest.mark.benchmark(group="find_rsp_pdata")
def test_find_rsp_pdata_pynetdicom(benchmark: Any) -> None:
    ds = study_identifier()
    benchmark(pynetdicom_find_rsp, ds)


def _pynetdicom_command_set() -> Dataset:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = FIND_MODEL
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(b"\x00\x00")
    msg = C_FIND_RSP()
    msg.primitive_to_message(primitive)
    return msg.command_set


@pytest.mark.benchmark(group="command_encode")
def test_command_encode_ours(benchmark: Any) -> None:
    benchmark(commands.encode, RSP)


@pytest.mark.benchmark(group="command_encode")
def test_command_encode_pynetdicom(benchmark: Any) -> None:
    command_set = _pynetdicom_command_set()
    assert dsutils.encode(command_set, True, True) == commands.encode(RSP)
    benchmark(dsutils.encode, command_set, True, True)


@pytest.mark.benchmark(group="command_decode")
def test_command_decode_ours(benchmark: Any) -> None:
    data = commands.encode(RSP)
    assert benchmark(commands.decode, data) == RSP


@pytest.mark.benchmark(group="command_decode")
def test_command_decode_pynetdicom(benchmark: Any) -> None:
    data = commands.encode(RSP)
    keywords = ("AffectedSOPClassUID", "CommandField", "MessageIDBeingRespondedTo",
                "CommandDataSetType", "Status")

    def run() -> list[Any]:
        ds = dsutils.decode(BytesIO(data), True, True)
        return [getattr(ds, k) for k in keywords]

    assert benchmark(run)[4] == 0xFF00


STORE = CStoreRQ(message_id=3, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                 affected_sop_instance_uid="1.2.3.4")
BIG = bytes(4 << 20)


@pytest.mark.benchmark(group="store_fragment")
def test_store_fragment_ours(benchmark: Any) -> None:
    benchmark(lambda: list(fragment(1, commands.encode(STORE), BIG, MAX_PDU, coalesce=False)))


@pytest.mark.benchmark(group="store_fragment")
def test_store_fragment_pynetdicom(benchmark: Any) -> None:
    def run() -> list[bytes]:
        primitive = C_STORE()
        primitive.MessageID = 3
        primitive.AffectedSOPClassUID = STORE.affected_sop_class_uid
        primitive.AffectedSOPInstanceUID = "1.2.3.4"
        primitive.Priority = 0
        primitive.DataSet = BytesIO(BIG)
        msg = C_STORE_RQ()
        msg.primitive_to_message(primitive)
        out = []
        for p_data in msg.encode_msg(1, MAX_PDU):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            out.append(pdu.encode())
        return out

    benchmark(run)
