"""DW201 to DW205 on Kubernetes manifests: what each must find (with the line of the field),
and the correct manifests it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.lint.helpers import codes, findings

GOOD_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payments
spec:
  template:
    metadata:
      annotations:
        drainwatch.io/drain-timeout-seconds: "20"
    spec:
      terminationGracePeriodSeconds: 40
      shareProcessNamespace: true
      containers:
        - name: app
          image: registry.example/payments:1.0
          command: ["drainwatch", "run", "--", "python", "server.py"]
          ports:
            - {name: grpc, containerPort: 50051}
            - {name: health, containerPort: 8080}
          lifecycle:
            preStop:
              sleep: {seconds: 5}
          livenessProbe:
            httpGet: {path: /healthz, port: health}
            terminationGracePeriodSeconds: 5
      initContainers:
        - name: drainwatch
          image: registry.example/drainwatch:0.1
          restartPolicy: Always
          args: ["agent", "--drain-budget", "35"]
          securityContext:
            capabilities:
              add: ["SYS_PTRACE"]
"""


def test_a_correct_deployment_is_clean(tmp_path: Path) -> None:
    """Grace fits preStop + drain, health on its own port, probe grace, agent can sample."""
    assert codes(tmp_path, GOOD_DEPLOYMENT, "deploy.yaml") == []


def _mutated(old: str, new: str) -> str:
    assert old in GOOD_DEPLOYMENT
    return GOOD_DEPLOYMENT.replace(old, new)


BROKEN = {
    # name: (manifest, expected codes in order, a text on the line of the first finding)
    "grace shorter than preStop + drain": (
        _mutated("terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 20"),
        ["DW201", "DW201"],  # the app's drain, and the agent's budget beyond the grace
        "terminationGracePeriodSeconds: 20",
    ),
    "default grace and a gunicorn drain": (
        _mutated("      terminationGracePeriodSeconds: 40\n", "")
        .replace('"python", "server.py"', '"gunicorn", "app:app"')
        .replace('"--drain-budget", "35"', '"--drain-budget", "25"')
        .replace('        drainwatch.io/drain-timeout-seconds: "20"\n', '        x: "1"\n'),
        ["DW201"],
        "- name: app",
    ),
    "uvicorn's flag counts": (
        _mutated(
            '"python", "server.py"', '"uvicorn", "--timeout-graceful-shutdown=45", "a:b"'
        ).replace('        drainwatch.io/drain-timeout-seconds: "20"\n', '        x: "1"\n'),
        ["DW201"],
        "terminationGracePeriodSeconds: 40",
    ),
    "the agent's budget beyond what the app has": (
        _mutated('"--drain-budget", "35"', '"--drain-budget", "38"'),
        ["DW201"],
        "- name: drainwatch",
    ),
    "liveness on the business port": (
        _mutated("port: health}", "port: 50051}"),
        ["DW202"],
        "httpGet: {path: /healthz",
    ),
    "liveness on the business port by name": (
        _mutated("port: health}", "port: grpc}"),
        ["DW202"],
        "httpGet: {path: /healthz",
    ),
    "liveness without probe-level grace": (
        _mutated("            terminationGracePeriodSeconds: 5\n", ""),
        ["DW203"],
        "httpGet: {path: /healthz",
    ),
    "probe-level grace no shorter than the pod's": (
        _mutated(
            "            terminationGracePeriodSeconds: 5\n",
            "            terminationGracePeriodSeconds: 45\n",
        ),
        ["DW203"],
        "            terminationGracePeriodSeconds: 45",
    ),
    "exec sleep on distroless": (
        _mutated(
            "image: registry.example/payments:1.0", "image: gcr.io/distroless/python3"
        ).replace("sleep: {seconds: 5}", 'exec: {command: ["sh", "-c", "sleep 5"]}'),
        ["DW204"],
        "exec: {command:",
    ),
    "agent without SYS_PTRACE": (
        _mutated('add: ["SYS_PTRACE"]', 'add: ["NET_ADMIN"]'),
        ["DW205"],
        "capabilities:",
    ),
    "agent without a shared PID namespace": (
        _mutated("      shareProcessNamespace: true\n", ""),
        ["DW205"],
        "- name: drainwatch",
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_each_manifest_mistake_is_found_at_its_line(tmp_path: Path, name: str) -> None:
    """One mutation of the correct deployment: the expected codes, the first at the line of
    the field that is wrong."""
    manifest, expected, anchor = BROKEN[name]
    found = findings(tmp_path, manifest, "deploy.yaml")
    assert [f.code for f in found] == expected, found
    line = next(number for number, text in enumerate(manifest.splitlines(), 1) if anchor in text)
    assert found[0].line == line, (found[0], anchor)


LOOK_ALIKES = {
    "an agent with py-spy off": _mutated('"--drain-budget", "35"', '"--no-pyspy"')
    .replace("      shareProcessNamespace: true\n", "")
    .replace('add: ["SYS_PTRACE"]', "add: []"),
    "a privileged agent": _mutated('add: ["SYS_PTRACE"]', "add: []").replace(
        "          securityContext:\n", "          securityContext:\n            privileged: true\n"
    ),
    "exec python on distroless": _mutated(
        "image: registry.example/payments:1.0", "image: gcr.io/distroless/python3"
    ).replace("sleep: {seconds: 5}", 'exec: {command: ["python3", "-c", "import time"]}'),
    "no drain timeout known and a short preStop": _mutated(
        '        drainwatch.io/drain-timeout-seconds: "20"\n', '        x: "1"\n'
    ),
    "a Service is not a pod": """
apiVersion: v1
kind: Service
metadata: {name: payments}
spec:
  ports: [{port: 50051, targetPort: grpc}]
""",
    "not Kubernetes at all": "name: ci\non: [push]\njobs: {}\n",
    "an empty file": "",
}


@pytest.mark.parametrize("name", list(LOOK_ALIKES))
def test_correct_variants_and_other_yaml_are_left_alone(tmp_path: Path, name: str) -> None:
    """py-spy off, privileged, python in distroless, other kinds and other YAML: clean."""
    assert codes(tmp_path, LOOK_ALIKES[name], "deploy.yaml") == []


def test_pods_cronjobs_lists_and_several_documents_are_read(tmp_path: Path) -> None:
    """A Pod, a CronJob and a List item, in three documents of one file, each found."""
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers:
    - {name: app, image: x, livenessProbe: {tcpSocket: {port: 80}}, ports: [{containerPort: 80}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: two}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          terminationGracePeriodSeconds: 3
          containers:
            - {name: job, image: x, lifecycle: {preStop: {exec: {command: ["sleep", "5"]}}}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: three}
    spec:
      containers:
        - {name: app, image: x, livenessProbe: {grpc: {port: 9}, terminationGracePeriodSeconds: 2}}
"""
    found = sorted((f.line, f.code) for f in findings(tmp_path, manifest, "all.yml"))
    assert found == [(7, "DW202"), (7, "DW203"), (17, "DW201")], found


def test_the_messages_say_why_and_what_to_set(tmp_path: Path) -> None:
    """DW201 names the container, the seconds it needs and the value to set."""
    found = findings(tmp_path, BROKEN["grace shorter than preStop + drain"][0], "d.yaml")[0]
    assert "container 'app' in Deployment 'payments'" in found.message
    assert "5 s of preStop + 20 s of drain" in found.message
    assert "set it to at least 30" in found.message
