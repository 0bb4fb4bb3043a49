"""Typed model configuration: sizes come from the dataset schema, the rest has defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from queryrec.errors import QueryRecError
from queryrec.features.model_inputs import HistoryLengths


def _check(owner: str, values: dict[str, tuple[float, str]]) -> None:
    """Raise a one-line QueryRecError for the first value outside its range.

    values: field -> (value, rule), rule one of ">= 0", "> 0", ">= 1"."""
    for name, (value, rule) in values.items():
        ok = {">= 0": value >= 0, "> 0": value > 0, ">= 1": value >= 1}[rule]
        if not ok:
            raise QueryRecError(f"{owner}.{name} must be {rule}, not {value}")


@dataclass(frozen=True)
class PLEConfig:
    """PLE's loss weight and sizes (`models.baselines.ple`; chosen on validation of `small`)."""

    search_weight: float = 0.1  # w of L_search; PLE's equal weights let search take over
    expert_width: int = 200
    levels: int = 1
    shared_experts: int = 2
    task_experts: int = 2
    tower_width: int = 80

    def __post_init__(self) -> None:
        _check(
            "ple",
            {
                "search_weight": (self.search_weight, ">= 0"),
                "expert_width": (self.expert_width, ">= 1"),
                "levels": (self.levels, ">= 1"),
                "shared_experts": (self.shared_experts, ">= 1"),
                "task_experts": (self.task_experts, ">= 1"),
                "tower_width": (self.tower_width, ">= 1"),
            },
        )


@dataclass(frozen=True)
class SESRecConfig:
    """SESRec's loss weights and sizes (`models.baselines.sesrec`; the authors' values)."""

    cl_weight: float = 0.1  # weight of the query-item alignment (InfoNCE) loss
    triplet_weight: float = 0.001  # weight of the interest-contrast (triplet) loss
    margin: float = 0.1  # triplet margin
    temperature: float = 0.1  # InfoNCE temperature
    max_pairs: int = 512  # (query, clicked item) pairs the alignment loss uses
    rec_length: int = 20  # most recent feed clicks the rec encoder reads
    search_length: int = 10  # most recent queries the search encoder reads

    def __post_init__(self) -> None:
        _check(
            "sesrec",
            {
                "cl_weight": (self.cl_weight, ">= 0"),
                "triplet_weight": (self.triplet_weight, ">= 0"),
                "margin": (self.margin, ">= 0"),
                "temperature": (self.temperature, "> 0"),
                "max_pairs": (self.max_pairs, ">= 1"),
                "rec_length": (self.rec_length, ">= 1"),
                "search_length": (self.search_length, ">= 1"),
            },
        )


@dataclass(frozen=True)
class IV4RecConfig:
    """IV4REC+'s loss weights (`models.baselines.iv4rec`; 1 each, as the authors add the
    terms unweighted) and the training queries read per item."""

    user_weight: float = 1.0  # w_u of the user-side stage-one MSE
    item_weight: float = 1.0  # w_i of the item-side stage-one MSE
    item_queries: int = 4

    def __post_init__(self) -> None:
        _check(
            "iv4rec",
            {
                "user_weight": (self.user_weight, ">= 0"),
                "item_weight": (self.item_weight, ">= 0"),
                "item_queries": (self.item_queries, ">= 1"),
            },
        )


@dataclass(frozen=True)
class UniSARConfig:
    """UniSAR's loss weights, temperatures and sizes (`models.baselines.unisar`; the
    authors' KuaiSAR values)."""

    align_weight: float = 0.1  # transition alignment (both sides summed)
    align_temperature: float = 0.1
    qi_weight: float = 0.001  # query-item alignment
    qi_temperature: float = 0.5
    qi_pairs: int = 512
    align_users: int = 256
    feed_length: int = 10
    search_length: int = 10

    def __post_init__(self) -> None:
        _check(
            "unisar",
            {
                "align_weight": (self.align_weight, ">= 0"),
                "align_temperature": (self.align_temperature, "> 0"),
                "qi_weight": (self.qi_weight, ">= 0"),
                "qi_temperature": (self.qi_temperature, "> 0"),
                "qi_pairs": (self.qi_pairs, ">= 1"),
                "align_users": (self.align_users, ">= 1"),
                "feed_length": (self.feed_length, ">= 1"),
                "search_length": (self.search_length, ">= 1"),
            },
        )


BASELINE_CONFIGS: dict[str, type] = {
    "ple": PLEConfig,
    "sesrec": SESRecConfig,
    "iv4rec": IV4RecConfig,
    "unisar": UniSARConfig,
}
"""ModelConfig's field per baseline -> its settings class (loss weights, sizes)."""


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
    # Each baseline's own loss weights and sizes (read only by that baseline's model).
    ple: PLEConfig = field(default_factory=PLEConfig)
    sesrec: SESRecConfig = field(default_factory=SESRecConfig)
    iv4rec: IV4RecConfig = field(default_factory=IV4RecConfig)
    unisar: UniSARConfig = field(default_factory=UniSARConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """The config `dataclasses.asdict` wrote (a checkpoint's): tuples and the nested
        settings rebuilt. A checkpoint from before the typed baseline settings holds an
        `extra` dict, always empty (nothing set it), which is dropped."""
        raw = dict(raw)
        vocab = dict(raw.pop("vocab"))
        vocab["categories"] = tuple(vocab["categories"])
        vocab["profile"] = tuple(vocab["profile"])
        if raw.pop("extra", None):
            raise QueryRecError(
                "model config: untyped 'extra' settings are no longer read; set the "
                "baseline's typed settings (ModelConfig.ple / sesrec / iv4rec / unisar)"
            )
        for key in ("mlp", "attention_mlp"):
            if key in raw:
                raw[key] = tuple(raw[key])
        for key, settings in BASELINE_CONFIGS.items():
            if isinstance(raw.get(key), dict):
                raw[key] = settings(**raw[key])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise QueryRecError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(vocab=Vocab(**vocab), **raw)

    @property
    def history_lengths(self) -> HistoryLengths:
        """The feature path's lengths for this model."""
        return HistoryLengths(
            self.click_history, self.query_history, self.query_tokens, self.query_clicks
        )
