"""deploy/: every kustomize overlay renders and validates offline, and says what the code says.

Core objects are validated with kubernetes-validate's bundled schemas (strict: unknown fields
fail) for one current Kubernetes version; the KEDA ScaledObject and the Prometheus Operator
ServiceMonitor against the CRD schemas vendored in tests/data/crds/ (jsonschema).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from registry import RoostSettings
from serving.autoscaler import committed_scaled_objects

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "tests" / "data" / "crds"
OVERLAYS = ("dev", "prod", "region-eu", "region-us")
REGIONS = ("eu", "us")
K8S_VERSION = "1.33"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
SECRET_NAME = re.compile(r"(DATABASE_URL|REDIS_URL|PASSWORD|SECRET|TOKEN|_KEY)", re.I)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def render(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_overlay_renders_the_expected_objects(rendered: dict[str, Any]) -> None:
    for name, docs in rendered.items():
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for needed in [
            ("Deployment", "roost-gateway"),
            ("Service", "roost-gateway"),
            ("PodDisruptionBudget", "roost-gateway"),
            ("ServiceMonitor", "roost-gateway"),
            ("ScaledObject", "roost-gateway"),
            ("ConfigMap", "roost-config"),
        ]:
            assert needed in kinds, f"{name}: {needed} missing"
        assert all(d["metadata"].get("namespace") for d in docs), name
        assert not any(d["kind"] == "Secret" for d in docs), f"{name}: a Secret in the manifests"
    for name in ("prod", *(f"region-{r}" for r in REGIONS)):
        assert ("Deployment", "roost-triton") in {
            (d["kind"], d["metadata"]["name"]) for d in rendered[name]
        }


def test_every_object_validates_offline(rendered: dict[str, Any]) -> None:
    schemas = {key: json.loads((CRDS / f).read_text()) for key, f in CRD_SCHEMAS.items()}
    for name, docs in rendered.items():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            if key in schemas:
                jsonschema.validate(doc, schemas[key])
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{where}: {e.message} at {list(e.path)}")


def test_crd_schemas_catch_mistakes() -> None:
    so = committed_scaled_objects()["gateway-scaledobject.yaml"]
    schema = json.loads((CRDS / CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).read_text())
    jsonschema.validate(so, schema)
    bad = json.loads(json.dumps(so))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(so))
    bad["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    # and kubernetes-validate really is strict and offline
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "x"},
                "spec": {"portz": []},
            },
            K8S_VERSION,
            strict=True,
        )


def test_committed_scaled_objects_equal_the_generated_ones(rendered: dict[str, Any]) -> None:
    for file_name, generated in committed_scaled_objects().items():
        committed = yaml.safe_load((DEPLOY / "base" / file_name).read_text())
        assert committed == generated, f"{file_name}: run python -m serving.autoscaler --write"
    # prod and the regions keep them as generated (plus namespace and the part-of label)
    for name in ("prod", "region-eu", "region-us"):
        for generated in committed_scaled_objects().values():
            got = find(rendered[name], "ScaledObject", generated["metadata"]["name"])
            assert got["spec"] == generated["spec"], name


def test_prometheus_triggers_use_the_gateways_metric_names(rendered: dict[str, Any]) -> None:
    from serving.metrics import GatewayMetrics

    exported = {m.name for m in GatewayMetrics().registry.collect()}
    so = find(rendered["prod"], "ScaledObject", "roost-gateway")
    names = set()
    for trigger in so["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "prometheus"
        assert {"serverAddress", "query", "threshold"} <= set(meta)
        float(meta["threshold"])
        names |= set(re.findall(r"\b(roost_[a-z_]+?)(?:_bucket|_total)?\{", meta["query"]))
    assert names == {"roost_queue_depth", "roost_request_latency_seconds", "roost_requests"}
    assert names <= exported
    triton = find(rendered["prod"], "ScaledObject", "roost-triton")
    assert any("DCGM_FI_DEV_GPU_UTIL" in t["metadata"]["query"] for t in triton["spec"]["triggers"])


def _env_settings(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "roost-config")["data"])


def test_probes_prestop_and_grace_match_the_drain_settings(rendered: dict[str, Any]) -> None:
    for name, docs in rendered.items():
        env = _env_settings(docs)
        settings = RoostSettings(
            **{
                k[6:].lower(): v
                for k, v in env.items()
                if k[6:].lower() in RoostSettings.model_fields
            }
        )
        gateway = find(docs, "Deployment", "roost-gateway")
        pod = gateway["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep" and float(sleep[1]) == settings.drain_delay_s > 0, name
        # preStop, then on SIGTERM the gateway's own delay and grace, then 5 s to seal the log
        expected = float(sleep[1]) + settings.drain_delay_s + settings.drain_grace_s + 5
        assert pod["terminationGracePeriodSeconds"] == expected, name
        for c in containers(gateway):
            assert {"requests", "limits"} <= set(c["resources"]), f"{name}: {c['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True
        service = find(docs, "Service", "roost-gateway")
        assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}


def test_config_map_keys_are_real_settings(rendered: dict[str, Any]) -> None:
    known = {f"ROOST_{f.upper()}" for f in RoostSettings.model_fields}
    known |= {"ROOST_AUTOSCALE_INSTANCES"}  # serving/autoscaler.py reads it
    for name, docs in rendered.items():
        unknown = set(_env_settings(docs)) - known
        assert not unknown, f"{name}: {unknown} are no RoostSettings field"


def test_no_secret_values_in_plain_env(rendered: dict[str, Any]) -> None:
    for name, docs in rendered.items():
        for key, value in _env_settings(docs).items():
            assert not SECRET_NAME.search(key), f"{name}: {key} in a ConfigMap"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}: credentials in {key}"
        for doc in docs:
            if doc["kind"] != "Deployment":
                continue
            for c in containers(doc):
                for var in c.get("env", []):
                    if SECRET_NAME.search(var["name"]):
                        where = f"{name}: {c['name']} {var['name']}"
                        assert "value" not in var, f"{where}: plain value"
                        assert "secretKeyRef" in var["valueFrom"], where
        gateway = find(docs, "Deployment", "roost-gateway")
        refs = {
            v["name"]: v["valueFrom"]["secretKeyRef"]["name"]
            for v in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
            if "valueFrom" in v
        }
        assert {"ROOST_DATABASE_URL", "ROOST_REDIS_URL"} <= set(refs), name


def _canonical(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])))


def test_region_overlays_differ_only_by_region(rendered: dict[str, Any]) -> None:
    eu, us = _canonical(rendered["region-eu"]), _canonical(rendered["region-us"])
    assert eu != us
    assert re.sub(r"\beu\b", "us", eu) == us
    for region in REGIONS:
        docs = rendered[f"region-{region}"]
        gateway = find(docs, "Deployment", "roost-gateway")
        env = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ROOST_REGION"]["value"] == region
        for var, secret in [
            ("ROOST_DATABASE_URL", "roost-postgres"),
            ("ROOST_REDIS_URL", "roost-redis"),
            ("AWS_ACCESS_KEY_ID", "roost-s3"),
        ]:
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == f"{secret}-{region}"
        read_url = env["ROOST_DATABASE_READ_URL"]["valueFrom"]["secretKeyRef"]
        assert read_url == {"name": f"roost-postgres-{region}", "key": "ROOST_DATABASE_READ_URL",
                            "optional": True}  # absent in the primary region: the write URL
        triton = find(docs, "Deployment", "roost-triton")
        init_env = {v["name"]: v for v in containers(triton)[0]["env"]}
        assert init_env["ROOST_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
            f"roost-postgres-{region}"
        )
        # apart from what names the region, a region is prod
        prod = {(d["kind"], d["metadata"]["name"]): d for d in rendered["prod"]}
        changed = {
            (d["kind"], d["metadata"]["name"])
            for d in docs
            if d != prod[(d["kind"], d["metadata"]["name"])]
        }
        assert changed == {
            ("ConfigMap", "roost-config"),
            ("Deployment", "roost-gateway"),
            ("Deployment", "roost-triton"),
        }


def test_triton_deployment_gets_its_repository_from_roost_triton_export(
    rendered: dict[str, Any],
) -> None:
    triton = find(rendered["prod"], "Deployment", "roost-triton")
    init, server = containers(triton)
    assert "roost triton export" in init["args"][0]
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in server["args"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["name"] for m in init["volumeMounts"]} & {m["name"] for m in server["volumeMounts"]}
    assert mounts == {"model-repository"}


def test_dagster_cluster_instance_and_helm_values() -> None:
    from dagster._core.instance.config import dagster_instance_config

    instance = yaml.safe_load((DEPLOY / "dagster" / "dagster.cluster.yaml").read_text())
    assert instance["run_launcher"]["module"] == "dagster_k8s"
    assert instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert "postgres" in instance["storage"]
    # Dagster's own schema check of the instance file (no database needed)
    checked, _ = dagster_instance_config(
        str(DEPLOY / "dagster"), config_filename="dagster.cluster.yaml"
    )
    assert checked["run_launcher"]["class"] == "K8sRunLauncher"
    # the root dagster.yaml stays the embedded (local) one
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert "run_launcher" not in local and "storage" not in local

    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["enabled"] is True
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    (user,) = values["dagster-user-deployments"]["deployments"]
    assert user["dagsterApiGrpcArgs"][1] == "orchestration.definitions"
    kustomize = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert user["image"]["repository"] == kustomize["images"][0]["newName"]
    assert {"name": "roost-postgres"} in user["envSecrets"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("dagster-k8s") for dep in extras["k8s"])


def test_dockerfile_is_multi_stage_non_root_and_installs_the_k8s_extra() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r'pip install "\.\[k8s', text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert not re.search(r"^(ENV|ARG) .*(PASSWORD|SECRET|DATABASE_URL|REDIS_URL)", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".roost", "tests"} <= set(ignored)
