"""Whole-catalog evaluation: every system ranks the entire catalog for each held-out test session.

`aisle train`'s metrics (aisle.training.evaluate) rank each session's impressions plus sampled
items; that measures ranking, not finding. Here every system starts from nothing but the query or
the user, as a shop's search box and "recommended for you" shelf do:

search sessions (query != ""):
- bm25: lexical BM25 over `Item.text()` (bm25s, English stopwords, default parameters), what many
  shops run today;
- zero_shot: cosine of the base model's query and item embeddings over the whole catalog;
- bm25_rerank: a BM25 engine with a re-ranker: BM25's top `search_depth` matches (items sharing
  a term with the query) re-ranked by the base model's cosine. A cross-encoder is the usual
  re-ranker, but none can be loaded offline here; the base bi-encoder is the re-ranker a shop
  without training data would deploy;
- towers: the same with the fine-tuned towers (stage 1 alone);
- aisle: `reference_ranking`: towers retrieval of the top `search_depth`, re-ranked by the fusion
  head with the user vector from the session history (stages 1 + 2).

feed sessions (query == ""):
- popularity: the catalog by the popularity feature, the same for every user;
- user_cosine: the user vector against the item-tower embeddings (stage 1 alone; popularity for
  a session without history, as stage 1 does);
- aisle: `reference_ranking` with an empty query: user-vector retrieval of the top
  `recommend_depth`, then the fusion head.

Sessions: every test session with a click or purchase (optionally the first `max_sessions`).
Gains: purchase 2, click 1 on the session's impressions, 0 for every other catalog item, so the
ideal ranking and the gains are the same for every system. Metrics are aisle.training.metrics'
nDCG@k and Recall@k over the catalog. Systems that return only their top K (aisle) rank the rest
last, which leaves nDCG@10 and Recall@100 exact as long as K >= both cut-offs.

`reference_ranking` is the offline reference the served search and recommendation ensembles must
reproduce (same ids, scores within 1e-4): keep it the one place that defines stage 1 -> stage 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from aisle.data.format import load_dataset
from aisle.errors import AisleError
from aisle.modeling.checkpoint import Manifest
from aisle.modeling.fusion import FusionHead
from aisle.modeling.loading import embed_texts, load_checkpoint
from aisle.modeling.towers import TextTower
from aisle.modeling.user import user_vector
from aisle.retrieval import has_query, retrieval_vectors
from aisle.schema import ITEM_FEATURES, ServingLimits
from aisle.tokenization import Bucketing, load_tokenizer
from aisle.training.corpus import Corpus, RankingLists
from aisle.training.metrics import ndcg_at_k, recall_at_k
from aisle.training.presets import Evaluation

SEARCH_SYSTEMS = ("bm25", "zero_shot", "bm25_rerank", "towers", "aisle")
FEED_SYSTEMS = ("popularity", "user_cosine", "aisle")
#: Sessions ranked together: bounds the [B, catalog] score arrays and the head's [B, N, 5D] input.
SESSION_BATCH = 32
#: Texts per tower forward pass when embedding the catalog and the queries.
EMBED_BATCH = 64
#: Column of the feature the popularity baseline (and the reference's no-signal fallback) ranks by.
POPULARITY = ITEM_FEATURES.index("popularity")


@dataclass(frozen=True)
class Goal:
    """A quality target: `system` beats the best of `baselines` by `margin` nDCG@k on `kind` sessions."""

    name: str
    kind: str
    system: str
    baselines: tuple[str, ...]
    margin: float


GOALS = (
    Goal("search_over_bm25", "search", "aisle", ("bm25", "bm25_rerank"), 0.10),
    Goal("search_over_towers", "search", "aisle", ("towers",), 0.05),
    Goal("recommend_over_baselines", "feed", "aisle", ("popularity", "user_cosine"), 0.05),
)


# --- stage 1 -> stage 2: the offline reference ---------------------------------------------------


def top_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """[B, I] scores -> [B, min(n, I)] row indices, best first; equal scores keep catalog order.

    The same rows as a full stable sort's first n, in O(I) per request: items tied with the n-th
    best score are kept lowest row first, so the result never depends on argpartition's
    arbitrary choice among ties (the popularity fallback ties often). The one place that picks
    stage-1 candidates: the retrieval package's exact index replaces it.
    """
    n = min(n, scores.shape[1])
    cut = -np.partition(-scores, n - 1, axis=1)[:, n - 1 : n]  # each row's n-th best score
    above = scores > cut
    tied = scores == cut
    missing = n - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= missing))
    kept = np.nonzero(keep)[1].reshape(len(scores), n)  # each row keeps exactly n, in row order
    order = np.argsort(-np.take_along_axis(scores, kept, axis=1), axis=1, kind="stable")
    return np.take_along_axis(kept, order, axis=1)


def retrieval_scores(queries: np.ndarray, users: np.ndarray, items: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Stage-1 scores [B, I], as the served retriever computes them (aisle.retrieval): the query
    embedding blended with the user vector (the user vector alone with no query). A request with
    neither has nothing to match and falls back to the catalog's popularity."""
    vectors, has_vector = retrieval_vectors(queries, users)
    scores = vectors @ items.T
    scores[~has_vector] = features[:, POPULARITY]
    return scores


def rerank(first: np.ndarray, second: np.ndarray, depth: int) -> np.ndarray:
    """[B, I] scores of a two-stage engine: `first`'s top `depth` items with a positive score (a
    lexical engine returns only matches), ordered by `second`; every other item after them."""
    rows = top_rows(first, depth)
    matched = np.take_along_axis(first, rows, axis=1) > 0
    out = np.full(second.shape, -np.inf, dtype=np.float32)
    np.put_along_axis(out, rows, np.where(matched, np.take_along_axis(second, rows, axis=1), -np.inf), axis=1)
    return out


@dataclass
class Ranked:
    """The best `k` catalog rows per request, best first, with their fusion-head scores."""

    rows: np.ndarray  # [B, K] int64
    scores: np.ndarray  # [B, K] float32


def reference_ranking(
    head: FusionHead,
    queries: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    features: np.ndarray,
    *,
    limits: ServingLimits,
    k: int,
) -> Ranked:
    """aisle's search (non-zero query) and recommendation (zero query) over a whole catalog.

    queries, users: [B, D] float32 (zero rows for no query / no history); items: [I, D] item-tower
    embeddings; features: [I, F] raw features. Stage 1 keeps each request's top
    `limits.retrieval_depth(has a query)` rows (at most I) by `retrieval_scores`; stage 2 scores
    them with the fusion head and keeps the top `k`.
    """
    rows = np.zeros((len(queries), k), dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    with_query = has_query(queries)
    for group in (np.flatnonzero(with_query), np.flatnonzero(~with_query)):
        if not len(group):
            continue
        n = min(limits.retrieval_depth(bool(with_query[group[0]])), len(items))
        if not 0 < k <= n:
            raise ValueError(f"k={k} must lie in [1, n={n}]")
        q, u = queries[group], users[group]
        candidates = top_rows(retrieval_scores(q, u, items, features), n)
        with torch.inference_mode():
            head_scores = head(
                torch.from_numpy(q),
                torch.from_numpy(u),
                torch.from_numpy(items[candidates]),
                torch.from_numpy(features[candidates]),
            ).numpy()
        order = np.argsort(-head_scores, axis=1, kind="stable")[:, :k]
        rows[group] = np.take_along_axis(candidates, order, axis=1)
        scores[group] = np.take_along_axis(head_scores, order, axis=1)
    return Ranked(rows, scores)


# --- embeddings ----------------------------------------------------------------------------------


def embed_all(
    tower: TextTower, tokenizer_dir: Path, texts: list[str], buckets: tuple[int, ...], desc: str
) -> np.ndarray:
    """[len(texts), D] float32 embeddings with the serving tokenization, shortest texts batched together."""
    bucketing = Bucketing(buckets)
    tokenizer = load_tokenizer(tokenizer_dir, bucketing.max_length)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), tower.embedding_dim), dtype=np.float32)
    for start in tqdm(range(0, len(order), EMBED_BATCH), desc=desc, unit="batch", leave=False):
        rows = order[start : start + EMBED_BATCH]
        out[rows] = embed_texts(tower, tokenizer, [texts[r] for r in rows], bucketing, EMBED_BATCH).numpy()
    return out


@dataclass
class Tower:
    """One system's catalog and per-session query embeddings (queries are zero for feed sessions)."""

    items: np.ndarray  # [I, D]
    queries: np.ndarray  # [S, D]


def embed_tower(
    query: tuple[TextTower, Path],
    item: tuple[TextTower, Path],
    corpus: Corpus,
    query_texts: list[str],
    manifest: Manifest,
    name: str,
) -> Tower:
    """Embed the catalog and the distinct session queries once (in memory only), as served.

    query, item: each tower with the directory of its tokenizer.
    """
    (query_tower, query_dir), (item_tower, item_dir) = query, item
    items = embed_all(item_tower, item_dir, corpus.item_texts, manifest.limits.item_buckets, f"{name} items")
    distinct = sorted({t for t in query_texts if t})
    embedded = embed_all(query_tower, query_dir, distinct, manifest.limits.query_buckets, f"{name} queries")
    row = {text: n for n, text in enumerate(distinct)}
    queries = np.zeros((len(query_texts), items.shape[1]), dtype=np.float32)
    for n, text in enumerate(query_texts):
        if text:
            queries[n] = embedded[row[text]]
    return Tower(items, queries)


# --- the evaluation ------------------------------------------------------------------------------


@dataclass
class Sessions:
    """Test sessions with a click: impressions and gains (RankingLists), their query texts, users."""

    lists: RankingLists
    query_texts: list[str]
    users: np.ndarray  # [S, D] user vectors from the fine-tuned item embeddings

    def gains(self, index: np.ndarray, num_items: int) -> np.ndarray:
        """[len(index), I] catalog gains: each impression's gain, the best one where an item repeats."""
        out = np.zeros((len(index), num_items), dtype=np.float32)
        for n, s in enumerate(index):
            valid = self.lists.valid[s]
            np.maximum.at(out[n], self.lists.candidates[s][valid], self.lists.gains[s][valid])
        return out


class BM25:
    """bm25s over the item texts with English stopwords and its default parameters."""

    def __init__(self, texts: list[str]) -> None:
        try:
            import bm25s
        except ImportError as e:
            raise AisleError("the BM25 baseline needs bm25s: pip install 'aisle[evaluate]'") from e

        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def scores(self, queries: list[str]) -> np.ndarray:
        """[len(queries), I] BM25 scores over the whole catalog (0 where no query term occurs)."""
        tokens = self._bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        return np.stack([self.retriever.get_scores(t) for t in tokens]).astype(np.float32)


def full_ranking(ranked: Ranked, num_items: int) -> np.ndarray:
    """[B, I] scores that order a top-K list first and every other item after it."""
    out = np.full((ranked.rows.shape[0], num_items), -np.inf, dtype=np.float32)
    np.put_along_axis(out, ranked.rows, ranked.scores, axis=1)
    return out


@dataclass(frozen=True)
class CatalogEvalConfig:
    """Options of one `aisle evaluate` run.

    search_depth / recommend_depth: stage-1 candidates the head re-ranks for searches / feeds
        (None: the checkpoint's ServingLimits, as served; >= the recall cut-off: aisle's list is
        scored down to rank recall_k). max_sessions: evaluate the first N test sessions with a
        click (None: all). base_model: the zero-shot towers' directory (None: the manifest's).
    """

    search_depth: int | None = None
    recommend_depth: int | None = None
    max_sessions: int | None = None
    base_model: Path | None = None
    metrics: Evaluation = Evaluation()

    def __post_init__(self) -> None:
        for name in ("search_depth", "recommend_depth"):
            value = getattr(self, name)
            if value is not None and value < self.top_k:
                raise AisleError(
                    f"--{name.replace('_', '-')}={value} must be >= {self.top_k}: aisle's ranking is scored down "
                    f"to rank {self.top_k} (recall@{self.metrics.recall_k})"
                )
        if self.max_sessions is not None and self.max_sessions < 1:
            raise AisleError(f"--max-sessions={self.max_sessions} must be >= 1 (omit it for every test session)")

    @property
    def top_k(self) -> int:
        return max(self.metrics.ndcg_k, self.metrics.recall_k)

    def limits(self, served: ServingLimits) -> ServingLimits:
        """The checkpoint's served limits with this run's depth overrides."""
        given = {"search_depth": self.search_depth, "recommend_depth": self.recommend_depth}
        return replace(served, **{name: value for name, value in given.items() if value is not None})


@dataclass
class Prepared:
    """Everything the systems need, computed once per run: sessions, embeddings, BM25, the head."""

    corpus: Corpus
    sessions: Sessions
    base: Tower
    tuned: Tower
    bm25: BM25
    head: FusionHead
    limits: ServingLimits


def prepare(data_dir: Path, ckpt_dir: Path, config: CatalogEvalConfig) -> Prepared:
    """Load data and checkpoint, check they belong together, embed what the systems need."""
    ckpt = load_checkpoint(ckpt_dir)
    dataset = load_dataset(data_dir)
    expected = ckpt.manifest.data_fingerprint
    if expected and expected != dataset.manifest.fingerprint:
        raise AisleError(
            f"--data {data_dir}: fingerprint {dataset.manifest.fingerprint[:12]}… differs from the data "
            f"{ckpt_dir} was trained on ({expected[:12]}…); its test split would mix in training sessions"
        )
    base_dir = Path(config.base_model or ckpt.manifest.base_model)
    corpus = Corpus.from_dataset(dataset)
    sessions = corpus.sessions_with_clicks("test")[: config.max_sessions]
    # Impressions only (extra=0): the catalog gains come from them; the rng draws nothing.
    lists = RankingLists.build(
        corpus,
        sessions,
        extra=0,
        pool=np.zeros(0, dtype=np.int64),
        rng=np.random.default_rng(0),
        max_history=ckpt.manifest.limits.max_history,
        shuffle=False,
    )
    query_texts = [s.query if s.query.strip() else "" for s in sessions]
    base_tower = TextTower.from_pretrained(base_dir).eval()
    manifest = ckpt.manifest
    base = embed_tower((base_tower, base_dir), (base_tower, base_dir), corpus, query_texts, manifest, "zero-shot")
    tuned = embed_tower(
        (ckpt.query_tower, ckpt.query_dir), (ckpt.item_tower, ckpt.item_dir), corpus, query_texts, manifest, "towers"
    )
    decay = manifest.limits.history_decay
    users = np.stack([user_vector(tuned.items[h], decay) for h in lists.histories]).astype(np.float32)
    return Prepared(
        corpus,
        Sessions(lists, query_texts, users),
        base,
        tuned,
        BM25(corpus.item_texts),
        ckpt.head,
        config.limits(manifest.limits),
    )


def system_scores(prepared: Prepared, index: np.ndarray, kind: str, config: CatalogEvalConfig) -> dict[str, np.ndarray]:
    """Each system's [len(index), I] catalog scores for the sessions at `index` (all of one kind)."""
    base, tuned, features = prepared.base, prepared.tuned, prepared.corpus.features
    users = prepared.sessions.users[index]
    aisle = reference_ranking(
        prepared.head, tuned.queries[index], users, tuned.items, features, limits=prepared.limits, k=config.top_k
    )
    # Stage 1 alone is `towers` for searches and `user_cosine` for feeds (popularity where a feed
    # session has no history, as the reference falls back).
    stage1 = retrieval_scores(tuned.queries[index], users, tuned.items, features)
    scores = {"aisle": full_ranking(aisle, len(features))}
    if kind == "search":
        scores["bm25"] = prepared.bm25.scores([prepared.sessions.query_texts[s] for s in index])
        scores["zero_shot"] = base.queries[index] @ base.items.T
        scores["bm25_rerank"] = rerank(scores["bm25"], scores["zero_shot"], prepared.limits.search_depth)
        scores["towers"] = stage1
    else:
        scores["popularity"] = np.broadcast_to(features[:, POPULARITY], (len(index), len(features)))
        scores["user_cosine"] = stage1
    return scores


def evaluate_catalog(prepared: Prepared, config: CatalogEvalConfig) -> dict:
    """Mean nDCG@k / Recall@k over the whole catalog per session kind and system, and the goals."""
    ndcg, recall = f"ndcg@{config.metrics.ndcg_k}", f"recall@{config.metrics.recall_k}"
    is_search = prepared.sessions.lists.is_search
    results: dict = {}
    for kind, systems, mask in (("search", SEARCH_SYSTEMS, is_search), ("feed", FEED_SYSTEMS, ~is_search)):
        per_system: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
        rows = np.flatnonzero(mask)
        for start in tqdm(range(0, len(rows), SESSION_BATCH), desc=f"{kind} sessions", unit="batch", leave=False):
            index = rows[start : start + SESSION_BATCH]
            gains = prepared.sessions.gains(index, prepared.corpus.num_items)
            for name, scores in system_scores(prepared, index, kind, config).items():
                per_system[name] += [
                    (ndcg_at_k(s, g, config.metrics.ndcg_k), recall_at_k(s, g > 0, config.metrics.recall_k))
                    for s, g in zip(scores, gains)
                ]
        results[kind] = {
            name: {
                ndcg: float(np.mean([v[0] for v in values])) if values else None,
                recall: float(np.mean([v[1] for v in values])) if values else None,
                "n_sessions": len(values),
            }
            for name, values in per_system.items()
        }
    results["goals"] = check_goals(results, ndcg)
    results["settings"] = {
        "search_depth": prepared.limits.search_depth,
        "recommend_depth": prepared.limits.recommend_depth,
        "top_k": config.top_k,
        "max_sessions": config.max_sessions,
    }
    return results


def check_goals(results: dict, metric: str) -> list[dict]:
    """Each goal's measured margin and whether it is met (reported, never asserted)."""
    out = []
    for goal in GOALS:
        block = results[goal.kind]
        value = block[goal.system][metric]
        baseline = max((block[b][metric] for b in goal.baselines if block[b][metric] is not None), default=None)
        margin = None if value is None or baseline is None else value - baseline
        out.append(
            {
                "name": goal.name,
                "rule": f"{goal.kind} {goal.system} >= max({', '.join(goal.baselines)}) + {goal.margin} {metric}",
                "margin": margin,
                "required": goal.margin,
                "passed": None if margin is None else bool(margin >= goal.margin),
            }
        )
    return out


def format_report(results: dict, config: CatalogEvalConfig) -> str:
    """A fixed-width table (one row per kind and system) followed by the goals."""
    ndcg, recall = f"ndcg@{config.metrics.ndcg_k}", f"recall@{config.metrics.recall_k}"
    rows = [["kind", "system", ndcg, recall, "sessions"]]
    for kind, systems in (("search", SEARCH_SYSTEMS), ("feed", FEED_SYSTEMS)):
        for name in systems:
            block = results[kind][name]
            cells = ["-" if block[m] is None else f"{block[m]:.4f}" for m in (ndcg, recall)]
            rows.append([kind, name, *cells, str(block["n_sessions"])])
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if n < 2 else cell.rjust(w) for n, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    settings = results["settings"]
    lines.append(
        f"aisle = towers/user-vector retrieval of the top {settings['search_depth']} (searches) / "
        f"{settings['recommend_depth']} (feeds), re-ranked by the fusion head"
    )
    for goal in results["goals"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[goal["passed"]]
        margin = "-" if goal["margin"] is None else f"{goal['margin']:+.4f}"
        lines.append(f"goal {goal['name']}: {verdict} (margin {margin}; {goal['rule']})")
    return "\n".join(lines)


def run(data_dir: Path, ckpt_dir: Path, out: Path | None, config: CatalogEvalConfig) -> dict:
    """`aisle evaluate`: prepare, evaluate, print the table to stdout and write `out` as JSON."""
    if out is not None:
        # Fail before minutes of embedding, not after.
        if out.is_dir():
            raise AisleError(f"--out {out}: is a directory; give a JSON file path")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AisleError(f"--out {out}: cannot create its directory: {e.strerror}") from e
    prepared = prepare(data_dir, ckpt_dir, config)
    results = evaluate_catalog(prepared, config)
    results["settings"] |= {"data": str(data_dir), "checkpoint": str(ckpt_dir)}
    print(format_report(results, config))
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[aisle evaluate] wrote {out}", file=sys.stderr)
    return results
