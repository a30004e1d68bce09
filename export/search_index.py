"""What search reads beside the catalog, written at render time into the catalog directory: the
items' filterable attributes and, for large catalogs, the ANN index (aisle.retrieval); plus the
digest of each item's text, which `aisle catalog upsert` uses to re-embed only changed texts."""

from __future__ import annotations

import hashlib
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

#: Beside the catalog: uint64 [N] digests of the item texts (export/search_index.text_digests).
TEXT_DIGESTS_FILE = "text_digests.npy"


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
    np.save(directory / TEXT_DIGESTS_FILE, text_digests(items, catalog.item_ids), allow_pickle=False)
    params = choose_index(len(catalog.item_ids), index_kind)
    write_index(directory, catalog, params, progress=progress)
    return params


def write_index(
    directory: Path,
    catalog: Catalog,
    params: IndexParams,
    *,
    progress: bool,
    previous: tuple[FaissIndex, np.ndarray] | None = None,
) -> None:
    """The retrieval index `params` describe, saved beside the catalog (exact search needs no file).

    previous: (an earlier version's IVF index, the row of it each catalog row carries over unchanged
    or -1): the index keeps its centroids and lists instead of training anew (FaissIndex.updated).
    """
    embeddings = np.asarray(catalog.embeddings)
    action = "updating" if previous else "building"
    with tqdm(total=1, desc=f"{action} {params.kind} index", disable=not progress or params.kind == "exact") as bar:
        index = previous[0].updated(embeddings, previous[1]) if previous else build_index(embeddings, params)
        bar.update()
    if isinstance(index, FaissIndex):
        index.save(Path(directory) / INDEX_FILE)


def text_digest(text: str) -> int:
    """64-bit digest of the text the item tower embeds; 0 is reserved for "unknown"."""
    digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return digest or 1


def text_digests(items: Sequence[Item], item_ids: np.ndarray) -> np.ndarray:
    """uint64 [N]: the digest of each catalog row's item text, in the catalog's row order (ids ascending).

    `aisle catalog upsert` compares them with an update's texts: an item whose text is unchanged
    (only price, rating, reviews or popularity moved) keeps its embedding instead of being re-embedded.
    """
    by_id = {item.item_id: text_digest(item.text()) for item in items}
    return np.asarray([by_id[int(i)] for i in item_ids], dtype=np.uint64)
