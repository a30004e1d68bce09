"""Render a complete, servable Triton model repository from a checkpoint and a catalog.

    REPO/aisle_repo.json                  what was rendered from what (RepoManifest)
    REPO/<tokenizer>/1/model.py           python model + tokenizer.json of its tower
    REPO/<encoder|fusion_head>/1/         model.onnx (+ model.py on embedded; model.plan built at
                                          container start on tensorrt)
    REPO/<text encoder>/1/, warmup/       embedded target: model.py + tokenizer.json + model.onnx of an
                                          encoder that tokenizes itself; one text per bucket to warm up
    REPO/item_store/1/                    model.py + catalog/ (ids, item-tower embeddings, raw features)
    REPO/user_profile/1/, cold_item_encoder/1/, rank_cold_validator/1/   model.py
    REPO/catalog_search/warmup/           the non-zero inputs of its empty warmup request (TOP_K, PRICE_RANGE)
    REPO/<ensemble>/1/                    empty: ensembles have no files, only a version directory
    REPO/*/config.pbtxt                   rendered from aisle.schema by triton_config, for the target
    REPO/...                              files of the target (aisle.export.targets), e.g. tensorrt's
                                          start_tritonserver.sh, which builds the engines where they run

The catalog is a precomputed one (`aisle export catalog`, checked against the dataset's items) or
is computed here the same way, with the exported item graph (aisle.export.catalog). With the
graphs given (--onnx-dir) rendering never loads PyTorch.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from aisle.errors import ExportError
from aisle.export.catalog import CATALOG_BATCH, compute_catalog, load_catalog
from aisle.export.repo_format import (
    CATALOG_DIR,
    GRAPH_FILE,
    MODEL_VERSION,
    TOKENIZER_FILE,
    Catalog,
    RepoManifest,
    catalog_dir,
    catalog_versions_dir,
)
from aisle.export.search_index import write_search_files
from aisle.export.targets import RenderTarget
from aisle.export.triton_config import (
    GRAPH_ROLES,
    PYTHON_SOURCES,
    render_configs,
    write_config,
    write_warmup_files,
)
from aisle.schema import (
    ITEM_ENCODER,
    ITEM_TOKENIZER,
    QUERY_ENCODER,
    QUERY_TOKENIZER,
    Role,
    Schema,
    ServingLimits,
    build_schema,
    tokenizer_buckets,
)

MODEL_SOURCE_PACKAGE = "aisle.model_repository"


@dataclass(frozen=True)
class RepoSpec:
    """One rendering: from which checkpoint and catalog, for which target, into which directory.

    target: where the repository runs (aisle.export.targets, e.g. target_named("embedded")).
    onnx_dir: graphs already exported from this checkpoint (skips the export step and PyTorch).
    catalog: a catalog precomputed by `aisle export catalog` (skips embedding the items).
    catalog_batch: texts per item-graph run when embedding the catalog here.
    limits: the serving limits to render (default: the checkpoint's); `--query-buckets` and
        `--item-buckets` override the checkpoint's buckets through it.
    index_kind: the retrieval index ("exact", "ivf", "hnsw"); None chooses by catalog size
        (aisle.retrieval.choose_index).
    """

    checkpoint: Path
    data: Path
    out: Path
    target: RenderTarget
    onnx_dir: Path | None = None
    catalog_batch: int = CATALOG_BATCH
    progress: bool = True
    catalog: Path | None = None
    limits: ServingLimits | None = None
    index_kind: str | None = None


def model_source(source: str) -> Path:
    """A python model's model.py, shipped as package data of aisle.model_repository."""
    path = Path(str(resources.files(MODEL_SOURCE_PACKAGE) / "models" / source / "model.py"))
    if not path.is_file():
        raise ExportError(f"{path}: python model source missing from the installed aisle package")
    return path


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


def _catalog(spec: RepoSpec, schema: Schema, items: list, item_graph: Path) -> Catalog:
    if spec.catalog is not None:
        return load_catalog(spec.catalog, schema, items)
    return compute_catalog(
        schema, spec.checkpoint, item_graph, items, batch_size=spec.catalog_batch, progress=spec.progress
    )


def _copy_graph(graph: Path, version_dir: Path) -> None:
    """The graph as model.onnx; an external-data side file keeps its name (the graph refers to it)."""
    from aisle.export.graphs import external_data_file

    shutil.copy2(graph, version_dir / GRAPH_FILE)
    sidecar = graph.with_name(external_data_file(graph))
    if sidecar.is_file():
        shutil.copy2(sidecar, version_dir / sidecar.name)


def write_models(
    schema: Schema, target: RenderTarget, root: Path, checkpoint_dir: Path, graphs: dict[str, Path], catalog: Catalog
) -> None:
    """Write every model and ensemble directory of `schema` for one target under `root`."""
    from aisle.modeling.checkpoint import ITEM_ENCODER_DIR, QUERY_ENCODER_DIR
    from aisle.tokenization import load_tokenizer

    # A tower's tokenizer, by the model that tokenizes for it: its tokenizer, or its text encoder.
    tower_dirs = {
        QUERY_TOKENIZER: QUERY_ENCODER_DIR,
        QUERY_ENCODER: QUERY_ENCODER_DIR,
        ITEM_TOKENIZER: ITEM_ENCODER_DIR,
        ITEM_ENCODER: ITEM_ENCODER_DIR,
    }
    configs = render_configs(schema, target)
    for decl in schema.models:
        version_dir = root / decl.name / MODEL_VERSION
        version_dir.mkdir(parents=True)
        write_config(configs[decl.name], version_dir.parent)
        if target.runtime(decl.role).is_python:
            shutil.copy2(model_source(PYTHON_SOURCES[decl.role]), version_dir / "model.py")
        if decl.role in GRAPH_ROLES or decl.role is Role.TEXT_ENCODER:
            _copy_graph(graphs[decl.name], version_dir)
        if decl.role in (Role.TOKENIZER, Role.TEXT_ENCODER):
            max_length = tokenizer_buckets(decl)[-1]
            tokenizer = load_tokenizer(Path(checkpoint_dir) / tower_dirs[decl.name], max_length)
            tokenizer.save(str(version_dir / TOKENIZER_FILE))
        elif decl.role is Role.ITEM_STORE:
            catalog.save(version_dir / CATALOG_DIR)
        write_warmup_files(decl, version_dir.parent)  # the files its config's warmup reads, if any
    for ensemble in schema.ensembles:
        (root / ensemble.name / MODEL_VERSION).mkdir(parents=True)
        write_config(configs[ensemble.name], root / ensemble.name)


def render_repository(spec: RepoSpec) -> RepoManifest:
    """Render `spec.out` completely or not at all (a failed rendering leaves no half repository)."""
    from aisle.data.format import load_dataset
    from aisle.modeling.checkpoint import Manifest

    out = Path(spec.out)
    checkpoint_manifest = Manifest.load(spec.checkpoint)
    schema = spec.target.served_schema(
        build_schema(checkpoint_manifest.embedding_dim, spec.limits or checkpoint_manifest.limits)
    )
    dataset = load_dataset(spec.data)
    staging = _prepare_out(out)
    try:
        graphs = _graphs(spec, staging / "onnx_export.partial")
        catalog = _catalog(spec, schema, dataset.items, graphs[ITEM_ENCODER])
        write_models(schema, spec.target, staging, spec.checkpoint, graphs, catalog)
        index = write_search_files(
            catalog_dir(staging), catalog, dataset.items, index_kind=spec.index_kind, progress=spec.progress
        )
        spec.target.write_files(schema, staging)
        # Empty until the first `aisle catalog` change; there from the start so that a deployment
        # can mount a shared copy of it over each replica's own (deploy/base/deployment.yaml).
        catalog_versions_dir(staging).mkdir()
        shutil.rmtree(staging / "onnx_export.partial", ignore_errors=True)
        manifest = RepoManifest(
            target=spec.target.name,
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
