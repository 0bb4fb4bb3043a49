"""The benchmark's report on a hand-written results.json, and the bench's own arithmetic:
the rate plan, the matmul FLOP count of a graph, process-tree CPU from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import loadtest.bench as bench
from loadtest.bench import SweepConfig, matmul_flops, rate_plan, tree_cpu_s
from loadtest.report import (
    Rule,
    cpu_ms_per_request,
    main,
    markdown,
    max_step,
    rows,
    step_verdict,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def step(
    rate: float,
    p99: float,
    *,
    failures: int = 0,
    rps: float | None = None,
    degraded: float = 0.0,
    cpu_s: float = 1.0,
    calls: int = 1000,
    stages: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One step record as `loadtest.bench` writes it (only the fields the report reads)."""
    return {
        "rate": rate,
        "summary": {
            "requests": {
                "Score": calls - calls // 10,
                "RecordQuery": calls // 20,
                "RecordClicks": calls // 20,
            },
            "failures_total": failures,
            "rps": rate if rps is None else rps,
            "latency_ms": {
                "Score": {"p50": p99 / 3, "p95": p99 / 2, "p99": p99, "p99.9": p99, "max": p99}
            },
            "degraded": {"share": degraded, "by_reason": {}},
        },
        "server_cpu_s": cpu_s,
        "stages_s": stages,
    }


RESULTS: dict[str, Any] = {
    "schema": 1,
    "config": {"budget_ms": 50.0, "min_delivered": 0.9, "max_degraded_share": 0.001},
    "floor": {
        "matmul_gflops": 100.0,
        "by_candidates": {
            "100": {
                "encoder_flops": 1e6,
                "ctr_flops": 19e6,
                "model_ms": 0.2,
                "state_ms": 0.3,
                "transport_ms": 0.5,
                "floor_ms": 1.0,
            }
        },
    },
    "runs": [
        {
            "server": "echo",
            "candidates": 100,
            "steps": [step(800, 5.0, cpu_s=0.5), step(1600, 20.0, cpu_s=0.5)],
        },
        {
            "server": "naive-onnx",
            "candidates": 100,
            # 200 fails on p99; 150 (bisection) passes: the maximum is 150
            "steps": [
                step(50, 10.0, cpu_s=5.0),
                step(100, 20.0, cpu_s=4.0),
                step(200, 80.0),
                step(150, 45.0, cpu_s=3.0),
            ],
        },
        {
            "server": "service",
            "candidates": 100,
            # 400 fails on failures, 350 on degraded answers, 300 on the delivered rate
            # (each with p99 within the budget): the maximum is 250
            "steps": [
                step(100, 8.0),
                step(250, 30.0, cpu_s=2.0, stages={"ctr_compute": 0.6, "encoder_compute": 0.2}),
                step(300, 30.0, rps=250.0),
                step(350, 30.0, degraded=0.05),
                step(400, 40.0, failures=3),
            ],
        },
        {"server": "naive-torch", "candidates": 100, "steps": [step(50, 70.0)]},
        {"server": "service-1-worker", "candidates": 100, "skipped": "not asked", "steps": []},
    ],
}


def test_the_verdict_names_the_first_bound_a_step_breaks() -> None:
    rule = Rule()
    assert step_verdict(step(100, 49.9), rule) == (True, "ok")
    assert step_verdict(step(100, 50.1), rule)[1].startswith("p99 50.1 ms")
    assert step_verdict(step(100, 10.0, failures=1), rule) == (False, "1 failed calls")
    assert step_verdict(step(100, 10.0, rps=80.0), rule)[1] == "delivered 80 of 100 req/s offered"
    assert "degraded" in step_verdict(step(100, 10.0, degraded=0.02), rule)[1]
    assert step_verdict({"rate": 100, "error": "boom"}, rule) == (False, "error: boom")
    assert step_verdict({"rate": 100, "summary": {}}, rule)[0] is False


def test_the_maximum_is_the_highest_passing_rate() -> None:
    rule = Rule.of(RESULTS)
    by_server = {run["server"]: run["steps"] for run in RESULTS["runs"]}
    best = max_step(by_server["naive-onnx"], rule)
    assert best is not None and best["rate"] == 150
    best = max_step(by_server["service"], rule)
    assert best is not None and best["rate"] == 250
    assert max_step(by_server["naive-torch"], rule) is None
    assert max_step([], rule) is None


def test_rows_carry_rate_p99_cpu_and_both_ratios() -> None:
    table = {row.server: row for row in rows(RESULTS)}
    onnx_row, service, echo = table["naive-onnx"], table["service"], table["echo"]
    assert (onnx_row.max_rate, onnx_row.p99_ms) == (150, 45.0)
    assert onnx_row.cpu_ms == pytest.approx(3.0)  # 3 s of CPU over 1,000 calls
    assert onnx_row.vs_baseline == pytest.approx(1.0)
    assert onnx_row.vs_floor == pytest.approx(3.0)
    assert (service.max_rate, service.p99_ms, service.rps) == (250, 30.0, 250)
    assert service.cpu_ms == pytest.approx(2.0)
    assert service.vs_baseline == pytest.approx(250 / 150)
    assert service.vs_floor == pytest.approx(2.0)
    assert echo.max_rate == 1600
    assert echo.vs_baseline == pytest.approx(1600 / 150)
    assert echo.vs_floor == pytest.approx(0.5)
    assert table["naive-torch"].max_rate is None
    assert "70.0 ms" in table["naive-torch"].note
    assert table["service-1-worker"].note == "not asked"


def test_markdown_has_a_row_per_server_and_the_floor() -> None:
    text = markdown(RESULTS)
    lines = text.splitlines()
    assert "| naive-onnx | 150 | 150 | 45.0 | 3.00 | 1.00x | 3.0x |" in lines
    assert "| service | 250 | 250 | 30.0 | 2.00 | 1.67x | 2.0x |" in lines
    assert any(line.startswith("| naive-torch | none: no step passed") for line in lines)
    assert "Floor: 1.00 ms" in text
    assert "20.0 M matmul FLOPs" in text


def test_cpu_per_request_counts_every_method() -> None:
    assert cpu_ms_per_request(step(100, 10.0, cpu_s=2.0, calls=500)) == pytest.approx(4.0)
    assert cpu_ms_per_request({"rate": 1, "summary": {"requests": {}}, "server_cpu_s": 1}) is None


def test_the_cli_writes_the_table_and_the_plots(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    out = tmp_path / "report"
    main([str(results), "--out", str(out)])
    assert "| service | 250 |" in (out / "report.md").read_text()
    for name in ("p99_vs_rate_c100.png", "cpu_per_request_c100.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_the_rate_plan_doubles_then_bisects() -> None:
    config = SweepConfig(start_rate=50, bisect=2, max_rate=10_000)
    plan = list(rate_plan(lambda rate: rate <= 300, config))
    assert plan == [
        (50, True),
        (100, True),
        (200, True),
        (400, False),
        (300, True),
        (350, False),
    ]
    # the first step fails: halve until one passes, then bisect
    plan = list(rate_plan(lambda rate: rate <= 20, SweepConfig(start_rate=50, bisect=1)))
    assert plan == [(50, False), (25, False), (12, True), (18, True)]
    # nothing fails up to the cap; nothing passes down to the minimum
    assert [r for r, _ in rate_plan(lambda r: True, SweepConfig(start_rate=50, max_rate=200))] == [
        50,
        100,
        200,
    ]
    assert [r for r, _ in rate_plan(lambda r: False, SweepConfig(start_rate=40, min_rate=10))] == [
        40,
        20,
        10,
    ]


def test_a_failing_step_is_repeated_once_and_the_rate_passes_if_the_repeat_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's repeat rule on canned steps (the step runner is replaced: what is
    tested is which rates are run, how often, and what counts)."""
    outcomes = {100: [False, True], 200: [False, False]}  # 50 passes at once
    ran: list[float] = []

    def fake_step(server: Any, rate: float, *args: Any) -> dict[str, Any]:
        ran.append(rate)
        passed = outcomes[int(rate)].pop(0) if int(rate) in outcomes else True
        record = step(rate, 10.0, failures=0 if passed else 1)
        record["passed"], record["why"] = step_verdict(record, Rule())
        record["cpu_ms_per_request"] = 1.0
        return record

    monkeypatch.setattr(bench, "run_step", fake_step)
    config = SweepConfig(start_rate=50, bisect=0, warmup_s=0, repeats=1)
    steps = bench.sweep("s", 100, None, tmp_path, tmp_path, config)
    assert ran == [50, 100, 100, 200, 200]  # 100 passed on its repeat; 200 failed twice
    assert [s.get("repeat", False) for s in steps] == [False, False, True, False, True]
    assert bench.summarize_max(steps, config.rule)["rate"] == 100  # type: ignore[index]


def test_users_per_step_keep_the_pace_within_the_budget() -> None:
    config = SweepConfig(users=16)
    assert config.users_for(50) == 16
    assert config.users_for(1000) == 50  # 1000 req/s x 50 ms


def test_matmul_flops_are_counted_from_the_operands_shapes(tmp_path: Path) -> None:
    """x (B, 3, 4) @ W (4, 5), then Gemm of (6, 4) with (5, 4) transposed:
    2*B*3*4*5 + 2*6*4*5 FLOPs."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 5], np.ones(20, np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Gemm", ["a", "b"], ["c"], transB=1),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [6, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [5, 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 5]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [6, 5]),
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    feed = {
        "x": np.ones((7, 3, 4), np.float32),
        "a": np.ones((6, 4), np.float32),
        "b": np.ones((5, 4), np.float32),
    }
    assert matmul_flops(path, feed) == 2 * 7 * 3 * 4 * 5 + 2 * 6 * 4 * 5


def test_process_tree_cpu_includes_the_children() -> None:
    """A child that burns CPU and then waits: the parent's tree counts at least the
    child's own CPU (both read from /proc)."""
    script = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        own = tree_cpu_s(child.pid)
        assert own > 0
        assert tree_cpu_s(os.getpid()) >= own
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
