"""deploy/: the Kustomize base and its CPU and GPU overlays render, every object is valid against the
Kubernetes schemas (offline, kubernetes-validate), and the objects agree with each other and with
Triton (probe paths, ports, selectors, the HPA's metric and the adapter rule that serves it).

Rendered with `kubectl kustomize`; skipped where kubectl is not installed. Not run on a cluster.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
#: The oldest Kubernetes minor still in mainstream cloud support when this was written; the
#: manifests use only APIs stable since well before it (apps/v1, policy/v1, autoscaling/v2,
#: networking.k8s.io/v1).
KUBERNETES_VERSION = "1.29.0"
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: The launcher's readiness endpoint (aisle serve --health-port).
HEALTH_PORT = {"health": 8003}
#: kubectl 1.24 embeds kustomize 4.5, the first with everything deploy/ uses (`labels`, directory
#: resources, `patches` by path); Debian 12's kubernetes-client is 1.20 (kustomize 2.0).
MIN_KUBECTL_MINOR = 24


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl >= 1.24 is not installed: `kubectl kustomize` renders deploy/")
    version = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    minor = re.match(r"\d+", json.loads(version.stdout or "{}").get("clientVersion", {}).get("minor", "0"))
    if minor is None or int(minor.group()) < MIN_KUBECTL_MINOR:
        pytest.skip(f"kubectl is older than 1.{MIN_KUBECTL_MINOR}: its kustomize cannot render deploy/")
    return binary


def render(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip(f"this kubectl has no kustomize command: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def the(objects: list[dict], kind: str) -> dict:
    (found,) = by_kind(objects, kind)
    return found


def tritonserver(objects: list[dict]) -> dict:
    containers = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(overlay: tuple[str, list[dict]]) -> None:
    import kubernetes_validate

    name, objects = overlay
    assert {o["kind"] for o in objects} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Ingress",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_schema_violation_is_caught() -> None:
    """The validation above can fail: a misspelt probe field is rejected."""
    import kubernetes_validate

    objects = render(DEPLOY / "overlays" / "cpu")
    deployment = the(objects, "Deployment")
    tritonserver(objects)["readinessProbe"]["httpGett"] = {"path": "/v2/health/ready", "port": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_readiness_is_the_launchers_and_liveness_tritons(overlay: tuple[str, list[dict]]) -> None:
    from aisle.model_repository.readiness import READY_PATH

    name, objects = overlay
    container = tritonserver(objects)
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "health"}
    assert f"--health-port={HEALTH_PORT['health']}" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    # TensorRT engine builds on the GPU overlay take minutes per model.
    assert budget_s >= (15 * 60 if name == "gpu" else 5 * 60)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == TRITON_PORTS | HEALTH_PORT


def test_pods_run_as_non_root_without_privilege_escalation(overlay: tuple[str, list[dict]]) -> None:
    _, objects = overlay
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_resources_and_gpu_requests_per_overlay(overlay: tuple[str, list[dict]]) -> None:
    name, objects = overlay
    resources = tritonserver(objects)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    gpus = resources["limits"].get("nvidia.com/gpu")
    assert gpus == ("1" if name == "gpu" else None)


def repository_name(objects: list[dict], container: dict) -> str:
    """The AISLE_REPOSITORY a container gets, read through the ConfigMap it references."""
    (var,) = [e for e in container["env"] if e["name"] == "AISLE_REPOSITORY"]
    ref = var["valueFrom"]["configMapKeyRef"]
    (config_map,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == ref["name"]]
    return config_map["data"][ref["key"]]


def test_the_repository_comes_from_a_volume_through_the_init_container(overlay: tuple[str, list[dict]]) -> None:
    name, objects = overlay
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert repository_name(objects, init) == {"cpu": "repo_onnxruntime", "gpu": "repo_tensorrt"}[name]
    mounts = {m["name"]: m["mountPath"] for m in tritonserver(objects)["volumeMounts"]}
    assert mounts["models"] == "/models"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes["model-source"] and "emptyDir" in volumes["models"]


def test_every_replica_serves_the_shared_repositorys_live_catalog(overlay: tuple[str, list[dict]]) -> None:
    """`aisle catalog` changes written to the shared volume's repository reach every pod: the server
    sees that repository's catalog_versions directory where the catalog readers look for it, over
    the pod's own copy, read-only; the same repository the init container copied."""
    from aisle.export.repo_format import catalog_versions_dir

    _, objects = overlay
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    server = tritonserver(objects)
    (init,) = pod["initContainers"]
    assert repository_name(objects, server) == repository_name(objects, init)
    versions = catalog_versions_dir(Path("/models"))
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == str(versions)]
    assert mount["name"] == "model-source" and mount["readOnly"] is True
    assert mount["subPathExpr"] == f"$(AISLE_REPOSITORY)/{versions.relative_to('/models')}"
    # The init container leaves the versions (full catalogs each) out of the pod's own copy.
    assert f"--exclude=./{versions.relative_to('/models')} " in init["command"][-1]


def test_the_launcher_runs_the_targets_tritonserver_and_drains_on_sigterm(overlay: tuple[str, list[dict]]) -> None:
    """aisle serve (token-locked control API, stub watchdog, /ready, drain on SIGTERM) around the
    image's tritonserver, or around the tensorrt repository's start script, which builds the
    engines first; the CLI accepts exactly these arguments."""
    from aisle.cli import build_parser

    name, objects = overlay
    container = tritonserver(objects)
    assert container["command"] == ["aisle", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])
    assert str(args.repo) == "/models" and args.host == "0.0.0.0"
    assert args.log_stdout  # Triton's log where the platform collects it (kubectl logs)
    assert str(args.tritonserver) == {"cpu": "tritonserver", "gpu": "/models/start_tritonserver.sh"}[name]
    startup = container["startupProbe"]
    assert args.start_timeout_s >= startup["periodSeconds"] * startup["failureThreshold"]
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) + 30 < pod["terminationGracePeriodSeconds"]


def test_services_pdb_and_hpa_select_the_deployments_pods(overlay: tuple[str, list[dict]]) -> None:
    _, objects = overlay
    deployment = the(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind(objects, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(TRITON_PORTS)
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    assert {p["name"] for p in services["aisle-triton"]["spec"]["ports"]} == {"grpc", "http", "metrics"}
    assert services["aisle-triton-pods"]["spec"]["clusterIP"] == "None"  # DNS: one address per ready pod
    assert the(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = the(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == 8002


def test_the_hpa_metric_is_the_one_the_adapter_rule_serves_from_triton_counters(
    overlay: tuple[str, list[dict]],
) -> None:
    _, objects = overlay
    (metric,) = the(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    (adapter,) = [c for c in by_kind(objects, "ConfigMap") if "config.yaml" in c["data"]]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"]: rule for rule in rules}
    rule = served[metric["pods"]["metric"]["name"]]
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    query = rule["metricsQuery"]
    assert "rate(nv_inference_queue_duration_us" in query and "rate(nv_inference_request_success" in query
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_the_ingress_sends_grpc_to_the_service_and_caps_bodies_at_max_request_bytes(
    overlay: tuple[str, list[dict]],
) -> None:
    from aisle.schema import ServingLimits

    _, objects = overlay
    ingress = the(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) == ServingLimits().max_request_bytes
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "aisle-triton", "port": {"name": "grpc"}}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
