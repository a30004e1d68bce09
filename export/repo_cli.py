"""`aisle export repo`: render a servable Triton model repository (filled in by the serving work)."""

import argparse


def register(export_subparsers: argparse._SubParsersAction) -> None:
    """Add `repo` to the `aisle export` group."""
