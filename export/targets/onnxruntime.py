"""onnxruntime: the NGC tritonserver image's onnxruntime backend, on the CPU or (--gpu) a GPU.

With --gpu --trt-accelerator onnxruntime hands the graphs to its TensorRT execution provider in FP16:
faster than plain CUDA, engines built lazily on first load and cached per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aisle.errors import ExportError
from aisle.export.repo_format import GRAPH_FILE
from aisle.export.targets import RenderTarget, Runtime, TargetOption
from aisle.schema import ModelDecl

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as pb

#: Settings of onnxruntime's TensorRT execution provider (--trt-accelerator).
TRT_ACCELERATOR_PARAMETERS: dict[str, str] = {
    "precision_mode": "FP16",
    "max_workspace_size_bytes": str(1 << 30),
    "trt_engine_cache_enable": "1",
}
#: Where the execution provider caches its engines, one directory per model.
TRT_ENGINE_CACHE_ROOT = "/tmp/aisle-trt-cache"


@dataclass(frozen=True)
class OnnxruntimeTarget(RenderTarget):
    """gpu: run the graphs on a GPU (KIND_GPU) instead of the CPU.
    trt_accelerator: with gpu, let onnxruntime run the graphs through its TensorRT execution provider, FP16.
    """

    NAME = "onnxruntime"
    HELP = "for the NGC tritonserver image's onnxruntime backend (CPU, or GPU with --gpu)"
    # intra_op_thread_count: the onnxruntime backend's own key for a session's intra-op threads.
    GRAPH_RUNTIME = Runtime(
        "onnxruntime", platform="onnxruntime_onnx", model_file=GRAPH_FILE, threads_parameter="intra_op_thread_count"
    )
    OPTIONS = (
        TargetOption("--gpu", "run the graphs on a GPU"),
        TargetOption("--trt-accelerator", "with --gpu: onnxruntime's TensorRT execution provider, FP16"),
    )

    gpu: bool = False
    trt_accelerator: bool = False

    def __post_init__(self) -> None:
        if self.trt_accelerator and not self.gpu:
            raise ExportError("--trt-accelerator (trt_accelerator=True) needs --gpu (gpu=True) on target onnxruntime")

    @property
    def graphs_on_gpu(self) -> bool:
        return self.gpu

    def optimize(self, decl: ModelDecl, config: pb.ModelConfig) -> None:
        if not self.trt_accelerator or self.runtime(decl.role).is_python:
            return
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        for key, value in TRT_ACCELERATOR_PARAMETERS.items():
            accelerator.parameters[key] = value
        accelerator.parameters["trt_engine_cache_path"] = f"{TRT_ENGINE_CACHE_ROOT}/{decl.name}"


TARGET = OnnxruntimeTarget
