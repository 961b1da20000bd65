"""The Grafana dashboards load as JSON, are what deploygen generates, survive Grafana's own
models unchanged, and have what an import needs: stable uids, a recent schemaVersion, the
datasource as a variable, namespace/service/pod variables, descriptions, units, thresholds.

No Grafana server runs here (no Grafana package in Debian or PyPI): the dashboards are
checked against Grafana's models from the grafana-foundation-sdk package instead, and their
queries against a real Prometheus (tests/e2e/test_alerts_with_prometheus.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models import dashboard as models

from deploygen.dashboard_parts import OVERVIEW_UID, POD_DETAIL_UID
from deploygen.outputs import DASHBOARDS, dashboard_text
from tests.deploy.promql import ROOT, interpolate, selectors

PATHS = {Path(name).name: ROOT / name for name in DASHBOARDS}
UIDS = {"drain-overview.json": OVERVIEW_UID, "pod-drain-detail.json": POD_DETAIL_UID}
# Grafana 11.x writes schemaVersion 39 to 41; older dashboards are migrated on load.
RECENT_SCHEMA = 39
GRID_COLUMNS = 24


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PATHS[name].read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_each_dashboard_is_what_deploygen_generates() -> None:
    """The committed JSON equals the generator's output (python -m deploygen to update)."""
    for name, build in DASHBOARDS.items():
        assert (ROOT / name).read_text() == dashboard_text(build()), name


@pytest.mark.parametrize("name", sorted(PATHS))
def test_grafanas_models_read_and_write_the_dashboard_unchanged(name: str) -> None:
    """Decoding with Grafana's Dashboard model and encoding again changes nothing: no field
    Grafana does not know (it would be dropped), none of the wrong shape."""
    _check_kept(load(name))


def _encode(value: object) -> object:
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    raise TypeError(type(value))


def test_an_unknown_field_is_caught_by_the_model_check() -> None:
    """The model check can fail: a misspelt panel field does not survive the models."""
    board = load("drain-overview.json")
    panels(board)[0]["descripton"] = "typo"
    with pytest.raises(ValueError, match="dropped fields"):
        _check_kept(board)


def _check_kept(board: dict[str, Any]) -> None:
    plugins.register_default_plugins()
    again = json.loads(json.dumps(models.Dashboard.from_json(board).to_json(), default=_encode))
    if again != board:
        raise ValueError("Grafana's models dropped fields of the dashboard")


@pytest.mark.parametrize("name", sorted(PATHS))
def test_the_dashboard_has_a_stable_uid_tags_and_a_recent_schema(name: str) -> None:
    """Imports update the same dashboard (fixed uid), and Grafana does not migrate it."""
    board = load(name)
    assert board["uid"] == UIDS[name]
    assert board["schemaVersion"] >= RECENT_SCHEMA
    assert "drainwatch" in board["tags"]
    assert board["title"].startswith("drainwatch / ")
    assert board["description"]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_panel_reads_the_datasource_variable(name: str) -> None:
    """The datasource is a variable of type prometheus, and every panel and target uses
    it: the same file imports through the UI and through provisioning."""
    board = load(name)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(board):
        assert panel["datasource"] == reference, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
    assert "DS_PROMETHEUS" not in PATHS[name].read_text()


# Selected without a service matcher: series that carry no service label (Prometheus' own,
# and the agents count, whose service is the agent's configured name).
NO_SERVICE_LABEL = {"up", "ALERTS", "namespace_service:drainwatch_agents:count"}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_query_filters_by_the_dashboard_variables(name: str) -> None:
    """namespace and service variables exist and every selector of every panel uses them
    (the pod detail dashboard also selects one pod)."""
    board = load(name)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    wanted = {"namespace", "service"} | ({"pod"} if name == "pod-drain-detail.json" else set())
    for variable_name in wanted:
        assert variables[variable_name]["type"] == "query"
        assert variables[variable_name]["datasource"]["uid"] == "${datasource}"
    for panel in panels(board):
        for target in panel["targets"]:
            # Grafana's interval variables replaced, the label variables kept as written
            kept = {variable: f"${variable}" for variable in variables}
            for selector in selectors(interpolate(target["expr"], kept)):
                needed = wanted - {"service"} if selector.metric in NO_SERVICE_LABEL else wanted
                used = {
                    value.removeprefix("$")
                    for label, op, value in selector.matchers
                    if op == "=~" and value == f"${label}"
                }
                assert needed <= used, (panel["title"], selector)
    if name == "pod-drain-detail.json":
        assert variables["pod"]["multi"] is False
        assert variables["pod"]["includeAll"] is False


@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_panel_has_a_title_a_description_and_a_unit(name: str) -> None:
    """Panels say what they show and their values carry units; state panels map 0/1 to
    named states."""
    for panel in panels(load(name)):
        assert panel["title"] and panel["description"], panel
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        if panel["type"] == "statetimeline":
            assert defaults["mappings"], panel["title"]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_stats_and_bars_have_thresholds(name: str) -> None:
    """Stat and bar gauge panels color their values with explicit thresholds."""
    for panel in panels(load(name)):
        if panel["type"] in {"stat", "bargauge"}:
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps and steps[0]["value"] is None, panel["title"]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_panels_have_unique_ids_and_fit_the_grid_without_overlap(name: str) -> None:
    """Ids are unique and every panel lies within the 24 columns, none on top of another."""
    board = load(name)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_the_dashboards_link_to_each_other() -> None:
    """The overview links to the pod detail and back, keeping time range and variables."""
    overview, detail = load("drain-overview.json"), load("pod-drain-detail.json")
    assert overview["links"][0]["url"] == f"/d/{POD_DETAIL_UID}"
    assert detail["links"][0]["url"] == f"/d/{OVERVIEW_UID}"
    for link in (overview["links"][0], detail["links"][0]):
        assert link["includeVars"] and link["keepTime"]


def test_the_runbooks_name_only_panels_that_exist() -> None:
    """Panel titles quoted in the alert runbooks' dashboard hints are real panel titles."""
    titles = {panel["title"] for name in PATHS for panel in load(name)["panels"]}
    boards = {"Pod drain detail", "Drain overview"}
    quoted: set[str] = set()
    for runbook in (ROOT / "docs" / "runbooks").glob("Drainwatch*.md"):
        for item in runbook.read_text().split("\n- "):
            if "dashboard" in item:
                quoted |= set(item.split('"')[1::2]) - boards
    assert len(quoted) >= 10, "the check found (almost) nothing to check"
    assert quoted <= titles, quoted - titles
