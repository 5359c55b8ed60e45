"""Differential C-FIND matching: generated archives and queries, DCMTK dcmqrscp against ours.

Hypothesis draws an archive (patients, studies, series, instances with varied, empty and absent
values, ASCII and ISO_IR 100 text) and hierarchical queries at every level of Patient Root and
Study Root (universal keys, single values, ``*``/``?`` wildcards, date and time ranges, UID
lists). The same files go into one dcmqrscp and one of our archive servers (both started once
for the module, on ports chosen at run time, 127.0.0.1 only); a pynetdicom SCU asks both.
dcmqrscp's known deviations and the choices the standard leaves open are the flags of
``tests.interop._find_diff.Dialect`` (each with its PS3.4 section). FIND_DIFF_EXAMPLES raises the
number of examples for a long campaign outside the suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings

from dimse.archive import Archive
from dimse.qr import Level, QueryModel
from tests.interop._find_diff import (
    DCMQRSCP,
    OURS,
    Dcmqrscp,
    Model,
    OurPeer,
    Query,
    ask,
    describe,
    expected,
    explain,
    scenarios,
)
from tests.peers import free_port, run_dcmqrscp

EXAMPLES = int(os.environ.get("FIND_DIFF_EXAMPLES", "50"))
pytestmark = [pytest.mark.interop, pytest.mark.timeout(max(300, EXAMPLES))]
# A long campaign may skip shrinking (each shrink step talks to both peers): FIND_DIFF_NO_SHRINK=1.
PHASES = tuple(p for p in Phase if p is not Phase.shrink or not os.environ.get("FIND_DIFF_NO_SHRINK"))


class Peers:
    def __init__(self, ours: OurPeer, theirs: Dcmqrscp) -> None:
        self.ours, self.theirs = ours, theirs

    def load(self, m: Model) -> None:
        self.theirs.load(self.ours.load(m))

    def problems(self, m: Model, q: Query) -> list[str]:
        status_o, ours = ask(self.ours.port, self.ours.aet, q)
        status_t, theirs = ask(self.theirs.port, self.theirs.aet, q)
        out = explain(m, q, ours, theirs)
        event(f"{q.level} matches: {min(len(ours), 3)}{'+' if len(ours) >= 3 else ''}")
        if set(ours) != set(theirs):
            event("peers differ (explained by the dialects)")
        if status_o != 0 or status_t != 0:
            out.append(f"final status ours 0x{status_o:04X}, dcmqrscp 0x{status_t:04X}")
        return out


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    tmp = tmp_path_factory.mktemp("find-diff")
    theirs = Dcmqrscp(tmp / "dcmqrscp", free_port())
    with run_dcmqrscp(theirs.config, theirs.port, timeout=3600):
        ours = OurPeer(tmp / "ours")
        try:
            yield Peers(ours, theirs)
        finally:
            ours.close()


@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=scenarios())
def test_find_matches_like_dcmqrscp(peers: Peers, scenario: tuple[Model, list[Query]]) -> None:
    m, qs = scenario
    peers.load(m)
    for q in qs:
        problems = peers.problems(m, q)
        assert not problems, "\n".join([*problems, describe(m, q)])


def test_reference_dialects_apart() -> None:
    """The reference itself: case-insensitive PN and a partial TM key standing for its whole
    minute are ours; dcmqrscp matches neither."""
    m = Model(patients=[{"PatientID": "P0", "PatientName": "Müller^Jürgen",
                         "PatientBirthDate": None, "PatientSex": "M"}],
              studies=[{"_patient": "0", "StudyInstanceUID": "1.2", "StudyDate": "20200101",
                        "StudyTime": "101030", "AccessionNumber": "", "StudyID": "01",
                        "StudyDescription": None}],
              series=[{"_study": "0", "SeriesInstanceUID": "1.2.3", "Modality": "CT",
                       "SeriesNumber": "01"}],
              instances=[{"_series": "0", "SOPInstanceUID": "1.2.3.4", "InstanceNumber": "1"}])
    q = Query("SR", "STUDY", (("PatientName", "müller*"), ("StudyTime", "1010")))
    assert expected(m, q, OURS) == {"1.2": {"PatientName": "Müller^Jürgen",
                                            "StudyTime": "101030"}}
    assert expected(m, q, DCMQRSCP) == {}


# --------------------------------------------------------------------------- regressions
# Concrete cases the differential run found (each failed on the code before its fix).


def _store(folder: Path, **values: str) -> Archive:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = values.pop("SOPInstanceUID", "1.2.3.4")
    ds.StudyInstanceUID = values.pop("StudyInstanceUID", "1.2.3")
    ds.SeriesInstanceUID = values.pop("SeriesInstanceUID", "1.2.3.1")
    ds.PatientID = values.pop("PatientID", "P1")
    for key, value in values.items():
        setattr(ds, key, value)
    archive = Archive(folder)
    archive.store(ds)
    return archive


def _found(archive: Archive, level: Level, model: QueryModel = QueryModel.STUDY_ROOT,
           **keys: str) -> list[str]:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for key, value in keys.items():
        setattr(ds, key, value)
    unique = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID",
              Level.SERIES: "SeriesInstanceUID", Level.IMAGE: "SOPInstanceUID"}[level]
    return [str(r.get(unique)) for r in archive.find(ds, model, level)]


@pytest.mark.parametrize("key", ["**", "***"])
def test_only_stars_is_universal_matching(tmp_path: Path, key: str) -> None:
    """PS3.4 C.2.2.2.4: '*' matches any sequence of characters including a zero-length value,
    so '**' matches everything, as '*' does (Note 1): an empty Modality was not found."""
    archive = _store(tmp_path, Modality="")
    try:
        assert _found(archive, Level.SERIES, StudyInstanceUID="1.2.3", Modality=key,
                      SeriesInstanceUID="") == ["1.2.3.1"]
    finally:
        archive.close()


@pytest.mark.parametrize(("key", "value"), [("PatientBirthDate", "-"), ("StudyTime", "-")])
def test_dash_alone_is_universal_matching(tmp_path: Path, key: str, value: str) -> None:
    """A date/time range without either bound ('-') constrains nothing: our documented rule
    (audit5 §7; PS3.4 C.2.2.2.5 defines only 'A-B', 'A-', '-B'). Since the multi-value change
    an absent or empty stored value was no longer found by it."""
    archive = _store(tmp_path, StudyDate="20200101")
    try:
        assert _found(archive, Level.STUDY, StudyInstanceUID="", **{key: value}) == ["1.2.3"]
    finally:
        archive.close()


def test_stale_entity_values_replaced_file(tmp_path: Path) -> None:
    """The only instance of a study stored again without its Accession Number (a corrected
    copy): the study no longer has one (PS3.4 C.2.2: matching is against the entities' values).
    The study row kept 'A1' ("last non-empty value wins" is meant for other instances)."""
    archive = _store(tmp_path, AccessionNumber="A1", PatientSex="M")
    try:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.3.4", "1.2.3"
        ds.SeriesInstanceUID, ds.PatientID = "1.2.3.1", "P1"
        archive.store(ds)
        assert _found(archive, Level.STUDY, StudyInstanceUID="", AccessionNumber="A1") == []
        assert _found(archive, Level.PATIENT, QueryModel.PATIENT_ROOT, PatientSex="M") == []
    finally:
        archive.close()


def test_stale_entity_values_files_swapped(tmp_path: Path) -> None:
    """The files of a study replaced on disk by others with the same UIDs (one index() run):
    values only the removed files had are gone (the differential run found StudyID kept)."""
    folder = tmp_path / "archive"
    archive = _store(folder, StudyID="S1", SOPInstanceUID="1.2.3.4")
    try:
        first = archive.stored_path("1.2.3.4")
        assert first is not None
        archive.close()
        first.unlink()
        other = _store(tmp_path / "other", SOPInstanceUID="1.2.3.5")
        path = other.stored_path("1.2.3.5")
        other.close()
        assert path is not None
        path.rename(folder / "new.dcm")
        archive = Archive(folder)
        archive.index()
        assert _found(archive, Level.STUDY, StudyInstanceUID="", StudyID="S1") == []
        assert _found(archive, Level.STUDY, StudyInstanceUID="") == ["1.2.3"]
    finally:
        archive.close()
