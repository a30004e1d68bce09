"""INT8 of the query tower against its fp32 graph, static (calibrated) and weight-only: accuracy and speed.

    python -m aisle.benchmarks.int8_static_study --graph ONNX_DIR/query_encoder.onnx \\
        --tokenizer REPO/query_encoder/1 --data DATA [--out DIR]

`aisle export onnx --int8` quantises the towers dynamically and fails the INT8 gate (min cosine
0.984 < 0.99). This study tries onnxruntime's static quantiser instead: QDQ format, per-channel int8
weights, uint8 activations calibrated on the shop's own queries, and a choice of weight MatMuls kept
in fp32 (the products of two activations, attention's QK^T and AV, always are). Calibration and
evaluation use disjoint queries. For each configuration it prints the min / mean cosine against the
fp32 graph on the held-out queries, the gate's verdict, and seq/s of both graphs at batch 1, 4 and
16 on 1 and 2 threads. Nothing here is served: a configuration would have to pass the gate and be
faster before it earned a place in the export.

Weight-only quantisation (onnxruntime's MatMulNBits, which needs `onnx-ir`, in the [bench] extra)
keeps the activations out of the calibration problem: int8 weights in blocks of 32 along the
reduction axis, each block with its own scale; at accuracy level 4 the kernel also quantises each
block of activations on the fly (int8 products), at the default level it dequantises the weights to
fp32. At batch 1 the fp32 tower is bound by reading its 42 MB of weights, which int8 weights cut.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aisle.export.graphs import Variant
from aisle.export.tolerances import TOWER_GATES
from aisle.schema import ATTENTION_MASK, INPUT_IDS, ServingLimits
from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

CALIBRATION_QUERIES = 256
HELD_OUT_QUERIES = 1000
TIMED_QUERIES = 320


Calibration = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Static:
    """Static QDQ: a calibration method and the weight MatMuls (name regex) kept in fp32."""

    name: str
    method: str  # onnxruntime CalibrationMethod member
    keep_fp32: str = r"$^"  # matches nothing

    def quantize(self, prepared: Path, out: Path, calibration: Calibration) -> None:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        graph = onnx.load(str(prepared)).graph
        weights = {initializer.name for initializer in graph.initializer}
        excluded = [
            node.name
            for node in graph.node
            if node.op_type == "MatMul"
            and (not any(name in weights for name in node.input) or re.search(self.keep_fp32, node.name))
        ]
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod[self.method],
        )


@dataclass(frozen=True)
class WeightOnly:
    """MatMulNBits: every weight MatMul with `bits`-bit symmetric weights in blocks of 32."""

    name: str
    bits: int
    accuracy_level: int | None  # 4: int8 activations per block; None: weights dequantised to fp32

    def quantize(self, prepared: Path, out: Path, calibration: Calibration) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per node otherwise
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(prepared)),
            bits=self.bits,
            block_size=32,
            is_symmetric=True,
            accuracy_level=self.accuracy_level,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), False)


CONFIGS: tuple[Static | WeightOnly, ...] = (
    Static("every weight MatMul, MinMax", "MinMax"),
    Static("every weight MatMul, Entropy", "Entropy"),
    Static("FFN output kept fp32, MinMax", "MinMax", r"layer\.\d+/output/dense"),
    Static("FFN + attention outputs kept fp32, Entropy", "Entropy", r"/output/dense"),
    Static("only Q/K/V in int8, Entropy", "Entropy", r"/output/dense|/intermediate/"),
    WeightOnly("weight-only int8, int8 products (accuracy level 4)", 8, 4),
    WeightOnly("weight-only int8, fp32 products", 8, None),
    WeightOnly("weight-only int4, int8 products (accuracy level 4)", 4, 4),
)


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed(run_session, tokenizer, texts: list[str], bucketing: Bucketing, batch: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(texts), batch):
        ids, mask = encode_batch(tokenizer, texts[start : start + batch], bucketing)
        outputs.append(run_session.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])
    return np.concatenate(outputs)


def speed(fp32: Path, int8: Path, tokenizer, texts: list[str], bucketing: Bucketing) -> dict[str, float]:
    """int8 / fp32 seq/s per (threads, batch); each graph timed twice, interleaved, best kept."""
    ratios = {}
    for threads in (1, 2):
        sessions = {"fp32": session(fp32, threads), "int8": session(int8, threads)}
        for batch in (1, 4, 16):
            best = dict.fromkeys(sessions, 0.0)
            for _ in range(2):
                for name, run_session in sessions.items():
                    start = time.perf_counter()
                    embed(run_session, tokenizer, texts, bucketing, batch)
                    best[name] = max(best[name], len(texts) / (time.perf_counter() - start))
            ratios[f"threads{threads}_batch{batch}"] = best["int8"] / best["fp32"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from aisle.data.format import load_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", type=Path, required=True, help="the exported fp32 query tower (query_encoder.onnx)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a directory with the tower's tokenizer.json")
    parser.add_argument("--data", type=Path, required=True, help="a shop dataset; its queries calibrate and judge")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    graph = args.graph.resolve()  # read from inside the scratch directory

    buckets = ServingLimits().query_buckets
    tokenizer = load_tokenizer(args.tokenizer, buckets[-1])
    bucketing = Bucketing(buckets)
    texts = sorted({query.text for query in load_dataset(args.data).queries})
    np.random.default_rng(0).shuffle(texts)
    calibration_texts = texts[:CALIBRATION_QUERIES]
    held_out = texts[CALIBRATION_QUERIES : CALIBRATION_QUERIES + HELD_OUT_QUERIES]
    calibration: Calibration = []
    # The histogram calibrators stack every batch's activations: one shape for all (the largest bucket).
    for start in range(0, len(calibration_texts), 16):
        ids, mask = encode_batch(tokenizer, calibration_texts[start : start + 16], Bucketing(buckets[-1:]))
        calibration.append({INPUT_IDS: ids, ATTENTION_MASK: mask})
    gate = TOWER_GATES[Variant.INT8].min_cosine
    reference = embed(session(graph, 2), tokenizer, held_out, bucketing, 16)
    keep = np.linalg.norm(reference, axis=1) > 0
    results = []
    # chdir: onnxruntime's quantiser saves large intermediate graphs with their weights in
    # uuid-named *.data files in the working directory; they belong in the scratch directory.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference cannot type every node of the exported graph; ONNX's own suffices.
        quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
        for config in CONFIGS:
            int8 = Path(scratch) / "int8.onnx"
            config.quantize(prepared, int8, calibration)
            quantised = embed(session(int8, 2), tokenizer, held_out, bucketing, 16)
            a, b = reference[keep], quantised[keep]
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            ratios = speed(graph, int8, tokenizer, held_out[:TIMED_QUERIES], bucketing)
            result = {"config": config.name, "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
            results.append({**result, "passes_gate": bool(cosine.min() >= gate), "int8_over_fp32": ratios})
            speeds = ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items())
            verdict = "PASS" if cosine.min() >= gate else "FAIL"
            print(
                f"{config.name}: min cosine {cosine.min():.4f} (gate {gate}: {verdict}), mean {cosine.mean():.5f}; "
                f"int8 / fp32 seq/s: {speeds}",
                flush=True,
            )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "int8_static.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
