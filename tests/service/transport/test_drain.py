"""Graceful drain: NOT_SERVING first, keep serving, refuse with UNAVAILABLE, finish the rest.

Real gRPC server and Redis; the SIGTERM test runs `queryrec serve` as a process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from tests.service.harness import ServerThread
from tests.service.test_budget import SlowSession

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_drain_under_load_fails_no_in_flight_call(
    bundle: Path, redis_url: str, raw: dict[str, list[int]]
) -> None:
    # The slow graph sleeps in its call: in the worker thread, so that the loop keeps
    # answering health and new calls meanwhile (on the loop the sleep would block them),
    # with CTR batches as with CUDA, so that 200 queued calls are a few slow calls, not
    # 200 (one per request, the CPU default, can queue past the budget: refused).
    harness = ServerThread(
        bundle,
        redis_url,
        budget_ms=30_000,
        drain_delay_s=2.0,
        shutdown_grace_s=30,
        inference_on="thread",
        ctr_max_pairs=4096,
    )
    try:
        server = harness.create()
        harness.start()
        assert harness.channel is not None
        # Each CTR call takes a while, so calls are still in flight when the drain starts.
        server.scorer.bundle.ctr = SlowSession(server.scorer.bundle.ctr, 0.05)
        watch = health_pb2_grpc.HealthStub(harness.channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=120
        )
        assert next(watch).status == SERVING
        request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:4])
        in_flight: list[Future[pb.ScoreResponse]] = [
            harness.stub.Score.future(request, timeout=120) for _ in range(200)
        ]
        drained = harness.run_in_background(server.drain())
        assert next(watch).status == NOT_SERVING  # health flips first ...
        during = harness.stub.Score(request, timeout=60)  # ... and the server still serves
        assert len(during.scores) == 4
        late: list[str] = []

        def call_until_refused() -> None:
            while True:
                try:
                    harness.stub.Score(request, timeout=60)
                except grpc.RpcError as error:
                    late.append(error.code().name)

                    return

        caller = threading.Thread(target=call_until_refused)
        caller.start()
        drained.result(120)
        caller.join(60)
        assert list(watch) == []  # the Watch stream ended cleanly (no RpcError)
        assert [f.exception() for f in in_flight if f.exception() is not None] == []
        assert late == ["UNAVAILABLE"]  # refused, never CANCELLED
    finally:
        harness.close()


def test_sighup_reloads_and_sigterm_drains_and_exits_zero(bundle: Path, redis_url: str) -> None:
    env = {
        **os.environ,
        "QUERYREC_DRAIN_DELAY_S": "0.5",
        "QUERYREC_ADMIN_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--bundle", str(bundle)]
    command += ["--redis", redis_url, "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server is warmed and listening
        assert "listening on" in line, line
        port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            assert len(stub.Score(pb.ScoreRequest(user_id=3, item_ids=[1, 2]), timeout=60).scores)
        process.send_signal(signal.SIGHUP)  # reload the bundle from its folder
        assert process.stderr is not None
        while not seen or seen[-1] not in ("reload_done", "reload_failed"):
            line = process.stderr.readline()
            assert line, f"the server exited; events so far: {seen}"
            if line.startswith("{"):
                seen.append(json.loads(line).get("event"))
        assert seen[-1] == "reload_done", seen
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-2000:]
    events = seen + [
        json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")
    ]
    for name in ("listening", "ready", "reload_started", "reload_done", "drain_started", "stopped"):
        assert name in events, (name, Counter(events))
    assert "Traceback" not in err


def test_calls_sent_through_the_close_get_unavailable_never_cancelled(
    bundle: Path, redis_url: str, raw: dict[str, list[int]]
) -> None:
    """16 clients that retry at once on any error keep calling while the server drains
    and closes: every call ends OK or UNAVAILABLE. Without holding refused calls until
    the GOAWAY is sent, about one call per busy connection was CANCELLED at each close
    (service/transport/server.py)."""
    import asyncio

    # A budget far above a call's time: on a busy shared box no call is late, so every
    # status here comes from the close.
    harness = ServerThread(bundle, redis_url, budget_ms=5000, drain_delay_s=0.1, shutdown_grace_s=5)
    server = harness.create()
    harness.start()
    codes: Counter[str] = Counter()
    try:

        async def clients() -> None:
            request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:20])
            closed = asyncio.Event()
            async with grpc.aio.insecure_channel(harness.address) as channel:
                stub = scorer_pb2_grpc.ScorerStub(channel)

                async def loop() -> None:
                    while not closed.is_set():
                        try:
                            await stub.Score(request, timeout=30)
                            codes["OK"] += 1
                        except grpc.aio.AioRpcError as error:
                            codes[error.code().name] += 1
                            if error.code() != grpc.StatusCode.UNAVAILABLE:
                                return

                loops = [asyncio.create_task(loop()) for _ in range(16)]
                while codes["OK"] < 32:  # every client is calling
                    await asyncio.sleep(0.01)
                drained = asyncio.wrap_future(harness.run_in_background(server.drain()))
                await drained
                # After the close a call fails to connect (UNAVAILABLE); a few more each.
                floor = codes["UNAVAILABLE"] + 32
                while codes["UNAVAILABLE"] < floor and not all(t.done() for t in loops):
                    await asyncio.sleep(0.01)
                closed.set()
                await asyncio.gather(*loops)

        asyncio.run(clients())
    finally:
        harness.close()
    assert codes["UNAVAILABLE"] > 0
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
