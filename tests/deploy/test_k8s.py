"""The Kubernetes manifests: kubeconform -strict passes what ships (CRDs included) and fails a
manifest with a wrong field; the rendered objects say what the operator docs promise."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .tools import CACHE, REPO, run

CHECK = REPO / "scripts/deploy-check-k8s"
BASE = REPO / "deploy/k8s/base"
OVERLAYS = sorted(p for p in (REPO / "deploy/k8s/overlays").iterdir() if p.is_dir())


def rendered(target: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` makes of `target`."""
    yaml_text = run(["kubectl", "kustomize", target]).stdout
    to_json = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))"
    done = run([CACHE / "tools/bin/python", "-c", to_json], stdin=yaml_text)
    objects: list[dict[str, Any]] = json.loads(done.stdout)
    return objects


def one(objects: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    (found,) = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)
    ]
    return found


def test_every_manifest_passes_kubeconform_strict() -> None:
    done = run([CHECK], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # base and each overlay, every resource valid and none skipped for want of a schema
    assert done.stdout.count("Invalid: 0, Errors: 0, Skipped: 0") == 1 + len(OVERLAYS), done.stdout


def test_an_overlay_with_a_misspelt_statefulset_field_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {os.path.relpath(BASE, tmp_path)}\n"
        "patches:\n"
        "  - target: {kind: StatefulSet}\n"
        "    patch: |-\n"
        "      - {op: add, path: /spec/replica, value: 3}\n"
    )
    done = run([CHECK, tmp_path], check=False)
    assert done.returncode != 0
    assert "StatefulSet patrol-worker is invalid" in done.stdout
    assert "'replica' not allowed" in done.stdout


@pytest.mark.parametrize(
    ("kind", "line", "wrong"),
    [
        ("ScaledObject", "  maxReplicaCount: 6\n", "  maxReplicas: 6\n"),
        ("ServiceMonitor", "  - interval: 15s\n", "  - intervall: 15s\n"),
        ("PodDisruptionBudget", "  maxUnavailable: 1\n", "  maxUnavailable: [1]\n"),
    ],
)
def test_a_custom_resource_or_budget_with_a_wrong_field_fails_the_check(
    tmp_path: Path, kind: str, line: str, wrong: str
) -> None:
    text = run(["kubectl", "kustomize", BASE]).stdout
    assert text.count(line) == 1, f"{line!r} is not in the rendered base once"
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(line, wrong))
    done = run([CHECK, broken], check=False)
    assert done.returncode != 0
    assert f"{kind} " in done.stdout and "is invalid" in done.stdout, done.stdout


def test_the_base_copies_of_zones_routing_and_alerts_match_the_shipped_files() -> None:
    done = run([REPO / "scripts/deploy-k8s-sync", "--check"], check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("target", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_workers_are_named_by_their_pod_and_scale_at_most_to_the_partition_count(
    target: Path,
) -> None:
    objects = rendered(target)
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["PATROL_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(worker["resources"]["requests"])
    settings = one(objects, "ConfigMap", "patrol-env")
    assert worker["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    partitions = int(settings["data"]["PATROL_PARTITIONS"])
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == partitions
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["consumerGroup"] == settings["data"]["PATROL_APP_ID"]
    assert trigger["metadata"]["bootstrapServers"] == settings["data"]["PATROL_KAFKA_BOOTSTRAP"]
    # the zones and routing the worker is told to read are the ConfigMap's files
    tables = one(objects, "ConfigMap", "patrol-tables")
    mounted = {v["name"]: v for v in pod["volumes"]}["tables"]["configMap"]["name"]
    assert mounted == tables["metadata"]["name"]
    assert set(tables["data"]) == {"zones.geojson", "routing.json"}
    assert settings["data"]["PATROL_ZONES"] == "/etc/patrol/zones.geojson"
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert (
        budget["selector"]["matchLabels"]
        == one(objects, "StatefulSet")["spec"]["selector"]["matchLabels"]
    )
    # the alerts select job="patrol": the ServiceMonitor's Service must be named so
    assert one(objects, "Service")["metadata"]["name"] == "patrol"
