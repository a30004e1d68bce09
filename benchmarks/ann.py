"""Exact search vs faiss ANN over generated catalogs: build time, memory, QPS at batch 1, recall@100.

    python -m aisle.benchmarks.ann --out DIR [--sizes 10000 50000 200000 1000000]

Embeddings: a two-level Gaussian mixture in D dims, L2-normalised, shaped like a shop's item
embeddings (a category holds product lines; a line holds near-duplicates). Unit "category" centres
(one per ITEMS_PER_GROUP items), "line" centres around them (one per ITEMS_PER_LINE items, cosine
~0.7 to their category), items around their line (cosine ~0.8). A query's top-100 then spans its
own line and several neighbouring lines of its category, so an IVF search must probe several cells;
uniform random vectors would instead make every neighbour nearly equidistant (no structure for any
index), one flat mixture either that or trivial. Queries are fresh draws, never catalog rows.

Per size: exact search (aisle.retrieval.ExactIndex), and IVF-Flat at its default parameters
(aisle.retrieval.index.ivf_params) with the recall of fewer probes beside it; HNSW on the sizes up
to --hnsw-max-size for the choice between them. QPS is one query at a time (batch 1,
k = --k, the retrieval depth N); recall@100 is |ANN top-100 & exact top-100| / 100, averaged.
Memory is the process RSS growth while building (exact: none, it reads the catalog's matrix).
On the largest size, filtered search with random masks of falling selectivity: the filtered IVF
search vs exact search over the allowed rows (what sets EXACT_FALLBACK_ROWS).

Results: DIR/ann.json and DIR/ann.png. The machine may be shared: figures are as disturbed as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from aisle.retrieval.index import HNSW, ExactIndex, FaissIndex, IndexParams, exact_search_rows, ivf_params
from aisle.schema import DEFAULT_EMBEDDING_DIM

ITEMS_PER_GROUP = 2000
ITEMS_PER_LINE = 50
#: Noise norms: line centre around its category centre, item around its line centre.
LINE_NOISE = 1.0
ITEM_NOISE = 0.75
RECALL_AT = 100
#: How much faster IVF must answer to count as beating exact search: a margin over the noise of a
#: shared machine, and a price for what exact search gives for free (exact results, no build, no file).
CROSSOVER_SPEEDUP = 2.0
RESULT_JSON = "ann.json"
RESULT_PLOT = "ann.png"
#: Selectivities (share of rows a filter allows) tried on the largest catalog.
SELECTIVITIES = (0.5, 0.1, 0.03, 0.01, 0.003)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _around(centres: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`count` unit vectors, each a random centre plus isotropic Gaussian noise of norm ~`noise`."""
    dim = centres.shape[1]
    jitter = rng.standard_normal((count, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    return _unit(centres[rng.integers(len(centres), size=count)] + jitter)


def line_centres(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The mixture's product-line centres for an n-item catalog (see the module docstring)."""
    groups = _unit(rng.standard_normal((max(1, n // ITEMS_PER_GROUP), dim), dtype=np.float32))
    return _around(groups, max(1, n // ITEMS_PER_LINE), LINE_NOISE, rng)


def clustered_embeddings(n: int, lines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n unit item vectors around the given line centres, made in chunks to bound temporaries."""
    chunk = 100_000
    return np.concatenate([_around(lines, min(chunk, n - s), ITEM_NOISE, rng) for s in range(0, n, chunk)])


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found & truth| / |truth| per query, over the truth's real rows (not its padding)."""
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, np.count_nonzero(t >= 0)) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _qps(search, queries: np.ndarray, budget_s: float) -> float:
    """Queries per second, one query per call, over at most len(queries) calls or budget_s."""
    search(queries[:1])  # warm-up (first-touch pages, thread pools)
    done, start = 0, time.perf_counter()
    while done < len(queries) and time.perf_counter() - start < budget_s:
        search(queries[done : done + 1])
        done += 1
    return done / (time.perf_counter() - start)


def _ann_point(index: FaissIndex, queries: np.ndarray, truth: np.ndarray, k: int, budget_s: float) -> dict:
    rows, _ = index.search(queries, RECALL_AT)
    index.short_fallbacks = 0
    qps = _qps(lambda q: index.search(q, k), queries, budget_s)
    return {
        "recall_at_100": _recall(rows, truth),
        "qps_batch1": qps,
        "short_fallbacks_in_qps_run": index.short_fallbacks,
        "params": index.params.to_dict(),
    }


def _build(embeddings: np.ndarray, params: IndexParams) -> tuple[FaissIndex, dict]:
    rss, start = _rss_bytes(), time.perf_counter()
    index = FaissIndex.build(embeddings, params)
    return index, {"build_s": time.perf_counter() - start, "rss_delta_mb": (_rss_bytes() - rss) / 2**20}


def measure_size(
    n: int, *, dim: int, k: int, queries: int, budget_s: float, hnsw: bool, filtered: bool, seed: int
) -> dict:
    """Every figure for one catalog size (see the module docstring)."""
    rng = np.random.default_rng(seed)
    lines = line_centres(n, dim, rng)
    embeddings = clustered_embeddings(n, lines, rng)
    query_vectors = clustered_embeddings(queries, lines, rng)
    exact = ExactIndex(embeddings)
    # In slices: one [B, N] score matrix (and its argpartition) of a 1M catalog would take GBs.
    truth = np.concatenate([exact.search(query_vectors[i : i + 16], RECALL_AT)[0] for i in range(0, queries, 16)])
    result: dict = {
        "items": n,
        "embeddings_mb": embeddings.nbytes / 2**20,
        "exact": {
            "build_s": 0.0,
            "rss_delta_mb": 0.0,
            "qps_batch1": _qps(lambda q: exact.search(q, k), query_vectors, budget_s),
        },  # noqa: E501
    }
    base = ivf_params(n)
    index, built = _build(embeddings, base)
    # Recall of fewer probes than the default, to show the margin the default keeps. Recall comes
    # from the index itself: with lists holding fewer than k rows, the exact fallback answers
    # ("short"), which would flatter recall and cost exact-search time.
    sweep = []
    for nprobe in sorted({2**i for i in range(base.nprobe.bit_length())} | {base.nprobe}):
        index.params, index.short_fallbacks = replace(base, nprobe=nprobe), 0
        rows, _ = index.search(query_vectors, k)
        sweep.append(
            {"nprobe": nprobe, "recall_at_100": _recall(rows[:, :RECALL_AT], truth), "short": index.short_fallbacks}
        )
    result["ivf"] = {**built, **_ann_point(index, query_vectors, truth, k, budget_s), "nprobe_sweep": sweep}
    if hnsw:
        hnsw_index, built = _build(embeddings, IndexParams(kind=HNSW))
        result["hnsw"] = {**built, **_ann_point(hnsw_index, query_vectors, truth, k, budget_s)}
    if filtered:
        result["filtered"] = _filtered(index, embeddings, query_vectors, k, budget_s, rng)
    return result


def _filtered(
    index: FaissIndex, embeddings: np.ndarray, queries: np.ndarray, k: int, budget_s: float, rng: np.random.Generator
) -> list[dict]:
    """Filtered IVF search (no exact fallback by size) vs exact search over the allowed rows."""
    ann = FaissIndex(index.index, embeddings, replace(index.params, exact_fallback_rows=0))
    points = []
    for share in SELECTIVITIES:
        mask = rng.random(len(embeddings)) < share
        allowed = np.flatnonzero(mask)
        truth, _ = exact_search_rows(embeddings, queries, RECALL_AT, allowed)
        rows, _ = ann.search(queries, RECALL_AT, mask)
        points.append(
            {
                "selectivity": share,
                "allowed_rows": len(allowed),
                "ivf_recall_at_100": _recall(rows, truth),
                "ivf_qps_batch1": _qps(lambda q, m=mask: ann.search(q, k, m), queries, budget_s),
                # What the exact fallback costs per query: the mask's rows, gathered and scored.
                "exact_rows_qps_batch1": _qps(
                    lambda q, m=mask: exact_search_rows(embeddings, q, k, np.flatnonzero(m)), queries, budget_s
                ),
            }
        )
    return points


def crossover(results: list[dict], target_recall: float) -> int | None:
    """Smallest measured size from which IVF, meeting the recall target, is CROSSOVER_SPEEDUP x faster."""
    for r in results:
        faster = r["ivf"]["qps_batch1"] >= CROSSOVER_SPEEDUP * r["exact"]["qps_batch1"]
        if faster and r["ivf"]["recall_at_100"] >= target_recall:
            return int(r["items"])
    return None


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [r["items"] for r in results]
    for name in ("exact", "ivf", "hnsw"):
        points = [(r["items"], r[name]["qps_batch1"]) for r in results if name in r]
        if points:
            left.plot(*zip(*points), "-o", label=name)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("catalog items")
    left.set_ylabel("queries/s at batch 1")
    left.set_title("exact vs ANN at default parameters")
    left.grid(True, alpha=0.3)
    left.legend()
    last = results[-1]["filtered"]
    allowed = [p["allowed_rows"] for p in last]
    right.plot(allowed, [p["ivf_qps_batch1"] for p in last], "-o", label="ivf + IDSelector")
    right.plot(allowed, [p["exact_rows_qps_batch1"] for p in last], "-o", label="exact on the rows")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel(f"rows the filter allows (catalog {sizes[-1]:,})")
    right.set_ylabel("queries/s at batch 1")
    right.set_title("filtered search")
    right.grid(True, alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    out: Path,
    sizes: list[int],
    *,
    dim: int = DEFAULT_EMBEDDING_DIM,
    k: int = 300,
    queries: int = 200,
    target_recall: float = 0.95,
    budget_s: float = 5.0,
    hnsw_max_size: int = 50_000,
    seed: int = 0,
) -> dict:
    """Measure every size, write DIR/ann.json and DIR/ann.png, return the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    results = [
        measure_size(
            n,
            dim=dim,
            k=k,
            queries=queries,
            budget_s=budget_s,
            hnsw=n <= hnsw_max_size,
            filtered=n == max(sizes),
            seed=seed,
        )
        for n in tqdm(sorted(sizes), desc="catalog sizes")
    ]
    document = {
        "config": {
            "dim": dim,
            "k": k,
            "queries": queries,
            "target_recall": target_recall,
            "items_per_group": ITEMS_PER_GROUP,
            "items_per_line": ITEMS_PER_LINE,
            "line_noise": LINE_NOISE,
            "item_noise": ITEM_NOISE,
            "seed": seed,
        },
        "environment": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "crossover_items": crossover(results, target_recall),
        "results": results,
    }
    (out / RESULT_JSON).write_text(json.dumps(document, indent=2) + "\n")
    plot(results, out / RESULT_PLOT)
    return document


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000, 1_000_000])
    parser.add_argument("--k", type=int, default=300, help="results per query in the QPS runs (retrieval depth N)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--budget-s", type=float, default=5.0, help="time cap of one QPS measurement")
    parser.add_argument("--hnsw-max-size", type=int, default=50_000, help="build HNSW up to this size (slow)")
    args = parser.parse_args(argv)
    document = run(
        args.out,
        args.sizes,
        k=args.k,
        queries=args.queries,
        target_recall=args.target_recall,
        budget_s=args.budget_s,
        hnsw_max_size=args.hnsw_max_size,
    )
    for r in document["results"]:
        exact, ivf = r["exact"], r["ivf"]
        print(
            f"{r['items']:>9,} items: exact {exact['qps_batch1']:8.1f} q/s | ivf {ivf['qps_batch1']:8.1f} q/s "
            f"recall@100 {ivf['recall_at_100']:.3f} nprobe {ivf['params']['nprobe']}/{ivf['params']['nlist']} "
            f"build {ivf['build_s']:.1f} s +{ivf['rss_delta_mb']:.0f} MiB"
        )
    print(f"crossover (ivf {CROSSOVER_SPEEDUP:g}x faster than exact from): {document['crossover_items']}")


if __name__ == "__main__":
    main()
