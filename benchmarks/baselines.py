"""In-process baselines: the machine's fp32 GEMM rate, encoder FLOPs, and raw ONNX Runtime.

Why these: Triton's number alone says nothing about how good it is. Raw ORT on pre-tokenised
batches is the compute ceiling of the CPU target (no tokenizer, no IPC, no queue); the GEMM rate
is the physical ceiling of the machine; the FLOP count turns a throughput into a fraction of it.

FLOPs of a BERT encoder for one sequence of L tokens (h hidden, i intermediate, n layers), with a
multiply-add counted as 2 FLOPs: n * (8*L*h^2 [Q,K,V,O projections] + 4*L^2*h [QK^T and AV]
+ 4*L*h*i [feed-forward]). Embedding lookups, layer norms, softmax and GELU are elementwise and
left out, so the count is a lower bound of the work done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Latency
from aisle.schema import ATTENTION_MASK, INPUT_IDS
from aisle.tokenization import Bucketing, encode_batch, longest_width

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class EncoderShape:
    """The sizes of a BERT-family encoder that its FLOPs depend on (from its HF config.json)."""

    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> EncoderShape:
        path = Path(model_dir) / "config.json"
        try:
            config = json.loads(path.read_text())
            return cls(int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["intermediate_size"]))
        except FileNotFoundError as e:
            raise BenchmarkError(f"{path}: not found; FLOPs are counted from the encoder's HF config") from e
        except KeyError as e:
            raise BenchmarkError(f"{path}: missing field {e.args[0]!r} needed to count encoder FLOPs") from e

    def flops(self, tokens: int) -> float:
        """Forward FLOPs of one sequence of `tokens` tokens."""
        h, i, length = self.hidden, self.intermediate, tokens
        return float(self.layers * (8 * length * h * h + 4 * length * length * h + 4 * length * h * i))

    def batch_flops(self, mask: np.ndarray) -> tuple[float, float]:
        """(useful, executed) FLOPs of a padded batch: real token counts vs the padded width."""
        useful = sum(self.flops(int(n)) for n in mask.sum(axis=1))
        return useful, self.flops(mask.shape[1]) * mask.shape[0]


def gemm_gflops(*, threads: int = 2, size: int = 1024, duration_s: float = 2.0) -> float:
    """Best fp32 matmul rate (GFLOP/s) of torch on `threads` threads: the machine's compute ceiling."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)
        best = float("inf")
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 / best / 1e9


def pretokenize(texts: Sequence[str], tokenizer, bucketing: Bucketing, batch_size: int, *, cut: bool) -> list[Batch]:
    """Tokenise `texts` once into batches of one length bucket each, padded to that bucket, or with
    `cut` cut to the batch's longest text, as the served text encoder runs them.

    Why group by bucket: the served encoder runs each bucket of a dynamic batch on its own, so a
    served run never mixes buckets; batching the texts in arrival order would pad whole batches to
    their longest member and understate what buckets buy.
    """
    groups: dict[int, list[str]] = {}
    for text, encoding in zip(texts, tokenizer.encode_batch(list(texts))):
        groups.setdefault(bucketing.bucket_for(len(encoding.ids)), []).append(text)
    return [
        _cut(*encode_batch(tokenizer, group[i : i + batch_size], bucketing), cut)
        for _, group in sorted(groups.items())
        for i in range(0, len(group), batch_size)
    ]


def _cut(ids: np.ndarray, mask: np.ndarray, cut: bool) -> Batch:
    width = longest_width(mask) if cut else mask.shape[1]
    return ids[:, :width], mask[:, :width]


@dataclass(frozen=True)
class OrtResult:
    """Raw ORT over pre-tokenised batches: sequences/s, per-batch latency, achieved GFLOP/s.

    cpu_cores / other_cpu_cores: cores this process and the rest of the machine used meanwhile.
    """

    name: str
    batch_size: int
    padding: str
    threads: int
    throughput_seqs: float
    latency: Latency
    mean_tokens: float
    mean_padded_tokens: float
    useful_gflops: float
    executed_gflops: float
    cpu_cores: float | None = None
    other_cpu_cores: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def ort_session(onnx_path: str | Path, threads: int):
    """An ORT CPU session configured exactly as the embedded target's encoder model configures it
    (aisle.model_repository.ort_runner: spinning off), with `threads` intra-op threads."""
    from aisle.model_repository.ort_runner import OrtGraph, OrtOptions

    return OrtGraph(Path(onnx_path), OrtOptions(intra_op_threads=threads)).session


def ort_throughput(
    session, batches: Sequence[Batch], shape: EncoderShape, *, name: str, padding: str, duration_s: float
) -> OrtResult:
    """Run `batches` round-robin for `duration_s` (after a short warm-up) and time each run.

    Token means describe the batch set; GFLOP/s count the FLOPs of the batches actually run.
    """
    if not batches:
        raise BenchmarkError(f"ORT baseline {name!r}: no batches to run")
    output = session.get_outputs()[0].name
    for ids, mask in batches[: min(len(batches), 4)]:
        session.run([output], {INPUT_IDS: ids, ATTENTION_MASK: mask})
    flops = [shape.batch_flops(mask) for _, mask in batches]
    latencies: list[float] = []
    sequences = 0
    useful = executed = 0.0
    deadline = time.perf_counter() + duration_s
    index = 0
    while time.perf_counter() < deadline or not latencies:
        ids, mask = batches[index % len(batches)]
        start = time.perf_counter()
        session.run([output], {INPUT_IDS: ids, ATTENTION_MASK: mask})
        latencies.append(time.perf_counter() - start)
        sequences += len(ids)
        useful += flops[index % len(batches)][0]
        executed += flops[index % len(batches)][1]
        index += 1
    total = sum(len(ids) for ids, _ in batches)
    busy = sum(latencies)
    return OrtResult(
        name=name,
        batch_size=len(batches[0][0]),
        padding=padding,
        threads=session.get_session_options().intra_op_num_threads,
        throughput_seqs=sequences / busy,
        latency=Latency.of(latencies),
        mean_tokens=sum(int(mask.sum()) for _, mask in batches) / total,
        mean_padded_tokens=sum(mask.size for _, mask in batches) / total,
        useful_gflops=useful / busy / 1e9,
        executed_gflops=executed / busy / 1e9,
    )
