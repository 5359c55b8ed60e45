"""dimse.instances: the UIDs of an instance read straight from raw elements."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dimse.instances import instance_uids
from tests.peers import make_ct


def test_uids_from_a_file_match_pydicom(tmp_path: Path) -> None:
    path = make_ct(tmp_path / "a.dcm", sop_uid="1.2.826.0.1.3680043.2.1143.77", rows=4,
                   columns=4)
    raw = pydicom.dcmread(path)
    converted = pydicom.dcmread(path)
    expected = (str(converted.SOPClassUID), str(converted.SOPInstanceUID))
    assert instance_uids(raw) == expected == ("1.2.840.10008.5.1.4.1.1.2",
                                              "1.2.826.0.1.3680043.2.1143.77")


def test_uids_of_a_built_dataset_and_a_missing_one() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.3"
    ds.SOPInstanceUID = "1.2.3.4"
    assert instance_uids(ds) == ("1.2.3", "1.2.3.4")
    del ds.SOPInstanceUID
    with pytest.raises(AttributeError):
        instance_uids(ds)
