"""DICOM over TLS (PS3.15 Annex B, TLS 1.2+) against real peers on 127.0.0.1, both directions.

A throw-away CA, a server certificate for 127.0.0.1/localhost, a client certificate (and a
second, untrusted CA with its own client certificate) are made at test time. Peers: DCMTK
echoscu/storescu/findscu/storescp with ``+tls``, and pynetdicom (``tls_args``/``ssl_context``).
Failures (untrusted or missing certificates, TLS against plain TCP and back) must end quickly
with an exception that says what went wrong, and leave nothing behind on our side.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from dimse.archive import Archive
from dimse.connect import connect
from dimse.errors import AssociationAborted
from dimse.qr import QueryModel
from dimse.qr_scp import archive_server
from dimse.qr_scu import connect_qr, find
from dimse.server import Server
from dimse.services import HandlerRegistry
from tests.peers import (
    CT_IMAGE_STORAGE,
    LOCALHOST,
    dcmtk,
    dcmtk_version,
    free_port,
    make_ct,
    run_storescp,
    run_tool_async,
    settle_pynetdicom,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

CA_DAYS = 1
#: RSA, not EC: DCMTK's default profile (+py, non-downgrading BCP 195) offers only *_RSA_*
#: suites for TLS 1.2, so an ECDSA server certificate works with it over TLS 1.3 only.
VERIFICATION = "1.2.840.10008.1.1"
UID_ROOT = "1.2.826.0.1.3680043.2.1143.77."


@dataclass(frozen=True, slots=True)
class Pki:
    """PEM files of one test PKI; ``rogue_*`` is a client certificate from an unknown CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _pki_with_cryptography(folder: Path) -> Pki | None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        return None
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: str, key: rsa.RSAPrivateKey
                ) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS)))

    def write(path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (builder(cn, cn, key)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        write(folder / cn, cert, key)
        return cert, key

    def leaf(cn: str, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
             usage: x509.ObjectIdentifier, san: bool) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        b = (builder(cn, issuer[0].subject.rfc4514_string()[3:], key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        write(folder / cn, b.sign(issuer[1], hashes.SHA256()), key)

    good, rogue = ca("ca"), ca("rogue-ca")
    leaf("server", good, ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    leaf("client", good, ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    leaf("rogue", rogue, ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    return _pki(folder)


def _pki(folder: Path) -> Pki:
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key",
               folder / "client.pem", folder / "client.key", folder / "rogue-ca.pem",
               folder / "rogue.pem", folder / "rogue.key")


def _pki_with_openssl(folder: Path) -> Pki | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, capture_output=True, timeout=30,
                       check=True)

    rsa_key = ("-newkey", "rsa:2048", "-nodes")
    for cn in ("ca", "rogue-ca"):
        run("req", "-x509", *rsa_key, "-days", str(CA_DAYS), "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign", "-keyout", f"{cn}.key", "-out", f"{cn}.pem")
    for cn, issuer, ext in (
        ("server", "ca", "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "ca", "extendedKeyUsage=clientAuth"),
        ("rogue", "rogue-ca", "extendedKeyUsage=clientAuth"),
    ):
        (folder / f"{cn}.ext").write_text(ext + "\n")
        run("req", "-new", *rsa_key, "-subj", f"/CN={cn}", "-keyout", f"{cn}.key",
            "-out", f"{cn}.csr")
        run("x509", "-req", "-in", f"{cn}.csr", "-CA", f"{issuer}.pem", "-CAkey",
            f"{issuer}.key", "-CAcreateserial", "-days", str(CA_DAYS), "-extfile", f"{cn}.ext",
            "-out", f"{cn}.pem")
    return _pki(folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    made = _pki_with_cryptography(folder) or _pki_with_openssl(folder)
    if made is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    return made


def server_context(pki: Pki, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """Our acceptor's context: TLS 1.2+, our server certificate, client certificates from
    the test CA required (PS3.15 B.1: both ends authenticated) unless told otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx


def client_context(pki: Pki, *, cert: bool = True, trust: Path | None = None) -> ssl.SSLContext:
    """Our requestor's context: TLS 1.2+, verifies the server against ``trust`` (the test CA),
    presents the client certificate when ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(trust or pki.ca)
    if cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def dcmtk_tls(tool: str) -> str:
    """DCMTK ``tool`` when it is built with TLS (OpenSSL); skip naming it otherwise."""
    path = dcmtk(tool)
    helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10,
                              check=False).stdout
    if "--enable-tls" not in helptext:
        pytest.skip(f"{path} ({dcmtk_version(tool)}) is built without TLS support (+tls)")
    return path


def dcmtk_tls_args(key: Path, cert: Path, pki: Pki) -> list[str]:
    """DCMTK's ``+tls KEY CERT +cf CA`` (peer certificate required: its default -rc)."""
    return ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def open_sockets() -> int | None:
    """Sockets this process holds (Linux /proc), or None where that cannot be read."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return None
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(fd_dir / fd).startswith("socket:")
        except OSError:
            continue
    return count


async def settled(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (closing takes loop turns)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def no_leaks() -> AsyncIterator[None]:
    """Asserts that the block leaves no socket and no task behind in this process."""
    sockets, tasks = open_sockets(), asyncio.all_tasks()
    yield
    await settled(lambda: asyncio.all_tasks() <= tasks)
    if sockets is not None:  # <=: a socket of an earlier test may finish closing meanwhile
        await settled(lambda: (open_sockets() or 0) <= sockets)


def _ct_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_ct(folder / f"ct{i}.dcm", patient_id=f"TLS{i}", study_uid=f"{UID_ROOT}{i}",
                    series_uid=f"{UID_ROOT}{i}.1", sop_uid=f"{UID_ROOT}{i}.1.1")
            for i in range(count)]


def _recording_registry() -> tuple[HandlerRegistry, list[str]]:
    registry = HandlerRegistry()
    stored: list[str] = []

    async def on_store(rq, dataset, ctx):  # type: ignore[no-untyped-def]
        stored.append(dataset.decode().PatientID)
        return 0

    registry.on_store(on_store)
    return registry, stored


# --------------------------------------------------------------------------- DCMTK -> our server


async def test_dcmtk_echoscu_and_storescu_over_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    """echoscu/storescu present the client certificate and verify ours; our server requires
    a client certificate from the test CA."""
    echoscu, storescu = dcmtk_tls("echoscu"), dcmtk_tls("storescu")
    files = _ct_files(tmp_path, 3)
    registry, stored = _recording_registry()
    tls = dcmtk_tls_args(pki.client_key, pki.client_cert, pki)
    async with Server("OURSCP", handlers=registry, ssl=server_context(pki)) as server:
        code, out = await run_tool_async(
            [echoscu, "-v", *tls, "-aec", "OURSCP", LOCALHOST, str(server.port)], timeout=20)
        assert code == 0, out
        assert "Received Echo Response (Success)" in out, out
        code, out = await run_tool_async(
            [storescu, *tls, "-aec", "OURSCP", LOCALHOST, str(server.port), *map(str, files)],
            timeout=20)
        assert code == 0, out
    assert stored == ["TLS0", "TLS1", "TLS2"]


async def test_dcmtk_findscu_over_tls_against_our_archive(pki: Pki, tmp_path: Path) -> None:
    findscu = dcmtk_tls("findscu")
    _ct_files(tmp_path, 2)
    archive = Archive(tmp_path)
    archive.index()
    try:
        async with archive_server(archive, "OURQR", ssl=server_context(pki)) as server:
            code, out = await run_tool_async(
                [findscu, "-v", *dcmtk_tls_args(pki.client_key, pki.client_cert, pki),
                 "-aec", "OURQR", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID",
                 "-P", LOCALHOST, str(server.port)], timeout=20)
    finally:
        archive.close()
    assert code == 0, out
    assert out.count("(Pending)") == 2, out
    assert "Received Final Find Response (Success)" in out, out


# --------------------------------------------------------------------------- our client -> DCMTK


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_our_client_against_dcmtk_storescp_over_mutual_tls(
    pki: Pki, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """storescp +tls requires our client certificate (-rc, its default); both TLS versions of
    the BCP 195 profile work."""
    dcmtk_tls("storescp")
    port = free_port()
    files = _ct_files(tmp_path / "in", 2)
    ctx = client_context(pki)
    ctx.maximum_version = version
    received = tmp_path / "received"
    tls = dcmtk_tls_args(pki.server_key, pki.server_cert, pki)
    with run_storescp(received, port, aet="STORESCP", extra_args=tls) as proc:
        async with no_leaks():
            async with connect(LOCALHOST, port, called_ae="STORESCP", ssl=ctx,
                               sop_classes=[VERIFICATION, CT_IMAGE_STORAGE],
                               connect_timeout=10) as assoc:
                tls_object = assoc.protocol.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
                assert tls_object.version() == version.name.replace("v1_", "v1.")
                assert await assoc.echo() == 0
                for f in files:
                    assert await assoc.store(pydicom.dcmread(f)) == 0
        names = sorted(p.name for p in received.iterdir())
        assert len(names) == 2, (names, proc.output())
    for f in files:
        back = pydicom.dcmread(received / f"CT.{pydicom.dcmread(f).SOPInstanceUID}")
        assert back.PatientID == pydicom.dcmread(f).PatientID


# (dcmqrscp 3.6.7 has no TLS options: our C-FIND over TLS is tested against pynetdicom.)


# --------------------------------------------------------------------------- pynetdicom


def _pynetdicom_client(port: int, ctx: ssl.SSLContext, files: list[Path]) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(LOCALHOST, port, ae_title="OURSCP", tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return []
    try:
        statuses = [int(assoc.send_c_echo().Status)]
        for f in files:
            settle_pynetdicom()
            statuses.append(int(assoc.send_c_store(pydicom.dcmread(f)).Status))
    finally:
        assoc.release()
    return statuses


async def test_pynetdicom_scu_against_our_server_over_mutual_tls(
    pki: Pki, tmp_path: Path
) -> None:
    pytest.importorskip("pynetdicom")
    files = _ct_files(tmp_path, 2)
    registry, stored = _recording_registry()
    async with Server("OURSCP", handlers=registry, ssl=server_context(pki)) as server:
        statuses = await asyncio.wait_for(
            asyncio.to_thread(_pynetdicom_client, server.port, client_context(pki), files), 30)
        # without a client certificate our server refuses the connection
        refused = await asyncio.wait_for(asyncio.to_thread(
            _pynetdicom_client, server.port, client_context(pki, cert=False), files), 30)
        assert await settled(lambda: not server.associations)
    assert statuses == [0, 0, 0]
    assert refused == []
    assert stored == ["TLS0", "TLS1"]


@pytest.fixture
def pynetdicom_tls_scp(pki: Pki) -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom SCP (echo, CT store, study root find) over TLS requiring client certs."""
    pytest.importorskip("pynetdicom")
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        Verification,
    )

    received: list[str] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append(str(event.dataset.PatientID))
        return 0x0000

    def on_find(event):  # type: ignore[no-untyped-def]
        for uid in ("1.2.3.1", "1.2.3.2"):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = uid
            yield 0xFF00, match

    ae = AE(ae_title="PYNETSCP")
    for sop in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_supported_context(sop)
    port = free_port()
    server = ae.start_server((LOCALHOST, port), block=False, ssl_context=server_context(pki),
                             evt_handlers=[(evt.EVT_C_STORE, on_store),
                                           (evt.EVT_C_FIND, on_find)])
    try:
        yield port, received
    finally:
        server.shutdown()


async def test_our_client_against_pynetdicom_scp_over_mutual_tls(
    pki: Pki, tmp_path: Path, pynetdicom_tls_scp: tuple[int, list[str]]
) -> None:
    """Echo, store and a study-root C-FIND (the Q/R-over-TLS case dcmqrscp cannot serve)."""
    port, received = pynetdicom_tls_scp
    files = _ct_files(tmp_path, 2)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    async with no_leaks():
        async with connect(LOCALHOST, port, called_ae="PYNETSCP", ssl=client_context(pki),
                           sop_classes=[VERIFICATION, CT_IMAGE_STORAGE], connect_timeout=10
                           ) as assoc:
            assert await assoc.echo() == 0
            for f in files:
                assert await assoc.store(pydicom.dcmread(f)) == 0
        async with connect_qr(LOCALHOST, port, called_ae="PYNETSCP", ssl=client_context(pki),
                              models=[QueryModel.STUDY_ROOT], connect_timeout=10) as assoc:
            found = [str(m.StudyInstanceUID)
                     async for m in find(assoc, query, model=QueryModel.STUDY_ROOT)]
    assert received == ["TLS0", "TLS1"]
    assert found == ["1.2.3.1", "1.2.3.2"]


# --------------------------------------------------------------------------- failures


async def test_our_server_survives_bad_tls_clients(pki: Pki) -> None:
    """An untrusted client certificate and plain TCP both fail at once, with DCMTK saying so;
    the server leaves no association behind for them and keeps serving."""
    echoscu = dcmtk_tls("echoscu")
    async with Server("OURSCP", ssl=server_context(pki)) as server:
        base = [echoscu, "-aec", "OURSCP", LOCALHOST, str(server.port)]
        code, out = await run_tool_async(
            [*base, *dcmtk_tls_args(pki.rogue_key, pki.rogue_cert, pki)], timeout=20)
        assert code != 0, out  # DCMTK (TLS 1.3) only says "Peer aborted Association"
        assert "Echo Response" not in out, out
        code, out = await run_tool_async(base, timeout=20)  # plain TCP
        assert code != 0, out
        assert await settled(lambda: not server.associations)
        code, out = await run_tool_async(
            [*base, *dcmtk_tls_args(pki.client_key, pki.client_cert, pki)], timeout=20)
        assert code == 0, out


async def test_silent_tcp_client_is_dropped_after_artim(pki: Pki) -> None:
    """A TCP peer that never starts the TLS handshake is disconnected after the ARTIM timeout
    (PS3.8: a connection without an A-ASSOCIATE-RQ), not after asyncio's 60 s default."""
    async with Server("OURSCP", ssl=server_context(pki), artim_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection(LOCALHOST, server.port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
        assert await settled(lambda: not server.associations)


async def test_our_client_without_certificate_says_why(pki: Pki, tmp_path: Path) -> None:
    """TLS 1.3 ends the client's handshake before the server checks the client certificate:
    the refusal arrives as an alert while we wait for the A-ASSOCIATE-AC, and the error must
    name it rather than a bare A-P-ABORT."""
    dcmtk_tls("storescp")
    port = free_port()
    tls = dcmtk_tls_args(pki.server_key, pki.server_cert, pki)
    with run_storescp(tmp_path, port, extra_args=tls):
        async with no_leaks():
            with pytest.raises(AssociationAborted, match="(?i)certificate") as info:
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10,
                              ssl=client_context(pki, cert=False))
            assert isinstance(info.value.__cause__, ssl.SSLError)
            rogue = client_context(pki, cert=False)
            rogue.load_cert_chain(pki.rogue_cert, pki.rogue_key)
            with pytest.raises(AssociationAborted, match="(?i)unknown ca|certificate"):
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10,
                              ssl=rogue)
    # asyncio (CPython 3.11) drops the fatal alert of a failed server-side handshake
    # (python/cpython#98078): against our server the client sees only the connection close.
    async with Server("OURSCP", ssl=server_context(pki)) as server, no_leaks():
        with pytest.raises(AssociationAborted,
                           match="(?i)certificate|without answering the A-ASSOCIATE-RQ"):
            await connect(LOCALHOST, server.port, called_ae="OURSCP", connect_timeout=10,
                          ssl=client_context(pki, cert=False))
        assert await settled(lambda: not server.associations)


async def test_plain_client_against_tls_peers_says_why(pki: Pki, tmp_path: Path) -> None:
    """A TLS-only peer closes (or resets) a plain connection without a DICOM answer: the error
    says so and suggests TLS, instead of a bare A-P-ABORT."""
    dcmtk_tls("storescp")
    port = free_port()
    tls = dcmtk_tls_args(pki.server_key, pki.server_cert, pki)
    with run_storescp(tmp_path, port, extra_args=tls):
        async with no_leaks():
            with pytest.raises(AssociationAborted, match="without answering the A-ASSOCIATE-RQ"
                               ) as info:
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10)
            assert "expects TLS" in str(info.value)
    async with Server("OURSCP", ssl=server_context(pki)) as server, no_leaks():
        with pytest.raises(AssociationAborted, match="expects TLS"):
            await connect(LOCALHOST, server.port, called_ae="OURSCP", connect_timeout=10)
        assert await settled(lambda: not server.associations)


async def test_tls_client_against_plain_peers_fails_cleanly(pki: Pki, tmp_path: Path) -> None:
    dcmtk("storescp")
    port = free_port()
    with run_storescp(tmp_path, port):
        async with no_leaks():
            with pytest.raises(AssociationAborted, match=f"cannot connect to .*:{port}"):
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10,
                              ssl=client_context(pki))
        async with connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10) as assoc:
            assert await assoc.echo() == 0  # storescp still serves
    async with Server("OURSCP") as server:
        async with no_leaks():
            with pytest.raises(AssociationAborted, match="(?i)wrong version number"):
                await connect(LOCALHOST, server.port, called_ae="OURSCP", connect_timeout=10,
                              ssl=client_context(pki))
        assert await settled(lambda: not server.associations)
        async with connect(LOCALHOST, server.port, called_ae="OURSCP") as assoc:
            assert await assoc.echo() == 0


async def test_untrusted_or_misnamed_server_certificate_refused(pki: Pki, tmp_path: Path
                                                                ) -> None:
    dcmtk_tls("storescp")
    port = free_port()
    tls = dcmtk_tls_args(pki.server_key, pki.server_cert, pki)
    with run_storescp(tmp_path, port, extra_args=tls):
        async with no_leaks():
            with pytest.raises(AssociationAborted, match="CERTIFICATE_VERIFY_FAILED") as info:
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10,
                              ssl=client_context(pki, trust=pki.rogue_ca))
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            with pytest.raises(AssociationAborted, match="(?i)hostname mismatch"):
                await connect(LOCALHOST, port, called_ae="STORESCP", connect_timeout=10,
                              ssl=client_context(pki), server_hostname="other.example")
