"""The pdu codec against PDUs captured from real peers (tests/fixtures/captured.py)."""

from __future__ import annotations

import pytest

import pdu
from tests.fixtures import capture
from tests.fixtures.captured import FIXTURES, Fixture, select

NAMES = sorted(FIXTURES)
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PSONLY_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


def _one(scenario: str, pdu_type: int, connection: str = "assoc") -> Fixture:
    found = select(scenario, pdu_type, connection)
    assert found, f"no fixture {scenario}/{connection} type {pdu_type}"
    return found[0]


def _decode(scenario: str, pdu_type: int, connection: str = "assoc") -> pdu.Pdu:
    return pdu.decode(_one(scenario, pdu_type, connection).data)


# --------------------------------------------------------------------------- every fixture


def test_fixture_set_is_complete() -> None:
    scenarios = {f.provenance.scenario for f in FIXTURES.values()}
    assert {"echoscu", "findscu_patient", "findscu_study", "findscu_psonly", "getscu",
            "movescu", "rejected", "aborted", "storescu_identity", "pynetdicom_scu",
            "pynetdicom_scp_echo", "pynetdicom_scp_store"} <= scenarios
    assert {f.pdu_type for f in FIXTURES.values()} == {1, 2, 3, 4, 5, 6, 7}


@pytest.mark.parametrize("name", NAMES)
def test_annotation_is_consistent(name: str) -> None:
    fixture = FIXTURES[name]
    data = fixture.data
    assert int.from_bytes(data[2:6], "big") == len(data) - 6
    assert fixture.provenance.date and fixture.provenance.command
    # The capture script's walker still produces exactly the stored ranges.
    assert [(raw.hex(), text) for raw, text in capture.annotate(data)] == list(fixture.ranges)


@pytest.mark.parametrize("name", NAMES)
def test_decode_encode_is_byte_exact(name: str) -> None:
    data = FIXTURES[name].data
    decoded = pdu.decode(data)
    assert pdu.encode(decoded) == data
    assert decoded.encode() == data


@pytest.mark.parametrize("name", NAMES)
def test_framer_whole_bytewise_and_with_trailing_partial(name: str) -> None:
    data = FIXTURES[name].data
    whole = pdu.PduFramer().feed(data)
    assert [pdu.encode(p) for p in whole] == [data]

    framer = pdu.PduFramer()
    got: list[pdu.Pdu] = []
    for i in range(len(data)):
        got.extend(framer.feed(data[i : i + 1]))
        if i < len(data) - 1:
            assert not got
    assert [pdu.encode(p) for p in got] == [data]
    assert framer.buffered == 0

    framer = pdu.PduFramer()
    tail = data[:5]
    out = framer.feed(data + tail)
    assert [pdu.encode(p) for p in out] == [data]
    assert framer.buffered == len(tail)
    assert [pdu.encode(p) for p in framer.feed(data[5:])] == [data]


def test_framer_splits_a_whole_session() -> None:
    fixtures = select("findscu_study")
    up = [f.data for f in fixtures if f.provenance.direction == "requestor->acceptor"]
    stream = b"".join(up)
    out = pdu.PduFramer().feed(stream)
    assert [pdu.encode(p) for p in out] == up


# --------------------------------------------------------------------------- per scenario


def test_echoscu_associate_rq() -> None:
    rq = _decode("echoscu", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    assert rq.called_ae == "QRSCP" and rq.calling_ae == "DCMTKSCU"
    assert rq.protocol_version == 1
    assert rq.application_context == APP_CONTEXT
    assert [(pc.context_id, pc.abstract_syntax) for pc in rq.presentation_contexts] == [
        (1, VERIFICATION)]
    assert "1.2.840.10008.1.2" in rq.presentation_contexts[0].transfer_syntaxes
    ui = rq.user_information
    assert ui.max_length == 16384
    assert ui.implementation_version_name is not None
    assert ui.implementation_version_name.startswith("OFFIS_DCMTK")
    assert ui.implementation_class_uid is not None
    assert ui.implementation_class_uid.startswith("1.2.276.0.7230010.3")


def test_echoscu_associate_ac_and_echo() -> None:
    ac = _decode("echoscu", 2)
    assert isinstance(ac, pdu.AAssociateAC)
    assert ac.called_ae == "QRSCP" and ac.calling_ae == "DCMTKSCU"
    (pc,) = ac.presentation_contexts
    assert (pc.context_id, pc.result) == (1, 0)
    assert pc.transfer_syntax is not None and pc.transfer_syntax.startswith("1.2.840.10008.1.2")
    assert ac.user_information.max_length == 16384
    rq_data, rsp_data = (pdu.decode(f.data) for f in select("echoscu", 4))
    for p, field in ((rq_data, b"\x30\x00"), (rsp_data, b"\x30\x80")):
        assert isinstance(p, pdu.PDataTF)
        (pdv,) = p.pdvs
        assert pdv.context_id == 1 and pdv.is_command and pdv.is_last
        assert b"\x00\x00\x00\x01\x02\x00\x00\x00" + field in bytes(pdv.data)  # CommandField
    assert isinstance(_decode("echoscu", 5), pdu.AReleaseRQ)
    assert isinstance(_decode("echoscu", 6), pdu.AReleaseRP)


@pytest.mark.parametrize(
    ("scenario", "sop_class"),
    [("findscu_patient", PATIENT_FIND), ("findscu_study", STUDY_FIND),
     ("findscu_psonly", PSONLY_FIND)],
)
def test_findscu_models(scenario: str, sop_class: str) -> None:
    rq = _decode(scenario, 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    assert rq.presentation_contexts[0].abstract_syntax == sop_class
    ac = _decode(scenario, 2)
    assert isinstance(ac, pdu.AAssociateAC)
    assert ac.presentation_contexts[0].result == 0
    datas = [pdu.decode(f.data) for f in select(scenario, 4)]
    assert all(isinstance(p, pdu.PDataTF) for p in datas)
    first = datas[0]
    assert isinstance(first, pdu.PDataTF)
    assert first.pdvs[0].is_command and first.pdvs[0].is_last
    identifier = datas[1]
    assert isinstance(identifier, pdu.PDataTF)
    assert not identifier.pdvs[0].is_command and identifier.pdvs[0].is_last


def test_getscu_proposes_scp_role_for_storage() -> None:
    rq = _decode("getscu", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    assert rq.presentation_contexts[0].abstract_syntax == STUDY_GET
    assert len(rq.presentation_contexts) > 100
    roles = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in rq.user_information.role_selections}
    assert roles[CT] == (0, 1)
    assert STUDY_GET not in roles
    ac = _decode("getscu", 2)
    assert isinstance(ac, pdu.AAssociateAC)
    answered = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in ac.user_information.role_selections}
    assert answered[CT] == (0, 1)
    assert {pc.context_id for pc in ac.presentation_contexts} == {
        pc.context_id for pc in rq.presentation_contexts}


def test_getscu_receives_c_store_sub_operation() -> None:
    stores = [pdu.decode(f.data) for f in select("getscu", 4)
              if f.provenance.direction == "acceptor->requestor"]
    commands = [p.pdvs[0] for p in stores if isinstance(p, pdu.PDataTF) and p.pdvs[0].is_command]
    # C-STORE-RQ (CommandField 0x0001) arrives from the acceptor on a storage context.
    assert any(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00" in bytes(pdv.data) for pdv in commands)


def test_movescu_and_its_sub_association() -> None:
    rq = _decode("movescu", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    assert STUDY_MOVE in {pc.abstract_syntax for pc in rq.presentation_contexts}
    sub = _decode("movescu", 1, "substore")
    assert isinstance(sub, pdu.AAssociateRQ)
    assert sub.called_ae == "STORESCP" and sub.calling_ae == "QRSCP"
    assert CT in {pc.abstract_syntax for pc in sub.presentation_contexts}
    sub_ac = _decode("movescu", 2, "substore")
    assert isinstance(sub_ac, pdu.AAssociateAC)
    assert any(pc.result == 0 for pc in sub_ac.presentation_contexts)
    assert isinstance(_decode("movescu", 5, "substore"), pdu.AReleaseRQ)


def test_rejected_called_ae() -> None:
    rq = _decode("rejected", 1)
    assert isinstance(rq, pdu.AAssociateRQ) and rq.called_ae == "WRONGAE"
    rj = _decode("rejected", 3)
    assert isinstance(rj, pdu.AAssociateRJ)
    assert (rj.result, rj.source, rj.reason) == (1, 1, 7)


def test_aborted_by_user() -> None:
    abort = _decode("aborted", 7)
    assert isinstance(abort, pdu.AAbort)
    assert (abort.source, abort.reason) == (0, 0)
    assert _one("aborted", 7).provenance.direction == "requestor->acceptor"


def test_pynetdicom_scu_negotiation_items() -> None:
    rq = _decode("pynetdicom_scu", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    ui = rq.user_information
    assert ui.implementation_version_name is not None
    assert ui.implementation_version_name.startswith("PYNETDICOM")
    assert ui.max_length == 16382
    assert [(e.sop_class_uid, bytes(e.application_info)) for e in ui.extended_negotiations] == [
        (STUDY_FIND, b"\x01\x01\x00")]
    (common,) = ui.common_extended_negotiations
    assert common.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1"
    assert common.service_class_uid == "1.2.840.10008.4.2"
    assert tuple(common.related_general_sop_classes) == (CT,)
    assert ui.async_ops_window is not None
    assert (ui.async_ops_window.invoked, ui.async_ops_window.performed) == (5, 3)
    ident = ui.user_identity
    assert isinstance(ident, pdu.UserIdentityRQ)
    assert ident.identity_type == 2 and ident.positive_response_requested
    assert bytes(ident.primary_field) == b"alice" and bytes(ident.secondary_field) == b"secret"


def test_storescu_user_identity_without_response() -> None:
    rq = _decode("storescu_identity", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    ident = rq.user_information.user_identity
    assert isinstance(ident, pdu.UserIdentityRQ)
    assert (ident.identity_type, ident.positive_response_requested) == (2, True)
    assert bytes(ident.primary_field) == b"alice"
    ac = _decode("storescu_identity", 2)
    assert isinstance(ac, pdu.AAssociateAC)
    assert ac.user_information.user_identity is None


def test_pynetdicom_scp_answers_dcmtk() -> None:
    ac = _decode("pynetdicom_scp_echo", 2)
    assert isinstance(ac, pdu.AAssociateAC)
    assert ac.user_information.implementation_version_name is not None
    assert ac.user_information.implementation_version_name.startswith("PYNETDICOM")
    assert ac.user_information.max_length == 16382
    rq = _decode("pynetdicom_scp_store", 1)
    assert isinstance(rq, pdu.AAssociateRQ)
    ident = rq.user_information.user_identity
    assert isinstance(ident, pdu.UserIdentityRQ) and ident.identity_type == 5
    store_ac = _decode("pynetdicom_scp_store", 2)
    assert isinstance(store_ac, pdu.AAssociateAC)
    response = store_ac.user_information.user_identity
    assert isinstance(response, pdu.UserIdentityAC)
    assert bytes(response.server_response) == b"token-for-alice"
