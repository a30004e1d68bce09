"""`aisle export repo`: render a servable Triton model repository for one target."""

from __future__ import annotations

import argparse
from pathlib import Path

TARGETS = ("tensorrt", "onnxruntime", "embedded")


def register(export_subparsers: argparse._SubParsersAction) -> None:
    """Add `repo` to the `aisle export` group."""
    parser = export_subparsers.add_parser(
        "repo",
        help="render a complete Triton model repository (configs, graphs, tokenizers, catalog)",
        description="Render a servable Triton model repository from a checkpoint and a dataset's catalog. "
        "embedded: for `aisle serve` (nvidia-pytriton's tritonserver, python backend only); "
        "onnxruntime / tensorrt: for the NGC tritonserver image.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (aisle train)")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory whose items.jsonl is served")
    parser.add_argument("--target", choices=TARGETS, required=True, help="where the repository will run")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) repository directory")
    parser.add_argument("--onnx-dir", type=Path, help="graphs already exported from this checkpoint")
    parser.add_argument("--gpu", action="store_true", help="onnxruntime target: run the graphs on a GPU")
    parser.add_argument(
        "--trt-accelerator",
        action="store_true",
        help="onnxruntime target with --gpu: onnxruntime's TensorRT execution provider, FP16",
    )
    parser.add_argument("--catalog-batch", type=int, default=64, help="texts per item-tower batch (default 64)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aisle.export.repository import RepoSpec, render_repository
    from aisle.export.triton_config import RenderOptions
    from aisle.schema import Target

    options = RenderOptions(Target(args.target), gpu=args.gpu, trt_accelerator=args.trt_accelerator)
    spec = RepoSpec(args.checkpoint, args.data, args.out, options, args.onnx_dir, args.catalog_batch)
    manifest = render_repository(spec)
    print(
        f"rendered {manifest.target} repository {args.out}: {manifest.catalog_items} catalog items, "
        f"embedding dim {manifest.embedding_dim}"
    )
    return 0
