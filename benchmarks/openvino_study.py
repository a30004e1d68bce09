"""OpenVINO against onnxruntime as the CPU runtime of an exported encoder graph: same inputs, same threads.

    pip install openvino            # into any environment with onnxruntime and numpy (< 2 beside pytriton)
    python benchmarks/openvino_study.py --graph REPO/query_encoder/1/model.onnx [--threads 1 2]

Prints seq/s of each runtime at batch 1, 4 and 16 (16-token queries, the last 4 tokens padding) and
the largest difference between their embeddings. It imports nothing from aisle, so it runs in a
throwaway environment and OpenVINO never becomes one of aisle's dependencies unless it earns it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

#: (batch, sequence length) pairs measured.
SHAPES = ((1, 16), (4, 16), (16, 16))
#: Sequences timed per shape (after a short warm-up).
SEQUENCES = 200


def timed(run: Callable[[dict], np.ndarray], feeds: dict, repeats: int) -> tuple[float, np.ndarray]:
    """Seconds per run of `run(feeds)` over `repeats` runs after five warm-up runs, and its last output."""
    for _ in range(5):
        run(feeds)
    start = time.perf_counter()
    for _ in range(repeats):
        out = run(feeds)
    return (time.perf_counter() - start) / repeats, out


def compare(graph: str, threads: int, rng: np.random.Generator) -> list[str]:
    import onnxruntime as ort
    import openvino as ov

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    settings = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(graph, "CPU", settings)
    request = compiled.create_infer_request()
    names = [i.name for i in session.get_inputs()]
    lines = []
    for batch, length in SHAPES:
        ids = rng.integers(1000, 20000, size=(batch, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[:, length - 4 :] = 0
        feeds = dict(zip(names, (ids, mask)))
        repeats = max(1, SEQUENCES // batch)
        ort_s, ort_out = timed(lambda f: session.run(None, f)[0], feeds, repeats)
        ov_s, ov_out = timed(lambda f: request.infer(f)[compiled.output(0)], feeds, repeats)
        lines.append(
            f"threads {threads} batch {batch:2d} len {length}: onnxruntime {batch / ort_s:6.0f} seq/s, "
            f"OpenVINO {batch / ov_s:6.0f} seq/s (x{ort_s / ov_s:.2f}), max |diff| {np.abs(ort_out - ov_out).max():.1e}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", required=True, help="an exported encoder graph (model.onnx)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads of both runtimes")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for threads in args.threads:
        print("\n".join(compare(args.graph, threads, rng)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
