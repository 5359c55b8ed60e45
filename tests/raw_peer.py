"""A raw-socket stand-in for a DICOM peer: sends captured or hand-made bytes to one of our
servers and reads back whole PDUs and DIMSE messages, every wait bounded. Splitting into PDUs
uses only the 6-byte header, so it does not depend on the pdu package under test; decoding the
answers does."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from pydicom import Dataset
from pydicom.data import get_testdata_file

import pdu
from dimse import commands
from dimse.archive import Archive
from dimse.messages import CStoreRQ
from dimse.qr_scp import FindRequest, qr_server_contexts, register_find
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet
from tests import recorder

_HEADER = struct.Struct(">BxL")
#: An A-RELEASE-RQ (PS3.8 9.3.6), as every peer sends it.
RELEASE_RQ = bytes.fromhex("05000000000400000000")


def results(ac: pdu.AAssociateAC) -> dict[int, int]:
    """Each presentation context's result in an A-ASSOCIATE-AC, by context ID."""
    return {pc.context_id: pc.result for pc in ac.presentation_contexts}


def archive_with_ct_small(folder: Path) -> Archive:
    """A new archive folder holding pydicom's CT_small.dcm, indexed."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    folder.mkdir()
    shutil.copy(source, folder / "CT_small.dcm")
    archive = Archive(folder)
    archive.index()
    return archive


def split_pdus(data: bytes) -> list[bytes]:
    """Cut a captured byte stream into whole PDUs (:func:`tests.recorder.split_pdus`), which
    must use it all: a capture ends on a PDU boundary."""
    pdus = recorder.split_pdus(data)
    assert sum(map(len, pdus)) == len(data)
    return pdus


class RawPeer:
    """Sends bytes, reads whole PDUs and messages (each wait at most ``timeout`` seconds)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = 5.0) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0) -> RawPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                timeout)
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def pdu(self) -> bytes:
        header = await asyncio.wait_for(self.reader.readexactly(6), self.timeout)
        _type, length = _HEADER.unpack(header)
        return header + await asyncio.wait_for(self.reader.readexactly(length), self.timeout)

    async def associate(self, rq: bytes) -> pdu.AAssociateAC:
        await self.send(rq)
        ac = pdu.decode(await self.pdu())
        assert isinstance(ac, pdu.AAssociateAC), ac
        return ac

    async def message(self) -> tuple[object, bytes | None]:
        """The next DIMSE message: (decoded command, data set bytes or None)."""
        parts: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}
        command = None
        while True:
            p = pdu.decode(await self.pdu())
            assert isinstance(p, pdu.PDataTF), p
            for pdv in p.pdvs:
                parts[pdv.is_command].extend(bytes(pdv.data))
                if pdv.is_command and pdv.is_last:
                    command = commands.decode(bytes(parts[True]))
                    if command.command_data_set_type == 0x0101:
                        return command, None
                elif not pdv.is_command and pdv.is_last:
                    assert command is not None
                    return command, bytes(parts[False])

    async def release(self) -> None:
        await self.send(RELEASE_RQ)
        assert isinstance(pdu.decode(await self.pdu()), pdu.AReleaseRP)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def store_server(ae: str, stored: list[tuple[CStoreRQ, ReceivedDataSet]]) -> Server:
    """A storage SCP that keeps each C-STORE request and data set in ``stored``, answering 0."""
    def on_store(rq: CStoreRQ, dataset: ReceivedDataSet, ctx: object) -> int:
        stored.append((rq, dataset))
        return 0

    registry = HandlerRegistry()
    registry.on_store(on_store)
    return Server(ae, handlers=registry)


def find_server(ae: str, seen: list[FindRequest], count: int = 2,
                slow: asyncio.Event | None = None) -> Server:
    """A C-FIND SCP yielding ``count`` PATIENT matches; with ``slow``, it waits after each."""
    async def matches(request: FindRequest) -> AsyncIterator[Dataset]:
        seen.append(request)
        for i in range(count):
            match = Dataset()
            match.PatientName = f"DOE^J{i}"
            match.PatientID = f"P{i}"
            yield match
            if slow is not None:
                await asyncio.wait_for(slow.wait(), 10)

    registry = HandlerRegistry()
    register_find(registry, matches)
    return Server(ae, handlers=registry, contexts=qr_server_contexts(registry))
