"""The deployment files (Dockerfile, deploy/): they parse, and every flag, path, port, metric
and grace period they name agrees with what nobusy actually has. No docker needed."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

import nobusy.metrics
from nobusy.api import ops
from nobusy.cli.serve import serve
from nobusy.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PORT = 8000
ENV = {"UPSTREAM_BASE_URL": "http://upstream/v1", "UPSTREAM_API_KEY": "x", "UPSTREAM_MODEL": "m"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s(kind: str, name: str = "nobusy") -> dict[str, Any]:
    found = [
        doc
        for path in K8S.glob("*.yaml")
        for doc in documents(path)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, (kind, name)
    return found[0]


def compose() -> dict[str, Any]:
    return documents(DEPLOY / "compose.yaml")[0]


def nobusy_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    return {name: spec for name, spec in services.items() if name.startswith("nobusy-")}


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match
    return list(json.loads(match.group(1)))


def serve_options() -> set[str]:
    return {opt for param in serve.params if isinstance(param, click.Option) for opt in param.opts}


def check_serve_command(command: list[str]) -> None:
    assert command[:2] == ["nobusy", "serve"]
    flags = {arg for arg in command[2:] if arg.startswith("-")}
    assert flags <= serve_options(), flags - serve_options()
    assert command[command.index("--port") + 1] == str(PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def configured_drain_timeout(tmp_path: Path, text: str) -> float:
    """drain_timeout as nobusy reads the config: the file must load as a whole."""
    path = tmp_path / "nobusy.yaml"
    path.write_text(text)
    return load_settings(path, env=ENV).drain_timeout


@pytest.mark.parametrize(
    "path", sorted([*DEPLOY.rglob("*.yaml")]), ids=lambda path: str(path.relative_to(ROOT))
)
def test_every_yaml_parses(path: Path) -> None:
    assert documents(path)


def test_the_commands_use_flags_serve_has() -> None:
    check_serve_command(dockerfile_cmd())
    services = nobusy_services()
    assert len(services) == 2
    for spec in services.values():
        check_serve_command(spec["command"])
    for container in k8s("Deployment")["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "nobusy":
            check_serve_command(container["command"])


def test_probes_ask_routes_the_app_serves_on_its_port() -> None:
    paths = {route.path for route in ops.routes}
    assert {"/healthz", "/readyz"} <= paths
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {PORT}" in dockerfile
    assert f"http://127.0.0.1:{PORT}/healthz" in dockerfile
    for spec in nobusy_services().values():
        assert f"http://127.0.0.1:{PORT}/readyz" in " ".join(spec["healthcheck"]["test"])
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nobusy"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = k8s("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_grace_periods_exceed_the_drain_timeout(tmp_path: Path) -> None:
    drain = configured_drain_timeout(tmp_path, (DEPLOY / "nobusy.yaml").read_text())
    for spec in nobusy_services().values():
        assert seconds(spec["stop_grace_period"]) > drain
    configmap = k8s("ConfigMap")
    drain = configured_drain_timeout(tmp_path, configmap["data"]["nobusy.yaml"])
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nobusy"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > drain + float(pre_stop[1])


def test_secrets_come_from_the_secret_and_the_config_from_the_configmap() -> None:
    secret = k8s("Secret")["stringData"]
    assert {"NOBUSY_STATE", "NOBUSY_STORE", "NOBUSY_ADMIN_KEY"} <= set(secret)
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nobusy"]
    assert container["envFrom"] == [{"secretRef": {"name": k8s("Secret")["metadata"]["name"]}}]
    (config,) = [v for v in pod["volumes"] if "configMap" in v]
    assert config["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    for spec in nobusy_services().values():
        assert spec["environment"]["NOBUSY_STATE"].startswith("redis://")
        assert spec["environment"]["NOBUSY_STORE"].startswith("postgresql://")


def test_replicas_share_keys_in_postgresql_and_so_run_without_insecure() -> None:
    services = compose()["services"]
    for spec in nobusy_services().values():
        assert "--insecure" not in spec["command"]
        url = urlsplit(spec["environment"]["NOBUSY_STORE"].replace("${", "").replace("}", ""))
        assert url.hostname in services and url.port == 5432
        assert spec["depends_on"]["postgres"] == {"condition": "service_healthy"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:pg")  # the knowledge base's vectors
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nobusy"]
    assert "--insecure" not in container["command"]
    store = urlsplit(k8s("Secret")["stringData"]["NOBUSY_STORE"])
    service = k8s("Service", store.hostname or "")
    assert service["spec"]["ports"][0]["port"] == store.port
    assert k8s("Deployment", store.hostname or "")["spec"]["replicas"] == 1
    # The Secret's URL is one nobusy accepts as `store`.
    assert load_settings(env={**ENV, "NOBUSY_STORE": store.geturl()}).store is not None


def test_the_hpa_scales_on_a_metric_nobusy_exports() -> None:
    exported = set(re.findall(r'"(nobusy_[a-z_]+)"', inspect.getsource(nobusy.metrics)))
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "nobusy_queue_depth"
    assert metric["pods"]["metric"]["name"] in exported


def test_nginx_retries_a_draining_replica_and_does_not_buffer_streams() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    (retry,) = re.findall(r"^\s*proxy_next_upstream ([^;]*);", conf, re.MULTILINE)
    assert "http_503" in retry.split()
    assert "non_idempotent" in retry.split()  # else nginx never retries a POST (a chat request)
    assert re.search(r"^\s*proxy_buffering off;", conf, re.MULTILINE)
    for name in nobusy_services():
        assert f"server {name}:{PORT}" in conf
