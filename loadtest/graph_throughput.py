"""Graph throughput on one device: encoder users/s by batch size, CTR pairs/s by shape.

    python -m loadtest.graph_throughput --bundle BUNDLE [--device cpu|cuda]
        [--max-batch 4096] [--candidates 100] [--seconds 1.0] [--out throughput.json]

The serving graphs of a bundle, opened the way the service opens them
(`service.inference.bundle_loader.load_bundle`: CUDA provider first when `--device cuda`), are fed one
user with a full history (`loadtest.bench.full_history_feeds`, every query and click
slot filled) tiled to the batch:
- encoder: batches of 1, 2, 4, ... `--max-batch` users -> users/s;
- CTR: 1, 2, 4, ... users x `--candidates` candidates each, as long as the pairs stay
  within `--max-batch` x `--candidates` -> pairs/s;
- with the split CTR graph (`ctr_user.onnx`, `ctr_pair.onnx`): the pair graph at the
  same shapes on the user's cached side (a Score's CTR call on a cache hit) -> pairs/s,
  and the user graph at 1, 2, 4, ... `--max-batch` users (what a miss adds) -> users/s.
Each shape runs 3 warm-up calls, then calls for about `--seconds`; the median call time
is what is reported (p50 ms, and the rate it implies). This is what `gpu_bench.sh` runs
on a GPU machine; on the CPU it gives the same table for comparison.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_CALLS = 3


def powers_of_two(limit: int) -> Iterator[int]:
    """1, 2, 4, ... up to `limit` (and `limit` itself when it is not a power of two)."""
    size = 1
    while size < limit:
        yield size
        size *= 2
    yield limit


def tile_rows(feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A one-row feed repeated to `rows` rows along the first axis."""
    return {name: np.repeat(value, rows, axis=0) for name, value in feed.items()}


def ctr_batch(feed: dict[str, np.ndarray], users: int, candidates: int) -> dict[str, np.ndarray]:
    """The one-user CTR feed as `users` user rows with `candidates` pairs each."""
    per_user = {k: v for k, v in feed.items() if k not in ("pair_user", "item")}
    out = tile_rows(per_user, users)
    out["pair_user"] = np.repeat(np.arange(users, dtype=np.int64), candidates)
    out["item"] = np.tile(feed["item"][:candidates], users)
    return out


def median_call_s(call: Callable[[], Any], seconds: float) -> float:
    """Median seconds of `call` after the warm-up, over about `seconds` of calls."""
    for _ in range(WARMUP_CALLS):
        call()
    times: list[float] = []
    began = time.perf_counter()
    while not times or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(
    bundle_dir: Path, device: str, max_batch: int, candidates: int, seconds: float
) -> dict[str, Any]:
    """The throughput table (see the module docstring)."""
    from loadtest.bench import full_history_feeds
    from service.inference.bundle_loader import load_bundle

    bundle = load_bundle(bundle_dir, device=device, threads=1)
    encoder_feed, ctr_feed = full_history_feeds(bundle_dir, candidates)
    result: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "device": device,
        "providers": bundle.ctr.get_providers(),
        "candidates": candidates,
        "encoder": [],
        "ctr": [],
    }
    if bundle.encoder is not None and encoder_feed is not None:
        encoder = bundle.encoder
        for users in powers_of_two(max_batch):
            feed = tile_rows(encoder_feed, users)
            call_s = median_call_s(functools.partial(encoder.run, None, feed), seconds)
            result["encoder"].append(
                {"users": users, "p50_ms": call_s * 1e3, "users_per_s": users / call_s}
            )
            say(f"encoder {users} users: {call_s * 1e3:.3f} ms, {users / call_s:,.0f} users/s")
    graphs = {"ctr": (bundle.ctr, ctr_feed)}
    if bundle.ctr_user is not None and bundle.ctr_pair is not None:
        user_feed, pair_feed = split_feeds(bundle.manifest["graphs"], bundle.ctr_user, ctr_feed)
        graphs["ctr_pair"] = (bundle.ctr_pair, pair_feed)
        result["ctr_user"] = []
        for users in powers_of_two(max_batch):
            feed = tile_rows(user_feed, users)
            call_s = median_call_s(functools.partial(bundle.ctr_user.run, None, feed), seconds)
            result["ctr_user"].append(
                {"users": users, "p50_ms": call_s * 1e3, "users_per_s": users / call_s}
            )
            say(f"ctr_user {users} users: {call_s * 1e3:.3f} ms, {users / call_s:,.0f} users/s")
    for name, (session, one_user) in graphs.items():
        result.setdefault(name, [])
        for users in powers_of_two(max_batch):
            feed = ctr_batch(one_user, users, candidates)
            pairs = users * candidates
            call_s = median_call_s(functools.partial(session.run, None, feed), seconds)
            result[name].append(
                {
                    "users": users,
                    "pairs": pairs,
                    "p50_ms": call_s * 1e3,
                    "pairs_per_s": pairs / call_s,
                }
            )
            say(
                f"{name} {users} x {candidates}: {call_s * 1e3:.3f} ms, {pairs / call_s:,.0f} pairs/s"
            )
    return result


def split_feeds(
    graphs: dict[str, Any], user_graph: Any, ctr_feed: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The one-user CTR feed -> the split graphs' one-user feeds: the user graph's (its
    inputs are the CTR graph's but the hour and the pairs) and the pair graph's (the user
    side computed here, the query vector, the hour and the pairs)."""
    user_feed = {name: ctr_feed[name] for name in graphs["ctr_user"]["inputs"]}
    side = dict(zip(graphs["ctr_user"]["outputs"], user_graph.run(None, user_feed), strict=True))
    pair_feed = {
        name: side[name] if name in side else ctr_feed[name]
        for name in graphs["ctr_pair"]["inputs"]
    }
    return user_feed, pair_feed


def say(text: str) -> None:
    print(f"[throughput] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.graph_throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bundle", type=Path, default=Path("demo-work/bundle"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-batch", type=int, default=4096, help="largest encoder batch")
    parser.add_argument("--candidates", type=int, default=100, help="CTR candidates per user")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per shape")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no manifest.json (make demo builds a bundle)")
    if args.max_batch < 1 or args.candidates < 1:
        raise SystemExit("--max-batch and --candidates must be at least 1")
    result = measure(args.bundle, args.device, args.max_batch, args.candidates, args.seconds)
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
