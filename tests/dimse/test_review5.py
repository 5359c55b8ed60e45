"""Review 5: reproducers (and guards) for defects found reviewing the audit-5 changes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dimse import codec, storage_scu
from dimse.connect import connect
from dimse.messages import CEchoRQ
from dimse.server import Server
from dimse.services import HandlerRegistry, RequestContext, file_sink_factory

pytestmark = pytest.mark.timeout(60)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.2.1143.77.5"


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CT, SOP, "REVIEW5"
    return ds


async def test_file_sink_titles_on_the_requestor_side(tmp_path: Path) -> None:
    """A C-STORE the peer sends on OUR association (C-GET sub-operation, role selection):
    the sender is the peer (the called AE) and we (the calling AE) received and wrote the
    file. file_sink_factory used to take calling/called as sender/receiver on both sides."""
    async def on_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        assoc = ctx.association
        ct = next(c for c in assoc.negotiated.contexts.values() if c.abstract_syntax == CT)
        data = codec.encode(_ct(), ct.transfer_syntax)
        await assoc.request(ct, storage_scu.store_builder(CT, SOP, 0, None), data)
        return 0

    theirs = HandlerRegistry()
    theirs.on_echo(on_echo)
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

