"""CPU-optimised, fp16 and int8 tower graphs: how they are built and how the gate judges them."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from aisle.export.fp16 import FP32_OPS, convert_to_fp16, node_precisions
from aisle.export.graphs import Variant, graph_file
from aisle.export.optimize import optimize_towers
from aisle.export.parity import new_report
from aisle.export.quantize import quantize_towers
from aisle.export.tolerances import TOWER_GATES
from aisle.schema import ITEM_ENCODER, QUERY_ENCODER

TOWERS = (QUERY_ENCODER, ITEM_ENCODER)


@pytest.fixture
def tower_dir(onnx_dir: Path, tmp_path: Path) -> Path:
    """The fp32 tower graphs linked into a private directory, so variants land beside them there."""
    for model in TOWERS:
        os.symlink(onnx_dir / graph_file(model), tmp_path / graph_file(model))
    return tmp_path


def test_optimised_towers_fuse_attention_and_pass_the_fp32_tolerance(
    serving_checkpoint: Path, tiny_data: Path, parity_gate, tower_dir: Path
) -> None:
    optimized = optimize_towers(tower_dir, serving_checkpoint)
    for model in TOWERS:
        assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= set(optimized[model].fusions)
        assert (tower_dir / graph_file(model)).exists(), "the plain graph is kept"
    report = new_report(serving_checkpoint, tiny_data)
    parity_gate.check_towers(report, tower_dir, Variant.OPT)
    assert report.failures == []
    assert report.graphs[graph_file(QUERY_ENCODER, Variant.OPT)]["gate"] == TOWER_GATES[Variant.OPT].as_dict()


def test_fp16_conversion_keeps_normalisation_softmax_and_reductions_in_fp32(onnx_dir: Path, tmp_path: Path) -> None:
    source = onnx.load(str(onnx_dir / graph_file(QUERY_ENCODER)))
    target = tmp_path / graph_file(QUERY_ENCODER, Variant.FP16)
    result = convert_to_fp16(onnx_dir / graph_file(QUERY_ENCODER), target)
    present = {node.op_type for node in source.graph.node} & set(FP32_OPS)
    assert present >= {"LayerNormalization", "Softmax", "ReduceSum"}
    assert present <= set(result.fp32_nodes) and not present & set(result.fp16_nodes)
    assert result.fp16_nodes["MatMul"] == sum(node.op_type == "MatMul" for node in source.graph.node)
    converted = onnx.load(str(target))
    assert node_precisions(converted) == (result.fp32_nodes, result.fp16_nodes)
    io_types = [(v.name, v.type.tensor_type.elem_type) for v in [*converted.graph.input, *converted.graph.output]]
    assert io_types == [(v.name, v.type.tensor_type.elem_type) for v in [*source.graph.input, *source.graph.output]]
    assert dict(io_types)["EMBEDDING"] == TensorProto.FLOAT


def test_fp16_towers_are_measured_against_the_fp16_tolerances_or_skipped_with_the_reason(
    serving_checkpoint: Path, tiny_data: Path, parity_gate, tower_dir: Path
) -> None:
    for model in TOWERS:
        convert_to_fp16(tower_dir / graph_file(model), tower_dir / graph_file(model, Variant.FP16))
    report = new_report(serving_checkpoint, tiny_data)
    parity_gate.check_towers(report, tower_dir, Variant.FP16)
    if report.skipped:
        pytest.skip(f"onnxruntime CPU cannot run the fp16 graphs here: {report.skipped}")
    gate = TOWER_GATES[Variant.FP16]
    stats = report.graphs[graph_file(QUERY_ENCODER, Variant.FP16)]["outputs"]["EMBEDDING"]
    assert stats["max_abs"] > 1e-6, "fp16 arithmetic leaves a measurable difference"
    assert stats["min_cosine"] >= gate.min_cosine, "mixed precision keeps every embedding's direction"
    # The ranking overlap of the tiny untrained model depends on near-ties between its scores, so the
    # test checks the gate's decision rather than the outcome: it fails exactly when overlap < tolerance.
    overlap = report.retrieval[Variant.FP16.value]["mean_top_k_overlap"]
    assert 0.0 <= overlap <= 1.0
    overlap_failures = [f for f in report.failures if "top-10 overlap" in f]
    assert bool(overlap_failures) == (overlap < gate.mean_top_k_overlap)
    assert [f for f in report.failures if f not in overlap_failures] == []


def test_int8_towers_are_quantised_and_judged_on_cosine_and_ranking_overlap(
    serving_checkpoint: Path, tiny_data: Path, parity_gate, tower_dir: Path
) -> None:
    quantize_towers(tower_dir)
    graph = onnx.load(str(tower_dir / graph_file(QUERY_ENCODER, Variant.INT8)))
    assert any(node.op_type == "MatMulInteger" for node in graph.graph.node)
    report = new_report(serving_checkpoint, tiny_data)
    parity_gate.check_towers(report, tower_dir, Variant.INT8)
    gate = TOWER_GATES[Variant.INT8]
    for model in TOWERS:
        entry = report.graphs[graph_file(model, Variant.INT8)]
        assert entry["gate"] == gate.as_dict()
        assert 0.9 < entry["outputs"]["EMBEDDING"]["min_cosine"] < 1.0
    assert {"min_top_k_overlap", "mean_top_k_overlap"} <= set(report.retrieval[Variant.INT8.value])
    for failure in report.failures:  # int8 may fail its gate; when it does, the message says why
        limits = (f"below tolerance {gate.min_cosine:g}", f"below tolerance {gate.mean_top_k_overlap:g}")
        assert ".int8.onnx" in failure and failure.endswith(limits)


def test_speed_comparison_reports_each_graph_at_each_batch_against_the_plain_graph(onnx_dir: Path) -> None:
    from aisle.export.speed import SpeedConfig, compare_speed, speed_ratios

    ids = np.full((4, 8), 2000, dtype=np.int64)
    feeds = {b: {"INPUT_IDS": ids[:b], "ATTENTION_MASK": np.ones_like(ids[:b])} for b in (1, 4)}
    graphs = {"fp32": onnx_dir / graph_file(QUERY_ENCODER), "same": onnx_dir / graph_file(QUERY_ENCODER)}
    results = compare_speed(graphs, feeds, SpeedConfig(batches=(1, 4), rounds=2, round_s=0.05))
    assert set(results) == {"fp32", "same"}
    assert all(set(r) == {"batch_1_seq_per_s", "batch_4_seq_per_s"} and min(r.values()) > 0 for r in results.values())
    assert set(speed_ratios(results, "fp32")) == {"same"}
