"""Kubernetes objects generated from the repository's own files: the PrometheusRule from
``alerts/drainwatch.rules.yaml`` (Prometheus Operator) and the ConfigMap that Grafana's
dashboard sidecar provisions from (the ``grafana_dashboard`` label, the default of the
Grafana Helm chart and kube-prometheus-stack).

Both are rendered as YAML text with a header saying where they come from, so that a
reviewer sees in the diff of ``deploy/`` exactly what changed in ``alerts/`` or
``dashboards/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml

RULES_SOURCE: Final = "alerts/drainwatch.rules.yaml"
LABELS: Final = {"app.kubernetes.io/name": "drainwatch", "app.kubernetes.io/part-of": "drainwatch"}
# The Grafana sidecar's defaults: it loads every ConfigMap with this label into Grafana,
# into the folder named by this annotation (when its folderAnnotation is configured).
DASHBOARD_LABEL: Final = "grafana_dashboard"
FOLDER_ANNOTATION: Final = "grafana_folder"
FOLDER: Final = "drainwatch"


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (dashboard JSON, folded rule expressions) as ``|`` blocks."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockStyleDumper.add_representer(str, _represent_text)


def _dump(document: Mapping[str, Any], header: str) -> str:
    body = yaml.dump(
        dict(document), Dumper=_BlockStyleDumper, sort_keys=False, width=100, allow_unicode=True
    )
    return header + body


def load_rules(text: str, source: str = RULES_SOURCE) -> dict[str, Any]:
    """The rule file as data; ``ValueError`` naming ``source`` when it is not a rule file
    with a ``groups`` list."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise ValueError(f"{source}: must be a Prometheus rule file with a 'groups' list")
    return data


def prometheus_rule(rules: Mapping[str, Any]) -> str:
    """The PrometheusRule object holding every group of the rule file, unchanged."""
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "drainwatch", "labels": dict(LABELS)},
        "spec": {"groups": rules["groups"]},
    }
    header = (
        f"# Generated from {RULES_SOURCE} by `python -m deploygen`; edit that file, not this.\n"
        "# The Prometheus Operator loads it when the labels match the Prometheus object's\n"
        "# ruleSelector (kube-prometheus-stack: add `release: <your release name>`).\n"
    )
    return _dump(document, header)


def dashboards_configmap(dashboards: Mapping[str, str]) -> str:
    """One ConfigMap with every dashboard file (name -> JSON text) for the Grafana sidecar."""
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "drainwatch-dashboards",
            "labels": {**LABELS, DASHBOARD_LABEL: "1"},
            "annotations": {FOLDER_ANNOTATION: FOLDER},
        },
        "data": dict(sorted(dashboards.items())),
    }
    header = (
        "# Generated from dashboards/*.json by `python -m deploygen`; edit deploygen/, not this.\n"
        f"# Grafana's dashboard sidecar provisions ConfigMaps labelled {DASHBOARD_LABEL}=1.\n"
    )
    return _dump(document, header)
