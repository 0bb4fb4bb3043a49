"""Shared fixtures: one tiny synthetic raw folder and its prepared dataset per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from queryrec.data.prepare import PrepareConfig, run_prepare
from queryrec.data.synth import preset_config, run_synth
from service.state.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` preset, seed 0 (read-only: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("raw") / "tiny"
    run_synth(out, preset_config("tiny", 0))
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_raw` prepared with the default config (read-only)."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    run_prepare(tiny_raw, out, PrepareConfig())
    return out


@pytest.fixture(scope="session")
def tiny_augmented(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `tiny_data` with the augment job's output from the category reference
    (no denoiser to train: the plumbing of the pseudo-positives does not depend on where
    they come from) (read-only)."""
    from queryrec.diffusion.augment import augment_with_reference

    out = tmp_path_factory.mktemp("augmented") / "tiny"
    shutil.copytree(tiny_data, out)
    augment_with_reference(out)
    return out


@pytest.fixture
def raw_copy(tiny_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny raw folder that a test may break."""
    copy = tmp_path / "raw"
    shutil.copytree(tiny_raw, copy)
    return copy


@pytest.fixture(scope="session")
def queryrec_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QueryRec trained for one epoch on `tiny` (read-only)."""
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    run = tmp_path_factory.mktemp("runs") / "queryrec"
    train(tiny_data, run, TrainConfig(model="queryrec", epochs=1, batch_size=512, progress=False))
    return run


@pytest.fixture(scope="session")
def bundle(queryrec_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`queryrec_run` exported (read-only: copy it before changing anything)."""
    from export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "queryrec"
    export_bundle(queryrec_run, out, ExportOptions())
    return out


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of one real embedded redis-server shared by the whole test session.

    Tests that write to it should use `redis_client_url`, which empties it first.
    """
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client_url(redis_url: str) -> str:
    """`redis_url` after FLUSHALL: each test starts with an empty server."""
    import redis  # here, not at the top: collecting tests must not need the `serve` extra

    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    return redis_url
