"""`aisle serve`: run a rendered embedded repository on the nvidia-pytriton tritonserver.

A thin launcher: it prints the plain tritonserver command it runs (which works by itself with the
printed environment), waits until every model is loaded and warm, and on SIGINT/SIGTERM lets
Triton drain in-flight requests before exiting 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from aisle.export.targets import servable_by_aisle_serve

    parser = subparsers.add_parser(
        "serve",
        help="serve a rendered embedded repository with the tritonserver of nvidia-pytriton",
        description="Start tritonserver on 127.0.0.1, wait until ready, serve until SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        required=True,
        help=f"repository rendered with --target {'|'.join(servable_by_aisle_serve())}",
    )
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--host", default="127.0.0.1", help="address of all endpoints (default loopback only)")
    parser.add_argument("--start-timeout-s", type=float, default=240.0, help="give up if not ready by then")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
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
    if not target.SERVES_EMBEDDED:
        raise ServingError(
            f"{args.repo}: rendered for target={target.NAME}, which needs a tritonserver with the "
            f"{target.GRAPH_RUNTIME.backend} backend (e.g. the NGC image), not the python-only one of `aisle serve`; "
            f"render with --target {'|'.join(servable_by_aisle_serve())} for `aisle serve`"
        )

    config = ServerConfig(
        repo=args.repo,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
        response_cache_mb=args.response_cache_mb,
    )
    serve_until_signalled(config, start_timeout_s=args.start_timeout_s)
    return 0
