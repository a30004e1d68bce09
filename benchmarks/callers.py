"""Adapters from a workload request (tensor name -> array) to one awaited call of a system under test.

The SDK path calls aisle's AsyncAisleClient (what an application does); the eager path posts the
same query text to the HF-eager HTTP baseline; the raw path sends the tensors to any model of the
repository over gRPC (the studies use it for composing models the SDK does not expose). All feed
aisle.benchmarks.load, so the systems are measured by one generator on identical requests.
"""

from __future__ import annotations

import aisle.schema as s
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Call


def _first_text(request: dict, tensor: str) -> str:
    return str(request[tensor][0])


def sdk_call(client, ensemble: str) -> Call:
    """The AsyncAisleClient method that serves `ensemble`, taking a workload request."""

    async def embed_query(request: dict) -> object:
        return await client.embed_queries([_first_text(request, s.QUERY)])

    async def embed_item(request: dict) -> object:
        return await client.embed_items([_first_text(request, s.ITEM_TEXT)])

    async def rank(request: dict) -> object:
        return await client.rank(_first_text(request, s.QUERY), request[s.CANDIDATE_IDS], request[s.USER_HISTORY_IDS])

    async def rank_cold(request: dict) -> object:
        texts = [str(text) for text in request[s.CANDIDATE_TEXTS]]
        return await client.rank_cold(
            _first_text(request, s.QUERY), texts, request[s.CANDIDATE_FEATURES], request[s.USER_HISTORY_IDS]
        )

    async def search(request: dict) -> object:
        from aisle.client import Filters

        low, high = (None if v != v else float(v) for v in request[s.PRICE_RANGE])  # NaN: open end
        filters = Filters(
            category=_first_text(request, s.CATEGORY),
            brands=tuple(str(b) for b in request[s.BRANDS]),
            exclude_brands=tuple(str(b) for b in request[s.EXCLUDE_BRANDS]),
            min_price=low,
            max_price=high,
            exclude_ids=tuple(int(i) for i in request[s.EXCLUDE_IDS]),
        )
        return await client.search(
            _first_text(request, s.QUERY),
            user_history_ids=request[s.USER_HISTORY_IDS],
            top_k=int(request[s.TOP_K][0]),
            filters=filters,
        )

    calls = {
        s.EMBED_QUERY: embed_query,
        s.EMBED_ITEM: embed_item,
        s.RANK: rank,
        s.RANK_COLD: rank_cold,
        s.SEARCH: search,
    }
    if ensemble not in calls:
        raise BenchmarkError(f"no SDK call for ensemble {ensemble!r} (known: {sorted(calls)})")
    return calls[ensemble]


def eager_call(http_caller) -> Call:
    """embed_query requests sent to the eager HTTP baseline (an HttpEmbedCaller)."""

    async def embed(request: dict) -> object:
        return await http_caller(_first_text(request, s.QUERY))

    return embed


def raw_call(client, model: str) -> Call:
    """`model` called with each request's arrays as they are (batch dimension included), on a
    tritonclient.grpc.aio client: no SDK validation or conversion, the server's cost alone."""
    from tritonclient.grpc import InferInput
    from tritonclient.utils import np_to_triton_dtype

    async def infer(request: dict) -> object:
        inputs = []
        for name, array in request.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return await client.infer(model, inputs)

    return infer


def batch_of_one(request: dict) -> dict:
    """A workload request (no batch dimension) as the batch of one a raw call sends."""
    return {name: array[None] for name, array in request.items()}
