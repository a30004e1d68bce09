"""Drill: a corpus of malformed requests, sent over gRPC and HTTP/JSON to every public ensemble.

    python -m aisle.benchmarks.drills.corpus --repo REPO

One table (`malformed_corpus`): wrong dtype, wrong rank or shape, missing and extra inputs, batch
sizes that differ between inputs, empty tensors, invalid UTF-8, infinite features, negative and
unknown ids, too many candidates/history/results/filters, batches over max_batch_size. Each case
names what the refusal must name (the tensor; for an oversized batch, the limit). Expected: every
case refused with INVALID_ARGUMENT (HTTP 400) naming it, the server ready afterwards and Triton's
pending-request gauge back to zero for every model.

Where the refusal comes from: dtype, shape, input-set and batch-size errors are Triton's own
checks against the ensemble config (its messages name the input); values (UTF-8, ids, counts,
features, filters) are aisle's validators in each ensemble's first step (InvalidInput).
HTTP sends JSON tensors, except for bytes that are not UTF-8, which JSON cannot carry: those go
as binary tensor data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from aisle.benchmarks.drills.traffic import wait_until_idle
from aisle.export.repo_format import RepoManifest, catalog_dir, read_item_ids
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports, is_ready
from aisle.schema import (
    BRANDS,
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    CATEGORY,
    EMBED_ITEM,
    EMBED_QUERY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    ITEM_TEXT,
    NUM_ITEM_FEATURES,
    PRICE_RANGE,
    QUERY,
    RANK,
    RANK_COLD,
    SEARCH,
    TOP_K,
    USER_HISTORY_IDS,
    Schema,
)

PROTOCOLS = ("grpc", "http")
INVALID_ARGUMENT = "INVALID_ARGUMENT"
#: HTTP statuses as the gRPC codes they stand for, so both protocols are checked alike.
HTTP_CODES = {"400": INVALID_ARGUMENT, "404": "NOT_FOUND", "500": "INTERNAL", "503": "UNAVAILABLE"}
NOT_UTF8 = b"caf\xe9 \xff"
#: What Triton's refusal of inputs with different batch sizes says; it names one of those inputs
#: (whichever its input map yields first), not necessarily the one the case changed.
MISMATCHED_BATCH = "batch size does not match other inputs"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One malformed request: `inputs` sent to `ensemble`; the refusal must carry `code` and `names`."""

    name: str
    ensemble: str
    inputs: Arrays = field(repr=False)
    names: str
    code: str = INVALID_ARGUMENT


def _text(value: bytes | str = b"running shoes", batch: int = 1) -> np.ndarray:
    data = value.encode() if isinstance(value, str) else value
    return np.array([[data]] * batch, dtype=object)


def valid_requests(item_ids: np.ndarray) -> dict[str, Arrays]:
    """One valid request per public ensemble (known catalog ids)."""
    ids = item_ids.astype(np.int64)
    features = np.array([[[19.9, 4.5, 120, 3.0], [5.0, np.nan, 0, 1.0]]], np.float32)
    return {
        EMBED_QUERY: {QUERY: _text()},
        EMBED_ITEM: {ITEM_TEXT: _text("Trail running shoe, waterproof")},
        RANK: {QUERY: _text(), CANDIDATE_IDS: ids[None, :5], USER_HISTORY_IDS: ids[None, 5:8]},
        RANK_COLD: {
            QUERY: _text(),
            CANDIDATE_TEXTS: np.array([[b"red sneaker", b"blue kettle"]], dtype=object),
            CANDIDATE_FEATURES: features,
            USER_HISTORY_IDS: ids[None, 5:8],
        },
        SEARCH: {
            QUERY: _text(),
            USER_HISTORY_IDS: ids[None, 5:8],
            TOP_K: np.array([[5]], np.int64),
            CATEGORY: _text(b""),
            BRANDS: np.zeros((1, 0), dtype=object),
            EXCLUDE_BRANDS: np.zeros((1, 0), dtype=object),
            PRICE_RANGE: np.full((1, 2), np.nan, np.float32),
            EXCLUDE_IDS: np.zeros((1, 0), np.int64),
        },
    }


def malformed_corpus(schema: Schema, item_ids: np.ndarray) -> list[Case]:
    """The table of malformed requests for a repository's schema (limits) and catalog ids."""
    limits = schema.limits
    valid = valid_requests(item_ids)
    ids = item_ids.astype(np.int64)
    unknown = int(ids.max()) + 1_000_003
    many = 100_000

    def case(name: str, ensemble: str, names: str, drop: Sequence[str] = (), **changes: np.ndarray) -> Case:
        inputs = {k: v for k, v in valid[ensemble].items() if k not in drop}
        return Case(name, ensemble, {**inputs, **changes}, names)

    def batch_of(ensemble: str, size: int) -> Arrays:
        return {k: np.repeat(v, size, axis=0) for k, v in valid[ensemble].items()}

    cold_texts = np.array([[b"red sneaker", b"blue kettle"]], dtype=object)
    return [
        # --- wrong dtype (Triton's check against the ensemble config) ---
        case("query-as-int64", EMBED_QUERY, QUERY, QUERY=np.array([[7]], np.int64)),
        case("item-text-as-fp32", EMBED_ITEM, ITEM_TEXT, ITEM_TEXT=np.array([[1.5]], np.float32)),
        case("candidate-ids-as-fp32", RANK, CANDIDATE_IDS, CANDIDATE_IDS=ids[None, :5].astype(np.float32)),
        case("candidate-ids-as-int32", RANK, CANDIDATE_IDS, CANDIDATE_IDS=ids[None, :5].astype(np.int32)),
        case("history-as-bytes", RANK, USER_HISTORY_IDS, USER_HISTORY_IDS=np.array([[b"12"]], dtype=object)),
        case("features-as-fp64", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=np.zeros((1, 2, 4), np.float64)),
        case("candidate-texts-as-int64", RANK_COLD, CANDIDATE_TEXTS, CANDIDATE_TEXTS=np.zeros((1, 2), np.int64)),
        case("top-k-as-fp32", SEARCH, TOP_K, TOP_K=np.array([[5.0]], np.float32)),
        case("price-range-as-int64", SEARCH, PRICE_RANGE, PRICE_RANGE=np.array([[1, 9]], np.int64)),
        case("category-as-int64", SEARCH, CATEGORY, CATEGORY=np.array([[3]], np.int64)),
        # --- wrong rank or shape ---
        case("query-rank-1", EMBED_QUERY, QUERY, QUERY=np.array([b"running shoes"], dtype=object)),
        case("query-rank-3", EMBED_QUERY, QUERY, QUERY=np.array([[[b"running shoes"]]], dtype=object)),
        case("query-two-texts-per-row", EMBED_QUERY, QUERY, QUERY=np.array([[b"a", b"b"]], dtype=object)),
        case("item-text-rank-1", EMBED_ITEM, ITEM_TEXT, ITEM_TEXT=np.array([b"shoe"], dtype=object)),
        case("candidate-ids-rank-3", RANK, CANDIDATE_IDS, CANDIDATE_IDS=ids[None, None, :5]),
        case("history-rank-1", RANK, MISMATCHED_BATCH, USER_HISTORY_IDS=ids[:3]),
        case("features-rank-2", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=np.zeros((1, 8), np.float32)),
        case("features-5-per-item", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=np.zeros((1, 2, 5), np.float32)),
        case(
            "features-rows-not-texts", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=np.zeros((1, 3, 4), np.float32)
        ),
        case("price-range-3-values", SEARCH, PRICE_RANGE, PRICE_RANGE=np.zeros((1, 3), np.float32)),
        case("top-k-2-values", SEARCH, TOP_K, TOP_K=np.array([[5, 6]], np.int64)),
        # --- missing and extra inputs ---
        case("rank-without-history", RANK, USER_HISTORY_IDS, drop=[USER_HISTORY_IDS]),
        case("rank-without-candidates", RANK, CANDIDATE_IDS, drop=[CANDIDATE_IDS]),
        case("rank-cold-without-features", RANK_COLD, CANDIDATE_FEATURES, drop=[CANDIDATE_FEATURES]),
        case("search-without-top-k", SEARCH, TOP_K, drop=[TOP_K]),
        case("embed-query-extra-input", EMBED_QUERY, "EXTRA", EXTRA=np.array([[1]], np.int64)),
        case("rank-with-candidate-texts", RANK, CANDIDATE_TEXTS, CANDIDATE_TEXTS=cold_texts),
        case("embed-item-sent-a-query", EMBED_ITEM, QUERY, drop=[ITEM_TEXT], QUERY=_text()),
        # --- batch sizes that differ between inputs ---
        case("rank-query-batch-2-ids-batch-1", RANK, MISMATCHED_BATCH, QUERY=_text(batch=2)),
        case("rank-cold-texts-batch-2", RANK_COLD, MISMATCHED_BATCH, CANDIDATE_TEXTS=np.repeat(cold_texts, 2, 0)),
        case("search-top-k-batch-2", SEARCH, MISMATCHED_BATCH, TOP_K=np.array([[5], [5]], np.int64)),
        # --- empty tensors ---
        case("embed-query-batch-0", EMBED_QUERY, QUERY, QUERY=np.zeros((0, 1), dtype=object)),
        case("embed-item-batch-0", EMBED_ITEM, ITEM_TEXT, ITEM_TEXT=np.zeros((0, 1), dtype=object)),
        case("query-row-without-text", EMBED_QUERY, QUERY, QUERY=np.zeros((1, 0), dtype=object)),
        case("top-k-row-without-value", SEARCH, TOP_K, TOP_K=np.zeros((1, 0), np.int64)),
        # --- invalid UTF-8 ---
        case("query-not-utf8", EMBED_QUERY, QUERY, QUERY=_text(NOT_UTF8)),
        case("item-text-not-utf8", EMBED_ITEM, ITEM_TEXT, ITEM_TEXT=_text(NOT_UTF8)),
        case("rank-query-not-utf8", RANK, QUERY, QUERY=_text(NOT_UTF8)),
        case("rank-cold-query-not-utf8", RANK_COLD, QUERY, QUERY=_text(NOT_UTF8)),
        case(
            "candidate-text-not-utf8",
            RANK_COLD,
            CANDIDATE_TEXTS,
            CANDIDATE_TEXTS=np.array([[b"red sneaker", NOT_UTF8]], dtype=object),
        ),
        case("search-query-not-utf8", SEARCH, QUERY, QUERY=_text(NOT_UTF8)),
        case("category-not-utf8", SEARCH, CATEGORY, CATEGORY=_text(NOT_UTF8)),
        case("brand-not-utf8", SEARCH, BRANDS, BRANDS=np.array([[NOT_UTF8]], dtype=object)),
        # --- infinite features (NaN is "unknown" and valid) ---
        case("feature-plus-inf", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=_with(valid, np.inf)),
        case("feature-minus-inf", RANK_COLD, CANDIDATE_FEATURES, CANDIDATE_FEATURES=_with(valid, -np.inf)),
        case("price-range-inf", SEARCH, PRICE_RANGE, PRICE_RANGE=np.array([[np.inf, np.nan]], np.float32)),
        # --- negative and unknown ids ---
        case("negative-candidate", RANK, CANDIDATE_IDS, CANDIDATE_IDS=np.array([[int(ids[0]), -1]], np.int64)),
        case("unknown-candidate", RANK, CANDIDATE_IDS, CANDIDATE_IDS=np.array([[unknown]], np.int64)),
        case("negative-history", RANK, USER_HISTORY_IDS, USER_HISTORY_IDS=np.array([[-5]], np.int64)),
        case("unknown-history", RANK, USER_HISTORY_IDS, USER_HISTORY_IDS=np.array([[unknown]], np.int64)),
        case(
            "rank-cold-unknown-history", RANK_COLD, USER_HISTORY_IDS, USER_HISTORY_IDS=np.array([[unknown]], np.int64)
        ),
        case("search-unknown-history", SEARCH, USER_HISTORY_IDS, USER_HISTORY_IDS=np.array([[unknown]], np.int64)),
        case("search-negative-excluded", SEARCH, EXCLUDE_IDS, EXCLUDE_IDS=np.array([[-2]], np.int64)),
        # --- too many candidates, history, results, filters ---
        case(
            "candidates-over-max",
            RANK,
            "max_candidates",
            CANDIDATE_IDS=np.resize(ids, limits.max_candidates + 1)[None],
        ),
        case("candidates-100k", RANK, CANDIDATE_IDS, CANDIDATE_IDS=np.resize(ids, many)[None]),
        case("history-over-max", RANK, "max_history", USER_HISTORY_IDS=np.resize(ids, limits.max_history + 1)[None]),
        case("history-100k", RANK, USER_HISTORY_IDS, USER_HISTORY_IDS=np.resize(ids, many)[None]),
        case(
            "cold-candidates-over-max",
            RANK_COLD,
            CANDIDATE_TEXTS,
            CANDIDATE_TEXTS=np.array([[b"x"] * (limits.max_candidates + 1)], dtype=object),
            CANDIDATE_FEATURES=np.zeros((1, limits.max_candidates + 1, NUM_ITEM_FEATURES), np.float32),
        ),
        case("top-k-zero", SEARCH, TOP_K, TOP_K=np.array([[0]], np.int64)),
        case("top-k-over-max", SEARCH, "max_results", TOP_K=np.array([[limits.max_results + 1]], np.int64)),
        case("excluded-100k", SEARCH, EXCLUDE_IDS, EXCLUDE_IDS=np.arange(many, dtype=np.int64)[None]),
        case(
            "brands-over-max",
            SEARCH,
            "max_filter_brands",
            EXCLUDE_BRANDS=np.array([[b"x"] * (limits.max_filter_brands + 1)], dtype=object),
        ),
        # --- batches over the ensemble's max_batch_size (Triton's check; it names the limit) ---
        *(
            Case(f"{name}-batch-over-max", name, batch_of(name, schema.ensemble(name).max_batch_size + 1), "batch")
            for name in (EMBED_QUERY, EMBED_ITEM, RANK, SEARCH)
        ),
        Case("embed-query-batch-10k", EMBED_QUERY, batch_of(EMBED_QUERY, 10_000), "batch"),
    ]


def _with(valid: dict[str, Arrays], value: float) -> np.ndarray:
    features = valid[RANK_COLD][CANDIDATE_FEATURES].copy()
    features[0, 1, 2] = value
    return features


def _utf8(array: np.ndarray) -> bool:
    try:
        for value in array.flat:
            value.decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        return not isinstance(value, bytes)
    return True


def grpc_refusal(url: str, case: Case) -> tuple[str, str]:
    """(code, message) of the server's answer to `case` over gRPC; ("OK", "") if it was accepted."""
    inputs = []
    for name, array in case.inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.infer(case.ensemble, inputs, client_timeout=120)
        except InferenceServerException as e:
            return str(e.status()).removeprefix("StatusCode."), e.message()
    return "OK", ""


def http_refusal(url: str, case: Case) -> tuple[str, str]:
    """(code, message) over HTTP: JSON tensors (binary only for bytes JSON cannot carry)."""
    inputs = []
    for name, array in case.inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=array.dtype == object and not _utf8(array))
        inputs.append(tensor)
    with httpclient.InferenceServerClient(url, network_timeout=120, connection_timeout=120) as client:
        try:
            client.infer(case.ensemble, inputs)
        except InferenceServerException as e:
            return HTTP_CODES.get(str(e.status()), str(e.status())), e.message()
    return "OK", ""


REFUSALS: dict[str, Callable[[str, Case], tuple[str, str]]] = {"grpc": grpc_refusal, "http": http_refusal}


def refusal(server: TritonServer, protocol: str, case: Case) -> tuple[str, str]:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return REFUSALS[protocol](url, case)


def problem(case: Case, code: str, message: str) -> str | None:
    """Why an answer does not meet the case's expectation (None when it does)."""
    if code != case.code:
        return f"{case.name}: {code} (expected {case.code}): {message}"
    if case.names not in message:
        return f"{case.name}: message does not name {case.names!r}: {message}"
    return None


def load_corpus(repo: Path) -> list[Case]:
    return malformed_corpus(RepoManifest.load(repo).schema(), read_item_ids(catalog_dir(repo)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="rendered model repository (embedded target)")
    args = parser.parse_args(argv)
    cases = load_corpus(args.repo)
    grpc_port, http_port, metrics_port = free_ports(3)
    config = ServerConfig(args.repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    problems = []
    with TritonServer(config) as server:
        start = time.monotonic()
        for protocol in PROTOCOLS:
            for case in cases:
                found = problem(case, *refusal(server, protocol, case))
                if found:
                    problems.append(f"{protocol} {found}")
        seconds = time.monotonic() - start
        pending = wait_until_idle(server.metrics_url)
        ready = is_ready(server.http_url)
    sent = len(cases) * len(PROTOCOLS)
    print("\n".join(problems))
    print(
        f"{len(cases)} malformed cases x {len(PROTOCOLS)} protocols = {sent} requests in {seconds:.1f} s: "
        f"{sent - len(problems)} refused as expected, naming the tensor; {len(problems)} not; "
        f"afterwards ready={ready}, pending {'all 0' if not any(pending.values()) else pending}"
    )
    return 0 if not problems and ready and not any(pending.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
