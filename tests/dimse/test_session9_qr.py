"""Session 9: the audit 10 defects of the C-FIND SCU (/work/notes/audit10/report.md #3, #4), seen
from the rule check, the SCP and the archive; each test fails on the code before the fix.

* PS3.4 C.2.2.2.6: a sequence matching key holds a single item (empty or not). Two items is no
  query the SCP can answer without guessing: our SCU refuses to send it (STRICT) or says so
  (LENIENT), and our SCP answers 0xA900 naming the sequence, lenient or not.
* PS3.5 6.2: CS values are upper case and the levels are defined terms (PS3.4 C.6): a level the
  user wrote ``study`` is sent as ``STUDY``. The SCP stays lenient on case, as dcmqrscp is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dimse.connect import connect
from dimse.errors import IdentifierError
from dimse.qr import (
    Mode,
    Operation,
    QueryModel,
    Rule,
    check_identifier,
    validate_request,
    validate_scp,
    with_level_key,
)
from dimse.qr_scu import QueryFailed, connect_qr, find
from dimse.server import Server
from tests.dimse.test_audit_qrscp import archive, server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(60)]

SR, PR = QueryModel.STUDY_ROOT, QueryModel.PATIENT_ROOT
FIND, MOVE = Operation.FIND, Operation.MOVE
REF_STUDY_SEQ = 0x00081110
ROOT = "1.2.826.0.1.3680043.10.4646.9."


def item(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def study_query(**keys: object) -> Dataset:
    ds = item(QueryRetrieveLevel="STUDY", StudyInstanceUID="", **keys)
    return ds


def two_items() -> list[Dataset]:
    return [item(ReferencedSOPInstanceUID="1.2"), item(ReferencedSOPInstanceUID="1.3")]


# --------------------------------------------------------------------------- sequence keys


def test_sequence_key_with_two_items_is_a_violation() -> None:
    found = check_identifier(study_query(ReferencedStudySequence=two_items()), SR, FIND)
    assert [(v.rule, v.tags) for v in found] == [(Rule.SEQUENCE_ITEMS, (REF_STUDY_SEQ,))]
    assert "2 items" in found[0].comment and len(found[0].comment) <= 64
    assert "C.2.2.2.6" in found[0].message


@pytest.mark.parametrize("items", [[], [Dataset()], [item(ReferencedSOPInstanceUID="1.2")]])
def test_sequence_key_with_one_or_no_item_passes(items: list[Dataset]) -> None:
    assert check_identifier(study_query(ReferencedStudySequence=items), SR, FIND) == []


def test_nested_sequence_with_two_items_is_a_violation() -> None:
    """The rule holds inside the single item too; the offending element is the key."""
    outer = item(CodeValue="1", ConceptCodeSequence=[item(CodeValue="a"), item(CodeValue="b")])
    ds = study_query(ProcedureCodeSequence=[outer])
    found = check_identifier(ds, SR, FIND)
    assert [(v.rule, v.tags) for v in found] == [(Rule.SEQUENCE_ITEMS, (0x00081032,))]
    assert "ProcedureCodeSequence (0008,1032) > ConceptCodeSequence" in found[0].message


def test_strict_scu_refuses_and_lenient_scu_says_so(caplog: pytest.LogCaptureFixture) -> None:
    ds = study_query(ReferencedStudySequence=two_items())
    with pytest.raises(IdentifierError) as err:
        validate_request(ds, SR, FIND)
    assert err.value.offending == (REF_STUDY_SEQ,)
    with caplog.at_level(logging.WARNING, logger="dimse.qr"):
        found = validate_request(ds, SR, FIND, Mode.LENIENT)
    assert [v.rule for v in found] == [Rule.SEQUENCE_ITEMS]
    assert "sent anyway" in caplog.text and "2 items" in caplog.text


@pytest.mark.parametrize("lenient", [False, True])
def test_scp_answers_a900_for_two_items(lenient: bool) -> None:
    failure = validate_scp(study_query(ReferencedStudySequence=two_items()), SR, FIND,
                           lenient=lenient)
    assert failure is not None and failure.status == 0xA900
    assert failure.offending == (REF_STUDY_SEQ,)


def test_retrieve_is_not_checked_for_sequence_items() -> None:
    """A sequence is no retrieve key at all: one NON_UNIQUE violation, not two."""
    ds = item(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2",
              ReferencedStudySequence=two_items())
    assert [v.rule for v in check_identifier(ds, SR, MOVE)] == [Rule.NON_UNIQUE]


# --------------------------------------------------------------------------- the level's case


@pytest.mark.parametrize("written", ["study", "Study", " STUDY", "STUDY "])
def test_level_is_sent_as_its_defined_term(written: str) -> None:
    ds = study_query()
    ds.QueryRetrieveLevel = written
    sent = with_level_key(ds, SR)
    assert sent.QueryRetrieveLevel == "STUDY"
    assert ds.QueryRetrieveLevel == written  # the caller's data set is left alone
    assert check_identifier(sent, SR, FIND) == []


def test_level_case_and_missing_key_fixed_together() -> None:
    ds = item(QueryRetrieveLevel="series", PatientID="P1", StudyInstanceUID="1.2", Modality="CT")
    sent = with_level_key(ds, PR)
    assert sent.QueryRetrieveLevel == "SERIES"
    assert sent.SeriesInstanceUID == ""
    assert with_level_key(sent, PR) is sent  # nothing left to fix: no copy


def test_level_as_given_when_asked() -> None:
    ds = study_query()
    ds.QueryRetrieveLevel = "study"
    assert with_level_key(ds, SR, canonical_level=False) is ds


# --------------------------------------------------------------------------- over the network


async def _store_one(port: int) -> None:
    ds = item(SOPClassUID=CTImageStorage, SOPInstanceUID=ROOT + "1.1.1",
              StudyInstanceUID=ROOT + "1", SeriesInstanceUID=ROOT + "1.1", PatientID="P1",
              PatientName="Doe^Jane", Modality="CT")
    async with connect("127.0.0.1", port, called_ae="QRSCP", calling_ae="SENDER",
                       sop_classes=[CTImageStorage]) as assoc:
        assert await assoc.store(ds) == 0


async def test_archive_answers_a900_to_a_lenient_scu_sending_two_items(
        server: Server) -> None:  # noqa: F811
    await _store_one(server.port)
    async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP", calling_ae="FINDER",
                          models=[SR]) as assoc:
        query = study_query(PatientID="P1", ReferencedStudySequence=two_items())
        with pytest.raises(QueryFailed) as err:
            async for _ in find(assoc, query, model=SR, mode=Mode.LENIENT):
                pass
        assert err.value.status == 0xA900
        assert tuple(err.value.offending_elements) == (REF_STUDY_SEQ,)
        # the association is still good, and a lower-case level finds the study
        query = study_query(PatientID="P1")
        query.QueryRetrieveLevel = "study"
        found = [ds async for ds in find(assoc, query, model=SR)]
        assert [ds.StudyInstanceUID for ds in found] == [ROOT + "1"]


# --------------------------------------------------------------------------- the block's end


async def _raise_in_block(server: Server,  # noqa: F811
                          body: type[BaseException], seen: list[Any]) -> None:
    """A block that raises: a failure status answered by the peer (QueryFailed), an identifier
    refused before anything is sent (IdentifierError), or the user's own ``body`` error. The
    server side of the association goes into ``seen``."""
    async with connect_qr("127.0.0.1", server.port, called_ae="QRSCP", calling_ae="FINDER",
                          models=[SR]) as assoc:
        seen.extend(server.associations)
        if body is QueryFailed:  # the peer answers 0xA900
            query = study_query(PatientID="P1", ReferencedStudySequence=two_items())
            async for _ in find(assoc, query, model=SR, mode=Mode.LENIENT):
                pass
        elif body is IdentifierError:
            find(assoc, study_query(ReferencedStudySequence=two_items()), model=SR)
        raise body("the user's own error")


@pytest.mark.parametrize("error", [QueryFailed, IdentifierError])
async def test_a_failure_status_or_refused_request_ends_with_a_release(
        server: Server, error: type[BaseException]) -> None:  # noqa: F811
    """The association is intact after these: it ends with A-RELEASE (PS3.8 7.2), not an
    A-ABORT the peer would log as a fault; the block's exception still reaches the caller."""
    seen: list[Any] = []
    with pytest.raises(error):
        await _raise_in_block(server, error, seen)
    (served,) = seen
    async with asyncio.timeout(5):
        await served.wait_closed()
    assert served.error is None  # released, not aborted


@pytest.mark.parametrize("error", [ValueError, KeyError, RuntimeError])
async def test_any_other_error_in_the_block_aborts(server: Server,  # noqa: F811
                                                   error: type[BaseException]) -> None:
    seen: list[Any] = []
    with pytest.raises(error):
        await _raise_in_block(server, error, seen)
    (served,) = seen
    async with asyncio.timeout(5):
        await served.wait_closed()
    assert served.error is not None


@pytest.mark.parametrize("key", ["QueryRetrieveLevel=study", "0008,0052=Study",
                                 "(0008,0052)=study"])
def test_the_cli_takes_a_lower_case_level_without_a_warning(
        key: str, caplog: pytest.LogCaptureFixture) -> None:
    from dimse.cli import _identifier

    with caplog.at_level(logging.WARNING):
        ds = _identifier([key, "StudyInstanceUID"], SR)
    assert ds.QueryRetrieveLevel == "STUDY"
    assert "Invalid value" not in caplog.text
