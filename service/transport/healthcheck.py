"""`python -m service.transport.healthcheck`: is the scoring server SERVING? (the image's HEALTHCHECK)

One `grpc.health.v1.Health/Check` call, read the way `grpc_health_probe` reads it, so a
Docker HEALTHCHECK, a Kubernetes exec probe or an operator's script can use either tool
and get the same answer. Exit codes, as grpc_health_probe documents them:

| exit | meaning |
|---|---|
| 0 | the Check answered `SERVING` (one line `status: SERVING` on stdout) |
| 1 | invalid command line (a bad flag, an unreadable `--tls-ca`, `--tls-cert` or `--tls-key` file) |
| 2 | no connection within `--timeout` (nothing listening, TLS handshake refused, ...) |
| 3 | connected, but the Check call failed (UNIMPLEMENTED, NOT_FOUND for an unknown `--service`, DEADLINE_EXCEEDED, ...) |
| 4 | the Check answered, but not `SERVING` (`NOT_SERVING` while warming up or draining, `UNKNOWN`, `SERVICE_UNKNOWN`) |

Every failure writes exactly one line on stderr. Scripts should treat any non-zero code
as unhealthy; the distinctions are for the person reading the log.

The default address is `QUERYREC_HOST:QUERYREC_PORT` (the server's own settings, a
wildcard bind address replaced by loopback), else `127.0.0.1:50051`. TLS is not guessed
from the server's settings: pass `--tls` (and `--tls-ca` for a private CA) when the server
has `QUERYREC_TLS_CERT_FILE`, and a client certificate (`--tls-cert`, `--tls-key`) when it
requires one (`QUERYREC_TLS_CLIENT_CA_FILE`, mutual TLS: the handshake comes before any
call, health included). The module imports only grpc and the health messages (no
settings, no model code) because it runs every few seconds in the container.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_USAGE = 1
EXIT_CONNECTION = 2
EXIT_RPC = 3
EXIT_UNHEALTHY = 4

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "50051"
DEFAULT_TIMEOUT_S = 1.0
PROG = "python -m service.transport.healthcheck"
# A server bound to a wildcard address is reached over loopback from inside its container.
_WILDCARDS = {"": DEFAULT_HOST, "0.0.0.0": DEFAULT_HOST, "::": "[::1]", "[::]": "[::1]"}


class UsageError(Exception):
    """A command line this tool cannot run (exit 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting 2: grpc_health_probe
    reserves 2 for a failed connection, and a probe's log should get one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Probe:
    """What to ask: the gRPC target, the health service name and how to connect."""

    target: str
    service: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    tls_ca: bytes | None = None
    tls_server_name: str | None = None
    tls_cert: bytes | None = None  # client certificate chain (PEM), for mutual TLS
    tls_key: bytes | None = None  # its private key (PEM)


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """`QUERYREC_HOST:QUERYREC_PORT`, each defaulting separately (127.0.0.1, 50051)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    host = env.get("QUERYREC_HOST", DEFAULT_HOST).strip()
    port = env.get("QUERYREC_PORT", DEFAULT_PORT).strip() or DEFAULT_PORT
    return f"{_connectable(host)}:{port}"


def _connectable(host: str) -> str:
    """A host a client can dial: loopback for a wildcard, brackets around bare IPv6."""
    if host in _WILDCARDS:
        return _WILDCARDS[host]
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _target(addr: str) -> str:
    """The gRPC target of `--addr`: `:PORT` (grpc_health_probe's shorthand) means loopback;
    `HOST:PORT`, `[V6]:PORT` and `unix:` targets pass through."""
    if addr.startswith(":"):
        return f"{DEFAULT_HOST}{addr}"
    return addr


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> Probe:
    """The command line as a `Probe`; UsageError for anything exit code 1 covers."""
    parser = _Parser(
        prog=PROG,
        description="Exit 0 when the gRPC health status is SERVING; 2: no connection, "
        "3: the Check call failed, 4: not SERVING, 1: bad command line.",
    )
    parser.add_argument(
        "--addr",
        default=None,
        help="HOST:PORT of the server (default: QUERYREC_HOST:QUERYREC_PORT, else "
        f"{DEFAULT_HOST}:{DEFAULT_PORT}); ':PORT' means {DEFAULT_HOST}",
    )
    parser.add_argument(
        "--service",
        default="",
        help="health service name to check (default: '', the server as a whole)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="longest wait for the connection, and again for the Check call "
        f"(default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="PEM CA certificates to verify the server with (default: the system roots)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="name to verify the server certificate against (default: the host of --addr)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="PEM client certificate chain, for a server that requires one (mutual TLS)",
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="PEM key of --tls-cert"
    )
    args = parser.parse_args(argv)
    tls_only = (args.tls_ca, args.tls_server_name, args.tls_cert, args.tls_key)
    if not args.tls and any(value is not None for value in tls_only):
        raise UsageError("--tls-ca, --tls-server-name, --tls-cert and --tls-key need --tls")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return Probe(
        target=_target(args.addr if args.addr is not None else default_address()),
        service=args.service,
        timeout_s=args.timeout,
        tls=args.tls,
        tls_ca=_read("--tls-ca", args.tls_ca),
        tls_server_name=args.tls_server_name,
        tls_cert=_read("--tls-cert", args.tls_cert),
        tls_key=_read("--tls-key", args.tls_key),
    )


def _read(flag: str, path: Path | None) -> bytes | None:
    """The file's bytes (None: not given); UsageError naming the flag when unreadable."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{flag} {path}: {error.strerror}") from None


def _channel(probe: Probe) -> grpc.Channel:
    """A channel that dials `probe.target` directly: no HTTP proxy from the environment
    (a probe checks this host, not a proxy's view of it)."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.primary_user_agent", "queryrec-healthcheck"),
    ]
    if not probe.tls:
        return grpc.insecure_channel(probe.target, options=options)
    if probe.tls_server_name is not None:
        options.append(("grpc.ssl_target_name_override", probe.tls_server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=probe.tls_ca, private_key=probe.tls_key, certificate_chain=probe.tls_cert
    )
    return grpc.secure_channel(probe.target, credentials, options=options)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _connect(channel: grpc.Channel, timeout_s: float) -> str | None:
    """Wait for the channel to connect; None when READY, else why not.

    The first TRANSIENT_FAILURE ends the wait: a refused connection or a failed TLS
    handshake is reported at once instead of after `timeout_s` of reconnect attempts (a
    probe answers for this moment; the orchestrator does the retrying).
    """
    settled = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def on_change(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            seen.append(state)
            settled.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        if not settled.wait(timeout_s):
            return f"no connection within {timeout_s:g}s"
    finally:
        channel.unsubscribe(on_change)
    if seen[0] == grpc.ChannelConnectivity.READY:
        return None
    return "the connection failed (nothing listening, name not resolved, or TLS refused)"


def check(probe: Probe) -> tuple[int, str]:
    """Connect, call Check once; (exit code, the one line to print)."""
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name
    with _channel(probe) as channel:
        why_not = _connect(channel, probe.timeout_s)
        if why_not is not None:
            how = " (TLS)" if probe.tls else ""
            return EXIT_CONNECTION, f"failed to connect to {probe.target}{how}: {why_not}"
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=probe.service)
        try:
            response = stub.Check(request, timeout=probe.timeout_s)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                why = "the server does not implement grpc.health.v1"
            elif code == grpc.StatusCode.NOT_FOUND:
                why = f"the server knows no health service {probe.service!r}"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"no answer within {probe.timeout_s:g}s"
            else:
                why = _one_line(error.details() or "no details")
            return EXIT_RPC, f"health check of {probe.target} failed: {code.name}: {why}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        name = probe.service or "(server)"
        return (
            EXIT_UNHEALTHY,
            f"unhealthy: {name} at {probe.target} is {status_name(response.status)}",
        )
    return EXIT_SERVING, f"status: {status_name(response.status)}"


def main(argv: list[str] | None = None) -> int:
    """Run the probe; the exit code (see the module docstring). `argv` None: sys.argv."""
    try:
        probe = parse_args(argv)
    except UsageError as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    code, line = check(probe)
    print(line, file=sys.stdout if code == EXIT_SERVING else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
