"""End-to-end benchmark on 127.0.0.1: associations per second and C-STORE throughput.

    python -m benchmarks.bench_e2e            # full run
    python -m benchmarks.bench_e2e --quick    # a short run

Every server runs in its own process (ours, pynetdicom, DCMTK storescp/dcmqrscp); the clients
run in this process (ours: asyncio; pynetdicom: threads; DCMTK: one subprocess per run).
Scenarios:

* associate + C-ECHO + release, sequentially and from 64 concurrent clients:
  ours->ours, pynetdicom->pynetdicom, pynetdicom->dcmqrscp, ours->dcmqrscp, echoscu->ours;
* C-STORE of 2,000 instances of 10 KB and of 20 instances of 5 MB on one association:
  ours->ours, storescu->storescp, pynetdicom->pynetdicom and the crossed pairs.
All SCPs write the received instances to files (in the run's temporary folder, or under
``--rx-dir``, e.g. /dev/shm, so that a throttled virtual disk does not decide the comparison).
``--rounds N`` runs the C-STORE pairs N times, interleaved, and reports each pair's median.
A table with ratios to pynetdicom is printed.

Also holds a pytest-benchmark test (``python3 -m pytest benchmarks/bench_e2e.py
--benchmark-enable``) of one in-process association + echo + release.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from benchmarks._nodelay import dcmtk_nodelay, pynetdicom_nodelay
from dimse.connect import connect, run
from dimse.errors import AssociationError
from dimse.server import Server
from dimse.services import HandlerRegistry, file_sink_factory
from tests.peers import (
    dcmqrscp_config,
    dcmtk,
    free_port,
    make_ct,
    run_dcmqrscp,
    run_process,
    run_storescp,
    wait_port,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CONCURRENCY = 64
#: Associations refused or failed during the current measure (reported, not counted as done).
FAILURES = [0]


# --------------------------------------------------------------------------- servers (subprocess)


async def _serve_ours(port: int, folder: str, window: int = 1) -> None:
    registry = HandlerRegistry()

    def on_store(rq: Any, dataset: Any, ctx: Any) -> int:  # a plain function: run inline
        return 0

    registry.on_store(on_store, sink=file_sink_factory(folder))
    server = Server("BENCH", port=port, handlers=registry, max_pdu=65536,
                    async_window=(window, window) if window > 1 else None)
    await server.start()
    print("READY", flush=True)
    await server.serve_forever()


def _serve_pynetdicom(port: int, folder: str) -> None:
    from pynetdicom import AE, evt
    pynetdicom_nodelay()
    from pynetdicom.sop_class import CTImageStorage, Verification

    def on_store(event: Any) -> int:
        path = os.path.join(folder, event.request.AffectedSOPInstanceUID)
        with open(path, "wb") as f:
            f.write(event.encoded_dataset())
        return 0

    ae = AE(ae_title="BENCH")
    ae.maximum_associations = 128
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    print("READY", flush=True)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


@contextlib.contextmanager
def python_server(kind: str, folder: Path, *extra: str) -> Iterator[int]:
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.bench_e2e", "--serve", kind, "--port", str(port),
            "--dir", str(folder), *extra]
    with run_process(args, cwd=Path(__file__).resolve().parent.parent, timeout=3600):
        wait_port(port, timeout=20)
        yield port


@contextlib.contextmanager
def dcmqrscp_server(tmp: Path) -> Iterator[int]:
    port = free_port()
    cfg = dcmqrscp_config(tmp / "qr", "BENCH", port, max_pdu=65536)
    with run_dcmqrscp(cfg, port, timeout=3600):
        yield port


# --------------------------------------------------------------------------- clients


async def ours_echo_assocs(port: int, count: int, concurrency: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            try:
                async with connect("127.0.0.1", port, called_ae="BENCH") as assoc:
                    status = await assoc.echo()
                    assert status == 0, status
            except AssociationError:
                FAILURES[0] += 1  # e.g. dcmqrscp refusing beyond its association limit

    share = [count // concurrency + (1 if i < count % concurrency else 0)
             for i in range(concurrency)]
    await asyncio.gather(*(worker(n) for n in share if n))


def pynetdicom_echo_assocs(port: int, count: int, concurrency: int) -> None:
    from pynetdicom import AE
    pynetdicom_nodelay()
    from pynetdicom.sop_class import Verification

    def worker(n: int) -> None:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        for _ in range(n):
            assoc = ae.associate("127.0.0.1", port, ae_title="BENCH")
            if not assoc.is_established:
                FAILURES[0] += 1
                continue
            assoc.send_c_echo()
            assoc.release()

    share = [count // concurrency + (1 if i < count % concurrency else 0)
             for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, [n for n in share if n]))


def echoscu_assocs(port: int, count: int, concurrency: int) -> None:
    echoscu = dcmtk("echoscu")

    def worker(n: int) -> None:
        for _ in range(n):
            subprocess.run([echoscu, "-aec", "BENCH", "127.0.0.1", str(port)], check=True,
                           timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    share = [count // concurrency + (1 if i < count % concurrency else 0)
             for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, [n for n in share if n]))


async def ours_store(port: int, datasets: list[Dataset]) -> None:
    """One C-STORE at a time (no asynchronous operations window), as storescu sends them."""
    async with connect("127.0.0.1", port, called_ae="BENCH", sop_classes=[CT],
                       max_pdu=65536, dimse_timeout=120) as assoc:
        assert assoc.negotiated.async_window == (1, 1)
        statuses = await assoc.store_many(datasets)
        assert statuses == [0] * len(datasets), statuses


async def ours_store_window(port: int, datasets: list[Dataset], window: int) -> None:
    """Up to ``window`` C-STOREs in flight on one association (asynchronous operations)."""
    async with connect("127.0.0.1", port, called_ae="BENCH", sop_classes=[CT],
                       max_pdu=65536, dimse_timeout=120,
                       async_window=(window, window)) as assoc:
        assert assoc.negotiated.async_window == (window, window), assoc.negotiated.async_window
        statuses = await assoc.store_many(datasets)
        assert statuses == [0] * len(datasets)


def pynetdicom_store(port: int, datasets: list[Dataset]) -> None:
    from pynetdicom import AE
    pynetdicom_nodelay()
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    # pynetdicom 3.0's association thread sometimes takes the C-STORE-RSP meant for the waiting
    # send_c_store ("Received unexpected C-STORE service message"), which then waits out the
    # DIMSE timeout: about once in 20,000 stores against a fast SCP. A short timeout turns
    # that into a failed run (reported, left out of the median) instead of a 2-minute stall.
    ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="BENCH", max_pdu=65536)
    assert assoc.is_established
    try:
        for n, ds in enumerate(datasets):
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                raise PeerFailure(f"pynetdicom got no C-STORE response for instance {n}")
            assert status.Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


class PeerFailure(RuntimeError):
    """A peer under test failed a run on its own (its bug, not the measured pair's)."""


def storescu_store(port: int, files: list[Path]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(map(str, files)))
    try:
        subprocess.run([dcmtk("storescu"), "-aec", "BENCH", "--max-pdu", "65536",
                        "127.0.0.1", str(port), *map(str, files)],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)
    finally:
        os.unlink(listing.name)


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    side = max(int((size / 2) ** 0.5), 1)
    return [make_ct(folder / f"i{i}.dcm", sop_uid=f"1.2.826.0.1.3680043.2.1143.8.{size}.{i}",
                    rows=side, columns=side) for i in range(count)]


def run_assoc_bench(tmp: Path, count: int, uvloop: bool = False) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    ours_dir, py_dir = tmp / "ours_rx", tmp / "py_rx"
    ours_dir.mkdir()
    py_dir.mkdir()
    cases: list[tuple[str, Callable[[], contextlib.AbstractContextManager[int]],
                      Callable[[int, int, int], None]]] = [
        ("ours -> ours", lambda: python_server("ours", ours_dir),
         lambda p, n, c: run(ours_echo_assocs(p, n, c), use_uvloop=False)),
        ("pynetdicom -> pynetdicom", lambda: python_server("pynetdicom", py_dir),
         pynetdicom_echo_assocs),
        ("pynetdicom -> dcmqrscp", lambda: dcmqrscp_server(tmp / "q1"), pynetdicom_echo_assocs),
        ("ours -> dcmqrscp", lambda: dcmqrscp_server(tmp / "q2"),
         lambda p, n, c: run(ours_echo_assocs(p, n, c), use_uvloop=False)),
        ("echoscu -> ours", lambda: python_server("ours", ours_dir), echoscu_assocs),
    ]
    if uvloop:
        cases.insert(1, ("ours -> ours (uvloop)",
                         lambda: python_server("ours", ours_dir, "--uvloop"),
                         lambda p, n, c: run(ours_echo_assocs(p, n, c), use_uvloop=True)))
    for name, server, client in cases:
        with server() as port:
            for mode, conc in (("sequential", 1), (f"{CONCURRENCY} concurrent", CONCURRENCY)):
                n = count if "echoscu" not in name else max(count // 4, conc)
                FAILURES[0] = 0
                elapsed = timed(client, port, n, conc)
                done = n - FAILURES[0]
                rows.append((name, f"assoc+echo+release/s, {mode}", done / elapsed))
                failed = f" ({FAILURES[0]} refused)" if FAILURES[0] else ""
                print(f"  {name:28} {mode:14} {done / elapsed:10.1f} assoc/s{failed}",
                      flush=True)
    return rows


def run_store_bench(tmp: Path, small: int, large: int, only: set[str] | None = None,
                    uvloop: bool = False, rounds: int = 1, rx_base: Path | None = None) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    sets = {
        f"{small} x 10 KB": make_files(tmp / "small", small, 10_000),
        f"{large} x 5 MB": make_files(tmp / "large", large, 5_000_000),
    }
    loaded = {k: [pydicom.dcmread(f) for f in v] for k, v in sets.items()}
    servers: dict[str, Callable[[Path], contextlib.AbstractContextManager[int]]] = {
        "ours": lambda d: python_server("ours", d),
        "pynetdicom": lambda d: python_server("pynetdicom", d),
        "storescp": lambda d: _storescp(d),
        "ours (window 16)": lambda d: python_server("ours", d, "--window", "16"),
        "ours (uvloop)": lambda d: python_server("ours", d, "--uvloop"),
    }
    clients: dict[str, Callable[[int, str], None]] = {
        "ours": lambda p, k: run(ours_store(p, loaded[k]), use_uvloop=False),
        "pynetdicom": lambda p, k: pynetdicom_store(p, loaded[k]),
        "storescu": lambda p, k: storescu_store(p, sets[k]),
        "ours (uvloop)": lambda p, k: run(ours_store(p, loaded[k]), use_uvloop=True),
        "ours (window 16)": lambda p, k: run(ours_store_window(p, loaded[k], 16), use_uvloop=False),
    }
    pairs = [("ours", "ours"), ("ours (window 16)", "ours (window 16)"),
             ("storescu", "storescp"),
             *([("ours (uvloop)", "ours (uvloop)")] if uvloop else []),
             ("pynetdicom", "pynetdicom"),
             ("ours", "storescp"), ("storescu", "ours"), ("ours", "pynetdicom"),
             ("pynetdicom", "ours")]
    chosen = []
    for client, server in pairs:
        label = f"ours -> {server}" if client == server != "ours" else f"{client} -> {server}"
        if only is None or label in only:
            chosen.append((client, server))
    # Rounds interleave the pairs, so a slow spell of the disk or the host hits them alike; each
    # pair's row is its median over the rounds.
    results: dict[tuple[str, str], list[float]] = {}
    for round_no in range(rounds):
        for client, server in chosen:
            for key in sets:
                size = sum(f.stat().st_size for f in sets[key])
                rx = Path(tempfile.mkdtemp(dir=rx_base or tmp, prefix="bench-rx-"))
                name = f"{client} -> {server}"
                if client == server and client.startswith("ours ("):  # ours -> ours (uvloop)
                    name = f"ours -> {server}"
                tag = f" [round {round_no + 1}/{rounds}]" if rounds > 1 else ""
                try:
                    with servers[server](rx) as port:
                        elapsed = timed(clients[client], port, key)
                except PeerFailure as exc:
                    print(f"  {name:28} {key:12} failed: {exc}{tag}", flush=True)
                    continue
                finally:
                    shutil.rmtree(rx, ignore_errors=True)
                results.setdefault((name, key), []).append(size / elapsed / 1e6)
                print(f"  {name:28} {key:12} {size / elapsed / 1e6:8.1f} MB/s "
                      f"({len(sets[key]) / elapsed:.0f} instances/s){tag}", flush=True)
    for (name, key), values in results.items():
        rows.append((name, f"C-STORE {key}, MB/s", statistics.median(values)))
    return rows


@contextlib.contextmanager
def _storescp(folder: Path) -> Iterator[int]:
    port = free_port()
    with run_storescp(folder, port, aet="BENCH", extra_args=["--max-pdu", "65536"],
                      timeout=3600):
        yield port


def print_table(rows: list[tuple[str, str, float]]) -> None:
    baseline: dict[str, float] = {m: v for n, m, v in rows if n == "pynetdicom -> pynetdicom"}
    print(f"\n{'pair':28} {'measure':44} {'value':>10} {'vs pynetdicom':>14}")
    for name, measure, value in rows:
        base = baseline.get(measure)
        ratio = f"{value / base:13.2f}x" if base else ""
        print(f"{name:28} {measure:44} {value:10.1f} {ratio:>14}")


def main(argv: list[str] | None = None) -> None:
    dcmtk_nodelay()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--serve", choices=["ours", "pynetdicom"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true",
                        help="also run ours -> ours with uvloop on both sides (extra rows)")
    parser.add_argument("--skip-store", action="store_true", help="no C-STORE runs")
    parser.add_argument("--store-only", action="store_true", help="only the C-STORE runs")
    parser.add_argument("--pairs", help="C-STORE pairs to run, comma-separated, e.g. "
                        "'ours -> ours,storescu -> storescp' (default: all)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="C-STORE rounds, pairs interleaved; each row is the median")
    parser.add_argument("--rx-dir", help="where every SCP writes the received files (default: "
                        "the run's temporary folder; e.g. /dev/shm keeps a throttled virtual "
                        "disk out of the comparison)")
    args = parser.parse_args(argv)
    if args.serve == "ours":
        run(_serve_ours(args.port, args.dir, args.window), use_uvloop=args.uvloop)
        return
    if args.serve == "pynetdicom":
        _serve_pynetdicom(args.port, args.dir)
        return
    # quick keeps the 2,000 x 10 KB case: small instances are where per-message costs show
    assocs, small, large = (256, 2000, 4) if args.quick else (2000, 2000, 20)
    only = {p.strip() for p in args.pairs.split(",")} if args.pairs else None
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        if not args.store_only:
            print(f"associations ({assocs} per measure):")
            rows += run_assoc_bench(Path(tmp), assocs, args.uvloop)
        if not args.skip_store:
            print("C-STORE:")
            rows += run_store_bench(Path(tmp), small, large, only, args.uvloop, args.rounds,
                                   Path(args.rx_dir) if args.rx_dir else None)
    print_table(rows)


# --------------------------------------------------------------------------- pytest-benchmark


def test_bench_association_echo_release(benchmark: Any) -> None:
    """One in-process association + C-ECHO + release, ours with ours."""

    async def setup() -> Server:
        return await Server("BENCH").start()

    loop = asyncio.new_event_loop()
    try:
        server = loop.run_until_complete(setup())

        async def once() -> None:
            async with connect("127.0.0.1", server.port, called_ae="BENCH") as assoc:
                await assoc.echo()

        benchmark(lambda: loop.run_until_complete(once()))
        loop.run_until_complete(server.close())
    finally:
        loop.close()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
