"""`aisle data`: generate the synthetic shop, or convert the Amazon Shopping Queries (ESCI) files.

    aisle data --out DIR [--seed N] [--preset tiny|small|full]
    aisle data --esci-examples FILE --esci-products FILE --out DIR [--locale us] [--max-queries N]

Both write aisle's dataset format (aisle/data/format.py) to DIR.
"""

from __future__ import annotations

import argparse
import time

PRESET_NAMES = ("tiny", "small", "full")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="generate a synthetic shop dataset, or convert the Amazon ESCI files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="dataset directory to write (created if missing)")
    synthetic = parser.add_argument_group("synthetic shop")
    synthetic.add_argument("--seed", type=int, help="random seed: same seed, same bytes (default 0)")
    synthetic.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="size: tiny ~300 items (tests), small ~5k items / 20k sessions (default), full ~50k items / 200k sessions",
    )
    esci = parser.add_argument_group("Amazon Shopping Queries (ESCI) conversion")
    esci.add_argument("--esci-examples", metavar="FILE", help="shopping_queries_dataset_examples (.parquet or .csv)")
    esci.add_argument("--esci-products", metavar="FILE", help="shopping_queries_dataset_products (.parquet or .csv)")
    esci.add_argument("--locale", default="us", help="product_locale to keep (default us; 'all' keeps every locale)")
    esci.add_argument("--max-queries", type=int, default=None, help="keep only the first N queries (by query_id)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aisle.errors import DataError

    if Path(args.out).exists() and not Path(args.out).is_dir():  # fail before minutes of work
        raise DataError(f"{args.out}: exists and is not a directory")
    if args.esci_examples or args.esci_products:
        if not (args.esci_examples and args.esci_products):
            raise DataError("--esci-examples and --esci-products go together: give both files")
        if args.preset is not None or args.seed is not None:
            raise DataError("--preset and --seed shape the synthetic shop; an ESCI conversion takes neither")
        return _convert_esci(args)
    return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from aisle.data.format import write_dataset
    from aisle.data.generator import PRESETS, generate

    preset = args.preset or "small"
    seed = 0 if args.seed is None else args.seed
    start = time.perf_counter()
    dataset = generate(PRESETS[preset], seed, preset=preset, progress=preset != "tiny")
    manifest = write_dataset(args.out, dataset)
    _summarise(args.out, manifest.counts, time.perf_counter() - start)
    return 0


def _convert_esci(args: argparse.Namespace) -> int:
    from aisle.data.esci import EsciOptions, convert_esci

    start = time.perf_counter()
    locale = None if args.locale == "all" else args.locale
    options = EsciOptions(locale=locale, max_queries=args.max_queries)
    converted = convert_esci(args.esci_examples, args.esci_products, args.out, options)
    _summarise(args.out, converted.dataset.manifest.counts, time.perf_counter() - start)
    if converted.dropped_examples:
        print(f"dropped {converted.dropped_examples} examples whose product is missing or has no title")
    return 0


def _summarise(out: str, counts: dict[str, int], seconds: float) -> None:
    summary = ", ".join(f"{count} {name}" for name, count in counts.items())
    print(f"wrote {out}: {summary} in {seconds:.1f} s")
