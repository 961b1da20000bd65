"""The dashboard "drainwatch / Pod drain detail": one pod's shutdown. The waterfall of its
steps and listener closes (seconds after the first signal), its phases over time, requests
in flight by method, listeners and probes, the channel table with health scores, blocked
tasks and threads, and event-loop lag (docs/metrics.md names every series)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    TableSortByFieldState,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from .dashboard_parts import (
    DATASOURCE,
    GREEN,
    OVERVIEW_UID,
    POD_DETAIL_UID,
    RED,
    TAGS,
    TRANSPARENT,
    budget_thresholds,
    dashboard_link,
    datasource_variable,
    health_score_thresholds,
    label_variable,
    merge_and_rename,
    override,
    query,
    state_mapping,
    thresholds,
    to_json,
    zero_is_good,
)

SEL = 'namespace=~"$namespace", pod=~"$pod", service=~"$service"'
# Time zero of the waterfall: the first termination signal, or for a target seen only from
# outside (no signal visible) its first shutdown step.
ORIGIN = (
    f"scalar(min(drainwatch_shutdown_signal_timestamp_seconds{{{SEL}}}"
    f" or drainwatch_shutdown_step_started_timestamp_seconds{{{SEL}}}))"
)
STEP_STARTED = f"max by (step) (drainwatch_shutdown_step_started_timestamp_seconds{{{SEL}}})"
STEP_FINISHED = f"max by (step) (drainwatch_shutdown_step_finished_timestamp_seconds{{{SEL}}})"
GAUGE_CELL: Any = {"type": "gauge", "mode": "basic"}
COLOR_CELL: Any = {"type": "color-background", "mode": "basic"}


def _stat(title: str, description: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, instant=True))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .height(4)
        .span(4)
    )


def _table(title: str, description: str, width: int, height: int = 8) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(height)
        .span(width)
    )


def _lanes(title: str, description: str, expr: str, legend: str) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .fill_opacity(80)
        .unit("none")
        .height(8)
        .span(12)
    )


def _summary_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Shutdown"))
        .with_panel(
            _stat(
                "Drain duration",
                "From the first termination signal to in flight reaching zero (or the "
                "exit) of the latest shutdown; grows while it drains.",
                f"max(drainwatch_drain_duration_seconds{{{SEL}}})",
            )
            .unit("s")
            .decimals(2)
            .thresholds(thresholds((None, "blue")))
        )
        .with_panel(
            _stat(
                "Budget used",
                "Drain duration as a share of the grace budget (terminationGracePeriodSeconds "
                "minus preStop); at 100 % the kubelet kills the container.",
                f"max(drainwatch_drain_duration_seconds{{{SEL}}}"
                f" / drainwatch_drain_budget_seconds{{{SEL}}})",
            )
            .unit("percentunit")
            .thresholds(budget_thresholds())
        )
        .with_panel(
            _stat(
                "In flight at exit",
                "Requests still active or aborted by the shutdown when the latest process "
                "exited or was killed.",
                f"sum(drainwatch_inflight_at_exit{{{SEL}}})",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            _stat(
                "Violations",
                "Shutdowns of this pod that broke a rule, counted once per process and "
                "rule; `drainwatch report` explains each.",
                f"sum(drainwatch_shutdown_violations_total{{{SEL}}})",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            _stat(
                "Requests started during drain",
                "Requests accepted, or refused as draining, after the shutdown began: "
                "traffic still routed to the pod.",
                f"sum(drainwatch_requests_started_during_drain_total{{{SEL}}})",
            )
            .unit("short")
            .thresholds(zero_is_good())
        )
        .with_panel(
            _stat(
                "Target",
                "Whether a process of the target is alive now.",
                f"max(drainwatch_target_up{{{SEL}}})",
            )
            .unit("none")
            .mappings(state_mapping(("running", GREEN), ("exited", "blue")))
            .thresholds(thresholds((None, "blue")))
        )
    )


def _waterfall_row(board: dash.Dashboard) -> dash.Dashboard:
    step_table = (
        _table(
            "Shutdown waterfall",
            "Each step of the latest shutdown: when it began and ended, in seconds after "
            "the first signal, and how long it took. A step without an end never finished "
            "(exited_before_stop_completed).",
            12,
            10,
        )
        .with_target(query(f"{STEP_STARTED} - {ORIGIN}", table=True))
        .with_target(query(f"{STEP_FINISHED} - {ORIGIN}", table=True, ref="B"))
        .with_target(query(f"{STEP_FINISHED} - {STEP_STARTED}", table=True, ref="C"))
        .transformations(
            merge_and_rename({"Value #A": "starts at", "Value #B": "ends at", "Value #C": "took"})
        )
        .sort_by([TableSortByFieldState().display_name("starts at")])
        .unit("s")
        .decimals(3)
        .override_by_name(*override("took", custom_cellOptions=GAUGE_CELL))
        .thresholds(thresholds((None, "blue")))
    )
    listener_closes = (
        _table(
            "Listener closes",
            "When each port stopped listening, in seconds after the first signal. Health "
            "ports must close after every business port.",
            6,
            10,
        )
        .with_target(
            query(
                "max by (port, role) "
                f"(drainwatch_listener_closed_timestamp_seconds{{{SEL}}}) - {ORIGIN}",
                table=True,
            )
        )
        .transformations(merge_and_rename({"Value": "closed at"}))
        .sort_by([TableSortByFieldState().display_name("closed at")])
        .unit("s")
        .decimals(3)
    )
    phases = (
        _lanes(
            "Drain phase",
            "The phase of the newest process over time: running, signalled, draining "
            "(readiness off, listeners stopping, requests finishing), stopping, stopped.",
            f"max by (phase) (drainwatch_drain_phase{{{SEL}}})",
            "{{phase}}",
        )
        .mappings(state_mapping(("active", "blue"), ("", TRANSPARENT)))
        .span(6)
        .height(10)
    )
    return (
        board.with_row(dash.Row("Waterfall"))
        .with_panel(step_table)
        .with_panel(listener_closes)
        .with_panel(phases)
    )


def _traffic_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Requests, listeners and probes"))
        .with_panel(
            timeseries.Panel()
            .title("In flight by method")
            .description("Requests being handled now, per protocol and method.")
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"sum by (protocol, method) (drainwatch_inflight_requests{{{SEL}}})",
                    "{{protocol}} {{method}}",
                )
            )
            .unit("short")
            .min(0)
            .height(8)
            .span(12)
        )
        .with_panel(
            timeseries.Panel()
            .title("Finished requests by outcome")
            .description(
                "Requests finished per second by outcome; aborted_at_shutdown and "
                "rejected_draining are the drain's casualties."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    "sum by (outcome) "
                    f"(rate(drainwatch_requests_total{{{SEL}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            )
            .override_by_name(
                *override("aborted_at_shutdown", color={"mode": "fixed", "fixedColor": RED})
            )
            .unit("reqps")
            .min(0)
            .height(8)
            .span(12)
        )
        .with_panel(
            _lanes(
                "Listeners",
                "Each listening port of the target over time: up, or closed.",
                f"max by (port, role) (drainwatch_listener_up{{{SEL}}})",
                "{{role}} :{{port}}",
            ).mappings(state_mapping(("listening", GREEN), ("closed", "blue")))
        )
        .with_panel(
            _lanes(
                "Probes",
                "The agent's own liveness/readiness probes of the target, as the kubelet "
                "sees them: a liveness failure during the drain gets the container killed.",
                f"max by (probe) (drainwatch_probe_success{{{SEL}}})",
                "{{probe}}",
            ).mappings(state_mapping(("ok", GREEN), ("failing", RED)))
        )
        .with_panel(
            timeseries.Panel()
            .title("Request duration p99 by method")
            .description("99th percentile of request handling time per method.")
            .datasource(DATASOURCE)
            .with_target(
                query(
                    "histogram_quantile(0.99, sum by (le, method) (rate("
                    f"drainwatch_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "{{method}}",
                )
            )
            .unit("s")
            .min(0)
            .height(8)
            .span(12)
        )
        .with_panel(
            timeseries.Panel()
            .title("TCP connections")
            .description("The target's TCP connections per local port and state.")
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"sum by (port, state) (drainwatch_tcp_connections{{{SEL}}})",
                    ":{{port}} {{state}}",
                )
            )
            .unit("short")
            .min(0)
            .height(8)
            .span(12)
        )
    )


_CHANNEL_COLUMNS = (
    ("health score", "drainwatch_channel_health_score", "min"),
    ("depth", "drainwatch_channel_depth", "sum"),
    ("capacity", "drainwatch_channel_capacity", "sum"),
    ("residual at close", "drainwatch_channel_residual_items_at_close", "sum"),
    ("read after close", "drainwatch_channel_read_after_close_total", "sum"),
    ("send after close", "drainwatch_channel_send_after_close_total", "sum"),
    ("blocked waiters", "drainwatch_channel_blocked_waiters", "sum"),
    ("oldest wait", "drainwatch_channel_oldest_wait_seconds", "max"),
)


def _channels_row(board: dash.Dashboard) -> dash.Dashboard:
    channels = _table(
        "Channels",
        "Every channel of the pod now: health score (0..100, formula in docs/metrics.md), "
        "items buffered, items left at close, after-close use, blocked waiters and the "
        "longest current wait.",
        24,
        9,
    )
    names: dict[str, str] = {}
    for index, (column, metric, aggregation) in enumerate(_CHANNEL_COLUMNS):
        ref = chr(ord("A") + index)
        channels = channels.with_target(
            query(f"{aggregation} by (channel) ({metric}{{{SEL}}})", table=True, ref=ref)
        )
        names[f"Value #{ref}"] = column
    channels = (
        channels.transformations(merge_and_rename(names))
        .sort_by([TableSortByFieldState().display_name("health score")])
        .override_by_name(
            *override(
                "health score",
                custom_cellOptions=COLOR_CELL,
                thresholds=health_score_thresholds().build(),
                min=0,
                max=100,
            )
        )
        .override_by_name(*override("oldest wait", unit="s"))
        .unit("short")
        .thresholds(thresholds((None, "text")))
    )
    return board.with_row(dash.Row("Channels")).with_panel(channels)


def _runtime_row(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Tasks, threads and event loop"))
        .with_panel(
            timeseries.Panel()
            .title("Blocked tasks")
            .description("asyncio tasks waiting now, by what they wait on (SDK task tracker).")
            .datasource(DATASOURCE)
            .with_target(
                query(f"sum by (reason) (drainwatch_tasks_blocked{{{SEL}}})", "{{reason}}")
            )
            .unit("short")
            .min(0)
            .height(8)
            .span(8)
        )
        .with_panel(
            _table(
                "Longest task waits",
                "The tasks waiting longest now and on what: during a drain, what keeps it "
                "from ending.",
                8,
            )
            .with_target(
                query(
                    f"topk(20, max by (task, reason) (drainwatch_task_blocked_seconds{{{SEL}}}))",
                    table=True,
                )
            )
            .transformations(merge_and_rename({"Value": "waiting for"}))
            .sort_by([TableSortByFieldState().display_name("waiting for").desc(True)])
            .unit("s")
            .thresholds(thresholds((None, GREEN), (10, "orange"), (60, RED)))
        )
        .with_panel(
            timeseries.Panel()
            .title("Event loop lag")
            .description(
                "Scheduling delay of the event loop: the worst of the last window, and the "
                "p99 from the histogram. Over 0.5 s, sync code is blocking the loop."
            )
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"max(drainwatch_event_loop_lag_max_seconds{{{SEL}}})",
                    "worst in window",
                )
            )
            .with_target(
                query(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f"drainwatch_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p99",
                    ref="B",
                )
            )
            .thresholds_style(
                GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
            )
            .thresholds(thresholds((None, GREEN), (0.5, RED)))
            .unit("s")
            .min(0)
            .height(8)
            .span(8)
        )
        .with_panel(
            _table(
                "Blocked threads",
                "Threads waiting in one place, and for how long: as the SDK sees them "
                "(sys._current_frames) and as py-spy sees them from outside.",
                24,
            )
            .with_target(
                query(
                    "max by (thread, reason) "
                    f'(drainwatch_thread_blocked_seconds{{{SEL}, source="sdk"}})',
                    table=True,
                )
            )
            .with_target(
                query(
                    "max by (thread, reason) "
                    f'(drainwatch_thread_blocked_seconds{{{SEL}, source="pyspy"}})',
                    table=True,
                    ref="B",
                )
            )
            .transformations(merge_and_rename({"Value #A": "SDK", "Value #B": "py-spy"}))
            .unit("s")
        )
    )


def build() -> dict[str, Any]:
    """The dashboard as Grafana JSON."""
    board = (
        dash.Dashboard("drainwatch / Pod drain detail")
        .uid(POD_DETAIL_UID)
        .description(
            "One pod's shutdown: the waterfall of its steps, in flight by method, "
            "listeners and probes, channels with health scores, blocked tasks and threads, "
            "event-loop lag."
        )
        .tags(TAGS)
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .time("now-30m", "now")
        .refresh("30s")
        .with_variable(datasource_variable())
        .with_variable(
            label_variable(
                "namespace",
                "Namespace",
                "label_values(drainwatch_drain_phase, namespace)",
                multi=False,
                description="Kubernetes namespace (a Prometheus target label).",
            )
        )
        .with_variable(
            label_variable(
                "service",
                "Service",
                'label_values(drainwatch_drain_phase{namespace=~"$namespace"}, service)',
                multi=False,
                description="The service name the SDK or the agent reports.",
            )
        )
        .with_variable(
            label_variable(
                "pod",
                "Pod",
                'label_values(drainwatch_drain_phase{namespace=~"$namespace", '
                'service=~"$service"}, pod)',
                multi=False,
                description="The pod whose agent reports (a Prometheus target label).",
            ).include_all(False)
        )
        .link(dashboard_link("Drain overview", OVERVIEW_UID, "The fleet's drains"))
    )
    for add_row in (
        _summary_row,
        _waterfall_row,
        _traffic_row,
        _channels_row,
        _runtime_row,
    ):
        board = add_row(board)
    return to_json(board.build())


__all__ = ["build"]
