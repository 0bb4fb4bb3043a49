"""`queryrec replay`: the test split, in time order, through the gRPC API; served vs offline AUC.

After `queryrec state load` (histories as of the start of the test split), every event of
the test period is sent as it happened: each search as `RecordQuery`, each feed page (one
user's impressions at one timestamp) as one `Score` with all its items, then that page's
clicks as `RecordClicks`. At equal timestamps the Score goes first: training features
count only events strictly before an impression. Users are independent (a user's
features depend on that user's history only), so users' event streams run concurrently,
each in order. The served AUC over all test impressions must equal the offline AUC of
the same bundle (scored by `service.offline_scoring` on the same split) within 0.001:
the proof that serving computes the features training did.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import polars as pl
from tqdm import tqdm

from queryrec.errors import QueryRecError
from queryrec.evaluation.metrics import auc
from queryrec.features.dataset import PreparedDataset
from service.api import scorer_pb2, scorer_pb2_grpc
from service.state_load import raw_ids

UNMAPPED_RAW_ID = 1 << 62  # stands for an index without a raw id: maps to "unknown" again


@dataclass
class ReplayReport:
    served: np.ndarray  # (n,) P(click) per test sample, sample order
    labels: np.ndarray  # (n,)
    latencies_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    skipped_empty_queries: int = 0
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


def build_events(dataset: PreparedDataset) -> tuple[dict[int, list[_Event]], np.ndarray, int]:
    """Per raw user, the test period's events in order; the labels; empty queries skipped."""
    t0 = int(dataset.schema["split"]["test_start_ms"])
    user_raw, item_raw, word_raw = (raw_ids(dataset, n) for n in ("users", "items", "words"))

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
    skipped = 0
    for session in np.flatnonzero(dataset.search_ts >= t0):
        a, b = dataset.query_offsets[session], dataset.query_offsets[session + 1]
        if a == b:
            skipped += 1
            continue
        user = int(user_raw[dataset.search_user[session]])
        streams.setdefault(user, []).append(
            _Event(int(dataset.search_ts[session]), 2, raw(word_raw, dataset.query_words[a:b]))
        )
    for events in streams.values():
        events.sort(key=lambda e: (e.ts, e.kind))  # stable: timeline order within a kind
    labels = samples["label"].to_numpy().astype(np.float32)
    return streams, labels, skipped


async def replay(
    dataset: PreparedDataset, target: str, *, concurrency: int = 16, progress: bool = True
) -> ReplayReport:
    streams, labels, skipped = build_events(dataset)
    report = ReplayReport(np.full(len(labels), np.nan, dtype=np.float32), labels)
    report.skipped_empty_queries = skipped
    users = list(streams)
    bar = tqdm(total=len(users), desc="replay", unit="user", disable=not progress)
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        next_user = iter(users)

        async def worker() -> None:
            for user in next_user:
                for event in streams[user]:
                    await _send(stub, user, event, report)
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    report.seconds = time.perf_counter() - start
    missing = int(np.isnan(report.served).sum())
    if missing:
        raise QueryRecError(f"replay: {missing} test impressions got no score")
    return report


async def _send(
    stub: scorer_pb2_grpc.ScorerStub, user: int, event: _Event, report: ReplayReport
) -> None:
    report.calls += 1
    if event.kind == 0:
        began = time.perf_counter()
        response = await stub.Score(
            scorer_pb2.ScoreRequest(user_id=user, item_ids=event.ids, request_time_ms=event.ts)
        )
        report.latencies_ms.append((time.perf_counter() - began) * 1e3)
        assert event.rows is not None
        report.served[event.rows] = np.asarray(response.scores, dtype=np.float32)
        report.degraded += response.degraded
    elif event.kind == 1:
        await stub.RecordClicks(
            scorer_pb2.RecordClicksRequest(user_id=user, item_ids=event.ids, timestamp_ms=event.ts)
        )
    else:
        await stub.RecordQuery(
            scorer_pb2.RecordQueryRequest(user_id=user, token_ids=event.ids, timestamp_ms=event.ts)
        )


AGREEMENT = 0.001  # served and offline AUC must agree this closely


def run_replay(
    data: Path, target: str, bundle_dir: Path | None, concurrency: int = 16
) -> dict[str, float]:
    """Replay, print served vs offline AUC and latency; QueryRecError if they disagree."""
    dataset = PreparedDataset(data)
    report = asyncio.run(replay(dataset, target, concurrency=concurrency))
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
    }
    print(
        f"replay: {report.calls:,} calls ({scores:,} Score over {len(report.labels):,} "
        f"impressions) in {report.seconds:.1f} s, {summary['calls_per_s']:,.0f} calls/s, "
        f"concurrency {concurrency}"
    )
    print(
        f"  Score latency p50 {summary['score_p50_ms']:.2f} ms, p99 "
        f"{summary['score_p99_ms']:.2f} ms; degraded {report.degraded}"
    )
    if report.skipped_empty_queries:
        print(f"  skipped {report.skipped_empty_queries} searches without words")
    print(f"  served AUC  {report.served_auc:.4f}")
    if bundle_dir is not None:
        from service.bundle import load_bundle
        from service.offline_scoring import split_auc

        bundle = load_bundle(bundle_dir, device="cpu")
        offline = split_auc(dataset, "test", bundle.manifest, bundle.encoder, bundle.ctr)["auc"]
        summary["offline_auc"] = offline
        gap = abs(report.served_auc - offline)
        print(f"  offline AUC {offline:.4f} (same bundle, same split); |difference| {gap:.2e}")
        if not gap <= AGREEMENT:
            raise QueryRecError(
                f"served AUC {report.served_auc:.4f} differs from offline {offline:.4f} by "
                f"{gap:.4f} (> {AGREEMENT}): serving does not compute training's features"
            )
    return summary
