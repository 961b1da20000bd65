"""Generates what users import next to the agent: the Grafana dashboards in ``dashboards/``,
and, in ``deploy/kubernetes/``, the PrometheusRule (from ``alerts/drainwatch.rules.yaml``)
and the dashboards ConfigMap for Grafana's sidecar provisioning.

``python -m deploygen`` writes them; ``python -m deploygen --check`` exits 1 when a committed
file differs from what the code generates (the test suite runs the same comparison).
Dashboards are built with Grafana's own models (the ``grafana-foundation-sdk`` package), so
every field is one Grafana knows.
"""
