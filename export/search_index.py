"""What search reads beside the catalog, written at render time into the catalog directory: the
items' filterable attributes and, for large catalogs, the ANN index (aisle.retrieval)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from aisle.data.format import Item
from aisle.errors import ExportError
from aisle.export.repo_format import Catalog
from aisle.retrieval import (
    ATTRIBUTES_FILE,
    INDEX_FILE,
    FaissIndex,
    IndexParams,
    ItemAttributes,
    build_index,
    choose_index,
)


def write_search_files(
    directory: Path, catalog: Catalog, items: Sequence[Item], *, index_kind: str | None = None, progress: bool = True
) -> IndexParams:
    """Attributes of `items` and the index `choose_index` picks for the catalog's size (or `index_kind`).

    Returns the index parameters, which the repository manifest records.
    """
    directory = Path(directory)
    attributes = ItemAttributes.from_items(items)
    if not np.array_equal(attributes.item_ids, catalog.item_ids):
        raise ExportError(f"{directory}: the items and the catalog hold different item ids")
    attributes.save(directory / ATTRIBUTES_FILE)
    params = choose_index(len(catalog.item_ids), index_kind)
    with tqdm(total=1, desc=f"building {params.kind} index", disable=not progress or params.kind == "exact") as bar:
        index = build_index(np.asarray(catalog.embeddings), params)
        bar.update()
    if isinstance(index, FaissIndex):
        index.save(directory / INDEX_FILE)
    return params
