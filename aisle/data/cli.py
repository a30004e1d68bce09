"""`aisle data`: placeholder until the generator lands."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate a synthetic shop dataset")
    parser.set_defaults(func=lambda args: 0)
