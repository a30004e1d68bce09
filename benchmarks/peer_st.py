"""sentence-transformers' ONNX backend in-process: the library-level reference of the peer benchmark.

Run by the peers venv's interpreter (aisle.benchmarks.peer_env), never imported by aisle: it needs
sentence-transformers, which aisle's own environment does not carry. It reads a JSON request
({"model_dir", "file_name", "texts", "check_texts", "batch_sizes", "duration_s"}) and prints one JSON
object: versions, flags, the embeddings of check_texts, and for every batch size the sequences/s and
per-batch latency of `model.encode` (tokenisation + ONNX Runtime + pooling + normalisation, what a
user of the library pays per batch) over the request's texts in order, cycled for duration_s.

    PEERS_VENV/bin/python peer_st.py REQUEST.json
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata

import numpy as np


def load(model_dir: str, file_name: str):
    """The folder's graph under sentence-transformers' ONNX backend (mean pooling: no modules.json)."""
    from sentence_transformers import SentenceTransformer

    kwargs = {"file_name": file_name, "provider": "CPUExecutionProvider"}
    return SentenceTransformer(model_dir, backend="onnx", device="cpu", local_files_only=True, model_kwargs=kwargs)


def throughput(model, texts: list[str], batch_size: int, duration_s: float) -> dict:
    """Encode consecutive batches of `batch_size` texts for `duration_s`; per-batch latency percentiles."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)] or [texts]
    for batch in batches[:2]:  # warm-up: first runs allocate
        model.encode(batch, batch_size=batch_size, normalize_embeddings=True)
    latencies: list[float] = []
    sequences = 0
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or not latencies:
        batch = batches[len(latencies) % len(batches)]
        start = time.perf_counter()
        model.encode(batch, batch_size=batch_size, normalize_embeddings=True)
        latencies.append(time.perf_counter() - start)
        sequences += len(batch)
    ms = np.asarray(latencies) * 1e3
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, (50, 90, 95, 99)))
    return {
        "batch_size": batch_size,
        "throughput_seqs": sequences / float(np.sum(latencies)),
        "batches": len(latencies),
        "latency": {"p50_ms": p50, "p90_ms": p90, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(ms.mean())},
    }


def main(request_path: str) -> None:
    request = json.loads(open(request_path).read())
    model = load(request["model_dir"], request["file_name"])
    check = model.encode(request["check_texts"], normalize_embeddings=True)
    runs = [throughput(model, request["texts"], b, request["duration_s"]) for b in request["batch_sizes"]]
    import onnxruntime

    print(
        json.dumps(
            {
                "version": metadata.version("sentence-transformers"),
                "onnxruntime": onnxruntime.__version__,
                "flags": {"backend": "onnx", "device": "cpu", "normalize_embeddings": True, **request["flags"]},
                "modules": [type(m).__name__ for m in model],
                "embeddings": np.asarray(check, dtype=np.float64).tolist(),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
