"""The side-by-side serving benchmark's results.json -> a Markdown table and PNG plots.

    python -m loadtest.report results.json --out DIR

writes DIR/report.md (one table per candidate count: server, the highest sustained rate
with p99 within the budget and nothing failed, p99 and server CPU per request at that
rate, the rate relative to naive-onnx's, the CPU relative to the floor) and, per
candidate count, DIR/p99_vs_rate_c{N}.png (Score p99 against the offered rate, one line
per server, failing steps marked) and DIR/cpu_per_request_c{N}.png (server CPU per
request at each server's highest passing rate, split by stage where the server's
/metrics reported stage times, with the floor as a line).

The pass rule of a step lives here (`step_verdict`) and `loadtest.bench` applies the same
function while it sweeps, so the report and the sweep cannot disagree. A step passes when
- its Score p99 is at most the budget (`budget_ms`, 50 ms),
- no call failed (`failures_total` is 0),
- the load generator delivered at least `min_delivered` of the offered rate (a step the
  client could not drive says nothing about the server), and
- at most `max_degraded_share` of the Score answers were degraded (a degraded answer
  skipped part of the model: it is cheaper, not the same answer).
A server's maximum is its highest passing offered rate, wherever it lies among its steps.

results.json: see `loadtest.bench` (its module docstring gives the schema).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "naive-onnx"
"""The server the rate ratios are taken against."""
DEFAULT_RULE = {"budget_ms": 50.0, "min_delivered": 0.9, "max_degraded_share": 0.01}
"""Thresholds of the pass rule when results.json does not carry its own."""
STAGE_PARTS = (("ctr_compute", "CTR graph"), ("encoder_compute", "encoder graph"))
"""Stages of the service's queryrec_stage_duration_seconds plotted as CPU (each batch's
compute time, on the loop or its worker thread: CPU time with one ONNX Runtime thread),
in order."""


@dataclass(frozen=True)
class Rule:
    """The pass rule's thresholds (see the module docstring)."""

    budget_ms: float = DEFAULT_RULE["budget_ms"]
    min_delivered: float = DEFAULT_RULE["min_delivered"]
    max_degraded_share: float = DEFAULT_RULE["max_degraded_share"]

    @classmethod
    def of(cls, results: Mapping[str, Any]) -> Rule:
        """The rule a results.json was swept with (its `config`), defaults elsewhere."""
        config = results.get("config", {})
        return cls(**{k: float(config.get(k, v)) for k, v in DEFAULT_RULE.items()})


def score_p99_ms(step: Mapping[str, Any]) -> float | None:
    """The step's Score p99 in ms (None: the load generator measured no Score)."""
    value = step.get("summary", {}).get("latency_ms", {}).get("Score", {}).get("p99")
    return None if value is None else float(value)


def step_verdict(step: Mapping[str, Any], rule: Rule) -> tuple[bool, str]:
    """(passed, why): why it failed, or "ok"."""
    if step.get("error"):
        return False, f"error: {step['error']}"
    summary = step.get("summary", {})
    p99 = score_p99_ms(step)
    if p99 is None or not math.isfinite(p99):
        return False, "no Score latency measured"
    failures = int(summary.get("failures_total", 0))
    if failures:
        return False, f"{failures} failed calls"
    if p99 > rule.budget_ms:
        return False, f"p99 {p99:.1f} ms > {rule.budget_ms:g} ms"
    rate, rps = float(step["rate"]), float(summary.get("rps", 0.0))
    if rps < rule.min_delivered * rate:
        return False, f"delivered {rps:.0f} of {rate:g} req/s offered"
    degraded = float(summary.get("degraded", {}).get("share", 0.0))
    if degraded > rule.max_degraded_share:
        return False, f"{degraded:.2%} degraded answers"
    return True, "ok"


def max_step(steps: Sequence[Mapping[str, Any]], rule: Rule) -> Mapping[str, Any] | None:
    """The passing step with the highest offered rate (None: no step passed)."""
    passing = [s for s in steps if step_verdict(s, rule)[0]]
    return max(passing, key=lambda s: float(s["rate"])) if passing else None


def requests_total(step: Mapping[str, Any]) -> int:
    """Calls answered in the step, every method."""
    return sum(int(n) for n in step.get("summary", {}).get("requests", {}).values())


def cpu_ms_per_request(step: Mapping[str, Any]) -> float | None:
    """Server process-tree CPU over the step per call answered (every method)."""
    calls = requests_total(step)
    cpu = step.get("server_cpu_s")
    return None if cpu is None or calls == 0 else float(cpu) / calls * 1e3


def stage_ms_per_request(step: Mapping[str, Any]) -> dict[str, float]:
    """ms per call answered of each compute stage in `STAGE_PARTS` the step's server
    reported ({}: no stage data)."""
    stages = step.get("stages_s") or {}
    calls = requests_total(step)
    if not calls:
        return {}
    return {name: float(stages[name]) / calls * 1e3 for name, _ in STAGE_PARTS if name in stages}


@dataclass(frozen=True)
class Row:
    """One server's line of the table."""

    server: str
    candidates: int
    max_rate: float | None  # highest passing offered rate
    rps: float | None  # delivered at that rate
    p99_ms: float | None
    cpu_ms: float | None
    vs_baseline: float | None  # max_rate / the baseline's max_rate
    vs_floor: float | None  # cpu_ms / floor_ms
    note: str  # why there is no maximum, or ""


def floor_ms(results: Mapping[str, Any], candidates: int) -> float | None:
    """The floor per request of `candidates` (None: not measured)."""
    entry = results.get("floor", {}).get("by_candidates", {}).get(str(candidates), {})
    value = entry.get("floor_ms")
    return None if value is None else float(value)


def rows(results: Mapping[str, Any]) -> list[Row]:
    """Every run's row, in the order of results.json, ratios within a candidate count."""
    rule = Rule.of(results)
    best = {
        (run["server"], int(run["candidates"])): max_step(run.get("steps", []), rule)
        for run in results.get("runs", [])
    }
    out = []
    for run in results.get("runs", []):
        server, candidates = run["server"], int(run["candidates"])
        step = best[(server, candidates)]
        baseline = best.get((BASELINE, candidates))
        floor = floor_ms(results, candidates)
        if step is None:
            note = run.get("skipped") or run.get("error") or "no step passed"
            if run.get("steps"):
                first = min(run["steps"], key=lambda s: float(s["rate"]))
                note = f"{note} (at {float(first['rate']):g} req/s: {step_verdict(first, rule)[1]})"
            out.append(Row(server, candidates, None, None, None, None, None, None, str(note)))
            continue
        rate = float(step["rate"])
        cpu = cpu_ms_per_request(step)
        out.append(
            Row(
                server=server,
                candidates=candidates,
                max_rate=rate,
                rps=float(step["summary"].get("rps", 0.0)),
                p99_ms=score_p99_ms(step),
                cpu_ms=cpu,
                vs_baseline=rate / float(baseline["rate"]) if baseline is not None else None,
                vs_floor=cpu / floor if cpu is not None and floor else None,
                note="",
            )
        )
    return out


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(results: Mapping[str, Any]) -> str:
    """The tables (one per candidate count) with the floor under each."""
    rule = Rule.of(results)
    lines: list[str] = []
    table = rows(results)
    for candidates in sorted({r.candidates for r in table}):
        lines += [
            f"### Score with {candidates} candidates",
            "",
            f"| server | max req/s at p99 <= {rule.budget_ms:g} ms | delivered req/s "
            f"| p99 ms at that rate | server CPU ms/request | rate vs {BASELINE} | CPU vs floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in table if r.candidates == candidates):
            if r.max_rate is None:
                lines.append(f"| {r.server} | none: {r.note} | - | - | - | - | - |")
                continue
            lines.append(
                f"| {r.server} | {r.max_rate:g} | {_num(r.rps, '.0f')} | {_num(r.p99_ms, '.1f')} "
                f"| {_num(r.cpu_ms, '.2f')} | {_num(r.vs_baseline, '.2f', 'x')} "
                f"| {_num(r.vs_floor, '.1f', 'x')} |"
            )
        entry = results.get("floor", {}).get("by_candidates", {}).get(str(candidates))
        if entry and entry.get("floor_ms") is not None:
            lines += ["", floor_sentence(results, candidates)]
        lines.append("")
    lines.append(
        f"A step passes with Score p99 <= {rule.budget_ms:g} ms, no failed call, at least "
        f"{rule.min_delivered:.0%} of the offered rate delivered and at most "
        f"{rule.max_degraded_share:.1%} degraded answers; the maximum is the highest passing "
        "offered rate"
        + (
            f" (a failing step was run up to {repeats} more time(s) and passes if a repeat "
            "does; every run is in results.json)"
            if (repeats := int(results.get("config", {}).get("repeats", 0)))
            else ""
        )
        + ". Server CPU: the server's process tree (user + system, /proc) over the "
        "step per call answered (every method)."
    )
    return "\n".join(lines) + "\n"


def floor_sentence(results: Mapping[str, Any], candidates: int) -> str:
    """The floor of `candidates` and its parts, in words."""
    floor = results["floor"]
    entry = floor["by_candidates"][str(candidates)]

    def part(key: str) -> str:
        value = entry.get(key)
        return "?" if value is None else f"{value:.2f}"

    return (
        f"Floor: {entry['floor_ms']:.2f} ms of one core per request = transport "
        f"{part('transport_ms')} (echo's CPU per call) + Redis read and features "
        f"{part('state_ms')} (measured in-process) + model {part('model_ms')} "
        f"({(entry.get('encoder_flops', 0) + entry.get('ctr_flops', 0)) / 1e6:.1f} M matmul "
        f"FLOPs at {floor.get('matmul_gflops', float('nan')):.0f} GFLOP/s, numpy on one thread)."
    )


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """The PNG plots of every candidate count; -> the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rule = Rule.of(results)
    written: list[Path] = []
    runs = results.get("runs", [])
    for candidates in sorted({int(r["candidates"]) for r in runs}):
        chosen = [r for r in runs if int(r["candidates"]) == candidates]
        figure, axes = plt.subplots(figsize=(8, 5))
        for run in chosen:
            steps = sorted(
                (s for s in run.get("steps", []) if score_p99_ms(s) is not None),
                key=lambda s: float(s["rate"]),
            )
            if not steps:
                continue
            rates = [float(s["rate"]) for s in steps]
            p99 = [float(score_p99_ms(s) or 0.0) for s in steps]
            (line,) = axes.plot(rates, p99, marker="o", label=run["server"])
            failed = [i for i, s in enumerate(steps) if not step_verdict(s, rule)[0]]
            if failed:
                axes.scatter(
                    [rates[i] for i in failed],
                    [p99[i] for i in failed],
                    marker="x",
                    s=80,
                    color=line.get_color(),
                    zorder=3,
                )
        axes.axhline(rule.budget_ms, color="grey", linestyle="--", linewidth=1)
        axes.set_xscale("log")
        axes.set_ylim(bottom=0)
        axes.set_xlabel("offered rate, req/s")
        axes.set_ylabel("Score p99, ms")
        axes.set_title(f"Score p99 vs offered rate, {candidates} candidates (x: step failed)")
        axes.legend(fontsize="small")
        path = out / f"p99_vs_rate_c{candidates}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

        figure, axes = plt.subplots(figsize=(8, 5))
        names: list[str] = []
        for run in chosen:
            step = max_step(run.get("steps", []), rule)
            cpu = None if step is None else cpu_ms_per_request(step)
            if step is None or cpu is None:
                continue
            x = len(names)
            names.append(run["server"])
            parts = stage_ms_per_request(step)
            bottom = 0.0
            for index, (name, label) in enumerate(STAGE_PARTS):
                if name in parts:
                    axes.bar(x, parts[name], bottom=bottom, color=f"C{index}", label=label)
                    bottom += parts[name]
            axes.bar(
                x,
                max(cpu - bottom, 0.0),
                bottom=bottom,
                color="C7" if parts else "silver",
                label="rest: transport, Redis client, Python" if parts else "not split by stage",
            )
        floor = floor_ms(results, candidates)
        if floor is not None:
            axes.axhline(floor, color="black", linestyle="--", linewidth=1, label="floor")
        axes.set_xticks(range(len(names)), names, rotation=20, ha="right")
        axes.set_ylabel("server CPU ms per request")
        axes.set_title(
            f"Server CPU per request at the highest passing rate, {candidates} candidates"
        )
        handles, labels = axes.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            axes.legend(unique.values(), unique.keys(), fontsize="small")
        path = out / f"cpu_per_request_c{candidates}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def write_report(results_path: Path, out: Path) -> list[Path]:
    """report.md and the plots of `results_path` into `out`; -> the files written."""
    results = json.loads(Path(results_path).read_text())
    out.mkdir(parents=True, exist_ok=True)
    table = out / "report.md"
    table.write_text(markdown(results))
    return [table, *plot(results, out)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="results.json of `python -m loadtest.bench`")
    parser.add_argument("--out", type=Path, default=None, help="default: the results' folder")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.results.parent
    for path in write_report(args.results, out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
