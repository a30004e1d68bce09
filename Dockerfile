# The NGC Triton image plus what aisle's python models import (aisle, numpy, tokenizers, onnxruntime).
# It serves repositories rendered with `aisle export repo --target tensorrt|onnxruntime` (the
# embedded target runs without Docker: `aisle serve`).
#
#   docker build -t aisle-triton .
#   # onnxruntime target (GPU; render with --gpu [--trt-accelerator], or without --gpu for CPU-only),
#   # under aisle's launcher (token-locked control API, stub watchdog, GET /ready on 8003, drain):
#   docker run --gpus all --rm -p 8000-8003:8000-8003 -v "$PWD/artifacts/repo_onnxruntime:/models" \
#       aisle-triton aisle serve --repo /models --host 0.0.0.0 --tritonserver tritonserver --health-port 8003 \
#       --log-stdout   # Triton's log on the container's stdout (docker logs), as well as in its file
#   # tensorrt target: the script builds the engines on this GPU (cached in the repository, which must
#   # be writable), then execs tritonserver with the launcher's arguments:
#   docker run --gpus all --rm -p 8000-8003:8000-8003 -v "$PWD/artifacts/repo_tensorrt:/models" \
#       aisle-triton aisle serve --repo /models --host 0.0.0.0 --tritonserver /models/start_tritonserver.sh \
#       --health-port 8003 --log-stdout
#   # bare tritonserver works too (`tritonserver --model-repository=/models`, `/models/start_tritonserver.sh`),
#   # without those four.
#
# 24.10 is Triton 2.51, the version the nvidia-pytriton wheel embeds, with TensorRT 10.5 (int64
# engine inputs) and trtexec at /usr/src/tensorrt/bin/trtexec.
ARG TRITON_TAG=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3

WORKDIR /opt/aisle
COPY pyproject.toml README.md ./
COPY aisle aisle
COPY export export
COPY model_repository model_repository
COPY client client
COPY benchmarks benchmarks
# Installed into the image's system Python, the one its python backend stub embeds.
RUN pip install --no-cache-dir ".[triton-models]" \
    && python3 -c "import aisle.model_repository.cold_items, aisle.model_repository.validation, aisle.model_repository.item_store"
