"""Shop filters (category prefix, brands, price range, excluded ids) and the row mask they select.

Policy, declared here once:
- Names match exactly, after whitespace around the category separator is normalised
  ("Shoes>Running Shoes" = "Shoes > Running Shoes"). An unknown category or brand is an error that
  names the field and the value and suggests the closest known names (difflib): a typo ("Nkie")
  must not silently return nothing, and a filter that matches nothing is reserved for real,
  valid combinations (e.g. a brand outside the category), which give an empty result.
- Prices are raw catalog prices; bounds are inclusive; an item with an unknown (NaN) price fails
  any price bound. A bound must be a finite number >= 0, and min_price <= max_price.
- Excluded ids must be >= 0 and at most `max_exclude_ids` (the caller's declared limit). An id not
  in the catalog is ignored: excluding an item that is not offered changes nothing, and a shop's
  "already bought" list may name items since removed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np

from aisle.retrieval.attributes import ItemAttributes, parse_category
from aisle.retrieval.errors import FilterError

#: How many close names an unknown-name error suggests.
SUGGESTIONS = 3


@dataclass(frozen=True)
class Filters:
    """What a shopper or shop narrows results to. Every field's default means "no restriction".

    category: a category path prefix, "Shoes" or "Shoes > Running Shoes" ("" = None).
    brands: keep only these brands (empty: any brand).
    exclude_brands: drop these brands.
    min_price, max_price: inclusive raw price bounds.
    exclude_ids: item ids never to return (already bought, out of stock).
    """

    category: str | None = None
    brands: tuple[str, ...] = ()
    exclude_brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    exclude_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.category is not None:
            # "" is how a wire format says "no category": the same as None.
            object.__setattr__(self, "category", parse_category(self.category) or None)
        for name in ("brands", "exclude_brands", "exclude_ids"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):
                raise FilterError(name, value, "must be a sequence of values, not one string")
            object.__setattr__(self, name, tuple(value))
        for name in ("brands", "exclude_brands"):
            for brand in getattr(self, name):
                if not isinstance(brand, str):
                    raise FilterError(name, brand, "brand names are strings")
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise FilterError(name, value, "must be a number or None")
            if not math.isfinite(value):
                raise FilterError(name, value, "must be a finite number")
            if value < 0:
                raise FilterError(name, value, "must be >= 0 (prices are never negative)")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise FilterError("min_price", self.min_price, f"is above max_price={self.max_price!r}")
        for item_id in self.exclude_ids:
            if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)) or item_id < 0:
                raise FilterError("exclude_ids", item_id, "item ids are integers >= 0")

    @property
    def is_empty(self) -> bool:
        """True when the filters restrict nothing (retrieval then needs no mask)."""
        return self == Filters()


def _unknown(field: str, value: str, known: tuple[str, ...] | list[str], noun: str) -> FilterError:
    close = difflib.get_close_matches(value, known, n=SUGGESTIONS, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"none of the {len(known)} is close"
    return FilterError(field, value, f"no such {noun} in the catalog; {hint}")


def _brand_table(attributes: ItemAttributes, field: str, names: tuple[str, ...]) -> np.ndarray:
    """Boolean table over the brand vocabulary: True for the named brands (each must exist)."""
    code = {b: i for i, b in enumerate(attributes.brands)}
    table = np.zeros(len(attributes.brands), dtype=bool)
    for name in names:
        if name not in code:
            raise _unknown(field, name, attributes.brands, "brand")
        table[code[name]] = True
    return table


def filter_mask(filters: Filters, attributes: ItemAttributes, *, max_exclude_ids: int) -> np.ndarray | None:
    """Boolean [N] mask of the rows every filter allows, or None when the filters restrict nothing.

    Raises FilterError (naming field and value) for unknown names or too many excluded ids. Cost:
    one gather per name filter and one comparison per price bound over the rows, no per-item loop.
    """
    if len(filters.exclude_ids) > max_exclude_ids:
        raise FilterError("exclude_ids", f"{len(filters.exclude_ids)} ids", f"at most {max_exclude_ids} are allowed")
    if filters.is_empty:
        return None
    mask = np.ones(len(attributes), dtype=bool)
    if filters.category is not None:
        codes = attributes.prefixes.get(filters.category)
        if codes is None:
            raise _unknown("category", filters.category, sorted(attributes.prefixes), "category path")
        table = np.zeros(len(attributes.categories), dtype=bool)
        table[codes] = True
        mask &= table[attributes.category_codes]
    if filters.brands:
        mask &= _brand_table(attributes, "brands", filters.brands)[attributes.brand_codes]
    if filters.exclude_brands:
        mask &= ~_brand_table(attributes, "exclude_brands", filters.exclude_brands)[attributes.brand_codes]
    # NaN compares False, so an unknown price fails every bound.
    if filters.min_price is not None:
        mask &= attributes.prices >= filters.min_price
    if filters.max_price is not None:
        mask &= attributes.prices <= filters.max_price
    if filters.exclude_ids:
        mask[attributes.rows_of(np.asarray(filters.exclude_ids, dtype=np.int64))] = False
    return mask
