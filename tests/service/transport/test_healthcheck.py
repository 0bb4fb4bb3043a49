"""`python -m service.transport.healthcheck` against a real server: exit codes as grpc_health_probe's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.transport import healthcheck
from service.transport.healthcheck import (
    EXIT_CONNECTION,
    EXIT_RPC,
    EXIT_SERVING,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    default_address,
    main,
)
from tests.service.harness import ServerThread

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def served(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    with ServerThread(bundle, redis_url) as harness:
        yield harness


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: a connection to it is refused,
    and nothing else can take the port while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the probe wrote on stderr (and nothing on stdout)."""
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_warming_server_is_unhealthy_until_it_serves(
    bundle: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = ServerThread(bundle, redis_url)
    try:
        server = harness.create()  # bound, not started
        assert main(["--addr", harness.address, "--timeout", "0.5"]) != EXIT_SERVING
        stderr_line(capsys)
        harness.run(server.listen())  # accepting calls, still warming: NOT_SERVING
        for service in ("", "queryrec.v1.Scorer"):
            assert main(["--addr", harness.address, "--service", service]) == EXIT_UNHEALTHY
            assert "NOT_SERVING" in stderr_line(capsys)
        harness.run(server.warm_up_and_serve())
        assert main(["--addr", harness.address]) == EXIT_SERVING
        assert capsys.readouterr().out == "status: SERVING\n"
        harness.run(server.stop(0.5))  # stopping turns health NOT_SERVING first
        assert main(["--addr", harness.address]) != EXIT_SERVING
    finally:
        harness.close()


def test_serving_server_and_its_scorer_service(
    served: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--addr", served.address]) == EXIT_SERVING
    assert main(["--addr", served.address, "--service", "queryrec.v1.Scorer"]) == EXIT_SERVING
    assert capsys.readouterr().out == "status: SERVING\nstatus: SERVING\n"


def test_unknown_service_is_an_rpc_failure(
    served: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--addr", served.address, "--service", "no.such.Service"]) == EXIT_RPC
    line = stderr_line(capsys)
    assert "NOT_FOUND" in line and "no.such.Service" in line


def test_nothing_listening_is_a_connection_failure(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--addr", f"127.0.0.1:{closed_port}"]) == EXIT_CONNECTION
    assert stderr_line(capsys).startswith(f"failed to connect to 127.0.0.1:{closed_port}")


def test_default_address_comes_from_the_server_settings(
    served: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert served.server is not None
    monkeypatch.setenv("QUERYREC_HOST", "0.0.0.0")  # a wildcard bind is probed on loopback
    monkeypatch.setenv("QUERYREC_PORT", str(served.server.port))
    assert main([]) == EXIT_SERVING
    assert capsys.readouterr().out == "status: SERVING\n"


def test_default_address_rules() -> None:
    assert default_address({}) == "127.0.0.1:50051"
    assert default_address({"QUERYREC_PORT": "6000"}) == "127.0.0.1:6000"
    assert default_address({"QUERYREC_HOST": "scorer.internal"}) == "scorer.internal:50051"
    assert default_address({"QUERYREC_HOST": "::", "QUERYREC_PORT": "7"}) == "[::1]:7"
    assert default_address({"QUERYREC_HOST": "fd00::5"}) == "[fd00::5]:50051"


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--timeout", "0"],
        ["--timeout", "soon"],
        ["--tls-ca", "ca.pem"],  # needs --tls
        ["--tls-server-name", "localhost"],  # needs --tls
        ["--tls", "--tls-ca", "/nonexistent/ca.pem"],
    ],
)
def test_bad_command_line_is_exit_1_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    assert stderr_line(capsys).startswith(f"{healthcheck.PROG}: error: ")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--tls-server-name" in capsys.readouterr().out


def test_module_entry_point(served: ServerThread, closed_port: int) -> None:
    """`python -m service.transport.healthcheck`, as the image's HEALTHCHECK runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYREC_")}

    def probe(addr: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.transport.healthcheck", "--addr", addr],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=60,
        )

    healthy = probe(served.address)
    assert (healthy.returncode, healthy.stdout) == (EXIT_SERVING, "status: SERVING\n")
    down = probe(f"127.0.0.1:{closed_port}")
    assert down.returncode == EXIT_CONNECTION
    assert down.stdout == "" and len(down.stderr.splitlines()) == 1, down.stderr
