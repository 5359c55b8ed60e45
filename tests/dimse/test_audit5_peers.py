"""Defects found by running Orthanc 1.10.1, dcmjs-dimse 0.3.3, GDCM and CTN against us (audit 5).

Each test is self-contained (no peer needed) and failed on the code before its fix.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dimse.connect import connect
from dimse.server import Server, default_contexts
from dimse.services import HandlerRegistry, storage_sop_classes

pytestmark = pytest.mark.timeout(60)

# Storage SOP classes whose names end in "- For Presentation" / "- For Processing" (PS3.4
# Table B.5-1): Orthanc's storage RQ had 12 of them rejected, a dcmjs-dimse store of an MG image
# found no accepted context.
FOR_PRESENTATION_OR_PROCESSING = [
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG
    "1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1",  # intra-oral
    "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5",  # breast projection
    "1.2.840.10008.5.1.4.1.1.14.1", "1.2.840.10008.5.1.4.1.1.14.2",  # IVOCT
    "1.2.840.10008.5.1.4.1.1.501.2.1", "1.2.840.10008.5.1.4.1.1.501.2.2",  # DICOS DX
]


def _store_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.on_store(lambda rq, ds, ctx: 0)
    return registry


@pytest.mark.parametrize("uid", FOR_PRESENTATION_OR_PROCESSING)
def test_default_store_contexts_include_for_presentation_and_processing(uid: str) -> None:
    assert uid in storage_sop_classes()
    assert uid in default_contexts(_store_registry())


def test_storage_commitment_is_no_storage_class() -> None:
    classes = storage_sop_classes()
    assert "1.2.840.10008.1.20.1" not in classes  # Storage Commitment Push Model
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT Image Storage
    assert "1.2.840.10008.5.1.4.1.1.6" in classes  # retired US Image Storage: still archived


async def test_mammography_instance_can_be_stored() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    async with Server("ARCHIVE", handlers=_store_registry()) as server:
        async with connect("127.0.0.1", server.port, called_ae="ARCHIVE",
                           sop_classes=[ds.SOPClassUID], dimse_timeout=5) as assoc:
            assert await assoc.store(ds) == 0
