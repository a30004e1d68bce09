"""The parity gate: what it measures, what it feeds the graphs, and that it fails on a wrong graph."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from aisle.errors import ParityError
from aisle.export.graphs import GRAPH_MODELS, Variant, graph_file
from aisle.export.parity import ParityReport, compare, new_report, row_cosine, top_k_overlap
from aisle.export.tolerances import HEAD_GATE, TOWER_GATES
from aisle.modeling.checkpoint import Manifest
from aisle.schema import FUSION_HEAD, ITEM_ENCODER, QUERY_ENCODER


def test_cosine_treats_two_zero_vectors_as_equal_and_zero_against_nonzero_as_different() -> None:
    reference = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    actual = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1e-3]])
    assert row_cosine(reference, actual).tolist() == [1.0, 1.0, 0.0]


def test_top_k_overlap_counts_shared_items_per_row() -> None:
    reference = np.arange(20, dtype=np.float32)[None, :]
    swapped = reference.copy()
    swapped[0, [0, 19]] = swapped[0, [19, 0]]  # the best item falls out of the top 10
    assert top_k_overlap(reference, reference).tolist() == [1.0]
    assert top_k_overlap(reference, swapped).tolist() == [0.9]


def test_reduced_precision_rankings_are_gated_on_the_mean_overlap_not_one_near_tie() -> None:
    reference = np.tile(np.arange(20, dtype=np.float32), (20, 1))
    one_swap = reference.copy()
    one_swap[0, [10, 9]] = one_swap[0, [9, 10]] + np.float32(0.5)  # rank 10 and 11 trade places
    gate = TOWER_GATES[Variant.FP16]
    stats = compare(reference, one_swap, ranking=True)
    assert (stats.min_top_k_overlap, stats.mean_top_k_overlap) == (0.9, pytest.approx(0.995))
    assert stats.failures(gate, "g.fp16.onnx", "EMBEDDING") == []
    every_row = reference.copy()
    every_row[:, [10, 9]] = every_row[:, [9, 10]] + np.float32(0.5)
    (failure,) = compare(reference, every_row, ranking=True).failures(gate, "g.fp16.onnx", "EMBEDDING")
    assert failure == "g.fp16.onnx: output EMBEDDING mean top-10 overlap=0.900 is below tolerance 0.95"


def test_nan_in_an_output_fails_every_gate() -> None:
    reference = np.ones((2, 4), np.float32)
    actual = reference.copy()
    actual[1, 2] = np.nan
    stats = compare(reference, actual)
    assert stats.failures(TOWER_GATES[Variant.FP32], "g.onnx", "EMBEDDING")


def test_tower_cases_cover_batch_sizes_buckets_truncation_and_blank_texts(
    serving_checkpoint: Path, parity_gate
) -> None:
    manifest = Manifest.load(serving_checkpoint)
    limits = manifest.limits
    for model, buckets in ((QUERY_ENCODER, limits.query_buckets), (ITEM_ENCODER, limits.item_buckets)):
        cases = dict(parity_gate.cases[model])
        assert [cases[f"batch_{n}"][0].shape[0] for n in (1, 7, 64)] == [1, 7, 64]
        for bucket in buckets:
            ids, mask = cases[f"bucket_{bucket}"]
            assert ids.shape[1] == bucket
            assert mask.sum(axis=1).max() > (buckets[buckets.index(bucket) - 1] if bucket != buckets[0] else 0)
        ids, mask = cases["cut_at_max_length"]
        assert mask.sum(axis=1).tolist() == [buckets[-1]] * len(ids)
        ids, mask = cases["single_token_and_blank"]
        assert mask.sum(axis=1).tolist() == [3, 0, 0]  # [CLS] word [SEP]; blank texts get an all-zero mask
        ids, mask = cases["mixed_lengths"]
        assert len(set(mask.sum(axis=1).tolist())) > 3


def test_head_cases_carry_unknown_features_empty_query_and_empty_history(parity_gate) -> None:
    cases = dict(parity_gate.cases[FUSION_HEAD])
    query, user, items, features = cases["batch_64"]
    assert np.isnan(features).any() and np.isnan(features[-1, -1]).all()
    assert (np.linalg.norm(query, axis=1) == 0).any() and (np.linalg.norm(user, axis=1) == 0).any()
    assert items.shape[1] >= 10 and cases["one_candidate"][2].shape[1] == 1


def test_fp32_graphs_pass_the_gate_with_every_case_measured(
    serving_checkpoint: Path, tiny_data: Path, parity_gate, onnx_dir: Path
) -> None:
    report = new_report(serving_checkpoint, tiny_data)
    parity_gate.check_towers(report, onnx_dir, Variant.FP32)
    parity_gate.check_head(report, onnx_dir)
    assert report.failures == []
    assert set(report.graphs) == {graph_file(m) for m in GRAPH_MODELS}
    for label, entry in report.graphs.items():
        assert set(entry["cases"]) == {name for name, _ in parity_gate.cases[entry["model"]]}
        for stats in entry["outputs"].values():
            limit = HEAD_GATE.max_abs if entry["model"] == FUSION_HEAD else TOWER_GATES[Variant.FP32].max_abs
            assert 0 < stats["max_abs"] <= limit, label
    assert report.graphs[graph_file(FUSION_HEAD)]["outputs"]["SCORES"]["min_top_k_overlap"] == 1.0
    assert report.retrieval["fp32"]["min_top_k_overlap"] == 1.0


def _perturbed_copy(onnx_dir: Path, target: Path, model: str, delta: float) -> None:
    """Copy the fp32 graphs with `delta` added to one of `model`'s vector initializers (a bias or LayerNorm)."""
    target.mkdir()
    for name in GRAPH_MODELS:
        shutil.copy(onnx_dir / graph_file(name), target / graph_file(name))
    graph = onnx.load(str(target / graph_file(model)))
    initializer = next(t for t in graph.graph.initializer if len(t.dims) == 1 and t.dims[0] > 8)
    initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) + delta, initializer.name))
    onnx.save(graph, str(target / graph_file(model)))


@pytest.mark.parametrize(
    ("model", "output", "tolerance"), [(FUSION_HEAD, "SCORES", "0.0001"), (ITEM_ENCODER, "EMBEDDING", "1e-05")]
)
def test_a_perturbed_graph_fails_the_gate_naming_output_and_tolerance(
    serving_checkpoint: Path,
    tiny_data: Path,
    parity_gate,
    onnx_dir: Path,
    tmp_path: Path,
    model: str,
    output: str,
    tolerance: str,
) -> None:
    _perturbed_copy(onnx_dir, tmp_path / "graphs", model, 0.05)
    report = new_report(serving_checkpoint, tiny_data)
    if model == FUSION_HEAD:
        parity_gate.check_head(report, tmp_path / "graphs")
    else:
        parity_gate.check_towers(report, tmp_path / "graphs", Variant.FP32)
    assert any(
        f.startswith(f"{graph_file(model)}: output {output} max|Δ|=") and f.endswith(f"exceeds tolerance {tolerance}")
        for f in report.failures
    ), report.failures
    path = report.write(tmp_path)
    with pytest.raises(ParityError, match=f"{graph_file(model)}: output {output}"):
        report.raise_on_failure(path)


def test_report_json_records_failures_and_verdict(tmp_path: Path) -> None:
    import json

    report = ParityReport(checkpoint="c", data="d", runtime={}, tolerances={}, failures=["g.onnx: output X"])
    written = json.loads(report.write(tmp_path).read_text())
    assert written["passed"] is False and written["failures"] == ["g.onnx: output X"]
