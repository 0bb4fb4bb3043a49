"""How the service loads a bundle: open it (`bundle.open_bundle`: manifest, files, maps,
sessions, graph signatures), then a smoke run of each graph on feeds built by the
server's own feature path (`features.FeatureBuilder`), so that a graph that loads but
cannot run fails at load, before the port is bound or a reload is swapped in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from queryrec.features.bundle_format import (
    CTR_FILE,
    CTR_PAIR_FILE,
    CTR_USER_FILE,
    ENCODER_FILE,
    IdMap,
    one_line,
)
from service.errors import BundleError
from service.inference.bundle import ORT_TYPES, Bundle, open_bundle
from service.inference.features import FeatureBuilder, UserRow, split_encoded
from service.state.store import UserState

SMOKE_REQUEST_MS = 1_700_000_000_000  # any time: the smoke histories end just before it
SMOKE_CANDIDATES = (3, 2)  # candidates of the smoke requests (1 user: the first count)
SPLIT_TOLERANCE = 1e-5
"""The split CTR graph may differ from ctr.onnx by this much on the smoke batches."""


def load_bundle(root: Path, *, device: str = "auto", threads: int = 1) -> Bundle:
    """Verify a bundle, build its sessions and smoke-run its graphs; BundleError (one line
    naming the file and the field) on any problem, found before anything is served
    (`service.inference.bundle` lists the checks)."""
    bundle = open_bundle(root, device=device, threads=threads)
    smoke_run(bundle)
    return bundle


def smoke_run(bundle: Bundle) -> None:
    """Run each graph once per batch on inputs built exactly as the server builds them
    (`service.inference.features`: FeatureBuilder, encoder_inputs, ctr_inputs) from a user with a
    full history (every query slot and word, every click slot, the largest indices the
    maps hold) and a user without any: encoder batches [full], [empty] (the "no query"
    vector) and [full, empty]; CTR batches of 1 user with 3 candidates and 2 users with
    3 + 2. The feed's names and dtypes must be the graph's inputs; outputs must have
    the declared shapes and finite values (CTR: probabilities in [0, 1]). The split CTR
    graph, when present, runs the same CTR batches (user side, then pairs) and must give
    ctr.onnx's probabilities within `SPLIT_TOLERANCE`."""
    builder = FeatureBuilder.for_bundle(bundle)
    full, empty = _smoke_rows(builder, bundle)
    graphs = bundle.manifest["graphs"]
    # the largest item indices and an item the maps do not know (-> the unknown index)
    candidates = np.append(np.resize(_largest(bundle.items, 4), sum(SMOKE_CANDIDATES) - 1), -1)
    for rows, score in (([full], True), ([empty], False), ([full, empty], True)):
        encoded = None
        if bundle.encoder is not None:
            outputs = _run(
                bundle.encoder,
                bundle.root / ENCODER_FILE,
                graphs["query_encoder"]["outputs"],
                builder.encoder_feed(rows),
                {"users": len(rows), "L": builder.lengths.queries},
            )
            encoded = split_encoded(outputs, list(graphs["query_encoder"]["outputs"]), rows)
        if not score:  # the "no query" outputs alone (what the server encodes at start)
            continue
        counts = SMOKE_CANDIDATES[: len(rows)]
        split = np.split(candidates[: sum(counts)], np.cumsum(counts)[:-1])
        (probability,) = _run(
            bundle.ctr,
            bundle.root / CTR_FILE,
            graphs["ctr"]["outputs"],
            builder.ctr_feed(rows, encoded, [bundle.items(raw) for raw in split]),
            {"users": len(rows), "pairs": sum(counts)},
        )
        if probability.min() < 0.0 or probability.max() > 1.0:
            raise BundleError(
                f"{bundle.root / CTR_FILE}: smoke run gives values outside [0, 1] "
                f"({float(probability.min()):.3g} .. {float(probability.max()):.3g}), "
                "not probabilities"
            )
        if bundle.ctr_user is not None and bundle.ctr_pair is not None:
            sizes = {"users": len(rows), "pairs": sum(counts)}
            side = _run(
                bundle.ctr_user,
                bundle.root / CTR_USER_FILE,
                graphs["ctr_user"]["outputs"],
                builder.user_feed(rows, encoded),
                sizes,
            )
            names = list(graphs["ctr_user"]["outputs"])
            with_side = [dict(encoded[i]) if encoded else {} for i in range(len(rows))]
            for i, own in enumerate(with_side):
                own.update({name: value[i] for name, value in zip(names, side, strict=True)})
            (split_probability,) = _run(
                bundle.ctr_pair,
                bundle.root / CTR_PAIR_FILE,
                graphs["ctr_pair"]["outputs"],
                builder.pair_feed(rows, with_side, [bundle.items(raw) for raw in split]),
                sizes,
            )
            worst = float(np.max(np.abs(split_probability - probability)))
            if not worst <= SPLIT_TOLERANCE:
                raise BundleError(
                    f"{bundle.root / CTR_PAIR_FILE}: smoke run (users={len(rows)}) differs "
                    f"from {CTR_FILE} by {worst:.3g} (tolerance {SPLIT_TOLERANCE:g})"
                )


def _smoke_rows(builder: FeatureBuilder, bundle: Bundle) -> tuple[UserRow, UserRow]:
    """A user row with every history slot filled (every search with its clicked results)
    and one without history."""

    lengths = builder.lengths
    queries, tokens, clicks = lengths.queries, lengths.tokens, lengths.clicks
    per_query = lengths.clicks_per_query
    minute = 60_000
    state = UserState(
        query_ts=SMOKE_REQUEST_MS - minute * np.arange(1, queries + 1, dtype=np.int64),
        query_sizes=np.full(queries, tokens, dtype=np.int64),
        query_words=np.resize(_largest(bundle.words, queries * tokens), queries * tokens),
        query_click_sizes=np.full(queries, per_query, dtype=np.int64),
        query_click_items=np.resize(
            _largest(bundle.items, queries * per_query), queries * per_query
        ),
        click_ts=SMOKE_REQUEST_MS - 1000 * np.arange(1, clicks + 1, dtype=np.int64),
        click_items=np.resize(_largest(bundle.items, clicks), clicks),
    )
    users = _largest(bundle.users, 2)
    full = builder.user_row(int(users[0]), state, SMOKE_REQUEST_MS)
    empty = builder.user_row(int(users[-1]), UserState(), SMOKE_REQUEST_MS)
    return full, empty


def _largest(ids: IdMap, count: int) -> np.ndarray:
    """Up to `count` raw ids with the largest indices of a map (they probe the graph's
    tables at their ends); an id no map holds (-> the unknown index) for an empty map."""
    if len(ids) == 0:
        return np.full(max(count, 1), -1, dtype=np.int64)
    order = np.argsort(ids.index, kind="stable")[::-1][:count]
    return ids.raw[order]


def _run(
    session: ort.InferenceSession,
    file: Path,
    outputs: dict[str, dict[str, Any]],
    feed: dict[str, np.ndarray],
    sizes: dict[str, int],
) -> list[np.ndarray]:
    """One smoke batch through a graph; -> its outputs. BundleError naming the file
    when the feed does not fit the graph's inputs, the run fails, or an output has
    another shape than the manifest declares (named axes bound by `sizes`; the query
    slot axis L at most its bound) or non-finite values."""
    what = " ".join(f"{name}={n}" for name, n in sizes.items())  # as export's parity cases
    takes = {t.name: t.type for t in session.get_inputs()}
    if set(feed) != set(takes):
        raise BundleError(
            f"{file}: takes inputs {', '.join(takes)}, but the service feeds {', '.join(feed)}"
        )
    for name, value in feed.items():
        if ORT_TYPES.get(value.dtype.name) != takes[name]:
            raise BundleError(
                f"{file}: input {name} is {takes[name]}, but the service feeds {value.dtype}"
            )
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the error is raised; keep ORT's own log off stderr
    try:
        results: Sequence[Any] = session.run(None, feed, quiet)
    except Exception as error:  # ORT raises its own types
        raise BundleError(f"{file}: smoke run ({what}) failed: {one_line(error)}") from None
    values = [np.asarray(result) for result in results]
    for (name, spec), value in zip(outputs.items(), values, strict=True):
        declared = spec["shape"]
        wrong = value.ndim != len(declared) or any(
            not _fits(d, n, sizes) for d, n in zip(declared, value.shape, strict=True)
        )
        if wrong:
            raise BundleError(
                f"{file}: smoke run ({what}) gives output {name} of shape "
                f"{list(value.shape)}, but the manifest declares {declared}"
            )
        if not np.isfinite(value).all():
            raise BundleError(f"{file}: smoke run ({what}) gives non-finite values in {name}")
    return values


def _fits(declared: int | str, size: int, sizes: dict[str, int]) -> bool:
    """An output axis of `size` fits its declaration: a fixed size, a named axis bound by
    `sizes` (the query slot axis L: at most its bound, the feed trims empty slots)."""
    if isinstance(declared, int):
        return size == declared
    if declared == "L":
        return 1 <= size <= sizes.get("L", size)
    return size == sizes.get(declared, size)
