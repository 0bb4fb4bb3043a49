"""`queryrec replay`: the test split, in time order, through the gRPC API; every served
score against the offline score of the same impression.

After `queryrec state load` (histories as of the start of the test split), every event of
the test period is sent as it happened: each search as `RecordQuery` (a search without
words too: it is a history slot on both sides, `queryrec.features.model_inputs`),
followed at once, when the search had clicked results, by `RecordSearchClicks` for it
(the same timestamp; its clicked items in display order, distinct, at most the server's
`max_search_clicks`): the offline features attach all of a search's clicks to the search
itself, so they are stored before any later event of the user. Each feed page (one
user's impressions at one timestamp) is one `Score` with all its items, then that page's
clicks as `RecordClicks`. At equal timestamps the Score goes first:
features count only events strictly before an impression. Users are independent (a
user's features depend on that user's history only), so users' event streams run
concurrently, each in order.

With the bundle the server runs, the same split is scored offline
(`queryrec.evaluation.bundle_scoring`, the one feature path over the prepared dataset)
and compared per impression: max and 99.9th-percentile absolute difference and the count
above `TOLERANCE`; any non-degraded response off by more than `TOLERANCE` fails the
replay. That is the proof that serving computes, request by request, the inputs training
computed (an aggregate AUC could hide per-request differences).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from clients.credentials import Metadata, api_metadata
from clients.retries import RETRY_OPTIONS
from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import open_bundle_graphs, score_split
from queryrec.evaluation.metrics import auc
from queryrec.features.dataset import PreparedDataset
from queryrec.progress import bar as progress_bar
from service.api import scorer_pb2, scorer_pb2_grpc

UNMAPPED_RAW_ID = 1 << 62  # stands for an index without a raw id: maps to "unknown" again


@dataclass
class ReplayReport:
    served: np.ndarray  # (n,) P(click) per test sample, sample order
    labels: np.ndarray  # (n,)
    degraded_rows: np.ndarray  # (n,) bool: the sample's Score answer was degraded
    latencies_ms: list[float] = field(default_factory=list)
    degraded: int = 0  # degraded Score responses
    empty_queries: int = 0  # searches without words sent (history slots on both sides)
    search_click_calls: int = 0  # RecordSearchClicks sent (searches with clicked results)
    search_clicks: int = 0  # clicked results they carried
    seconds: float = 0.0
    calls: int = 0

    @property
    def served_auc(self) -> float:
        return auc(self.labels, self.served)

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class _Event:
    ts: int
    kind: int  # 0 = Score (first at equal ts), 1 = RecordClicks, 2 = RecordQuery
    ids: list[int]
    rows: np.ndarray | None = None  # test-sample rows of a Score
    clicked: list[int] = field(default_factory=list)  # a search's clicked results (raw ids)


def build_events(
    dataset: PreparedDataset, max_search_clicks: int = 16
) -> tuple[dict[int, list[_Event]], np.ndarray, int]:
    """Per raw user, the test period's events in order; the labels; how many searches
    have no words (sent like the others). A search carries its clicked results: distinct,
    in display order, the first `max_search_clicks` (what the server keeps per search)."""
    t0 = int(dataset.schema["split"]["test_start_ms"])
    user_raw, item_raw, word_raw = (dataset.raw_ids(n) for n in ("users", "items", "words"))

    def raw(table: np.ndarray, index: np.ndarray) -> list[int]:
        values = table[index]
        return np.where(values < 0, UNMAPPED_RAW_ID, values).tolist()

    samples = dataset.samples("test").with_row_index("row")
    streams: dict[int, list[_Event]] = {}
    pages = samples.group_by(["user", "ts"], maintain_order=True).agg(pl.col("row"), pl.col("item"))
    for user, ts, rows, items in pages.iter_rows():
        streams.setdefault(int(user_raw[user]), []).append(
            _Event(int(ts), 0, raw(item_raw, np.asarray(items)), np.asarray(rows))
        )
    clicked = np.flatnonzero(dataset.click_ts >= t0)
    clicks = pl.DataFrame(
        {
            "user": dataset.click_user[clicked],
            "ts": dataset.click_ts[clicked],
            "item": dataset.click_item[clicked],
        }
    )
    for user, ts, items in (
        clicks.group_by(["user", "ts"], maintain_order=True).agg(pl.col("item")).iter_rows()
    ):
        streams.setdefault(int(user_raw[user]), []).append(
            _Event(int(ts), 1, raw(item_raw, np.asarray(items)))
        )
    empty = 0
    for session in np.flatnonzero(dataset.search_ts >= t0):
        a, b = dataset.query_offsets[session], dataset.query_offsets[session + 1]
        empty += int(a == b)
        user = int(user_raw[dataset.search_user[session]])
        c, d = dataset.clicked_offsets[session], dataset.clicked_offsets[session + 1]
        results = list(dict.fromkeys(raw(item_raw, dataset.clicked_items[c:d])))
        streams.setdefault(user, []).append(
            _Event(
                int(dataset.search_ts[session]),
                2,
                raw(word_raw, dataset.query_words[a:b]),
                clicked=results[:max_search_clicks],
            )
        )
    for events in streams.values():
        events.sort(key=lambda e: (e.ts, e.kind))  # stable: timeline order within a kind
    labels = samples["label"].to_numpy().astype(np.float32)
    return streams, labels, empty


async def replay(
    dataset: PreparedDataset,
    target: str,
    *,
    concurrency: int = 16,
    progress: bool = True,
    max_search_clicks: int = 16,
) -> ReplayReport:
    """Send every test-period event (module docstring); `max_search_clicks`: the server's
    setting of that name (clicked results sent per search)."""
    streams, labels, empty = build_events(dataset, max_search_clicks)
    report = ReplayReport(
        np.full(len(labels), np.nan, dtype=np.float32), labels, np.zeros(len(labels), bool)
    )
    report.empty_queries = empty
    users = list(streams)
    bar = progress_bar(total=len(users), desc="replay", unit="user", enabled=progress)
    start = time.perf_counter()
    metadata = api_metadata()  # the server's API token, when the environment names one
    async with grpc.aio.insecure_channel(target, options=RETRY_OPTIONS) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        next_user = iter(users)

        async def worker() -> None:
            for user in next_user:
                for event in streams[user]:
                    await _send(stub, user, event, report, metadata)
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    report.seconds = time.perf_counter() - start
    missing = int(np.isnan(report.served).sum())
    if missing:
        raise QueryRecError(f"replay: {missing} test impressions got no score")
    return report


async def _send(
    stub: scorer_pb2_grpc.ScorerStub,
    user: int,
    event: _Event,
    report: ReplayReport,
    metadata: Metadata = (),
) -> None:
    report.calls += 1
    if event.kind == 0:
        began = time.perf_counter()
        response = await stub.Score(
            scorer_pb2.ScoreRequest(user_id=user, item_ids=event.ids, request_time_ms=event.ts),
            metadata=metadata,
        )
        report.latencies_ms.append((time.perf_counter() - began) * 1e3)
        assert event.rows is not None
        report.served[event.rows] = np.asarray(response.scores, dtype=np.float32)
        report.degraded_rows[event.rows] = response.degraded
        report.degraded += response.degraded
    elif event.kind == 1:
        await stub.RecordClicks(
            scorer_pb2.RecordClicksRequest(user_id=user, item_ids=event.ids, timestamp_ms=event.ts),
            metadata=metadata,
        )
    else:
        await stub.RecordQuery(
            scorer_pb2.RecordQueryRequest(user_id=user, token_ids=event.ids, timestamp_ms=event.ts),
            metadata=metadata,
        )
        if event.clicked:
            report.calls += 1
            await stub.RecordSearchClicks(
                scorer_pb2.RecordSearchClicksRequest(
                    user_id=user, search_timestamp_ms=event.ts, item_ids=event.clicked
                ),
                metadata=metadata,
            )
            report.search_click_calls += 1
            report.search_clicks += len(event.clicked)


TOLERANCE = 1e-5  # |served - offline| allowed for any impression of a non-degraded answer
STATE_MISSING_SHARE = 0.5
"""Above this share of compared scores off, replay blames a missing state, not features."""


@dataclass(frozen=True)
class Parity:
    """Served vs offline score per impression, over the non-degraded answers."""

    compared: int
    max_abs_diff: float
    p999_abs_diff: float
    above_tolerance: int
    offline_auc: float

    @classmethod
    def of(cls, report: ReplayReport, offline: np.ndarray) -> Parity:
        kept = ~report.degraded_rows
        gap = np.abs(report.served[kept].astype(np.float64) - offline[kept])
        return cls(
            compared=int(kept.sum()),
            max_abs_diff=float(gap.max()) if len(gap) else 0.0,
            p999_abs_diff=float(np.percentile(gap, 99.9)) if len(gap) else 0.0,
            above_tolerance=int((gap > TOLERANCE).sum()),
            offline_auc=auc(report.labels, offline),
        )

    def failure(self, data: Path) -> str | None:
        """None when every compared score is within TOLERANCE; else the one-line error,
        naming the likelier cause. Most scores off: the server's Redis does not hold this
        dataset's state (never loaded, another dataset's, flushed), since every user's
        history then differs; a few off: serving and training compute different features."""
        if not self.above_tolerance:
            return None
        head = (
            f"{self.above_tolerance:,} of {self.compared:,} served scores differ from the "
            f"offline score of the same impression by more than {TOLERANCE:g} "
            f"(max {self.max_abs_diff:.2e})"
        )
        if self.above_tolerance > STATE_MISSING_SHARE * self.compared:
            return (
                f"{head}: most of them, so the server's Redis most likely does not hold this "
                f"dataset's state; load it into the server's Redis first "
                f"(queryrec state load --data {data} --redis URL)"
            )
        return f"{head}: serving does not compute training's features"


def run_replay(
    data: Path,
    target: str,
    bundle_dir: Path | None,
    concurrency: int = 16,
    max_search_clicks: int = 16,
) -> dict[str, float]:
    """Replay and print what was served; with `bundle_dir` (the bundle the server runs)
    also the per-impression comparison with offline scores, QueryRecError above
    `TOLERANCE`. `max_search_clicks`: the server's setting of that name."""
    dataset = PreparedDataset(data)
    report = asyncio.run(
        replay(dataset, target, concurrency=concurrency, max_search_clicks=max_search_clicks)
    )
    summary = _print_served(report, concurrency)
    if bundle_dir is None:
        print("  (pass --bundle, the server's bundle, to compare every score with offline)")
        return summary
    graphs = open_bundle_graphs(bundle_dir)
    offline, _ = score_split(
        dataset,
        "test",
        graphs.manifest,
        graphs.encoder,
        graphs.ctr,
        query_positives=graphs.query_positives,
    )
    parity = Parity.of(report, offline)
    summary.update(
        offline_auc=parity.offline_auc,
        compared=float(parity.compared),
        max_abs_diff=parity.max_abs_diff,
        p999_abs_diff=parity.p999_abs_diff,
        above_tolerance=float(parity.above_tolerance),
    )
    print(f"  offline AUC {parity.offline_auc:.4f} (same bundle, same split)")
    print(
        f"  per impression, {parity.compared:,} non-degraded: |served - offline| max "
        f"{parity.max_abs_diff:.2e}, 99.9th percentile {parity.p999_abs_diff:.2e}, "
        f"{parity.above_tolerance} above {TOLERANCE:g}"
    )
    failure = parity.failure(data)
    if failure is not None:
        raise QueryRecError(failure)
    return summary


def _print_served(report: ReplayReport, concurrency: int) -> dict[str, float]:
    """The served side's summary: calls, latency, degraded, served AUC."""
    scores = len(report.latencies_ms)
    summary = {
        "served_auc": report.served_auc,
        "impressions": float(len(report.labels)),
        "score_calls": float(scores),
        "calls": float(report.calls),
        "seconds": report.seconds,
        "calls_per_s": report.calls / report.seconds,
        "score_p50_ms": report.latency(50),
        "score_p99_ms": report.latency(99),
        "degraded": float(report.degraded),
        "empty_queries": float(report.empty_queries),
        "search_click_calls": float(report.search_click_calls),
        "search_clicks": float(report.search_clicks),
    }
    print(
        f"replay: {report.calls:,} calls ({scores:,} Score over {len(report.labels):,} "
        f"impressions) in {report.seconds:.1f} s, {summary['calls_per_s']:,.0f} calls/s, "
        f"concurrency {concurrency}"
    )
    print(
        f"  Score latency p50 {summary['score_p50_ms']:.2f} ms, p99 "
        f"{summary['score_p99_ms']:.2f} ms; degraded {report.degraded}; "
        f"{report.empty_queries} searches without words sent; {report.search_click_calls:,} "
        f"searches' clicks sent ({report.search_clicks:,} clicked results)"
    )
    print(f"  served AUC  {report.served_auc:.4f}")
    return summary
