"""`aisle serve`: run a rendered embedded repository on the nvidia-pytriton tritonserver.

A thin launcher: it prints the plain tritonserver command it runs (which works by itself with the
printed environment), waits until every model is loaded and warm, and on SIGINT/SIGTERM lets
Triton drain in-flight requests before exiting 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a rendered embedded repository with the tritonserver of nvidia-pytriton",
        description="Start tritonserver on 127.0.0.1, wait until ready, serve until SIGINT/SIGTERM.",
    )
    parser.add_argument("--repo", type=Path, required=True, help="repository rendered with --target embedded")
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
    from aisle.model_repository.errors import ServingError
    from aisle.model_repository.server import ServerConfig, serve_until_signalled
    from aisle.schema import Target

    target = RepoManifest.load(args.repo).target
    if target != Target.EMBEDDED.value:
        raise ServingError(
            f"{args.repo}: rendered for target={target}, which needs the NGC tritonserver image "
            f"(its onnxruntime/tensorrt backends); render with --target embedded for `aisle serve`"
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
