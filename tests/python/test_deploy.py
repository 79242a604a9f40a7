"""The deployment files in deploy/ against what Kubernetes, Prometheus and a running kensa need.

No container engine, cluster or Grafana runs here, so the manifests are checked as data: the
fields Kubernetes requires and the choices a line depends on (PostgreSQL with replicas, both
ports, probes, drain longer than the grace, GPU requests). The alert rules go through promtool,
and every metric the dashboard and the rules name must exist on a real kensa's /metrics.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
import yaml

from conftest import DEMO, MODEL, ROOT, Kensa, samples, start_kensa

DEPLOY = ROOT / "deploy"
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "max",
    "min",
    "histogram_quantile",
    "and",
    "or",
    "offset",
    "without",
    "le",
    "on",
    "ignoring",
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    """kensa's objects by kind (`ConfigMap` is kensa's own configuration)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in documents(path):
            for field in ("apiVersion", "kind", "metadata"):
                assert field in doc, f"{path.name}: an object without {field}"
            assert doc["metadata"].get("name"), f"{path.name}: {doc['kind']} without a name"
            if doc["metadata"]["name"].startswith("kensa"):
                objects[doc["kind"]] = doc
    return objects


def test_the_kubernetes_deployment_shares_postgres_and_drains_before_it_dies() -> None:
    objects = kubernetes_objects()
    for kind in (
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ):
        assert kind in objects, f"deploy/kubernetes has no {kind}"
    deployment = objects["Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    if spec["replicas"] > 1:
        store = env["KENSA_STORE"]
        assert "secretKeyRef" in store["valueFrom"], "the store URL comes from a Secret"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"]["path"] == path, probe
    config = tomllib.loads(objects["ConfigMap"]["data"]["kensa.toml"])
    grace = int(config["shutdown-grace"].rstrip("s"))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + grace < pod["terminationGracePeriodSeconds"], "drain fits the grace period"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    service_ports = {p["name"]: p["port"] for p in objects["Service"]["spec"]["ports"]}
    assert service_ports == {"http": 8080, "grpc": 8081}
    hpa_metrics = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert hpa_metrics[0]["pods"]["metric"]["name"] == "kensa_queue_depth"
    assert hpa_metrics[1]["resource"]["name"] == "cpu"
    adapter = documents(DEPLOY / "kubernetes" / "prometheus-adapter.yaml")[0]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == "kensa_queue_depth"


def test_the_compose_stack_wires_every_service_to_files_that_exist() -> None:
    compose = documents(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    assert set(services) >= {"kensa", "postgres", "mosquitto", "prometheus", "grafana"}
    assert services["kensa"]["environment"]["KENSA_STORE"].startswith("postgres://")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_the_dockerfile_passes_hadolint() -> None:
    """No container engine runs here, so the image is linted, not built."""
    hadolint = Path(sys.executable).parent / "hadolint"
    checked = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_pass_promtool() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus" / "kensa-rules.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def metric_names(expressions: list[str]) -> set[str]:
    """The metric names a PromQL expression reads (recording rules and words left out)."""
    names = set()
    for expression in expressions:
        text = re.sub(r'"[^"]*"', "", expression)
        text = re.sub(r"\{[^}]*\}", "", text)
        text = re.sub(r"\[[^\]]*\]", "", text)
        text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
        text = re.sub(r"\boffset\s+\w+", "", text)
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
            if word in PROMQL_WORDS or ":" in word or word.isdigit():
                continue
            names.add(word)
    return names


def base_name(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def drive_every_metric_family(server: Kensa, repository: Path) -> None:
    """Verdicts enough for the drift gauges (V2 batches), one refused request, one version that
    fails to load on a reload."""
    client = httpclient.InferenceServerClient(url=server.http)
    shots = samples()
    for round_ in range(12):
        batch = shots
        image = httpclient.InferInput("image", [len(batch)], "BYTES")
        image.set_data_from_numpy(np.array([s.image for s in batch], dtype=np.object_))
        note = httpclient.InferInput("note", [len(batch)], "BYTES")
        note.set_data_from_numpy(np.array([s.note.encode() for s in batch], dtype=np.object_))
        ids = httpclient.InferInput("inspection_id", [len(batch)], "BYTES")
        ids.set_data_from_numpy(
            np.array([f"deploy-{round_}-{s.name}".encode() for s in batch], dtype=np.object_)
        )
        client.infer(MODEL, [image, note, ids])
    refused = urllib.request.Request(
        f"http://{server.http}/v1/inspections",
        data=json.dumps({"station_id": "s", "image": "%%%"}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        urllib.request.urlopen(refused, timeout=30)
    except urllib.error.HTTPError as error:
        assert error.code == 400
    broken = repository / MODEL / "2"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")
    reload = urllib.request.Request(f"http://{server.http}/v1/models/reload", method="POST")
    with urllib.request.urlopen(reload, timeout=60) as response:
        assert json.loads(response.read())["failed"][0]["version"] == 2


def test_every_metric_of_the_dashboard_and_the_rules_exists(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "kensa.json").read_text())
    wanted = metric_names(
        [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    )
    rules = documents(DEPLOY / "prometheus" / "kensa-rules.yml")[0]
    wanted |= metric_names([rule["expr"] for group in rules["groups"] for rule in group["rules"]])
    mqtt = os.environ.get("KENSA_TEST_MQTT", "127.0.0.1:1883")
    repository = tmp_path / "repository"
    (repository / MODEL).mkdir(parents=True)
    (repository / MODEL / "1").symlink_to(DEMO)
    extra = [
        f"--mqtt={mqtt}",
        "--mqtt-topic-prefix=kensa-deploy-test",
        "--drift-window=100",
        f"--model-repository={repository}",
    ]
    with start_kensa(tmp_path / "data", extra) as server:
        drive_every_metric_family(server, repository)
        with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=30) as response:
            text = response.read().decode()
    present = {
        base_name(line.split("{")[0].split(" ")[0])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    missing = {name for name in wanted if base_name(name) not in present}
    assert not missing, f"named in deploy/ but not exported: {sorted(missing)}"
    assert "kensa_drift_psi" in wanted and "kensa_verdicts_total" in wanted
