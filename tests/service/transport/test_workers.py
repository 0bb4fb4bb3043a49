"""`queryrec serve --workers 2`: one port, one admin API, merged metrics, one shutdown.

Real processes (the supervisor and its workers, started as `queryrec serve` is), real
gRPC channels and a real Redis. Which worker answered a call is read from the workers'
own metrics (each worker's private admin API, whose port its `listening` log line gives).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from app.cli import main
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from tests.service.transport.test_operations import metric_samples, version_copy

TOKEN = "workers-token"
CALLS = 40  # fresh connections: all of them on one of two workers has odds 2**-39
SCORE_OK = ("queryrec_grpc_requests_total", (("code", "OK"), ("method", "Score")))


@dataclass
class Fleet:
    """A running `queryrec serve --workers 2` and what its start told."""

    process: subprocess.Popen[str]
    port: int
    admin_port: int
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> listening
    events: list[dict[str, Any]] = field(default_factory=list)  # stderr JSON lines so far

    def admin(self, port: int | None = None) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{port or self.admin_port}", timeout=60)

    def read_events_until(self, done: Any) -> None:
        """Read the server's stderr up to the first JSON line for which `done` is true."""
        assert self.process.stderr is not None
        while True:
            line = self.process.stderr.readline()
            assert line, f"the server exited; events so far: {self.events}"
            if line.startswith("{"):
                self.events.append(json.loads(line))
                if done(self.events[-1]):
                    return

    def stop(self) -> str:
        """SIGTERM; -> the rest of stderr once every process exited."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=120)
        self.events += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return err


def start_fleet(bundle: Path, redis_url: str | None) -> Fleet:
    env = {
        **os.environ,
        "QUERYREC_ADMIN_PORT": "0",
        "QUERYREC_ADMIN_TOKEN": TOKEN,
        "QUERYREC_DRAIN_DELAY_S": "0.2",
        "QUERYREC_BUDGET_MS": "10000",  # whole answers on a busy test machine
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--workers", "2"]
    command += ["--bundle", str(bundle), "--port", "0"]
    if redis_url is not None:
        command += ["--redis", redis_url]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # every worker warmed and listening
    if "listening on" not in line:
        process.kill()
        _, err = process.communicate(timeout=60)
        raise AssertionError(f"no listening line: {line!r}\n{err[-3000:]}")
    address = line.split("listening on ")[1].split()[0]
    admin_port = int(line.split("admin on port ")[1].split(",")[0])
    fleet = Fleet(process, int(address.rsplit(":", 1)[1]), admin_port)
    assert "2 workers" in line, line
    fleet.read_events_until(lambda e: e.get("event") == "workers_ready")
    for entry in fleet.events:
        if entry.get("event") == "listening" and "worker" in entry:
            fleet.workers[entry["worker"]] = entry
    assert sorted(fleet.workers) == [0, 1], fleet.events
    return fleet


def score_on_fresh_connection(port: int, request: pb.ScoreRequest) -> pb.ScoreResponse:
    """One call on a channel of its own (no subchannel shared with other channels: a new
    TCP connection, which the kernel hands to one of the workers)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        answer: pb.ScoreResponse = scorer_pb2_grpc.ScorerStub(channel).Score(request, timeout=60)
        return answer


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), command))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_port_one_admin_and_one_shutdown(
    bundle: Path, redis_client_url: str, raw: dict[str, list[int]], tmp_path: Path
) -> None:
    fleet = start_fleet(bundle, redis_client_url)
    try:
        pids = {index: entry["pid"] for index, entry in fleet.workers.items()}
        request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:4])
        answers = [score_on_fresh_connection(fleet.port, request) for _ in range(CALLS)]
        assert all(len(a.scores) == 4 for a in answers)
        version = answers[0].model_version

        # Both workers answered calls, and the one /metrics adds them up.
        per_worker = {}
        for index, entry in fleet.workers.items():
            with fleet.admin(entry["admin_port"]) as private:
                per_worker[index] = metric_samples(private.get("/metrics").text).get(SCORE_OK, 0)
        assert all(count >= 1 for count in per_worker.values()), per_worker
        assert sum(per_worker.values()) == CALLS
        with fleet.admin() as admin:
            merged = metric_samples(admin.get("/metrics").text)
            assert merged[SCORE_OK] == CALLS
            assert merged[("queryrec_grpc_request_duration_seconds_count", SCORE_OK[1])] == CALLS
            assert merged[("queryrec_ready", ())] == 1
            assert merged[("queryrec_redis_up", ())] == 1
            assert merged[("queryrec_grpc_requests_in_flight", ())] == 0
            info = {
                dict(k[1])["model_version"]: v
                for k, v in merged.items()
                if k[0] == "queryrec_model_info"
            }
            assert info == {version: 1}

            ready = admin.get("/readyz")
            assert ready.status_code == 200, ready.text
            report = ready.json()
            assert report["ready"] is True and report["model_version"] == version
            assert {w["worker"]: w["pid"] for w in report["workers"]} == pids
            assert all(w["ready"] for w in report["workers"])
            assert admin.get("/healthz").json() == {"alive": True}
            assert admin.get("/v1/model").json()["model_version"] == version
            mirrored = admin.post(
                "/v1/score", json={"user_id": raw["users"][0], "item_ids": raw["items"][:4]}
            )
            assert mirrored.status_code == 200 and len(mirrored.json()["scores"]) == 4

            # Reload: every worker, one after the other; a bad bundle changes nothing.
            assert admin.post("/v1/model/reload").status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            bad = admin.post(
                "/v1/model/reload", json={"bundle": str(tmp_path / "missing")}, headers=auth
            )
            assert bad.status_code == 422, bad.text
            assert bad.json()["reloaded"] == [] and "missing" in bad.json()["error"]
            good = admin.post(
                "/v1/model/reload",
                json={"bundle": str(version_copy(bundle, tmp_path, "w2"))},
                headers=auth,
            )
            assert good.status_code == 200, good.text
            assert good.json()["reloaded"] == [0, 1]
            assert good.json()["model_version"] == f"{version}-w2"
            after = [score_on_fresh_connection(fleet.port, request) for _ in range(8)]
            assert {a.model_version for a in after} == {f"{version}-w2"}
            assert admin.get("/readyz").json()["model_version"] == f"{version}-w2"
            merged = metric_samples(admin.get("/metrics").text)
            info = {
                dict(k[1])["model_version"]: v
                for k, v in merged.items()
                if k[0] == "queryrec_model_info"
            }
            assert info == {version: 0, f"{version}-w2": 1}
            reloads = ("queryrec_model_reloads_total", (("result", "success"),))
            assert merged[reloads] == 2

        # SIGHUP is passed on: each worker reloads its bundle folder.
        fleet.process.send_signal(signal.SIGHUP)
        asked: set[int] = set()
        done: set[int] = set()

        def both_reloaded(entry: dict[str, Any]) -> bool:
            if entry.get("event") == "reload_requested":
                asked.add(entry["worker"])
            elif entry.get("event") == "reload_done" and entry["worker"] in asked:
                done.add(entry["worker"])
            return done == {0, 1}

        fleet.read_events_until(both_reloaded)
        err = fleet.stop()
    finally:
        if fleet.process.poll() is None:
            fleet.process.kill()
            fleet.process.communicate(timeout=60)
    assert fleet.process.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    for name in ("drain_started", "stopped"):
        assert {e.get("worker") for e in fleet.events if e.get("event") == name} == {0, 1}, name
    assert [e for e in fleet.events if e.get("event") == "worker_exited"] == []
    assert [e["exit_code"] for e in fleet.events if e.get("event") == "workers_stopped"] == [0]
    assert not any(alive(pid) for pid in pids.values())


def test_a_dying_worker_is_one_line_and_stops_the_rest(bundle: Path) -> None:
    fleet = start_fleet(bundle, None)  # the embedded Redis: started once, by the supervisor
    try:
        kids = children(fleet.process.pid)
        assert sum("redis-server" in command for _, command in kids) == 1, kids
        workers = {pid for pid, command in kids if "service.transport.workers" in command}
        assert workers == {entry["pid"] for entry in fleet.workers.values()}
        assert all(children(pid) == [] for pid in workers)
        victim = fleet.workers[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        _, err = fleet.process.communicate(timeout=120)
    finally:
        if fleet.process.poll() is None:
            fleet.process.kill()
            fleet.process.communicate(timeout=60)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    exits = [e for e in events if e.get("event") == "worker_exited"]
    assert len(exits) == 1, exits
    assert exits[0]["pid"] == victim and exits[0]["signal"] == "SIGKILL"
    assert exits[0]["level"] == "ERROR" and exits[0]["expected"] is False
    assert [e.get("worker") for e in events if e.get("event") == "stopped"] == [0]
    assert [e["exit_code"] for e in events if e.get("event") == "workers_stopped"] == [1]
    assert fleet.process.returncode == 1
    assert "Traceback" not in err
    assert not any(alive(pid) for pid, _ in kids)


def test_a_bad_bundle_is_one_line_and_exit_2(
    tmp_path: Path, redis_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", "--workers", "2", "--bundle", str(tmp_path), "--redis", redis_url]
    assert main([*args, "--port", "0"]) == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queryrec: error: "), err
    assert "no manifest" in lines[0] and out == ""


def test_a_taken_port_or_a_bad_count_is_one_line(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--workers", "2", "--bundle", str(bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot bind" in err and "\n" not in err
    assert main(["serve", "--workers", "0", "--bundle", str(bundle)]) == 2
    assert "QUERYREC_WORKERS" in capsys.readouterr().err


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Block until process `pid` (not necessarily a child) exits; False on timeout."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([handle], [], [], timeout)
        return bool(readable)
    finally:
        os.close(handle)


def test_workers_drain_and_exit_when_the_supervisor_is_killed(bundle: Path, redis_url: str) -> None:
    fleet = start_fleet(bundle, redis_url)
    pids = [entry["pid"] for entry in fleet.workers.values()]
    try:
        fleet.process.kill()  # SIGKILL: no shutdown of its own; the workers see stdin end
        # stderr ends when its last writer, a worker, exits.
        _, err = fleet.process.communicate(timeout=120)
        assert all(wait_for_exit(pid, 120) for pid in pids)
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert {e.get("worker") for e in events if e.get("event") == "stopped"} == {0, 1}
        assert "Traceback" not in err
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_one_worker_is_the_single_process_server(bundle: Path, redis_url: str) -> None:
    """`--workers 1`: no supervisor, no worker processes, the port not shared."""
    env = {**os.environ, "QUERYREC_ADMIN_PORT": "none", "QUERYREC_DRAIN_DELAY_S": "0"}
    command = [sys.executable, "-m", "app.cli", "serve", "--workers", "1"]
    command += ["--bundle", str(bundle), "--redis", redis_url, "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line and json.loads(line)["workers"] == 1, line
        assert children(process.pid) == []
        port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        with socket.socket() as other:  # SO_REUSEPORT is off: nobody can share the port
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    assert "workers_ready" not in err and "Traceback" not in err
