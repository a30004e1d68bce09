"""Dynamic INT8 quantisation of the towers for CPU serving.

Weights are quantised once per output channel; activations are quantised per batch at run time,
so no calibration data is needed. The quantised graphs are written under their own names
(`*.int8.onnx`) and judged by the parity gate on cosine and ranking overlap, never swapped in for
the fp32 graphs.

Why the plain graph is quantised, not the optimised one: the quantiser needs ONNX shape inference,
which cannot type the fused com.microsoft ops; onnxruntime re-applies its fusions at load time.
"""

from __future__ import annotations

from pathlib import Path

from aisle.export.graphs import Variant, external_data_file, graph_file
from aisle.schema import ITEM_ENCODER, QUERY_ENCODER

#: Per-channel weight scales: one scale per output column keeps the small-magnitude columns of
#: BERT's projections from being crushed by a single per-tensor range.
PER_CHANNEL = True


def quantize_towers(graph_dir: Path) -> dict[str, Path]:
    """Write `<tower>.int8.onnx` beside each fp32 tower graph in `graph_dir`; returns model name -> path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    paths = {}
    for model in (QUERY_ENCODER, ITEM_ENCODER):
        source = graph_dir / graph_file(model)
        target = graph_dir / graph_file(model, Variant.INT8)
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=PER_CHANNEL,
            use_external_data_format=(graph_dir / external_data_file(source)).exists(),
        )
        paths[model] = target
    return paths
