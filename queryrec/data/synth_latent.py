"""A second generator of KuaiSAR-format logs, built differently from `synth.py`, on which
nothing in the project is tuned.

Why it exists
-------------
The diffusion job's settings (hide share, display-order grading, one sampling step), the
loss weights and K were all chosen on `synth.py`'s data, whose topics, key words and
search results were written by the same people who wrote the method. A held-out check
needs data whose mechanism the method was not fitted to: this module. Use it only to
*measure* (docs/HISTORY.md, "Transfer"); changing a default because of a number on it
would make it one more training set.

Generative story (knobs in `LatentStory`; sizes from the same `SynthPreset`)
----------------------------------------------------------------------------
What differs from `synth.py`, part by part:

* **No topics: a continuous taste space.** Items, words and users are unit vectors in
  R^`dim`. Categories are only a lossy read-out written for the item_features columns:
  an item's second level is the nearest of `n_topics` random directions (a Voronoi
  cell), its third the nearest of three more. Nothing is drawn from a category.
* **Captions and queries from similarity, not from word lists.** An item's caption is
  3-8 distinct words drawn with probability proportional to word frequency (Zipf) times
  exp(`caption_sharpness` <item, word>); a query is 1-4 words drawn the same way around
  the searcher's current direction. There is no key word and no topic vocabulary: every
  word can appear anywhere, only more often near its own direction.
* **Intent drifts, it does not jump.** Each user's intent moves, at Poisson change points,
  from one random target direction to the next over `drift_hours` (interpolated), and
  its pull on clicks has a per-change strength.
* **A lexical search engine.** Shown items are the items whose captions share the most
  words with the query (plus popularity and noise), in that order: the display position
  is the engine's rank, which knows words, not the user. Where too few captions match,
  popular items fill the page. Clicks depend on the item's similarity to the user's
  current intent times a position-examination decay, so click-less sessions arise where
  the engine found nothing the user wants, not from a coin.
* **The feed recommender lags the intent.** Feed items are chosen among popular
  candidates by the user's taste and by the intent as it was `feed_lag_hours` earlier;
  clicks follow the taste and the *current* intent. So searches reveal where interest is
  going before the feed does, as in `synth.py`, by another mechanism.

The file formats, ids, timestamps and the user, follow and item-detail columns are
written by `synth.py`'s writers (`_World`), so both generators emit the same format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from queryrec.data.kuaisar import SEARCH_ONLY_ITEM_TYPES
from queryrec.data.synth import (
    HOUR_MS,
    PRESETS,
    SynthConfig,
    _distinct_ids,
    _draw,
    _rank_within,
    _solve_intercept,
    _token_strings,
    _World,
    _zipf_cdf,
    generate,
)
from queryrec.errors import QueryRecError

_CHUNK = 8_192  # rows per block of the (rows, words) and (rows, candidates) score matrices


@dataclass(frozen=True)
class LatentStory:
    """The latent generator's behaviour; see the module docstring."""

    dim: int = 8
    item_popularity_zipf: float = 1.0  # exposure over a random item order
    word_frequency_zipf: float = 0.8  # word frequency over a random word order
    caption_sharpness: float = 5.0
    query_sharpness: float = 5.0
    search_only_share: float = 0.1  # items only search shows (USER, LIVE, ...)
    drift_mean_hours: float = 36.0  # mean time between intent change points
    drift_hours: float = 8.0  # time the intent takes to reach a new target
    intent_strength_range: tuple[float, float] = (0.8, 2.0)
    searches_after_change_share: float = 0.7  # of sessions, a few hours after a change
    search_delay_hours: float = 3.0
    intent_query_share: float = 0.8  # of the other sessions, about the current intent
    engine_popularity_weight: float = 0.3
    engine_noise: float = 0.7  # Gumbel scale added to the engine's word-overlap score
    search_click_weight: float = 4.0  # times <intent, item>
    search_click_bias: float = -2.6
    examination_decay: float = 0.6  # P(examined) = (1 + position) ** -decay
    feed_candidates: int = 48
    feed_taste_weight: float = 4.0
    feed_lagged_intent_weight: float = 3.0
    feed_lag_hours: float = 24.0
    click_weight_taste: float = 2.5
    click_weight_intent: float = 1.6  # times the change's strength
    click_weight_popularity: float = 0.3
    item_quality_std: float = 0.5
    user_bias_std: float = 0.5


def run_latent_synth(
    out_dir: Path, preset: str, seed: int, story: LatentStory | None = None, *, force: bool = False
) -> dict[str, object]:
    """Generate the five KuaiSAR CSVs and synth_manifest.json with the latent story."""
    if preset not in PRESETS:
        raise QueryRecError(f"unknown preset '{preset}' (choose one of: {', '.join(PRESETS)})")
    world = _LatentWorld(SynthConfig(preset=PRESETS[preset], seed=seed), story or LatentStory())
    return generate(world, Path(out_dir), force=force)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


class _LatentWorld(_World):
    """The latent story; `_World`'s writers turn its arrays into the KuaiSAR files."""

    def __init__(self, config: SynthConfig, story: LatentStory) -> None:
        super().__init__(config)
        self.ls = story

    # ------------------------------------------------------------------ catalogue
    def build_catalogue(self) -> None:
        p, ls, rng = self.p, self.ls, self.rng
        n_topics = p.n_topics
        n_items = n_topics * (p.feed_items_per_topic + p.search_only_items_per_topic)
        self.n_items = n_items
        self.n_feed_items = round(n_items * (1 - ls.search_only_share))
        self.item_vec = _unit(rng.normal(size=(n_items, ls.dim)))  # (items, dim)
        centres = _unit(rng.normal(size=(n_topics, ls.dim)))
        self.item_topic = np.argmax(self.item_vec @ centres.T, axis=1)  # category read-out
        self.n_subtopics = 3
        sub_centres = _unit(rng.normal(size=(self.n_subtopics, ls.dim)))
        self.item_subtopic = np.argmax(self.item_vec @ sub_centres.T, axis=1)
        order = rng.permutation(n_items)  # popularity rank -> item
        self.item_pop = np.empty(n_items)
        self.item_pop[order] = np.diff(_zipf_cdf(n_items, ls.item_popularity_zipf), prepend=0.0)
        rank = np.empty(n_items)
        rank[order] = np.arange(n_items)
        self.item_pop_score = 1.0 - 2.0 * np.log1p(rank) / np.log1p(n_items)
        self.item_quality = rng.normal(0.0, ls.item_quality_std, n_items)
        self.item_raw_id = _distinct_ids(rng, n_items, 100_000, 1_000_000_000_000)
        self.item_type = np.where(rng.random(n_items) < 0.85, "VIDEO", "IMAGE_ATLAS").astype(object)
        self.item_type[self.n_feed_items :] = rng.choice(
            SEARCH_ONLY_ITEM_TYPES,
            size=n_items - self.n_feed_items,
            p=[0.45, 0.3, 0.15, 0.05, 0.05],
        )
        self.item_duration_ms = np.round(rng.lognormal(np.log(25_000), 0.7, n_items), -2)

        n_words = n_topics * p.words_per_topic + p.n_generic_words
        self.word_ids = _distinct_ids(rng, n_words, 1, max(50 * n_words, 1000))
        self.word_vec = _unit(rng.normal(size=(n_words, ls.dim)))  # (words, dim)
        word_freq = np.diff(_zipf_cdf(n_words, ls.word_frequency_zipf), prepend=0.0)
        self.word_log_freq = np.log(word_freq[rng.permutation(n_words)])
        lengths = rng.integers(3, 9, n_items)
        self.caption_words = self._words_near(self.item_vec, lengths, ls.caption_sharpness)
        self.caption_offsets = np.concatenate([[0], np.cumsum(lengths)])

        self.user_vec = _unit(rng.normal(size=(p.n_users, ls.dim)))
        self._build_user_profiles(ls.user_bias_std)

    def _words_near(
        self, direction: np.ndarray, lengths: np.ndarray, sharpness: float
    ) -> np.ndarray:
        """`lengths[i]` distinct word indices per row, drawn without replacement with
        weight frequency x exp(sharpness <direction[i], word>) (Gumbel top-k); the rows'
        words concatenated."""
        out = []
        for start in range(0, len(direction), _CHUNK):
            block = direction[start : start + _CHUNK]
            logits = sharpness * (block @ self.word_vec.T) + self.word_log_freq  # (rows, words)
            keys = logits - np.log(-np.log(self.rng.random(logits.shape)))
            top = np.argsort(-keys, axis=1)[:, : int(lengths.max(initial=1))]
            length = lengths[start : start + _CHUNK]
            keep = np.arange(top.shape[1])[None, :] < length[:, None]
            out.append(top[keep])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ intent
    def build_episodes(self) -> None:
        """Change points per user (the first before the log starts), each with a new
        random target direction and strength; sorted by (user, time)."""
        p, ls, rng = self.p, self.ls, self.rng
        span_h = (self.t1 - self.t0) / HOUR_MS
        counts = 1 + rng.poisson(span_h / ls.drift_mean_hours, p.n_users)
        user = np.repeat(np.arange(p.n_users), counts)
        start = self._active_times(self.t0, self.t1, len(user))
        first = _rank_within(counts) == 0
        start[first] = self.t0 - (rng.exponential(ls.drift_mean_hours, first.sum()) * HOUR_MS)
        order = np.lexsort((start, user))
        self.ep_user, self.ep_start = user[order], start[order].astype(np.int64)
        self.ep_key = self._time_key(self.ep_user, self.ep_start)
        self.ep_target = _unit(rng.normal(size=(len(user), ls.dim)))
        self.ep_first = _rank_within(counts) == 0
        self.ep_strength = rng.uniform(*ls.intent_strength_range, len(user))

    def _intent_at(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, dim) intent directions at the given times, moving from the previous
        target to the current one over `drift_hours`; and the change of each row."""
        ep = self._episode_at(users, times)
        prev = np.where(self.ep_first[ep], ep, ep - 1)
        mix = np.clip((times - self.ep_start[ep]) / (self.ls.drift_hours * HOUR_MS), 0.0, 1.0)
        direction = (1 - mix)[:, None] * self.ep_target[prev] + mix[:, None] * self.ep_target[ep]
        return _unit(direction), ep

    # ------------------------------------------------------------------ search
    def build_search_sessions(self) -> None:
        p, ls, rng = self.p, self.ls, self.rng
        n_total = rng.poisson(p.search_sessions_per_user * self.search_propensity)
        n_after = rng.binomial(n_total, ls.searches_after_change_share)
        n_other = n_total - n_after
        # After a change: a random change inside the log of the user, then a delay.
        in_log = np.flatnonzero(self.ep_start >= self.t0)
        a_user = np.repeat(np.arange(p.n_users), n_after)
        changes_per_user = np.bincount(self.ep_user[in_log], minlength=p.n_users)
        first_change = np.searchsorted(self.ep_user[in_log], np.arange(p.n_users))
        has = changes_per_user[a_user] > 0
        pick = first_change[a_user] + (rng.random(len(a_user)) * changes_per_user[a_user]).astype(
            np.int64
        )
        a_time = np.where(
            has,
            self.ep_start[in_log[np.minimum(pick, len(in_log) - 1)]]
            + (rng.exponential(ls.search_delay_hours, len(a_user)) * HOUR_MS).astype(np.int64),
            self._active_times(self.t0, self.t1, len(a_user)),
        )
        o_user = np.repeat(np.arange(p.n_users), n_other)
        o_time = self._active_times(self.t0, self.t1, len(o_user))
        user = np.concatenate([a_user, o_user])
        time = np.concatenate([a_time, o_time]).astype(np.int64)
        keep = time < self.t1
        user, time = user[keep], time[keep]
        order = np.lexsort((time, user))
        self.ss_user, self.ss_time = user[order], time[order]
        self.ss_id = _rank_within(np.bincount(self.ss_user, minlength=p.n_users)) + 1
        n_ss = len(self.ss_user)

        intent, _ = self._intent_at(self.ss_user, self.ss_time)
        about_intent = rng.random(n_ss) < ls.intent_query_share
        # Sessions drawn after a change are about the new intent; the other sessions are
        # about the intent with probability `intent_query_share`, else about the taste.
        after = np.concatenate([has, np.zeros(len(o_user), dtype=bool)])[keep][order]
        about_intent |= after  # searches right after a change are about the new intent
        self.ss_direction = np.where(about_intent[:, None], intent, self.user_vec[self.ss_user])
        q_len = rng.choice([1, 2, 3, 4], size=n_ss, p=[0.3, 0.4, 0.2, 0.1])
        q_index = self._words_near(self.ss_direction, q_len, ls.query_sharpness)
        self.q_offsets = np.concatenate([[0], np.cumsum(q_len)])
        self.q_words = self.word_ids[q_index]
        n_shown = np.clip(1 + rng.poisson(p.shown_per_session - 1, n_ss), 1, 60)
        self.sr_owner, self.sr_item = self._engine(q_index, q_len, n_shown)
        self.sr_click = self._search_clicks(n_shown)

    def _engine(
        self, q_index: np.ndarray, q_len: np.ndarray, n_shown: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(session of each row, item of each row), rows in display order: the items whose
        captions share the most query words, popularity and noise breaking ties, topped up
        with popular items where fewer match."""
        ls, rng = self.ls, self.rng
        n_ss, n_items, n_words = len(q_len), self.n_items, len(self.word_ids)
        q_owner = np.repeat(np.arange(n_ss), q_len)
        queries = sp.csr_matrix((np.ones(len(q_index)), (q_owner, q_index)), shape=(n_ss, n_words))
        c_owner = np.repeat(np.arange(n_items), np.diff(self.caption_offsets))
        captions = sp.csr_matrix(
            (np.ones(len(c_owner)), (self.caption_words, c_owner)), shape=(n_words, n_items)
        )
        owners, items, scores = [], [], []
        for start in range(0, n_ss, _CHUNK):
            overlap = (queries[start : start + _CHUNK] @ captions).tocoo()
            score = (
                overlap.data
                + ls.engine_popularity_weight * self.item_pop_score[overlap.col]
                - ls.engine_noise * np.log(-np.log(rng.random(len(overlap.data))))
            )
            # Only each session's n_shown best matches can be shown (a fill item always
            # ranks below any match): keep those before the global sort, which would
            # otherwise sort every caption that shares a frequent word with the query.
            # One float key orders by session, then by descending score (|score| < 50).
            order = np.argsort(overlap.row * 100.0 - score)
            row = overlap.row[order]
            rank = np.arange(len(row)) - np.searchsorted(row, row)
            best = order[rank < n_shown[start + row]]
            owners.append(overlap.row[best] + start)
            items.append(overlap.col[best])
            scores.append(score[best])
        # Fill: popular items at a score below any match, so they come last.
        fill_owner = np.repeat(np.arange(n_ss), n_shown)
        fill_item = _draw(self._feed_item_cdf(), rng, len(fill_owner))
        owner = np.concatenate([*owners, fill_owner])
        item = np.concatenate([*items, fill_item])
        score = np.concatenate([*scores, -10.0 - rng.random(len(fill_owner))])
        # One row per (session, item), the best score; then the top n_shown per session.
        order = np.lexsort((-score, item, owner))
        first = np.ones(len(order), dtype=bool)
        first[1:] = (owner[order][1:] != owner[order][:-1]) | (item[order][1:] != item[order][:-1])
        owner, item, score = owner[order][first], item[order][first], score[order][first]
        order = np.lexsort((-score, owner))
        owner, item = owner[order], item[order]
        rank = _rank_within(np.bincount(owner, minlength=n_ss))
        keep = rank < n_shown[owner]
        return owner[keep], item[keep]

    def _search_clicks(self, n_shown: np.ndarray) -> np.ndarray:
        """(rows,) clicks: similarity of the item to the session's direction through a
        sigmoid, times the examination probability of its position."""
        ls = self.ls
        owner = self.sr_owner
        position = _rank_within(np.bincount(owner, minlength=len(n_shown)))
        match = np.einsum("rd,rd->r", self.ss_direction[owner], self.item_vec[self.sr_item])
        p_click = 1.0 / (1.0 + np.exp(-(ls.search_click_weight * match + ls.search_click_bias)))
        p_examined = (1.0 + position) ** -ls.examination_decay
        return self.rng.random(len(owner)) < p_click * p_examined

    def _feed_item_cdf(self) -> np.ndarray:
        """Cumulative exposure weights of the feed items (popular candidates and fill)."""
        cdf = np.cumsum(self.item_pop[: self.n_feed_items])
        return cdf / cdf[-1]

    # ------------------------------------------------------------------ feed
    def build_feed(self) -> None:
        ls = self.ls
        user, time = self._feed_rows()
        lagged, _ = self._intent_at(user, time - int(ls.feed_lag_hours * HOUR_MS))
        item = self._lagged_feed_items(user, lagged)
        intent, ep = self._intent_at(user, time)
        taste = np.einsum("rd,rd->r", self.user_vec[user], self.item_vec[item])
        pull = np.einsum("rd,rd->r", intent, self.item_vec[item])
        without_intent = (
            self.user_bias[user]
            + ls.click_weight_taste * taste
            + ls.click_weight_popularity * self.item_pop_score[item]
            + self.item_quality[item]
        )
        logit = without_intent + ls.click_weight_intent * self.ep_strength[ep] * pull
        prob = 1.0 / (1.0 + np.exp(-(logit + _solve_intercept(logit, 0.5))))
        click = self.rng.random(len(user)) < prob
        order = np.lexsort((np.arange(len(user)), time, user))
        self.fd_user, self.fd_time, self.fd_item = user[order], time[order], item[order]
        self.fd_click, self.fd_prob = click[order], prob[order]
        self.fd_prob_without_intent = (
            1.0 / (1.0 + np.exp(-(without_intent + _solve_intercept(without_intent, 0.5))))
        )[order]
        self.fd_is_intent = (pull > 0.5)[order]

    def _lagged_feed_items(self, user: np.ndarray, lagged: np.ndarray) -> np.ndarray:
        """(rows,) feed items: among `feed_candidates` popular candidates, the best by
        taste and lagged intent plus Gumbel noise."""
        ls, rng = self.ls, self.rng
        cdf = self._feed_item_cdf()
        out = np.empty(len(user), dtype=np.int64)
        for start in range(0, len(user), _CHUNK):
            rows = slice(start, start + _CHUNK)
            n = len(user[rows])
            cand = _draw(cdf, rng, n * ls.feed_candidates).reshape(n, ls.feed_candidates)
            vec = self.item_vec[cand]  # (n, C, dim)
            score = ls.feed_taste_weight * np.einsum(
                "nd,ncd->nc", self.user_vec[user[rows]], vec
            ) + ls.feed_lagged_intent_weight * np.einsum("nd,ncd->nc", lagged[rows], vec)
            score -= np.log(-np.log(rng.random(score.shape)))
            out[rows] = cand[np.arange(n), np.argmax(score, axis=1)]
        return out

    # ------------------------------------------------------------------ writing
    def _item_captions(self, items: np.ndarray) -> pl.Series:
        lengths = np.diff(self.caption_offsets)[items]
        starts = self.caption_offsets[items]
        index = np.repeat(starts, lengths) + _rank_within(lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return _token_strings(offsets, self.word_ids[self.caption_words[index]])

    def manifest(self, *, rec_rows: int, src_rows: int, item_rows: int) -> dict[str, object]:
        manifest = super().manifest(rec_rows=rec_rows, src_rows=src_rows, item_rows=item_rows)
        manifest["generator"] = "queryrec.data.synth_latent"
        manifest["story"] = asdict(self.ls)
        return manifest
