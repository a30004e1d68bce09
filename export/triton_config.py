"""Render every config.pbtxt from aisle.schema as Triton ModelConfig protobufs, for one target.

The schema says *what* each model is (tensors, batching); the target (a module of
aisle.export.targets) says *where it runs*: which backend or platform, on which device, how many
instances, which warmup batches, any extra optimization. This module renders the backend-agnostic
rest (tensors, batching, parameters, warmup shapes, ensembles) and asks the target for those choices.
Configs are protobuf objects written with text_format, never string templates, so an invalid field
fails here rather than in tritonserver.

    role            tensorrt               onnxruntime                   embedded
    tokenizer       python (CPU)           python (CPU)                  python (CPU)
    encoder, head   tensorrt_plan (GPU)    onnxruntime_onnx (CPU|GPU)    python running onnxruntime
    text encoder    -                      -                             python: tokenizer + onnxruntime
    store, profile,
    cold encoder,
    validators      python (CPU)           python (CPU)                  python (CPU)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from aisle.errors import ExportError
from aisle.export.graphs import GRAPH_ROLES
from aisle.schema import (
    INDEX_DEVICE_PARAMETER,
    PRICE_RANGE,
    TEXT,
    TOP_K,
    DType,
    EnsembleDecl,
    ModelDecl,
    Role,
    Schema,
    TensorDecl,
    tokenizer_buckets,
)

if TYPE_CHECKING:
    from aisle.export.targets import RenderTarget

CONFIG_FILE = "config.pbtxt"
#: The python model source (model_repository/models/<source>/model.py) of each python-served role.
PYTHON_SOURCES: dict[Role, str] = {
    Role.TOKENIZER: "tokenizer",
    Role.ITEM_STORE: "item_store",
    Role.USER_PROFILE: "user_profile",
    Role.COLD_ITEM_ENCODER: "cold_item_encoder",
    Role.VALIDATOR: "request_validator",
    Role.CATALOG_SEARCH: "catalog_search",
    Role.ENCODER: "onnx_graph",
    Role.FUSION_HEAD: "onnx_graph",
    Role.TEXT_ENCODER: "text_encoder",
}
#: Where Triton reads warmup input files (ModelWarmup.Input.input_data_file), under the model directory.
WARMUP_DIR = "warmup"
#: Candidates per request in the fusion head's warmup (a typical rank request).
WARMUP_CANDIDATES = 100
#: The python models' warmup request is empty (no candidates, history, filters or texts) and zero
#: elsewhere, except these inputs, whose zero is not a valid request: one result, and an open price
#: range (NaN = no bound). It reads them from files, as Triton's warmup reads any value but zero.
WARMUP_VALUES: dict[str, tuple[float, ...]] = {TOP_K: (1,), PRICE_RANGE: (float("nan"), float("nan"))}


def data_type(dtype: DType) -> int:
    return pb.DataType.Value(dtype.config_name)


def model_input(tensor: TensorDecl, ragged: bool = False) -> pb.ModelInput:
    """`ragged`: the model takes requests one by one, so requests may differ in its variable dims."""
    return pb.ModelInput(
        name=tensor.name,
        data_type=data_type(tensor.dtype),
        dims=list(tensor.dims),
        allow_ragged_batch=ragged and -1 in tensor.dims,
    )


def model_output(tensor: TensorDecl) -> pb.ModelOutput:
    return pb.ModelOutput(name=tensor.name, data_type=data_type(tensor.dtype), dims=list(tensor.dims))


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


def model_warmup(schema: Schema, decl: ModelDecl, target: RenderTarget) -> list[pb.ModelWarmup]:
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
        for name, batch, shapes in warmup_shapes(schema, decl, target.warmup_batches(decl))
    ]


def warmup_texts(decl: ModelDecl) -> dict[str, str]:
    """A text encoder's warmup texts by file name: one per length bucket, each filling its bucket
    ("a" is one token in BERT vocabularies, plus the two special tokens), so every sequence length a
    request can bring has run before the model reports ready. Other models: none."""
    if decl.role is not Role.TEXT_ENCODER:
        return {}
    return {f"bucket{bucket}": " ".join(["a"] * max(bucket - 2, 0)) for bucket in tokenizer_buckets(decl)}


def text_warmup(decl: ModelDecl) -> list[pb.ModelWarmup]:
    """Warmup requests reading warmup_texts from the files write_warmup_files writes."""
    return [
        pb.ModelWarmup(
            name=name,
            batch_size=1,
            inputs={TEXT: pb.ModelWarmup.Input(data_type=pb.TYPE_STRING, dims=[1], input_data_file=name)},
        )
        for name in warmup_texts(decl)
    ]


def needs_request_warmup(decl: ModelDecl) -> bool:
    """Python models other than graphs and text encoders (which warm up with shapes and texts)."""
    return decl.role not in GRAPH_ROLES and decl.role is not Role.TEXT_ENCODER


def request_warmup(decl: ModelDecl) -> list[pb.ModelWarmup]:
    """One empty request, run before the model reports ready.

    Why: a python model's first request pays ~25-110 ms of one-off costs in the stub and its
    backend (measured on the embedded target: item_store 32 ms then 1.0 ms, catalog_search 27 then
    4.4 ms), which after a start or a watchdog reload would land on a shopper. An empty request
    names no catalog id, so it stays valid whatever a live catalog update removes; a warmup that
    fails stops the model from loading, loudly, like any other configuration error.
    """
    if not needs_request_warmup(decl):
        return []
    inputs = {}
    for tensor in decl.inputs:
        dims = [0 if d == -1 else d for d in tensor.dims]
        if tensor.name in WARMUP_VALUES:
            warm = pb.ModelWarmup.Input(data_type=data_type(tensor.dtype), dims=dims, input_data_file=tensor.name)
        else:
            warm = pb.ModelWarmup.Input(data_type=data_type(tensor.dtype), dims=dims, zero_data=True)
        inputs[tensor.name] = warm
    return [pb.ModelWarmup(name="empty_request", batch_size=1, inputs=inputs)]


def warmup_files(decl: ModelDecl) -> dict[str, bytes]:
    """The files a model's warmup reads, by name: text_warmup's texts in Triton's serialized BYTES
    format (length-prefixed UTF-8), request_warmup's WARMUP_VALUES as raw little-endian arrays."""
    files = {
        name: serialize_byte_tensor(np.array([text.encode()], dtype=object)).item()
        for name, text in warmup_texts(decl).items()
    }
    if needs_request_warmup(decl):
        for tensor in decl.inputs:
            if tensor.name in WARMUP_VALUES:
                files[tensor.name] = np.array(WARMUP_VALUES[tensor.name], dtype=tensor.dtype.numpy_name).tobytes()
    return files


def write_warmup_files(decl: ModelDecl, model_dir: Path) -> None:
    """The files the model's config.pbtxt warmup names, under its WARMUP_DIR."""
    for name, content in warmup_files(decl).items():
        path = Path(model_dir) / WARMUP_DIR / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)


def model_config(schema: Schema, decl: ModelDecl, target: RenderTarget) -> pb.ModelConfig:
    """The config of one composing model on one target."""
    runtime = target.runtime(decl.role)
    if decl.batching.ragged and not runtime.is_python:
        raise ValueError(
            f"{decl.name}: ragged batching needs a python model, {target.name} runs it on {runtime.backend}"
        )
    config = pb.ModelConfig(
        name=decl.name,
        max_batch_size=decl.batching.max_batch_size,
        input=[model_input(t, decl.batching.ragged) for t in decl.inputs],
        output=[model_output(t) for t in decl.outputs],
    )
    if runtime.platform:
        config.platform = runtime.platform
        config.default_model_filename = runtime.model_file
    else:
        config.backend = runtime.backend
    if decl.batching.max_queue_delay_us is not None:
        # SetInParent: a delay of 0 ("batch what is already queued") is still a dynamic batcher.
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = decl.batching.max_queue_delay_us
    on_gpu = decl.role in GRAPH_ROLES and target.graphs_on_gpu
    config.instance_group.append(
        pb.ModelInstanceGroup(
            kind=pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU,
            count=target.instance_count(decl),
        )
    )
    for key, value in decl.parameters:
        config.parameters[key].string_value = value
    if decl.role is Role.CATALOG_SEARCH:
        config.parameters[INDEX_DEVICE_PARAMETER].string_value = target.index_device
    if decl.intra_op_threads is not None and runtime.threads_parameter:
        config.parameters[runtime.threads_parameter].string_value = str(decl.intra_op_threads)
    if decl.response_cache:
        config.response_cache.enable = True
    if decl.role in GRAPH_ROLES:
        config.model_warmup.extend(model_warmup(schema, decl, target))
    config.model_warmup.extend(text_warmup(decl))
    config.model_warmup.extend(request_warmup(decl))
    target.optimize(decl, config)
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


def render_configs(schema: Schema, target: RenderTarget) -> dict[str, pb.ModelConfig]:
    """Every model's and ensemble's config on `target` (aisle.export.targets), by model name."""
    configs = {decl.name: model_config(schema, decl, target) for decl in schema.models}
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
