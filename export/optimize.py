"""CPU-optimised tower graphs: onnxruntime's transformer optimizer fusions, saved as `*.opt.onnx`.

The optimizer rewrites BERT subgraphs into single fused kernels (EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu) that onnxruntime's CPU provider runs faster than the
op-by-op graph. The plain graph stays: it is the portable one (TensorRT and other runtimes do not
know the com.microsoft fused ops) and the reference the optimised graph is gated against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aisle.export.graphs import Variant, graph_file, save_graph
from aisle.modeling.checkpoint import ITEM_ENCODER_DIR, QUERY_ENCODER_DIR
from aisle.modeling.towers import check_bert_dir
from aisle.schema import ITEM_ENCODER, QUERY_ENCODER

#: The optimizer's fusion patterns for BERT-family encoders.
OPTIMIZER_MODEL_TYPE = "bert"
#: Domain of onnxruntime's fused (contrib) ops.
CONTRIB_DOMAIN = "com.microsoft"
TOWER_DIRS = {QUERY_ENCODER: QUERY_ENCODER_DIR, ITEM_ENCODER: ITEM_ENCODER_DIR}


@dataclass(frozen=True)
class OptimizedGraph:
    path: Path
    #: Fused operator counts, e.g. {"Attention": 6, "SkipLayerNormalization": 12}.
    fusions: dict[str, int]


def optimize_towers(graph_dir: Path, checkpoint_dir: Path) -> dict[str, OptimizedGraph]:
    """Write `<tower>.opt.onnx` beside each fp32 tower graph; heads and hidden size from the HF config."""
    from onnxruntime.transformers.optimizer import optimize_model

    results = {}
    for model, encoder_dir in TOWER_DIRS.items():
        config = check_bert_dir(Path(checkpoint_dir) / encoder_dir)
        # opt_level=0: only the Python fusions are applied and saved, so the file stays portable
        # across onnxruntime versions; each session still applies its own graph optimisations.
        optimized = optimize_model(
            str(graph_dir / graph_file(model)),
            model_type=OPTIMIZER_MODEL_TYPE,
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            opt_level=0,
            use_gpu=False,
        )
        optimized.topological_sort()
        _import_contrib_domain(optimized.model)
        target = graph_dir / graph_file(model, Variant.OPT)
        save_graph(optimized.model, target)
        fusions = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        results[model] = OptimizedGraph(target, fusions)
    return results


def _import_contrib_domain(model) -> None:
    """Fused ops live in com.microsoft; a graph using them must import that domain to validate."""
    from onnx import helper

    uses = any(node.domain == CONTRIB_DOMAIN for node in model.graph.node)
    if uses and all(opset.domain != CONTRIB_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
