"""`aisle evaluate --data DIR --checkpoint CKPT [--out FILE.json] [--search-depth N] [--recommend-depth N]
[--max-sessions N]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _handle(args: argparse.Namespace) -> int:
    from aisle.training.catalog_eval import CatalogEvalConfig, run

    given = {
        "search_depth": args.search_depth,
        "recommend_depth": args.recommend_depth,
        "max_sessions": args.max_sessions,
        "base_model": args.base_model,
    }
    config = CatalogEvalConfig(**{name: value for name, value in given.items() if value is not None})
    run(args.data, args.checkpoint, args.out, config)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="whole-catalog search and recommendation quality against BM25, zero-shot and popularity",
        description="Rank the whole catalog for every held-out test session with a click: BM25, zero-shot "
        "MiniLM, BM25 re-ranked by zero-shot MiniLM, the fine-tuned towers and aisle (towers retrieval + fusion "
        "head) for searches; popularity, "
        "user-vector cosine and aisle for feeds. Prints nDCG@10 / Recall@100 and the quality goals.",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset directory the checkpoint was trained on")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (aisle train's output)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    for kind, sessions in (("search", "searches"), ("recommend", "feeds")):
        parser.add_argument(
            f"--{kind}-depth",
            type=int,
            default=None,
            help=f"stage-1 candidates the fusion head re-ranks for {sessions} (default: the checkpoint's "
            f"ServingLimits.{kind}_depth, as served; at least 100, the recall cut-off)",
        )
    parser.add_argument(
        "--max-sessions", type=int, default=None, help="only the first N test sessions with a click (default: all)"
    )
    parser.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="zero-shot model directory (default: the checkpoint manifest's base_model)",
    )
    parser.set_defaults(func=_handle)
