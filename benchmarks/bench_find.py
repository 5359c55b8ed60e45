"""C-FIND responses per second on 127.0.0.1: ours, pynetdicom and DCMTK, straight and crossed.

    python -m benchmarks.bench_find            # full run
    python -m benchmarks.bench_find --quick    # a short run

Two queries on the same stored data: a STUDY query matching every study, and an IMAGE query
matching every instance of a 1,000-instance series. Pairs (SCU -> SCP): ours->ours,
pynetdicom->pynetdicom, findscu->dcmqrscp, findscu->ours, ours->dcmqrscp. Every SCP runs in its
own process (ours: ``python -m dimse qrscp``; pynetdicom: this module with ``--pynetdicom-scp``,
matches served from memory; DCMTK: dcmqrscp on dcmqridx's index). Each figure is the best of a
few runs of associate + C-FIND + release; findscu figures include the process start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom.dataset import Dataset

from benchmarks._nodelay import dcmtk_nodelay, pynetdicom_nodelay
from dimse.qr import QueryModel
from dimse.qr_scu import connect_qr, find
from tests.peers import (
    dcmqrscp_config,
    dcmtk,
    free_port,
    index_files,
    make_ct,
    run_dcmqrscp,
    run_process,
    run_tool,
    wait_port,
)

ROOT = "1.2.826.0.1.3680043.10.4646."
BIG_STUDY, BIG_SERIES = ROOT + "0", ROOT + "0.1"
FIND_SR = "1.2.840.10008.5.1.4.1.2.2.1"


def make_data(folder: Path, studies: int, images: int) -> list[Path]:
    """``studies`` one-instance studies plus one study with a series of ``images`` instances."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [make_ct(folder / f"big{i}.dcm", patient_id="BIG", study_uid=BIG_STUDY,
                     series_uid=BIG_SERIES, sop_uid=f"{BIG_SERIES}.{i}", study_id="0")
             for i in range(images)]
    files += [make_ct(folder / f"s{i}.dcm", patient_id=f"P{i % 50}", study_uid=f"{ROOT}{i + 1}",
                      series_uid=f"{ROOT}{i + 1}.1", sop_uid=f"{ROOT}{i + 1}.1.1",
                      study_id=str(i + 1)) for i in range(studies)]
    return files


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    ds.StudyDate = ""
    return ds


def image_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = BIG_STUDY
    ds.SeriesInstanceUID = BIG_SERIES
    ds.SOPInstanceUID = ""
    ds.InstanceNumber = ""
    return ds


QUERIES = {"STUDY": study_query, "IMAGE": image_query}


# --------------------------------------------------------------------------- clients


def ours(port: int, aet: str, query: Dataset) -> int:
    async def run() -> int:
        async with connect_qr("127.0.0.1", port, called_ae=aet,
                              models=[QueryModel.STUDY_ROOT]) as assoc:
            return len([m async for m in find(assoc, query)])

    return asyncio.run(run())


def pynetdicom_scu(port: int, aet: str, query: Dataset) -> int:
    from pynetdicom import AE
    pynetdicom_nodelay()

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(FIND_SR)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established, "pynetdicom could not associate"
    count = 0
    for status, ds in assoc.send_c_find(query, FIND_SR):
        if status is not None and status.Status in (0xFF00, 0xFF01) and ds is not None:
            count += 1
    assoc.release()
    return count


def findscu(port: int, aet: str, query: Dataset) -> int:
    args = [dcmtk("findscu"), "-S", "-aec", aet]
    for elem in query:
        value = str(elem.value) if elem.value not in (None, "") else ""
        args += ["-k", f"{elem.keyword}={value}" if value else elem.keyword]
    result = run_tool([*args, "127.0.0.1", str(port)], timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"findscu failed: {result.stderr}")
    return -1  # not counted: findscu prints nothing without -v


# --------------------------------------------------------------------------- servers


def _pynetdicom_scp(folder: str, port: int) -> None:
    """A pynetdicom Study Root FIND SCP serving the folder's instances from memory."""
    import pydicom
    from pynetdicom import AE, evt
    pynetdicom_nodelay()

    studies: dict[str, Dataset] = {}
    images: dict[str, list[Dataset]] = {}
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        st = Dataset()
        st.QueryRetrieveLevel, st.StudyInstanceUID = "STUDY", ds.StudyInstanceUID
        st.PatientID, st.StudyDate = ds.PatientID, ds.StudyDate
        studies[ds.StudyInstanceUID] = st
        im = Dataset()
        im.QueryRetrieveLevel, im.StudyInstanceUID = "IMAGE", ds.StudyInstanceUID
        im.SeriesInstanceUID, im.SOPInstanceUID = ds.SeriesInstanceUID, ds.SOPInstanceUID
        im.InstanceNumber = ds.InstanceNumber
        images.setdefault(ds.SeriesInstanceUID, []).append(im)

    def handle(event: object) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier  # type: ignore[attr-defined]
        if ident.QueryRetrieveLevel == "STUDY":
            matches = list(studies.values())
        else:
            matches = images.get(ident.SeriesInstanceUID, [])
        for m in matches:
            if event.is_cancelled:  # type: ignore[attr-defined]
                yield 0xFE00, None
                return
            yield 0xFF00, m

    ae = AE(ae_title="PYQR")
    ae.add_supported_context(FIND_SR)
    ae.maximum_associations = 4
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_FIND, handle)])


@contextlib.contextmanager
def our_scp(folder: Path, port: int) -> Iterator[tuple[int, str]]:
    args = [sys.executable, "-m", "dimse", "qrscp", "--storage", str(folder), "--aet", "OURQR",
            "--port", str(port), "--db", str(folder.parent / "ours.sqlite")]
    with run_process(args, timeout=3600):
        wait_port(port, timeout=60)
        yield port, "OURQR"


@contextlib.contextmanager
def pynetdicom_scp(folder: Path, port: int) -> Iterator[tuple[int, str]]:
    args = [sys.executable, "-m", "benchmarks.bench_find", "--pynetdicom-scp", str(folder),
            str(port)]
    with run_process(args, timeout=3600):
        wait_port(port, timeout=60)
        yield port, "PYQR"


@contextlib.contextmanager
def dcmqrscp(tmp: Path, files: list[Path]) -> Iterator[tuple[int, str]]:
    port = free_port()
    config = dcmqrscp_config(tmp / "dcmqr", "DCMQR", port)
    index_files(config, "DCMQR", files)
    with run_dcmqrscp(config, port, timeout=3600):
        yield port, "DCMQR"


# --------------------------------------------------------------------------- measuring


def best_rate(client: Callable[[int, str, Dataset], int], port: int, aet: str, query: str,
              expected: int, repeats: int) -> float:
    """Best responses/s over ``repeats`` runs (checks the count where the client knows it)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        got = client(port, aet, QUERIES[query]())
        elapsed = time.perf_counter() - start
        if got not in (-1, expected):
            raise RuntimeError(f"{client.__name__} got {got} matches, expected {expected}")
        best = max(best, expected / elapsed)
    return best


def run(quick: bool) -> dict[tuple[str, str], float]:
    studies, images, repeats = (100, 1000, 2) if quick else (150, 2000, 4)
    expected = {"STUDY": studies + 1, "IMAGE": images}
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-find-") as tmpdir:
        tmp = Path(tmpdir)
        files = make_data(tmp / "data", studies, images)
        with our_scp(tmp / "data", free_port()) as (port_ours, aet_ours), \
                pynetdicom_scp(tmp / "data", free_port()) as (port_py, aet_py), \
                dcmqrscp(tmp, files) as (port_dcm, aet_dcm):
            ports = {aet_ours: port_ours, aet_py: port_py, aet_dcm: port_dcm}
            pairs: list[tuple[str, Callable[[int, str, Dataset], int], str]] = [
                ("ours->ours", ours, aet_ours),
                ("pynetdicom->pynetdicom", pynetdicom_scu, aet_py),
                ("findscu->dcmqrscp", findscu, aet_dcm),
                ("findscu->ours", findscu, aet_ours),
                ("ours->dcmqrscp", ours, aet_dcm),
            ]
            for name, client, aet in pairs:
                for query in QUERIES:
                    client(ports[aet], aet, QUERIES[query]())  # warm-up
                    rate = best_rate(client, ports[aet], aet, query, expected[query], repeats)
                    results[(name, query)] = rate
                    print(f"{name:24s} {query:6s} {rate:10.0f} responses/s", flush=True)
    return results


def report(results: dict[tuple[str, str], float]) -> None:
    print("\nratios (responses/s relative to pynetdicom->pynetdicom and findscu->dcmqrscp):")
    for query in QUERIES:
        py = results[("pynetdicom->pynetdicom", query)]
        dcm = results[("findscu->dcmqrscp", query)]
        for (name, q), rate in results.items():
            if q == query:
                print(f"  {query:6s} {name:24s} x{rate / py:6.2f} vs pynetdicom   "
                      f"x{rate / dcm:6.2f} vs DCMTK")


def main(argv: list[str] | None = None) -> None:
    dcmtk_nodelay()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pynetdicom-scp", nargs=2, metavar=("FOLDER", "PORT"))
    args = parser.parse_args(argv)
    if args.pynetdicom_scp:
        _pynetdicom_scp(args.pynetdicom_scp[0], int(args.pynetdicom_scp[1]))
        return
    report(run(args.quick))


if __name__ == "__main__":
    main()
