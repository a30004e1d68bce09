"""Retrieval indexes over the catalog's item-tower embeddings: exact search and a faiss ANN index.

Both answer `search(queries [B, D], k, mask=None) -> (rows [B, k] int64, scores [B, k] float32)`:
catalog rows best first, padded with PAD_ROW / PAD_SCORE when fewer than k rows are allowed.
Scores are inner products; the catalog's embeddings and the queries are L2-normalised, so they are
cosines. `mask` is a boolean [N] (one filter for the whole batch) or [B, N] (one per query) over
the catalog rows; a masked-out row is never returned and never takes one of the k slots.

Neither index copies the catalog's embeddings: ExactIndex reads the served catalog's matrix, and
the ANN index keeps a reference to it for its exact fallback. faiss keeps its own copy of the
vectors inside the index (the price of its memory layout); an index loaded from its file maps that
copy from the file rather than reading it (see FaissIndex.load).

Why IVF-Flat rather than HNSW (measured by `python -m aisle.benchmarks.ann`, see ANN_MIN_ITEMS;
at 50k items HNSW M=32 built in 30.0 s vs IVF 7.8 s, answered 314 vs 721 q/s at k=300, recall@100
0.997 vs 1.000, RSS +73 vs +38 MiB; at 10k 5.6 vs 1.9 s, 516 vs 544 q/s):
- build: IVF trains k-means on a sample and appends vectors to lists; HNSW inserts every vector
  into a graph, several times slower on 2 cores, and 1M items took IVF 141 s already;
- filtering: IVF with an IDSelector scans the probed lists and skips masked rows, and widening
  nprobe by N / allowed keeps recall@100 at 0.94-1.00 from 3k to 500k allowed rows of 1M (lowest,
  0.936, near 30k: hence the exact path up to EXACT_FALLBACK_ROWS); HNSW with a selector still walks
  masked nodes, a known cause of lost recall under selective filters (not measured here);
- memory: IVF-Flat adds 8 bytes per vector (ids) to the vectors; HNSW adds 2*M links per vector.
Both return exact inner products of the stored (flat) vectors, so their scores equal the exact
index's for the rows they find. HNSW stays available (`kind="hnsw"`) for comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aisle.retrieval.errors import RetrievalError

#: Row and score that fill the slots past the last allowed result.
PAD_ROW = -1
PAD_SCORE = float("-inf")

#: File name of a saved ANN index (faiss.write_index), beside the catalog.
INDEX_FILE = "index.faiss"

EXACT = "exact"
IVF = "ivf"
HNSW = "hnsw"
KINDS = (EXACT, IVF, HNSW)

#: Catalogs of at least this many items get the ANN index by default; below it exact search wins.
#: `python -m aisle.benchmarks.ann --out artifacts/ann-bf --sizes 2000 5000 10000 20000 50000`
#: (quiet 2-core machine; k=300, batch 1, warm caches, IVF at its defaults, recall@100 1.000 at
#: every size; exact = faiss's brute-force kernel): exact vs IVF queries/s 5569 vs 4153 at 2k,
#: 2976 vs 3542 at 5k, 571 vs 2652 at 10k, 279 vs 2100 at 20k, 118 vs 2039 at 50k. IVF is within
#: 1.2x of exact up to 5k and 4.6x faster from 10k: the threshold asks for 2x (benchmarks/ann.py
#: CROSSOVER_SPEEDUP), since exact search has exact results, no build and no index file for free.
#: (The numpy product the exact index used before crossed at the same size: 114 vs 544 q/s at 10k.)
ANN_MIN_ITEMS = 10_000

#: A filtered query whose mask allows at most this many rows searches those rows exactly. Same run,
#: 1M catalog, random masks, IVF widened by N / allowed: at 10k allowed rows exact 98 q/s vs IVF 92
#: (recall@100 0.969), at 30k exact 32 q/s vs IVF 143 but IVF recall only 0.936, at 100k IVF 189 q/s
#: at recall 1.000 vs exact 5.7. Recall decides: up to 30k rows, exact.
EXACT_FALLBACK_ROWS = 30_000

#: IVF cells per catalog: nlist ~ 2 * sqrt(N) as a power of two (2048 at 1M; faiss suggests 4-16
#: sqrt(N) for billion-scale sets, where scanning a list costs more than choosing it), with enough
#: training points per cell (faiss wants >= 39). Fewer cells keep k-means affordable on 2 cores.
IVF_CELLS_PER_SQRT_N = 2
IVF_TRAIN_POINTS_PER_CELL = 64
#: Catalog rows an IVF query scans (nprobe = this / rows per cell, at most nlist). Measured need
#: for recall@100 >= 0.95 (same run, its nprobe sweeps): 16 probes at 10k and 50k items (~1.0k and
#: 1.6k rows), 8 at 200k (1.6k rows: 0.980), 4 at 1M (2.0k rows: 0.985). 4096 rows keeps a 2x
#: margin for real embeddings, less clustered than generated ones (1M: 9 probes, recall 1.000).
IVF_SCAN_ROWS = 4096


@dataclass(frozen=True)
class IndexParams:
    """How the retrieval index is built and searched; recorded as a dict in aisle_repo.json.

    kind: "exact" (one matrix product), "ivf" (faiss IVF-Flat) or "hnsw" (faiss HNSW-Flat).
    nlist, nprobe: IVF cells, and cells probed per query (more: better recall, slower).
    hnsw_m, ef_construction, ef_search: HNSW links per node, and beam widths when building/searching.
    exact_fallback_rows: a filter allowing at most this many rows is searched exactly (ANN kinds).
    """

    kind: str = EXACT
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 256
    exact_fallback_rows: int = EXACT_FALLBACK_ROWS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RetrievalError(f"index kind={self.kind!r} is not one of {KINDS}")
        if self.kind == IVF and not 1 <= self.nprobe <= self.nlist:
            raise RetrievalError(f"ivf index: nprobe={self.nprobe} must be in 1..nlist={self.nlist}")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise RetrievalError(f"index {name}={getattr(self, name)} must be >= 1")
        if self.exact_fallback_rows < 0:
            raise RetrievalError(f"index exact_fallback_rows={self.exact_fallback_rows} must be >= 0")

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> IndexParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RetrievalError(f"index parameters: unknown field {unknown[0]!r} (known: {sorted(known)})")
        return cls(**raw)


def ivf_params(catalog_size: int) -> IndexParams:
    """IVF-Flat parameters for a catalog: cells from its size, probes to scan IVF_SCAN_ROWS rows."""
    target = IVF_CELLS_PER_SQRT_N * math.sqrt(max(catalog_size, 1))
    nlist = 2 ** round(math.log2(target))
    nlist = max(1, min(nlist, catalog_size // IVF_TRAIN_POINTS_PER_CELL))
    nprobe = min(nlist, math.ceil(IVF_SCAN_ROWS * nlist / max(catalog_size, 1)))
    return IndexParams(kind=IVF, nlist=nlist, nprobe=max(1, nprobe))


def choose_index(catalog_size: int, override: str | None = None) -> IndexParams:
    """The index for a catalog: exact below ANN_MIN_ITEMS, IVF from there; `override` names a kind."""
    kind = override or (IVF if catalog_size >= ANN_MIN_ITEMS else EXACT)
    if kind == EXACT:
        return IndexParams(kind=EXACT)
    if kind == IVF:
        return ivf_params(catalog_size)
    if kind == HNSW:
        return IndexParams(kind=HNSW)
    raise RetrievalError(f"index kind={kind!r} is not one of {KINDS}")


def load_faiss() -> Any:
    """faiss, typed loosely: its bundled stubs lack the SWIG conveniences used here
    (SearchParameters keywords, IDSelectorBitmap(array), swig_ptr)."""
    import faiss

    return faiss


class RetrievalIndex(Protocol):
    """What every index answers (see the module docstring); callers hold this, not a class."""

    params: IndexParams

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def _check_search(queries: np.ndarray, k: int, mask: np.ndarray | None, n: int, d: int) -> None:
    if queries.ndim != 2 or queries.shape[1] != d:
        raise RetrievalError(f"queries: expected shape [B, {d}], got {list(queries.shape)}")
    if k < 1:
        raise RetrievalError(f"k={k}: must be >= 1")
    if mask is not None and (mask.dtype != np.bool_ or mask.shape not in ((n,), (len(queries), n))):
        raise RetrievalError(f"mask: expected bool [{n}] or [{len(queries)}, {n}], got {mask.dtype} {list(mask.shape)}")


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` columns per row of `scores` [B, M], best first; -inf columns become padding.

    argpartition picks the k best in O(M), then only those k are sorted (ties: lower column first).
    """
    batch, m = scores.shape
    rows = np.full((batch, k), PAD_ROW, dtype=np.int64)
    values = np.full((batch, k), PAD_SCORE, dtype=np.float32)
    kk = min(k, m)
    if kk == 0:
        return rows, values
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < m else np.tile(np.arange(m), (batch, 1))
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    picked = np.take_along_axis(picked, order, axis=1)
    valid = np.isfinite(picked)
    rows[:, :kk] = np.where(valid, part, PAD_ROW)
    values[:, :kk] = np.where(valid, picked, PAD_SCORE)
    return rows, values


def exact_search_rows(
    embeddings: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the catalog rows listed in `allowed` (int array; None = every row)."""
    if allowed is None:
        return top_k(queries @ embeddings.T, k)
    cols, values = top_k(queries @ embeddings[allowed].T, k)
    # Padding columns are -1, which picks the PAD_ROW appended last (also when nothing is allowed).
    return np.append(allowed, PAD_ROW)[cols], values


def brute_force_search(
    embeddings: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over every row `mask` [N] allows (None: all), best first,
    ties to the lower row; PAD_ROW / PAD_SCORE past the last allowed row.

    faiss's brute-force kernel reads `embeddings` in place (a memory map stays shared), computes
    each query's dot products with SIMD and keeps its best k in a heap as it goes. A numpy product
    plus top-k cost more: BLAS packs the whole catalog before a multi-query product, and the full
    [B, N] score matrix is written and read again. On the small shop's 5,000 x 384 catalog with
    one thread, after a pass over 120 MB had evicted the caches (as the query encoder does between
    searches): 0.45 vs 0.70 ms for one query (the product alone), 1.03 vs 1.43-1.79 for five.
    """
    faiss = load_faiss()
    n, d = embeddings.shape
    batch = len(queries)
    kk = min(k, n)
    scores = np.empty((batch, kk), dtype=np.float32)
    rows = np.empty((batch, kk), dtype=np.int64)
    selector = None if mask is None else faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
    faiss.knn_inner_product(
        faiss.swig_ptr(queries), faiss.swig_ptr(embeddings), d, batch, n, kk,
        faiss.swig_ptr(scores), faiss.swig_ptr(rows), selector,
    )  # fmt: skip
    found = rows >= 0
    order = np.lexsort((np.where(found, rows, n), -np.where(found, scores, -np.inf)), axis=1)
    rows, scores, found = (np.take_along_axis(a, order, axis=1) for a in (rows, scores, found))
    padded_rows = np.full((batch, k), PAD_ROW, dtype=np.int64)
    padded_scores = np.full((batch, k), PAD_SCORE, dtype=np.float32)
    padded_rows[:, :kk] = np.where(found, rows, PAD_ROW)
    padded_scores[:, :kk] = np.where(found, scores, PAD_SCORE)
    return padded_rows, padded_scores


@dataclass
class ExactIndex:
    """Exact inner-product search over the whole catalog, filtered inside the scan."""

    embeddings: np.ndarray  # float32 [N, D], the catalog's own matrix (not copied)
    params: IndexParams = IndexParams(kind=EXACT)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        load_faiss()  # loaded now, so a caller limiting its threads after building the index covers it

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n, d = self.embeddings.shape
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _check_search(queries, k, mask, n, d)
        if mask is None or mask.ndim == 1:
            return brute_force_search(self.embeddings, queries, k, mask)
        # A selector applies to a whole call: one per query.
        results = [brute_force_search(self.embeddings, queries[i : i + 1], k, mask[i]) for i in range(len(queries))]
        return np.concatenate([r for r, _ in results]), np.concatenate([s for _, s in results])


class FaissIndex:
    """A faiss index (inner product) over the catalog rows, ids = row numbers: IVF-Flat or HNSW-Flat
    on the CPU, or a GPU copy of one (aisle.retrieval.gpu: IVF-Flat, or flat for the exact kind).

    Filtering happens inside faiss's search (an IDSelectorBitmap in SearchParameters), so masked
    rows never take a slot. Two exact fallbacks keep the filtered contract whatever the index's
    approximation: a mask allowing at most `exact_fallback_rows` rows is searched exactly, and a
    query for which the index found fewer than min(k, allowed) rows is searched exactly too. A
    filter widens the search by N / allowed (more IVF probes, a wider HNSW beam).
    """

    def __init__(self, index: Any, embeddings: np.ndarray, params: IndexParams) -> None:
        n, d = embeddings.shape
        if index.ntotal != n or index.d != d:
            raise RetrievalError(
                f"faiss index holds {index.ntotal} vectors of dim {index.d}, "
                f"the catalog {n} of dim {d}: rebuild the index for this catalog"
            )
        self.index = index
        self.embeddings = embeddings
        self.params = params
        #: Queries answered exactly because the index found fewer than min(k, allowed) rows: a
        #: steady rise means nprobe / ef_search are too small for the k asked (a serving metric).
        self.short_fallbacks = 0

    @classmethod
    def build(cls, embeddings: np.ndarray, params: IndexParams, *, seed: int = 0) -> FaissIndex:
        faiss = load_faiss()
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, d = embeddings.shape
        if params.kind == EXACT:  # a flat index: what a GPU copy of exact search is made from
            index = faiss.IndexFlatIP(d)
        elif params.kind == IVF:
            index = faiss.index_factory(d, f"IVF{params.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            sample = min(n, params.nlist * IVF_TRAIN_POINTS_PER_CELL)
            train = embeddings[np.random.default_rng(seed).choice(n, size=sample, replace=False)]
            index.cp.seed = seed
            index.train(train)
        else:
            index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.ef_construction
        index.add(embeddings)
        return cls(index, embeddings, params)

    def updated(self, embeddings: np.ndarray, previous_rows: np.ndarray) -> FaissIndex:
        """An IVF index over a changed catalog (`embeddings`) on this index's trained centroids.

        previous_rows[i] >= 0 says row i holds this index's row previous_rows[i] unchanged: it stays
        in the same inverted list, with no training and no assignment; the other rows (new or
        changed items) go to their nearest centroid. The result equals adding every row to an empty
        index with these centroids, which is what makes a live-catalog update of a large catalog
        cheap: 1,000,000 items with 1,000 new ones took 1.1 s against 44 s for that add and 82 s
        for a build that trains the centroids again (2 cores). The centroids stay those trained
        when the catalog was rendered (or last retrained), so a catalog that drifts far from it
        wants a retrain (`aisle catalog upsert --retrain-index`).
        """
        from faiss.contrib.ivf_tools import add_preassigned

        faiss = load_faiss()
        if self.params.kind != IVF:
            raise RetrievalError(f"only an IVF index keeps its lists across catalog versions, not {self.params.kind}")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        previous_rows = np.asarray(previous_rows, np.int64)
        if previous_rows.shape != (len(embeddings),) or previous_rows.max(initial=-1) >= self.index.ntotal:
            raise RetrievalError(
                f"previous_rows: expected {len(embeddings)} rows of this index ({self.index.ntotal}) or -1"
            )
        ivf = faiss.extract_index_ivf(self.index)
        carried = previous_rows >= 0
        assignment = np.empty(len(embeddings), np.int64)
        assignment[carried] = self._lists_of_rows(ivf)[previous_rows[carried]]
        if not carried.all():
            assignment[~carried] = ivf.quantizer.search(embeddings[~carried], 1)[1][:, 0]
        index = faiss.IndexIVFFlat(faiss.clone_index(ivf.quantizer), ivf.d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
        add_preassigned(index, embeddings, assignment)
        return FaissIndex(index, embeddings, self.params)

    @staticmethod
    def _lists_of_rows(ivf: Any) -> np.ndarray:
        """int64 [ntotal]: the inverted list that holds each row (an IVF index's ids are rows)."""
        faiss = load_faiss()
        lists = np.empty(ivf.ntotal, np.int64)
        for number in range(ivf.nlist):
            size = ivf.invlists.list_size(number)
            if size:
                lists[faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)] = number
        return lists

    def save(self, path: Path) -> None:
        faiss = load_faiss()
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, embeddings: np.ndarray, params: IndexParams) -> FaissIndex:
        faiss = load_faiss()
        if not Path(path).is_file():
            raise RetrievalError(f"{path}: index file not found")
        # Mapped, not read (IO_FLAG_MMAP_IFC: IVF lists and HNSW's flat storage are views of the
        # file): every catalog reader instance of a replica shares one copy in the page cache, and
        # a reader switching to a new version opens its index in milliseconds instead of copying it
        # (200,000 items: 8 ms and +1 MiB peak RSS against 222 ms and +296 MiB; searches equal and
        # as fast). A version's files are written once into a new directory and never rewritten in
        # place, so the mapping stays valid while a reader holds it.
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), embeddings, params)

    def _search_params(self, selector: object | None, widen: float) -> object:
        """faiss search parameters; `widen` (N / allowed rows) scales the probes a filter thins out."""
        faiss = load_faiss()
        if self.params.kind == EXACT:
            return faiss.SearchParameters(sel=selector)
        if self.params.kind == IVF:
            nprobe = min(self.params.nlist, math.ceil(self.params.nprobe * widen))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return faiss.SearchParametersHNSW(sel=selector, efSearch=math.ceil(self.params.ef_search * widen))

    def index_search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, allowed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The faiss index's own answer (`allowed` rows pass `mask`), without the exact fallbacks."""
        faiss = load_faiss()
        # A filter allowing a share s of the rows leaves ~s of each probed list: probing 1/s times
        # as many lists keeps the number of allowed candidates scanned about constant. Recall still
        # dips for mid-selective filters (their top-k reaches further out): see EXACT_FALLBACK_ROWS.
        selector = None if mask is None else faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
        search_params = self._search_params(selector, len(self.embeddings) / max(allowed, 1))
        scores, rows = self.index.search(queries, k, params=search_params)
        found = rows >= 0
        return np.where(found, rows, PAD_ROW).astype(np.int64), np.where(found, scores, PAD_SCORE).astype(np.float32)

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n, d = self.embeddings.shape
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _check_search(queries, k, mask, n, d)
        if mask is None:
            rows, scores = self.index_search(queries, k, None, n)
            return self._complete(queries, k, rows, scores, n)
        if mask.ndim == 1:
            return self._search_one_mask(queries, k, mask)
        # One faiss call per query: a selector applies to a whole call.
        results = [self._search_one_mask(queries[i : i + 1], k, mask[i]) for i in range(len(queries))]
        return np.concatenate([r for r, _ in results]), np.concatenate([s for _, s in results])

    def _search_one_mask(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        allowed = int(np.count_nonzero(mask))
        if allowed <= self.params.exact_fallback_rows:
            return exact_search_rows(self.embeddings, queries, k, np.flatnonzero(mask))
        rows, scores = self.index_search(queries, k, mask, allowed)
        return self._complete(queries, k, rows, scores, allowed, mask)

    def _complete(
        self,
        queries: np.ndarray,
        k: int,
        rows: np.ndarray,
        scores: np.ndarray,
        allowed: int,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-run exactly the queries for which the index found fewer than min(k, allowed) rows."""
        short = np.flatnonzero((rows >= 0).sum(axis=1) < min(k, allowed))
        if len(short):
            self.short_fallbacks += len(short)
            allowed_rows = None if mask is None else np.flatnonzero(mask)
            rows[short], scores[short] = exact_search_rows(self.embeddings, queries[short], k, allowed_rows)
        return rows, scores


def build_index(embeddings: np.ndarray, params: IndexParams) -> RetrievalIndex:
    """The index `params` describe, over the catalog's embeddings (exact needs no build)."""
    if params.kind == EXACT:
        return ExactIndex(embeddings, params)
    return FaissIndex.build(embeddings, params)


def load_index(path: Path, embeddings: np.ndarray, params: IndexParams) -> RetrievalIndex:
    """The index saved at `path` (FaissIndex.save) over these embeddings; exact reads no file."""
    if params.kind == EXACT:
        return ExactIndex(embeddings, params)
    return FaissIndex.load(path, embeddings, params)
