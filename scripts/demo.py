"""The last step of `make demo`: serve a rendered repository and shop with it over gRPC.

Starts the embedded tritonserver on free loopback ports, then runs what an e-commerce backend
does: a few searches (retrieve 100 candidates by tower cosine over the served catalog embeddings,
then rank them with the fusion head through `rank`), one recommendation for a user history, and
one cold-start ranking of items given as text. Prints titles and scores, then stops the server.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from aisle.client import AisleClient, RankResult
from aisle.data.format import Dataset, load_dataset
from aisle.export.repo_format import Catalog, RepoManifest, catalog_dir
from aisle.model_repository.server import ServerConfig, TritonServer, free_port
from aisle.modeling.user import user_vector

RETRIEVE = 100
SHOW = 5


def retrieve(catalog: Catalog, vector: np.ndarray, k: int = RETRIEVE) -> np.ndarray:
    """The first stage: the k catalog items closest to `vector` (cosine; embeddings are unit)."""
    return catalog.item_ids[np.argsort(-(catalog.embeddings @ vector))[:k]]


def show(title: str, result: RankResult, data: Dataset, elapsed_ms: float) -> None:
    print(f"\n{title}  ({elapsed_ms:.1f} ms)")
    for rank, (item_id, score) in enumerate(zip(result.ids, result.scores), start=1):
        item = data.item(int(item_id))
        print(f"  {rank}. [{score:+.3f}] {item.title}  — {item.brand}, ${item.price:.2f}, {item.rating:.1f}★")


def demo(client: AisleClient, catalog: Catalog, data: Dataset, history_decay: float) -> None:
    searches = [s for s in data.split("test") if s.query and s.history][:3]
    for session in searches:
        query_vector = client.embed_queries([session.query])[0]
        started = time.perf_counter()
        result = client.rank(session.query, retrieve(catalog, query_vector), session.history, top_k=SHOW)
        elapsed = (time.perf_counter() - started) * 1e3
        show(
            f"search {session.query!r} for user {session.user_id} ({len(session.history)} past items)",
            result,
            data,
            elapsed,
        )

    feed = next(s for s in data.split("test") if not s.query and len(s.history) >= 5)
    rows = np.searchsorted(catalog.item_ids, np.asarray(feed.history))
    started = time.perf_counter()
    result = client.recommend(
        feed.history, retrieve(catalog, user_vector(catalog.embeddings[rows], history_decay)), top_k=SHOW
    )
    elapsed = (time.perf_counter() - started) * 1e3
    recent = ", ".join(data.item(i).title for i in feed.history[-3:])
    show(f"recommendations for user {feed.user_id} (recently: {recent})", result, data, elapsed)

    cold = [item for item in data.items if item.cold_start][:20]
    query = searches[0].query
    started = time.perf_counter()
    result = client.rank_cold(query, [item.text() for item in cold], [item.features() for item in cold], top_k=SHOW)
    elapsed = (time.perf_counter() - started) * 1e3
    print(f"\ncold start: {len(cold)} new items (not in the served catalog) ranked for {query!r}  ({elapsed:.1f} ms)")
    for rank, (index, score) in enumerate(zip(result.ids, result.scores), start=1):
        print(f"  {rank}. [{score:+.3f}] {cold[int(index)].title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="rendered embedded repository")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (for titles)")
    args = parser.parse_args()
    data = load_dataset(args.data)
    catalog = Catalog.load(catalog_dir(args.repo))
    config = ServerConfig(args.repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    print(f"starting tritonserver on {config.host}:{config.grpc_port} (gRPC) ...")
    started = time.perf_counter()
    with TritonServer(config) as server:
        print(f"ready in {time.perf_counter() - started:.0f} s: {' '.join(server.command())}")
        with AisleClient(server.grpc_url) as client:
            demo(client, catalog, data, RepoManifest.load(args.repo).limits.history_decay)
    print("\nserver stopped")


if __name__ == "__main__":
    main()
