"""Closing the API to strangers: the gRPC bearer token, mutual TLS, the public-bind rule
and the admin token on /v1/score and /v1/model (`service.transport.auth`, `service.transport.admin`).

Real servers on real sockets (`ServerThread`), real gRPC channels and a real Redis; the
certificates are made here with `cryptography` (a CA for the server, one for the
clients, and a stranger's CA).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.cli import main
from clients.credentials import api_metadata
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from service.errors import SettingsError
from service.settings import ServiceSettings, load_settings
from service.transport.admin import build_admin_app, build_fleet_admin_app
from service.transport.auth import api_token, client_ca, is_loopback
from service.transport.healthcheck import EXIT_SERVING
from service.transport.healthcheck import main as healthcheck
from service.transport.server import create_server
from tests.service.harness import ServerThread
from tests.service.transport.test_tls import Pki, certificate, make_pki

TOKEN = "api-s3cret"
ADMIN_TOKEN = "admin-s3cret"
BEARER = (("authorization", f"Bearer {TOKEN}"),)
T = 1_700_000_000_000
REQUESTS: dict[str, Any] = {
    "Score": pb.ScoreRequest(user_id=7, item_ids=[1, 2]),
    "RecordQuery": pb.RecordQueryRequest(user_id=7, token_ids=[1], timestamp_ms=T),
    "RecordClicks": pb.RecordClicksRequest(user_id=7, item_ids=[1], timestamp_ms=T),
    "RecordSearchClicks": pb.RecordSearchClicksRequest(
        user_id=7, search_timestamp_ms=T, item_ids=[1]
    ),
}


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say which token each server and client has; the caller's shell must not."""
    for name in ("API_TOKEN", "API_TOKEN_FILE", "ALLOW_UNAUTHENTICATED", "ADMIN_TOKEN"):
        monkeypatch.delenv(f"QUERYREC_{name}", raising=False)


# The bearer token on the gRPC API.
@pytest.fixture(scope="module")
def guarded(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    """gRPC with the API token (loopback: reflection on); the admin API on a public bind
    with the admin token."""
    with ServerThread(
        bundle,
        redis_url,
        api_token=TOKEN,
        admin_port=0,
        admin_host="0.0.0.0",
        admin_token=ADMIN_TOKEN,
    ) as harness:
        yield harness


def call(channel: grpc.Channel, method: str, metadata: Any = None) -> Any:
    """One unary call of the Scorer by name."""
    stub = scorer_pb2_grpc.ScorerStub(channel)
    return getattr(stub, method)(REQUESTS[method], timeout=30, metadata=metadata)


def refused(channel: grpc.Channel, method: str, metadata: Any = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, method, metadata)
    return caught.value


@pytest.mark.parametrize("method", sorted(REQUESTS))
def test_a_call_without_the_token_is_unauthenticated(guarded: ServerThread, method: str) -> None:
    assert guarded.channel is not None
    error = refused(guarded.channel, method)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (error.details() or "")


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Bearer wrong"),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", TOKEN),),
        (("authorization", "Bearer "),),
    ],
)
def test_a_wrong_token_is_unauthenticated(guarded: ServerThread, metadata: Any) -> None:
    assert guarded.channel is not None
    assert refused(guarded.channel, "Score", metadata).code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_the_right_token_is_served(guarded: ServerThread, scheme: str) -> None:
    assert guarded.channel is not None
    response = call(guarded.channel, "Score", (("authorization", f"{scheme} {TOKEN}"),))
    assert len(response.scores) == 2
    call(guarded.channel, "RecordClicks", BEARER)


def test_the_clients_helper_sends_the_token_of_the_environment(
    guarded: ServerThread, tmp_path: Path
) -> None:
    assert guarded.channel is not None
    assert api_metadata({}) == ()
    assert api_metadata({"QUERYREC_API_TOKEN": TOKEN}) == BEARER
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    from_file = api_metadata({"QUERYREC_API_TOKEN_FILE": str(token_file)})
    assert len(call(guarded.channel, "Score", from_file).scores) == 2


def test_health_is_open_without_a_token(
    guarded: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert guarded.channel is not None
    stub = health_pb2_grpc.HealthStub(guarded.channel)
    for service in ("", "queryrec.v1.Scorer"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert healthcheck(["--addr", guarded.address]) == EXIT_SERVING  # the image's probe
    assert capsys.readouterr().out == "status: SERVING\n"


def test_reflection_is_behind_the_token(guarded: ServerThread) -> None:
    assert guarded.channel is not None
    stub = reflection_pb2_grpc.ServerReflectionStub(guarded.channel)

    def list_services(metadata: Any) -> list[str]:
        ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        (answer,) = stub.ServerReflectionInfo(ask, timeout=30, metadata=metadata)
        return [s.name for s in answer.list_services_response.service]

    with pytest.raises(grpc.RpcError) as caught:
        list_services(None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "queryrec.v1.Scorer" in list_services(BEARER)


def test_an_unknown_method_is_unauthenticated_before_unimplemented(guarded: ServerThread) -> None:
    assert guarded.channel is not None
    unknown = guarded.channel.unary_unary("/queryrec.v1.Scorer/Nope")
    for metadata, code in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (BEARER, grpc.StatusCode.UNIMPLEMENTED),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", timeout=30, metadata=metadata)
        assert caught.value.code() == code


# The rule: required on a public bind.
def settings(**values: Any) -> ServiceSettings:
    return ServiceSettings(port=0, admin_port=None, **values)


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "[::]", "", "10.0.0.5", "scorer.internal", "fd00::5"):
        assert not is_loopback(host), host


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_public_bind_without_a_token_exits_2_with_one_line(
    bundle: Path, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One process and the supervisor of several refuse before anything starts."""
    argv = ["serve", "--bundle", str(bundle), "--host", "0.0.0.0", "--port", "0"]
    assert main([*argv, "--admin-port", "0", "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "QUERYREC_API_TOKEN" in err and "0.0.0.0" in err


def test_create_server_on_a_public_bind_without_a_token_raises(bundle: Path) -> None:
    with pytest.raises(SettingsError, match="QUERYREC_API_TOKEN"):
        asyncio.run(create_server(settings(bundle=bundle, host="0.0.0.0")))


def test_what_makes_a_public_bind_acceptable(tmp_path: Path, pki: Pki) -> None:
    assert api_token(settings()) is None  # loopback: no token needed
    assert api_token(settings(host="0.0.0.0", api_token=TOKEN)) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\nignored\n")
    assert api_token(settings(host="::", api_token_file=token_file)) == TOKEN
    mutual = settings(
        host="0.0.0.0", tls_cert_file=pki.cert, tls_key_file=pki.key, tls_client_ca_file=pki.ca
    )
    assert api_token(mutual) is None
    assert api_token(settings(host="0.0.0.0", allow_unauthenticated=True)) is None
    with pytest.raises(SettingsError, match="QUERYREC_API_TOKEN"):
        api_token(settings(host="10.1.2.3"))


def test_a_blank_token_is_refused_not_matched_by_an_empty_header() -> None:
    with pytest.raises(SettingsError, match="QUERYREC_API_TOKEN is set but empty"):
        api_token(settings(api_token=" "))


def test_mutual_tls_needs_tls_and_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="QUERYREC_TLS_CLIENT_CA_FILE needs") as caught:
        load_settings(tls_client_ca_file=tmp_path / "ca.pem")
    assert "\n" not in str(caught.value)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(SettingsError, match="no PEM certificate"):
        client_ca(settings(tls_cert_file=pki.cert, tls_key_file=pki.key, tls_client_ca_file=empty))


def test_a_public_bind_with_the_token_serves_callers_with_it(bundle: Path, redis_url: str) -> None:
    with ServerThread(bundle, redis_url, host="0.0.0.0", api_token=TOKEN) as harness:
        assert harness.channel is not None
        assert refused(harness.channel, "Score").code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(call(harness.channel, "Score", BEARER).scores) == 2


# Mutual TLS.
@dataclass(frozen=True)
class Identity:
    """A client certificate (PEM) and its key, signed by some CA."""

    cert: bytes
    key: bytes


@dataclass(frozen=True)
class ClientCa:
    """A CA that signs client certificates."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str) -> ClientCa:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(name, certificate(name, key, name, key, ca=True), key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, client: str) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(client, key, self.name, self.key, ca=False, client=True)
        return Identity(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The server's CA and certificate (clients trust this CA)."""
    return make_pki(tmp_path_factory.mktemp("server-pki"))


@pytest.fixture(scope="module")
def clients_ca() -> ClientCa:
    return ClientCa.create("queryrec clients CA")


@pytest.fixture(scope="module")
def mutual(
    bundle: Path,
    redis_url: str,
    pki: Pki,
    clients_ca: ClientCa,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """gRPC over TLS requiring client certificates signed by `clients_ca` (no token)."""
    ca_file = tmp_path_factory.mktemp("clients-ca") / "clients-ca.pem"
    ca_file.write_bytes(clients_ca.pem())
    with ServerThread(
        bundle, redis_url, tls_cert_file=pki.cert, tls_key_file=pki.key, tls_client_ca_file=ca_file
    ) as harness:
        yield harness


def tls_score(server: ServerThread, pki: Pki, identity: Identity | None) -> pb.ScoreResponse:
    """Score over TLS trusting the server's CA, with a client certificate or none."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=identity.key if identity else None,
        certificate_chain=identity.cert if identity else None,
    )
    with grpc.secure_channel(server.address, credentials) as channel:
        return call(channel, "Score")


def test_mutual_tls_serves_a_client_certificate_of_the_ca(
    mutual: ServerThread, pki: Pki, clients_ca: ClientCa
) -> None:
    assert len(tls_score(mutual, pki, clients_ca.issue("feed-server")).scores) == 2


def test_mutual_tls_refuses_a_client_without_a_certificate(mutual: ServerThread, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        tls_score(mutual, pki, None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_certificate_of_another_ca(mutual: ServerThread, pki: Pki) -> None:
    stranger = ClientCa.create("some other CA").issue("feed-server")
    with pytest.raises(grpc.RpcError) as caught:
        tls_score(mutual, pki, stranger)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_probe_passes_mutual_tls_with_a_client_certificate(
    mutual: ServerThread, pki: Pki, clients_ca: ClientCa, tmp_path: Path
) -> None:
    """`python -m service.transport.healthcheck --tls-cert/--tls-key`: the image's probe can reach
    health on a server that requires client certificates; without one it cannot."""
    from service.transport.healthcheck import EXIT_CONNECTION, EXIT_SERVING
    from service.transport.healthcheck import main as probe

    identity = clients_ca.issue("health-probe")
    (tmp_path / "probe.pem").write_bytes(identity.cert)
    (tmp_path / "probe.key").write_bytes(identity.key)
    common = ["--addr", mutual.address, "--tls", "--tls-ca", str(pki.ca), "--timeout", "30"]
    common += ["--tls-server-name", "localhost"]
    certificate = [
        "--tls-cert",
        str(tmp_path / "probe.pem"),
        "--tls-key",
        str(tmp_path / "probe.key"),
    ]
    assert probe(common + certificate) == EXIT_SERVING
    assert probe(common) == EXIT_CONNECTION


# The admin API.
def admin_client(server: ServerThread, token: str | None = None) -> httpx.Client:
    assert server.server is not None and server.server.admin is not None
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    port = server.server.admin.port
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60)


def read_endpoints(client: httpx.Client | TestClient) -> list[int]:
    """Status codes of GET /v1/model and POST /v1/score."""
    model = client.get("/v1/model")
    score = client.post("/v1/score", json={"user_id": 7, "item_ids": [1, 2]})
    return [model.status_code, score.status_code]


def test_public_admin_bind_needs_the_admin_token(guarded: ServerThread) -> None:
    with admin_client(guarded) as client:
        assert read_endpoints(client) == [401, 401]
        for probe in ("/healthz", "/readyz", "/metrics"):  # probes stay open
            assert client.get(probe).status_code == 200, probe
    with admin_client(guarded, "wrong") as client:
        assert read_endpoints(client) == [401, 401]
    with admin_client(guarded, TOKEN) as client:  # the API token is not the admin token
        assert read_endpoints(client) == [401, 401]
    with admin_client(guarded, ADMIN_TOKEN) as client:
        assert read_endpoints(client) == [200, 200]
        assert (
            len(client.post("/v1/score", json={"user_id": 7, "item_ids": [1]}).json()["scores"])
            == 1
        )


def in_server_loop(server: ServerThread, app: FastAPI) -> tuple[list[int], str]:
    """`read_endpoints` of an admin app over the server's operations, run in the server's
    event loop (where its batchers live); -> the codes and /v1/model's body."""

    async def ask() -> tuple[list[int], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            model = await client.get("/v1/model")
            score = await client.post("/v1/score", json={"user_id": 7, "item_ids": [1, 2]})
            assert (await client.get("/healthz")).status_code == 200
            return [model.status_code, score.status_code], model.text

    return server.run(ask())


def test_public_admin_bind_without_a_token_turns_them_off(guarded: ServerThread) -> None:
    assert guarded.server is not None
    codes, body = in_server_loop(guarded, build_admin_app(guarded.server, None, "0.0.0.0"))
    assert codes == [403, 403] and "QUERYREC_ADMIN_TOKEN" in body


@pytest.mark.parametrize("token", [None, ADMIN_TOKEN])
def test_loopback_admin_bind_leaves_them_open(guarded: ServerThread, token: str | None) -> None:
    assert guarded.server is not None
    codes, _ = in_server_loop(guarded, build_admin_app(guarded.server, token, "127.0.0.1"))
    assert codes == [200, 200]


class Answers:
    """The supervisor's side of the fleet admin app (`service.transport.admin.Fleet`), answering
    every forwarded request with 200: these tests are about who gets that far."""

    async def readiness(self) -> dict[str, Any]:
        return {"ready": True}

    def metrics_text(self) -> bytes:
        return b""

    async def forward(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        return 200, {"path": path}

    async def reload(self, bundle: str | None) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True}


@pytest.mark.parametrize(
    ("token", "host", "sent", "expected"),
    [
        (None, "0.0.0.0", None, [403, 403]),
        (ADMIN_TOKEN, "0.0.0.0", None, [401, 401]),
        (ADMIN_TOKEN, "0.0.0.0", "wrong", [401, 401]),
        (ADMIN_TOKEN, "0.0.0.0", ADMIN_TOKEN, [200, 200]),
        (None, "127.0.0.1", None, [200, 200]),
        (ADMIN_TOKEN, "::1", None, [200, 200]),
    ],
)
def test_the_fleet_admin_app_keeps_the_same_rule(
    token: str | None, host: str, sent: str | None, expected: list[int]
) -> None:
    app: FastAPI = build_fleet_admin_app(Answers(), token, host)
    headers = {"Authorization": f"Bearer {sent}"} if sent is not None else {}
    with TestClient(app, headers=headers) as client:
        assert read_endpoints(client) == expected
        assert client.get("/healthz").status_code == 200
