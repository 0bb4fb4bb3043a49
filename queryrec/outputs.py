"""Output directories that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from queryrec.errors import OutputExistsError, QueryRecError


@contextmanager
def atomic_output_dir(out_dir: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to write into; rename it to `out_dir` on success.

    On any error the temporary folder is removed and `out_dir` is left as it was. An existing
    non-empty `out_dir` is an error unless `force`, in which case it is replaced only once
    the new content is complete.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise QueryRecError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(
            f"{out_dir}: output directory is not empty (use --force to replace it)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, old / "previous")
    os.rename(tmp, out_dir)
    os.chmod(out_dir, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
