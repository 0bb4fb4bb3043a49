"""A generator of KuaiSAR-format logs with the phenomena QueryRec exploits planted in them.

The real KuaiSAR archive cannot be downloaded here, so every offline result is measured on
files this module writes: the five CSVs with the released headers, column order and value
formats (see `kuaisar.py` and shared/docs/KUAISAR.md), deterministic for a seed.

Generative story (all knobs in `Story`; sizes in `SynthPreset`)
----------------------------------------------------------------
* **Topics.** `n_topics` topics, grouped into first-level categories (Chinese and English
  names); the topic is the second-level category, a per-topic subtopic the third level
  (missing, id 0 / 空 / empty, for a share of items) and the fourth level is mostly
  missing, as in the real file. Topics differ in popularity (Zipf over topics).
* **Words and captions.** Each topic owns a set of hashed word ids; a few thousand generic
  words are shared by all. An item's caption is 2-4 words of its topic plus 1-4 generic
  words. Queries are 1-3 words of the topic searched for, sometimes plus a generic one, so
  **query words are shared with the captions of the items they are about**.
* **Items and popularity skew.** Every topic has a pool of feed items (VIDEO or
  IMAGE_ATLAS) and of search-only items (USER, LIVE, COMMODITY, MUSIC, ADVERT). Exposure
  within a topic follows a Zipf law over item rank, and popular items are slightly more
  clickable (plus an item-level quality term), so item ids carry signal.
* **Long-term taste.** Each user likes 2-5 topics with Dirichlet weights; the feed serves
  mostly those topics, and they raise the click probability.
* **Current intent that jumps.** A user's timeline is cut into intent episodes (Poisson
  change points, mean `episode_mean_hours`); each episode has an intent topic, drawn with
  probability `outside_taste_prob` from all topics by popularity (usually **outside the
  long-term taste**) and otherwise from the taste. Items of the intent topic are much more
  likely to be clicked while the episode lasts.
* **Searches reveal the new intent first.** Right after an episode starts the user
  searches for its topic (Poisson count, exponential delay of a few hours), while the feed
  recommender only slowly learns the new intent: the share of intent-topic items in the
  feed ramps from `feed_intent_share_start` to `feed_intent_share_end` over two days. So the
  query history shows the shift before the feed click history does. Background searches
  about taste topics (and the current intent) happen at random times.
* **Click-less searches that still carry signal.** About 40 % of search sessions have no
  click (`session_click_prob`); their shown items are nevertheless mostly items of the
  searched topic. Clicked sessions click 1-3 on-topic items, favouring top positions.
  Optional long-tail phrasing (`--tail-query-share`, off by default): a share of sessions
  worded in topic words that no caption or other query has, which mostly go unclicked.
* **Daily rhythm.** Feed sittings, searches and intent jumps follow a Beijing-time daily
  activity curve (quiet from 2 to 6 am, busiest in the evening).
* **Feed labels near 1:1.** The feed serves batches of items with one shared timestamp
  (ties), and the click model's intercept is solved so that the overall click rate is
  `target_click_rate` (0.5).

Real-format details reproduced: float Unix-ms `timestamp` and integer
`search_session_timestamp`; Beijing-time strings; JSON-list `keyword` and `caption`; large
random item ids; per-user `search_session_id`; `author_id` 0 and `upload_time` 1970-01-01
for missing values; category id 0 with 空 / empty; `music_id`; a share of items that appear
in the logs but have no row in item_features.csv (as in real logs); a small follow graph.

Besides the CSVs, `synth_manifest.json` records the preset, seed, row counts and the AUC
that the true click probabilities reach (the ceiling any model can approach), with and
without the intent term: the size of the effect that only the query history reveals early.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from queryrec.data.kuaisar import (
    BEIJING_OFFSET_MS,
    CATEGORY_LEVELS,
    ITEM_FEATURES,
    REC_INTER,
    SEARCH_ONLY_ITEM_TYPES,
    SOCIAL_NETWORK,
    SRC_INTER,
    USER_FEATURES,
)
from queryrec.errors import QueryRecError
from queryrec.outputs import atomic_output_dir
from queryrec.progress import step

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# 2023-05-22 14:50 Beijing time, the start of the KuaiSAR-small release.
KUAISAR_SMALL_START_MS = 1_684_738_200_000


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of a generated dataset."""

    name: str
    n_users: int
    n_topics: int
    feed_items_per_topic: int
    search_only_items_per_topic: int
    words_per_topic: int
    n_generic_words: int
    authors_per_topic: int
    feed_rows_per_user: float  # mean rows of rec_inter.csv per user
    search_sessions_per_user: float  # mean search sessions per user
    shown_per_session: float  # mean rows of src_inter.csv per session
    days: float = 9.0
    start_ms: int = KUAISAR_SMALL_START_MS


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        name="tiny",
        n_users=150,
        n_topics=12,
        feed_items_per_topic=120,
        search_only_items_per_topic=15,
        words_per_topic=15,
        n_generic_words=60,
        authors_per_topic=10,
        feed_rows_per_user=70,
        search_sessions_per_user=8,
        shown_per_session=8,
        days=4.0,
    ),
    "small": SynthPreset(
        name="small",
        n_users=2_500,
        n_topics=40,
        feed_items_per_topic=1_500,
        search_only_items_per_topic=150,
        words_per_topic=30,
        n_generic_words=400,
        authors_per_topic=80,
        feed_rows_per_user=120,
        search_sessions_per_user=10.3,
        shown_per_session=11.85,
    ),
    # The real KuaiSAR-small release: 25,877 users, 7,493,101 feed rows, 267,608 search
    # sessions over 3,171,231 search rows, nine days.
    "kuaisar-small": SynthPreset(
        name="kuaisar-small",
        n_users=25_877,
        n_topics=200,
        feed_items_per_topic=60_000,
        search_only_items_per_topic=5_000,
        words_per_topic=150,
        n_generic_words=3_000,
        authors_per_topic=600,
        feed_rows_per_user=289.6,
        search_sessions_per_user=10.34,
        shown_per_session=11.85,
    ),
}


@dataclass(frozen=True)
class Story:
    """The planted behaviour; see the module docstring for what each part means."""

    taste_topics_min: int = 2
    taste_topics_max: int = 5
    topic_popularity_zipf: float = 0.8  # exponent of topic popularity over topic rank
    item_popularity_zipf: float = 1.05  # exponent of exposure over item rank in a topic
    episode_mean_hours: float = 48.0
    outside_taste_prob: float = 0.65
    intent_strength_range: tuple[float, float] = (0.6, 1.4)
    intent_searches_per_episode: float = 1.0  # times the user's search propensity
    intent_search_delay_hours: float = 2.0  # mean delay of intent searches after a jump
    background_search_share: float = 0.15  # of a user's sessions, not tied to a jump
    background_search_on_intent: float = 0.4  # background searches about the current intent
    session_click_prob_intent: float = 0.63
    session_click_prob_background: float = 0.53
    # Long-tail phrasing (off by default): this share of search sessions is phrased in
    # words of its topic that no caption and no other query uses, and such a session keeps
    # its clicks only with probability `tail_click_keep` (the engine serves rare phrasing
    # worse). Their words then occur almost only in click-less queries: the case the
    # diffusion pseudo-positives are for (docs/RESULTS.md).
    tail_query_share: float = 0.0
    tail_click_keep: float = 0.1
    tail_words_per_topic: int = 6
    search_on_topic_share: float = 0.75  # shown items of the searched topic
    search_keyword_match_share: float = 0.7  # of those, items whose caption has the key word
    subtopic_word_share: float = 0.7  # query / caption topic words from the subtopic's words
    search_only_share: float = 0.12  # shown items that are USER, LIVE, ...
    feed_taste_share: float = 0.55
    feed_intent_share_start: float = 0.05
    feed_intent_share_end: float = 0.20
    feed_intent_ramp_hours: float = 48.0
    click_weight_taste: float = 2.5  # times the taste weight of the item's topic (0..1)
    click_weight_intent: float = 2.4  # times the episode's intent strength
    click_weight_popularity: float = 0.35
    item_quality_std: float = 0.5
    user_bias_std: float = 0.5
    target_click_rate: float = 0.5
    missing_item_features_share: float = 0.003
    follow_user_share: float = 0.022


@dataclass(frozen=True)
class SynthConfig:
    """What `queryrec data synth` generates."""

    preset: SynthPreset
    seed: int = 0
    story: Story = field(default_factory=Story)


# First-level categories (Chinese name, English name) and second-level suffixes.
_FIRST_LEVEL = [
    ("搞笑", "Funny"),
    ("美食", "Food"),
    ("游戏", "Games"),
    ("音乐", "Music"),
    ("体育", "Sports"),
    ("影视", "Film and TV"),
    ("舞蹈", "Dance"),
    ("旅行", "Travel"),
    ("汽车", "Cars"),
    ("科技", "Technology"),
    ("时尚", "Fashion"),
    ("萌宠", "Pets"),
    ("母婴", "Parenting"),
    ("教育", "Education"),
    ("健身", "Fitness"),
    ("二次元", "Anime"),
    ("情感", "Relationships"),
    ("三农", "Rural life"),
    ("财经", "Finance"),
    ("摄影", "Photography"),
]
_SECOND_SUFFIX = [
    ("段子", "jokes"),
    ("日常", "daily"),
    ("教程", "tutorials"),
    ("合集", "collections"),
    ("解说", "commentary"),
    ("精选", "picks"),
    ("挑战", "challenges"),
    ("资讯", "news"),
    ("测评", "reviews"),
    ("现场", "live shows"),
]
_THIRD_SUFFIX = [("入门", "basics"), ("进阶", "advanced"), ("热门", "trending")]
_FOURTH = [("其他", "other"), ("原创", "original")]
_EMPTY_CN, _EMPTY_EN = "空", "empty"
# Relative activity per Beijing hour 0-23: quiet at night, busiest in the evening.
_HOURLY_ACTIVITY = np.array(
    [0.6, 0.4, 0.25, 0.15, 0.1, 0.1, 0.2, 0.4, 0.6, 0.7, 0.75, 0.8,
     0.95, 0.9, 0.8, 0.8, 0.8, 0.85, 0.9, 1.0, 1.0, 1.0, 0.95, 0.8]
)  # fmt: skip
_SEARCH_SOURCES = ["USER_INPUT", "HISTORY", "RECOMMEND_QUERY", "SUGGESTION", "TRENDING"]
_SEARCH_SOURCE_WEIGHTS = [0.62, 0.14, 0.1, 0.1, 0.04]
_UPLOAD_TYPES = ["ShortImport", "LongImport", "Web", "PictureSet", "ShortCamera"]
_UPLOAD_TYPE_WEIGHTS = [0.45, 0.2, 0.1, 0.1, 0.15]


def run_synth(out_dir: Path, config: SynthConfig, *, force: bool = False) -> dict[str, object]:
    """Generate the five KuaiSAR CSVs (and synth_manifest.json) into `out_dir`; -> the
    manifest."""
    return generate(_World(config), Path(out_dir), force=force)


def generate(world: _World, out_dir: Path, *, force: bool) -> dict[str, object]:
    """Build a world in its stages and write its five CSVs and synth_manifest.json into
    `out_dir`; -> the manifest.

    Writes into a temporary sibling folder and renames it at the end, so a failure never
    leaves a half-written dataset.
    """
    cfg = world.cfg
    with step("synth", f"users and catalogue ({cfg.preset.name}, seed {cfg.seed})"):
        world.build_catalogue()
    with step("synth", "intents and search sessions"):
        world.build_episodes()
        world.build_search_sessions()
    with step("synth", "feed impressions and clicks"):
        world.build_feed()
    with atomic_output_dir(out_dir, force=force) as tmp:
        with step("synth", f"writing {SRC_INTER.name}"):
            src_rows = world.write_src_inter(tmp)
        with step("synth", f"writing {REC_INTER.name}"):
            rec_rows = world.write_rec_inter(tmp)
        with step("synth", f"writing {USER_FEATURES.name}, {SOCIAL_NETWORK.name}"):
            world.write_users(tmp)
        with step("synth", f"writing {ITEM_FEATURES.name}"):
            item_rows = world.write_item_features(tmp)
        manifest = world.manifest(rec_rows=rec_rows, src_rows=src_rows, item_rows=item_rows)
        (tmp / "synth_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def preset_config(preset: str, seed: int, tail_query_share: float = 0.0) -> SynthConfig:
    """The config for a named preset; a clear error for an unknown name or a bad share."""
    if preset not in PRESETS:
        raise QueryRecError(f"unknown preset '{preset}' (choose one of: {', '.join(PRESETS)})")
    if not 0.0 <= tail_query_share <= 1.0:
        raise QueryRecError(f"--tail-query-share must be in [0, 1], got {tail_query_share}")
    story = Story(tail_query_share=tail_query_share)
    return SynthConfig(preset=PRESETS[preset], seed=seed, story=story)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Indices drawn from the distribution with cumulative weights `cdf`."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _rank_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for every group of the given sizes, concatenated."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _distinct_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """`n` distinct random integers in [low, high), in random order."""
    ids = np.unique(rng.integers(low, high, size=int(n * 1.05) + 16))
    while len(ids) < n:  # pragma: no cover - only with a tiny range
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, size=n)]))
    return rng.permutation(ids)[:n]


def _beijing_strings(millis: pl.Expr, fmt: str) -> pl.Expr:
    return pl.from_epoch(millis + BEIJING_OFFSET_MS, time_unit="ms").dt.strftime(fmt)


def _token_strings(offsets: np.ndarray, tokens: np.ndarray) -> pl.Series:
    """'[a, b, c]' strings for the token lists tokens[offsets[i]:offsets[i+1]]."""
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    frame = pl.DataFrame({"owner": owner, "token": tokens.astype(np.int64)})
    joined = frame.group_by("owner", maintain_order=True).agg(
        pl.col("token").cast(pl.String).str.join(", ")
    )
    text = np.full(len(lengths), "[]", dtype=object)
    text[joined["owner"].to_numpy()] = ("[" + joined["token"] + "]").to_numpy()
    return pl.Series(text.tolist(), dtype=pl.String)


class _World:
    """The generated world; built in stages, each vectorised over all users or rows."""

    def __init__(self, config: SynthConfig) -> None:
        self.cfg = config
        self.p = config.preset
        self.s = config.story
        self.rng = np.random.default_rng(np.random.PCG64(config.seed))
        self.t0 = self.p.start_ms
        self.t1 = self.p.start_ms + int(self.p.days * DAY_MS)

    # ------------------------------------------------------------------ catalogue
    def build_catalogue(self) -> None:
        """Topics and words, items, users: in this order, as each draws from `self.rng`."""
        self._build_topics_and_words()
        self._build_items()
        self._build_users()

    def _build_topics_and_words(self) -> None:
        """Topic popularity (Zipf over a random topic order) and the word ids: topic words
        first, then generic words, with their Zipf laws."""
        p, s, rng = self.p, self.s, self.rng
        n_topics = p.n_topics
        self.topic_cdf = _zipf_cdf(n_topics, s.topic_popularity_zipf)
        self.topic_order = rng.permutation(n_topics)  # topic popularity rank -> topic
        self.topic_pop = np.empty(n_topics)
        self.topic_pop[self.topic_order] = np.diff(self.topic_cdf, prepend=0.0)

        # Words: topic words first, then generic words; ids are random hashes.
        n_words = n_topics * p.words_per_topic + p.n_generic_words
        self.word_ids = _distinct_ids(rng, n_words, 1, max(50 * n_words, 1000))
        self.word_cdf = _zipf_cdf(p.words_per_topic, 0.9)
        self.n_subtopics = len(_THIRD_SUFFIX)
        self.sub_words = p.words_per_topic // self.n_subtopics
        self.subtopic_word_cdf = _zipf_cdf(self.sub_words, 0.9)
        self.generic_cdf = _zipf_cdf(p.n_generic_words, 1.0)

    def _build_items(self) -> None:
        """Every topic's feed and search-only items: popularity rank, raw id, popularity
        score and quality, type, duration, subtopic and key word."""
        p, s, rng = self.p, self.s, self.rng
        n_topics = p.n_topics
        # Items: topic t owns feed items [t*F, (t+1)*F) (rank = position in the pool) and
        # search-only items after all feed items.
        f, o = p.feed_items_per_topic, p.search_only_items_per_topic
        self.n_feed_items = n_topics * f
        self.n_items = self.n_feed_items + n_topics * o
        self.item_cdf = _zipf_cdf(f, s.item_popularity_zipf)
        self.search_only_cdf = _zipf_cdf(o, s.item_popularity_zipf)
        topic_of_feed = np.repeat(np.arange(n_topics), f)
        topic_of_search_only = np.repeat(np.arange(n_topics), o)
        self.item_topic = np.concatenate([topic_of_feed, topic_of_search_only])
        rank = np.concatenate([np.tile(np.arange(f), n_topics), np.tile(np.arange(o), n_topics)])
        self.item_rank = rank
        self.item_raw_id = _distinct_ids(rng, self.n_items, 100_000, 1_000_000_000_000)
        # Exposure popularity as a click feature: log-rank scaled to about [-1, 1].
        self.item_pop_score = 1.0 - 2.0 * np.log1p(rank) / np.log1p(max(f, o))
        self.item_quality = rng.normal(0.0, s.item_quality_std, self.n_items)
        self.item_type = np.where(rng.random(self.n_items) < 0.85, "VIDEO", "IMAGE_ATLAS").astype(
            object
        )
        self.item_type[self.n_feed_items :] = rng.choice(
            SEARCH_ONLY_ITEM_TYPES, size=n_topics * o, p=[0.45, 0.3, 0.15, 0.05, 0.05]
        )
        self.item_duration_ms = np.round(rng.lognormal(np.log(25_000), 0.7, self.n_items), -2)
        # Subtopics interleave over rank, so every subtopic has popular and rare items; so
        # do the subtopic's key words: every item has one key word, always in its caption.
        self.item_subtopic = rank % self.n_subtopics
        self.item_keyword = (rank // self.n_subtopics) % self.sub_words

    def _build_users(self) -> None:
        """Users: taste over topics (Gumbel top-k by popularity, Dirichlet weights),
        activity and search propensity, profile features, click bias and raw ids."""
        p, s, rng = self.p, self.s, self.rng
        n_topics = p.n_topics
        n = p.n_users
        k = rng.integers(s.taste_topics_min, s.taste_topics_max + 1, n)
        gumbel = np.log(self.topic_pop)[None, :] - np.log(-np.log(rng.random((n, n_topics))))
        top = np.argsort(-gumbel, axis=1)[:, : s.taste_topics_max]
        weights = rng.gamma(1.0, 1.0, (n, s.taste_topics_max))
        weights[np.arange(s.taste_topics_max)[None, :] >= k[:, None]] = 0.0
        weights /= weights.sum(axis=1, keepdims=True)
        self.taste = np.zeros((n, n_topics), dtype=np.float64)
        np.put_along_axis(self.taste, top, weights, axis=1)
        # Sparse form for sampling: each user's few taste topics and their cumulative weights.
        self.taste_top = top  # (n_users, taste_topics_max)
        self.taste_top_cdf = np.cumsum(weights, axis=1)
        self._build_user_profiles(s.user_bias_std)

    def _build_user_profiles(self, user_bias_std: float) -> None:
        """Activity, search propensity, the two one-hot features, a click bias (which
        the second one-hot feature shifts) and the raw ids of every user."""
        rng, n = self.rng, self.p.n_users
        self.activity = rng.lognormal(0.0, 0.8, n)
        self.activity /= self.activity.mean()
        self.search_propensity = rng.lognormal(0.0, 0.6, n)
        self.search_propensity /= self.search_propensity.mean()
        self.onehot_feat1 = rng.integers(0, 3, n)
        self.onehot_feat2 = rng.integers(0, 8, n)
        self.user_bias = rng.normal(0.0, user_bias_std, n) + 0.12 * (self.onehot_feat2 - 3.5)
        self.user_raw_id = rng.permutation(n) + 1

    def _taste_topics(self, users: np.ndarray) -> np.ndarray:
        u = self.rng.random(len(users))
        slot = (self.taste_top_cdf[users] < u[:, None]).sum(axis=1)
        return self.taste_top[users, np.minimum(slot, self.s.taste_topics_max - 1)]

    def _popular_topics(self, size: int) -> np.ndarray:
        return self.topic_order[_draw(self.topic_cdf, self.rng, size)]

    def _topic_words(self, topics: np.ndarray, subtopics: np.ndarray) -> np.ndarray:
        """One word per element: mostly from the subtopic's words, else from the topic's."""
        p, rng = self.p, self.rng
        n = len(topics)
        in_sub = subtopics * self.sub_words + _draw(self.subtopic_word_cdf, rng, n)
        in_topic = _draw(self.word_cdf, rng, n)
        local = np.where(rng.random(n) < self.s.subtopic_word_share, in_sub, in_topic)
        return topics * p.words_per_topic + local

    def _items_of(
        self,
        topics: np.ndarray,
        subtopics: np.ndarray | None = None,
        keywords: np.ndarray | None = None,
    ) -> np.ndarray:
        """Feed items drawn by popularity within each topic (and subtopic and key word)."""
        f = self.p.feed_items_per_topic
        rank = _draw(self.item_cdf, self.rng, len(topics))
        if subtopics is not None and keywords is not None:
            # Ranks r with r % n_sub == subtopic and (r // n_sub) % sub_words == keyword.
            block = self.n_subtopics * self.sub_words
            rank = rank - rank % block + subtopics + self.n_subtopics * keywords
            rank = np.where(rank >= f, rank - block, rank)
        return topics * f + rank

    def _active_times(self, low: int, high: int, size: int) -> np.ndarray:
        """Unix-ms times in [low, high) that follow the daily rhythm (Beijing hours)."""
        accept_prob = _HOURLY_ACTIVITY / _HOURLY_ACTIVITY.max()
        times = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while len(todo):
            draw = self.rng.integers(low, high, len(todo))
            hour = (draw + BEIJING_OFFSET_MS) // HOUR_MS % 24
            keep = self.rng.random(len(todo)) < accept_prob[hour]
            times[todo[keep]] = draw[keep]
            todo = todo[~keep]
        return times

    def _time_key(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """A sortable (user, time) key; times may start up to 60 days before t0."""
        span = 200 * DAY_MS
        return users.astype(np.int64) * span + (times - self.t0 + 60 * DAY_MS)

    # ------------------------------------------------------------------ episodes
    def build_episodes(self) -> None:
        p, s, rng = self.p, self.s, self.rng
        span_h = (self.t1 - self.t0) / HOUR_MS
        counts = 1 + rng.poisson(span_h / s.episode_mean_hours, p.n_users)
        user = np.repeat(np.arange(p.n_users), counts)
        first = _rank_within(counts) == 0
        start = self._active_times(self.t0, self.t1, len(user))
        # The first episode is already under way when the log starts.
        start[first] = self.t0 - (rng.exponential(s.episode_mean_hours, first.sum()) * HOUR_MS)
        order = np.lexsort((start, user))
        self.ep_user, self.ep_start = user[order], start[order].astype(np.int64)
        self.ep_key = self._time_key(self.ep_user, self.ep_start)
        n_ep = len(self.ep_user)
        outside = rng.random(n_ep) < s.outside_taste_prob
        topic = self._taste_topics(self.ep_user)
        topic[outside] = self._popular_topics(int(outside.sum()))
        self.ep_topic = topic
        self.ep_strength = rng.uniform(*s.intent_strength_range, n_ep)

    def _episode_at(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ep_key, self._time_key(users, times), side="right") - 1

    # ------------------------------------------------------------------ search
    def build_search_sessions(self) -> None:
        """Search sessions (intent-triggered and background), their queries, shown items
        and clicks; the steps draw from `self.rng` in this order, so a seed gives the same
        sessions."""
        i_user, i_time, i_topic = self._intent_searches()
        b_user, b_time, b_topic, b_intent = self._background_searches(i_user)
        self._order_sessions(
            np.concatenate([i_user, b_user]),
            np.concatenate([i_time, b_time]).astype(np.int64),
            np.concatenate([i_topic, b_topic]),
            np.concatenate([np.ones(len(i_user), dtype=bool), b_intent]),
        )
        self._draw_queries()
        n_shown, r_owner, on_topic, r_item = self._draw_shown_items()
        click = self._draw_search_clicks(n_shown, r_owner, on_topic)
        self.sr_owner, self.sr_item, self.sr_click = r_owner, r_item, click
        if self.s.tail_query_share > 0:
            self._rephrase_tail_queries()

    def _intent_searches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Searches that intent jumps inside the log trigger (the first episode began
        before it): a Poisson count per episode, each an exponential delay after the jump,
        about the episode's topic; -> (user, time, topic) of those inside the log."""
        p, s, rng = self.p, self.s, self.rng
        n_ep = len(self.ep_user)
        in_log = self.ep_start >= self.t0
        intent_total = p.search_sessions_per_user * (1 - s.background_search_share)
        lam_intent = intent_total * p.n_users / max(int(in_log.sum()), 1)
        n_intent = rng.poisson(lam_intent * self.search_propensity[self.ep_user] * in_log)
        i_ep = np.repeat(np.arange(n_ep), n_intent)
        i_time = self.ep_start[i_ep] + (
            rng.exponential(s.intent_search_delay_hours, len(i_ep)) * HOUR_MS
        ).astype(np.int64)
        i_user, i_topic = self.ep_user[i_ep], self.ep_topic[i_ep]
        keep = (i_time >= self.t0) & (i_time < self.t1)
        return i_user[keep], i_time[keep], i_topic[keep]

    def _background_searches(
        self, i_user: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Background searches at daily-rhythm times about a taste topic, a share of them
        about the current intent; every user without an intent search (`i_user`) gets at
        least one (S&R users); -> (user, time, topic, about the intent)."""
        p, s, rng = self.p, self.s, self.rng
        lam_bg = p.search_sessions_per_user * s.background_search_share
        n_bg = rng.poisson(lam_bg * self.search_propensity)
        n_bg[(n_bg == 0) & (np.bincount(i_user, minlength=p.n_users) == 0)] = 1  # S&R users
        b_user = np.repeat(np.arange(p.n_users), n_bg)
        b_time = self._active_times(self.t0, self.t1, len(b_user))
        b_topic = self._taste_topics(b_user)
        on_intent = rng.random(len(b_user)) < s.background_search_on_intent
        b_topic[on_intent] = self.ep_topic[self._episode_at(b_user, b_time)][on_intent]
        return b_user, b_time, b_topic, on_intent

    def _order_sessions(
        self, user: np.ndarray, time: np.ndarray, topic: np.ndarray, about_intent: np.ndarray
    ) -> None:
        """Store the sessions sorted by (user, time), with per-user session ids from 1."""
        order = np.lexsort((time, user))
        self.ss_user, self.ss_time = user[order], time[order]
        self.ss_topic, self.ss_about_intent = topic[order], about_intent[order]
        self.ss_id = _rank_within(np.bincount(self.ss_user, minlength=self.p.n_users)) + 1

    def _draw_queries(self) -> None:
        """Each session's query: 1-3 words of the topic, the first the key word of the
        subtopic searched for, sometimes one generic word (CSR `q_offsets` / `q_words`)."""
        p, rng = self.p, self.rng
        n_ss = len(self.ss_user)
        n_topic_words = rng.choice([1, 2, 3], size=n_ss, p=[0.35, 0.45, 0.2])
        n_generic = (rng.random(n_ss) < 0.3).astype(np.int64)
        q_len = n_topic_words + n_generic
        self.q_offsets = np.concatenate([[0], np.cumsum(q_len)])
        owner = np.repeat(np.arange(n_ss), q_len)
        is_generic = _rank_within(q_len) >= np.repeat(n_topic_words, q_len)
        self.ss_subtopic = rng.integers(0, self.n_subtopics, n_ss)
        self.ss_keyword = _draw(self.subtopic_word_cdf, rng, n_ss)
        topic_word = self._topic_words(self.ss_topic[owner], self.ss_subtopic[owner])
        # The first word of a query is the key word of the subtopic searched for.
        first = _rank_within(q_len) == 0
        topic_word[first] = (
            self.ss_topic * p.words_per_topic + self.ss_subtopic * self.sub_words + self.ss_keyword
        )
        generic_word = p.n_topics * p.words_per_topic + _draw(self.generic_cdf, rng, len(owner))
        self.q_words = self.word_ids[np.where(is_generic, generic_word, topic_word)]

    def _draw_shown_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each session's shown items: mostly on-topic feed items (favouring those whose
        caption holds the query's key word), some search-only types, some off-topic;
        -> (shown count per session, session of each row, row is an on-topic feed item,
        item of each row)."""
        p, s, rng = self.p, self.s, self.rng
        n_ss = len(self.ss_user)
        n_shown = np.clip(1 + rng.poisson(p.shown_per_session - 1, n_ss), 1, 60)
        r_owner = np.repeat(np.arange(n_ss), n_shown)
        n_rows = len(r_owner)
        kind = rng.random(n_rows)
        on_topic = kind < s.search_on_topic_share
        search_only = (kind >= s.search_on_topic_share) & (
            kind < s.search_on_topic_share + s.search_only_share
        )
        r_topic = np.where(on_topic | search_only, self.ss_topic[r_owner], 0)
        off = ~(on_topic | search_only)
        r_topic[off] = self._popular_topics(int(off.sum()))
        # The engine favours items whose caption holds the query's key word.
        matched = on_topic & (rng.random(n_rows) < s.search_keyword_match_share)
        sub_rows = np.flatnonzero(matched)
        feed_item = self._items_of(r_topic)
        feed_item[sub_rows] = self._items_of(
            r_topic[sub_rows],
            self.ss_subtopic[r_owner[sub_rows]],
            self.ss_keyword[r_owner[sub_rows]],
        )
        so_item = (
            self.n_feed_items
            + r_topic * p.search_only_items_per_topic
            + _draw(self.search_only_cdf, rng, n_rows)
        )
        return n_shown, r_owner, on_topic, np.where(search_only, so_item, feed_item)

    def _draw_search_clicks(
        self, n_shown: np.ndarray, r_owner: np.ndarray, on_topic: np.ndarray
    ) -> np.ndarray:
        """(rows,) clicks: a session has a click with some probability (higher when about
        the intent); then its on-topic feed items are clicked with a position-decaying
        probability, at least one."""
        s, rng = self.s, self.rng
        n_ss, n_rows = len(n_shown), len(r_owner)
        r_pos = _rank_within(n_shown)
        p_session = np.where(
            self.ss_about_intent, s.session_click_prob_intent, s.session_click_prob_background
        )
        has_click = rng.random(n_ss) < p_session
        eligible = on_topic & has_click[r_owner]
        click = eligible & (rng.random(n_rows) < 0.45 / (1 + r_pos) ** 0.6)
        clicked_any = np.bincount(r_owner, weights=click, minlength=n_ss) > 0
        # Sessions that must click but drew none: click their first eligible row (or row 0).
        need = has_click & ~clicked_any
        first_eligible = np.full(n_ss, -1)
        rows = np.flatnonzero(eligible)
        first_eligible[r_owner[rows[::-1]]] = rows[::-1]
        starts = np.cumsum(n_shown) - n_shown
        forced = np.where(first_eligible >= 0, first_eligible, starts)[need]
        click[forced] = True
        return click

    def _rephrase_tail_queries(self) -> None:
        """Long-tail phrasing (Story.tail_query_share), drawn from its own random stream so
        that everything else is what the default story generates for the same seed."""
        p, s = self.p, self.s
        rng = np.random.default_rng([self.cfg.seed, 1])
        n_ss = len(self.ss_user)
        tail = rng.random(n_ss) < s.tail_query_share  # (sessions,)
        per_topic = s.tail_words_per_topic
        n_tail_words = p.n_topics * per_topic
        top = int(self.word_ids.max()) + 1
        tail_ids = top + _distinct_ids(rng, n_tail_words, 0, max(50 * n_tail_words, 1000))
        lengths = np.diff(self.q_offsets)
        owner = np.repeat(np.arange(n_ss), lengths)  # (words,) session of each query word
        rows = np.flatnonzero(tail[owner])
        local = rng.integers(0, per_topic, len(rows))
        self.q_words[rows] = tail_ids[self.ss_topic[owner[rows]] * per_topic + local]
        drop = tail & (rng.random(n_ss) >= s.tail_click_keep)
        self.sr_click[drop[self.sr_owner]] = False

    # ------------------------------------------------------------------ feed
    def build_feed(self) -> None:
        """Feed impressions (sittings of batches that share a timestamp), their topics and
        items, and clicks; stored sorted by (user, time), ties in generation order."""
        user, time = self._feed_rows()
        ep = self._episode_at(user, time)
        topic, item = self._feed_items(user, time, ep)
        click, prob, is_intent, logit_without_intent = self._feed_clicks(user, topic, item, ep)
        order = np.lexsort((np.arange(len(user)), time, user))
        self.fd_user, self.fd_time, self.fd_item = user[order], time[order], item[order]
        self.fd_click = click[order]
        self.fd_prob = prob[order]
        self.fd_prob_without_intent = (
            1.0
            / (1.0 + np.exp(-(logit_without_intent + _solve_intercept(logit_without_intent, 0.5))))[
                order
            ]
        )
        self.fd_is_intent = is_intent[order]

    def _feed_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, time) of every feed impression: sittings at daily-rhythm times (more for
        active users), each a few batches some seconds apart, every row of a batch at the
        batch's timestamp."""
        p, rng = self.p, self.rng
        batches_mean, batch_size_mean = 3.0, 1 + 9 * 0.4
        rows_per_sitting = batches_mean * batch_size_mean
        n_sit = np.maximum(1, rng.poisson(p.feed_rows_per_user * self.activity / rows_per_sitting))
        sit_user = np.repeat(np.arange(p.n_users), n_sit)
        sit_time = self._active_times(self.t0, self.t1 - HOUR_MS, len(sit_user))
        n_batch = 1 + rng.poisson(batches_mean - 1, len(sit_user))
        b_sit = np.repeat(np.arange(len(sit_user)), n_batch)
        gaps = rng.integers(15_000, 120_000, len(b_sit))
        gaps[_rank_within(n_batch) == 0] = 0
        offsets = np.cumsum(gaps) - np.repeat(
            np.cumsum(gaps)[np.cumsum(n_batch) - n_batch], n_batch
        )
        b_user = sit_user[b_sit]
        b_time = sit_time[b_sit] + offsets
        size = 1 + rng.binomial(9, 0.4, len(b_user))
        row_batch = np.repeat(np.arange(len(b_user)), size)
        return b_user[row_batch], b_time[row_batch].astype(np.int64)

    def _feed_items(
        self, user: np.ndarray, time: np.ndarray, ep: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(topic, item) of every feed row (episode `ep`): popular topics, the user's taste,
        or the current intent with a share that ramps up over the episode's age."""
        s, rng = self.s, self.rng
        n_rows = len(user)
        intent_topic = self.ep_topic[ep]
        age_h = (time - self.ep_start[ep]) / HOUR_MS
        ramp = np.clip(age_h / s.feed_intent_ramp_hours, 0.0, 1.0)
        p_intent = (
            s.feed_intent_share_start + (s.feed_intent_share_end - s.feed_intent_share_start) * ramp
        )
        u = rng.random(n_rows)
        topic = self._popular_topics(n_rows)
        taste_rows = u < s.feed_taste_share
        topic[taste_rows] = self._taste_topics(user[taste_rows])
        intent_rows = (u >= s.feed_taste_share) & (u < s.feed_taste_share + p_intent)
        topic[intent_rows] = intent_topic[intent_rows]
        return topic, self._items_of(topic)

    def _feed_clicks(
        self, user: np.ndarray, topic: np.ndarray, item: np.ndarray, ep: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Clicks from the true click model (user bias, taste, popularity, quality, and the
        episode's intent), its intercept solved for `target_click_rate`; -> (click, P(click),
        row is about the intent, the logit without the intent term)."""
        s = self.s
        is_intent = topic == self.ep_topic[ep]
        logit_without_intent = (
            self.user_bias[user]
            + s.click_weight_taste * self.taste[user, topic]
            + s.click_weight_popularity * self.item_pop_score[item]
            + self.item_quality[item]
        )
        intent_term = s.click_weight_intent * self.ep_strength[ep] * is_intent
        logit = logit_without_intent + intent_term
        intercept = _solve_intercept(logit, s.target_click_rate)
        prob = 1.0 / (1.0 + np.exp(-(logit + intercept)))
        click = self.rng.random(len(user)) < prob
        return click, prob, is_intent, logit_without_intent

    # ------------------------------------------------------------------ writing
    def write_src_inter(self, out: Path) -> int:
        owner = self.sr_owner
        keywords = _token_strings(self.q_offsets, self.q_words)
        source = self.rng.choice(_SEARCH_SOURCES, size=len(self.ss_user), p=_SEARCH_SOURCE_WEIGHTS)
        sessions = pl.DataFrame(
            {
                "keyword": keywords,
                "search_session_id": self.ss_id.astype(np.int64),
                "user_id": self.user_raw_id[self.ss_user].astype(np.int64),
                "search_session_timestamp": self.ss_time,
                "search_source": source.astype(str),
            }
        ).with_row_index("session")
        rows = pl.DataFrame(
            {
                "session": owner.astype(np.uint32),
                "item_id": self.item_raw_id[self.sr_item].astype(np.int64),
                "click_cnt": self.sr_click.astype(np.int64),
                "item_type": self.item_type[self.sr_item].astype(str),
            }
        )
        table = rows.join(sessions, on="session", how="left", maintain_order="left").with_columns(
            _beijing_strings(pl.col("search_session_timestamp"), "%Y-%m-%d %H:%M:%S").alias(
                "search_session_time"
            )
        )
        table.select(SRC_INTER.header).write_csv(out / SRC_INTER.name)
        return table.height

    def write_rec_inter(self, out: Path) -> int:
        rng = self.rng
        n = len(self.fd_user)
        click = self.fd_click
        duration = self.item_duration_ms[self.fd_item]
        watched = np.where(click, rng.uniform(0.3, 1.6, n), rng.uniform(0.0, 0.15, n))
        search = rng.random(n) < 0.008
        table = pl.DataFrame(
            {
                "user_id": self.user_raw_id[self.fd_user].astype(np.int64),
                "item_id": self.item_raw_id[self.fd_item].astype(np.int64),
                "duration_ms": duration,
                "playing_time": np.round(duration * watched, 0),
                "timestamp": self.fd_time.astype(np.float64),
                "forward": (click & (rng.random(n) < 0.01)).astype(np.int64),
                "like": (click & (rng.random(n) < 0.06)).astype(np.int64),
                "follow": (click & (rng.random(n) < 0.01)).astype(np.int64),
                "search_item_related": (search & (rng.random(n) < 0.4)).astype(np.int64),
                "search": search.astype(np.int64),
                "click": click.astype(np.int64),
            }
        ).with_columns(
            _beijing_strings(pl.col("timestamp").cast(pl.Int64), "%Y-%m-%d %H:%M:%S").alias("time")
        )
        table.select(REC_INTER.header).write_csv(out / REC_INTER.name)
        return table.height

    def write_users(self, out: Path) -> None:
        p, rng = self.p, self.rng
        rec_level = np.digitize(self.activity, [0.4, 0.9, 1.8]) + 1
        search_level = np.digitize(self.search_propensity, [0.5, 1.0, 1.8]) + 1
        users = pl.DataFrame(
            {
                "user_id": self.user_raw_id.astype(np.int64),
                "search_active_level": search_level.astype(np.int64),
                "rec_active_level": rec_level.astype(np.int64),
                "onehot_feat1": self.onehot_feat1.astype(np.int64),
                "onehot_feat2": self.onehot_feat2.astype(np.int64),
            }
        ).sort("user_id")
        users.select(USER_FEATURES.header).write_csv(out / USER_FEATURES.name)
        followers = np.flatnonzero(rng.random(p.n_users) < self.s.follow_user_share)
        n_follow = 1 + rng.poisson(1.5, len(followers))
        src = np.repeat(followers, n_follow)
        dst = rng.integers(0, p.n_users, len(src))
        keep = src != dst
        edges = pl.DataFrame(
            {
                "user_id": self.user_raw_id[src[keep]].astype(np.int64),
                "user_follow_id": self.user_raw_id[dst[keep]].astype(np.int64),
            }
        ).unique(maintain_order=True)
        edges.write_csv(out / SOCIAL_NETWORK.name)

    def write_item_features(self, out: Path) -> int:
        """item_features.csv for the items the logs use, less a share that has no row (as
        in real logs); -> its row count."""
        used = np.union1d(np.unique(self.fd_item), np.unique(self.sr_item))
        drop = self.rng.random(len(used)) < self.s.missing_item_features_share
        items = used[~drop]
        columns: dict[str, object] = {
            "item_id": self.item_raw_id[items].astype(np.int64),
            "caption": self._item_captions(items),
        }
        columns.update(self._item_details(items))
        columns.update(self._item_category_columns(items))
        table = pl.DataFrame(columns).sort("item_id")
        table.select(ITEM_FEATURES.header).write_csv(out / ITEM_FEATURES.name)
        self.n_items_without_features = int(drop.sum())
        return table.height

    def _item_captions(self, items: np.ndarray) -> pl.Series:
        """Captions: the item's key word, more words of its topic (2-4 in all) and 1-4
        generic words, shuffled; a few items have none."""
        p, rng = self.p, self.rng
        n = len(items)
        topic = self.item_topic[items]
        n_topic_words = rng.integers(2, 5, n)
        n_generic = rng.integers(1, 5, n)
        length = n_topic_words + n_generic
        length[rng.random(n) < 0.03] = 0  # some items have no caption words
        owner = np.repeat(np.arange(n), length)
        is_generic = _rank_within(length) >= np.repeat(n_topic_words, length)
        topic_word = self._topic_words(topic[owner], self.item_subtopic[items][owner])
        first = _rank_within(length) == 0  # the item's key word
        key_items = items[owner[first]]
        topic_word[first] = (
            self.item_topic[key_items] * p.words_per_topic
            + self.item_subtopic[key_items] * self.sub_words
            + self.item_keyword[key_items]
        )
        generic_word = p.n_topics * p.words_per_topic + _draw(self.generic_cdf, rng, len(owner))
        words = self.word_ids[np.where(is_generic, generic_word, topic_word)]
        shuffle = np.lexsort((rng.random(len(owner)), owner))
        return _token_strings(np.concatenate([[0], np.cumsum(length)]), words[shuffle])

    def _item_details(self, items: np.ndarray) -> dict[str, object]:
        """The author, type, upload time and type and music columns (author 0 and upload
        1970-01-01 for missing values, as in the real file)."""
        p, rng = self.p, self.rng
        n = len(items)
        topic = self.item_topic[items]
        author_pool = topic * p.authors_per_topic + rng.integers(0, p.authors_per_topic, n)
        author = 1000 + author_pool
        author[rng.random(n) < 0.02] = 0  # missing
        days_before = rng.integers(0, 120, n)
        upload = pl.Series(
            (np.datetime64("2023-05-22") - days_before.astype("timedelta64[D]")).astype(str)
        )
        upload = pl.select(
            pl.when(pl.Series(rng.random(n) < 0.02)).then(pl.lit("1970-01-01")).otherwise(upload)
        ).to_series()
        music = np.where(rng.random(n) < 0.3, 0, rng.integers(1, 50 * p.n_topics, n))
        feature_type = np.where(
            items < self.n_feed_items, "NORMAL", self.item_type[items].astype(str)
        )
        return {
            "author_id": author.astype(np.int64),
            "item_type": feature_type,
            "upload_time": upload,
            "upload_type": rng.choice(_UPLOAD_TYPES, size=n, p=_UPLOAD_TYPE_WEIGHTS).astype(str),
            "music_id": music.astype(np.int64),
        }

    def _item_category_columns(self, items: np.ndarray) -> dict[str, object]:
        """Id, Chinese and English name of the four category levels: first = the topic's
        group, second = the topic, third = its subtopic (often missing), fourth mostly
        missing (id 0 / 空 / empty)."""
        p, rng = self.p, self.rng
        n = len(items)
        topic = self.item_topic[items]
        n_groups = min(len(_FIRST_LEVEL), max(2, p.n_topics // 4))
        group = topic % n_groups
        names = _category_names(p.n_topics, n_groups)
        sub = self.item_subtopic[items]
        which = rng.integers(0, len(_FOURTH), n)
        empty = np.array([_EMPTY_CN, _EMPTY_EN])
        has_third = rng.random(n) < 0.6
        has_fourth = rng.random(n) < 0.1
        levels = {
            "first": (group + 1, names["first"][topic]),
            "second": (100 + topic, names["second"][topic]),
            "third": (
                np.where(has_third, 1000 + topic * len(_THIRD_SUFFIX) + sub, 0),
                np.where(has_third[:, None], names["third"][sub], empty),
            ),
            "fourth": (
                np.where(has_fourth, 90_000 + which, 0),
                np.where(has_fourth[:, None], names["fourth"][which], empty),
            ),
        }
        columns: dict[str, object] = {}
        for level in CATEGORY_LEVELS:
            ids, cn_en = levels[level]
            cn, en = cn_en[:, 0], cn_en[:, 1]
            columns[f"{level}_level_category_id"] = np.asarray(ids, dtype=np.int64)
            columns[f"{level}_level_category_name"] = np.asarray(cn).astype(str)
            columns[f"{level}_level_category_name_en"] = np.asarray(en).astype(str)
        return columns

    # ------------------------------------------------------------------ manifest
    def manifest(self, *, rec_rows: int, src_rows: int, item_rows: int) -> dict[str, object]:
        n_sessions = len(self.ss_user)
        sessions_with_click = int(
            (np.bincount(self.sr_owner, weights=self.sr_click, minlength=n_sessions) > 0).sum()
        )
        return {
            "generator": "queryrec.data.synth",
            "preset": asdict(self.p),
            "seed": self.cfg.seed,
            "story": asdict(self.s),
            "rows": {
                REC_INTER.name: rec_rows,
                SRC_INTER.name: src_rows,
                ITEM_FEATURES.name: item_rows,
                USER_FEATURES.name: self.p.n_users,
            },
            "search_sessions": n_sessions,
            "search_sessions_with_click_share": sessions_with_click / max(n_sessions, 1),
            "feed_click_rate": float(self.fd_click.mean()),
            "feed_intent_item_share": float(self.fd_is_intent.mean()),
            "items_in_logs_without_features": self.n_items_without_features,
            # What the planted click model allows: AUC of the true probabilities, and of the
            # probabilities without the intent term (what no view of the intent could add).
            "planted_auc": {
                "true_probability": float(roc_auc_score(self.fd_click, self.fd_prob)),
                "without_intent_term": float(
                    roc_auc_score(self.fd_click, self.fd_prob_without_intent)
                ),
            },
        }


def _category_names(n_topics: int, n_groups: int) -> dict[str, np.ndarray]:
    """(Chinese, English) names: per topic for levels 1-2, per subtopic / value for 3-4."""
    first, second = [], []
    for topic in range(n_topics):
        group = topic % n_groups
        suffix = topic // n_groups % len(_SECOND_SUFFIX)
        round_ = topic // (n_groups * len(_SECOND_SUFFIX))
        cn, en = _FIRST_LEVEL[group]
        first.append((cn, en))
        tag_cn, tag_en = _SECOND_SUFFIX[suffix]
        extra = f"{round_ + 1}" if round_ else ""
        second.append((cn + tag_cn + extra, f"{en} {tag_en}" + (f" {extra}" if extra else "")))
    return {
        "first": np.array(first),  # (n_topics, 2)
        "second": np.array(second),  # (n_topics, 2)
        "third": np.array(_THIRD_SUFFIX),  # (n_subtopics, 2)
        "fourth": np.array(_FOURTH),  # (n_values, 2)
    }


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept c with mean(sigmoid(logit + c)) == rate (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if (1.0 / (1.0 + np.exp(-(logit + mid)))).mean() < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2
