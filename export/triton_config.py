"""Render every config.pbtxt from aisle.schema as Triton ModelConfig protobufs, per target.

The schema says *what* each model is (tensors, batching); this module only decides *where it
runs* on each target: which backend or platform, on which device, how many instances, and how
it is warmed up. Configs are protobuf objects written with text_format, never string templates,
so an invalid field fails here rather than in tritonserver.

    role            tensorrt               onnxruntime                   embedded
    tokenizer       python (CPU)           python (CPU)                  python (CPU)
    encoder, head   tensorrt_plan (GPU)    onnxruntime_onnx (CPU|GPU)    python running onnxruntime
    store, profile,
    cold encoder,
    validators      python (CPU)           python (CPU)                  python (CPU)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from aisle.errors import ExportError
from aisle.export.repo_format import GRAPH_FILE, PLAN_FILE
from aisle.schema import DType, EnsembleDecl, ModelDecl, Role, Schema, Target, TensorDecl

CONFIG_FILE = "config.pbtxt"
#: Roles whose math is an exported graph (ONNX, or a TensorRT plan built from it).
GRAPH_ROLES = frozenset({Role.ENCODER, Role.FUSION_HEAD})
#: The python model source (model_repository/models/<source>/model.py) of each python-served role.
PYTHON_SOURCES: dict[Role, str] = {
    Role.TOKENIZER: "tokenizer",
    Role.ITEM_STORE: "item_store",
    Role.USER_PROFILE: "user_profile",
    Role.COLD_ITEM_ENCODER: "cold_item_encoder",
    Role.VALIDATOR: "request_validator",
    Role.RETRIEVER: "retriever",
    Role.RESULT_SELECTOR: "select_results",
    Role.ENCODER: "onnx_graph",
    Role.FUSION_HEAD: "onnx_graph",
}
#: Candidates per request in the fusion head's warmup (a typical rank request).
WARMUP_CANDIDATES = 100


class Backend(str, Enum):
    PYTHON = "python"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


#: Instances per (target, role) where they differ from the declaration's instance_count.
#: GPU targets: two tokenizer instances so CPU tokenisation keeps up with the GPU, and two encoder
#: instances so one copies while the other computes. CPU targets keep one instance of everything:
#: onnxruntime already spreads one execution over all cores, and more instances would fight for them.
INSTANCE_COUNTS: dict[tuple[Target, Role], int] = {
    (Target.TENSORRT, Role.TOKENIZER): 2,
    (Target.TENSORRT, Role.ENCODER): 2,
}
#: Same, for the onnxruntime target when rendered for a GPU.
ONNXRUNTIME_GPU_INSTANCE_COUNTS: dict[Role, int] = {Role.TOKENIZER: 2, Role.ENCODER: 2}


@dataclass(frozen=True)
class RenderOptions:
    """How to render one target.

    gpu: onnxruntime target only: run the graphs on a GPU (KIND_GPU) instead of the CPU.
    trt_accelerator: onnxruntime target on GPU only: let onnxruntime hand the graphs to its
        TensorRT execution provider in FP16 (faster, engines built lazily on first load).
    """

    target: Target
    gpu: bool = False
    trt_accelerator: bool = False

    def __post_init__(self) -> None:
        if self.gpu and self.target is not Target.ONNXRUNTIME:
            raise ExportError(f"gpu=True applies to the onnxruntime target only, not target={self.target.value}")
        if self.trt_accelerator and not (self.target is Target.ONNXRUNTIME and self.gpu):
            raise ExportError("trt_accelerator=True needs target=onnxruntime with gpu=True")

    @property
    def graphs_on_gpu(self) -> bool:
        return self.target is Target.TENSORRT or self.gpu


def backend_for(role: Role, target: Target) -> Backend:
    """Which Triton backend runs a role on a target."""
    if role not in GRAPH_ROLES or target is Target.EMBEDDED:
        return Backend.PYTHON
    return Backend.TENSORRT if target is Target.TENSORRT else Backend.ONNXRUNTIME


def data_type(dtype: DType) -> int:
    return pb.DataType.Value(dtype.config_name)


def model_input(tensor: TensorDecl) -> pb.ModelInput:
    return pb.ModelInput(name=tensor.name, data_type=data_type(tensor.dtype), dims=list(tensor.dims))


def model_output(tensor: TensorDecl) -> pb.ModelOutput:
    return pb.ModelOutput(name=tensor.name, data_type=data_type(tensor.dtype), dims=list(tensor.dims))


def instance_count(decl: ModelDecl, options: RenderOptions) -> int:
    if options.target is Target.ONNXRUNTIME and options.gpu:
        return ONNXRUNTIME_GPU_INSTANCE_COUNTS.get(decl.role, decl.instance_count)
    return INSTANCE_COUNTS.get((options.target, decl.role), decl.instance_count)


def warmup_batches(decl: ModelDecl, options: RenderOptions) -> tuple[int, ...]:
    """Batch sizes to warm up with: 1 everywhere, plus the maximum batch on GPU targets.

    On a GPU the first run of a shape is what is slow (TensorRT profile selection, ORT-GPU
    allocations), so the largest batch is worth running before readiness. On CPU a batch-64 warmup
    of the 128-token bucket costs seconds of start-up and buys little: onnxruntime's CPU arena grows
    once, on the first large batch.
    """
    return tuple(sorted({1, decl.batching.max_batch_size})) if options.graphs_on_gpu else (1,)


def warmup_shapes(
    schema: Schema, decl: ModelDecl, batches: tuple[int, ...]
) -> list[tuple[str, int, dict[str, tuple[int, ...]]]]:
    """(name, batch size, input dims) of each warmup sample of a graph model.

    Encoders: every length bucket at each batch size, so each sequence length a request can bring has
    run once. Fusion head: one rank-sized request (WARMUP_CANDIDATES candidates) at each batch size.
    """
    if decl.role is Role.ENCODER:
        return [
            (f"bucket{bucket}_batch{batch}", batch, {t.name: (bucket,) for t in decl.inputs})
            for bucket in schema.encoder_buckets(decl.name)
            for batch in batches
        ]
    if decl.role is Role.FUSION_HEAD:
        dims = {t.name: tuple(WARMUP_CANDIDATES if d == -1 else d for d in t.dims) for t in decl.inputs}
        return [(f"candidates{WARMUP_CANDIDATES}_batch{batch}", batch, dims) for batch in batches]
    return []


def model_warmup(schema: Schema, decl: ModelDecl, options: RenderOptions) -> list[pb.ModelWarmup]:
    """Zero-filled warmup requests: Triton runs them before it reports the model ready.

    Zero token ids with a zero mask are a blank text, which pools to the zero vector: a valid input.
    """
    dtypes = {t.name: t.dtype for t in decl.inputs}
    return [
        pb.ModelWarmup(
            name=name,
            batch_size=batch,
            inputs={
                tensor: pb.ModelWarmup.Input(data_type=data_type(dtypes[tensor]), dims=list(dims), zero_data=True)
                for tensor, dims in shapes.items()
            },
        )
        for name, batch, shapes in warmup_shapes(schema, decl, warmup_batches(decl, options))
    ]


def model_config(schema: Schema, decl: ModelDecl, options: RenderOptions) -> pb.ModelConfig:
    """The config of one composing model on one target."""
    backend = backend_for(decl.role, options.target)
    config = pb.ModelConfig(
        name=decl.name,
        max_batch_size=decl.batching.max_batch_size,
        input=[model_input(t) for t in decl.inputs],
        output=[model_output(t) for t in decl.outputs],
    )
    if backend is Backend.PYTHON:
        config.backend = Backend.PYTHON.value
    elif backend is Backend.ONNXRUNTIME:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = GRAPH_FILE
    else:
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
    if decl.batching.max_queue_delay_us is not None:
        # SetInParent: a delay of 0 ("batch what is already queued") is still a dynamic batcher.
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = decl.batching.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(decl.batching.preferred_batch_sizes)
    on_gpu = backend is not Backend.PYTHON and options.graphs_on_gpu
    config.instance_group.append(
        pb.ModelInstanceGroup(
            kind=pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU,
            count=instance_count(decl, options),
        )
    )
    for key, value in decl.parameters:
        config.parameters[key].string_value = value
    if decl.response_cache:
        config.response_cache.enable = True
    if decl.role in GRAPH_ROLES:
        config.model_warmup.extend(model_warmup(schema, decl, options))
    if backend is Backend.ONNXRUNTIME and options.trt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"/tmp/aisle-trt-cache/{decl.name}"
    return config


def ensemble_config(decl: EnsembleDecl) -> pb.ModelConfig:
    """An ensemble's config: its public tensors and the step wiring, the same on every target."""
    config = pb.ModelConfig(
        name=decl.name,
        platform="ensemble",
        max_batch_size=decl.max_batch_size,
        input=[model_input(t) for t in decl.inputs],
        output=[model_output(t) for t in decl.outputs],
    )
    for step in decl.steps:
        config.ensemble_scheduling.step.append(
            pb.ModelEnsembling.Step(
                model_name=step.model,
                model_version=-1,
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
            )
        )
    for key, value in decl.parameters:
        config.parameters[key].string_value = value
    return config


def render_configs(schema: Schema, options: RenderOptions) -> dict[str, pb.ModelConfig]:
    """Every model's and ensemble's config, by model name."""
    configs = {decl.name: model_config(schema, decl, options) for decl in schema.models}
    configs.update({decl.name: ensemble_config(decl) for decl in schema.ensembles})
    return configs


def write_config(config: pb.ModelConfig, model_dir: Path) -> Path:
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(text_format.MessageToString(config))
    return path


def read_config(model_dir: Path) -> pb.ModelConfig:
    """Parse a config.pbtxt back into a ModelConfig (fails on any field Triton would not accept)."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ExportError(f"{path}: not a valid Triton model config: {e}") from e
