"""`serve --workers 2`: gRPC health on the shared port and the supervisor's /readyz agree.

Real processes and real gRPC. Worker 1's first warm-up is held in the test (a
`sitecustomize` on the workers' PYTHONPATH makes it wait on a FIFO the test opens), so
the window in which worker 0 is warmed and worker 1 is not stays open as long as the
test needs: no worker may say SERVING then, since /readyz says not ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.service.transport.test_operations import version_copy
from tests.service.transport.test_workers import alive

TOKEN = "fleet-token"
CHECKS = 16  # fresh connections: all of them on one of two workers has odds 2**-15
POLLS = 20_000  # a bound on polling for a state that must come: a hang fails
SERVING = health_pb2.HealthCheckResponse.SERVING
GATE_ENV = "QUERYREC_TEST_WARM_UP_GATE"

# Test-only, in the workers' processes: worker 1's first warm-up waits until the test
# opens and closes the FIFO named by GATE_ENV (nothing of it is in the service's code).
SITECUSTOMIZE = f"""
import os, sys

if sys.argv[:2] == ["-m", "1"] and os.environ.get({GATE_ENV!r}):
    from service.inference.scoring import Scorer

    _warm_up = Scorer.warm_up
    _gates = [os.environ[{GATE_ENV!r}]]

    def _gated_warm_up(self):
        if _gates:
            with open(_gates.pop()) as fifo:
                fifo.read()
        _warm_up(self)

    Scorer.warm_up = _gated_warm_up
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def health(port: int) -> int | str:
    """The gRPC health of the whole server, on a connection of its own (the kernel picks
    the worker); a status code's name when the call fails."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        except grpc.RpcError as error:
            return str(error.code().name)
        return int(answer.status)


def readyz(admin_port: int) -> int:
    """The supervisor's /readyz status (0: no answer, the admin API is gone)."""
    try:
        return httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=30).status_code
    except httpx.HTTPError:
        return 0


class Events:
    """The supervisor's stderr JSON lines (its own and its workers'), read on demand."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []

    def until(self, done: Any) -> None:
        assert self.process.stderr is not None
        while not done(self.seen):
            line = self.process.stderr.readline()
            assert line, f"the server exited; events so far: {self.seen}"
            if line.startswith("{"):
                self.seen.append(json.loads(line))

    def of(self, name: str) -> dict[int, dict[str, Any]]:
        """Worker index -> its (last) `name` event."""
        return {e["worker"]: e for e in self.seen if e.get("event") == name and "worker" in e}


def test_grpc_health_never_serves_before_the_fleet_is_ready(
    bundle: Path, redis_client_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    gate = tmp_path / "warm-up-gate"
    os.mkfifo(gate)
    admin_port = free_port()
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site),
        GATE_ENV: str(gate),
        "QUERYREC_ADMIN_PORT": str(admin_port),
        "QUERYREC_ADMIN_TOKEN": TOKEN,
        "QUERYREC_DRAIN_DELAY_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--workers", "2"]
    command += ["--bundle", str(bundle), "--redis", redis_client_url, "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    events = Events(process)
    pids: list[int] = []
    gate_opened = False
    try:
        # The window: worker 0 warmed, worker 1 listening and held in its warm-up.
        events.until(lambda _: 0 in events.of("ready") and 1 in events.of("listening"))
        listening = events.of("listening")
        pids = [listening[0]["pid"], listening[1]["pid"]]
        port = int(listening[0]["port"])
        checks = [health(port) for _ in range(CHECKS)]
        assert SERVING not in checks, checks
        assert events.of("ready")[0]["held"] is True
        assert 1 not in events.of("ready")
        answer = httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=30)
        assert answer.status_code == 503, answer.text
        by_worker = {w["worker"]: w for w in answer.json()["workers"]}
        assert by_worker[0]["reasons"] == ["waiting_for_fleet"], by_worker
        assert "warming_up" in by_worker[1]["reasons"], by_worker
        private = httpx.get(f"http://127.0.0.1:{listening[0]['admin_port']}/readyz", timeout=30)
        assert private.status_code == 503
        assert private.json()["reasons"] == ["waiting_for_fleet"]

        # Worker 1 warms up: poll both until gRPC says SERVING. Each /readyz is asked
        # after the health answer it is paired with, so a SERVING seen while the fleet
        # is not ready shows as a pair (SERVING, not 200).
        descriptor = os.open(gate, os.O_WRONLY)  # worker 1 has it open for reading
        os.close(descriptor)
        gate_opened = True
        pairs: list[tuple[int | str, int]] = []
        for _ in range(POLLS):
            pairs.append((health(port), readyz(admin_port)))
            if pairs[-1][0] == SERVING:
                break
        else:
            raise AssertionError(f"never SERVING: {pairs[-5:]}")
        assert [p for p in pairs if p[0] == SERVING and p[1] != 200] == [], pairs
        assert all(p[0] != SERVING for p in pairs[:-1])

        # Every worker serves once the listening line is out.
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line and "2 workers" in line, line
        assert [health(port) for _ in range(CHECKS)] == [SERVING] * CHECKS
        answer = httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=30)
        assert answer.status_code == 200, answer.text
        assert all(w["ready"] and w["reasons"] == [] for w in answer.json()["workers"])

        # A reload leaves both alone: polled while it runs, and after it.
        during: list[tuple[int | str, int]] = []
        finished = threading.Event()
        result: list[httpx.Response] = []

        def reload() -> None:
            try:
                result.append(
                    httpx.post(
                        f"http://127.0.0.1:{admin_port}/v1/model/reload",
                        json={"bundle": str(version_copy(bundle, tmp_path, "r2"))},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=300,
                    )
                )
            finally:
                finished.set()

        thread = threading.Thread(target=reload)
        thread.start()
        while not finished.is_set():
            during.append((health(port), readyz(admin_port)))
        thread.join()
        assert result and result[0].status_code == 200, result
        assert result[0].json()["reloaded"] == [0, 1]
        assert set(during) <= {(SERVING, 200)}, during
        assert [health(port) for _ in range(CHECKS)] == [SERVING] * CHECKS
        assert readyz(admin_port) == 200

        # Drain: once both workers began it, neither says SERVING nor /readyz 200 (late
        # checks find the workers refusing or gone, and the admin API gone: still not).
        process.send_signal(signal.SIGTERM)
        events.until(lambda _: set(events.of("drain_started")) == {0, 1})
        draining = [(health(port), readyz(admin_port)) for _ in range(CHECKS)]
        assert all(h != SERVING and r != 200 for h, r in draining), draining
        _, err = process.communicate(timeout=120)
    finally:
        if not gate_opened:  # worker 1 may still wait in its warm-up
            with contextlib.suppress(OSError):
                os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err
