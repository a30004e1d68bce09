"""Per-item brand, category path and price as compact arrays, row-aligned with the served catalog.

Filters run at query time over the whole catalog, so they must cost a few vectorised passes, not a
Python loop per item. Brands and category paths are therefore stored as small integer codes per row
plus their vocabularies; a filter is turned into a boolean table over the vocabulary (tiny) and
gathered through the codes (one pass over the rows). Every category path prefix ("Shoes",
"Shoes > Running Shoes") is mapped once, at load, to the codes of the full paths under it.

Rows follow the catalog's order (item ids ascending, export/repo_format.py `Catalog`), so a row
number means the same item here, in the catalog's embeddings and in a retrieval index.

Saved as an npz with numpy only (`allow_pickle=False`): the python-backend models read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aisle.data.format import Item
from aisle.retrieval.errors import RetrievalError
from aisle.schema import ITEM_FEATURES

#: How a category path is written in filters and files: segments, root first, joined by this.
CATEGORY_SEPARATOR = " > "
#: Columns of the raw features (schema.ITEM_FEATURES order) the retrieval layer reads.
PRICE_COLUMN = ITEM_FEATURES.index("price")
POPULARITY_COLUMN = ITEM_FEATURES.index("popularity")
#: File name beside the catalog (REPO/item_store/1/catalog.npz).
ATTRIBUTES_FILE = "attributes.npz"
_ARRAYS = ("item_ids", "brand_codes", "brands", "category_codes", "categories", "prices")


def category_path(segments: Sequence[str]) -> str:
    """The canonical string of a category path: segments stripped, joined by CATEGORY_SEPARATOR."""
    return CATEGORY_SEPARATOR.join(s.strip() for s in segments)


def parse_category(text: str) -> str:
    """A user-typed path ("Shoes>Running Shoes ") in canonical form ("Shoes > Running Shoes")."""
    return category_path(text.split(CATEGORY_SEPARATOR.strip()))


@dataclass(frozen=True)
class ItemAttributes:
    """Filterable attributes of every catalog row.

    item_ids: int64 [N], strictly ascending: the catalog's row order.
    brand_codes: int32 [N], index into `brands`.
    brands: the brand vocabulary, sorted ("" is a brand like any other: items without one).
    category_codes: int32 [N], index into `categories` (each item's full path, canonical form).
    categories: the distinct full category paths, sorted.
    prices: float32 [N], raw price (schema.ITEM_FEATURES column `price`); NaN = unknown.
    """

    item_ids: np.ndarray
    brand_codes: np.ndarray
    brands: tuple[str, ...]
    category_codes: np.ndarray
    categories: tuple[str, ...]
    prices: np.ndarray
    #: Every path prefix -> codes of the full paths under it; derived from `categories`.
    prefixes: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.item_ids.ndim != 1 or any(len(a) != n for a in (self.brand_codes, self.category_codes, self.prices)):
            raise RetrievalError(
                f"item attributes: expected item_ids, brand_codes, category_codes, prices of one length; got "
                f"{self.item_ids.shape}, {self.brand_codes.shape}, {self.category_codes.shape}, {self.prices.shape}"
            )
        if n > 1 and not (np.diff(self.item_ids) > 0).all():
            raise RetrievalError("item attributes: item_ids must be strictly ascending (the catalog's row order)")
        for name, codes, vocabulary in (
            ("brand_codes", self.brand_codes, self.brands),
            ("category_codes", self.category_codes, self.categories),
        ):
            if n and (codes.min() < 0 or codes.max() >= len(vocabulary)):
                raise RetrievalError(f"item attributes: {name} out of range for a vocabulary of {len(vocabulary)}")
        under: dict[str, list[int]] = {}
        for code, path in enumerate(self.categories):
            segments = path.split(CATEGORY_SEPARATOR)
            for depth in range(1, len(segments) + 1):
                under.setdefault(CATEGORY_SEPARATOR.join(segments[:depth]), []).append(code)
        object.__setattr__(self, "prefixes", {p: np.asarray(c, dtype=np.int32) for p, c in under.items()})

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_items(cls, items: Sequence[Item]) -> ItemAttributes:
        """Attributes of a catalog's items, in item id order (the order of the served catalog)."""
        ordered = sorted(items, key=lambda item: item.item_id)
        brands = sorted({item.brand for item in ordered})
        categories = sorted({category_path(item.category) for item in ordered})
        brand_code = {b: i for i, b in enumerate(brands)}
        category_of = {c: i for i, c in enumerate(categories)}
        return cls(
            item_ids=np.asarray([item.item_id for item in ordered], dtype=np.int64),
            brand_codes=np.asarray([brand_code[item.brand] for item in ordered], dtype=np.int32),
            brands=tuple(brands),
            category_codes=np.asarray([category_of[category_path(item.category)] for item in ordered], dtype=np.int32),
            categories=tuple(categories),
            prices=np.asarray([item.features()[PRICE_COLUMN] for item in ordered], dtype=np.float32),
        )

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Rows of the given ids that are in the catalog (unknown ids are dropped), vectorised."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        rows = np.searchsorted(self.item_ids, ids)
        found = rows < len(self.item_ids)
        found[found] = self.item_ids[rows[found]] == ids[found]
        return rows[found]

    def save(self, path: Path) -> None:
        with Path(path).open("wb") as handle:
            np.savez(
                handle,
                item_ids=self.item_ids,
                brand_codes=self.brand_codes,
                brands=np.asarray(self.brands, dtype=np.str_),
                category_codes=self.category_codes,
                categories=np.asarray(self.categories, dtype=np.str_),
                prices=self.prices,
            )

    @classmethod
    def load(cls, path: Path) -> ItemAttributes:
        path = Path(path)
        if not path.is_file():
            raise RetrievalError(f"{path}: item attributes file not found")
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(_ARRAYS) - set(data.files))
            if missing:
                raise RetrievalError(f"{path}: missing array {missing[0]!r}")
            return cls(
                item_ids=data["item_ids"],
                brand_codes=data["brand_codes"],
                brands=tuple(str(b) for b in data["brands"]),
                category_codes=data["category_codes"],
                categories=tuple(str(c) for c in data["categories"]),
                prices=data["prices"],
            )
