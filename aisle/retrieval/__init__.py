"""Stage 1 of search and recommendation: find the best N catalog rows for a request, under filters.

numpy and faiss only (no torch, no tritonclient): the served python models, the export step and
the offline evaluation all import it, so one implementation answers in all three places.

    attributes.py  ItemAttributes: brand, category path, price per catalog row (npz beside the catalog)
    filters.py     Filters (validated) -> boolean row mask
    index.py       ExactIndex, FaissIndex (IVF / HNSW / a flat GPU copy), IndexParams, choose_index
    gpu.py         place_index: the index on a GPU where faiss has one, routed so filters stay exact
    query.py       has_query, retrieval_vectors (query + user blend), Popularity (fallback with neither)
"""

from aisle.retrieval.attributes import ATTRIBUTES_FILE, ItemAttributes
from aisle.retrieval.errors import FilterError, RetrievalError
from aisle.retrieval.filters import Filters, filter_mask
from aisle.retrieval.index import (
    ANN_MIN_ITEMS,
    INDEX_FILE,
    PAD_ROW,
    PAD_SCORE,
    ExactIndex,
    FaissIndex,
    IndexParams,
    build_index,
    choose_index,
    load_index,
)
from aisle.retrieval.query import USER_WEIGHT, Popularity, has_query, retrieval_vectors

__all__ = [
    "ANN_MIN_ITEMS",
    "ATTRIBUTES_FILE",
    "INDEX_FILE",
    "PAD_ROW",
    "PAD_SCORE",
    "USER_WEIGHT",
    "ExactIndex",
    "FaissIndex",
    "FilterError",
    "Filters",
    "IndexParams",
    "ItemAttributes",
    "Popularity",
    "RetrievalError",
    "build_index",
    "choose_index",
    "filter_mask",
    "load_index",
    "has_query",
    "retrieval_vectors",
]
