"""DICOM over TLS with a throw-away self-signed certificate made at test time."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from dimse.connect import connect
from dimse.errors import AssociationError
from dimse.server import Server

pytestmark = pytest.mark.timeout(60)


def _with_cryptography(cert: Path, key: Path) -> bool:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return True


def _with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=30, check=False,
    )
    return result.returncode == 0


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if not (_with_cryptography(cert, key) or _with_openssl(cert, key)):
        pytest.skip("neither the cryptography package nor openssl is available")
    return cert, key


def _contexts(cert: Path, key: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


async def test_echo_and_store_over_tls(certificate: tuple[Path, Path]) -> None:
    from pydicom.dataset import Dataset

    from dimse.services import HandlerRegistry

    received: list[str] = []

    async def store(rq, dataset, ctx):  # type: ignore[no-untyped-def]
        received.append(dataset.decode().PatientID)
        return 0

    registry = HandlerRegistry()
    registry.on_store(store)
    server_ctx, client_ctx = _contexts(*certificate)
    async with Server("SRV", handlers=registry, ssl=server_ctx) as server:
        async with connect("127.0.0.1", server.port, called_ae="SRV", ssl=client_ctx,
                           sop_classes=["1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.7"]
                           ) as assoc:
            assert assoc.protocol.transport is not None
            assert assoc.protocol.transport.get_extra_info("ssl_object") is not None
            assert await assoc.echo() == 0
            ds = Dataset()
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
            ds.SOPInstanceUID = "1.2.3.4"
            ds.PatientID = "TLS"
            assert await assoc.store(ds) == 0
    assert received == ["TLS"]


async def test_plain_client_cannot_talk_to_tls_server(certificate: tuple[Path, Path]) -> None:
    server_ctx, _ = _contexts(*certificate)
    async with Server("SRV", ssl=server_ctx) as server:
        with pytest.raises(AssociationError):
            await connect("127.0.0.1", server.port, called_ae="SRV", connect_timeout=5)


async def test_untrusted_certificate_refused(certificate: tuple[Path, Path]) -> None:
    server_ctx, _ = _contexts(*certificate)
    untrusting = ssl.create_default_context()  # system CAs only: our certificate is unknown
    async with Server("SRV", ssl=server_ctx) as server:
        with pytest.raises((ssl.SSLError, AssociationError)):
            await connect("127.0.0.1", server.port, called_ae="SRV", ssl=untrusting,
                          connect_timeout=5)
