"""`aisle catalog upsert|delete|rollback|status`: change (or show) the catalog a running server serves
(export/live_catalog.py).

With --url the new and changed items are embedded by that server's `embed_item` ensemble (a GPU
server does the work); the CLI is the one place that joins the export-side write with the client
SDK, which the export code itself never imports.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from aisle.export.repo_format import KEEP_VERSIONS

    parser = subparsers.add_parser(
        "catalog",
        help="live catalog: upsert or delete items, roll back, or show the status of a served repository",
        description="Write a new catalog version of a rendered repository and make it the served one. A running "
        "tritonserver switches at its next batch, without a restart and without failing requests.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("upsert", help="add new items and replace existing ones (items.jsonl format)")
    up.add_argument("--items", type=Path, required=True, help="items.jsonl file (the dataset's item format)")
    up.add_argument(
        "--url",
        help="HOST:PORT of a running server: embed with its embed_item (default: locally, with the "
        "repository's exported ONNX item tower)",
    )
    up.set_defaults(func=run_upsert)
    rm = actions.add_parser("delete", help="remove items by id")
    rm.add_argument("--ids", type=int, nargs="+", required=True, help="item ids to remove")
    rm.add_argument(
        "--forget",
        action="store_true",
        help="remove the ids for good, served or already deleted ones (default: a deleted item is kept "
        "for the user histories that name it, never a candidate or a result)",
    )
    rm.set_defaults(func=run_delete)
    back = actions.add_parser("rollback", help="serve the previous catalog version again")
    back.set_defaults(func=run_rollback)
    status = actions.add_parser(
        "status", help="which catalog version is served, the versions kept for rollback and what each holds"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of lines")
    status.set_defaults(func=run_status)
    for sub in (up, rm, back, status):
        sub.add_argument("--repo", type=Path, required=True, help="the rendered repository the server serves")
    for sub in (up, rm):
        sub.add_argument(
            "--keep",
            type=int,
            default=KEEP_VERSIONS,
            help=f"catalog versions kept on disk, the served one included (default {KEEP_VERSIONS})",
        )
        sub.add_argument(
            "--retrain-index",
            action="store_true",
            help="train the IVF index's centroids anew on the new catalog (default: keep the served "
            "version's centroids and the lists of unchanged items, far cheaper on a large catalog)",
        )


def remote_embedder(url: str):
    """The running server's embed_item, in chunks of REMOTE_BATCH texts."""
    import numpy as np

    from aisle.client import AisleClient
    from aisle.export.live_catalog import REMOTE_BATCH

    def embed(texts: Sequence[str]) -> np.ndarray:
        with AisleClient(url) as client:
            parts = [client.embed_items(list(texts[i : i + REMOTE_BATCH])) for i in range(0, len(texts), REMOTE_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return embed


def run_upsert(args: argparse.Namespace) -> int:
    from aisle.export.live_catalog import read_item_updates, upsert

    items = read_item_updates(args.items)
    embed = remote_embedder(args.url) if args.url else None
    report = upsert(args.repo, items, embed=embed, keep=args.keep, retrain_index=args.retrain_index, progress=True)
    print(report.summary())
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from aisle.export.live_catalog import delete

    report = delete(args.repo, args.ids, forget=args.forget, keep=args.keep, retrain_index=args.retrain_index)
    print(report.summary())
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from aisle.export.live_catalog import rollback

    print(rollback(args.repo).summary())
    return 0


def run_status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from aisle.export.live_catalog import CatalogStatus

    status = CatalogStatus.read(args.repo)
    print(json.dumps(dataclasses.asdict(status)) if args.json else status.summary())
    return 0
