"""The parity gate: exported graphs against the PyTorch checkpoint, on real tokenised data.

Why real data and odd shapes: exports checked on all-ones inputs let padding and masking bugs
through. The gate tokenises the dataset's queries and item texts exactly as serving does
(aisle.tokenization, the manifest's buckets) and covers batch sizes 1, 7 and 64, mixed lengths in
one padded batch, every length bucket, texts cut at the maximum length, a single-token text and
blank texts (all-zero mask -> zero vector). The fusion head gets real embeddings, user vectors
built the way serving builds them, raw item features with unknown (NaN) values, an empty query
and an empty history.

Each graph's output gets max |Δ|, mean |Δ| and min row cosine; rankings (the head's scores per
query, the towers' query->catalog retrieval) get top-K overlap. Limits live in tolerances.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aisle.errors import ExportError, ParityError
from aisle.export.graphs import Variant, graph_file
from aisle.export.tolerances import HEAD_GATE, TOP_K, TOWER_GATES, Gate
from aisle.schema import FUSION_HEAD, ITEM_ENCODER, QUERY_ENCODER, ModelDecl
from aisle.tokenization import Bucketing, encode_batch

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

    from aisle.data.format import Dataset
    from aisle.modeling.loading import Checkpoint

REPORT_FILE = "parity_report.json"
#: Batch sizes every graph is run at.
BATCH_SIZES = (1, 7, 64)
#: Catalog items used for head candidates and the retrieval ranking (keeps the gate fast).
MAX_CATALOG = 64
#: Candidates per head request.
HEAD_CANDIDATES = 100
#: Threads per ORT session: the serving CPUs' default and the benchmark's setting.
INTRA_OP_THREADS = 2

#: A case: a name and the model's inputs, in the order of its ModelDecl.inputs.
Case = tuple[str, tuple[np.ndarray, ...]]
#: Anything that runs one model on its inputs (onnxruntime session, TensorRT engine) -> its output.
Runner = Callable[[tuple[np.ndarray, ...]], np.ndarray]


# --- measures ----------------------------------------------------------------------------------


@dataclass
class Stats:
    """Differences of one output over some rows; top-K fields only for rankings."""

    max_abs: float
    mean_abs: float
    min_cosine: float
    mean_cosine: float
    rows: int
    min_top_k_overlap: float | None = None
    mean_top_k_overlap: float | None = None

    @classmethod
    def merge(cls, parts: list[Stats]) -> Stats:
        rows = sum(p.rows for p in parts)
        top_k = [
            (p.min_top_k_overlap, p.mean_top_k_overlap, p.rows)
            for p in parts
            if p.min_top_k_overlap is not None and p.mean_top_k_overlap is not None
        ]
        return cls(
            max_abs=max(p.max_abs for p in parts),
            mean_abs=sum(p.mean_abs * p.rows for p in parts) / rows,
            min_cosine=min(p.min_cosine for p in parts),
            mean_cosine=sum(p.mean_cosine * p.rows for p in parts) / rows,
            rows=rows,
            min_top_k_overlap=min(low for low, _, _ in top_k) if top_k else None,
            mean_top_k_overlap=sum(mean * n for _, mean, n in top_k) / sum(n for _, _, n in top_k) if top_k else None,
        )

    def failures(self, gate: Gate, graph: str, output: str) -> list[str]:
        return gate.failures(
            graph, output, max_abs=self.max_abs, min_cosine=self.min_cosine, top_k=self.mean_top_k_overlap
        )


def row_cosine(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Cosine along the last axis; two zero vectors agree (1), a zero against a non-zero does not (0)."""
    ref = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    act = actual.reshape(-1, actual.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(act, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(act, axis=1) == 0)
    cosine = np.where(norms > 0, (ref * act).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cosine)


def top_k_overlap(reference_scores: np.ndarray, actual_scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per row: the share of the reference's top-k items that the actual top-k also holds."""
    k = min(k, reference_scores.shape[-1])
    ref = np.argsort(-reference_scores, axis=-1, kind="stable")[..., :k].reshape(-1, k)
    act = np.argsort(-actual_scores, axis=-1, kind="stable")[..., :k].reshape(-1, k)
    return np.array([len(set(r) & set(a)) / k for r, a in zip(ref, act)])


def compare(reference: np.ndarray, actual: np.ndarray, *, ranking: bool = False) -> Stats:
    """Differences of `actual` from `reference` (NaN anywhere makes max|Δ| NaN, which fails any gate)."""
    if reference.shape != actual.shape:
        raise ExportError(f"output shape {actual.shape} differs from PyTorch's {reference.shape}")
    delta = np.abs(reference.astype(np.float64) - actual.astype(np.float64))
    cosine = row_cosine(reference, actual)
    stats = Stats(float(delta.max()), float(delta.mean()), float(cosine.min()), float(cosine.mean()), int(cosine.size))
    if ranking:
        overlap = top_k_overlap(reference, actual)
        stats.min_top_k_overlap, stats.mean_top_k_overlap = float(overlap.min()), float(overlap.mean())
    return stats


# --- inputs ------------------------------------------------------------------------------------


def _spread(values: list, count: int) -> list:
    """`count` values evenly spaced through `values` (which is sorted by length)."""
    return [values[round(i * (len(values) - 1) / max(count - 1, 1))] for i in range(count)]


def _word_prefixes(tokenizer: Tokenizer, corpus: str) -> tuple[list[tuple[int, str]], str]:
    """(token count with special tokens, text) for each whole-word prefix of `corpus` within the
    maximum length, and the corpus's first word that is a single token.

    Cutting at word ends keeps a prefix's tokens equal to the corpus's first tokens.
    """
    encoding = tokenizer.encode(corpus)
    words = encoding.word_ids
    prefixes, single = [], ""
    for index in range(1, len(words) - 2):  # the last content token may belong to a truncated word
        if words[index] is not None and words[index + 1] != words[index]:
            prefixes.append((index + 2, corpus[: encoding.offsets[index][1]]))
            if not single and words[index - 1] != words[index]:
                single = corpus[encoding.offsets[index][0] : encoding.offsets[index][1]]
    if not single:
        raise ExportError("the parity data has no word that is a single token")
    return prefixes, single


def encoder_cases(tokenizer: Tokenizer, texts: list[str], bucketing: Bucketing) -> list[Case]:
    """The padded batches one tower is checked on, tokenised as serving tokenises them."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ExportError("parity data has no non-blank texts for a tower")
    by_length = sorted(texts, key=lambda t: len(tokenizer.encode(t).ids))
    corpus = " ".join(itertools.islice(itertools.cycle(texts), 8 * bucketing.max_length))
    prefixes, single = _word_prefixes(tokenizer, corpus)
    batches: list[tuple[str, list[str]]] = [
        (f"batch_{n}", list(itertools.islice(itertools.cycle(texts), n))) for n in BATCH_SIZES
    ]
    batches.append(("mixed_lengths", _spread(by_length, 5) + [single, ""]))
    lower = 0
    for bucket in bucketing.buckets:
        fitting = [text for count, text in prefixes if lower < count <= bucket]
        if not fitting:
            raise ExportError(f"no whole-word text of {lower + 1}..{bucket} tokens can be cut from the parity data")
        batches.append((f"bucket_{bucket}", _spread(fitting, 3)))
        lower = bucket
    batches.append(("cut_at_max_length", [corpus, corpus[len(texts[0]) :]]))
    batches.append(("single_token_and_blank", [single, "", "   "]))
    return [(name, encode_batch(tokenizer, batch, bucketing)) for name, batch in batches]


@dataclass
class ParityInputs:
    """Everything the gate feeds the graphs, built once per export."""

    query_cases: list[Case]
    item_cases: list[Case]
    #: Tokenised queries and catalog texts, in batches, for the retrieval ranking.
    retrieval_queries: list[Case]
    retrieval_items: list[Case]
    item_features: np.ndarray  # [catalog, F] raw features
    histories: list[list[int]]  # catalog row indices, oldest first


def build_inputs(checkpoint: Checkpoint, dataset: Dataset) -> ParityInputs:
    """Tokenise the dataset's queries and item texts with each tower's tokenizer and buckets."""
    from aisle.tokenization import load_tokenizer

    manifest = checkpoint.manifest
    query_bucketing, item_bucketing = Bucketing(manifest.limits.query_buckets), Bucketing(manifest.limits.item_buckets)
    query_tokenizer = load_tokenizer(checkpoint.query_dir, query_bucketing.max_length)
    item_tokenizer = load_tokenizer(checkpoint.item_dir, item_bucketing.max_length)
    catalog = dataset.items[:MAX_CATALOG]
    row = {item.item_id: index for index, item in enumerate(catalog)}
    query_texts = [q.text for q in dataset.queries if q.text.strip()][: max(BATCH_SIZES)]
    item_texts = [item.text() for item in catalog]

    def batched(tokenizer: Tokenizer, texts: list[str], bucketing: Bucketing) -> list[Case]:
        size = max(BATCH_SIZES)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        return [(f"retrieval_{i}", encode_batch(tokenizer, chunk, bucketing)) for i, chunk in enumerate(chunks)]

    histories = [
        [row[i] for i in session.history[-manifest.limits.max_history :] if i in row]
        for session in dataset.sessions
        if any(i in row for i in session.history)
    ]
    return ParityInputs(
        query_cases=encoder_cases(query_tokenizer, query_texts, query_bucketing),
        item_cases=encoder_cases(item_tokenizer, item_texts, item_bucketing),
        retrieval_queries=batched(query_tokenizer, query_texts, query_bucketing),
        retrieval_items=batched(item_tokenizer, item_texts, item_bucketing),
        item_features=np.array([item.features() for item in catalog], dtype=np.float32),
        histories=histories,
    )


def head_cases(
    query_embeddings: np.ndarray, item_embeddings: np.ndarray, item_features: np.ndarray, users: np.ndarray
) -> list[Case]:
    """Head requests of batch 1, 7 and 64 (plus one candidate each), with an empty query and history.

    Each request row ranks a different window of the catalog; one candidate has an unknown price
    and one has no known feature at all.
    """
    catalog, dim = item_embeddings.shape
    # Row 0 is a real query and user; rows 1 and 2 bring an empty query and an empty history.
    queries = np.insert(query_embeddings, 1, 0.0, axis=0)
    users = np.insert(users, min(2, len(users)), 0.0, axis=0)

    def request(batch: int, candidates: int) -> tuple[np.ndarray, ...]:
        rows = [np.roll(np.arange(catalog), -7 * b)[:candidates] for b in range(batch)]
        features = np.stack([item_features[r] for r in rows]).copy()
        features[0, 0, 0] = np.nan
        features[-1, -1, :] = np.nan
        return (
            queries[np.arange(batch) % len(queries)],
            users[np.arange(batch) % len(users)],
            np.stack([item_embeddings[r] for r in rows]),
            features,
        )

    candidates = min(HEAD_CANDIDATES, catalog)
    cases = [(f"batch_{n}", request(n, candidates)) for n in BATCH_SIZES]
    cases.append(("one_candidate", request(max(BATCH_SIZES), 1)))
    return cases


# --- runners -----------------------------------------------------------------------------------


def cpu_session(path: Path, *, threads: int = INTRA_OP_THREADS) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session with a fixed intra-op thread count."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: onnxruntime.InferenceSession, decl: ModelDecl, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    feeds = {tensor.name: array for tensor, array in zip(decl.inputs, inputs)}
    return session.run([decl.outputs[0].name], feeds)[0]


def ort_runner(path: Path, decl: ModelDecl) -> Runner:
    """A Runner over an onnxruntime CPU session; load and run failures become ExportError naming the file."""
    try:
        session = cpu_session(path)
    except Exception as e:  # onnxruntime raises its own, unexported exception types
        raise ExportError(f"{path.name}: onnxruntime CPU cannot load this graph: {e}") from e

    def run(inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        try:
            return run_session(session, decl, inputs)
        except Exception as e:
            raise ExportError(f"{path.name}: onnxruntime CPU cannot run this graph: {e}") from e

    return run


def run_torch(module: Any, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(*(torch.from_numpy(array) for array in inputs)).numpy()


# --- the gate ----------------------------------------------------------------------------------


@dataclass
class ParityReport:
    """The JSON written next to the graphs; `failures` non-empty means the gate failed."""

    checkpoint: str
    data: str
    runtime: dict[str, str]
    tolerances: dict[str, dict[str, float]]
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrieval: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: What produced each variant (optimizer fusions, fp16 node precisions, quantisation settings).
    conversions: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / REPORT_FILE
        path.write_text(json.dumps({**asdict(self), "passed": self.passed}, indent=2, allow_nan=True) + "\n")
        return path

    def summary(self) -> list[str]:
        """One line per graph output, retrieval ranking, skipped check and measured speed ratio."""
        lines = []
        for label, entry in self.graphs.items():
            for output, stats in entry["outputs"].items():
                line = (
                    f"{label:28} {output:10} max|Δ|={stats['max_abs']:.2e} mean|Δ|={stats['mean_abs']:.2e} "
                    f"cosine min={stats['min_cosine']:.6f} mean={stats['mean_cosine']:.6f}"
                )
                if stats["mean_top_k_overlap"] is not None:
                    line += (
                        f" top-{TOP_K} overlap mean={stats['mean_top_k_overlap']:.3f} "
                        f"min={stats['min_top_k_overlap']:.2f}"
                    )
                lines.append(line)
        for key, stats in self.retrieval.items():
            lines.append(
                f"retrieval ranking {key:10} top-{TOP_K} overlap mean={stats['mean_top_k_overlap']:.3f} "
                f"min={stats['min_top_k_overlap']:.2f} over {stats['rows']} queries"
            )
        lines += [f"skipped {what}: {why}" for what, why in self.skipped.items()]
        for model, speed in self.benchmark.items():
            for label, ratios in speed.get("ratio_vs_fp32", {}).items():
                lines.append(
                    f"speed {model} {label} vs fp32: "
                    + ", ".join(f"{key} x{value:.2f}" for key, value in ratios.items())
                    + " ("
                    + ", ".join(f"{key}={value:.0f}" for key, value in speed["seq_per_s"][label].items())
                    + f"; fp32 {', '.join(f'{v:.0f}' for v in speed['seq_per_s']['fp32'].values())})"
                )
        return lines

    def raise_on_failure(self, report_path: Path) -> None:
        if self.failures:
            raise ParityError("parity gate failed:\n  " + "\n  ".join(self.failures) + f"\nfull report: {report_path}")


class ParityGate:
    """PyTorch references computed once; each graph variant is then compared against them."""

    def __init__(self, checkpoint: Checkpoint, dataset: Dataset) -> None:
        self.checkpoint = checkpoint
        self.schema = checkpoint.manifest.schema()
        self.inputs = build_inputs(checkpoint, dataset)
        towers = {QUERY_ENCODER: checkpoint.query_tower, ITEM_ENCODER: checkpoint.item_tower}
        self.cases = {QUERY_ENCODER: self.inputs.query_cases, ITEM_ENCODER: self.inputs.item_cases}
        self.references = {name: [run_torch(towers[name], case) for _, case in self.cases[name]] for name in towers}
        queries = np.concatenate([run_torch(towers[QUERY_ENCODER], case) for _, case in self.inputs.retrieval_queries])
        items = np.concatenate([run_torch(towers[ITEM_ENCODER], case) for _, case in self.inputs.retrieval_items])
        self.retrieval_reference = queries @ items.T
        self.cases[FUSION_HEAD] = head_cases(queries, items, self.inputs.item_features, self._users(items))
        self.references[FUSION_HEAD] = [run_torch(checkpoint.head, case) for _, case in self.cases[FUSION_HEAD]]

    def _users(self, items: np.ndarray) -> np.ndarray:
        """User vectors of the dataset's histories, built by the function serving uses."""
        from aisle.modeling.user import user_vector

        decay = self.checkpoint.manifest.limits.history_decay
        histories = self.inputs.histories or [list(range(min(5, len(items))))]
        return np.stack([user_vector(items[h], decay) for h in histories])

    def _record(self, report: ParityReport, model: str, label: str, gate: Gate, outputs: list[np.ndarray]) -> None:
        output_name = self.schema.model(model).outputs[0].name
        ranking = model == FUSION_HEAD
        per_case = {
            name: compare(reference, actual, ranking=ranking)
            for (name, _), reference, actual in zip(self.cases[model], self.references[model], outputs)
        }
        merged = Stats.merge(list(per_case.values()))
        report.graphs[label] = {
            "model": model,
            "gate": gate.as_dict(),
            "outputs": {output_name: asdict(merged)},
            "cases": {name: asdict(stats) for name, stats in per_case.items()},
        }
        report.failures += merged.failures(gate, label, output_name)

    def check_tower_pair(
        self, report: ParityReport, runners: dict[str, tuple[str, Runner]], gate: Gate, key: str
    ) -> None:
        """Both towers (model -> (label, runner)): each tower's stats, then the retrieval ranking they
        produce together, recorded under `key`."""
        retrieval = []
        for model, cases in (
            (QUERY_ENCODER, self.inputs.retrieval_queries),
            (ITEM_ENCODER, self.inputs.retrieval_items),
        ):
            label, runner = runners[model]
            self._record(report, model, label, gate, [runner(case) for _, case in self.cases[model]])
            retrieval.append(np.concatenate([runner(case) for _, case in cases]))
        stats = compare(self.retrieval_reference, retrieval[0] @ retrieval[1].T, ranking=True)
        pair = f"{runners[QUERY_ENCODER][0]}+{runners[ITEM_ENCODER][0]}"
        report.retrieval[key] = {"graphs": pair, **asdict(stats)}
        ranking_gate = Gate(mean_top_k_overlap=gate.mean_top_k_overlap)
        report.failures += stats.failures(ranking_gate, pair, "retrieval ranking (EMBEDDING·EMBEDDING)")

    def check_head_runner(self, report: ParityReport, label: str, runner: Runner, gate: Gate) -> None:
        self._record(report, FUSION_HEAD, label, gate, [runner(case) for _, case in self.cases[FUSION_HEAD]])

    def check_towers(self, report: ParityReport, graph_dir: Path, variant: Variant) -> None:
        """One variant's tower graphs on onnxruntime CPU.

        A graph that cannot run fails the gate, except an fp16 graph: fp16 targets GPU runtimes, so
        when onnxruntime CPU cannot run it its parity is skipped, with onnxruntime's reason.
        """
        try:
            runners = {
                model: (
                    graph_file(model, variant),
                    ort_runner(graph_dir / graph_file(model, variant), self.schema.model(model)),
                )
                for model in (QUERY_ENCODER, ITEM_ENCODER)
            }
            self.check_tower_pair(report, runners, TOWER_GATES[variant], variant.value)
        except ExportError as e:
            if variant is Variant.FP16:
                report.skipped[f"{variant.value} towers"] = str(e)
            else:
                report.failures.append(str(e))

    def check_head(self, report: ParityReport, graph_dir: Path) -> None:
        path = graph_dir / graph_file(FUSION_HEAD)
        try:
            self.check_head_runner(report, path.name, ort_runner(path, self.schema.model(FUSION_HEAD)), HEAD_GATE)
        except ExportError as e:
            report.failures.append(str(e))


def new_report(checkpoint_dir: Path, data_dir: Path) -> ParityReport:
    import onnxruntime
    import torch

    return ParityReport(
        checkpoint=str(checkpoint_dir),
        data=str(data_dir),
        runtime={
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": str(INTRA_OP_THREADS),
        },
        tolerances={
            **{f"{QUERY_ENCODER}/{ITEM_ENCODER} {v.value}": g.as_dict() for v, g in TOWER_GATES.items()},
            FUSION_HEAD: HEAD_GATE.as_dict(),
            "top_k": {"k": TOP_K},
        },
    )
