"""The CPU image's own lines, run outside Docker: its ENTRYPOINT/CMD from the serving
virtual environment with the environment the image and compose give the scorer, against
a real Redis that requires the compose password; its HEALTHCHECK command before and
after the server is ready; its STOPSIGNAL, after which the server drains and exits 0
within compose's stop_grace_period.

Only what cannot be the same outside a container is changed: the bundle path (the test
bundle), the Redis address (an embedded redis-server instead of the `redis` host), the
ports (free ones, so parallel runs do not collide) and PATH (the venv instead of
/opt/venv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from service.state.embedded_redis import EmbeddedRedis
from tests.docker.files import (
    COMPOSE,
    DOCKER,
    ENV_EXAMPLE,
    container_command,
    duration_s,
    environment,
    healthcheck,
    read_compose,
    read_dockerfile,
    read_env_file,
)

pytestmark = pytest.mark.slow  # needs the fresh serving install (tests/docker/conftest.py)

READY_BOUND_S = 600.0
"""Longest wait for the first healthy probe: a bound against a hang, not a latency check
(Docker itself would give start_period + retries x interval)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(command: list[str], env: dict[str, str], timeout_s: float) -> int:
    """Run the HEALTHCHECK command once as Docker does: its exit code, 1 when it runs past
    the HEALTHCHECK timeout (Docker counts that as a failed check)."""
    try:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s
        ).returncode
    except subprocess.TimeoutExpired:
        return 1


class Lines:
    """A pipe read line by line in a thread; `wait_for(text)` blocks until a line has it."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines), timeout_s
            )

    def join(self, timeout_s: float) -> str:
        self._thread.join(timeout_s)
        return "".join(self.lines)


def test_image_command_healthcheck_and_stop_signal(serving_venv: Path, bundle: Path) -> None:
    image = read_dockerfile(DOCKER / "Dockerfile").final
    command = container_command(image)
    check = healthcheck(image)
    stop = image.last("STOPSIGNAL")
    assert stop is not None
    stop_signal = signal.Signals[stop.value]
    example = read_env_file(ENV_EXAMPLE)
    scorer = read_compose(COMPOSE, example)["services"]["scorer"]
    grace_period_s = duration_s(scorer["stop_grace_period"])

    # The container's environment: the image's ENV, then compose's `environment`.
    env = {**image.env(), **environment(scorer)}
    password = env["QUERYREC_REDIS_PASSWORD"]
    assert password == example["REDIS_PASSWORD"]
    with EmbeddedRedis(password=password) as redis_server:
        assert env["QUERYREC_REDIS_URL"].startswith("redis://redis:")
        env["QUERYREC_REDIS_URL"] = redis_server.url  # no password in it: the variable's
        env["QUERYREC_BUNDLE"] = str(bundle)
        env["QUERYREC_PORT"] = str(free_port())
        env["QUERYREC_ADMIN_PORT"] = str(free_port())
        assert env["PATH"].split(os.pathsep)[0] == "/opt/venv/bin"  # the image's venv first
        env["PATH"] = os.pathsep.join([str(serving_venv / "bin"), os.environ["PATH"]])
        env["HOME"] = str(serving_venv.parent)
        executable = shutil.which(command[0], path=env["PATH"])
        assert executable == str(serving_venv / "bin" / command[0])
        probe_command = [shutil.which(check.command[0], path=env["PATH"]) or "", *check.command[1:]]
        assert probe_command[0] == str(serving_venv / "bin" / check.command[0])

        process = subprocess.Popen(
            [executable, *command[1:]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = Lines(process.stdout), Lines(process.stderr)
        try:
            # Before it is ready (still importing, loading or warming) the probe fails.
            codes = [probe(probe_command, env, check.timeout_s)]
            assert codes[0] != 0
            deadline = time.monotonic() + READY_BOUND_S
            while codes[-1] != 0:
                assert process.poll() is None, err.join(5)[-4000:]
                assert time.monotonic() < deadline, f"never healthy: {codes}"
                time.sleep(0.5)
                codes.append(probe(probe_command, env, check.timeout_s))
            assert set(codes[:-1]) <= {2, 4}, codes  # no connection yet, or NOT_SERVING
            assert out.wait_for("listening on", 60), out.join(1)
            # Healthy answers keep coming while it serves.
            assert probe(probe_command, env, check.timeout_s) == 0

            process.send_signal(stop_signal)
            # The drain turns health NOT_SERVING at once, while the process still runs
            # (for QUERYREC_DRAIN_DELAY_S), so the balancer stops sending calls.
            after = probe(probe_command, env, check.timeout_s)
            while after == 0 and process.poll() is None:
                after = probe(probe_command, env, check.timeout_s)
            assert after != 0 and process.poll() is None, (after, process.returncode)
            # Docker sends SIGKILL after the stop grace period; it must exit before, with 0.
            code = process.wait(timeout=grace_period_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        log = err.join(30)
        assert code == 0, log[-4000:]
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert "drain_started" in events and "workers_stopped" in events, events
