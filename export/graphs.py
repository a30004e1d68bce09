"""PyTorch checkpoint -> fp32 ONNX graphs of the query tower, the item tower and the fusion head.

Every graph's input and output names, dtypes and dims come from aisle.schema (the served
interface), so the Triton configs derived from the same schema match the graphs by construction.

Why the legacy exporter (dynamo=False) at opset 17: it traces HF BERT with dynamic batch and
sequence axes and ORT matches PyTorch to ~1e-7 on padded and unpadded batches alike; opset 17 has
LayerNormalization as a single op, which the transformer optimizer and TensorRT both fuse.

Why the towers are traced with eager attention: PyTorch's SDPA path traces into a graph in which
onnxruntime's transformer optimizer finds no Attention or EmbedLayerNormalization pattern; the
eager path fuses fully and matches SDPA to ~1e-7.

Why the tracing inputs are padded: some attention-mask code paths short-circuit when the mask is
all ones; tracing such a mask could bake "no padding" into the graph, a bug all-ones parity
inputs would never see.
"""

from __future__ import annotations

import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

from aisle.errors import ExportError
from aisle.schema import FUSION_HEAD, ITEM_ENCODER, QUERY_ENCODER, ModelDecl, Role

#: The models exported as ONNX graphs, in export order.
GRAPH_MODELS: tuple[str, ...] = (QUERY_ENCODER, ITEM_ENCODER, FUSION_HEAD)
#: Roles whose math is an exported graph (ONNX, or a TensorRT plan built from it); every other role
#: is a python model on every target.
GRAPH_ROLES = frozenset({Role.ENCODER, Role.FUSION_HEAD})
ONNX_SUFFIX = ".onnx"

OPSET = 17
#: Protobuf's hard limit; larger graphs (BERT-large towers) keep their weights in a side file.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
#: Name of the dynamic batch axis; a model's variable (-1) dims are named per role below.
BATCH_AXIS = "batch"
VARIABLE_AXIS = {Role.ENCODER: "sequence", Role.FUSION_HEAD: "candidates"}
#: Sizes of the dummy inputs used for tracing (any values work: all axes are exported dynamic).
TRACE_BATCH = 2
TRACE_VARIABLE = 5


class Variant(str, Enum):
    """The graphs an export can write per model, each under its own file name, never swapped in silently."""

    FP32 = "fp32"  # the plain traced graph: the reference every other variant is compared with
    OPT = "opt"  # fp32 with onnxruntime's transformer fusions, for CPU serving
    INT8 = "int8"  # dynamically quantised towers, for CPU serving when its gate passes
    FP16 = "fp16"  # mixed precision (LayerNorm, softmax, reductions in fp32), for GPU targets


def graph_file(model_name: str, variant: Variant = Variant.FP32) -> str:
    """File name of a model's graph: `query_encoder.onnx`, or `query_encoder.<variant>.onnx`."""
    if variant is Variant.FP32:
        return model_name + ONNX_SUFFIX
    return f"{model_name}.{variant.value}{ONNX_SUFFIX}"


def external_data_file(graph_path: Path) -> str:
    """Name of the weights file beside a graph saved in external-data format."""
    return graph_path.name + ".data"


def dynamic_axes(decl: ModelDecl) -> dict[str, dict[int, str]]:
    """Axis 0 of every tensor is the batch; each -1 dim gets the role's shared axis name."""
    axes: dict[str, dict[int, str]] = {}
    for tensor in decl.inputs + decl.outputs:
        named = {0: BATCH_AXIS}
        for position, dim in enumerate(tensor.dims, start=1):
            if dim == -1:
                named[position] = VARIABLE_AXIS[decl.role]
        axes[tensor.name] = named
    return axes


def trace_inputs(decl: ModelDecl) -> tuple:
    """Dummy tensors matching the schema's inputs, with padding in any attention mask."""
    import torch

    from aisle.schema import ATTENTION_MASK, DType

    tensors = []
    for tensor in decl.inputs:
        shape = (TRACE_BATCH, *(TRACE_VARIABLE if d == -1 else d for d in tensor.dims))
        if tensor.dtype is DType.INT64:
            value = torch.full(shape, 1000, dtype=torch.int64)
            if tensor.name == ATTENTION_MASK:
                value = torch.ones(shape, dtype=torch.int64)
                value[1:, shape[1] // 2 :] = 0
        else:
            value = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        tensors.append(value)
    return tuple(tensors)


def export_module(
    module, decl: ModelDecl, path: Path, *, external_data_threshold_bytes: int = PROTOBUF_LIMIT_BYTES
) -> Path:
    """Export one module in eval mode to `path`, named and shaped as `decl` declares.

    Graphs whose weights exceed `external_data_threshold_bytes` are saved in external-data format
    (weights in `<name>.onnx.data`); the threshold is a parameter only so tests can force it.
    """
    import onnx
    import torch

    # torch.onnx.export restores the module's training flag afterwards; a module left in train mode
    # (the default for a new nn.Module) would turn dropout back on in the inner BERT, and every later
    # PyTorch reference would then differ from ONNX Runtime by ~0.07.
    module.eval()
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        try:
            # The tracer warns about Python-level shape checks in transformers' mask code; they do
            # not bind the graph to the traced shape, which the parity gate checks at other shapes.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message="Exporting aten::index operator")
                torch.onnx.export(
                    module,
                    trace_inputs(decl),
                    str(traced),
                    input_names=[t.name for t in decl.inputs],
                    output_names=[t.name for t in decl.outputs],
                    dynamic_axes=dynamic_axes(decl),
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
        except Exception as e:  # torch raises many unrelated types from deep inside tracing
            raise ExportError(f"{path.name}: torch.onnx.export failed for model {decl.name!r}: {e}") from e
        proto = onnx.load(str(traced))
    save_graph(proto, path, external_data_threshold_bytes=external_data_threshold_bytes)
    return path


def save_graph(proto, path: Path, *, external_data_threshold_bytes: int = PROTOBUF_LIMIT_BYTES) -> None:
    """Save a graph, in external-data format when its initializers exceed the threshold, and check it."""
    import onnx

    weights = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    external = weights > external_data_threshold_bytes
    sidecar = path.with_name(external_data_file(path))
    sidecar.unlink(missing_ok=True)
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=sidecar.name,
        size_threshold=1024,
    )
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: exported graph fails onnx.checker: {e}") from e


def _tensor_bytes(tensor) -> int:
    import numpy as np
    from onnx import helper

    if tensor.raw_data:
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def export_onnx(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    external_data_threshold_bytes: int = PROTOBUF_LIMIT_BYTES,
) -> dict[str, Path]:
    """Export a checkpoint's towers and head as fp32 graphs in `out_dir`; returns model name -> path.

    The checkpoint's manifest (aisle.json) is copied beside the graphs.

    The checkpoint is loaded (and cross-checked against its manifest) by load_checkpoint, which
    raises CheckpointError naming a missing piece or a disagreeing field.
    """
    from aisle.modeling.loading import load_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: output path exists and is not a directory")
    checkpoint = load_checkpoint(checkpoint_dir)
    schema = checkpoint.manifest.schema()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The manifest travels with the graphs: engine builds and repositories read buckets and dims from it.
    checkpoint.manifest.save(out_dir)
    for tower in (checkpoint.query_tower, checkpoint.item_tower):
        encoder: Any = tower.encoder  # a transformers PreTrainedModel
        encoder.set_attn_implementation("eager")
    modules = {QUERY_ENCODER: checkpoint.query_tower, ITEM_ENCODER: checkpoint.item_tower, FUSION_HEAD: checkpoint.head}
    paths: dict[str, Path] = {}
    for name in GRAPH_MODELS:
        paths[name] = export_module(
            modules[name],
            schema.model(name),
            out_dir / graph_file(name),
            external_data_threshold_bytes=external_data_threshold_bytes,
        )
    return paths
