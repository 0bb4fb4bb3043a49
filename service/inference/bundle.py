"""The serving side of the model bundle: verified artifacts and ONNX Runtime sessions.

The bundle's layout, its manifest check and the raw-id maps are
`queryrec.features.bundle_format` (shared with the writer, `export.bundle`); this module
adds what only the serving process needs: sessions on the CUDA provider when there is
one, non-spinning thread pools, and the id maps loaded once.

`bundle_loader.load_bundle` refuses a broken bundle before the server binds its port, each problem a
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
   of 1 and 2 users and a few candidates (`bundle_loader.smoke_run`), so that a graph that loads but
   cannot run (an index table smaller than the maps, a history longer than the graph's
   positions) fails at load, not at warm-up or on the first request.
The checks read the small artifacts once and run a handful of tiny batches: they add
milliseconds to a load, not seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import polars as pl

from queryrec.features.bundle_format import (
    CTR_FILE,
    CTR_PAIR_FILE,
    CTR_USER_FILE,
    ENCODER_FILE,
    MANIFEST,
    IdMap,
    one_line,
    read_manifest,
    read_profiles,
    read_schema,
)
from service.errors import BundleError

# Manifest (numpy) dtype names -> ONNX Runtime element types.
ORT_TYPES = {
    "bool": "tensor(bool)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "float16": "tensor(float16)",
    "float32": "tensor(float)",
    "float64": "tensor(double)",
}


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
    # The split CTR graph (user side, per-request side), when the bundle has it.
    ctr_user: ort.InferenceSession | None = None
    ctr_pair: ort.InferenceSession | None = None

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


def open_bundle(root: Path, *, device: str = "auto", threads: int = 1) -> Bundle:
    """Verify a bundle's files and build its sessions (checks 1-3 of the module
    docstring); BundleError (one line naming the file and the field) on any problem.
    The service loads bundles through `bundle_loader.load_bundle`, which adds the smoke
    run."""
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
    split = CTR_USER_FILE in manifest["files"]
    ctr_user = session(CTR_USER_FILE) if split else None
    ctr_pair = session(CTR_PAIR_FILE) if split else None
    if encoder is not None:
        check_graph(encoder, root, manifest, "query_encoder")
    check_graph(ctr, root, manifest, "ctr")
    if ctr_user is not None and ctr_pair is not None:
        check_graph(ctr_user, root, manifest, "ctr_user")
        check_graph(ctr_pair, root, manifest, "ctr_pair")
    bundle = Bundle(
        root=root,
        manifest=manifest,
        encoder=encoder,
        ctr=ctr,
        users=maps["users"],
        items=maps["items"],
        words=maps["words"],
        schema=schema,
        ctr_user=ctr_user,
        ctr_pair=ctr_pair,
    )
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
