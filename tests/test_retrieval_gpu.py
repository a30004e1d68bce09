"""aisle.retrieval.gpu: which searches a GPU copy of the index takes, and the fall-backs to the CPU.

No GPU is lent to this machine: the routing is tested with faiss CPU indexes standing in for the
GPU copy (one of them dropping the selector, as classic faiss-gpu does), and the copy itself is
tested only where faiss reports a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from aisle.retrieval import ExactIndex, FaissIndex, IndexParams
from aisle.retrieval.gpu import GPU_MAX_K, GpuRoutedIndex, honours_selectors, place_index
from aisle.retrieval.index import EXACT, HNSW, IVF, PAD_ROW

faiss = pytest.importorskip("faiss")

N, DIM = 1500, 32
NO_FALLBACK = {"exact_fallback_rows": 0}  # filtered searches reach faiss's selector, not the exact path


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    x = np.random.default_rng(4).standard_normal((6, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    return np.random.default_rng(5).random(N) < 0.3


class CountedIndex(FaissIndex):
    """A stand-in for the GPU copy that counts the searches reaching it."""

    searches = 0

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None):
        self.searches += 1
        return super().search(queries, k, mask)


class DropsSelectors(CountedIndex):
    """Behaves as classic faiss-gpu does: the search's IDSelector is dropped (faiss #3114, #3924)."""

    def index_search(self, queries: np.ndarray, k: int, mask: np.ndarray | None, allowed: int):
        return super().index_search(queries, k, None, len(self.embeddings))


class Refuses(CountedIndex):
    """Refuses every search, as faiss's GPU code does past its selection limit."""

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None):
        self.searches += 1
        raise RuntimeError("GPU index only supports min/max-K selection up to 1024")


def flat(cls: type[FaissIndex], embeddings: np.ndarray) -> FaissIndex:
    """What a GPU copy of exact search is made from (a flat inner-product index), as `cls`."""
    built = FaissIndex.build(embeddings, IndexParams(kind=EXACT, **NO_FALLBACK))
    return cls(built.index, embeddings, built.params)


def test_a_flat_faiss_index_answers_as_exact_search(embeddings, queries, mask) -> None:
    """The exact kind's GPU copy is a flat faiss index run through FaissIndex: same rows, same scores."""
    exact, copy = ExactIndex(embeddings), flat(FaissIndex, embeddings)
    for m in (None, mask, np.stack([mask, ~mask] * 3), np.zeros(N, dtype=bool)):
        want_rows, want_scores = exact.search(queries, 50, m)
        rows, scores = copy.search(queries, 50, m)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("kind", [EXACT, IVF])
def test_the_probe_tells_a_copy_that_honours_selectors_from_one_that_drops_them(kind: str, embeddings) -> None:
    params = IndexParams(kind=kind, nlist=16, nprobe=4, **NO_FALLBACK) if kind == IVF else IndexParams(kind=EXACT)
    built = FaissIndex.build(embeddings, params)
    assert honours_selectors(FaissIndex(built.index, embeddings, params))
    assert not honours_selectors(DropsSelectors(built.index, embeddings, params))


def test_a_copy_that_drops_selectors_takes_unfiltered_searches_only(embeddings, queries, mask) -> None:
    device, host = flat(DropsSelectors, embeddings), ExactIndex(embeddings)
    routed = GpuRoutedIndex(device, host, filters_on_device=honours_selectors(device))
    assert not routed.filters_on_device
    before = device.searches
    np.testing.assert_array_equal(routed.search(queries, 20)[0], host.search(queries, 20)[0])
    assert device.searches == before + 1
    rows, _ = routed.search(queries, 20, mask)
    assert device.searches == before + 1  # the filtered search went to the host
    np.testing.assert_array_equal(rows, host.search(queries, 20, mask)[0])
    assert mask[rows[rows != PAD_ROW]].all()
    # What the probe prevents: trusted with filters, this copy lets masked-out rows take slots.
    leaky = GpuRoutedIndex(device, host, filters_on_device=True)
    leaked, _ = leaky.search(queries, 20, mask)
    assert not mask[leaked].all()


def test_a_copy_that_honours_selectors_takes_filtered_searches_too(embeddings, queries, mask) -> None:
    device, host = flat(CountedIndex, embeddings), ExactIndex(embeddings)
    routed = GpuRoutedIndex(device, host, filters_on_device=honours_selectors(device))
    before = device.searches
    rows, scores = routed.search(queries, 20, mask)
    assert device.searches == before + 1
    want_rows, want_scores = host.search(queries, 20, mask)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_searches_past_the_gpu_limits_run_on_the_host(embeddings, queries, mask) -> None:
    host = ExactIndex(embeddings)
    over = GpuRoutedIndex(flat(CountedIndex, embeddings), host, filters_on_device=True)
    rows, _ = over.search(queries, GPU_MAX_K + 1)
    assert over.device.searches == 0
    np.testing.assert_array_equal(rows, host.search(queries, GPU_MAX_K + 1)[0])
    refusing = GpuRoutedIndex(flat(Refuses, embeddings), host, filters_on_device=True)
    rows, _ = refusing.search(queries, 20, mask)
    assert (refusing.device.searches, refusing.refused) == (1, len(queries))
    np.testing.assert_array_equal(rows, host.search(queries, 20, mask)[0])


def test_index_device_cpu_is_the_host_index_and_an_unknown_device_is_refused(embeddings) -> None:
    host = ExactIndex(embeddings)
    assert place_index(host, embeddings, "cpu") is host
    with pytest.raises(ValueError, match="index_device='tpu'"):
        place_index(host, embeddings, "tpu")


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="this faiss has a GPU: the fall-back is not taken")
def test_without_a_gpu_index_device_gpu_serves_from_the_cpu_and_says_why(embeddings, capsys) -> None:
    host = ExactIndex(embeddings)
    assert place_index(host, embeddings, "gpu") is host
    assert "index_device=gpu, but this faiss has no GPU" in capsys.readouterr().err


@pytest.mark.skipif(
    faiss.get_num_gpus() < 1, reason="needs faiss with a GPU (faiss-gpu or faiss-gpu-cuvs); this machine has faiss-cpu"
)
@pytest.mark.parametrize("kind", [EXACT, IVF])
def test_a_gpu_copy_answers_as_the_cpu_index_and_never_returns_a_filtered_out_row(
    kind: str, embeddings, queries, mask
) -> None:
    params = IndexParams(kind=kind, nlist=16, nprobe=16) if kind == IVF else IndexParams(kind=EXACT)
    host = ExactIndex(embeddings) if kind == EXACT else FaissIndex.build(embeddings, params)
    placed = place_index(host, embeddings, "gpu")
    assert isinstance(placed, GpuRoutedIndex)
    rows, scores = placed.search(queries, 50)
    want_rows, want_scores = host.search(queries, 50)
    np.testing.assert_array_equal(rows, want_rows)  # IVF probes every cell here: exact on both
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    for m in (mask, np.stack([mask, ~mask] * 3)):
        rows, _ = placed.search(queries, 50, m)
        allowed = m if m.ndim == 2 else np.broadcast_to(m, (len(queries), N))
        for row, ok in zip(rows, allowed):
            assert ok[row[row != PAD_ROW]].all()


def test_hnsw_stays_on_the_cpu(embeddings, capsys) -> None:
    host = FaissIndex.build(embeddings, IndexParams(kind=HNSW, hnsw_m=8))
    assert place_index(host, embeddings, "gpu") is host
    assert "searching on the CPU" in capsys.readouterr().err
