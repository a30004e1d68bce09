"""The dataset as arrays: items and query texts get rows, sessions become padded ranking lists.

Training and evaluation both work on embeddings indexed by these rows, so a session is only
integers: its query row (-1 for a feed, whose empty query embeds to the zero vector as served),
its history rows and its candidate rows with their gains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aisle.data.format import Dataset, Session
from aisle.errors import DataError
from aisle.modeling.user import user_vector

#: Gains of an impression: what nDCG rewards and what the head's listwise loss targets.
PURCHASE_GAIN = 2.0
CLICK_GAIN = 1.0
NO_QUERY = -1


def impression_gain(clicked: bool, purchased: bool) -> float:
    return PURCHASE_GAIN if purchased else CLICK_GAIN if clicked else 0.0


def has_click(session: Session) -> bool:
    return any(imp.clicked or imp.purchased for imp in session.impressions)


@dataclass
class Corpus:
    """Row indices for the items (catalog order) and the distinct non-blank query texts."""

    dataset: Dataset
    item_row: dict[int, int]
    item_texts: list[str]
    cold: np.ndarray  # [items] bool
    features: np.ndarray  # [items, F] raw, aisle.schema.ITEM_FEATURES order
    query_texts: list[str]
    query_row: dict[str, int]

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Corpus:
        items = dataset.items
        texts = sorted({q.text for q in dataset.queries} | {s.query for s in dataset.sessions})
        texts = [t for t in texts if t.strip()]
        return cls(
            dataset=dataset,
            item_row={item.item_id: row for row, item in enumerate(items)},
            item_texts=[item.text() for item in items],
            cold=np.array([item.cold_start for item in items], dtype=bool),
            features=np.array([item.features() for item in items], dtype=np.float32),
            query_texts=texts,
            query_row={text: row for row, text in enumerate(texts)},
        )

    @property
    def num_items(self) -> int:
        return len(self.item_texts)

    def rows(self, item_ids: tuple[int, ...] | list[int]) -> np.ndarray:
        return np.array([self.item_row[i] for i in item_ids], dtype=np.int64)

    def session_query_row(self, session: Session) -> int:
        return self.query_row[session.query] if session.query.strip() else NO_QUERY

    def sessions_with_clicks(self, split: str) -> list[Session]:
        sessions = [s for s in self.dataset.split(split) if has_click(s)]
        if not sessions:
            raise DataError(f"{self.dataset.manifest.name}: no {split} session has a click or purchase")
        return sessions


@dataclass
class RankingLists:
    """One ranking list per session: candidate item rows and gains, padded to the longest list."""

    query_rows: np.ndarray  # [S] query row, NO_QUERY for a feed
    histories: list[np.ndarray]  # [S] item rows, oldest first, at most max_history
    candidates: np.ndarray  # [S, N] item rows (0 on padding)
    gains: np.ndarray  # [S, N] float32
    valid: np.ndarray  # [S, N] bool

    def __len__(self) -> int:
        return len(self.query_rows)

    @property
    def is_search(self) -> np.ndarray:
        return self.query_rows != NO_QUERY

    @classmethod
    def build(
        cls,
        corpus: Corpus,
        sessions: list[Session],
        *,
        extra: int,
        pool: np.ndarray,
        rng: np.random.Generator,
        max_history: int,
        shuffle: bool,
    ) -> RankingLists:
        """Each session's impressions plus `extra` items drawn from `pool` (minus its impressions).

        shuffle: put each list in random order, so that ranking ties do not favour impressions.
        """
        lists: list[tuple[np.ndarray, np.ndarray]] = []
        for session in sessions:
            shown = corpus.rows([imp.item_id for imp in session.impressions])
            gains = np.array([impression_gain(i.clicked, i.purchased) for i in session.impressions], np.float32)
            available = np.setdiff1d(pool, shown)
            drawn = rng.choice(available, size=min(extra, len(available)), replace=False)
            rows = np.concatenate([shown, drawn])
            gains = np.concatenate([gains, np.zeros(len(drawn), np.float32)])
            order = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
            lists.append((rows[order], gains[order]))
        width = max(len(rows) for rows, _ in lists)
        candidates = np.zeros((len(lists), width), dtype=np.int64)
        gains = np.zeros((len(lists), width), dtype=np.float32)
        valid = np.zeros((len(lists), width), dtype=bool)
        for n, (rows, g) in enumerate(lists):
            candidates[n, : len(rows)] = rows
            gains[n, : len(rows)] = g
            valid[n, : len(rows)] = True
        return cls(
            query_rows=np.array([corpus.session_query_row(s) for s in sessions], dtype=np.int64),
            histories=[corpus.rows(s.history[-max_history:]) for s in sessions],
            candidates=candidates,
            gains=gains,
            valid=valid,
        )

    def subset(self, keep: np.ndarray) -> RankingLists:
        index = np.flatnonzero(keep)
        return RankingLists(
            self.query_rows[index],
            [self.histories[n] for n in index],
            self.candidates[index],
            self.gains[index],
            self.valid[index],
        )

    def session_vectors(
        self, query_embeddings: torch.Tensor, item_embeddings: torch.Tensor, decay: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[S, D] query embeddings (zero for feeds) and [S, D] user vectors, as served.

        The user vector is aisle.modeling.user.user_vector over the history's item embeddings,
        the function the item store runs at serving time.
        """
        dim = item_embeddings.shape[1]
        queries = torch.zeros(len(self), dim)
        search = torch.from_numpy(self.is_search)
        queries[search] = query_embeddings[torch.from_numpy(self.query_rows[self.is_search])]
        items = item_embeddings.numpy()
        users = np.stack([user_vector(items[h], decay) for h in self.histories]) if len(self) else np.zeros((0, dim))
        return queries, torch.from_numpy(users.astype(np.float32))
