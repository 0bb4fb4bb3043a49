"""Who may call the gRPC API: a bearer token, mutual TLS, and the rule for public binds.

- Token (`QUERYREC_API_TOKEN` / `QUERYREC_API_TOKEN_FILE`): when set, every call must
  carry the metadata `authorization: Bearer <token>`, checked by `BearerTokenInterceptor`
  in constant time; a call without it, or with another token, is answered
  UNAUTHENTICATED with a message and never reaches the handler.
- The health service (`grpc.health.v1.Health`) stays open: load balancers, Kubernetes
  and the image's HEALTHCHECK probe it without credentials, and it tells only
  SERVING / NOT_SERVING. Reflection is not open: it lists the API, so it is behind the
  token like the Scorer.
- Mutual TLS (`QUERYREC_TLS_CLIENT_CA_FILE`, read by `client_ca`): the handshake requires
  a client certificate that chains to that CA bundle (`service.transport.server._bind`).
- The rule (`api_token`): on a loopback bind (`is_loopback`) neither is needed; on any
  other bind `serve` refuses to start, with one line naming the setting, unless a
  token or mutual TLS is configured, or `QUERYREC_ALLOW_UNAUTHENTICATED=true` says that
  a trusted network or an authenticating proxy in front does the job.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from service.errors import SettingsError
from service.settings import ServiceSettings

HEALTH_SERVICE = "grpc.health.v1.Health"
OPEN_SERVICES = (HEALTH_SERVICE,)
"""Services answered without a token (probes)."""
AUTHORIZATION = "authorization"
SCHEME = "bearer"
REFUSAL = "a valid API token is required: send the metadata 'authorization: Bearer <token>'"


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only: `localhost`, 127.0.0.0/8
    or ::1 (bracketed or not). A wildcard (0.0.0.0, ::, "") or any other host is public."""
    name = host.strip().lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(settings: ServiceSettings, name: str) -> str | None:
    """A bearer token setting (`api_token`, `admin_token`, or their `_file`): None when
    unset; SettingsError when set but blank, which would let an empty header match."""
    token = settings.secret(name)
    if token is not None and not token.strip():
        raise SettingsError(f"QUERYREC_{name.upper()} is set but empty")
    return token


def api_token(settings: ServiceSettings) -> str | None:
    """The token every gRPC call must carry, or None (no token check).

    SettingsError (one line, exit 2) when the API would be open to strangers: a
    non-loopback bind with no token, no mutual TLS and no explicit opt-out."""
    token = read_token(settings, "api_token")
    guarded = token is not None or settings.tls_client_ca_file is not None
    if not guarded and not is_loopback(settings.host) and not settings.allow_unauthenticated:
        raise SettingsError(
            f"gRPC bound to the public address {settings.host!r} without authentication: set "
            "QUERYREC_API_TOKEN (or QUERYREC_API_TOKEN_FILE), or QUERYREC_TLS_CLIENT_CA_FILE "
            "for mutual TLS (QUERYREC_ALLOW_UNAUTHENTICATED=true only behind a trusted network)"
        )
    return token


def client_ca(settings: ServiceSettings) -> bytes | None:
    """The PEM CA bundle client certificates must chain to (mutual TLS), or None.
    SettingsError when the file cannot be read or holds no certificate (gRPC would
    otherwise fail every handshake, or crash, with no word about the setting)."""
    path = settings.tls_client_ca_file
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise SettingsError(f"TLS: cannot read {path} ({error.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise SettingsError(f"QUERYREC_TLS_CLIENT_CA_FILE {path}: no PEM certificate in it")
    return pem


def presented_token(metadata: Sequence[tuple[str, Any]] | None) -> bytes:
    """The credential of the call's first `authorization` entry when its scheme is
    Bearer (any case); empty bytes otherwise."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            scheme, _, credential = str(value).strip().partition(" ")
            return credential.strip().encode() if scheme.lower() == SCHEME else b""
    return b""


def _refusal(like: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `like` that answers UNAUTHENTICATED
    before reading anything (requests stay undecoded bytes)."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    streams_in = like is not None and like.request_streaming
    streams_out = like is not None and like.response_streaming
    if streams_in and streams_out:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if streams_in:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if streams_out:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through when it carries `authorization: Bearer <token>` or is one of
    `open_services` (health); any other call is answered UNAUTHENTICATED."""

    def __init__(self, token: str, open_services: Sequence[str] = OPEN_SERVICES) -> None:
        self._expected = token.encode()
        self._open_prefixes = tuple(f"/{service}/" for service in open_services)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The method's own handler when allowed, else a refusal of the same shape."""
        handler = await continuation(details)
        if details.method.startswith(self._open_prefixes) or self._allowed(details):
            return handler
        return _refusal(handler)

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        given = presented_token(details.invocation_metadata)
        return hmac.compare_digest(given, self._expected)


def interceptors(token: str | None) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors: the token check when a token is set, else none."""
    return [] if token is None else [BearerTokenInterceptor(token)]
