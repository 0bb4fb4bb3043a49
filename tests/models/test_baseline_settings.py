"""Each baseline's loss weights and sizes are typed, validated fields of ModelConfig
(no untyped `extra` dict), and a checkpoint's config round-trips through them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from queryrec.errors import QueryRecError
from queryrec.models.config import (
    BASELINE_CONFIGS,
    IV4RecConfig,
    ModelConfig,
    PLEConfig,
    SESRecConfig,
    UniSARConfig,
    Vocab,
)

VOCAB = Vocab(
    users=5, items=9, words=7, authors=3, categories=(3, 3, 3, 3), item_types=2, profile=(2,)
)


def test_model_config_holds_each_baselines_typed_settings() -> None:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert "extra" not in names
    assert set(BASELINE_CONFIGS) <= names
    cfg = ModelConfig(vocab=VOCAB)
    assert (cfg.ple, cfg.sesrec, cfg.iv4rec, cfg.unisar) == (
        PLEConfig(),
        SESRecConfig(),
        IV4RecConfig(),
        UniSARConfig(),
    )
    for settings in BASELINE_CONFIGS.values():
        assert dataclasses.is_dataclass(settings)
        assert settings.__dataclass_params__.frozen  # type: ignore[attr-defined]
        for f in dataclasses.fields(settings):
            assert f.type in ("float", "int"), (settings.__name__, f.name, f.type)


def test_the_defaults_are_the_documented_ones() -> None:
    assert PLEConfig().search_weight == 0.1
    assert (SESRecConfig().cl_weight, SESRecConfig().triplet_weight) == (0.1, 0.001)
    assert (IV4RecConfig().user_weight, IV4RecConfig().item_weight) == (1.0, 1.0)
    assert (UniSARConfig().align_weight, UniSARConfig().qi_weight) == (0.1, 0.001)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PLEConfig(search_weight=-0.1), "ple.search_weight must be >= 0"),
        (lambda: PLEConfig(levels=0), "ple.levels must be >= 1"),
        (lambda: SESRecConfig(temperature=0.0), "sesrec.temperature must be > 0"),
        (lambda: SESRecConfig(triplet_weight=-1), "sesrec.triplet_weight must be >= 0"),
        (lambda: IV4RecConfig(item_weight=-2), "iv4rec.item_weight must be >= 0"),
        (lambda: IV4RecConfig(item_queries=0), "iv4rec.item_queries must be >= 1"),
        (lambda: UniSARConfig(qi_temperature=-0.5), "unisar.qi_temperature must be > 0"),
        (lambda: UniSARConfig(feed_length=0), "unisar.feed_length must be >= 1"),
    ],
)
def test_bad_values_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(QueryRecError, match=message):
        make()


def test_settings_are_frozen_and_unknown_names_refused() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PLEConfig().search_weight = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="search_wieght"):
        PLEConfig(search_wieght=1.0)  # type: ignore[call-arg]


def test_a_checkpoints_config_round_trips() -> None:
    cfg = ModelConfig(
        vocab=VOCAB, mlp=(8, 4), ple=PLEConfig(search_weight=0.3), unisar=UniSARConfig(qi_pairs=7)
    )
    assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg


def test_an_old_checkpoints_empty_extra_is_dropped_a_set_one_refused() -> None:
    raw = dataclasses.asdict(ModelConfig(vocab=VOCAB))
    for key in BASELINE_CONFIGS:
        del raw[key]  # an old checkpoint has none of them ...
    assert ModelConfig.from_dict({**raw, "extra": {}}) == ModelConfig(vocab=VOCAB)  # ... and {}
    with pytest.raises(QueryRecError, match="extra"):
        ModelConfig.from_dict({**raw, "extra": {"ple_search_weight": 0.5}})
