"""`aisle search`, `aisle recommend`, `aisle embed`: the SDK from a shell, printing a table or JSON.

Only argparse and the standard library are imported here; the client (and gRPC) load inside the
handlers, so `aisle --help` stays fast. Client errors are AisleErrors: `aisle` prints them and
exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aisle.data.format import Item

    from .requests import Filters
    from .results import RankResult, SearchResult
    from .sync_client import AisleClient

DEFAULT_URL = "127.0.0.1:8001"
#: Values shown per embedding in table output (JSON output carries them all).
EMBEDDING_PREVIEW = 6


def id_list(text: str) -> list[int]:
    """ "1,2, 3" -> [1, 2, 3] (an argparse type: a bad value is a usage error)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected integer item ids (comma- or space-separated), got {text!r}; "
            "a search query goes before the id options (or after `--`)"
        ) from e


class ExtendIds(argparse.Action):
    """`--history 3,40 12 --history 7` -> [3, 40, 12, 7]: ids may come comma-separated, as separate
    words, or in repeated options, since shells and scripts produce all three."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        collected = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, collected + [i for ids in values or () for i in ids])


def add_ids_option(group: argparse._ActionsContainer, flag: str, **kwargs: Any) -> None:
    """An option taking item ids (see ExtendIds)."""
    group.add_argument(flag, type=id_list, nargs="+", action=ExtendIds, metavar="ID", **kwargs)


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


def _catalog_options() -> argparse.ArgumentParser:
    """Filters and output options shared by `search` and `recommend`."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("whole-catalog filters (not with --ids)")
    group.add_argument("--category", help='category path prefix, e.g. "Shoes > Running Shoes"')
    group.add_argument("--brand", action="append", default=[], help="only this brand (repeat for several)")
    group.add_argument("--exclude-brand", action="append", default=[], help="never this brand (repeatable)")
    group.add_argument("--min-price", type=float, help="lowest price")
    group.add_argument("--max-price", type=float, help="highest price")
    add_ids_option(group, "--exclude-ids", default=[], help="item ids never to return")
    parent.add_argument("--top-k", type=int, default=10, help="results to return (default: %(default)s)")
    add_ids_option(parent, "--ids", help="rank only these candidate ids instead of the whole catalog")
    parent.add_argument(
        "--data",
        metavar="PATH",
        action="append",
        default=[],
        help="a dataset directory or an items.jsonl file: show each item's title, brand, category, price; "
        "repeat it for items added later (e.g. those given to `aisle catalog upsert`: the last one wins)",
    )
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `search`, `recommend` and `embed`."""
    parent, catalog = _connection_options(), _catalog_options()
    search = subparsers.add_parser(
        "search", parents=[parent, catalog], help="search the whole catalog for a query (and a user history)"
    )
    search.add_argument("query", help="the search query")
    add_ids_option(search, "--history", default=[], help="user history item ids, oldest first")
    search.set_defaults(func=search_command)

    recommend = subparsers.add_parser(
        "recommend", parents=[parent, catalog], help="recommend from the whole catalog for a user history"
    )
    add_ids_option(
        recommend,
        "--history",
        default=[],
        help="user history item ids, oldest first (none: a new visitor's shelf, the most popular items "
        "the filters allow, ranked by the fusion head)",
    )
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


def _filters(args: argparse.Namespace) -> Filters:
    from .requests import Filters

    return Filters(
        category=args.category,
        brands=tuple(args.brand),
        exclude_brands=tuple(args.exclude_brand),
        min_price=args.min_price,
        max_price=args.max_price,
        exclude_ids=tuple(args.exclude_ids),
    )


def _item_table(paths: list[str]) -> dict[int, Item]:
    """Items by id from dataset directories or items files, later ones replacing earlier ones."""
    from pathlib import Path

    from aisle.data.format import ITEMS, read_items

    table: dict[int, Item] = {}
    for path in map(Path, paths):
        table.update((item.item_id, item) for item in read_items(path / ITEMS if path.is_dir() else path))
    return table


def _print_results(result: RankResult | SearchResult, items: dict[int, Item], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    header = f"{'rank':>4}  {'id':>8}  {'score':>8}"
    print(header + ("  title | brand | category | price" if items else ""))
    for position, (item_id, score) in enumerate(zip(result.ids, result.scores), start=1):
        line = f"{position:>4}  {int(item_id):>8}  {float(score):>8.4f}"
        item = items.get(int(item_id))
        if item is not None:
            line += f"  {item.title} | {item.brand} | {' > '.join(item.category)} | {item.price:.2f}"
        elif items:
            line += "  (not in --data: an item added since? give its items file as another --data)"
        print(line)


def _run(args: argparse.Namespace, query: str) -> int:
    items = _item_table(args.data)
    filters = _filters(args)
    if args.ids is not None and not filters.is_empty:
        from .errors import InvalidInputError

        raise InvalidInputError("--ids ranks the given candidates; filters apply to whole-catalog search only")
    with _client(args) as client:
        if args.ids is not None:
            result: RankResult | SearchResult = client.rank(
                query, args.ids, args.history, top_k=args.top_k, timeout_s=args.timeout_s
            )
        else:
            result = client.search(
                query, user_history_ids=args.history, top_k=args.top_k, filters=filters, timeout_s=args.timeout_s
            )
    _print_results(result, items, args.json)
    return 0


def search_command(args: argparse.Namespace) -> int:
    return _run(args, args.query)


def recommend_command(args: argparse.Namespace) -> int:
    return _run(args, "")


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
