"""`aisle search`, `aisle recommend`, `aisle embed`: the SDK from a shell, printing a table or JSON.

Only argparse and the standard library are imported here; the client (and gRPC) load inside the
handlers, so `aisle --help` stays fast. Client errors are AisleErrors: `aisle` prints them and
exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import RankResult
    from .sync_client import AisleClient

DEFAULT_URL = "127.0.0.1:8001"
#: Values shown per embedding in table output (JSON output carries them all).
EMBEDDING_PREVIEW = 6


def id_list(text: str) -> list[int]:
    """ "1,2, 3" -> [1, 2, 3] (an argparse type: a bad value is a usage error)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from e


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("AISLE_URL", DEFAULT_URL),
        help="gRPC host:port of the aisle server (default: $AISLE_URL or %(default)s)",
    )
    group.add_argument("--timeout-s", type=float, default=30.0, help="deadline of the call (default: %(default)s)")
    group.add_argument("--root-certificates", metavar="PEM", help="use TLS, trusting this CA/self-signed certificate")
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `search`, `recommend` and `embed`."""
    parent = _connection_options()
    search = subparsers.add_parser(
        "search", parents=[parent], help="rank catalog items for a query (and a user history)"
    )
    search.add_argument("query", help="the search query")
    search.add_argument("--ids", type=id_list, required=True, help="candidate item ids, comma-separated")
    search.add_argument("--history", type=id_list, default=[], help="user history item ids, oldest first")
    search.add_argument("--top-k", type=int, help="show only the best K")
    search.set_defaults(func=search_command)

    recommend = subparsers.add_parser("recommend", parents=[parent], help="rank catalog items for a user history")
    recommend.add_argument("--history", type=id_list, required=True, help="user history item ids, oldest first")
    recommend.add_argument("--ids", type=id_list, required=True, help="candidate item ids, comma-separated")
    recommend.add_argument("--top-k", type=int, help="show only the best K")
    recommend.set_defaults(func=recommend_command)

    embed = subparsers.add_parser("embed", parents=[parent], help="embed texts with the query (or item) tower")
    embed.add_argument("texts", nargs="+", help="texts to embed")
    embed.add_argument("--item", action="store_true", help="use the item tower instead of the query tower")
    embed.set_defaults(func=embed_command)


def _client(args: argparse.Namespace) -> AisleClient:
    from pathlib import Path

    from .config import ClientConfig, TlsConfig
    from .sync_client import AisleClient

    tls = TlsConfig(root_certificates=Path(args.root_certificates)) if args.root_certificates else None
    return AisleClient(config=ClientConfig(url=args.url, timeout_s=args.timeout_s, tls=tls))


def _print_ranking(result: RankResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    print(f"{'rank':>4}  {'id':>10}  {'score':>10}")
    for position, (item, score) in enumerate(zip(result.ids, result.scores), start=1):
        print(f"{position:>4}  {int(item):>10}  {float(score):>10.4f}")


def search_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.rank(args.query, args.ids, args.history, top_k=args.top_k, timeout_s=args.timeout_s)
    _print_ranking(result, args.json)
    return 0


def recommend_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.recommend(args.history, args.ids, top_k=args.top_k, timeout_s=args.timeout_s)
    _print_ranking(result, args.json)
    return 0


def embed_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        embed = client.embed_items if args.item else client.embed_queries
        vectors = embed(args.texts, timeout_s=args.timeout_s)
    if args.json:
        print(json.dumps({"texts": args.texts, "embeddings": vectors.tolist()}))
        return 0
    import numpy as np

    for text, vector in zip(args.texts, vectors):
        preview = " ".join(f"{v:+.4f}" for v in vector[:EMBEDDING_PREVIEW])
        print(f"{text!r}: dim {len(vector)}, norm {np.linalg.norm(vector):.4f}, [{preview} ...]")
    return 0
