"""What a python-backend model knows about itself: its declaration, its files, its repository.

Built from the `args` Triton passes to initialize() (or, in tests, from a rendered repository and
a model name), so the logic modules never touch Triton's API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aisle.export.repo_format import RepoManifest
from aisle.schema import ModelDecl, Schema


@dataclass(frozen=True)
class ModelContext:
    """One model instance's view of the rendered repository."""

    repo: Path
    version_dir: Path
    manifest: RepoManifest
    schema: Schema
    decl: ModelDecl
    parameters: dict[str, str]
    #: Instances of this model in its config (they share the CPU cores).
    instances: int = 1

    @classmethod
    def load(
        cls,
        repo: Path,
        model_name: str,
        version: str = "1",
        parameters: dict[str, str] | None = None,
        instances: int = 1,
    ) -> ModelContext:
        """The context of `model_name` in a rendered repository."""
        repo = Path(repo)
        manifest = RepoManifest.load(repo)
        schema = manifest.schema()
        decl = schema.model(model_name)
        return cls(repo, repo / model_name / version, manifest, schema, decl, parameters or {}, instances)

    @classmethod
    def from_triton_args(cls, args: dict[str, Any]) -> ModelContext:
        """The context Triton describes in initialize(args): model dir, version, config JSON."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        return cls.load(model_dir.parent, config["name"], str(args["model_version"]), parameters, instances)
