"""gRPC over TLS (`QUERYREC_TLS_CERT_FILE` + `QUERYREC_TLS_KEY_FILE`): a real handshake.

The certificates are made here with `cryptography`: a private CA and a server certificate
it signs for `localhost` and 127.0.0.1, as an operator with an internal CA would have.
Clients trust the CA, never the server certificate itself.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpclib.client import Channel, UnaryUnaryMethod

from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from service.transport.healthcheck import EXIT_CONNECTION, EXIT_SERVING, main
from tests.service.harness import ServerThread

ITEMS = [1, 2, 3]


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA that clients trust, and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    client: bool = False,
) -> x509.Certificate:
    """A certificate valid from yesterday to tomorrow (clock skew cannot fail the test):
    a CA's (`ca`), a client's (`client`: for mutual TLS), else a server's for localhost /
    127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, ca_name: str = "queryrec test CA") -> Pki:
    """A CA and a server certificate for localhost / 127.0.0.1, written as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate("localhost", server_key, ca_name, ca_key, ca=False)
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(bundle: Path, redis_url: str, pki: Pki) -> Iterator[ServerThread]:
    # The harness's own channel is plaintext; these tests open their own.
    with ServerThread(bundle, redis_url, tls_cert_file=pki.cert, tls_key_file=pki.key) as harness:
        yield harness


def score(channel: grpc.Channel) -> pb.ScoreResponse:
    stub = scorer_pb2_grpc.ScorerStub(channel)
    response: pb.ScoreResponse = stub.Score(pb.ScoreRequest(user_id=7, item_ids=ITEMS), timeout=10)
    return response


def test_score_over_tls_with_the_ca(tls_server: ServerThread, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    # By IP (the certificate's IP SAN) and by name (its DNS SAN).
    for target, options in (
        (tls_server.address, []),
        (tls_server.address, [("grpc.ssl_target_name_override", "localhost")]),
    ):
        with grpc.secure_channel(target, credentials, options=options) as channel:
            response = score(channel)
        assert len(response.scores) == len(ITEMS)
        assert all(0.0 <= s <= 1.0 for s in response.scores)


def test_plaintext_client_is_refused(tls_server: ServerThread) -> None:
    with (
        grpc.insecure_channel(tls_server.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        score(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_is_refused(tls_server: ServerThread, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other", ca_name="some other CA")
    credentials = grpc.ssl_channel_credentials(root_certificates=stranger.ca.read_bytes())
    with (
        grpc.secure_channel(tls_server.address, credentials) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        score(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpclib_over_tls(tls_server: ServerThread, pki: Pki) -> None:
    """The second gRPC implementation negotiates TLS + ALPN h2 with the server too."""
    assert tls_server.server is not None
    port = tls_server.server.port

    async def call() -> pb.ScoreResponse:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.set_alpn_protocols(["h2"])
        channel = Channel("localhost", port, ssl=context)
        try:
            method = UnaryUnaryMethod(
                channel, "/queryrec.v1.Scorer/Score", pb.ScoreRequest, pb.ScoreResponse
            )
            return await method(pb.ScoreRequest(user_id=7, item_ids=ITEMS), timeout=10)
        finally:
            channel.close()

    assert len(asyncio.run(call()).scores) == len(ITEMS)


def test_healthcheck_over_tls(
    tls_server: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = tls_server.address
    assert main(["--addr", addr, "--tls", "--tls-ca", str(pki.ca)]) == EXIT_SERVING
    assert (
        main(["--addr", addr, "--tls", "--tls-ca", str(pki.ca), "--tls-server-name", "localhost"])
        == EXIT_SERVING
    )
    assert capsys.readouterr().out == "status: SERVING\n" * 2
    # Plaintext, or TLS without trusting the CA: no connection.
    assert main(["--addr", addr]) == EXIT_CONNECTION
    assert main(["--addr", addr, "--tls"]) == EXIT_CONNECTION
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("failed to connect") for line in lines)
