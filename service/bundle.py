"""The serving side of the model bundle: verified artifacts and ONNX Runtime sessions.

The bundle's layout, its manifest check and the raw-id maps are
`queryrec.features.bundle_format` (shared with the writer, `export.bundle`); this module
adds what only the serving process needs: sessions on the CUDA provider when there is
one, non-spinning thread pools, and the id maps loaded once.

`load_bundle` refuses a broken bundle before the server binds its port, each problem a
`BundleError` of one line naming the file and the field (the CLI exits 2 with it):
1. the manifest: its seal (manifest.sha256 matches its bytes: no edit after export),
   its schema (every field's type, range and characters, `model_version` included),
   every listed file's sha256, no file in the folder it does not list, its fields'
   agreement with each other (`bundle_format.read_manifest`);
2. schema.json parses; the id maps and features/users.parquet are readable and hold
   integer indices and profile codes inside the manifest's vocabulary sizes;
3. each graph loads in ONNX Runtime and has exactly the inputs and outputs the manifest
   declares, with the same element types, ranks and fixed sizes (`check_graph`);
4. a smoke run of each graph on feeds built by the server's own feature path at batches
   of 1 and 2 users and a few candidates (`smoke_run`), so that a graph that loads but
   cannot run (an index table smaller than the maps, a history longer than the graph's
   positions) fails here, not at warm-up or on the first request.
The checks read the small artifacts once and run a handful of tiny batches: they add
milliseconds to a load, not seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import polars as pl

from queryrec.features.bundle_format import (
    CTR_FILE,
    ENCODER_FILE,
    MANIFEST,
    IdMap,
    one_line,
    read_manifest,
    read_profiles,
    read_schema,
)
from service.errors import BundleError

if TYPE_CHECKING:
    from service.features import FeatureBuilder, UserRow

# Manifest (numpy) dtype names -> ONNX Runtime element types.
ORT_TYPES = {
    "bool": "tensor(bool)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "float16": "tensor(float16)",
    "float32": "tensor(float)",
    "float64": "tensor(double)",
}
SMOKE_REQUEST_MS = 1_700_000_000_000  # any time: the smoke histories end just before it
SMOKE_CANDIDATES = (3, 2)  # candidates of the smoke requests (1 user: the first count)


def session_options(threads: int) -> ort.SessionOptions:
    """One small intra-op pool per session, not spinning: two spinning pools in one
    process fight each other and the gRPC event loop for the CPU (MEASURED.md).

    The CPU memory arena and memory patterns stay on (ONNX Runtime's defaults, set here
    so that the choice is in one place). Each session's arena grows to the largest batch
    shape of the warm-up and is freed with the session; that is what a reload releases
    (`ModelHolder`), so the arena does not make reloads grow memory. Turning it off
    saves about 30 MB per scorer but runs the CTR graph slower at large batches (tiny
    test bundle, one thread, median of 500 interleaved calls: 1.00-1.03x at 1-10 pairs
    and encoder batches, 1.05x at 100 pairs, 1.34x at 1000 pairs); turning memory
    patterns off saved nothing measurable."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    return options


def providers(device: str = "auto") -> list[str]:
    """CUDA when asked for or available (device auto), else CPU; CPU is always the fallback."""
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise BundleError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise BundleError("device cuda asked for, but onnxruntime has no CUDA provider here")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class Bundle:
    """A verified bundle: manifest, ONNX Runtime sessions and id maps."""

    root: Path
    manifest: dict[str, Any]
    encoder: ort.InferenceSession | None
    ctr: ort.InferenceSession
    users: IdMap
    items: IdMap
    words: IdMap
    schema: dict[str, Any]

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def on_gpu(self) -> bool:
        """Whether the CTR graph runs on the CUDA provider."""
        return self.ctr.get_providers()[0] == "CUDAExecutionProvider"

    def profiles(self) -> pl.DataFrame:
        """Profile codes per user index (features/users.parquet), checked against the
        manifest (`bundle_format.read_profiles`)."""
        return read_profiles(self.root, self.manifest)


def load_bundle(root: Path, *, device: str = "auto", threads: int = 1) -> Bundle:
    """Verify a bundle and build its sessions; BundleError (one line naming the file and
    the field) on any problem, found before anything is served (the module docstring
    lists the checks)."""
    root = Path(root)
    manifest = read_manifest(root)
    schema = read_schema(root, list(manifest["profile_fields"]))
    vocab = manifest["vocab_sizes"]
    maps = {
        name: IdMap.read(root / f"maps/{name}.parquet", size=int(vocab[name]))
        for name in ("users", "items", "words")
    }
    read_profiles(root, manifest)
    chosen = providers(device)
    options = session_options(threads)

    def session(name: str) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(root / name), options, providers=chosen)
        except Exception as error:  # ORT raises its own types for bad graphs
            raise BundleError(
                f"{root / name}: ONNX Runtime cannot load it ({one_line(error)})"
            ) from None

    encoder = session(ENCODER_FILE) if ENCODER_FILE in manifest["files"] else None
    ctr = session(CTR_FILE)
    if encoder is not None:
        check_graph(encoder, root, manifest, "query_encoder")
    check_graph(ctr, root, manifest, "ctr")
    bundle = Bundle(
        root=root,
        manifest=manifest,
        encoder=encoder,
        ctr=ctr,
        users=maps["users"],
        items=maps["items"],
        words=maps["words"],
        schema=schema,
    )
    smoke_run(bundle)
    return bundle


def check_graph(
    session: ort.InferenceSession, root: Path, manifest: dict[str, Any], key: str
) -> None:
    """The session of graph `key` has exactly the inputs (any order: ORT feeds by name)
    and outputs (in order: the server reads the first) that manifest.json declares for
    it, each with the declared element type, rank and fixed sizes, and a dynamic axis
    wherever the manifest names one; BundleError naming manifest.json, the field and
    the graph file otherwise."""
    graph = manifest["graphs"][key]
    file = graph["file"]
    for kind, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared: dict[str, dict[str, Any]] = graph[kind]
        where = f"{root / MANIFEST}: graphs.{key}.{kind}"
        names = [t.name for t in tensors]
        missing = [name for name in declared if name not in names]
        extra = [name for name in names if name not in declared]
        problems = []
        if missing:
            problems.append(f"declares {', '.join(missing)}, which {file} does not have")
        if extra:
            problems.append(f"{file} has {', '.join(extra)}, which it does not declare")
        if not problems and kind == "outputs" and names != list(declared):
            problems.append(f"declares {', '.join(declared)}; {file} has them in another order")
        if problems:
            raise BundleError(f"{where} {'; '.join(problems)}")
        for tensor in tensors:
            spec = declared[tensor.name]
            field = f"{where}.{tensor.name}"
            if ORT_TYPES[spec["dtype"]] != tensor.type:
                raise BundleError(f"{field}.dtype is {spec['dtype']}, but {file} has {tensor.type}")
            shape, actual = spec["shape"], list(tensor.shape)
            if len(shape) != len(actual):
                raise BundleError(
                    f"{field}.shape {shape} has rank {len(shape)}, but {file} has rank "
                    f"{len(actual)} ({actual})"
                )
            for axis, (want, have) in enumerate(zip(shape, actual, strict=True)):
                fixed = isinstance(have, int) and have > 0  # ORT: int fixed, str/None dynamic
                if isinstance(want, int) and have != want:
                    raise BundleError(
                        f"{field}.shape[{axis}] is {want}, but {file} has "
                        f"{have if fixed else 'a dynamic axis'} there"
                    )
                if isinstance(want, str) and fixed:
                    raise BundleError(
                        f"{field}.shape[{axis}] is the dynamic axis {want!r}, but {file} "
                        f"fixes it to {have}"
                    )


def smoke_run(bundle: Bundle) -> None:
    """Run each graph once per batch on inputs built exactly as the server builds them
    (`service.features`: FeatureBuilder, encoder_inputs, ctr_inputs) from a user with a
    full history (every query slot and word, every click slot, the largest indices the
    maps hold) and a user without any: encoder batches [full], [empty] (the "no query"
    vector) and [full, empty]; CTR batches of 1 user with 3 candidates and 2 users with
    3 + 2. The feed's names and dtypes must be the graph's inputs; outputs must have
    the declared shapes and finite values (CTR: probabilities in [0, 1])."""
    # here, not at the top: service.features imports this module for `Bundle`
    from service.features import FeatureBuilder, split_encoded

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


def _smoke_rows(builder: FeatureBuilder, bundle: Bundle) -> tuple[UserRow, UserRow]:
    """A user row with every history slot filled (every search with its clicked results)
    and one without history."""
    from service.state import UserState  # with service.features (see `smoke_run`)

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
