"""`aisle serve`: run a rendered repository on tritonserver under aisle's launcher.

A thin launcher: it prints the plain tritonserver command it runs (which works by itself with the
printed environment), waits until every model is loaded and warm, and on SIGINT/SIGTERM lets
Triton drain in-flight requests before exiting 0. Meanwhile its stub watchdog reloads any model
whose python stub dies, and `--health-port` answers GET /ready for probes. By default it runs the
python-only tritonserver of nvidia-pytriton (embedded target); `--tritonserver` runs another one,
e.g. the NGC image's, for every target (how deploy/ runs it).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from aisle.export.targets import servable_by_aisle_serve

    parser = subparsers.add_parser(
        "serve",
        help="serve a rendered repository on tritonserver (nvidia-pytriton's, or --tritonserver's)",
        description="Start tritonserver on 127.0.0.1, wait until ready, serve until SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        required=True,
        help=f"rendered repository: --target {'|'.join(servable_by_aisle_serve())}, or any target with --tritonserver",
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="tritonserver executable with its own backends (e.g. the NGC image's `tritonserver`, or the "
        "tensorrt target's start_tritonserver.sh); default: the python-only one of nvidia-pytriton",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="answer GET /ready on this port: 200 only while every ensemble is READY (default: off)",
    )
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--host", default="127.0.0.1", help="address of all endpoints (default loopback only)")
    parser.add_argument("--start-timeout-s", type=float, default=240.0, help="give up if not ready by then")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument(
        "--log-stdout",
        action="store_true",
        help="also print tritonserver's log on stdout (in a container: what `kubectl logs` shows); "
        "it is always written to the log file named at start",
    )
    parser.add_argument(
        "--response-cache-mb",
        type=int,
        default=0,
        help="Triton response cache size in MiB (default 0: off). With a cache, repeated queries skip the "
        "query encoder; each cached embedding costs about 2 KB",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aisle.export.repo_format import RepoManifest
    from aisle.export.targets import servable_by_aisle_serve, target_class
    from aisle.model_repository.errors import ServingError
    from aisle.model_repository.server import ServerConfig, serve_until_signalled

    target = target_class(RepoManifest.load(args.repo).target)
    if args.tritonserver is None and not target.SERVES_EMBEDDED:
        raise ServingError(
            f"{args.repo}: rendered for target={target.NAME}, which needs a tritonserver with the "
            f"{target.GRAPH_RUNTIME.backend} backend (e.g. the NGC image), not the python-only one of `aisle serve`; "
            f"pass that one as --tritonserver, or render with --target {'|'.join(servable_by_aisle_serve())}"
        )

    config = ServerConfig(
        repo=args.repo,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
        response_cache_mb=args.response_cache_mb,
        tritonserver=args.tritonserver,
        health_port=args.health_port,
        log_stdout=args.log_stdout,
    )
    serve_until_signalled(config, start_timeout_s=args.start_timeout_s)
    return 0
