"""TensorRT FP16 engines from the fp32 ONNX graphs, with metadata that decides rebuild vs load.

Written to TensorRT 10's Python API (the NGC tritonserver images carry it); the same build is also
rendered as a `trtexec` command line for container start-up scripts. What the two share, and what
is unit-tested without TensorRT, is declared here once: the optimisation profiles (derived from
the schema's batch limits and the manifest's length buckets), the layers kept in fp32, the
workspace limit and the timing cache.

Why one profile per length bucket: the tokenizer pads every request to exactly one bucket, so each
sequence length TensorRT will ever see is known; a profile per bucket lets it tune kernels for that
exact length instead of one compromise over 8..128. Triton's TensorRT backend runs each batch with
a profile whose ranges hold its shapes.

Why fp32 layers in an FP16 engine: LayerNorm's variance and softmax over masked positions lose
accuracy (or overflow) in fp16; the layers built from fp16.FP32_OPS are pinned to fp32 with
OBEY_PRECISION_CONSTRAINTS, the same rule the fp16 ONNX graphs follow.

Why metadata: a plan only runs on the GPU architecture and TensorRT version it was built with, and
is only valid for the graph it was built from. A stale or foreign engine is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aisle.errors import ExportError
from aisle.export.graphs import GRAPH_MODELS, Variant, graph_file
from aisle.export.tolerances import FP16_HEAD_GATE, TOWER_GATES
from aisle.schema import FUSION_HEAD, ITEM_ENCODER, QUERY_ENCODER, ModelDecl, Role, Schema

if TYPE_CHECKING:
    from aisle.export.parity import ParityReport

ENGINE_SUFFIX = ".plan"
METADATA_SUFFIX = ".plan.json"
TIMING_CACHE_FILE = "timing.cache"
#: Candidates per head request TensorRT tunes for: a typical re-ranking depth.
OPT_CANDIDATES = 100
DEFAULT_WORKSPACE_MIB = 4096


def engine_file(model_name: str) -> str:
    return model_name + ENGINE_SUFFIX


def metadata_file(model_name: str) -> str:
    return model_name + METADATA_SUFFIX


# --- what to build (no TensorRT needed) ----------------------------------------------------------


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input tensor name -> its min/opt/max shape."""

    shapes: dict[str, ShapeRange]

    def as_dict(self) -> dict[str, dict[str, list[int]]]:
        return {name: {k: list(v) for k, v in asdict(r).items()} for name, r in self.shapes.items()}


def derive_profiles(schema: Schema, model: str, *, opt_batch: int | None = None) -> list[Profile]:
    """Profiles of one model from the schema.

    Encoders: one profile per length bucket of their tower (sequence fixed to the bucket), batch
    1..max_batch_size. Fusion head: one profile, candidates 1..max_candidates tuned at
    OPT_CANDIDATES. Kernels are tuned at `opt_batch` (default the max batch: under load the
    dynamic batcher fills batches, which is where throughput matters).
    """
    decl = schema.model(model)
    max_batch = decl.batching.max_batch_size
    batch = (1, min(opt_batch or max_batch, max_batch), max_batch)
    if decl.role is Role.ENCODER:
        variable_ranges = [(b, b, b) for b in schema.encoder_buckets(model)]
    elif decl.role is Role.FUSION_HEAD:
        variable_ranges = [(1, min(OPT_CANDIDATES, schema.limits.max_candidates), schema.limits.max_candidates)]
    else:
        raise ExportError(f"model {model!r} (role {decl.role.value}) has no TensorRT engine")
    return [_profile(decl, batch, variable) for variable in variable_ranges]


def _profile(decl: ModelDecl, batch: tuple[int, int, int], variable: tuple[int, int, int]) -> Profile:
    shapes = {}
    for tensor in decl.inputs:
        per_point = [(batch[i], *(variable[i] if d == -1 else d for d in tensor.dims)) for i in range(3)]
        shapes[tensor.name] = ShapeRange(*per_point)
    return Profile(shapes)


@dataclass(frozen=True)
class EngineConfig:
    """Builder settings.

    workspace_mib: scratch memory TensorRT's tactics may use; more allows faster kernels, at the
        cost of GPU memory held while the engine runs.
    timing_cache: kernel timings reused across builds (on the same GPU/TensorRT), making rebuilds
        take seconds instead of minutes.
    opt_batch: batch size kernels are tuned for (None: the schema's max batch).
    """

    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    opt_batch: int | None = None
    fp16: bool = True


@dataclass(frozen=True)
class EnginePlan:
    """One engine to build: source graph, destination, profiles and fp32 layers."""

    model: str
    onnx: Path
    engine: Path
    profiles: tuple[Profile, ...]
    fp32_layers: tuple[str, ...]
    config: EngineConfig

    @property
    def metadata_path(self) -> Path:
        return self.engine.with_name(metadata_file(self.model))

    def build_settings(self) -> dict[str, Any]:
        """What the engine depends on besides the environment and the source graph."""
        return {
            "fp16": self.config.fp16,
            "profiles": [p.as_dict() for p in self.profiles],
            "fp32_layers": list(self.fp32_layers),
            "workspace_mib": self.config.workspace_mib,
        }


def plan_engines(
    onnx_dir: Path, out_dir: Path, config: EngineConfig, models: tuple[str, ...] = GRAPH_MODELS
) -> list[EnginePlan]:
    """Plans for the fp32 graphs in `onnx_dir` (written by `aisle export onnx`, manifest included)."""
    import onnx

    from aisle.export.fp16 import fp32_node_names
    from aisle.modeling.checkpoint import Manifest

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    schema = Manifest.load(onnx_dir).schema()
    plans = []
    for model in models:
        source = onnx_dir / graph_file(model)
        if not source.is_file():
            raise ExportError(f"{source}: graph not found (export it with `aisle export onnx`)")
        fp32 = tuple(fp32_node_names(onnx.load(str(source), load_external_data=False))) if config.fp16 else ()
        profiles = tuple(derive_profiles(schema, model, opt_batch=config.opt_batch))
        plans.append(EnginePlan(model, source, out_dir / engine_file(model), profiles, fp32, config))
    return plans


def _shape_spec(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes.items())


def trtexec_command(plan: EnginePlan, trtexec: str = "trtexec") -> list[str]:
    """The trtexec (TensorRT 10) arguments that build the same engine as build_engine."""
    args = [trtexec, f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}", "--skipInference"]
    if plan.config.fp16:
        args.append("--fp16")
    args.append(f"--memPoolSize=workspace:{plan.config.workspace_mib}")
    if plan.config.timing_cache:
        args.append(f"--timingCacheFile={plan.config.timing_cache}")
    for index, profile in enumerate(plan.profiles):
        if len(plan.profiles) > 1:
            args.append(f"--profile={index}")
        for point in ("min", "opt", "max"):
            spec = _shape_spec({name: getattr(r, point) for name, r in profile.shapes.items()})
            args.append(f"--{point}Shapes={spec}")
    if plan.fp32_layers:
        layers = ",".join(f"{name}:fp32" for name in plan.fp32_layers)
        args += ["--precisionConstraints=obey", f"--layerPrecisions={layers}", f"--layerOutputTypes={layers}"]
    return args


def render_trtexec(plan: EnginePlan, trtexec: str = "trtexec") -> str:
    return shlex.join(trtexec_command(plan, trtexec))


# --- rebuild or load (no TensorRT needed) --------------------------------------------------------


@dataclass(frozen=True)
class BuildEnvironment:
    """What a plan is tied to besides its source graph."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass
class EngineMetadata:
    """Written beside each engine as `<model>.plan.json`."""

    model: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    settings: dict[str, Any]
    fp32_layers_matched: int = 0
    build_s: float = 0.0
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> EngineMetadata | None:
        """The metadata at `path`, or None when it is missing or unreadable (either means rebuild)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Decision:
    rebuild: bool
    reason: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_sha256(onnx_path: Path) -> str:
    """sha256 of the graph file and, for external-data graphs, of its weights file too."""
    from aisle.export.graphs import external_data_file

    digest = sha256_file(onnx_path)
    sidecar = onnx_path.with_name(external_data_file(onnx_path))
    return hashlib.sha256((digest + sha256_file(sidecar)).encode()).hexdigest() if sidecar.exists() else digest


def decide(plan: EnginePlan, environment: BuildEnvironment, onnx_sha256: str) -> Decision:
    """Rebuild unless the engine exists and its metadata matches this environment, graph and settings."""
    if not plan.engine.is_file():
        return Decision(True, f"no engine at {plan.engine}")
    meta = EngineMetadata.read(plan.metadata_path)
    if meta is None:
        return Decision(True, f"{plan.metadata_path} is missing or unreadable")
    checks = (
        ("TensorRT version", meta.tensorrt_version, environment.tensorrt_version),
        ("GPU", meta.gpu_name, environment.gpu_name),
        ("compute capability", meta.compute_capability, environment.compute_capability),
        ("source ONNX sha256", meta.onnx_sha256, onnx_sha256),
    )
    for what, built, now in checks:
        if built != now:
            return Decision(True, f"{plan.engine.name}: built for {what} {built}, now {now}")
    if meta.settings != plan.build_settings():
        changed = sorted(k for k in plan.build_settings() if meta.settings.get(k) != plan.build_settings()[k])
        return Decision(True, f"{plan.engine.name}: build settings changed ({', '.join(changed)})")
    return Decision(False, f"{plan.engine.name}: up to date")


# --- TensorRT and the GPU ------------------------------------------------------------------------


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise ExportError(
            "TensorRT is not installed: build engines inside the NGC tritonserver image (or with "
            "NVIDIA's tensorrt wheels), or use --trtexec-only to print the trtexec commands"
        ) from e
    return tensorrt


def detect_gpu() -> tuple[str, str]:
    """(name, compute capability) of GPU 0 via nvidia-smi, which every CUDA driver install ships."""
    query = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"]
    try:
        line = subprocess.run(query, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise ExportError(f"no CUDA GPU found (`{shlex.join(query)}` failed: {e})") from e
    name, capability = (part.strip() for part in line.split(",", 1))
    return name, capability


def current_environment() -> BuildEnvironment:
    trt = _import_tensorrt()
    name, capability = detect_gpu()
    return BuildEnvironment(trt.__version__, name, capability)


def build_engine(plan: EnginePlan, environment: BuildEnvironment) -> EngineMetadata:
    """Build one engine with the TensorRT Python API and write it, its metadata and the timing cache."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{plan.onnx}: TensorRT cannot parse the graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.config.workspace_mib << 20)
    matched = 0
    if plan.config.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        matched = _pin_fp32_layers(trt, network, set(plan.fp32_layers))
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for profile in plan.profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, shape in profile.shapes.items():
            optimization_profile.set_shape(name, shape.min, shape.opt, shape.max)
        config.add_optimization_profile(optimization_profile)
    cache_path = plan.config.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # a cache from another GPU: start afresh
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{plan.onnx}: TensorRT engine build failed (see the TensorRT log above)")
    plan.engine.parent.mkdir(parents=True, exist_ok=True)
    plan.engine.write_bytes(bytes(serialized))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = EngineMetadata(
        model=plan.model,
        tensorrt_version=environment.tensorrt_version,
        gpu_name=environment.gpu_name,
        compute_capability=environment.compute_capability,
        onnx_sha256=source_sha256(plan.onnx),
        settings=plan.build_settings(),
        fp32_layers_matched=matched,
        build_s=time.perf_counter() - start,
    )
    meta.write(plan.metadata_path)
    return meta


def _pin_fp32_layers(trt, network, names: set[str]) -> int:
    """Run the layers the ONNX parser named after FP32_OPS nodes in fp32; returns how many matched.

    The parser names a layer after its ONNX node (a node expanded into several layers gives them
    the node's name plus a suffix), so prefixes are matched.
    """
    matched = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if any(layer.name == name or layer.name.startswith(name + "_") for name in names):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            matched += 1
    return matched


class EngineRunner:
    """Runs a built engine on numpy inputs through PyTorch CUDA tensors (a parity-check Runner)."""

    def __init__(self, engine_path: Path, decl: ModelDecl) -> None:
        import torch

        trt = _import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ExportError(f"{engine_path}: TensorRT cannot deserialize this engine")
        self.context = self.engine.create_execution_context()
        self.decl = decl
        self.stream = torch.cuda.Stream()
        self.path = Path(engine_path)

    def _select_profile(self, inputs: tuple[np.ndarray, ...]) -> None:
        first = self.decl.inputs[0].name
        for index in range(self.engine.num_optimization_profiles):
            low, _, high = self.engine.get_tensor_profile_shape(first, index)
            shape = inputs[0].shape
            if all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
                return
        raise ExportError(f"{self.path.name}: no optimisation profile holds shape {inputs[0].shape}")

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        import torch

        self._select_profile(inputs)
        tensors = []
        for tensor, array in zip(self.decl.inputs, inputs):
            device = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            tensors.append(device)
            self.context.set_input_shape(tensor.name, tuple(array.shape))
            self.context.set_tensor_address(tensor.name, device.data_ptr())
        output_name = self.decl.outputs[0].name
        output = torch.empty(tuple(self.context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(output_name, output.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError(f"{self.path.name}: TensorRT execution failed")
        self.stream.synchronize()
        return output.cpu().numpy()


@dataclass(frozen=True)
class EngineResult:
    plan: EnginePlan
    decision: Decision


def build_engines(plans: list[EnginePlan], *, force: bool = False, progress=None) -> list[EngineResult]:
    """Build each plan whose engine is missing, stale or foreign (or all with `force`); load the rest."""
    environment = current_environment()
    results = []
    for plan in plans:
        decision = decide(plan, environment, source_sha256(plan.onnx))
        if force and not decision.rebuild:
            decision = Decision(True, f"{plan.engine.name}: rebuild forced")
        if progress:
            progress(f"{'building' if decision.rebuild else 'keeping'} {plan.engine.name}")
        if decision.rebuild:
            build_engine(plan, environment)
        results.append(EngineResult(plan, decision))
    return results


def gate_engines(plans: list[EnginePlan], checkpoint_dir: Path, data_dir: Path) -> ParityReport:
    """Parity of built engines against the PyTorch checkpoint, on the export gate's inputs.

    Engines are FP16, so towers and head are judged by the fp16 gates (cosine, top-K overlap).
    """
    from aisle.data.format import load_dataset
    from aisle.export.parity import ParityGate, new_report
    from aisle.modeling.loading import load_checkpoint

    gate = ParityGate(load_checkpoint(checkpoint_dir), load_dataset(data_dir))
    report = new_report(checkpoint_dir, data_dir)
    report.runtime["engines"] = "TensorRT"
    runners = {p.model: (p.engine.name, EngineRunner(p.engine, gate.schema.model(p.model))) for p in plans}
    towers = {model: runners[model] for model in (QUERY_ENCODER, ITEM_ENCODER) if model in runners}
    if len(towers) == 2:
        gate.check_tower_pair(report, towers, TOWER_GATES[Variant.FP16], "tensorrt_fp16")
    if FUSION_HEAD in runners:
        gate.check_head_runner(report, *runners[FUSION_HEAD], FP16_HEAD_GATE)
    return report
