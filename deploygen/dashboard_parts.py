"""The parts both dashboards share: the datasource variable, template variables, queries,
thresholds, value mappings, and the last pass that numbers panels and normalizes the JSON.

Every panel reads the datasource chosen in the ``datasource`` variable (a datasource
template variable, not an import-time ``${DS_PROMETHEUS}`` input): Grafana resolves it the
same way whether the dashboard came through the import UI or through file/ConfigMap
provisioning, and file provisioning does not resolve import inputs at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE: Final = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS: Final = ["drainwatch", "shutdown", "kubernetes"]
OVERVIEW_UID: Final = "drainwatch-drain-overview"
POD_DETAIL_UID: Final = "drainwatch-pod-drain-detail"

# Green, orange, red: the thresholds every "lower is better" panel uses.
GREEN: Final = "green"
ORANGE: Final = "orange"
RED: Final = "red"
TRANSPARENT: Final = "transparent"


def datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes the drainwatch agents.")
        .type("prometheus")
    )


def label_variable(
    name: str, label: str, query: str, *, multi: bool, description: str
) -> dash.QueryVariable:
    """A variable of one label's values. "All" is the regex ``.*``, which also matches a
    missing label, so the dashboards work where Prometheus has no ``namespace``/``pod``."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(True)
        .all_value(".*")
    )


def query(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    table: bool = False,
) -> prometheus.Dataquery:
    """A PromQL target. ``table``: an instant query in table format (one row per series)."""
    target = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        target = target.legend_format(legend)
    if instant or table:
        target = target.instant()
    if table:
        target = target.format(PromQueryFormat.TABLE)
    return target


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (the base color)."""
    return (
        dash.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def zero_is_good(bad_from: float = 1) -> dash.ThresholdsConfig:
    return thresholds((None, GREEN), (bad_from, RED))


def health_score_thresholds() -> dash.ThresholdsConfig:
    """The channel health score (0..100, docs/metrics.md): red below 50, orange below 80."""
    return thresholds((None, RED), (50, ORANGE), (80, GREEN))


def budget_thresholds() -> dash.ThresholdsConfig:
    """Share of the drain budget used: orange from 80 %, red from 100 % (the kill)."""
    return thresholds((None, GREEN), (0.8, ORANGE), (1, RED))


def state_mapping(on: tuple[str, str], off: tuple[str, str]) -> list[models.ValueMapping]:
    """Value mapping for 0/1 gauges: 1 -> ``on`` (text, color), 0 -> ``off``."""
    return [
        models.ValueMap(
            options={
                "1": models.ValueMappingResult(text=on[0], color=on[1], index=0),
                "0": models.ValueMappingResult(text=off[0], color=off[1], index=1),
            }
        )
    ]


def merge_and_rename(names: dict[str, str], hide: Sequence[str] = ("Time",)) -> list[Any]:
    """Transformations for a table built from several instant queries: one row per label
    set, each query's value in a named column."""
    return [
        models.DataTransformerConfig(id_val="merge", options={}),
        models.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": dict.fromkeys(hide, True),
                "renameByName": names,
            },
        ),
    ]


def override(name: str, **properties: object) -> tuple[str, list[models.DynamicConfigValue]]:
    """An override by field name; keyword ``custom_x`` stands for the ``custom.x`` property."""
    values = [
        models.DynamicConfigValue(id_val=key.replace("custom_", "custom."), value=value)
        for key, value in properties.items()
    ]
    return name, values


def to_json(built: models.Dashboard) -> dict[str, Any]:
    """Number the panels (rows included) 1..N in layout order and return the dashboard as
    JSON data, normalized through Grafana's models: decoding it with
    ``Dashboard.from_json`` and encoding it again gives the same document, which is what
    the tests check of the committed files."""
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    data = _encode(built)
    plugins.register_default_plugins()
    normalized = _encode(models.Dashboard.from_json(data))
    lost = _missing(data, normalized)
    if lost:
        raise ValueError(f"Grafana's models dropped fields of the dashboard: {lost}")
    return normalized


def _encode(value: object) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(value, cls=JSONEncoder))
    return data


def _missing(original: object, normalized: object, path: str = "") -> list[str]:
    """Paths present in ``original`` but not in ``normalized`` (additions are defaults)."""
    if isinstance(original, dict) and isinstance(normalized, dict):
        lost = []
        for key, value in original.items():
            if key not in normalized:
                lost.append(f"{path}/{key}")
            else:
                lost += _missing(value, normalized[key], f"{path}/{key}")
        return lost
    if isinstance(original, list) and isinstance(normalized, list):
        if len(original) != len(normalized):
            return [f"{path}[{len(original)} items]"]
        return [
            item
            for index, (left, right) in enumerate(zip(original, normalized, strict=True))
            for item in _missing(left, right, f"{path}[{index}]")
        ]
    return [] if original == normalized else [f"{path}={original!r}"]


def dashboard_link(title: str, uid: str, tooltip: str) -> dash.DashboardLink:
    """A link to the other drainwatch dashboard that keeps the time range and variables."""
    return (
        dash.DashboardLink(title)
        .type(models.DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .tooltip(tooltip)
        .icon("dashboard")
        .include_vars(True)
        .keep_time(True)
    )
