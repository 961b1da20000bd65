"""The fleet dashboard "drainwatch / Drain overview": how rollouts drain across namespaces
and services. It reads the fleet recording rules of ``alerts/drainwatch.rules.yaml``
(``namespace_service:...``) where an aggregation is shared with alerts, and raw metrics
elsewhere (docs/metrics.md)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from .dashboard_parts import (
    DATASOURCE,
    OVERVIEW_UID,
    POD_DETAIL_UID,
    TAGS,
    budget_thresholds,
    dashboard_link,
    datasource_variable,
    health_score_thresholds,
    label_variable,
    query,
    thresholds,
    to_json,
    zero_is_good,
)

SEL = 'namespace=~"$namespace", service=~"$service"'
# When each pod's latest shutdown began (a recording rule): one series per drained pod,
# whose value changes only if the target restarted and drained again in the same pod.
SHUTDOWNS = f"namespace_pod_service:drainwatch_shutdown_started_timestamp_seconds:min{{{SEL}}}"


def _after_close_per_minute(op: str) -> str:
    """The 10 channels with the highest after-close rate (peak of the range), per minute."""
    rate = f"namespace_service_channel:drainwatch_channel_{op}_after_close:rate2m{{{SEL}}}"
    return f"topk(10, max_over_time({rate}[$__range]) * 60)"


def _last() -> ReduceDataOptions:
    return ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _stat(title: str, description: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, instant=True))
        .reduce_options(_last())
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .height(4)
        .span(4)
    )


def _bars(title: str, description: str, expr: str, legend: str) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend, instant=True))
        .reduce_options(_last())
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .height(8)
        .span(12)
    )


def _fleet_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Fleet"))
        .with_panel(
            _stat(
                "Agents up",
                "drainwatch agents Prometheus scrapes now (recording rule "
                "namespace_service:drainwatch_agents:count).",
                'sum(namespace_service:drainwatch_agents:count{namespace=~"$namespace"})'
                " or vector(0)",
            )
            .unit("short")
            .thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            _stat(
                "Agents not scraped",
                "Scrape targets of a drainwatch job whose last scrape failed: their pods' "
                "drains are not seen (alert DrainwatchAgentDown).",
                'count(up{job=~".*drainwatch.*", namespace=~"$namespace"} == 0) or vector(0)',
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            _stat(
                "Pods draining now",
                "Pods whose target is between its termination signal and its exit "
                "(phase signalled, draining or stopping).",
                f"sum(namespace_service:drainwatch_pods_draining:sum{{{SEL}}}) or vector(0)",
            )
            .unit("short")
            .thresholds(thresholds((None, "blue")))
        )
        .with_panel(
            _stat(
                "Drains in range",
                "Shutdowns that began in the time range, every pod and service selected.",
                f"sum(changes({SHUTDOWNS}[$__range]) + 1) or vector(0)",
            )
            .unit("short")
            .thresholds(thresholds((None, "blue")))
        )
        .with_panel(
            _stat(
                "Violations in range",
                "Shutdowns that broke a rule, counted once per process and rule "
                "(drainwatch_shutdown_violations_total).",
                f"round(sum(increase(drainwatch_shutdown_violations_total{{{SEL}}}[$__range])))"
                " or vector(0)",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            _stat(
                "Requests cut at exit",
                "Requests still in flight or aborted by the shutdown when drained pods "
                "exited, summed over the pods that drained in the range.",
                "sum(max_over_time(namespace_pod_service:drainwatch_inflight_at_exit:sum"
                f"{{{SEL}}}[$__range])) or vector(0)",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
    )


def _drains_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Drains"))
        .with_panel(
            _bars(
                "Drains per service",
                "Shutdowns per deployment's service in the time range (one per drained pod).",
                f"sum by (namespace, service) (changes({SHUTDOWNS}[$__range]) + 1)",
                "{{namespace}}/{{service}}",
            )
            .unit("short")
            .thresholds(thresholds((None, "blue")))
        )
        .with_panel(
            _bars(
                "Drain duration against budget",
                "The slowest drain of each service in the range as a share of its budget "
                "(terminationGracePeriodSeconds minus preStop): orange from 80 %, red at "
                "100 %, where the kubelet kills the container.",
                "max_over_time(namespace_service:drainwatch_drain_budget_used:ratio_max"
                f"{{{SEL}}}[$__range])",
                "{{namespace}}/{{service}}",
            )
            .unit("percentunit")
            .min(0)
            .max(1.2)
            .thresholds(budget_thresholds())
        )
        .with_panel(
            timeseries.Panel()
            .title("Drain duration")
            .description(
                "The slowest current drain of each service (grows while a pod drains), and "
                "its budget as a dashed line."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"namespace_service:drainwatch_drain_duration_seconds:max{{{SEL}}}",
                    "{{service}} drain",
                )
            )
            .with_target(
                query(
                    f"max by (namespace, service) (drainwatch_drain_budget_seconds{{{SEL}}})",
                    "{{service}} budget",
                    ref="B",
                )
            )
            .override_by_query(
                "B",
                [models.DynamicConfigValue(id_val="custom.lineStyle", value=_DASHED)],
            )
            .unit("s")
            .min(0)
            .height(8)
            .span(12)
        )
        .with_panel(
            _bars(
                "Violations by rule",
                "Shutdowns that broke each rule in the range; each rule has a runbook in "
                "docs/runbooks/<rule>.md.",
                "sum by (rule) (increase(drainwatch_shutdown_violations_total"
                f"{{{SEL}}}[$__range]))",
                "{{rule}}",
            )
            .unit("short")
            .decimals(0)
            .thresholds(zero_is_good())
        )
        .with_panel(
            _bars(
                "In flight at exit",
                "Requests cut off when pods exited, per service, over the range.",
                "sum by (namespace, service) (max_over_time("
                f"namespace_pod_service:drainwatch_inflight_at_exit:sum{{{SEL}}}[$__range]))",
                "{{namespace}}/{{service}}",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            timeseries.Panel()
            .title("Traffic sent to draining pods")
            .description(
                "Requests accepted or refused after a pod's shutdown began: load balancers "
                "still routed to it (readiness failed too late, or no propagation wait)."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    "sum by (namespace, service, protocol) (rate("
                    f"drainwatch_requests_started_during_drain_total{{{SEL}}}[$__rate_interval]))",
                    "{{service}} {{protocol}}",
                )
            )
            .unit("reqps")
            .min(0)
            .height(8)
            .span(12)
        )
    )


_DASHED: Any = {"fill": "dash", "dash": [10, 10]}


def _channels_row(board: dash.Dashboard) -> dash.Dashboard:
    per_minute = "suffix:/min"
    return (
        board.with_row(dash.Row("Channels"))
        .with_panel(
            _bars(
                "Worst read-after-close",
                "Channels read most often after they were closed and emptied, per minute "
                "(peak of the range). Over 10 a minute is a consumer spinning on a closed "
                "channel (alert DrainwatchReadAfterCloseRate).",
                _after_close_per_minute("read"),
                "{{service}}/{{channel}}",
            )
            .unit(per_minute)
            .span(8)
            .thresholds(zero_is_good(10))
        )
        .with_panel(
            _bars(
                "Worst send-after-close",
                "Channels sent to most often after they were closed, per minute (peak of "
                "the range): each of those items was not delivered.",
                _after_close_per_minute("send"),
                "{{service}}/{{channel}}",
            )
            .unit(per_minute)
            .span(8)
            .thresholds(zero_is_good(10))
        )
        .with_panel(
            _bars(
                "Lowest channel health",
                "The 10 channels with the lowest health score now (0..100: blocked "
                "waiters, after-close use, residual items, double close; formula in "
                "docs/metrics.md).",
                "bottomk(10, min by (namespace, service, channel) "
                f"(drainwatch_channel_health_score{{{SEL}}}))",
                "{{service}}/{{channel}}",
            )
            .unit("none")
            .min(0)
            .max(100)
            .span(8)
            .thresholds(health_score_thresholds())
        )
    )


def _agents_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Alerts and agents"))
        .with_panel(
            table.Panel()
            .title("drainwatch alerts firing")
            .description(
                "Alerts of alerts/drainwatch.rules.yaml firing now; runbooks in "
                "docs/runbooks/<alertname>.md."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    'ALERTS{alertname=~"Drainwatch.*", alertstate="firing", '
                    'namespace=~"$namespace"}',
                    table=True,
                )
            )
            .with_transformation(
                models.DataTransformerConfig(
                    id_val="organize",
                    options={"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                )
            )
            .unit("short")
            .height(8)
            .span(12)
        )
        .with_panel(
            table.Panel()
            .title("Stack sampling unavailable")
            .description(
                "Agents that cannot run py-spy on their target, with the reason "
                "(drainwatch doctor prints the fix); everything else still works."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    "max by (namespace, pod, service, reason) "
                    f"(drainwatch_sampler_unavailable{{{SEL}}}) == 1",
                    table=True,
                )
            )
            .with_transformation(
                models.DataTransformerConfig(
                    id_val="organize",
                    options={"excludeByName": {"Time": True, "Value": True}},
                )
            )
            .unit("short")
            .height(8)
            .span(6)
        )
        .with_panel(
            timeseries.Panel()
            .title("SDK records dropped")
            .description(
                "Records the SDK in the services could not hand to their agent (no agent "
                "listening, or its socket full): those events are missing from the metrics."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    "sum by (namespace, service) (increase("
                    f"drainwatch_sdk_events_dropped_total{{{SEL}}}[$__rate_interval]))",
                    "{{namespace}}/{{service}}",
                )
            )
            .unit("short")
            .min(0)
            .height(8)
            .span(6)
        )
    )


def build() -> dict[str, Any]:
    """The dashboard as Grafana JSON."""
    board = (
        dash.Dashboard("drainwatch / Drain overview")
        .uid(OVERVIEW_UID)
        .description(
            "How services drain across the fleet: drains, duration against budget, "
            "violations by rule, requests cut at exit, channels used after close, agents."
        )
        .tags(TAGS)
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
        .with_variable(datasource_variable())
        .with_variable(
            label_variable(
                "namespace",
                "Namespace",
                "label_values(drainwatch_drain_phase, namespace)",
                multi=True,
                description="Kubernetes namespace (a Prometheus target label).",
            )
        )
        .with_variable(
            label_variable(
                "service",
                "Service",
                'label_values(drainwatch_drain_phase{namespace=~"$namespace"}, service)',
                multi=True,
                description="The service name the SDK or the agent reports.",
            )
        )
        .link(
            dashboard_link("Pod drain detail", POD_DETAIL_UID, "One pod's shutdown, step by step")
        )
    )
    for add_row in (_fleet_row, _drains_row, _channels_row, _agents_row):
        board = add_row(board)
    return to_json(board.build())


__all__ = ["build"]
