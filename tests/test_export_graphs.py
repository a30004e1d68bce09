"""ONNX graphs carry exactly the schema's interface, in the declared opset and file format."""

import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from aisle.errors import CheckpointError, ExportError
from aisle.export.graphs import (
    BATCH_AXIS,
    GRAPH_MODELS,
    OPSET,
    export_module,
    export_onnx,
    external_data_file,
    graph_file,
)
from aisle.modeling.checkpoint import HEAD_WEIGHTS, Manifest
from aisle.modeling.loading import load_checkpoint
from aisle.schema import FUSION_HEAD, DType

ONNX_TYPES = {DType.INT64: "tensor(int64)", DType.FP32: "tensor(float)"}


@pytest.mark.parametrize("model_name", GRAPH_MODELS)
def test_graph_interface_is_the_schemas(serving_checkpoint: Path, onnx_dir: Path, model_name: str) -> None:
    decl = Manifest.load(serving_checkpoint).schema().model(model_name)
    session = ort.InferenceSession(str(onnx_dir / graph_file(model_name)), providers=["CPUExecutionProvider"])
    for declared, actual in ((decl.inputs, session.get_inputs()), (decl.outputs, session.get_outputs())):
        assert [t.name for t in actual] == [t.name for t in declared]
        assert [t.type for t in actual] == [ONNX_TYPES[t.dtype] for t in declared]
        for tensor, arg in zip(declared, actual):
            assert arg.shape[0] == BATCH_AXIS
            assert [d if d != -1 else "variable" for d in tensor.dims] == [
                d if isinstance(d, int) else "variable" for d in arg.shape[1:]
            ]


@pytest.mark.parametrize("model_name", GRAPH_MODELS)
def test_graph_uses_the_declared_opset(onnx_dir: Path, model_name: str) -> None:
    model = onnx.load(str(onnx_dir / graph_file(model_name)), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSET


def test_graph_over_the_size_threshold_keeps_weights_in_a_side_file(serving_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(serving_checkpoint)
    path = tmp_path / graph_file(FUSION_HEAD)
    export_module(
        checkpoint.head, checkpoint.manifest.schema().model(FUSION_HEAD), path, external_data_threshold_bytes=1024
    )
    sidecar = tmp_path / external_data_file(path)
    assert sidecar.stat().st_size > path.stat().st_size
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_into_a_file_path_is_refused(serving_checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "graphs"
    target.write_text("not a directory")
    with pytest.raises(ExportError, match="not a directory"):
        export_onnx(serving_checkpoint, target)


def test_export_of_a_checkpoint_missing_its_head_names_the_piece(serving_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(serving_checkpoint, broken)
    (broken / HEAD_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=HEAD_WEIGHTS):
        export_onnx(broken, tmp_path / "out")
