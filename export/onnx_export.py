"""`aisle export onnx` as a function: graphs, optional variants, the parity gate, the report.

Order matters for users: inputs are validated before minutes of export work, and the report is
written whether or not the gate passes, so a failure can be inspected. Callers then call
`report.raise_on_failure(path)` (the CLI prints the summary first), which raises ParityError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aisle.errors import ExportError
from aisle.export.graphs import Variant, export_onnx, graph_file
from aisle.export.parity import ParityReport
from aisle.export.speed import SpeedConfig
from aisle.schema import ITEM_ENCODER, QUERY_ENCODER

Progress = Callable[[str], None]


@dataclass(frozen=True)
class OnnxExportOptions:
    """What `aisle export onnx` builds.

    optimize: also write CPU-optimised `*.opt.onnx` towers (fused kernels; CPU serving).
    int8: also write dynamically quantised `*.int8.onnx` towers (faster on CPU, less exact; gated
        on cosine and ranking overlap).
    fp16: also write mixed-precision `*.fp16.onnx` towers for GPU targets (gated where a runtime
        can run them here).
    benchmark: measure each tower's plain, optimised (and int8) graphs' throughput side by side.
    """

    checkpoint: Path
    data: Path
    out: Path
    optimize: bool = True
    int8: bool = False
    fp16: bool = False
    benchmark: bool = False
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    @property
    def variants(self) -> tuple[Variant, ...]:
        chosen = {Variant.OPT: self.optimize, Variant.INT8: self.int8, Variant.FP16: self.fp16}
        return tuple(v for v, on in chosen.items() if on)


def progress_steps(options: OnnxExportOptions) -> list[str]:
    """The steps run_onnx_export announces through `progress`, in order (for a progress bar's total)."""
    return [
        "export fp32 graphs",
        *(f"build {v.value} towers" for v in options.variants),
        *gate_steps(options.variants),
        *(["benchmark"] if options.benchmark else []),
    ]


def gate_steps(variants: tuple[Variant, ...]) -> list[str]:
    """The steps gate_graphs announces."""
    return ["PyTorch references", *(f"parity {v.value}" for v in (Variant.FP32, *variants))]


def run_onnx_export(options: OnnxExportOptions, progress: Progress | None = None) -> tuple[ParityReport, Path]:
    """Export, gate and write the report; returns it and its path (check `report.passed`)."""
    from aisle.data.format import load_dataset
    from aisle.modeling.checkpoint import require_pieces

    step = progress or (lambda _: None)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: output path exists and is not a directory")
    require_pieces(options.checkpoint)
    dataset = load_dataset(options.data)

    step("export fp32 graphs")
    export_onnx(options.checkpoint, out)
    conversions = _build_variants(options, out, step)
    report = gate_graphs(options.checkpoint, dataset, options.data, out, options.variants, step)
    report.conversions = conversions
    if options.benchmark:
        step("benchmark")
        report.benchmark = benchmark_towers(options, out, dataset)
    return report, report.write(out)


def gate_graphs(
    checkpoint_dir: Path, dataset, data_dir: Path, graph_dir: Path, variants: tuple[Variant, ...], step: Progress
) -> ParityReport:
    """The parity gate over the fp32 graphs and the given tower variants in `graph_dir`."""
    from aisle.export.parity import ParityGate, new_report
    from aisle.modeling.loading import load_checkpoint

    step("PyTorch references")
    gate = ParityGate(load_checkpoint(checkpoint_dir), dataset)
    report = new_report(checkpoint_dir, data_dir)
    step(f"parity {Variant.FP32.value}")
    gate.check_towers(report, graph_dir, Variant.FP32)
    gate.check_head(report, graph_dir)
    for variant in variants:
        step(f"parity {variant.value}")
        gate.check_towers(report, graph_dir, variant)
    return report


def present_variants(graph_dir: Path) -> tuple[Variant, ...]:
    """The non-fp32 tower variants whose graphs are both in `graph_dir`."""
    return tuple(
        v
        for v in Variant
        if v is not Variant.FP32
        and all((graph_dir / graph_file(m, v)).is_file() for m in (QUERY_ENCODER, ITEM_ENCODER))
    )


def check_onnx_dir(
    checkpoint_dir: Path, data_dir: Path, graph_dir: Path, progress: Progress | None = None
) -> tuple[ParityReport, Path]:
    """Re-run the gate on graphs already in `graph_dir` (every variant present) against a checkpoint.

    Graphs copied, edited or exported elsewhere are checked the way a fresh export is.
    """
    from aisle.data.format import load_dataset
    from aisle.export.graphs import GRAPH_MODELS
    from aisle.modeling.checkpoint import require_pieces

    graph_dir = Path(graph_dir)
    for model in GRAPH_MODELS:
        if not (graph_dir / graph_file(model)).is_file():
            raise ExportError(f"{graph_dir}: missing {graph_file(model)} (export it with `aisle export onnx`)")
    require_pieces(checkpoint_dir)
    dataset = load_dataset(data_dir)
    report = gate_graphs(
        checkpoint_dir, dataset, data_dir, graph_dir, present_variants(graph_dir), progress or (lambda _: None)
    )
    return report, report.write(graph_dir)


def _build_variants(options: OnnxExportOptions, out: Path, step: Progress) -> dict[str, dict]:
    """Write the requested tower variants; returns what each conversion did, for the report."""
    conversions: dict[str, dict] = {}
    if options.optimize:
        from aisle.export.optimize import optimize_towers

        step(f"build {Variant.OPT.value} towers")
        optimized = optimize_towers(out, options.checkpoint)
        conversions[Variant.OPT.value] = {model: {"fused_ops": g.fusions} for model, g in optimized.items()}
    if options.int8:
        from aisle.export.quantize import PER_CHANNEL, quantize_towers

        step(f"build {Variant.INT8.value} towers")
        quantize_towers(out)
        conversions[Variant.INT8.value] = {"weights": "int8 symmetric", "per_channel": PER_CHANNEL}
    if options.fp16:
        from aisle.export.fp16 import FP32_OPS, convert_to_fp16, cpu_inserted_casts

        step(f"build {Variant.FP16.value} towers")
        conversions[Variant.FP16.value] = {
            "fp32_op_types": list(FP32_OPS),
            "parity_runtime": "onnxruntime CPU; it runs fp16 nodes lacking a CPU fp16 kernel in fp32 behind casts "
            "it inserts (cpu_inserted_casts), so the measured error understates a GPU's fp16 arithmetic",
        }
        for model in (QUERY_ENCODER, ITEM_ENCODER):
            result = convert_to_fp16(out / graph_file(model), out / graph_file(model, Variant.FP16))
            conversions[Variant.FP16.value][model] = {
                "fp32_nodes": result.fp32_nodes,
                "fp16_nodes": result.fp16_nodes,
                "cpu_inserted_casts": cpu_inserted_casts(result.path),
            }
    return conversions


def benchmark_towers(options: OnnxExportOptions, out: Path, dataset) -> dict:
    """Each tower's throughput per CPU variant against its plain graph, on the dataset's own texts
    (queries for the query tower, item texts for the item tower), padded as serving pads them."""
    import itertools

    from aisle.export.speed import compare_speed, speed_ratios
    from aisle.modeling.checkpoint import ITEM_ENCODER_DIR, QUERY_ENCODER_DIR, Manifest
    from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

    manifest = Manifest.load(options.checkpoint)
    towers = (
        (QUERY_ENCODER, QUERY_ENCODER_DIR, manifest.limits.query_buckets, [q.text for q in dataset.queries]),
        (ITEM_ENCODER, ITEM_ENCODER_DIR, manifest.limits.item_buckets, [item.text() for item in dataset.items]),
    )
    cpu_variants = [v for v in (Variant.FP32, Variant.OPT, Variant.INT8) if v is Variant.FP32 or v in options.variants]
    report: dict = {"settings": asdict(options.speed)}
    for model, directory, buckets, texts in towers:
        bucketing = Bucketing(buckets)
        tokenizer = load_tokenizer(Path(options.checkpoint) / directory, bucketing.max_length)
        texts = [t for t in texts if t.strip()]
        names = [t.name for t in manifest.schema().model(model).inputs]
        feeds = {
            batch: dict(zip(names, encode_batch(tokenizer, list(itertools.islice(texts, batch)), bucketing)))
            for batch in options.speed.batches
        }
        results = compare_speed({v.value: out / graph_file(model, v) for v in cpu_variants}, feeds, options.speed)
        report[model] = {
            "input_shapes": {f"batch_{b}": list(f[names[0]].shape) for b, f in feeds.items()},
            "seq_per_s": results,
            "ratio_vs_fp32": speed_ratios(results, Variant.FP32.value),
        }
    return report
