"""Review 5: reproducers (and guards) for defects found reviewing the audit-5 changes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dimse import codec, storage_scu
from dimse.archive import Archive
from dimse.archive_store import archive_sink_factory, archive_store_handler
from dimse.connect import connect
from dimse.messages import CEchoRQ
from dimse.qr import Level, QueryModel
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext, file_sink_factory

pytestmark = pytest.mark.timeout(60)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.2.1143.77.5"


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, SOP, "REVIEW5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = SOP + ".7", SOP + ".7.1"
    return ds


async def _store_back_on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
    """The peer's C-ECHO handler: it sends us a C-STORE on our own association first (as a
    C-GET SCP does), on the CT context where role selection made us SCP."""
    assoc = ctx.association
    ct = next(c for c in assoc.negotiated.contexts.values() if c.abstract_syntax == CT)
    data = codec.encode(_ct(), ct.transfer_syntax)
    await assoc.request(ct, storage_scu.store_builder(CT, SOP, 0, None), data)
    return 0


async def test_file_sink_titles_on_the_requestor_side(tmp_path: Path) -> None:
    """A C-STORE the peer sends on OUR association (C-GET sub-operation, role selection):
    the sender is the peer (the called AE) and we (the calling AE) received and wrote the
    file. file_sink_factory used to take calling/called as sender/receiver on both sides."""
    theirs = HandlerRegistry()
    theirs.on_echo(_store_back_on_echo)
    theirs.on_store(lambda rq, ds, ctx: 0)  # so that the CT context is accepted
    ours = HandlerRegistry()
    ours.on_store(lambda rq, ds, ctx: 0, sink=file_sink_factory(tmp_path))
    roles = {VERIFICATION: (True, True), CT: (True, True)}
    async with Server("PACS", handlers=theirs, scp_roles=roles) as server, connect(
            "127.0.0.1", server.port, called_ae="PACS", calling_ae="WORKSTATION",
            sop_classes=[VERIFICATION, CT], roles=roles, handlers=ours,
            dimse_timeout=10) as assoc:
        assert await assoc.echo() == 0
    meta = pydicom.dcmread(tmp_path / f"{SOP}.dcm").file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle,
            meta.SourceApplicationEntityTitle) == ("PACS", "WORKSTATION", "WORKSTATION")



# ----------------------------------------------------------------- R1: IR 58 next to a G1 set
@pytest.mark.parametrize(("charset", "name"), [
    (["ISO 2022 IR 100", "ISO 2022 IR 58"], "M\u00fcller^Hans"),
    (["ISO 2022 IR 144", "ISO 2022 IR 58"], "\u041b\u044e\u043a"),
])
def test_ir58_designation_only_when_value_1_is_the_default_repertoire(
        charset: list[str], name: str) -> None:
    """With a single-byte set as value 1 its own characters are GR bytes too: the GB 2312
    designation was put before them (DCMTK then fails to read the value)."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    data = codec.encode(ds, codec.EXPLICIT_VR_LE)
    assert b"\x1b$)A" not in data
    assert str(codec.decode(data, codec.EXPLICIT_VR_LE).PatientName) == name


# ----------------------------------------------------------------- R2: open range, empty value 1
def test_open_date_range_skips_a_multi_valued_date_whose_first_value_is_empty(
        tmp_path: Path) -> None:
    """'\\19990101' sorts above '20200101' ('\\' > digits): the plain column condition took
    the row, none of whose values is in the range."""
    with Archive(tmp_path) as archive:
        for n, dates in enumerate((["", "19990101"], ["", "20210101"], ["20210101"]), 1):
            ds = _ct()
            ds.SOPInstanceUID, ds.StudyInstanceUID = f"{SOP}.{n}", f"{SOP}.{n}.9"
            ds.SeriesInstanceUID, ds.PatientID, ds.StudyDate = f"{SOP}.{n}.9.1", f"P{n}", dates
            archive.store(ds)
        key = Dataset()
        key.QueryRetrieveLevel, key.StudyInstanceUID = "STUDY", ""
        for value, expected in (("20200101-", {"2", "3"}), ("-20000101", {"1"}),
                                ("19990101", {"1"}), ("20210101", {"2", "3"})):
            key.StudyDate = value
            found = {str(m.StudyInstanceUID).split(".")[-2]
                     for m in archive.find(key, QueryModel.STUDY_ROOT, Level.STUDY)}
            assert found == expected, value


# ----------------------------------------------------------------- R3: archive sink, requestor
async def test_archive_sink_titles_on_the_requestor_side(tmp_path: Path) -> None:
    """As file_sink_factory: a C-STORE the peer sends on our association names the peer as
    sender and us as receiver and writer."""
    theirs = HandlerRegistry()
    theirs.on_echo(_store_back_on_echo)
    theirs.on_store(lambda rq, ds, ctx: 0)
    with Archive(tmp_path / "archive") as archive:
        ours = HandlerRegistry()
        ours.on_store(archive_store_handler(archive), sink=archive_sink_factory(archive))
        roles = {VERIFICATION: (True, True), CT: (True, True)}
        async with Server("PACS", handlers=theirs, scp_roles=roles) as server, connect(
                "127.0.0.1", server.port, called_ae="PACS", calling_ae="WORKSTATION",
                sop_classes=[VERIFICATION, CT], roles=roles, handlers=ours,
                dimse_timeout=10) as assoc:
            assert await assoc.echo() == 0
        path = archive.stored_path(SOP)
        assert path is not None
        meta = pydicom.dcmread(path).file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle,
            meta.SourceApplicationEntityTitle) == ("PACS", "WORKSTATION", "WORKSTATION")
