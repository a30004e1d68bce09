"""Render a complete, servable Triton model repository from a checkpoint and a catalog.

    REPO/aisle_repo.json                  what was rendered from what (RepoManifest)
    REPO/<tokenizer>/1/model.py           python model + tokenizer.json of its tower
    REPO/<encoder|fusion_head>/1/         model.onnx (+ model.py on embedded; model.plan built at
                                          container start on tensorrt)
    REPO/item_store/1/                    model.py + catalog.npz (ids, item-tower embeddings, raw features)
    REPO/user_profile/1/, cold_item_encoder/1/, rank_cold_validator/1/   model.py
    REPO/<ensemble>/1/                    empty: ensembles have no files, only a version directory
    REPO/*/config.pbtxt                   rendered from aisle.schema by triton_config
    REPO/start_tritonserver.sh            tensorrt target: builds the engines where they run, then
                                          execs tritonserver (a plan is tied to GPU and TensorRT)

The catalog embeddings are computed here with the PyTorch item tower and the serving tokenisation
(aisle.modeling.loading.embed_texts), so a ranked id scores exactly as its text would.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from aisle.errors import ExportError
from aisle.export.repo_format import (
    CATALOG_DIR,
    GRAPH_FILE,
    MODEL_VERSION,
    PLAN_FILE,
    TOKENIZER_FILE,
    Catalog,
    RepoManifest,
    catalog_dir,
)
from aisle.export.search_index import write_search_files
from aisle.export.triton_config import (
    GRAPH_ROLES,
    PYTHON_SOURCES,
    Backend,
    RenderOptions,
    backend_for,
    render_configs,
    write_config,
)
from aisle.schema import ITEM_TOKENIZER, QUERY_TOKENIZER, Role, Schema, Target, tokenizer_buckets

#: Texts per item-tower batch when embedding the catalog.
CATALOG_BATCH = 64
#: tensorrt target: the script that builds engines at container start, then starts tritonserver.
START_SCRIPT = "start_tritonserver.sh"
#: Where the NGC tritonserver images keep trtexec (overridable with TRTEXEC=...).
NGC_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
MODEL_SOURCE_PACKAGE = "aisle.model_repository"


@dataclass(frozen=True)
class RepoSpec:
    """One rendering: from which checkpoint and catalog, for which target, into which directory.

    onnx_dir: graphs already exported from this checkpoint (skips the export step).
    catalog_batch: texts per item-tower forward pass when embedding the catalog.
    """

    checkpoint: Path
    data: Path
    out: Path
    options: RenderOptions
    onnx_dir: Path | None = None
    catalog_batch: int = CATALOG_BATCH
    progress: bool = True


def model_source(source: str) -> Path:
    """A python model's model.py, shipped as package data of aisle.model_repository."""
    path = Path(str(resources.files(MODEL_SOURCE_PACKAGE) / "models" / source / "model.py"))
    if not path.is_file():
        raise ExportError(f"{path}: python model source missing from the installed aisle package")
    return path


def compute_catalog(checkpoint_dir: Path, items: list, *, batch_size: int, progress: bool) -> Catalog:
    """Embed every item's text with the checkpoint's item tower; ids and raw features alongside.

    Texts are embedded shortest first so each batch pads to a small bucket, then put back in order.
    """
    from tqdm import tqdm

    from aisle.modeling.loading import embed_texts, load_checkpoint
    from aisle.tokenization import Bucketing, load_tokenizer

    checkpoint = load_checkpoint(checkpoint_dir)
    manifest = checkpoint.manifest
    tokenizer = load_tokenizer(checkpoint.item_dir, manifest.item_max_length)
    bucketing = Bucketing(manifest.limits.item_buckets)
    texts = [item.text() for item in items]
    order = np.argsort([len(t) for t in texts], kind="stable")
    embeddings = np.zeros((len(texts), manifest.embedding_dim), np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding catalog", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        batch = embed_texts(checkpoint.item_tower, tokenizer, [texts[r] for r in rows], bucketing, batch_size)
        embeddings[rows] = batch.numpy()
    return Catalog.build(
        np.array([item.item_id for item in items], np.int64),
        embeddings,
        np.array([item.features() for item in items], np.float32),
    )


def _prepare_out(out: Path) -> Path:
    """Refuse to overwrite; render into a sibling staging directory that is renamed at the end."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: output exists and is not an empty directory; choose a new --out")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _graphs(spec: RepoSpec, scratch: Path) -> dict[str, Path]:
    from aisle.export.graphs import GRAPH_MODELS, export_onnx, graph_file

    if spec.onnx_dir is None:
        return export_onnx(spec.checkpoint, scratch)
    graphs = {name: Path(spec.onnx_dir) / graph_file(name) for name in GRAPH_MODELS}
    for name, path in graphs.items():
        if not path.is_file():
            raise ExportError(f"{path}: --onnx-dir lacks the {name} graph; omit --onnx-dir to export it")
    return graphs


def _copy_graph(graph: Path, version_dir: Path) -> None:
    """The graph as model.onnx; an external-data side file keeps its name (the graph refers to it)."""
    from aisle.export.graphs import external_data_file

    shutil.copy2(graph, version_dir / GRAPH_FILE)
    sidecar = graph.with_name(external_data_file(graph))
    if sidecar.is_file():
        shutil.copy2(sidecar, version_dir / sidecar.name)


def write_models(
    schema: Schema, options: RenderOptions, root: Path, checkpoint_dir: Path, graphs: dict[str, Path], catalog: Catalog
) -> None:
    """Write every model and ensemble directory of `schema` for one target under `root`."""
    from aisle.modeling.checkpoint import ITEM_ENCODER_DIR, QUERY_ENCODER_DIR
    from aisle.tokenization import load_tokenizer

    tower_dirs = {QUERY_TOKENIZER: QUERY_ENCODER_DIR, ITEM_TOKENIZER: ITEM_ENCODER_DIR}
    configs = render_configs(schema, options)
    for decl in schema.models:
        version_dir = root / decl.name / MODEL_VERSION
        version_dir.mkdir(parents=True)
        write_config(configs[decl.name], version_dir.parent)
        if backend_for(decl.role, options.target) is Backend.PYTHON:
            shutil.copy2(model_source(PYTHON_SOURCES[decl.role]), version_dir / "model.py")
        if decl.role in GRAPH_ROLES:
            _copy_graph(graphs[decl.name], version_dir)
        elif decl.role is Role.TOKENIZER:
            max_length = tokenizer_buckets(decl)[-1]
            tokenizer = load_tokenizer(Path(checkpoint_dir) / tower_dirs[decl.name], max_length)
            tokenizer.save(str(version_dir / TOKENIZER_FILE))
        elif decl.role is Role.ITEM_STORE:
            catalog.save(version_dir / CATALOG_DIR)
    for ensemble in schema.ensembles:
        (root / ensemble.name / MODEL_VERSION).mkdir(parents=True)
        write_config(configs[ensemble.name], root / ensemble.name)


def write_start_script(schema: Schema, root: Path) -> Path:
    """The tensorrt target's start-up script: build each graph's engine unless it was built for this
    GPU and TensorRT already, then exec tritonserver on this repository with the script's arguments.

    Engines are built with trtexec from the export stage's plans (aisle.export.tensorrt_build: one
    profile per length bucket, fp32 LayerNorm/softmax layers, a timing cache); paths are relative to
    the repository, which must be writable (engines and their keys are cached in it).
    """
    import onnx

    from aisle.export.fp16 import fp32_node_names
    from aisle.export.tensorrt_build import (
        TIMING_CACHE_FILE,
        EngineConfig,
        EnginePlan,
        derive_profiles,
        trtexec_command,
    )

    lines = [
        "#!/usr/bin/env bash",
        "# Rendered by `aisle export repo --target tensorrt`. Builds the TensorRT engines of this repository",
        "# on the GPU it runs on (a plan is tied to GPU and TensorRT version; each is keyed and reused),",
        '# then runs tritonserver on it. Extra arguments go to tritonserver, e.g. "--log-verbose=1".',
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f'TRTEXEC="${{TRTEXEC:-{NGC_TRTEXEC}}}"',
        'TRT_VERSION="$({ "$TRTEXEC" --help 2>&1 || true; } | grep -o "TensorRT v[0-9]*" | head -n 1 || true)"',
        'KEY="$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader --id=0) ${TRT_VERSION:-TensorRT ?}"',
        "build() {  # build <model dir> <trtexec args...>",
        '  local plan="$1/model.plan"; shift',
        '  if [[ -f "$plan" && "$(cat "$plan.key" 2>/dev/null)" == "$KEY" ]]; then echo "keeping $plan"; return; fi',
        '  echo "building $plan for $KEY"',
        '  "$@" > "$plan.build.log" 2>&1 || { tail -n 40 "$plan.build.log"; exit 1; }',
        '  echo "$KEY" > "$plan.key"',
        "}",
    ]
    for decl in schema.models:
        if decl.role not in GRAPH_ROLES:
            continue
        version = Path(decl.name) / MODEL_VERSION
        graph = onnx.load(str(root / version / GRAPH_FILE), load_external_data=False)
        plan = EnginePlan(
            decl.name,
            version / GRAPH_FILE,
            version / PLAN_FILE,
            tuple(derive_profiles(schema, decl.name)),
            tuple(fp32_node_names(graph)),
            EngineConfig(timing_cache=Path(TIMING_CACHE_FILE)),
        )
        arguments = shlex.join(trtexec_command(plan)[1:])  # [0] is the trtexec binary: "$TRTEXEC" here
        lines.append(f'build {version} "$TRTEXEC" {arguments}')
    lines.append('exec tritonserver --model-repository="$PWD" "$@"')
    path = root / START_SCRIPT
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def render_repository(spec: RepoSpec) -> RepoManifest:
    """Render `spec.out` completely or not at all (a failed rendering leaves no half repository)."""
    from aisle.data.format import load_dataset
    from aisle.modeling.checkpoint import Manifest

    out = Path(spec.out)
    checkpoint_manifest = Manifest.load(spec.checkpoint)
    schema = checkpoint_manifest.schema()
    dataset = load_dataset(spec.data)
    staging = _prepare_out(out)
    try:
        graphs = _graphs(spec, staging / "onnx_export.partial")
        catalog = compute_catalog(spec.checkpoint, dataset.items, batch_size=spec.catalog_batch, progress=spec.progress)
        write_models(schema, spec.options, staging, spec.checkpoint, graphs, catalog)
        index = write_search_files(catalog_dir(staging), catalog, dataset.items, progress=spec.progress)
        if spec.options.target is Target.TENSORRT:
            write_start_script(schema, staging)
        shutil.rmtree(staging / "onnx_export.partial", ignore_errors=True)
        manifest = RepoManifest(
            target=spec.options.target.value,
            embedding_dim=schema.embedding_dim,
            limits=schema.limits,
            catalog_items=len(catalog.item_ids),
            index=index.to_dict(),
            data_fingerprint=dataset.manifest.fingerprint,
            checkpoint=asdict(checkpoint_manifest),
        )
        manifest.save(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
