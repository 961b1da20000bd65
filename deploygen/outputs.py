"""Every generated file, its path in the repository and its text; writing them, and finding
the committed ones that are out of date."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import drain_overview, pod_drain_detail
from .kubernetes_objects import RULES_SOURCE, dashboards_configmap, load_rules, prometheus_rule

DASHBOARDS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "dashboards/drain-overview.json": drain_overview.build,
    "dashboards/pod-drain-detail.json": pod_drain_detail.build,
}
PROMETHEUS_RULE: Final = "deploy/kubernetes/prometheusrule.yaml"
DASHBOARDS_CONFIGMAP: Final = "deploy/kubernetes/grafana-dashboards.yaml"


@dataclass(frozen=True, slots=True)
class Output:
    """A generated file: ``path`` relative to the repository root, and its full text."""

    path: str
    text: str


def dashboard_text(data: dict[str, Any]) -> str:
    """Dashboard JSON as committed: two-space indent, keys in model order, final newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def generate(root: Path) -> list[Output]:
    """Every generated file; reads the rule file under ``root``."""
    outputs = [Output(path, dashboard_text(build())) for path, build in DASHBOARDS.items()]
    configmap_data = {Path(output.path).name: output.text for output in outputs}
    outputs.append(Output(DASHBOARDS_CONFIGMAP, dashboards_configmap(configmap_data)))
    rules = load_rules((root / RULES_SOURCE).read_text(encoding="utf-8"))
    outputs.append(Output(PROMETHEUS_RULE, prometheus_rule(rules)))
    return outputs


def stale(root: Path, outputs: Sequence[Output]) -> list[str]:
    """Paths whose committed text differs from the generated one (or that are missing)."""
    found = []
    for output in outputs:
        path = root / output.path
        if not path.is_file() or path.read_text(encoding="utf-8") != output.text:
            found.append(output.path)
    return found


def write(root: Path, outputs: Sequence[Output]) -> None:
    for output in outputs:
        path = root / output.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(output.text, encoding="utf-8")
