"""Vectorise across the requests of a dynamic batch.

Triton hands a python model a list of requests. Running them one by one throws the batcher away;
these helpers stack the valid requests into one array per tensor (grouped by shape, because only
same-shape arrays stack), run the computation once per group and split the results back.
A request that failed validation keeps its InvalidInput and never reaches the computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np

from aisle.model_repository.errors import InvalidInput

Tensors: TypeAlias = dict[str, np.ndarray]
#: What a model returns for one request: its output tensors, or why it was rejected.
Outcome: TypeAlias = Tensors | InvalidInput
#: A python model's logic: one dynamic batch of requests in, one outcome per request out.
Logic: TypeAlias = Callable[[Sequence[Tensors]], list[Outcome]]


def group_by_shape(requests: Sequence[Tensors]) -> list[list[int]]:
    """Indices of requests whose tensors all share their non-batch shapes, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for index, tensors in enumerate(requests):
        key = tuple((name, array.shape[1:]) for name, array in sorted(tensors.items()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def run_stacked(requests: Sequence[Tensors], compute: Callable[[Tensors], Tensors]) -> list[Tensors]:
    """compute() once per same-shape group on the stacked inputs; outputs split back per request."""
    results: list[Tensors | None] = [None] * len(requests)
    for indices in group_by_shape(requests):
        names = requests[indices[0]].keys()
        stacked = {name: np.concatenate([requests[i][name] for i in indices]) for name in names}
        outputs = compute(stacked)
        bounds = np.cumsum([len(next(iter(requests[i].values()))) for i in indices])[:-1]
        for name, array in outputs.items():
            for i, part in zip(indices, np.split(array, bounds)):
                results[i] = {**(results[i] or {}), name: part}
    return [r if r is not None else {} for r in results]


def validate_each(
    requests: Sequence[Tensors], validate: Callable[[Tensors], Tensors]
) -> tuple[list[Outcome], list[int], list[Tensors]]:
    """Run `validate` per request: (outcomes with rejections filled in, valid indices, valid inputs)."""
    outcomes: list[Outcome] = [{} for _ in requests]
    valid: list[int] = []
    inputs: list[Tensors] = []
    for index, request in enumerate(requests):
        try:
            inputs.append(validate(request))
        except InvalidInput as e:
            outcomes[index] = e
            continue
        valid.append(index)
    return outcomes, valid, inputs


def merge(outcomes: list[Outcome], valid: list[int], results: Sequence[Tensors]) -> list[Outcome]:
    """Put the results of the valid requests back among the rejections."""
    for index, result in zip(valid, results):
        outcomes[index] = result
    return outcomes
