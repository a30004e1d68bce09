"""`aisle bench`: run the benchmark suite and write its report (see aisle.benchmarks.suite).

Local, CPU (starts the embedded server on REPO):
    aisle bench --repo REPO --checkpoint CKPT --data DATA --duration 10 --out DIR
Remote, e.g. a GPU box serving the tensorrt target (baselines then run on this machine):
    aisle bench --url HOST:8001 --checkpoint CKPT --data DATA --duration 10 --out DIR
Full runs also measure the real peers (infinity-emb's ONNX and torch engines, sentence-transformers'
ONNX backend) on the checkpoint's query tower; their venv (--peers-venv, ~1.6 GB) is built on first use.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from aisle.benchmarks.peer_env import DEFAULT_VENV

    parser = subparsers.add_parser(
        "bench",
        help="benchmark every ensemble (perf_analyzer, SDK, baselines) and write a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="results directory (created)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load point (default 10)")
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--url", help="gRPC host:port of a running aisle server (e.g. a GPU box, tensorrt target)")
    server.add_argument("--repo", type=Path, help="model repository to serve with a local embedded tritonserver")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint the server was rendered from")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory the workloads are drawn from")
    parser.add_argument("--quick", action="store_true", help="concurrency 1-2 only, targets evaluated at those levels")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        help="also measure infinity-emb and sentence-transformers (default: on, off with --quick)",
    )
    parser.add_argument(
        "--peers-venv", type=Path, default=DEFAULT_VENV, help="peers venv, built on first use (default %(default)s)"
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from aisle.benchmarks.report import targets_table
    from aisle.benchmarks.suite import SuiteConfig, run_suite

    options = dict(
        out=args.out, checkpoint=args.checkpoint, data=args.data, duration_s=args.duration, repo=args.repo, url=args.url
    )
    options |= dict(peers_venv=args.peers_venv) | ({} if args.peers is None else dict(peers=args.peers))
    config = SuiteConfig.quick(**options) if args.quick else SuiteConfig(**options)
    results = run_suite(config)
    print(targets_table(results["targets"]))
    for target in results["targets"]:
        if target["note"]:
            print(f"\n{target['name']}: {target['note']}")
    print(f"\nreport: {args.out / 'summary.md'} (summary.json, results.json, CSV, PNG beside it)")
    return 0
