"""Generate the gRPC Python stubs of proto/queryrec/v1/scorer.proto into service/api/.

    .venv/bin/python -m service.api.generate

runs grpc_tools' protoc (with its bundled well-known protos) and writes `scorer_pb2.py`,
`scorer_pb2.pyi` and `scorer_pb2_grpc.py` flat into service/api/. protoc names modules
after the proto's path (`queryrec.v1.scorer_pb2`), which here would be our own, unrelated
`queryrec` package, so two lines are rewritten:

* in `scorer_pb2_grpc.py`, `from queryrec.v1 import scorer_pb2 as ...` becomes
  `from . import scorer_pb2 as ...`;
* in `scorer_pb2.py`, the module name the message classes are built under becomes
  `service.api.scorer_pb2` (their `__module__`, which pickling imports).

The proto's own names (file `queryrec/v1/scorer.proto`, package `queryrec.v1`, service
`queryrec.v1.Scorer`) stay as they are: they are the wire contract.

The output depends only on the proto and the grpcio-tools version (pinned in the `dev`
extra): tests/service/test_api_stubs.py regenerates into a temporary folder and fails when
the committed files differ byte for byte.
"""

from __future__ import annotations

import importlib.resources
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILE = PROTO_ROOT / "queryrec" / "v1" / "scorer.proto"
API_DIR = Path(__file__).resolve().parent

# Where protoc writes, relative to its output folder (the proto's path).
_GENERATED_SUBDIR = Path("queryrec") / "v1"
_FILES = ("scorer_pb2.py", "scorer_pb2.pyi", "scorer_pb2_grpc.py")

# (file, text protoc writes, replacement): each must occur exactly once, so a grpcio-tools
# release that changes its output fails here instead of committing a broken import.
_REWRITES: tuple[tuple[str, bytes, bytes], ...] = (
    (
        "scorer_pb2_grpc.py",
        b"from queryrec.v1 import scorer_pb2 as ",
        b"from . import scorer_pb2 as ",
    ),
    (
        "scorer_pb2.py",
        b"_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'queryrec.v1.scorer_pb2', _globals)",
        b"_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'service.api.scorer_pb2', _globals)",
    ),
)


def _rewrite(name: str, data: bytes) -> bytes:
    for file, old, new in _REWRITES:
        if file != name:
            continue
        count = data.count(old)
        if count != 1:
            raise RuntimeError(
                f"{name}: expected {old!r} once in protoc's output, found it {count} times"
            )
        data = data.replace(old, new)
    return data


def generate(out_dir: Path) -> list[Path]:
    """Write the three stub files into `out_dir` (created if missing); return their paths."""
    if not PROTO_FILE.is_file():
        raise FileNotFoundError(f"{PROTO_FILE} not found: run from a checkout of the repository")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        importlib.resources.as_file(
            importlib.resources.files("grpc_tools") / "_proto"
        ) as well_known,
        tempfile.TemporaryDirectory() as tmp,
    ):
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_FILE),
        ]
        status = protoc.main(args)
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status}: {' '.join(args)}")
        written = []
        for name in _FILES:
            data = (Path(tmp) / _GENERATED_SUBDIR / name).read_bytes()
            target = out_dir / name
            target.write_bytes(_rewrite(name, data))
            written.append(target)
    return written


def main() -> None:
    for path in generate(API_DIR):
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
