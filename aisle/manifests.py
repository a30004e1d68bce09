"""Reading and writing aisle's JSON manifests (the checkpoint's aisle.json, the repository's
aisle_repo.json) with one set of checks, so both name the file and the field the same way.

Standard library only: the torch-free client and the python-backend models read manifests too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from aisle.schema import ServingLimits

T = TypeVar("T")
#: Keys of ServingLimits that manifests written before ServingLimits kept at their top level.
_FLAT_LIMIT_KEYS = tuple(ServingLimits().to_dict())


def save_manifest(manifest: Any, path: Path) -> None:
    if not is_dataclass(manifest):
        raise TypeError(f"{type(manifest).__name__} is not a dataclass")
    Path(path).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


def load_manifest(
    cls: type[T],
    path: Path,
    *,
    required: tuple[str, ...],
    format_version: int,
    error: Callable[[str], Exception],
    absent: str,
) -> T:
    """A manifest dataclass from its JSON file; unknown keys are ignored, missing ones default.

    absent: the message when the file does not exist (what the directory is not).
    A `limits` field is built as ServingLimits, from its own object or, in manifests written before
    it existed, from the same keys at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise error(absent)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format_version", format_version) != format_version:
        raise error(f"{path}: format_version={raw['format_version']}, this aisle reads {format_version}")
    missing = sorted(set(required) - raw.keys())
    if missing:
        raise error(f"{path}: missing field(s) {missing}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if "limits" in known:
        legacy = {k: raw.pop(k) for k in _FLAT_LIMIT_KEYS if k in raw}
        try:
            raw["limits"] = ServingLimits.from_dict(raw.get("limits") or legacy)
        except (TypeError, ValueError) as e:
            raise error(f"{path}: limits: {e}") from e
    return cls(**{k: v for k, v in raw.items() if k in known})
