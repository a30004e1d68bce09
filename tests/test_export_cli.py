"""`aisle export onnx|check`: the gate decides the exit status; bad input is refused with a clear message."""

import json
import os
import shutil
from pathlib import Path

import pytest

from aisle.cli import build_parser, main
from aisle.export.graphs import GRAPH_MODELS, graph_file
from aisle.export.parity import REPORT_FILE
from aisle.modeling.checkpoint import HEAD_CONFIG, HEAD_WEIGHTS, MANIFEST


def _linked_copy(source: Path, target: Path) -> Path:
    """A copy of a directory tree made of symlinks, whose entries a test may replace."""
    shutil.copytree(source, target, copy_function=os.symlink)
    return target


def test_export_onnx_passes_its_gate_and_writes_graphs_and_report(
    serving_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "graphs"
    argv = ["export", "onnx", "--checkpoint", str(serving_checkpoint), "--data", str(tiny_data), "--out", str(out)]
    assert main([*argv, "--no-optimize"]) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["passed"] is True and report["failures"] == []
    assert all((out / graph_file(model)).is_file() and graph_file(model) in report["graphs"] for model in GRAPH_MODELS)
    printed = capsys.readouterr().out
    assert "query_encoder.onnx" in printed and "max|Δ|=" in printed and "parity gate passed" in printed


def test_export_check_against_a_mismatched_checkpoint_exits_nonzero_naming_output_and_tolerance(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch
    from safetensors.torch import save_file

    from aisle.modeling.fusion import FusionHead, FusionHeadConfig

    other = _linked_copy(serving_checkpoint, tmp_path / "other_ckpt")
    (other / HEAD_WEIGHTS).unlink()
    torch.manual_seed(1234)
    head = FusionHead(FusionHeadConfig.load(other / HEAD_CONFIG))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(other / HEAD_WEIGHTS))
    graphs = _linked_copy(onnx_dir, tmp_path / "graphs")

    argv = ["export", "check", "--checkpoint", str(other), "--data", str(tiny_data), "--onnx-dir", str(graphs)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "fusion_head.onnx: output SCORES max|Δ|=" in error and "exceeds tolerance 0.0001" in error
    assert "query_encoder.onnx" not in error, "the towers still match"
    assert json.loads((graphs / REPORT_FILE).read_text())["passed"] is False


def _onnx_argv(checkpoint: Path, data: Path, out: Path) -> list[str]:
    return ["export", "onnx", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]


def test_export_names_the_missing_checkpoint_piece(
    serving_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = _linked_copy(serving_checkpoint, tmp_path / "ckpt")
    (broken / HEAD_CONFIG).unlink()
    assert main(_onnx_argv(broken, tiny_data, tmp_path / "out")) == 2
    assert f"missing {HEAD_CONFIG}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_manifest_disagreeing_with_the_weights(
    serving_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = _linked_copy(serving_checkpoint, tmp_path / "ckpt")
    manifest = json.loads((broken / MANIFEST).read_text())
    (broken / MANIFEST).unlink()
    (broken / MANIFEST).write_text(json.dumps({**manifest, "embedding_dim": 768}))
    assert main(_onnx_argv(broken, tiny_data, tmp_path / "out")) == 2
    assert "embedding_dim=768" in capsys.readouterr().err


def test_export_refuses_an_output_path_that_is_a_file(
    serving_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "out"
    target.write_text("")
    assert main(_onnx_argv(serving_checkpoint, tiny_data, target)) == 2
    assert f"{target}: output path exists and is not a directory" in capsys.readouterr().err


def test_export_refuses_a_missing_dataset(serving_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(_onnx_argv(serving_checkpoint, tmp_path / "nowhere", tmp_path / "out")) == 2
    assert "nowhere: dataset directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["onnx", "check", "trt", "catalog", "repo"])
def test_every_export_option_is_explained_in_help(command: str) -> None:
    export = next(a for a in build_parser()._subparsers._actions if a.choices and "export" in a.choices)
    group = next(a for a in export.choices["export"]._subparsers._actions if a.choices)
    parser = group.choices[command]
    assert parser.description
    for action in parser._actions:
        assert action.help and len(action.help) > 15, action.dest
