"""`aisle export repo`: render a servable Triton model repository for one target."""

from __future__ import annotations

import argparse
from pathlib import Path

from aisle.bucket_flags import add_bucket_flags, limits_with_flags


def register(export_subparsers: argparse._SubParsersAction) -> None:
    """Add `repo` to the `aisle export` group; targets and their flags come from aisle.export.targets."""
    from aisle.export.catalog import CATALOG_BATCH
    from aisle.export.targets import add_target_arguments
    from aisle.retrieval.index import ANN_MIN_ITEMS
    from aisle.retrieval.index import KINDS as INDEX_KINDS

    parser = export_subparsers.add_parser(
        "repo",
        help="render a complete Triton model repository (configs, graphs, tokenizers, catalog)",
        description="Render a servable Triton model repository from a checkpoint and a dataset's catalog, "
        "for one target (--target). The catalog is embedded with the item graph unless --catalog gives one.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (aisle train)")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory whose items.jsonl is served")
    add_target_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) repository directory")
    parser.add_argument(
        "--onnx-dir", type=Path, help="graphs already exported from this checkpoint (rendering then loads no PyTorch)"
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        help="catalog precomputed by `aisle export catalog` for this checkpoint and --data (ids and features checked)",
    )
    parser.add_argument(
        "--catalog-batch",
        type=int,
        default=CATALOG_BATCH,
        help=f"texts per item-graph run when embedding the catalog (default {CATALOG_BATCH})",
    )
    parser.add_argument(
        "--index",
        choices=INDEX_KINDS,
        help="retrieval index for whole-catalog search (default: exact below "
        f"{ANN_MIN_ITEMS:,} items, ivf from there; measured by `python -m aisle.benchmarks.ann`)",
    )
    add_bucket_flags(parser, default_source="the checkpoint's")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aisle.export.repository import RepoSpec, render_repository
    from aisle.export.targets import target_from_args
    from aisle.modeling.checkpoint import Manifest

    spec = RepoSpec(
        args.checkpoint,
        args.data,
        args.out,
        target_from_args(args),
        args.onnx_dir,
        args.catalog_batch,
        catalog=args.catalog,
        limits=limits_with_flags(Manifest.load(args.checkpoint).limits, args),
        index_kind=args.index,
    )
    manifest = render_repository(spec)
    print(
        f"rendered {manifest.target} repository {args.out}: {manifest.catalog_items} catalog items, "
        f"embedding dim {manifest.embedding_dim}; a proxy or ingress in front should refuse request bodies over "
        f"{manifest.schema().limits.max_request_bytes} bytes (ServingLimits.max_request_bytes)"
    )
    return 0
