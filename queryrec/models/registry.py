"""Model names -> what they are: backbone, query tower, which auxiliary losses.

| name | backbone | query representation | L_next | L_cl |
|---|---|---|---|---|
| din | DIN | - | - | - |
| dcn | DCN-V2 | - | - | - |
| queryrec | DIN | yes | yes | yes |
| queryrec-dcn | DCN-V2 | yes | yes | yes |
| queryrec-no-next | DIN | yes | - | yes |
| queryrec-no-cl | DIN | yes | yes | - |
| queryrec-no-diffusion | DIN | yes | yes | yes, clicked queries only |
| queryrec-no-next-no-diffusion | DIN | yes | - | yes, clicked queries only |

`queryrec-no-next-no-diffusion` isolates L_next without the diffusion job (paired with
`queryrec-no-diffusion`), e.g. for the low-data curve, where a diffusion model per data
fraction would cost more than the CTR runs.

Models with L_cl take the diffusion job's pseudo-positives for click-less queries when the
dataset has them (`queryrec diffusion augment`); `queryrec-no-diffusion` never does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl
import torch

from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.ctr_model import CTRModel


@dataclass(frozen=True)
class ModelSpec:
    """The parts a model name switches on."""

    backbone: str
    use_query: bool
    next_loss: bool
    contrastive_loss: bool
    diffusion_positives: bool = True  # L_cl uses the augment job's pseudo-positives


MODELS: dict[str, ModelSpec] = {
    "din": ModelSpec("din", use_query=False, next_loss=False, contrastive_loss=False),
    "dcn": ModelSpec("dcn", use_query=False, next_loss=False, contrastive_loss=False),
    "queryrec": ModelSpec("din", use_query=True, next_loss=True, contrastive_loss=True),
    "queryrec-dcn": ModelSpec("dcn", use_query=True, next_loss=True, contrastive_loss=True),
    "queryrec-no-next": ModelSpec("din", use_query=True, next_loss=False, contrastive_loss=True),
    "queryrec-no-cl": ModelSpec("din", use_query=True, next_loss=True, contrastive_loss=False),
    "queryrec-no-diffusion": ModelSpec(
        "din", use_query=True, next_loss=True, contrastive_loss=True, diffusion_positives=False
    ),
    "queryrec-no-next-no-diffusion": ModelSpec(
        "din", use_query=True, next_loss=False, contrastive_loss=True, diffusion_positives=False
    ),
}
DEFAULT_BENCH_MODELS = (
    "din", "dcn", "queryrec", "queryrec-dcn", "queryrec-no-next", "queryrec-no-cl",
    "queryrec-no-diffusion",
)  # fmt: skip


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise QueryRecError(f"unknown model '{name}' (choose one of: {', '.join(MODELS)})")
    return MODELS[name]


def model_config(name: str, schema: dict[str, Any], **overrides: Any) -> ModelConfig:
    """The ModelConfig for a model name on a dataset (sizes and max lengths from its schema)."""
    lengths = schema["max_lengths"]
    base = ModelConfig(
        vocab=Vocab.from_schema(schema),
        click_history=int(lengths["click_history"]),
        query_history=int(lengths["query_history"]),
        query_tokens=int(lengths["query_tokens"]),
        caption_tokens=int(lengths["caption_tokens"]),
        use_query=model_spec(name).use_query,
    )
    return replace(base, **overrides)


def feature_tables(
    dataset: PreparedDataset, caption_tokens: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Item side-feature tensors (ItemTower buffers) and the user profile table."""
    items = pl.read_parquet(dataset.root / "features/items.parquet")
    captions = items["caption"].to_list()
    caption = np.zeros((items.height, caption_tokens), dtype=np.int64)
    for row, words in enumerate(captions):
        words = words[:caption_tokens]
        caption[row, : len(words)] = words
    side = {
        "author": torch.from_numpy(items["author"].to_numpy().astype(np.int64)),
        "item_type": torch.from_numpy(items["item_type"].to_numpy().astype(np.int64)),
        "categories": torch.from_numpy(
            np.stack([items[f"category_{i}"].to_numpy() for i in range(1, 5)], axis=1).astype(
                np.int64
            )
        ),
        "caption": torch.from_numpy(caption),
    }
    return side, torch.from_numpy(dataset.profile_table())


def build_model(name: str, dataset: PreparedDataset, cfg: ModelConfig) -> CTRModel:
    """A freshly initialised model of the given name for the dataset."""
    side, profile = feature_tables(dataset, cfg.caption_tokens)
    return CTRModel(cfg, model_spec(name).backbone, side, profile)
