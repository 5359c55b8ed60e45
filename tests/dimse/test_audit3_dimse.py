"""Third audit, DIMSE layer: what a peer's odd but legal (or merely unknown) input gets.

* A DS or IS value that is no number (``72,5``, ``abc``) is kept as text, as pydicom keeps it,
  instead of making the whole data set undecodable (a lost C-FIND match, a 0xC000 answer).
* An item or delimiter tag (FFFE,xxxx) is never written as a data element.
* A C-ECHO on a context that is not Verification's is refused with 0x0122, as a C-FIND on the
  wrong context already was.
* A request of a command field we do not know (N-GET, N-SET, ...) is answered with 0x0211
  "unrecognized operation" (PS3.7), its data set read and dropped, instead of an A-ABORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import warnings
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from dimse import codec, commands
from dimse.assembly import MessageAssembler, MessageReceived, UnrecognizedRequest
from dimse.association import Association
from dimse.connect import connect
from dimse.errors import CommandDecodeError, DataSetDecodeError, DataSetEncodeError
from dimse.messages import CEchoRQ, CEchoRSP
from dimse.server import Server
from dimse.services import HandlerRegistry
from dimse.template import IdentifierTemplate
from pdu.pdus import PresentationDataValue
from tests.peers import settle_pynetdicom

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
SYNTAXES = [codec.IMPLICIT_VR_LE, codec.EXPLICIT_VR_LE, codec.EXPLICIT_VR_BE]
pytestmark = pytest.mark.timeout(60)

NOT_NUMBERS = ["abc", "1,5", "72,5", "1.5e", "0x10", "1.0 2.0", "nan", "1.5\\abc", "inf"]


def element(tag: int, vr: str, value: bytes, uid: str) -> bytes:
    little = uid != codec.EXPLICIT_VR_BE
    e = "<" if little else ">"
    if len(value) & 1:
        value += b" "
    if uid == codec.IMPLICIT_VR_LE:
        return struct.pack(e + "HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    return struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def pydicom_values(data: bytes, uid: str) -> dict[int, Any]:
    ds = read_dataset(DicomBytesIO(data), uid == codec.IMPLICIT_VR_LE,
                      uid != codec.EXPLICIT_VR_BE)
    return {int(e.tag): e.value for e in ds}


@pytest.mark.parametrize("uid", SYNTAXES)
@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_invalid_ds_and_is_values_are_kept_as_pydicom_keeps_them(uid: str, text: str) -> None:
    data = (element(0x00100020, "LO", b"PID", uid)
            + element(0x00101030, "DS", text.encode(), uid)
            + element(0x00201208, "IS", text.encode(), uid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = codec.decode(data, uid)
        try:
            theirs: dict[int, Any] | None = pydicom_values(data, uid)
        except Exception:  # pydicom cannot hold IS 'inf': we keep the text
            theirs = None
    assert ours.PatientID == "PID"
    for tag in (0x00101030, 0x00201208):
        value = ours[tag].value
        if theirs is not None:
            assert str(value) == str(theirs[tag])  # str: DS 'nan' is not equal to itself
            assert type(value) is type(theirs[tag])
        else:
            assert value == text


def test_valid_numbers_still_take_the_fast_path() -> None:
    data = (element(0x00101030, "DS", b"72.5", codec.EXPLICIT_VR_LE)
            + element(0x00201208, "IS", b"12", codec.EXPLICIT_VR_LE))
    ds = codec.decode(data, codec.EXPLICIT_VR_LE)
    assert ds.PatientWeight == 72.5 and ds.NumberOfStudyRelatedInstances == 12


def test_undecodable_text_in_a_number_is_still_a_typed_error() -> None:
    data = element(0x00101030, "DS", b"\xff\xfe", codec.EXPLICIT_VR_LE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = codec.decode(data, codec.EXPLICIT_VR_LE).PatientWeight
        except DataSetDecodeError as exc:
            assert "(0010,1030)" in str(exc)
        else:
            assert value is not None


@pytest.mark.parametrize("uid", [codec.IMPLICIT_VR_LE, codec.EXPLICIT_VR_LE])
@pytest.mark.parametrize("tag", [0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD])
def test_item_and_delimiter_tags_are_not_encoded_as_elements(uid: str, tag: int) -> None:
    ds = Dataset()
    ds.PatientID = "X"
    ds.add(DataElement(tag, "UN", b""))
    with pytest.raises(DataSetEncodeError, match="item or delimiter") as info:
        codec.encode(ds, uid)
    assert info.value.tag == tag
    with pytest.raises(ValueError, match="item or delimiter"):
        IdentifierTemplate([(tag, "UN"), "PatientID"], uid)


def test_a_private_group_after_the_last_standard_one_still_encodes() -> None:
    ds = Dataset()
    ds.PatientID = "X"
    ds.add_new(0xFFFD0010, "LO", "CREATOR")
    assert codec.decode(codec.encode(ds, codec.EXPLICIT_VR_LE),
                        codec.EXPLICIT_VR_LE)[0xFFFD0010].value == "CREATOR"


# --------------------------------------------------------------------------- C-ECHO context


@contextlib.asynccontextmanager
async def ct_and_echo(registry: HandlerRegistry) -> AsyncIterator[Association]:
    """An association with ``registry``'s server proposing CT storage and Verification."""
    registry.on_store(lambda rq, ds, ctx: 0)
    async with Server("SRV", handlers=registry) as server, connect(
            "127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT, VERIFICATION],
            dimse_timeout=10) as assoc:
        yield assoc


async def echo_on_ct(assoc: Association) -> CEchoRSP:
    rsp, _ = await assoc.request(assoc.context_for(CT), lambda mid: CEchoRQ(message_id=mid))
    return cast(CEchoRSP, rsp)


async def test_echo_on_another_sop_class_context_is_refused() -> None:
    async with ct_and_echo(HandlerRegistry()) as assoc:
        rsp = await echo_on_ct(assoc)
        assert cast(CEchoRSP, rsp).status == 0x0122
        assert "presentation context" in (cast(CEchoRSP, rsp).error_comment or "")
        assert await assoc.echo() == 0  # the association is still fine


async def test_async_echo_handler_is_refused_on_the_wrong_context_too() -> None:
    calls: list[int] = []

    async def on_echo(rq: CEchoRQ, ctx: Any) -> int:
        calls.append(rq.message_id)
        return 0

    registry = HandlerRegistry()
    registry.on_echo(on_echo)
    async with ct_and_echo(registry) as assoc:
        rsp = await echo_on_ct(assoc)
        assert cast(CEchoRSP, rsp).status == 0x0122
        assert calls == []
        assert await assoc.echo() == 0
        assert len(calls) == 1


# --------------------------------------------------------------------------- unknown commands


def command_set(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def us(value: int) -> bytes:
    return struct.pack("<H", value)


N_GET = command_set((0x0003, VERIFICATION.encode() + b"\0"), (0x0100, us(0x0110)),
                    (0x0110, us(7)), (0x0800, us(0x0101)))
N_SET = command_set((0x0003, VERIFICATION.encode() + b"\0"), (0x0100, us(0x0120)),
                    (0x0110, us(8)), (0x0800, us(0x0000)))


def pdv(data: bytes, control: int, context_id: int = 1) -> PresentationDataValue:
    return PresentationDataValue(context_id, control, data)


def test_unknown_request_without_data_set_is_one_event() -> None:
    event = MessageAssembler().feed(pdv(N_GET, 0x03))
    assert event == UnrecognizedRequest(1, 0x0110, 7, VERIFICATION)


def test_unknown_request_with_data_set_is_answered_after_the_data() -> None:
    assembler = MessageAssembler(max_dataset_length=100)
    assert assembler.feed(pdv(N_SET, 0x03)) is None
    assert assembler.in_progress
    assert assembler.feed(pdv(b"\0" * 50, 0x00)) is None
    assert assembler.feed(pdv(b"\0" * 40, 0x02)) == UnrecognizedRequest(1, 0x0120, 8,
                                                                        VERIFICATION)
    assert not assembler.in_progress
    echo = commands.encode(CEchoRQ(message_id=9))  # and the next message is read normally
    event = assembler.feed(pdv(echo, 0x03))
    assert isinstance(event, MessageReceived) and event.message == CEchoRQ(message_id=9)


def test_a_skipped_data_set_is_still_bounded() -> None:
    assembler = MessageAssembler(max_dataset_length=100)
    assembler.feed(pdv(N_SET, 0x03))
    with pytest.raises(Exception, match="exceeds 100 bytes"):
        assembler.feed(pdv(b"\0" * 102, 0x00))


@pytest.mark.parametrize("command", [
    command_set((0x0100, us(0x9234)), (0x0120, us(7)), (0x0800, us(0x0101))),  # a response
    command_set((0x0100, us(0x0110)), (0x0800, us(0x0101))),  # no MessageID
    command_set((0x0100, us(0x0110)), (0x0110, us(7))),  # no CommandDataSetType
], ids=["response", "no-message-id", "no-data-set-type"])
def test_unanswerable_unknown_commands_stay_protocol_errors(command: bytes) -> None:
    with pytest.raises(CommandDecodeError, match="unknown command field"):
        MessageAssembler().feed(pdv(command, 0x03))


def test_unrecognized_response_is_a_well_formed_command_set() -> None:
    data = commands.encode_unrecognized(0x0110, 7, VERIFICATION)
    ds = read_dataset(DicomBytesIO(data), True, True)
    assert ds[0x00000000].value == len(data) - 12
    assert ds.AffectedSOPClassUID == VERIFICATION
    assert ds.CommandField == 0x8110
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.CommandDataSetType == 0x0101
    assert ds.Status == 0x0211
    bare = read_dataset(DicomBytesIO(commands.encode_unrecognized(0x1234, 65535, None)),
                        True, True)
    assert "AffectedSOPClassUID" not in bare and bare.CommandField == 0x9234


async def test_pynetdicom_n_get_and_n_set_get_unrecognized_operation() -> None:
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE

    def client(port: int) -> list[int]:
        ae = AE(ae_title="PYNETSCU")
        ae.add_requested_context(VERIFICATION)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, ae_title="SRV")
        assert assoc.is_established
        try:
            got, _ = assoc.send_n_get([0x00100010], VERIFICATION, "1.2.3.4")
            settle_pynetdicom()
            mod = Dataset()
            mod.PatientName = "X"
            put, _ = assoc.send_n_set(mod, VERIFICATION, "1.2.3.4")
            settle_pynetdicom()
            echo = assoc.send_c_echo()
            return [int(got.Status), int(put.Status), int(echo.Status)]
        finally:
            assoc.release()

    async with Server("SRV") as server:
        statuses = await asyncio.wait_for(asyncio.to_thread(client, server.port), 50)
    assert statuses == [0x0211, 0x0211, 0x0000]


@pytest.mark.parametrize("uid", SYNTAXES)
@pytest.mark.parametrize("values", [["  ", "  ", "  "], ["    ", " 1.5 ", " 12 "],
                                    ["1.2\\1.3 ", " 1\\  ", "  \\3"]])
def test_template_writes_numbers_and_uids_as_codec_encode(uid: str, values: list[str]) -> None:
    """All-space IS/DS values stay as they are (pydicom keeps them), others are stripped."""
    keys = ["StudyInstanceUID", "PatientWeight", "NumberOfStudyRelatedInstances"]
    ds = Dataset()
    for key, value in zip(keys, values, strict=True):
        setattr(ds, key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = codec.encode(ds, uid)
        assert IdentifierTemplate(keys, uid).encode(values) == expected
        assert IdentifierTemplate(keys, uid).encode([[v] if "\\" not in v else v.split("\\")
                                                     for v in values]) == expected


def test_an_unreadable_affected_sop_class_falls_back_to_the_requested_one() -> None:
    command = command_set((0x0002, b"\xff\xfe"), (0x0003, VERIFICATION.encode() + b"\0"),
                          (0x0100, us(0x0110)), (0x0110, us(7)), (0x0800, us(0x0101)))
    assert MessageAssembler().feed(pdv(command, 0x03)) == UnrecognizedRequest(
        1, 0x0110, 7, VERIFICATION)
