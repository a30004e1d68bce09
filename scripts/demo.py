"""The last step of `make demo`: serve a rendered repository and shop with it over gRPC.

Starts the embedded tritonserver on free loopback ports, then runs what an e-commerce backend
does: a few searches over the whole catalog (retrieval and fusion-head ranking in one served call),
the same search narrowed by a category and a price filter, a recommendation for a user history,
and one cold-start ranking of items given as text. Prints titles, brands and prices, then stops
the server.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aisle.client import AisleClient, Filters, SearchResult
from aisle.data.format import Dataset, load_dataset
from aisle.model_repository.server import ServerConfig, TritonServer, free_port

SHOW = 5
T = TypeVar("T")


def show(title: str, result: SearchResult, data: Dataset, elapsed_ms: float) -> None:
    print(f"\n{title}  ({elapsed_ms:.1f} ms)")
    for rank, (item_id, score) in enumerate(zip(result.ids, result.scores), start=1):
        item = data.item(int(item_id))
        print(
            f"  {rank}. [{score:+.3f}] {item.title}  — {item.brand}, {' > '.join(item.category)}, "
            f"${item.price:.2f}, {item.rating:.1f}★"
        )


def timed(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """call(*args, **kwargs) and its wall time in ms."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return result, (time.perf_counter() - started) * 1e3


def demo(client: AisleClient, data: Dataset) -> None:
    searches = [s for s in data.split("test") if s.query and s.history][:3]
    for session in searches:
        result, ms = timed(client.search, session.query, user_history_ids=session.history, top_k=SHOW)
        show(
            f"search {session.query!r} for user {session.user_id} ({len(session.history)} past items)", result, data, ms
        )

    session = searches[0]
    top = data.item(int(client.search(session.query, top_k=1).ids[0]))
    category = " > ".join(top.category)
    filters = Filters(category=category, max_price=round(top.price * 1.5, 2))
    result, ms = timed(client.search, session.query, top_k=SHOW, filters=filters)
    show(f"search {session.query!r} in {category!r} up to ${filters.max_price:.2f}", result, data, ms)

    feed = next(s for s in data.split("test") if not s.query and len(s.history) >= 5)
    result, ms = timed(client.recommend, feed.history, top_k=SHOW, filters=Filters(exclude_ids=feed.history))
    recent = ", ".join(data.item(i).title for i in feed.history[-3:])
    show(f"recommendations for user {feed.user_id} (recently: {recent}; those excluded)", result, data, ms)

    cold = [item for item in data.items if item.cold_start][:20]
    ranked, ms = timed(
        client.rank_cold, session.query, [i.text() for i in cold], [i.features() for i in cold], top_k=SHOW
    )
    print(f"\ncold start: {len(cold)} new items given as text, ranked for {session.query!r}  ({ms:.1f} ms)")
    for rank, (index, score) in enumerate(zip(ranked.ids, ranked.scores), start=1):
        print(f"  {rank}. [{score:+.3f}] {cold[int(index)].title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="rendered embedded repository")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (for titles)")
    args = parser.parse_args()
    data = load_dataset(args.data)
    config = ServerConfig(args.repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    print(f"starting tritonserver on {config.host}:{config.grpc_port} (gRPC) ...")
    started = time.perf_counter()
    with TritonServer(config) as server:
        print(f"ready in {time.perf_counter() - started:.0f} s: {' '.join(server.display_command())}")
        with AisleClient(server.grpc_url) as client:
            demo(client, data)
    print("\nserver stopped")


if __name__ == "__main__":
    main()
