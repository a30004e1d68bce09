"""Mixed-precision fp16 graphs of the towers for GPU targets.

Why mixed and not pure fp16: BERT's LayerNorm computes a variance whose squares overflow or lose
precision in fp16, softmax over masked positions underflows, and the pooling/normalisation
reductions sum up to 128 token states. Those ops stay fp32 (FP32_OPS, the one declaration the
TensorRT builder's layer precision constraints also use); the matrix multiplications, which carry
the cost, run in fp16. Graph inputs and outputs keep their declared types (int64 ids, fp32
embedding) so the serving interface is unchanged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Op types kept in fp32 in fp16 graphs and TensorRT FP16 engines: normalisation statistics
#: (LayerNormalization and its fused forms; Pow/ReduceMean/Sqrt where LayerNorm is decomposed),
#: softmax, and the pooling / L2-normalisation reductions.
FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
    "Softmax",
    "Pow",
    "ReduceMean",
    "Sqrt",
    "ReduceSum",
    "ReduceL2",
)
#: Name prefix onnxruntime gives the casts it inserts around nodes lacking a kernel for their type.
ORT_INSERTED_CAST = "InsertedPrecisionFreeCast"


@dataclass(frozen=True)
class Fp16Conversion:
    """What the conversion did: node counts by op type per compute precision."""

    path: Path
    fp32_nodes: dict[str, int]
    fp16_nodes: dict[str, int]


def fp32_node_names(model) -> list[str]:
    """Names of the nodes whose op type FP32_OPS keeps in fp32 (for TensorRT layer constraints)."""
    return [node.name for node in model.graph.node if node.op_type in FP32_OPS]


def node_precisions(model) -> tuple[Counter, Counter]:
    """(fp32, fp16) op-type counts of the compute nodes, judged by the element type of their first
    floating-point input (Casts, shape plumbing and integer ops are not counted)."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    types.update({init.name: init.data_type for init in model.graph.initializer})
    fp32: Counter[str] = Counter()
    fp16: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        floats = [types.get(name) for name in node.input if types.get(name) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        if floats:
            (fp16 if floats[0] == TensorProto.FLOAT16 else fp32)[node.op_type] += 1
    return fp32, fp16


def convert_to_fp16(source: Path, target: Path) -> Fp16Conversion:
    """Write `target`: `source` with everything but FP32_OPS in fp16, inputs/outputs unchanged."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    from aisle.export.graphs import save_graph

    # OnnxModel's conversion types the graph by symbolic shape inference (which also knows the
    # com.microsoft fused ops); the casts it inserts are appended, so the graph is re-sorted.
    model = OnnxModel(onnx.load(str(source)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=list(FP32_OPS))
    model.topological_sort()
    converted = model.model
    save_graph(converted, target)
    fp32, fp16 = node_precisions(converted)
    return Fp16Conversion(target, dict(fp32), dict(fp16))


def cpu_inserted_casts(path: Path) -> int:
    """How many casts onnxruntime's CPU provider inserts to run, in fp32, fp16 nodes it has no fp16
    kernel for. Non-zero means parity measured on CPU understates a GPU's fp16 arithmetic error."""
    import tempfile

    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory() as scratch:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(scratch) / "as_run.onnx")
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        as_run = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return sum(node.op_type == "Cast" and node.name.startswith(ORT_INSERTED_CAST) for node in as_run.graph.node)
