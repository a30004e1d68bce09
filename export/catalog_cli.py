"""`aisle export catalog`: embed a dataset's items with the exported item graph into a catalog file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(export_subparsers: argparse._SubParsersAction) -> None:
    """Add `catalog` to the `aisle export` group."""
    from aisle.export.catalog import CATALOG_BATCH

    parser = export_subparsers.add_parser(
        "catalog",
        help="embed every item text with the exported item graph (onnxruntime) into a catalog file",
        description="Compute the served catalog (item ids, item embeddings, raw features) with the item encoder's "
        "ONNX graph through onnxruntime, tokenised exactly as serving tokenises, in large same-bucket batches. "
        "Pass the file to `aisle export repo --catalog` to render repositories without embedding again.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (its item tokenizer)")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory whose items.jsonl is embedded")
    parser.add_argument(
        "--onnx-dir", type=Path, required=True, help="graphs exported from this checkpoint (`aisle export onnx`)"
    )
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) catalog directory to write")
    parser.add_argument(
        "--batch", type=int, default=CATALOG_BATCH, help=f"texts per item-graph run (default {CATALOG_BATCH})"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aisle.data.format import load_dataset
    from aisle.errors import ExportError
    from aisle.export.catalog import compute_catalog
    from aisle.export.graphs import graph_file
    from aisle.modeling.checkpoint import Manifest
    from aisle.schema import ITEM_ENCODER

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise ExportError(f"{args.out}: --out exists and is not an empty directory; choose a new catalog directory")
    schema = Manifest.load(args.checkpoint).schema()
    items = load_dataset(args.data).items
    started = time.perf_counter()
    catalog = compute_catalog(
        schema, args.checkpoint, args.onnx_dir / graph_file(ITEM_ENCODER), items, batch_size=args.batch, progress=True
    )
    seconds = time.perf_counter() - started
    catalog.save(args.out)
    print(
        f"wrote {args.out}: {len(catalog.item_ids)} items, dim {catalog.dim}, "
        f"{len(catalog.item_ids) / seconds:.1f} items/s ({seconds:.1f} s embedding)"
    )
    return 0
