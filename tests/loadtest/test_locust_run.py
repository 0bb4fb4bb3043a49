"""The load test runner: a short real Locust run against a real `queryrec serve`, and the
summary arithmetic on hand-made calls.

Locust runs in a subprocess only: importing it here would monkey-patch pytest's process
with gevent (the last test checks that nothing did). No timing thresholds: the machine
is shared; the run checks the schema, zero failures and that the whole mix was sent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from clients.launcher import ServerProcess
from loadtest.run import (
    METHODS,
    Call,
    LoadConfig,
    main,
    read_times,
    run_load,
    summarize,
    verdict,
)
from queryrec.features.dataset import PreparedDataset
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state

STATS = {"p50", "p95", "p99", "p99.9", "max"}


@pytest.mark.slow
def test_a_short_locust_run_sends_the_whole_mix_and_writes_the_summary(
    tiny_data: Path, bundle: Path, tmp_path: Path
) -> None:
    lengths = json.loads((bundle / "manifest.json").read_text())["max_lengths"]
    out = tmp_path / "load"
    with EmbeddedRedis() as redis_server:
        load_state(
            PreparedDataset(tiny_data),
            redis_server.url,
            query_cap=int(lengths["query_history"]),
            click_cap=int(lengths["click_history"]),
            progress=False,
        )
        # A generous budget: the shared test machine must not turn into deadline failures.
        server = ServerProcess(
            bundle, redis_server.url, tmp_path / "serve.log", {"QUERYREC_BUDGET_MS": "5000"}
        )
        try:
            port = server.start()
            config = LoadConfig(
                target=f"127.0.0.1:{port}",
                data=tiny_data,
                out=out,
                rate=20.0,
                duration_s=4.0,
                users=4,
                candidates=10,
                budget_ms=5000.0,
                write_share=0.3,
            )
            summary = run_load(config)
        finally:
            server.stop()

    assert json.loads((out / "summary.json").read_text()) == summary
    for key in ("requests", "failures", "failures_total", "rps", "latency_ms", "degraded"):
        assert key in summary
    assert summary["failures_total"] == 0, summary["failures_by_code"]
    assert set(summary["requests"]) == set(METHODS)
    assert all(summary["requests"][method] > 0 for method in METHODS), summary["requests"]
    assert all(count == 0 for count in summary["failures"].values())
    assert summary["rps"] > 0 and summary["duration_s"] > 0
    assert set(summary["latency_ms"]["Score"]) >= STATS
    score = summary["latency_ms"]["Score"]
    assert 0 < score["p50"] <= score["p95"] <= score["p99"] <= score["p99.9"] <= score["max"]
    assert 0.0 <= summary["degraded"]["share"] <= 1.0
    assert isinstance(summary["degraded"]["by_reason"], dict)
    assert summary["config"]["candidates"] == 10 and summary["config"]["target"] == config.target
    # Locust saw exactly the calls whose exact times were kept (its final totals).
    totals = summary["locust"]["totals"]
    assert totals["Aggregated"]["requests"] == sum(summary["requests"].values())
    assert all(totals[m]["requests"] == summary["requests"][m] for m in METHODS)
    assert (out / "locust_stats.csv").is_file() and (out / "locust_stats_history.csv").is_file()
    calls = read_times(out / "times")
    assert len(calls) == sum(summary["requests"].values())
    # Every Score asked for 10 candidates drawn from the catalogue: nothing was rejected.
    mix = json.loads((out / "mix.json").read_text())
    assert mix["candidates"] == 10 and mix["per_user_rate"] == pytest.approx(5.0)


def _call(method: str, ms: float, code: str = "OK", reasons: tuple[str, ...] = ()) -> Call:
    return Call(1_000.0 + ms / 1e3, method, ms, code, reasons)


def test_the_summary_uses_exact_times_and_counts_degraded_reasons() -> None:
    config = LoadConfig(target="127.0.0.1:1", data=Path("data"), out=Path("out"))
    calls = [_call("Score", float(ms)) for ms in range(1, 101)]
    calls += [_call("Score", 7.25, reasons=("redis_timeout", "encoder_late"))]
    calls += [_call("RecordQuery", 2.0), _call("RecordSearchClicks", 2.5)]
    calls += [_call("RecordClicks", 3.0, code="UNAVAILABLE")]
    summary = summarize(calls, (1_000.0, 1_010.0), config)
    assert summary["requests"] == {
        "Score": 101,
        "RecordQuery": 1,
        "RecordClicks": 1,
        "RecordSearchClicks": 1,
    }
    assert summary["failures"] == {
        "Score": 0,
        "RecordQuery": 0,
        "RecordClicks": 1,
        "RecordSearchClicks": 0,
    }
    assert summary["failures_by_code"] == {"UNAVAILABLE": 1}
    assert summary["rps"] == pytest.approx(104 / 10)
    score = summary["latency_ms"]["Score"]
    assert score["max"] == 100.0 and score["p50"] == 50.0  # 7.25 sits below the median
    assert summary["degraded"] == {
        "share": pytest.approx(1 / 101),
        "count": 1,
        "by_reason": {"redis_timeout": 1, "encoder_late": 1},
    }
    assert any("failed calls" in p for p in verdict(summary, None))
    clean = summarize(calls[:-1], (1_000.0, 1_010.0), config)
    assert verdict(clean, None) == []
    assert verdict(clean, 100.0) == []
    assert any("p99" in p for p in verdict(clean, 50.0))


def test_missing_demo_folders_exit_2_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--data", str(tmp_path / "no-data"), "--bundle", str(tmp_path / "no")])
    assert code == 2
    assert "make demo" in capsys.readouterr().err


def test_a_soak_from_a_bench_runs_at_70_percent_of_its_maximum(tmp_path: Path) -> None:
    from loadtest.run import soak_rate

    bench = tmp_path / "results.json"
    bench.write_text(json.dumps({"max_rate": 400}))
    assert soak_rate(bench) == 280.0
    assert soak_rate(bench, 0.5) == 200.0


def test_a_bad_share_or_bench_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "results.json"
    bench.write_text(json.dumps({"max_rate": 400}))
    assert main(["soak", "--from-bench", str(bench), "--share", "1.5"]) == 2
    assert "--share must be in (0, 1]" in capsys.readouterr().err
    bench.write_text(json.dumps({"max_rate": None}))
    assert main(["soak", "--from-bench", str(bench)]) == 2
    assert 'no positive top-level "max_rate"' in capsys.readouterr().err


def test_the_runner_never_imported_locust_or_gevent_here() -> None:
    assert "locust" not in sys.modules
    assert "gevent" not in sys.modules
