"""ServingLimits: one declaration of the served limits, carried by manifests and config parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aisle.cli import main as aisle_main
from aisle.errors import CheckpointError
from aisle.modeling.checkpoint import MANIFEST, Manifest
from aisle.schema import ServingLimits, build_schema


def test_limits_round_trip_through_config_parameters_and_json() -> None:
    limits = ServingLimits(
        query_buckets=(4, 24), item_buckets=(32,), max_candidates=7, max_history=3, history_decay=0.5
    )
    assert ServingLimits.from_parameters(limits.to_parameters()) == limits
    assert ServingLimits.from_dict(json.loads(json.dumps(limits.to_dict()))) == limits


def test_every_ensemble_carries_the_limits_as_config_parameters() -> None:
    limits = ServingLimits(max_candidates=11)
    schema = build_schema(16, limits)
    assert {dict(e.parameters)["aisle.max_candidates"] for e in schema.ensembles} == {"11"}
    assert all(ServingLimits.from_parameters(dict(e.parameters)) == limits for e in schema.ensembles)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_buckets": (16, 8)}, "query_buckets=16,8: expected ascending"),
        ({"item_buckets": ()}, "item_buckets=: expected ascending"),
        ({"max_candidates": 0}, "max_candidates=0: must be at least 1"),
        ({"history_decay": 1.5}, r"history_decay=1.5: must be in \(0, 1\]"),
    ],
)
def test_invalid_limits_name_the_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingLimits(**kwargs)


def test_a_missing_or_malformed_parameter_is_named() -> None:
    parameters = ServingLimits().to_parameters()
    with pytest.raises(ValueError, match="'aisle.max_history' missing"):
        ServingLimits.from_parameters({k: v for k, v in parameters.items() if k != "aisle.max_history"})
    with pytest.raises(ValueError, match="max_history='many': not a number"):
        ServingLimits.from_parameters({**parameters, "aisle.max_history": "many"})


def test_a_manifest_written_before_limits_existed_still_loads(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(
        json.dumps({"base_model": "b", "embedding_dim": 8, "query_buckets": [4, 12], "max_history": 5})
    )
    assert Manifest.load(tmp_path).limits == ServingLimits(query_buckets=(4, 12), max_history=5)


def test_a_manifest_with_invalid_limits_names_the_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"base_model": "b", "embedding_dim": 8, "limits": {"max_history": 0}}))
    with pytest.raises(CheckpointError, match=f"{MANIFEST}: limits: max_history=0"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--query-buckets", "8,x", "--query-buckets='8,x'"), ("--item-buckets", "64,32", "item_buckets=64,32")],
)
def test_bucket_flags_refuse_bad_values_naming_the_flag(
    flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = aisle_main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt"), flag, value])
    assert code == 2
    assert message in capsys.readouterr().err
