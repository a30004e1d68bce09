"""`aisle export`: ONNX graphs behind a parity gate, TensorRT engines, and Triton repositories (repo_cli)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from aisle.export import catalog_cli, repo_cli
from aisle.export.graphs import GRAPH_MODELS, Variant
from aisle.export.tensorrt_build import DEFAULT_WORKSPACE_MIB
from aisle.export.tolerances import TOP_K, TOWER_GATES

INT8_GATE, FP16_GATE = TOWER_GATES[Variant.INT8], TOWER_GATES[Variant.FP16]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint: ONNX graphs (parity-gated), TensorRT engines, Triton repositories",
        description="Export a trained checkpoint for serving. `onnx` writes the graphs and proves them equal to "
        "PyTorch on the dataset's real texts; `check` re-runs that proof on existing graphs; `trt` builds "
        "TensorRT FP16 engines (or prints the trtexec commands); `catalog` embeds the items with the item graph; "
        "`repo` renders a Triton model repository.",
    )
    group = parser.add_subparsers(dest="export_command", required=True, metavar="EXPORT_COMMAND")
    _register_onnx(group)
    _register_check(group)
    _register_trt(group)
    catalog_cli.register(group)
    repo_cli.register(group)


def _register_onnx(group: argparse._SubParsersAction) -> None:
    parser = group.add_parser(
        "onnx",
        help="write fp32 ONNX graphs (+ optional variants) and gate them against PyTorch",
        description="Export the query tower, item tower and fusion head as ONNX (opset 17, dynamic batch and "
        "sequence axes), then run the parity gate: ONNX Runtime against PyTorch on the dataset's tokenised "
        "queries and item texts (batch 1/7/64, mixed lengths, every length bucket, texts cut at max length, "
        "single-token and blank texts) and on real fusion-head requests. The report is always written to "
        "OUT/parity_report.json; a failed gate exits with status 2 naming graph, output, value and tolerance.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (from `aisle train`)")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory whose texts the gate tokenises")
    parser.add_argument("--out", type=Path, required=True, help="directory for the graphs and parity_report.json")
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write CPU-optimised towers *.opt.onnx (onnxruntime transformer fusions; the plain graphs "
        "are kept) and gate them like the plain ones (default: on)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write dynamically quantised towers *.int8.onnx: faster on CPU, less exact; gated on min "
        f"cosine >= {INT8_GATE.min_cosine} and mean top-{TOP_K} retrieval overlap >= {INT8_GATE.mean_top_k_overlap}, "
        "never used unless a repository asks for them",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write mixed-precision towers *.fp16.onnx for GPU runtimes (LayerNorm, softmax and "
        f"reductions stay fp32); gated on min cosine >= {FP16_GATE.min_cosine} and mean top-{TOP_K} overlap >= "
        f"{FP16_GATE.mean_top_k_overlap} where onnxruntime CPU can run them, otherwise reported as skipped with "
        "the reason",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="measure each tower's seq/s at batch 1 and 32 (2 intra-op threads) on the dataset's texts for the "
        "plain, optimised and int8 graphs side by side (interleaved rounds), and record the ratios in the report",
    )
    parser.set_defaults(func=run_onnx)


def _register_check(group: argparse._SubParsersAction) -> None:
    parser = group.add_parser(
        "check",
        help="re-run the parity gate on graphs already exported",
        description="Gate every graph in ONNX_DIR (fp32 graphs and any *.opt/*.int8/*.fp16 towers present) "
        "against a checkpoint, e.g. after copying or editing graphs. Writes ONNX_DIR/parity_report.json.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint the graphs must reproduce")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory whose texts the gate tokenises")
    parser.add_argument("--onnx-dir", type=Path, required=True, help="directory written by `aisle export onnx`")
    parser.set_defaults(func=run_check)


def _register_trt(group: argparse._SubParsersAction) -> None:
    parser = group.add_parser(
        "trt",
        help="build TensorRT FP16 engines from exported graphs (or print the trtexec commands)",
        description="Build one TensorRT FP16 engine per graph with the TensorRT Python API: one optimisation "
        "profile per length bucket (encoders) or candidate range (head), batch up to the schema's max batch, "
        "LayerNorm/softmax/reduction layers pinned to fp32, a timing cache and a workspace limit. Each engine "
        "gets <model>.plan.json (TensorRT version, GPU, compute capability, source sha256, profiles); an "
        "engine whose metadata does not match this GPU, TensorRT and graph is rebuilt, otherwise kept. "
        "Needs TensorRT and a CUDA GPU, except with --trtexec-only.",
    )
    parser.add_argument("--onnx-dir", type=Path, required=True, help="directory written by `aisle export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="directory for <model>.plan and its metadata")
    parser.add_argument(
        "--models", nargs="+", choices=GRAPH_MODELS, default=list(GRAPH_MODELS), help="graphs to build (default: all)"
    )
    parser.add_argument(
        "--workspace-mib",
        type=int,
        default=DEFAULT_WORKSPACE_MIB,
        help=f"workspace memory pool limit in MiB: more lets TensorRT pick faster tactics "
        f"(default {DEFAULT_WORKSPACE_MIB})",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        help="kernel timing cache reused across builds on the same GPU/TensorRT (default OUT/timing.cache)",
    )
    parser.add_argument(
        "--opt-batch", type=int, help="batch size kernels are tuned for (default: the schema's max batch)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even engines whose metadata is current")
    parser.add_argument(
        "--trtexec-only",
        action="store_true",
        help="print the equivalent trtexec command per engine and exit (needs neither TensorRT nor a GPU)",
    )
    parser.add_argument("--trtexec", default="trtexec", help="trtexec path used in printed commands")
    parser.add_argument("--checkpoint", type=Path, help="with --data: gate the engines against this checkpoint")
    parser.add_argument("--data", type=Path, help="with --checkpoint: dataset whose texts the engine gate uses")
    parser.set_defaults(func=run_trt)


@contextlib.contextmanager
def _progress(steps: list[str]) -> Iterator:
    """A tqdm bar over named steps; the callback announces the step about to run."""
    from tqdm import tqdm

    with tqdm(total=len(steps), unit="step", leave=False) as bar:
        started: list[str] = []

        def step(name: str) -> None:
            if started:
                bar.update(1)
            started.append(name)
            bar.set_description(name)

        yield step


def run_onnx(args: argparse.Namespace) -> int:
    from aisle.export.onnx_export import OnnxExportOptions, progress_steps, run_onnx_export

    options = OnnxExportOptions(
        checkpoint=args.checkpoint,
        data=args.data,
        out=args.out,
        optimize=args.optimize,
        int8=args.int8,
        fp16=args.fp16,
        benchmark=args.benchmark,
    )
    with _progress(progress_steps(options)) as step:
        report, path = run_onnx_export(options, step)
    print("\n".join(report.summary()))
    report.raise_on_failure(path)
    print(f"parity gate passed; graphs and report in {path.parent}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from aisle.export.onnx_export import check_onnx_dir, gate_steps, present_variants

    variants = present_variants(args.onnx_dir) if args.onnx_dir.is_dir() else ()
    with _progress(gate_steps(variants)) as step:
        report, path = check_onnx_dir(args.checkpoint, args.data, args.onnx_dir, step)
    print("\n".join(report.summary()))
    report.raise_on_failure(path)
    print(f"parity gate passed; report in {path}")
    return 0


def run_trt(args: argparse.Namespace) -> int:
    from aisle.errors import ExportError
    from aisle.export.tensorrt_build import (
        TIMING_CACHE_FILE,
        EngineConfig,
        build_engines,
        gate_engines,
        plan_engines,
        render_trtexec,
    )

    if args.out.exists() and not args.out.is_dir():
        raise ExportError(f"{args.out}: output path exists and is not a directory")
    if (args.checkpoint is None) != (args.data is None):
        raise ExportError("--checkpoint and --data go together (they gate the engines against PyTorch)")
    config = EngineConfig(
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache or args.out / TIMING_CACHE_FILE,
        opt_batch=args.opt_batch,
    )
    plans = plan_engines(args.onnx_dir, args.out, config, tuple(args.models))
    if args.trtexec_only:
        for plan in plans:
            print(render_trtexec(plan, args.trtexec))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with _progress([f"engine {p.model}" for p in plans]) as step:
        results = build_engines(plans, force=args.force, progress=step)
    for result in results:
        print(("built " if result.decision.rebuild else "kept ") + result.decision.reason)
    if args.checkpoint:
        report = gate_engines(plans, args.checkpoint, args.data)
        path = report.write(args.out)
        print("\n".join(report.summary()))
        report.raise_on_failure(path)
    return 0
