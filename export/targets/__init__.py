"""Where a rendered repository runs: one module per target in this package, found by the registry below.

A target module (embedded.py, onnxruntime.py, tensorrt.py) declares everything that differs between
targets: its name and help, how Triton runs each role (backend or platform, device, instances),
the batch sizes its graphs are warmed up with, extra optimization config, its own `aisle export repo`
options and their checks, the files it adds to a repository, and whether `aisle serve` (the
tritonserver of nvidia-pytriton, python backend only) can run it. The CLI choices, `aisle serve`'s
refusal and the benchmark's reading of a served config derive from this registry, and
export/triton_config.py renders the backend-agnostic rest. Adding a target = one module + its tests.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from aisle.errors import ExportError
from aisle.export.graphs import GRAPH_ROLES
from aisle.retrieval.gpu import CPU, GPU
from aisle.schema import INTRA_OP_THREADS_PARAMETER, ModelDecl, Role, Schema, fold_for_python_graphs

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as pb


@dataclass(frozen=True)
class Runtime:
    """How Triton runs one model.

    backend: the Triton backend ("python", "onnxruntime", "tensorrt"); it is what a running server
        reports for the model, and what config.pbtxt names when there is no platform.
    platform: set for backends that read a model file (written as `platform` +
        `default_model_filename` instead of `backend`).
    threads_parameter: the config `parameters` key that sets a model's intra-op threads on this
        runtime (ModelDecl.intra_op_threads); empty where the runtime has none (TensorRT).
    """

    backend: str
    platform: str = ""
    model_file: str = ""
    threads_parameter: str = ""

    @property
    def is_python(self) -> bool:
        return self.backend == PYTHON.backend

    def names(self) -> frozenset[str]:
        """Every spelling a server's config may use for this runtime."""
        return frozenset({self.backend, self.platform} - {""})


#: A model.py run by Triton's python backend (the only backend nvidia-pytriton's tritonserver ships).
PYTHON = Runtime("python", threads_parameter=INTRA_OP_THREADS_PARAMETER)

#: GPU targets: two tokenizer instances so CPU tokenisation keeps up with the GPU, and two encoder
#: instances so one copies while the other computes. On the CPU see RenderTarget.instance_count.
GPU_INSTANCE_COUNTS: dict[Role, int] = {Role.TOKENIZER: 2, Role.ENCODER: 2}


@dataclass(frozen=True)
class TargetOption:
    """A boolean `aisle export repo` flag of one target, stored in the target's field of the same name."""

    flag: str
    help: str

    @property
    def field(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class RenderTarget:
    """One target, with its options as dataclass fields (checked in __post_init__ by targets that have any).

    Defaults are the CPU choices: graphs off the GPU, one instance of every model, warmup at batch 1,
    no files beyond the common ones, not servable by `aisle serve`.
    """

    NAME: ClassVar[str]
    HELP: ClassVar[str]
    #: How the graph roles (encoders, fusion head) run; every other role is a python model.
    GRAPH_RUNTIME: ClassVar[Runtime]
    OPTIONS: ClassVar[tuple[TargetOption, ...]] = ()
    #: Whether `aisle serve` (nvidia-pytriton's tritonserver, python backend only) can run the repository.
    SERVES_EMBEDDED: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.NAME

    @property
    def graphs_on_gpu(self) -> bool:
        """Whether the graph roles run on a GPU (KIND_GPU); python models always run on the CPU."""
        return False

    @classmethod
    def served_schema(cls, schema: Schema) -> Schema:
        """The declared schema as this target serves it. Where the graphs run in python models, the
        encoders declaring fuse_tokenizer tokenize in their own model and the models declaring
        fuse_encoder embed their own text (aisle.schema.fold_for_python_graphs): each step there is
        one more stub process per request. Native backends take token ids and run graphs apart from
        python logic, so their tokenizers and encoders stay steps of their own."""
        return fold_for_python_graphs(schema) if cls.GRAPH_RUNTIME.is_python else schema

    @property
    def index_device(self) -> str:
        """Where catalog_search searches the retrieval index: beside the graphs, on a GPU when they are.
        (It falls back to the CPU where faiss has no GPU; aisle.retrieval.gpu.place_index.)"""
        return GPU if self.graphs_on_gpu else CPU

    def runtime(self, role: Role) -> Runtime:
        return self.GRAPH_RUNTIME if role in GRAPH_ROLES else PYTHON

    def instance_count(self, decl: ModelDecl) -> int:
        """GPU_INSTANCE_COUNTS on a GPU. On the CPU, the declared cpu_instances where the model runs in
        a python model (its sessions split the cores between instances), else one: a CPU backend's
        sessions each take every core, and more instances would fight for them."""
        if self.graphs_on_gpu:
            return GPU_INSTANCE_COUNTS.get(decl.role, 1)
        return decl.cpu_instances if self.runtime(decl.role).is_python else 1

    def warmup_batches(self, decl: ModelDecl) -> tuple[int, ...]:
        """Batch sizes a graph model is warmed up with: 1, plus the maximum batch on a GPU.

        On a GPU the first run of a shape is what is slow (TensorRT profile selection, ORT-GPU
        allocations), so the largest batch is worth running before readiness. On CPU a batch-64 warmup
        of the 128-token bucket costs seconds of start-up and buys little: onnxruntime's CPU arena grows
        once, on the first large batch.
        """
        return tuple(sorted({1, decl.batching.max_batch_size})) if self.graphs_on_gpu else (1,)

    def optimize(self, decl: ModelDecl, config: pb.ModelConfig) -> None:
        """Add target-specific optimization settings to a rendered model config (none by default)."""

    def write_files(self, schema: Schema, root: Path) -> None:
        """Write the files this target needs beyond the models' own (none by default)."""


@cache
def registry() -> dict[str, type[RenderTarget]]:
    """Every target class, by name: the `TARGET` of each module in this package."""
    targets: dict[str, type[RenderTarget]] = {}
    for module in pkgutil.iter_modules(__path__):
        target = importlib.import_module(f"{__name__}.{module.name}").TARGET
        if target.NAME in targets:
            raise ExportError(f"target name {target.NAME!r} declared twice ({module.name}.py)")
        targets[target.NAME] = target
    return dict(sorted(targets.items()))


def target_names() -> tuple[str, ...]:
    return tuple(registry())


def target_class(name: str) -> type[RenderTarget]:
    try:
        return registry()[name]
    except KeyError:
        raise ExportError(f"target={name!r} is not a known target; choose one of {', '.join(registry())}") from None


def target_named(name: str, **options: bool) -> RenderTarget:
    """A target by name with its options, e.g. target_named("onnxruntime", gpu=True)."""
    return target_class(name)(**options)


def served_by(backend: str) -> str | None:
    """The target whose encoders run on `backend` (a backend or platform name a server reports)."""
    return next((name for name, target in registry().items() if backend in target.GRAPH_RUNTIME.names()), None)


def servable_by_aisle_serve() -> tuple[str, ...]:
    return tuple(name for name, target in registry().items() if target.SERVES_EMBEDDED)


def _option_owners() -> dict[str, tuple[TargetOption, tuple[str, ...]]]:
    """Each target flag with its declaration (the first target's) and every target that declares it."""
    owners: dict[str, tuple[TargetOption, tuple[str, ...]]] = {}
    for name, target in registry().items():
        for option in target.OPTIONS:
            first, names = owners.get(option.flag, (option, ()))
            owners[option.flag] = (first, (*names, name))
    return owners


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and every target's own flags (a flag several targets declare is added once)."""
    parser.add_argument(
        "--target",
        choices=target_names(),
        required=True,
        help="where the repository will run: " + "; ".join(f"{n}: {t.HELP}" for n, t in registry().items()),
    )
    for flag, (option, names) in _option_owners().items():
        parser.add_argument(flag, action="store_true", help=f"{'/'.join(names)} target: {option.help}")


def target_from_args(args: argparse.Namespace) -> RenderTarget:
    """The chosen target with its flags; a flag of another target is refused, not ignored."""
    target = target_class(args.target)
    for flag, (option, names) in _option_owners().items():
        if target.NAME not in names and getattr(args, option.field, False):
            raise ExportError(f"{flag} applies to the {'/'.join(names)} target only, not --target {target.NAME}")
    return target(**{option.field: getattr(args, option.field) for option in target.OPTIONS})
