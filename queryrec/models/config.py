"""Typed model configuration: sizes come from the dataset schema, the rest has defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queryrec.features.model_inputs import HistoryLengths


@dataclass(frozen=True)
class Vocab:
    """Table sizes read from `schema.json` (index 0 = padding, 1 = unknown)."""

    users: int
    items: int
    words: int
    authors: int
    categories: tuple[int, int, int, int]
    item_types: int
    profile: tuple[int, ...]  # one size per profile field

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> Vocab:
        sizes = schema["vocab_sizes"]
        return cls(
            users=int(sizes["users"]),
            items=int(sizes["items"]),
            words=int(sizes["words"]),
            authors=int(sizes["authors"]),
            categories=tuple(int(c) for c in sizes["categories"]),  # type: ignore[arg-type]
            item_types=int(sizes["item_types"]),
            profile=tuple(int(v) for v in sizes["profile"].values()),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Every model's hyper-parameters; one config type for all models keeps the trainer generic."""

    vocab: Vocab
    dim: int = 32  # embedding width d, shared by items, words and the query representation
    click_history: int = 50  # H: feed clicks the backbone attends over
    query_history: int = 20  # L: queries the SAS encoder reads
    query_tokens: int = 8  # T: words per query
    query_clicks: int = 4  # K: clicked results read per search (models that read them)
    caption_tokens: int = 16  # words per item caption
    mlp: tuple[int, ...] = (200, 80)  # CTR head hidden sizes
    attention_mlp: tuple[int, ...] = (36,)  # DIN activation unit hidden sizes
    cross_layers: int = 3  # DCN-V2 cross layers
    sas_blocks: int = 2
    sas_heads: int = 2
    dropout: float = 0.0  # CPU dropout is costly; early stopping regularises instead
    use_query: bool = False  # add the SAS query representation as a field
    project_query_vector: bool = True  # linear map after the masked mean of word vectors
    # The item's and its author's smoothed training click rates, bucketed, as two more
    # embedded item fields (`queryrec.features.item_statistics`; the "-stats" models).
    item_statistics: bool = False
    # The served QueryRec's additions (`queryrec.models.queryrec_model`), each ablated:
    search_clicks: bool = False  # query slots read their clicked results' item vectors
    target_attention: bool = False  # the candidate attends over every SAS output position
    match_counts: bool = False  # history and search matches of the candidate as count fields
    # a search without clicked results reads its query's diffusion pseudo-positives instead
    slot_positives: bool = False
    extra: dict[str, float] = field(default_factory=dict)  # reserved for model-specific knobs

    @property
    def history_lengths(self) -> HistoryLengths:
        """The feature path's lengths for this model."""
        return HistoryLengths(
            self.click_history, self.query_history, self.query_tokens, self.query_clicks
        )
