"""tensorrt: the NGC tritonserver image's tensorrt backend, FP16 plans on a GPU.

A plan is tied to the GPU and the TensorRT version it was built with, so the repository ships the
ONNX graphs and a start script (start_tritonserver.sh) that builds the engines where they run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from aisle.export.graphs import GRAPH_ROLES
from aisle.export.repo_format import GRAPH_FILE, MODEL_VERSION, PLAN_FILE
from aisle.export.targets import RenderTarget, Runtime
from aisle.schema import Schema

#: The script that builds engines at container start, then starts tritonserver.
START_SCRIPT = "start_tritonserver.sh"
#: Where the NGC tritonserver images keep trtexec (overridable with TRTEXEC=...).
NGC_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


@dataclass(frozen=True)
class TensorrtTarget(RenderTarget):
    NAME = "tensorrt"
    HELP = "for the NGC tritonserver image's tensorrt backend (FP16 plans built at container start, GPU)"
    GRAPH_RUNTIME = Runtime("tensorrt", platform="tensorrt_plan", model_file=PLAN_FILE)

    @property
    def graphs_on_gpu(self) -> bool:
        return True

    def write_files(self, schema: Schema, root: Path) -> None:
        write_start_script(schema, root)


def write_start_script(schema: Schema, root: Path) -> Path:
    """The start-up script: build each graph's engine unless it was built for this GPU and TensorRT
    already, then exec tritonserver on this repository with the script's arguments.

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
    # A launcher that names the repository itself (`aisle serve --tritonserver <this script>`)
    # must not have it twice: Triton would load every model twice and refuse the duplicates.
    lines.append('for arg in "$@"; do [[ "$arg" == --model-repository=* ]] && exec tritonserver "$@"; done')
    lines.append('exec tritonserver --model-repository="$PWD" "$@"')
    path = root / START_SCRIPT
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


TARGET = TensorrtTarget
