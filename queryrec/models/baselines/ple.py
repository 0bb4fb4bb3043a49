"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020), with search and feed as tasks.

PLE stacks extraction levels. Each level holds shared experts and experts of each task;
task k's gate is a softmax over its own and the shared experts, and mixes their outputs
(a "customized gate control" unit, CGC). Between levels a shared gate over every expert
feeds the shared experts of the next level. A tower per task maps its last mixture to a
logit. The feed task (the one evaluated and served) and the search task ("was a shown
search result clicked?") are trained jointly, so the search logs shape the shared experts.

Adaptations to this data (choices, docs/RESULTS.md "Baselines"):
- Input: the same fields as our DIN (user, hour, candidate caption, profile, candidate
  vector, the click history pooled by DIN's target attention) plus one query field: the
  search's own query vector (masked mean of its words, projected) for a search sample,
  zeros for a feed sample, which has no query. The feed task therefore sees the search
  logs only through the shared experts, as in a multi-task baseline; the history is
  pooled by target attention (not mean pooling) so that the comparison with DIN isolates
  the multi-task part.
- Search samples: every (search session, shown item) of the training split is one
  impression, label = clicked in that session (`queryrec.training.extra_inputs`); each
  training step draws as many as the feed batch holds, uniformly. The feed clicks before
  the search are its history.
- Loss: L_ctr(feed) + w * L_search with w = cfg.ple.search_weight (`PLEConfig`), 0.1,
  not PLE's equal weights: with w = 1 the search task takes over the shared embeddings
  and the feed loss barely moves (validation AUC 0.598 against 0.635 without it).
- Sizes, chosen on validation AUC of `small` (60k training samples, 1 epoch, seed 0;
  docs/RESULTS.md "Baselines"): 1 level (a single CGC), 2 shared and 2 task experts,
  experts MLP(200) and towers MLP(80), the shapes of our DIN's head. Two levels of
  MLP(64) experts and MLP(32) towers reached 0.602, two levels of 200/80 0.618, one
  level 0.635 (DIN 0.633 on the same samples): the deeper gated stack learns too slowly
  for the epochs early stopping allows.

Servable: the feed task reads only the standard inputs, so the export writes its
ctr.onnx (no query encoder graph).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel, CTROutput
from queryrec.models.layers import MLP, TargetAttention
from queryrec.models.query_vector import QueryVector

FEED, SEARCH = 0, 1
TASKS = 2


class ExtractionLevel(nn.Module):
    """One PLE level: task inputs (TASKS + 1 of (B, in)) -> task outputs (TASKS + 1 of (B,
    out)); the last entry is the shared path (its gate mixes every expert)."""

    def __init__(self, in_dim: int, expert: tuple[int, ...], shared: int, per_task: int):
        super().__init__()
        self.shared = nn.ModuleList(MLP(in_dim, expert, 0.0) for _ in range(shared))
        self.per_task = per_task
        # Task k's experts are entries k * per_task .. (k + 1) * per_task - 1.
        self.task = nn.ModuleList(MLP(in_dim, expert, 0.0) for _ in range(TASKS * per_task))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, per_task + shared) for _ in range(TASKS))
        self.shared_gate = nn.Linear(in_dim, TASKS * per_task + shared)
        self.out_dim = expert[-1]

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        shared = [e(inputs[-1]) for e in self.shared]
        own = [
            [self.task[k * self.per_task + i](inputs[k]) for i in range(self.per_task)]
            for k in range(TASKS)
        ]
        outputs = []
        for k, gate in enumerate(self.task_gates):
            experts = torch.stack(own[k] + shared, dim=1)  # (B, E + S, out)
            weights = torch.softmax(gate(inputs[k]), dim=-1).unsqueeze(-1)  # (B, E + S, 1)
            outputs.append((weights * experts).sum(dim=1))
        every = torch.stack([e for task in own for e in task] + shared, dim=1)
        weights = torch.softmax(self.shared_gate(inputs[-1]), dim=-1).unsqueeze(-1)
        outputs.append((weights * every).sum(dim=1))
        return outputs


class PLEBackbone(nn.Module):
    """[fields..., candidate, attention-pooled history, query field] -> PLE -> task logit.

    `forward` has the backbone signature of DIN/DCN (`CTRGraph`'s generic path calls it)
    and gives the feed task; `task_logits` either task.
    """

    def __init__(self, cfg: ModelConfig, n_fields: int):
        super().__init__()
        settings = cfg.ple
        expert = (settings.expert_width,)
        levels, shared, per_task = settings.levels, settings.shared_experts, settings.task_experts
        self.dim = cfg.dim
        self.attention = TargetAttention(cfg.dim, cfg.attention_mlp, cfg.dropout)
        width = (n_fields + 3) * cfg.dim  # fields, candidate, interest, query field
        self.levels = nn.ModuleList()
        for _ in range(levels):
            self.levels.append(ExtractionLevel(width, expert, shared, per_task))
            width = expert[-1]
        tower = (settings.tower_width,)
        self.towers = nn.ModuleList(MLP(width, tower, cfg.dropout, out_dim=1) for _ in range(TASKS))

    def task_logits(
        self,
        task: int,
        fields: list[Tensor],
        candidate: Tensor,
        history: Tensor,
        history_mask: Tensor,
        query: Tensor,
        pair_user: Tensor | None = None,
    ) -> Tensor:
        """fields (B, d) each, candidate (B, d), history (U, H, d), mask (U, H), query
        field (B, d) -> logits (B,) of `task` (FEED or SEARCH)."""
        interest = self.attention(candidate, history, history_mask, pair_user)  # (B, d)
        x = torch.cat([*fields, candidate, interest, query], dim=-1)
        states = [x] * (TASKS + 1)
        for level in self.levels:
            states = level(states)
        return self.towers[task](states[task]).squeeze(-1)

    def forward(
        self,
        fields: list[Tensor],
        candidate: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extra: list[Tensor],
        pair_user: Tensor | None = None,
    ) -> Tensor:
        """The feed task (a feed sample has no query: its query field is zero)."""
        no_query = candidate.new_zeros((candidate.shape[0], self.dim))
        return self.task_logits(FEED, fields, candidate, history, history_mask, no_query, pair_user)


class PLEModel(CTRModel):
    """PLE over our shared embedding tables; the search task's loss in `CTROutput.losses`."""

    training_inputs: ClassVar[tuple[str, ...]] = ("search_task",)
    backbone: PLEBackbone

    def __init__(self, cfg: ModelConfig, item_side: dict[str, Tensor]):
        super().__init__(cfg, PLEBackbone(cfg, 3 + len(cfg.vocab.profile)), item_side)
        self.search_query = QueryVector(self.words, project=True)
        self.search_weight = cfg.ple.search_weight

    def forward_with_query(
        self, inputs: ModelInputs[Tensor], aux_items: Tensor | None = None
    ) -> CTROutput:
        """The feed task's output; with a `search_task` (training batches) also the
        search task's weighted loss as `L_search`."""
        out = super().forward_with_query(inputs, aux_items)
        task = inputs.search_task
        if task is None or self.search_weight == 0:
            return out
        logits = self.search_logits(task.inputs)
        # The same BCE as L_ctr (models may not import the losses room: the contracts
        # keep the paper's parts independent).
        label = task.label.to(logits.dtype)
        loss = self.search_weight * F.binary_cross_entropy_with_logits(logits, label)
        return out._replace(losses={"L_search": loss})

    def search_logits(self, search: ModelInputs[Tensor]) -> Tensor:
        """Search impressions (S rows; the search's own words in its one query slot,
        query_tokens (S, 1, T)) -> logits (S,) of "clicked"."""
        base, caption, history = self.items.lookup(search.item.unsqueeze(1), search.click_history)
        fields = self.context_fields(search.user, search.hour, caption[:, 0], search.profile)
        query = self.search_query(search.query_tokens[:, -1])  # (S, d)
        return self.backbone.task_logits(
            SEARCH, fields, base[:, 0], history, search.click_history > 0, query
        )
