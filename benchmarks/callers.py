"""Adapters from a workload request (tensor name -> array) to one awaited call of a system under test.

The SDK path calls aisle's AsyncAisleClient (what an application does); the eager path posts the
same query text to the HF-eager HTTP baseline. Both feed aisle.benchmarks.load, so the two
systems are measured by one generator on identical requests.
"""

from __future__ import annotations

from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Call
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    EMBED_QUERY,
    ITEM_TEXT,
    QUERY,
    RANK,
    RANK_COLD,
    USER_HISTORY_IDS,
)


def _first_text(request: dict, tensor: str) -> str:
    return str(request[tensor][0])


def sdk_call(client, ensemble: str) -> Call:
    """The AsyncAisleClient method that serves `ensemble`, taking a workload request."""

    async def embed_query(request: dict) -> object:
        return await client.embed_queries([_first_text(request, QUERY)])

    async def embed_item(request: dict) -> object:
        return await client.embed_items([_first_text(request, ITEM_TEXT)])

    async def rank(request: dict) -> object:
        return await client.rank(_first_text(request, QUERY), request[CANDIDATE_IDS], request[USER_HISTORY_IDS])

    async def rank_cold(request: dict) -> object:
        texts = [str(text) for text in request[CANDIDATE_TEXTS]]
        return await client.rank_cold(
            _first_text(request, QUERY), texts, request[CANDIDATE_FEATURES], request[USER_HISTORY_IDS]
        )

    calls = {EMBED_QUERY: embed_query, EMBED_ITEM: embed_item, RANK: rank, RANK_COLD: rank_cold}
    if ensemble not in calls:
        raise BenchmarkError(f"no SDK call for ensemble {ensemble!r} (known: {sorted(calls)})")
    return calls[ensemble]


def eager_call(http_caller) -> Call:
    """embed_query requests sent to the eager HTTP baseline (an HttpEmbedCaller)."""

    async def embed(request: dict) -> object:
        return await http_caller(_first_text(request, QUERY))

    return embed
