"""deploy/kubernetes validates (kubernetes-validate --strict, and the Prometheus Operator's
models for its kinds), its generated objects are in sync with alerts/ and dashboards/, and
the example pod is what the issue asks: a native sidecar, a shared PID namespace,
SYS_PTRACE on the sidecar only, a shared socket volume, the app under `drainwatch run`,
probes, preStop, and a grace period that fits the drain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as operator
from drainwatch.agent.cli import build_parser, load_config
from pydantic import BaseModel

from deploygen.outputs import DASHBOARDS_CONFIGMAP, PROMETHEUS_RULE, generate, stale
from tests.deploy.promql import ROOT, RULES

KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
# The oldest release the example supports (preStop sleep) and the newest kubernetes-validate
# knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
OPERATOR_KINDS: dict[str, type[BaseModel]] = {
    "PodMonitor": operator.PodMonitor,
    "PrometheusRule": operator.PrometheusRule,
}
SPARE_SECONDS = 5


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    return data


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = load("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def agent_settings() -> dict[str, Any]:
    settings: dict[str, Any] = yaml.safe_load(load("agent-configmap.yaml")["data"]["agent.yaml"])
    return settings


def validate(version: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            version,
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_strictly(version: str) -> None:
    """Every core object passes `kubernetes-validate --strict` (unknown fields rejected)."""
    result = validate(version, *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    core = [path for path in MANIFESTS if load(path.name)["kind"] not in OPERATOR_KINDS]
    assert passed == len(core), result.stdout


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The strict check can fail: a misspelt pod field is refused."""
    deployment = load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["shareProcessNamespaces"] = True
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = validate(KUBERNETES_VERSIONS[-1], path)
    assert result.returncode != 0 and "shareProcessNamespaces" in result.stdout


@pytest.mark.parametrize("name", ["podmonitor.yaml", "prometheusrule.yaml"])
def test_operator_objects_match_the_operators_models(name: str) -> None:
    """PodMonitor and PrometheusRule validate against the Prometheus Operator's CRD models
    (kubernetes-validate has no schema for them), and nothing is dropped as unknown."""
    document = load(name)
    model = OPERATOR_KINDS[document["kind"]].model_validate(document)
    again = model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
    assert again == document


def test_the_operator_model_check_rejects_a_bad_interval() -> None:
    """The model check can fail: a scrape interval that is no duration is refused."""
    document = load("podmonitor.yaml")
    document["spec"]["podMetricsEndpoints"][0]["interval"] = "ten seconds"
    with pytest.raises(ValueError, match="interval"):
        operator.PodMonitor.model_validate(document)


def test_generated_objects_are_in_sync_with_alerts_and_dashboards() -> None:
    """prometheusrule.yaml holds exactly alerts/drainwatch.rules.yaml, the dashboards
    ConfigMap exactly dashboards/*.json (python -m deploygen regenerates both)."""
    assert stale(ROOT, generate(ROOT)) == []
    rule = load(Path(PROMETHEUS_RULE).name)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    configmap = load(Path(DASHBOARDS_CONFIGMAP).name)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    for path in (ROOT / "dashboards").glob("*.json"):
        assert configmap["data"][path.name] == path.read_text()


def test_an_edited_rule_file_makes_the_prometheus_rule_stale(tmp_path: Path) -> None:
    """The sync check can fail: a changed rule file leaves the committed object stale."""
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / RULES.name).write_text(RULES.read_text().replace("> 10", "> 20"))
    for name in (PROMETHEUS_RULE, DASHBOARDS_CONFIGMAP, "dashboards/drain-overview.json",
                 "dashboards/pod-drain-detail.json"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    assert stale(tmp_path, generate(tmp_path)) == [PROMETHEUS_RULE]


def test_the_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deploy/kubernetes` applies every shipped object."""
    assert sorted(load("kustomization.yaml")["resources"]) == [path.name for path in MANIFESTS]


def _containers() -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec()
    (agent,) = spec["initContainers"]
    (app,) = spec["containers"]
    return agent, app


def test_the_agent_is_a_native_sidecar_in_a_shared_pid_namespace() -> None:
    """The agent is an init container with restartPolicy Always, the pod shares its PID
    namespace, and the app waits for the agent's ingest (startupProbe on /readyz)."""
    agent, _ = _containers()
    assert pod_spec()["shareProcessNamespace"] is True
    assert agent["restartPolicy"] == "Always"
    assert agent["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert "readinessProbe" not in agent


def test_sys_ptrace_is_granted_to_the_sidecar_only() -> None:
    """SYS_PTRACE is the sidecar's one added capability; the app drops everything; both run
    as non-root with read-only root filesystems. Only the sidecar may gain a privilege on
    exec (py-spy's file capability needs no_new_privs off); the app may not."""
    agent, app = _containers()
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for container in (agent, app):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True
    assert agent["securityContext"]["allowPrivilegeEscalation"] is True
    assert app["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_socket_volume_is_shared_and_matches_both_ends() -> None:
    """Both containers mount the socket volume where the app's DRAINWATCH_ENDPOINT and the
    agent's ingest point, and the agent's state dir is a volume of its own."""
    agent, app = _containers()
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (agent, app)
    }
    assert mounts["drainwatch"]["drainwatch-socket"] == mounts["app"]["drainwatch-socket"]
    endpoint = next(e["value"] for e in app["env"] if e["name"] == "DRAINWATCH_ENDPOINT")
    assert agent_settings()["ingest"] == [endpoint]
    assert endpoint.removeprefix("unix://").startswith(mounts["app"]["drainwatch-socket"] + "/")
    assert agent_settings()["state"]["dir"] == mounts["drainwatch"]["drainwatch-state"]
    assert pod_spec()["securityContext"]["fsGroup"] == app["securityContext"]["runAsGroup"]


def test_the_app_runs_under_drainwatch_run_with_probes_and_prestop() -> None:
    """`drainwatch run` wraps the command; readiness and liveness probe the health port
    the agent knows; a preStop sleep precedes SIGTERM."""
    _, app = _containers()
    assert app["command"][:2] == ["drainwatch", "run"]
    assert "--" in app["command"]
    health = next(p["containerPort"] for p in app["ports"] if p["name"] == "health")
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent_settings()["ports"]["health"] == [health]
    assert app["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def _flag(command: list[str], name: str) -> float:
    return float(command[command.index(name) + 1])


def test_the_grace_period_fits_the_drain_and_the_final_scrape() -> None:
    """terminationGracePeriodSeconds >= preStop + drain budget + final metrics window +
    spare; the app's own propagation + grace fit the budget; the final metrics window
    outlasts a scrape interval."""
    _, app = _containers()
    settings = agent_settings()
    budget = settings["drain_budget_seconds"]
    final = settings["state"]["final_metrics_seconds"]
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod_spec()["terminationGracePeriodSeconds"] >= pre_stop + budget + final + SPARE_SECONDS
    assert _flag(app["command"], "--propagation") + _flag(app["command"], "--grace") <= budget
    interval = load("podmonitor.yaml")["spec"]["podMetricsEndpoints"][0]["interval"]
    assert interval.endswith("s") and final > float(interval.removesuffix("s"))


def test_the_agent_configmap_is_a_valid_agent_config(tmp_path: Path) -> None:
    """The real agent's configuration loader accepts agent.yaml as shipped."""
    path = tmp_path / "agent.yaml"
    path.write_text(load("agent-configmap.yaml")["data"]["agent.yaml"])
    config = load_config(build_parser().parse_args(["agent", "--config", str(path)]))
    assert config.drain_budget_seconds == agent_settings()["drain_budget_seconds"]
    assert config.listen.port == 9469


def test_the_podmonitor_scrapes_the_sidecars_named_port() -> None:
    """The PodMonitor selects the pod template's label and the agent's named port."""
    agent, _ = _containers()
    monitor = load("podmonitor.yaml")["spec"]
    labels = load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    port = monitor["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in agent["ports"]}


def test_the_shipped_manifests_pass_drainwatch_lint() -> None:
    """``drainwatch lint`` finds nothing in the manifests drainwatch itself ships."""
    result = subprocess.run(
        [sys.executable, "-m", "drainwatch.agent.cli", "lint", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
