"""`--query-buckets` / `--item-buckets`: one spelling of the length-bucket flags for every command
that sets them (`aisle train` records them in the checkpoint, `aisle export repo` overrides them)."""

from __future__ import annotations

import argparse

from aisle.errors import AisleError
from aisle.schema import ServingLimits, parse_buckets


def add_bucket_flags(parser: argparse.ArgumentParser, *, default_source: str) -> None:
    """Add both flags; `default_source` says where the buckets come from when a flag is omitted."""
    for flag, tower in (("--query-buckets", "query"), ("--item-buckets", "item")):
        parser.add_argument(
            flag,
            metavar="N,N,...",
            help=f"{tower} length buckets in tokens, ascending (default: {default_source}); "
            "the largest is the tower's maximum length",
        )


def limits_with_flags(limits: ServingLimits, args: argparse.Namespace) -> ServingLimits:
    """`limits` with the buckets the flags give; a malformed or unordered value names its flag."""
    buckets = {}
    for name in ("query_buckets", "item_buckets"):
        text = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if text is not None:
            try:
                buckets[name] = parse_buckets(text, flag)
            except ValueError as e:
                raise AisleError(str(e)) from e
    try:
        return limits.with_buckets(**buckets)
    except ValueError as e:
        raise AisleError(f"--query-buckets/--item-buckets: {e}") from e
