"""Every parity tolerance of the export, declared once.

fp32 graphs must reproduce PyTorch almost exactly (an absolute bound catches padding and masking
bugs that a cosine would forgive). Reduced-precision graphs cannot: they are judged on what a
ranking user sees, embedding direction (cosine) and the overlap of the top-K ranking.

Rankings are gated on the mean top-K overlap over the queries (the minimum is reported beside it).
One query's overlap moves in steps of 1/K, so a minimum of 0.95 would forbid a single swap at
rank K in any query: it would measure near-ties in the catalog (listings that differ in a size),
not precision. Measured on the fast checkpoint: fp16 towers, min cosine 0.9999997, mean overlap
0.998 over 64 queries, one query at 0.90.
"""

from __future__ import annotations

from dataclasses import dataclass

from aisle.export.graphs import Variant

#: Rankings compare the top TOP_K results per query.
TOP_K = 10


@dataclass(frozen=True)
class Gate:
    """Limits one graph's outputs must meet against PyTorch fp32; None leaves a measure ungated."""

    max_abs: float | None = None
    min_cosine: float | None = None
    mean_top_k_overlap: float | None = None

    def failures(self, graph: str, output: str, *, max_abs: float, min_cosine: float, top_k: float | None) -> list[str]:
        """One line per violated limit, naming the graph, the output, the measured value and the limit.

        top_k: the mean top-K overlap of a ranking output (None for outputs that are no ranking).
        """
        found = []
        if self.max_abs is not None and not max_abs <= self.max_abs:
            found.append(f"{graph}: output {output} max|Δ|={max_abs:.3g} exceeds tolerance {self.max_abs:g}")
        if self.min_cosine is not None and not min_cosine >= self.min_cosine:
            found.append(f"{graph}: output {output} min cosine={min_cosine:.6f} is below tolerance {self.min_cosine:g}")
        if self.mean_top_k_overlap is not None and top_k is not None and not top_k >= self.mean_top_k_overlap:
            found.append(
                f"{graph}: output {output} mean top-{TOP_K} overlap={top_k:.3f} is below tolerance "
                f"{self.mean_top_k_overlap:g}"
            )
        return found

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


#: Text towers, per graph variant: the EMBEDDING output against the PyTorch tower; the top-K
#: overlap is of the query->catalog retrieval ranking built from both towers' embeddings.
TOWER_GATES: dict[Variant, Gate] = {
    Variant.FP32: Gate(max_abs=1e-5),
    Variant.OPT: Gate(max_abs=1e-5),
    Variant.INT8: Gate(min_cosine=0.99, mean_top_k_overlap=0.9),
    Variant.FP16: Gate(min_cosine=0.999, mean_top_k_overlap=0.95),
}

#: Fusion head graph (fp32): SCORES against the PyTorch head.
HEAD_GATE = Gate(max_abs=1e-4)
#: Fusion head in a TensorRT FP16 engine: scores judged like fp16 towers, by cosine and the
#: top-K overlap of each request's ranking.
FP16_HEAD_GATE = Gate(min_cosine=0.999, mean_top_k_overlap=0.95)
