"""`aisle` command line: one subcommand per stage, each registered by its own module.

Command modules import only argparse at module level and load torch, onnxruntime or tritonclient
inside their handlers, so `aisle --help` is fast and the client-only install can run its commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aisle.errors import AisleError

#: Modules exposing `register(subparsers)`; each adds its subcommands and sets `func`.
COMMAND_MODULES = (
    "aisle.data.cli",
    "aisle.training.cli",
    "aisle.training.evaluate_cli",
    "aisle.export.cli",
    "aisle.export.live_catalog_cli",
    "aisle.client.cli",
    "aisle.benchmarks.cli",
    "aisle.model_repository.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aisle", description="E-commerce search and recommendation on NVIDIA Triton Inference Server."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AisleError as e:
        print(f"aisle {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
