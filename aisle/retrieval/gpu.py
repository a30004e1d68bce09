"""Retrieval on a GPU: faiss's GPU indexes for the searches they answer correctly, the CPU index for the rest.

On a GPU target (`RenderTarget.index_device`) catalog_search asks for its index on the GPU. What
reaches the GPU is a copy made by faiss's documented cloner (`faiss.index_cpu_to_gpu`): of the
IVF-Flat index the repository stores, or of a flat inner-product index for exact search. HNSW has
no GPU form in faiss (index_cpu_to_gpu refuses it) and stays on the CPU.

Why a router and not just the GPU copy: faiss's classic GPU indexes (the faiss-gpu builds without
cuVS) ignore the IDSelector of a search's parameters (faiss issues #3114 and #3924; their
IVFFlat::search takes `sel` and never reads it), so a filtered search there would let filtered-out
items take candidate slots, which retrieval's contract forbids. The cuVS-backed indexes turn the
selector into a bitset filter. Which of the two a server has is not only a compile flag (faiss
falls back from cuVS on GPUs cuVS does not support), so the copy is probed once at load: a search
for catalog rows' own vectors with those rows masked out must not return them. A copy that passes
takes filtered searches too; one that fails takes unfiltered searches only, and filtered ones go
to the CPU index (which searches narrow filters exactly anyway, EXACT_FALLBACK_ROWS). A search
the GPU refuses (k or a filter's widened nprobe above faiss's GPU selection limit) runs on the CPU.

Nothing here has run on a GPU: no GPU was lent to this work (README, Known limits). The routing
is tested on the CPU with faiss CPU indexes standing in for the copy; the copy itself is tested
where faiss reports a GPU.
"""

from __future__ import annotations

import sys

import numpy as np

from aisle.retrieval.index import HNSW, FaissIndex, IndexParams, RetrievalIndex, load_faiss

CPU = "cpu"
GPU = "gpu"
INDEX_DEVICES = (CPU, GPU)

#: faiss's StandardGpuResources reserves up to 1.5 GiB of GPU scratch per resources object by
#: default (faiss/gpu/StandardGpuResources.cpp, kMaxTempMem); with one per catalog_search instance
#: beside the encoders' engines that is too much. Retrieving a dynamic batch of queries over a
#: catalog needs a few MB of scratch.
GPU_TEMP_MEMORY_BYTES = 256 << 20
#: The largest k (and IVF nprobe) faiss's GPU selection takes: GPU_MAX_SELECTION_K, 2048 or 1024
#: depending on the build (faiss/gpu/utils/DeviceDefs.cuh); the smaller one, so both builds take it.
GPU_MAX_K = 1024
#: Catalog rows the selector probe masks out and searches for (their own vectors).
PROBE_ROWS = 8


def log(message: str) -> None:
    print(f"aisle: retrieval index: {message}", file=sys.stderr)


class GpuRoutedIndex:
    """A RetrievalIndex whose searches run on a GPU copy where it answers them correctly, else on the host.

    device: the GPU copy, wrapped as a FaissIndex (its exact fallbacks still run on the host's
        memory-mapped catalog). host: the CPU index the copy was made from.
    filters_on_device: whether the copy honours a search's IDSelector (probed at load).
    """

    def __init__(self, device: FaissIndex, host: RetrievalIndex, *, filters_on_device: bool) -> None:
        self.device = device
        self.host = host
        self.filters_on_device = filters_on_device
        self.params: IndexParams = host.params
        #: Queries the GPU refused and the host answered (a faiss limit met at search time).
        self.refused = 0

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if k <= GPU_MAX_K and (mask is None or self.filters_on_device):
            try:
                return self.device.search(queries, k, mask)
            except RuntimeError as e:  # faiss's own limits, e.g. a filter's widened nprobe above GPU_MAX_K
                if not self.refused:
                    log(f"the GPU refused a search ({e}); such searches run on the CPU")
                self.refused += len(queries)
        return self.host.search(queries, k, mask)


def honours_selectors(index: FaissIndex) -> bool:
    """Whether a filtered search on `index` keeps masked rows out: rows' own vectors, those rows masked.

    Ignoring the mask, each query's own row scores the highest possible (1, unit vectors) and its IVF
    cell is the one probed first, so it is among its best `probe` rows unless more rows duplicate it.
    """
    n = len(index.embeddings)
    probe = min(PROBE_ROWS, n - 1)
    if probe < 1:
        return True  # a one-row catalog has nothing to mask and find
    mask = np.ones(n, dtype=bool)
    mask[:probe] = False
    queries = np.ascontiguousarray(index.embeddings[:probe], dtype=np.float32)
    rows, _ = index.index_search(queries, probe, mask, n - probe)
    return not np.isin(rows, np.arange(probe)).any()


def gpu_copy(host: RetrievalIndex, embeddings: np.ndarray, gpu: int) -> FaissIndex:
    """The host index cloned onto GPU `gpu` (IVF as stored; exact as a flat index), as a FaissIndex."""
    faiss = load_faiss()
    resources = faiss.StandardGpuResources()
    resources.setTempMemory(GPU_TEMP_MEMORY_BYTES)
    # Exact search has no faiss index of its own: a flat one (FaissIndex.build, kind exact) is what is cloned.
    cpu_index = host.index if isinstance(host, FaissIndex) else FaissIndex.build(embeddings, host.params).index
    device_index = faiss.index_cpu_to_gpu(resources, gpu, cpu_index)
    return FaissIndex(device_index, embeddings, host.params)


def place_index(host: RetrievalIndex, embeddings: np.ndarray, device: str, gpu: int = 0) -> RetrievalIndex:
    """The index catalog_search searches: `host` itself on the CPU, or routed through a GPU copy.

    Asked for the GPU where there is none to use (faiss-cpu installed, no GPU visible, an HNSW
    index), it says why on stderr and serves from the CPU: slower, never wrong.
    """
    if device not in INDEX_DEVICES:
        raise ValueError(f"index_device={device!r}: expected one of {INDEX_DEVICES}")
    if device == CPU:
        return host
    faiss = load_faiss()
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        log("index_device=gpu, but this faiss has no GPU (faiss-cpu, or no GPU visible): searching on the CPU")
        return host
    if host.params.kind == HNSW:
        log("index_device=gpu, but faiss has no GPU form of HNSW: searching on the CPU")
        return host
    try:
        device_index = gpu_copy(host, embeddings, gpu)
    except RuntimeError as e:
        log(f"index_device=gpu, but the copy to GPU {gpu} failed ({e}): searching on the CPU")
        return host
    filters = honours_selectors(device_index)
    log(f"{host.params.kind} index on GPU {gpu}; filtered searches on the {'GPU' if filters else 'CPU'}")
    return GpuRoutedIndex(device_index, host, filters_on_device=filters)
