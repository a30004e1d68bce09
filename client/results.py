"""What a ranking call returns.

Why both orders: applications show the best items first (`ids`, `scores`), while evaluation and
debugging need each candidate's score where the candidate was (`raw_scores`, aligned with the
input); keeping both avoids re-sorting or re-matching ids on the caller's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankResult:
    """Candidates ordered best first.

    ids: candidate ids, best first (for `rank_cold`, the candidates' positions in the input list).
    scores: their scores, descending (float32).
    indices: positions of `ids` in the input list, so `raw_scores[indices] == scores`.
    raw_scores: every candidate's score, aligned with the input order (never truncated by top_k).
    request_id: the id the server saw, for matching logs.

    Ties keep the input order (stable sort); NaN scores, should the model emit any, sort last.
    """

    ids: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    raw_scores: np.ndarray
    request_id: str

    @classmethod
    def from_scores(cls, ids: np.ndarray, raw_scores: np.ndarray, *, top_k: int | None, request_id: str) -> RankResult:
        """Sort `ids` by their aligned `raw_scores`, best first, keeping at most `top_k`."""
        if ids.shape != raw_scores.shape:
            raise ValueError(f"ids {ids.shape} and raw_scores {raw_scores.shape} must be aligned")
        keys = np.where(np.isnan(raw_scores), np.inf, -raw_scores.astype(np.float64))
        order = np.argsort(keys, kind="stable")[:top_k]
        return cls(
            ids=ids[order], scores=raw_scores[order], indices=order, raw_scores=raw_scores, request_id=request_id
        )

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, object]:
        """Plain-Python form for JSON output (the CLI's --json)."""
        return {
            "request_id": self.request_id,
            "results": [
                {"id": int(i), "score": float(s), "index": int(k)}
                for i, s, k in zip(self.ids, self.scores, self.indices)
            ],
        }


@dataclass(frozen=True)
class SearchResult:
    """Items found in the whole catalog, best first.

    ids: catalog item ids, best first; fewer than top_k when the filters allow fewer items, empty
        when they allow none.
    scores: their fusion-head scores, descending (float32).
    request_id: the id the server saw, for matching logs.
    """

    ids: np.ndarray
    scores: np.ndarray
    request_id: str

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, object]:
        """Plain-Python form for JSON output (the CLI's --json)."""
        return {
            "request_id": self.request_id,
            "results": [{"id": int(i), "score": float(s)} for i, s in zip(self.ids, self.scores)],
        }


@dataclass(frozen=True)
class ServerInfo:
    """What `server_info()` reports: who answers at `url` and whether each aisle ensemble is ready.

    embedding_dim is the size the served towers produce, read from the server once the client has
    checked its ensembles against the schema.
    """

    url: str
    name: str
    version: str
    extensions: tuple[str, ...]
    embedding_dim: int
    ensembles_ready: dict[str, bool]

    @property
    def ready(self) -> bool:
        return all(self.ensembles_ready.values())
