"""Archive C-FIND answers: find() + codec.encode vs find_encoded(), 1,000 IMAGE-level matches.

Run: python3 -m pytest benchmarks/bench_archive.py --benchmark-enable -q
     python3 -m benchmarks.bench_archive        # prints the ratio
The index is filled straight from in-memory data sets (no files), in one transaction.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dimse import codec
from dimse.archive import Archive
from dimse.qr import Level, QueryModel

ROOT = "1.2.826.0.1.3680043.10.4647."
STUDY, SERIES = ROOT + "1", ROOT + "1.1"
COUNT = 1000
TS = codec.IMPLICIT_VR_LE


def _instance(i: int) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "BIG", "Doe^John"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "M"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = STUDY, "20240131", "101500"
    ds.AccessionNumber, ds.StudyID, ds.StudyDescription = "A1", "1", "CT THORAX"
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = SERIES, "CT", 1
    ds.SOPInstanceUID, ds.SOPClassUID = f"{SERIES}.{i}", CTImageStorage
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = i + 1, "20240131", "101501"
    return ds


def fill(arc: Archive, count: int = COUNT) -> None:
    """Index ``count`` instances of one series without writing files (private fast path)."""
    with arc._lock, arc._db:
        for i in range(count):
            arc._upsert(_instance(i), f"x/{i}.dcm", codec.EXPLICIT_VR_LE, 1, 1)


def image_query(*, rich: bool = False) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = ds.InstanceNumber = ""
    if rich:
        ds.SOPClassUID = ds.ContentDate = ds.ContentTime = ds.PatientName = ""
        ds.PatientID = ds.Modality = ds.StudyDate = ds.AccessionNumber = ""
    return ds


def via_find(arc: Archive, query: Dataset) -> int:
    return sum(len(codec.encode(ds, TS))
               for ds in arc.find(query, QueryModel.STUDY_ROOT, Level.IMAGE))


def via_find_encoded(arc: Archive, query: Dataset) -> int:
    result = arc.find_encoded(query, QueryModel.STUDY_ROOT, Level.IMAGE, TS)
    return sum(map(len, result.matches))


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with tempfile.TemporaryDirectory() as tmp:
        arc = Archive(Path(tmp))
        fill(arc)
        yield arc
        arc.close()


@pytest.mark.parametrize("rich", [False, True], ids=["4keys", "12keys"])
@pytest.mark.parametrize("way", [via_find, via_find_encoded], ids=["find+encode", "encoded"])
def test_image_level_1000(benchmark: Callable[..., int], archive: Archive,
                          way: Callable[[Archive, Dataset], int], rich: bool) -> None:
    query = image_query(rich=rich)
    total = benchmark(way, archive, query)
    assert total == via_find(archive, query)


def _best(fn: Callable[[], object], runs: int = 7) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        arc = Archive(Path(tmp))
        fill(arc)
        for rich in (False, True):
            query = image_query(rich=rich)
            slow = _best(lambda q=query: via_find(arc, q))
            fast = _best(lambda q=query: via_find_encoded(arc, q))
            label = "12 keys" if rich else "4 keys"
            print(f"{label}: find+encode {COUNT / slow:9.0f} matches/s   find_encoded "
                  f"{COUNT / fast:9.0f} matches/s   x {slow / fast:.2f}")
        arc.close()


if __name__ == "__main__":
    main()
