"""User Identity AC (0x59), PS3.7 D.3.3.7.2: sent when the identity was accepted and a positive
response was requested, never otherwise; for a username (and passcode) its response is empty.

The end-to-end tests run our Server against our requestor and DCMTK's storescu.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dimse.connect import connect
from dimse.server import Server
from dimse.services import HandlerRegistry
from pdu.constants import UserIdentityType
from pdu.items import UserIdentityAC, UserIdentityRQ
from pdu.negotiation import AcceptorPolicy, build_associate_rq, negotiate

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
STORESCU = "/usr/bin/storescu"
POLICY = AcceptorPolicy(contexts={CT: (IMPLICIT,)})
pytestmark = pytest.mark.timeout(60)


def sent_identity(identity: UserIdentityRQ, response: bytes | None) -> UserIdentityAC | None:
    rq = build_associate_rq("SCP", "SCU", [(CT, [IMPLICIT])], user_identity=identity)
    ac, negotiated = negotiate(rq, POLICY, identity_response=response)
    assert negotiated.user_identity_response == (
        None if ac.user_information.user_identity is None
        else ac.user_information.user_identity.server_response)
    return ac.user_information.user_identity


@pytest.mark.parametrize("kind", [UserIdentityType.USERNAME,
                                  UserIdentityType.USERNAME_AND_PASSCODE])
def test_accepted_username_types_get_an_empty_response(kind: int) -> None:
    """b"" (accepted, nothing to send back) is a 0x59 item with r = 0, not a missing item."""
    assert sent_identity(UserIdentityRQ(kind, True, b"u", b"p" if kind == 2 else b""),
                         b"") == UserIdentityAC(b"")


@pytest.mark.parametrize("kind", [UserIdentityType.KERBEROS, UserIdentityType.SAML,
                                  UserIdentityType.JWT])
def test_ticket_types_carry_the_server_response(kind: int) -> None:
    assert sent_identity(UserIdentityRQ(kind, True, b"t"), b"answer") == UserIdentityAC(b"answer")


@pytest.mark.parametrize("response", [None, b"", b"x"])
@pytest.mark.parametrize("kind", list(UserIdentityType))
def test_no_ac_when_no_positive_response_was_requested(kind: int, response: bytes | None) -> None:
    assert sent_identity(UserIdentityRQ(kind, False, b"u", b"p" if kind == 2 else b""),
                         response) is None


# ------------------------------------------------------------------ end to end, Server authenticator


async def accept_without_response(identity: UserIdentityRQ, peer: object) -> tuple[bool, None]:
    return True, None  # accepted; nothing to send back for a username/passcode


def registry() -> HandlerRegistry:
    handlers = HandlerRegistry()
    handlers.on_store(lambda rq, ds, ctx: 0)
    return handlers


@pytest.mark.parametrize("kind", [1, 2])
async def test_accepted_username_gets_a_positive_response(kind: int) -> None:
    identity = UserIdentityRQ(kind, True, b"u", b"p" if kind == 2 else b"")
    async with Server("SRV", authenticator=accept_without_response, handlers=registry()) as srv:
        async with connect("127.0.0.1", srv.port, called_ae="SRV", sop_classes=[CT],
                           user_identity=identity, dimse_timeout=10) as assoc:
            assert assoc.negotiated.user_identity_response == b""


async def test_no_positive_response_when_not_requested() -> None:
    identity = UserIdentityRQ(2, False, b"u", b"p")
    async with Server("SRV", authenticator=accept_without_response, handlers=registry()) as srv:
        async with connect("127.0.0.1", srv.port, called_ae="SRV", sop_classes=[CT],
                           user_identity=identity, dimse_timeout=10) as assoc:
            assert assoc.negotiated.user_identity_response is None


def small_file(folder: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.11.1"
    ds.PatientID = "P"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "small.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.skipif(not os.access(STORESCU, os.X_OK), reason="DCMTK storescu not installed")
async def test_dcmtk_storescu_pos_response_succeeds(tmp_path: Path) -> None:
    path = small_file(tmp_path)
    async with Server("SRV", authenticator=accept_without_response, handlers=registry()) as srv:
        proc = await asyncio.create_subprocess_exec(
            STORESCU, "--user", "u", "--password", "p", "--pos-response", "-aec", "SRV",
            "127.0.0.1", str(srv.port), str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")
