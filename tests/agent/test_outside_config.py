"""Settings of the outside view: YAML sections, flags, environment, and their error messages."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from drainwatch.agent.cli import build_parser, load_config
from drainwatch.agent.config import AgentConfig, ConfigError
from drainwatch.agent.outside_config import OutsideConfig


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["agent", *argv])


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


def _error(*argv: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_args(*argv))
    return str(caught.value)


def test_defaults_watch_sdk_processes_with_pyspy_and_no_probes() -> None:
    config = AgentConfig().outside
    assert config == OutsideConfig()
    assert config.target.from_sdk and config.target.pid is None
    assert config.sampling.interval_seconds == 0.05
    assert config.pyspy.enabled and not config.pyspy.blocking and not config.pyspy.locals
    assert config.pyspy.interval_seconds == 5.0 and config.pyspy.last_words_at == 0.5
    assert config.probes.http == () and config.state.dir is None


def test_every_section_from_yaml(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "target:\n  cmdline: 'gunicorn .*orders:app'\n  from_sdk: false\n"
        "  exit_wait_seconds: 45\n"
        "ports:\n  health: [8081]\n  metrics: [9090]\n"
        "sampling:\n  interval_seconds: 0.1\n  draining_interval_seconds: 0.02\n"
        "pyspy:\n  enabled: true\n  interval_seconds: 2\n  max_per_minute: 30\n"
        "  locals: true\n  last_words_at: 0.8\n"
        "probes:\n  http:\n    liveness: http://127.0.0.1:8081/healthz\n"
        "  grpc: [grpc_health=127.0.0.1:50051/payments.Payments]\n  interval_seconds: 1\n"
        f"state:\n  dir: {tmp_path}\n  history: 5\n  final_metrics_seconds: 10\n"
        "pushgateway:\n  url: http://pushgateway.monitoring:9091\n  job: shutdowns\n",
    )
    config = load_config(_args("--config", path)).outside
    assert config.target.cmdline == re.compile("gunicorn .*orders:app")
    assert not config.target.from_sdk and config.target.exit_wait_seconds == 45
    assert config.ports.health == {8081} and config.ports.metrics == {9090}
    assert config.sampling.interval_seconds == 0.1
    assert config.pyspy.interval_seconds == 2 and config.pyspy.max_per_minute == 30
    assert config.pyspy.locals and config.pyspy.last_words_at == 0.8
    assert [spec.name for spec in config.probes.http] == ["liveness"]
    assert config.probes.grpc[0].service == "payments.Payments"
    assert config.probes.targets == ("http://127.0.0.1:8081/healthz", "127.0.0.1:50051")
    assert config.state.dir == str(tmp_path) and config.state.history == 5
    assert config.pushgateway.url is not None and config.pushgateway.job == "shutdowns"


def test_flags_beat_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, "pyspy:\n  interval_seconds: 9\n  enabled: true\n")
    monkeypatch.setenv("DRAINWATCH_AGENT_PYSPY", "false")
    monkeypatch.setenv("DRAINWATCH_AGENT_PROBE_HTTP", "a=http://h:1/x,b=http://h:2/y")
    monkeypatch.setenv("DRAINWATCH_AGENT_TARGET_PID", "4242")
    config = load_config(
        _args("--config", path, "--pyspy-interval", "3", "--probe-http", "c=http://h:3/z")
    ).outside
    assert config.pyspy.interval_seconds == 3  # flag over file
    assert not config.pyspy.enabled  # environment over file
    assert [spec.name for spec in config.probes.http] == ["c"]  # a repeated flag wins whole
    assert config.target.pid == 4242
    monkeypatch.delenv("DRAINWATCH_AGENT_PROBE_HTTP")
    assert (
        len(
            load_config(
                _args("--probe-http", "a=http://h:1/", "--probe-http", "b=http://h:2/")
            ).outside.probes.http
        )
        == 2
    )


def test_switches_have_a_no_form() -> None:
    config = load_config(_args("--no-pyspy", "--no-target-from-sdk", "--pyspy-blocking")).outside
    assert not config.pyspy.enabled and not config.target.from_sdk and config.pyspy.blocking


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--target-pid", "0"], "flag --target-pid must be a process id from 1 to"),
        (["--target-pid", "-5"], "flag --target-pid must be a process id"),
        (["--target-pid", "9" * 40], "flag --target-pid must be a process id"),
        (["--target-cmdline", "(unclosed"], "flag --target-cmdline must be a valid regular"),
        (["--health-ports", "8081,http"], "flag --health-ports must be a list of TCP ports"),
        (["--health-ports", "70000"], "flag --health-ports must be a list of TCP ports"),
        (["--sample-interval", "0"], "flag --sample-interval must be a number of seconds"),
        (["--sample-interval", "nan"], "flag --sample-interval must be a number of seconds"),
        (["--pyspy-interval", "1e400"], "flag --pyspy-interval must be a number of seconds"),
        (["--pyspy-max-per-minute", "100000"], "flag --pyspy-max-per-minute must be a whole"),
        (["--last-words-at", "2"], "flag --last-words-at must be a number"),
        (["--probe-http", "liveness"], "flag --probe-http must be NAME=URL"),
        (["--probe-http", "x=ftp://h/"], "with an http:// or https:// URL"),
        (["--probe-grpc", "g=host"], "flag --probe-grpc must be"),
        (["--probe-http", "a=http://h:1/", "--probe-grpc", "a=h:2"], "probe names must be unique"),
        (["--probe-interval", "1", "--probe-fast-interval", "5"], "must be at most probes.inter"),
        (["--state-history", "0"], "flag --state-history must be a whole number from 1"),
        (["--pushgateway", "ftp://pgw"], "flag --pushgateway must be"),
        (["--pushgateway-job", "a b"], "flag --pushgateway-job must be"),
    ],
)
def test_bad_flags_name_the_flag_the_rule_and_the_value(argv: list[str], expected: str) -> None:
    assert expected in _error(*argv)


def test_oversized_and_hostile_values_are_refused_whole() -> None:
    huge = "a=http://h/" + "x" * 5000
    assert "at most 2048 characters" in _error("--probe-http", huge)
    assert "without spaces or control characters" in _error("--probe-http", "a=http://h/\x1b[2J")
    many = [arg for index in range(40) for arg in ("--probe-http", f"p{index}=http://h:1/")]
    assert "a list of at most 32 probes" in _error(*many)
    assert "a directory path" in _error("--state-dir", "/tmp/a\0b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pyspy:\n  intervl: 3\n", 'unknown key "pyspy.intervl"; did you mean "interval_seconds"'),
        ("probes: 3\n", '"probes" must be a mapping of its settings'),
        ("target:\n  pid: [1, 2]\n", '"target.pid" must be a process id'),
        ("pyspy:\n  enabled: maybe\n", '"pyspy.enabled" must be true or false'),
        ("probes:\n  http: {liveness: 'gopher://h/'}\n", "an http:// or https:// URL"),
        ("ports:\n  health: 8081\n", '"ports.health" must be a list of ports'),
        ("state:\n  history: 1.5\n", '"state.history" must be a whole number'),
        ("sampling:\n  interval_seconds: 0.01\n  draining_interval_seconds: 0.5\n", "at most"),
    ],
)
def test_bad_yaml_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _file(tmp_path, text)
    message = _error("--config", path)
    assert expected in message
    if "must be at most" not in message:
        assert f"{path}:" in message


def test_an_unusable_state_dir_stops_the_agent_with_the_fix(tmp_path: Path) -> None:
    """A state dir that is a file is refused before anything listens (exit code 2)."""
    from drainwatch.agent.cli import main

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code = main(["agent", "--listen", "127.0.0.1:0", "--state-dir", str(not_a_dir)])
    assert code == 2
