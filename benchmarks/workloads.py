"""Benchmark inputs drawn from a generated (or your own) dataset, one request per entry.

Each request is a dict from the ensemble's input tensor names (taken from aisle.schema) to numpy
arrays without the batch dimension, so the same requests feed perf_analyzer's --input-data files,
the Python SDK load generator and the baselines: every number in a report comes from identical
inputs.

Why sample queries from sessions rather than from queries.jsonl: sessions carry how often each
query is actually searched, so their texts follow the real query-length distribution. The Zipf
variant makes the head of that distribution recur (as in a shop's logs), which is what a result
cache or a tokenizer cache would profit from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from aisle.benchmarks.errors import BenchmarkError
from aisle.data.format import Dataset, Item
from aisle.schema import (
    BRANDS,
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    CATEGORY,
    EMBED_ITEM,
    EMBED_QUERY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    ITEM_TEXT,
    MAX_HISTORY,
    PRICE_RANGE,
    QUERY,
    RANK,
    RANK_COLD,
    SEARCH,
    TOP_K,
    USER_HISTORY_IDS,
)

Request = dict[str, np.ndarray]

#: Zipf exponent of the repeated-query variant; ~1 is what query logs of web shops show.
ZIPF_EXPONENT = 1.1


@dataclass(frozen=True)
class WorkloadConfig:
    """How many distinct requests each workload holds and what a rank request carries.

    requests: distinct requests per workload (load generators cycle through them); more gives a
        smoother length distribution, fewer keeps perf_analyzer's input files small.
    rank_candidates: catalog candidates per rank request (the target is stated for 100).
    cold_candidates: item texts per rank_cold request; each is encoded by the item tower on the
        fly, so this dominates that path's cost.
    top_k: results per search / recommend request (a results page).
    """

    requests: int = 256
    rank_candidates: int = 100
    cold_candidates: int = 20
    max_history: int = MAX_HISTORY
    top_k: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Workload:
    """A named list of requests for one ensemble."""

    name: str
    ensemble: str
    requests: tuple[Request, ...]
    description: str

    def texts(self, tensor: str) -> list[str]:
        """Every text of `tensor` across the requests, flattened (used by the baselines)."""
        return [str(text) for request in self.requests for text in request[tensor].ravel()]


def _text(value: str) -> np.ndarray:
    return np.array([value], dtype=object)


def _searched_queries(dataset: Dataset) -> list[str]:
    """Query texts as users searched them (one per search session); queries.jsonl as a fallback."""
    searched = [s.query for s in dataset.sessions if s.query.strip()]
    if not searched:
        searched = [q.text for q in dataset.queries if q.text.strip()]
    if not searched:
        raise BenchmarkError("dataset has no non-empty query in sessions.jsonl or queries.jsonl")
    return searched


def query_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """embed_query with texts drawn uniformly from search sessions (the real length mix)."""
    rng = np.random.default_rng(config.seed)
    searched = _searched_queries(dataset)
    picks = rng.choice(len(searched), size=config.requests)
    return Workload(
        "embed_query",
        EMBED_QUERY,
        tuple({QUERY: _text(searched[i])} for i in picks),
        "query texts sampled from search sessions (real query-length distribution)",
    )


def zipf_query_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """embed_query where distinct queries, ranked by session frequency, recur with Zipf weights."""
    rng = np.random.default_rng(config.seed + 1)
    ranked = [text for text, _ in Counter(_searched_queries(dataset)).most_common()]
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** ZIPF_EXPONENT
    picks = rng.choice(len(ranked), size=config.requests, p=weights / weights.sum())
    return Workload(
        "embed_query_zipf",
        EMBED_QUERY,
        tuple({QUERY: _text(ranked[i])} for i in picks),
        f"distinct queries repeated with Zipf(s={ZIPF_EXPONENT}) weights by their session frequency",
    )


def item_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """embed_item with catalog item texts (title | brand | category | attributes)."""
    rng = np.random.default_rng(config.seed + 2)
    picks = rng.choice(len(dataset.items), size=config.requests)
    return Workload(
        "embed_item",
        EMBED_ITEM,
        tuple({ITEM_TEXT: _text(dataset.items[i].text())} for i in picks),
        "catalog item texts",
    )


def _history(ids: tuple[int, ...], limit: int) -> np.ndarray:
    return np.array(ids[-limit:] if limit else (), dtype=np.int64)


def rank_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """rank: each session's query and history, its impressions topped up to N catalog candidates."""
    rng = np.random.default_rng(config.seed + 3)
    catalog = np.array([item.item_id for item in dataset.items], dtype=np.int64)
    if not dataset.sessions:
        raise BenchmarkError("dataset has no sessions: rank requests need session queries and histories")
    picks = rng.choice(len(dataset.sessions), size=config.requests)
    requests = []
    for index in picks:
        session = dataset.sessions[index]
        shown = [i.item_id for i in session.impressions][: config.rank_candidates]
        missing = config.rank_candidates - len(shown)
        fill = rng.choice(catalog, size=missing, replace=len(catalog) < missing)
        candidates = rng.permutation(np.concatenate([np.array(shown, dtype=np.int64), fill]))
        requests.append(
            {
                QUERY: _text(session.query),
                CANDIDATE_IDS: candidates.astype(np.int64),
                USER_HISTORY_IDS: _history(session.history, config.max_history),
            }
        )
    return Workload(
        "rank",
        RANK,
        tuple(requests),
        f"session query + history, {config.rank_candidates} catalog candidates (impressions topped up)",
    )


def _cold_items(dataset: Dataset) -> list[Item]:
    cold = [item for item in dataset.items if item.cold_start]
    return cold or list(dataset.items)


def cold_rank_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """rank_cold: session query + history against cold-start items given as texts and raw features."""
    rng = np.random.default_rng(config.seed + 4)
    if not dataset.sessions:
        raise BenchmarkError("dataset has no sessions: rank_cold requests need session queries and histories")
    cold = _cold_items(dataset)
    requests = []
    for index in rng.choice(len(dataset.sessions), size=config.requests):
        session = dataset.sessions[index]
        chosen = [cold[i] for i in rng.choice(len(cold), size=config.cold_candidates)]
        requests.append(
            {
                QUERY: _text(session.query),
                CANDIDATE_TEXTS: np.array([item.text() for item in chosen], dtype=object),
                CANDIDATE_FEATURES: np.array([item.features() for item in chosen], dtype=np.float32),
                USER_HISTORY_IDS: _history(session.history, config.max_history),
            }
        )
    return Workload(
        "rank_cold",
        RANK_COLD,
        tuple(requests),
        f"session query + history, {config.cold_candidates} cold-start item texts + raw features",
    )


def search_request(query: str, history: np.ndarray, top_k: int) -> Request:
    """A whole-catalog search request without filters (an empty query: a recommendation)."""
    return {
        QUERY: _text(query),
        USER_HISTORY_IDS: history,
        TOP_K: np.array([top_k], dtype=np.int64),
        CATEGORY: _text(""),
        BRANDS: np.zeros(0, dtype=object),
        EXCLUDE_BRANDS: np.zeros(0, dtype=object),
        PRICE_RANGE: np.full(2, np.nan, dtype=np.float32),
        EXCLUDE_IDS: np.zeros(0, dtype=np.int64),
    }


def _sessions(dataset: Dataset, *, searches: bool) -> list:
    sessions = [s for s in dataset.sessions if bool(s.query) == searches and (searches or s.history)]
    if not sessions:
        raise BenchmarkError(f"dataset has no {'search' if searches else 'feed'} sessions with what they need")
    return sessions


def search_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """search: each search session's query and history, the top results of the whole catalog."""
    rng = np.random.default_rng(config.seed + 5)
    sessions = _sessions(dataset, searches=True)
    requests = [
        search_request(s.query, _history(s.history, config.max_history), config.top_k)
        for s in (sessions[i] for i in rng.choice(len(sessions), size=config.requests))
    ]
    return Workload("search", SEARCH, tuple(requests), f"session query + history, top {config.top_k} of the catalog")


def recommend_workload(dataset: Dataset, config: WorkloadConfig) -> Workload:
    """recommend: each feed session's history (no query), the top results of the whole catalog."""
    rng = np.random.default_rng(config.seed + 6)
    sessions = _sessions(dataset, searches=False)
    requests = [
        search_request("", _history(s.history, config.max_history), config.top_k)
        for s in (sessions[i] for i in rng.choice(len(sessions), size=config.requests))
    ]
    return Workload("recommend", SEARCH, tuple(requests), f"feed history, top {config.top_k} of the catalog")


def build_workloads(dataset: Dataset, config: WorkloadConfig) -> dict[str, Workload]:
    """All workloads of the suite, by name."""
    builders = (
        query_workload,
        zipf_query_workload,
        item_workload,
        rank_workload,
        cold_rank_workload,
        search_workload,
        recommend_workload,
    )
    workloads = [build(dataset, config) for build in builders]
    return {w.name: w for w in workloads}
