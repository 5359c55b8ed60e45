"""Our SCU against our server, in process over 127.0.0.1: echo, store, window, timeouts, aborts."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dimse.association import Association, _fresh
from dimse.connect import connect
from dimse.errors import (
    AssociationAborted,
    AssociationRejected,
    DimseTimeout,
    NotNegotiatedError,
)
from dimse.messages import CEchoRQ, CStoreRQ
from dimse.server import Server
from dimse.services import HandlerRegistry, ReceivedDataSet, RequestContext, file_sink_factory
from pdu.machine import Role

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
pytestmark = pytest.mark.timeout(60)


def make_ds(n: int = 1, size: int = 64, sop_class: str = CT) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.9.{n}"
    ds.PatientName = "Test^Store"
    ds.PatientID = f"P{n}"
    ds.Rows = 1
    ds.Columns = min(size // 2, 1024)
    ds.BitsAllocated = 16
    ds.PixelData = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return ds


class Recorder:
    """A C-STORE handler that keeps what it received."""

    def __init__(self, delay: float = 0.0, status: int = 0) -> None:
        self.received: list[tuple[CStoreRQ, Dataset | None, Path | None]] = []
        self.delay = delay
        self.status = status
        self.running = 0
        self.max_running = 0

    async def __call__(self, rq: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> int:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            path = getattr(dataset.sink, "temp_path", None)
            decoded = dataset.decode() if dataset.sink is None else None
            self.received.append((rq, decoded, path))
            return self.status
        finally:
            self.running -= 1


async def test_echo_and_release() -> None:
    async with Server("SRV") as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", calling_ae="ME") as assoc:
            assert await assoc.echo() == 0
            assert await assoc.echo() == 0
            assert assoc.negotiated.context_for("1.2.840.10008.1.1") is not None
        assert assoc.error is None
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert not server.associations or all(not a.is_established for a in server.associations)


async def test_store_many_instances() -> None:
    registry = HandlerRegistry()
    recorder = Recorder()
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           sop_classes=[CT, "1.2.840.10008.1.1"], max_pdu=16384) as assoc:
            statuses = [await assoc.store(make_ds(i, size=40_000)) for i in range(20)]
    assert statuses == [0] * 20
    assert len(recorder.received) == 20
    rq, ds, _ = recorder.received[7]
    assert rq.affected_sop_instance_uid == "1.2.826.0.1.3680043.2.1143.9.7"
    assert ds is not None and ds.PatientID == "P7"
    assert ds.PixelData == make_ds(7, size=40_000).PixelData


async def test_store_streamed_to_file_sink(tmp_path: Path) -> None:
    registry = HandlerRegistry()
    recorder = Recorder()
    registry.on_store(recorder, sink=file_sink_factory(tmp_path))
    async with Server("SRV", handlers=registry, max_pdu=4096) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            for i in range(3):
                assert await assoc.store(make_ds(i, size=100_000)) == 0
    import pydicom

    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"1.2.826.0.1.3680043.2.1143.9.{i}.dcm" for i in range(3)]
    back = pydicom.dcmread(files[1])
    assert back.SOPInstanceUID == "1.2.826.0.1.3680043.2.1143.9.1"
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.PixelData == make_ds(1, size=100_000).PixelData
    # the handler saw the temp file: a hidden .part file or an anonymous one (O_TMPFILE)
    assert all(path is not None and (path.name.endswith(".part") or
                                     path.parent == Path("/proc/self/fd"))
               for _, _, path in recorder.received)


async def test_failed_store_handler_leaves_no_file(tmp_path: Path) -> None:
    registry = HandlerRegistry()

    async def broken(rq: CStoreRQ, dataset: ReceivedDataSet, ctx: RequestContext) -> int:
        raise RuntimeError("boom")

    registry.on_store(broken, sink=file_sink_factory(tmp_path))
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            assert await assoc.store(make_ds(1)) == 0x0110
            assert await assoc.store(make_ds(2)) == 0x0110  # the association survived
    assert list(tmp_path.iterdir()) == []


async def test_async_window_several_outstanding_stores() -> None:
    registry = HandlerRegistry()
    recorder = Recorder(delay=0.05)
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry, async_window=(4, 4)) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT],
                           async_window=(8, 8)) as assoc:
            assert assoc.negotiated.async_window == (4, 4)
            statuses = await asyncio.gather(*(assoc.store(make_ds(i)) for i in range(12)))
    assert statuses == [0] * 12
    assert recorder.max_running == 4  # never more than the window, and really concurrent


async def test_async_window_is_read_from_the_requestor_side() -> None:
    """PS3.7 D.3.3.3: AC (invoked, performed) = what the REQUESTOR may invoke / perform."""
    registry = HandlerRegistry()
    recorder = Recorder(delay=0.05)
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry, async_window=(3, 1)) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT],
                           async_window=(8, 5)) as assoc:
            assert assoc.negotiated.async_window == (3, 1)
            [acceptor] = server.associations
            assert acceptor.negotiated.async_window == (3, 1)
            # the acceptor performs up to 3 of our requests and may invoke 1 on us at a time
            assert acceptor._perform_limit == 3 and acceptor._window is not None
            assert acceptor._window._value == 1
            assert assoc._perform_limit == 1
            statuses = await asyncio.gather(*(assoc.store(make_ds(i)) for i in range(9)))
    assert statuses == [0] * 9
    assert recorder.max_running == 3


async def test_default_window_serializes() -> None:
    registry = HandlerRegistry()
    recorder = Recorder(delay=0.01)
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            assert assoc.negotiated.async_window == (1, 1)
            await asyncio.gather(*(assoc.store(make_ds(i)) for i in range(5)))
    assert recorder.max_running == 1


async def test_not_negotiated_before_sending() -> None:
    async with Server("SRV") as server:  # no store handler: storage contexts are refused
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           sop_classes=["1.2.840.10008.1.1", CT]) as assoc:
            with pytest.raises(NotNegotiatedError):
                await assoc.store(make_ds())
            assert await assoc.echo() == 0


async def test_zero_accepted_contexts_is_accepted() -> None:
    """Decision: an RQ with no acceptable context gets an AC rejecting every context."""
    async with Server("SRV") as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[MR]) as assoc:
            assert dict(assoc.negotiated.contexts) == {}
            assert assoc.negotiated.rejected == {1: 3}
            with pytest.raises(NotNegotiatedError):
                await assoc.echo()


async def test_handler_exception_gives_failure_not_crash() -> None:
    registry = HandlerRegistry()

    async def bad_echo(rq: CEchoRQ, ctx: RequestContext) -> int:
        raise ValueError("nope")

    registry.on_echo(bad_echo)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV") as assoc:
            assert await assoc.echo() == 0x0110
            assert await assoc.echo() == 0x0110


async def _silent_server() -> Server:
    """A server that accepts the association and then never answers a DIMSE request."""
    registry = HandlerRegistry()
    never = asyncio.Event()

    async def hang(rq: CEchoRQ, ctx: RequestContext) -> int:
        await never.wait()
        return 0

    registry.on_echo(hang)
    server = Server("SRV", handlers=registry)
    return await server.start()


async def test_dimse_timeout_aborts() -> None:
    server = await _silent_server()
    port = server.port
    try:
        assoc = await connect("127.0.0.1", port, called_ae="SRV", dimse_timeout=0.3)
        with pytest.raises(DimseTimeout):
            await assoc.echo()
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert isinstance(assoc.error, AssociationAborted)
        with pytest.raises(AssociationAborted):
            await assoc.echo()
        # the server side saw the abort and its handler task was cancelled
        for _ in range(50):
            if not server.associations:
                break
            await asyncio.sleep(0.02)
        assert not server.associations
    finally:
        await server.close()


def _abort_after(acceptor: Association, nbytes: int, victim: Association, folder: Path,
                 at_abort: list[Path]) -> list[int]:
    """Once ``acceptor`` has received ``nbytes``, abort ``victim`` (from the event loop).

    The acceptor's protocol is wrapped so the abort lands deterministically in the middle of the
    transfer, whichever side aborts; ``at_abort`` gets the content of ``folder`` at that moment.
    Returns a list holding the number of bytes received so far.
    """
    protocol = acceptor.protocol
    original = protocol.data_received
    seen = [0]
    loop = asyncio.get_running_loop()

    def counting(data: bytes) -> None:
        before = seen[0]
        seen[0] += len(data)
        if before < nbytes <= seen[0]:
            at_abort.extend(folder.iterdir())
            loop.call_soon(victim.abort)
        original(data)

    protocol.data_received = counting  # type: ignore[method-assign]
    return seen


SIZE_20MB = 20_000_000


def _small_socket_buffers(sender: Association, receiver: Association) -> None:
    """Bound the bytes in flight between the two sockets to well under 1 MB: with loopback's
    autotuned buffers (several MB each way) the sender could have handed the kernel the whole
    rest of the transfer before the abort, and the receiver then read it all."""
    for assoc, option in ((sender, socket.SO_SNDBUF), (receiver, socket.SO_RCVBUF)):
        assert assoc.protocol.transport is not None
        sock = assoc.protocol.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, option, 128 * 1024)


@pytest.mark.parametrize("sink", ["file", "memory"])
@pytest.mark.parametrize("side", ["scu", "scp"])
async def test_abort_mid_transfer_leaves_nothing(tmp_path: Path, side: str, sink: str) -> None:
    """A 20 MB C-STORE aborted half-way by either side: no task, file or memory is left."""
    tracemalloc.start()
    try:
        await _abort_mid_transfer(tmp_path, side, sink)
    finally:
        tracemalloc.stop()


async def _abort_mid_transfer(tmp_path: Path, side: str, sink: str) -> None:
    registry = HandlerRegistry()
    recorder = Recorder(delay=10)  # if the data set arrived whole, the handler never commits
    registry.on_store(recorder, sink=file_sink_factory(tmp_path) if sink == "file" else None)
    async with Server("SRV", handlers=registry, max_pdu=16384) as server:
        assoc = await connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT])
        [acceptor] = server.associations
        _small_socket_buffers(assoc, acceptor)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        at_abort: list[Path] = []
        seen = _abort_after(acceptor, SIZE_20MB // 2, assoc if side == "scu" else acceptor,
                            tmp_path, at_abort)
        store = asyncio.ensure_future(assoc.store(make_ds(1, size=SIZE_20MB)))
        with pytest.raises(AssociationAborted):
            await asyncio.wait_for(store, 10)
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert SIZE_20MB // 2 <= seen[0] < SIZE_20MB  # really aborted half-way
        if sink == "file":  # at the abort the data was going to a temp file as it arrived
            from dimse import file_sink  # (an anonymous one has no name in the folder)

            assert [p.suffix for p in at_abort] == ([] if file_sink._TMPFILE_FLAGS else [".part"])
        for _ in range(100):
            if not server.associations:
                break
            await asyncio.sleep(0.02)
        assert not server.associations
        assert isinstance(acceptor.error, AssociationAborted)
        del acceptor, store
    assert list(tmp_path.iterdir()) == []  # no file, no temp/partial file
    assert recorder.received == []
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Association)
                and o.role is Role.ACCEPTOR]
    current, peak = tracemalloc.get_traced_memory()
    assert peak - baseline > SIZE_20MB // 2  # the measurement saw the transfer
    assert current - baseline < 1_000_000, (current - baseline)


async def test_peer_closes_connection_fails_pending() -> None:
    server = await _silent_server()
    port = server.port
    assoc = await connect("127.0.0.1", port, called_ae="SRV", dimse_timeout=10)
    echo = asyncio.ensure_future(assoc.echo())
    await asyncio.sleep(0.05)
    await server.close()
    with pytest.raises(AssociationAborted):
        await asyncio.wait_for(echo, 5)


@pytest.mark.parametrize("keepalive", [True, False])
async def test_keepalive_and_nodelay_really_set_on_both_sockets(keepalive: bool) -> None:
    async with Server("SRV", keepalive=keepalive) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV",
                           keepalive=keepalive) as assoc:
            [acceptor] = server.associations
            for side in (assoc, acceptor):
                assert side.protocol.transport is not None
                sock = side.protocol.transport.get_extra_info("socket")
                assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) is keepalive
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert await assoc.echo() == 0


@pytest.mark.parametrize("error", [
    AssociationRejected(1, 1, 7), AssociationAborted("gone", source=2, reason=6),
    DimseTimeout("late"),
])
def test_stored_errors_are_raised_as_fresh_copies(error: Exception) -> None:
    """Raising the stored error itself would pin the raising frames (and their data sets)."""
    fresh = _fresh(error)
    assert type(fresh) is type(error) and fresh is not error
    assert fresh.args == error.args and vars(fresh) == vars(error)
    try:
        raise fresh
    except type(error):
        pass
    assert error.__traceback__ is None


def test_a_reused_message_id_does_not_inherit_an_old_cancel() -> None:
    from dimse.association import Association
    from dimse.messages import CCancelRQ, CEchoRQ

    assoc = Association.__new__(Association)
    assoc._cancels = {}
    assoc._request_context = lambda context_id: object()  # type: ignore[method-assign,assignment,return-value]
    assoc._on_request = assoc._track  # type: ignore[method-assign,assignment]
    assoc.may_perform = lambda cx: True  # type: ignore[method-assign]
    echo = CEchoRQ(message_id=7, affected_sop_class_uid="1.2.840.10008.1.1")
    assoc._dispatch(1, echo, None)
    first = assoc.cancel_event(7)
    assoc._dispatch(1, CCancelRQ(message_id_being_responded_to=7), None)
    assert assoc.is_cancelled(7) and first.is_set()
    assoc._dispatch(1, CCancelRQ(message_id_being_responded_to=8), None)  # unknown: ignored
    assert not assoc.is_cancelled(8)
    assoc._dispatch(1, echo, None)
    assert not assoc.is_cancelled(7)
    assert not assoc.cancel_event(7).is_set() and assoc.cancel_event(7) is not first


async def test_store_many_keeps_the_window_full_and_the_order() -> None:
    registry = HandlerRegistry()
    recorder = Recorder(delay=0.02)
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry, async_window=(4, 4)) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT],
                           async_window=(4, 4)) as assoc:
            statuses = await assoc.store_many(make_ds(i) for i in range(10))
    assert statuses == [0] * 10
    assert recorder.max_running == 4
    uids = sorted(rq.affected_sop_instance_uid for rq, _, _ in recorder.received)
    assert uids == sorted(f"1.2.826.0.1.3680043.2.1143.9.{i}" for i in range(10))


async def test_store_many_sequential_without_a_window() -> None:
    registry = HandlerRegistry()
    recorder = Recorder(status=0xB000)
    registry.on_store(recorder)
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            assert await assoc.store_many([make_ds(1), make_ds(2)]) == [0xB000, 0xB000]
            assert await assoc.store_many([]) == []
    assert recorder.max_running == 1


async def test_store_many_one_at_a_time_stops_at_an_unsendable_instance() -> None:
    """The next data set is prepared while one is on the wire; one that cannot be sent (no
    context for its class) raises only after the stores before it got their responses."""
    registry = HandlerRegistry()
    recorder = Recorder(delay=0.01)
    registry.on_store(recorder)
    mr = "1.2.840.10008.5.1.4.1.1.4"
    items = [make_ds(1), make_ds(2), make_ds(3, sop_class=mr), make_ds(4)]
    async with Server("SRV", handlers=registry) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", sop_classes=[CT]) as assoc:
            with pytest.raises(NotNegotiatedError):
                await assoc.store_many(items)
            assert not assoc._pending  # nothing left outstanding
            assert await assoc.store(make_ds(5)) == 0  # the association is still usable
    uids = [rq.affected_sop_instance_uid.rsplit(".", 1)[1] for rq, _, _ in recorder.received]
    assert uids == ["1", "2", "5"] and recorder.max_running == 1
    assert recorder.received[1][1] is not None
    assert recorder.received[1][1].PatientID == "P2"  # the prepared bytes were the right ones


@pytest.mark.parametrize("anonymous", [True, False])
def test_file_sink_commit_replace_and_discard(tmp_path: Path, anonymous: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Both temp-file kinds: complete and readable after finish, in place (replacing an older
    file) only on commit, nothing left by discard."""
    from dimse import file_sink
    from dimse.messages import CStoreRQ

    if not anonymous:
        monkeypatch.setattr(file_sink, "_TMPFILE_FLAGS", 0)
    elif not file_sink._TMPFILE_FLAGS:
        pytest.skip("no O_TMPFILE here")
    rq = CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2.3")
    (tmp_path / "1.2.3.dcm").write_bytes(b"old")
    sink = file_sink.FileSink(tmp_path, rq, "1.2.840.10008.1.2.1")
    sink.write(memoryview(b"\x10\x00\x20\x00LO\x02\x00AB"))
    sink.finish()
    assert sink.temp_path.read_bytes().endswith(b"LO\x02\x00AB")
    assert (tmp_path / "1.2.3.dcm").read_bytes() == b"old"
    sink.commit()
    data = (tmp_path / "1.2.3.dcm").read_bytes()
    assert data[128:132] == b"DICM" and data.endswith(b"AB")
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]
    rq2 = CStoreRQ(message_id=2, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2.4")
    gone = file_sink.FileSink(tmp_path, rq2, "1.2.840.10008.1.2.1")
    gone.write(memoryview(b"\x00" * (file_sink.SINK_MEMORY_LIMIT + 2)))  # streamed to disk
    gone.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]
