"""Agent configuration: precedence, defaults and the messages users see."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from drainwatch._endpoint import Endpoint
from drainwatch.agent.cli import build_parser, load_config
from drainwatch.agent.config import AgentConfig, ConfigError, Limits, ListenAddress, build_config
from drainwatch.agent.config_layers import environment_layer, file_layer


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["agent", *argv])


def test_no_config_at_all_gives_loopback_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flags, environment or file the agent runs on safe defaults."""
    for name in (
        "DRAINWATCH_AGENT_LISTEN",
        "DRAINWATCH_AGENT_INGEST",
        "DRAINWATCH_SERVICE",
        "DRAINWATCH_AGENT_CONFIG",
        "DRAINWATCH_AGENT_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    config = load_config(_args())
    assert config == AgentConfig()
    assert config.listen == ListenAddress("127.0.0.1", 9469)
    assert config.ingest == (Endpoint("unix", path="/tmp/drainwatch/ingest.sock"),)
    assert config.limits == Limits()


def test_flags_beat_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Precedence is flags > environment > file > defaults, key by key."""
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        "listen: 127.0.0.1:1001\n"
        "service: from-file\n"
        "log_level: debug\n"
        "retention_seconds: 60\n"
        "limits:\n  max_services: 7\n"
    )
    monkeypatch.setenv("DRAINWATCH_AGENT_CONFIG", str(config_file))
    monkeypatch.setenv("DRAINWATCH_AGENT_LISTEN", "127.0.0.1:1002")
    monkeypatch.setenv("DRAINWATCH_SERVICE", "from-env")
    config = load_config(_args("--listen", "0.0.0.0:1003"))
    assert config.listen == ListenAddress("0.0.0.0", 1003)  # flag
    assert config.service == "from-env"  # environment over file
    assert config.log_level == "debug"  # file over default
    assert config.retention_seconds == 60.0
    assert config.limits.max_services == 7
    assert config.limits.max_label_length == Limits().max_label_length


def test_repeated_ingest_flags_and_comma_separated_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--ingest repeats; DRAINWATCH_AGENT_INGEST takes a comma-separated list."""
    config = load_config(_args("--ingest", "unix:///tmp/a.sock", "--ingest", "udp://[::1]:9470"))
    assert [str(endpoint) for endpoint in config.ingest] == [
        "unix:///tmp/a.sock",
        "udp://[::1]:9470",
    ]
    layer = environment_layer({"DRAINWATCH_AGENT_INGEST": "unix:///tmp/b.sock, udp://127.0.0.1:1"})
    assert layer["ingest"][0] == ["unix:///tmp/b.sock", "udp://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "127.0.0.1"], "flag --listen must be HOST:PORT with a port from 0 to 65535"),
        (["--listen", "example.com:80"], "flag --listen must be a literal IP address"),
        (["--ingest", "udp://192.168.1.2:9470"], "must be a loopback address"),
        (["--ingest", "unix://relative.sock"], "must be an absolute Unix socket path"),
        (["--ingest", "unix:///" + "x" * 200], "socket path must be at most 107 bytes"),
        (["--ingest", "unix:///tmp/a", "--ingest", "unix:///tmp/a"], "a list without duplicates"),
        (["--retention-seconds", "0"], "flag --retention-seconds must be a number of seconds"),
        (["--retention-seconds", "nan"], "flag --retention-seconds must be a number of seconds"),
        (["--service", " "], "flag --service must be a non-empty name"),
    ],
)
def test_bad_flags_name_the_flag_the_rule_and_the_value(argv: list[str], message: str) -> None:
    """Each invalid flag value is refused with a message naming the flag and the rule."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_args(*argv))


def test_yaml_anchors_cannot_expand_into_a_bomb(tmp_path: Path) -> None:
    """A billion-laughs style value is built once per node and refused quickly."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r'bomb.yaml:1: unknown key "a0"'):
        file_layer(str(path))
    bomb_in_a_known_key = "\n".join(
        line.replace(f"a{len(lines) - 1}:", "ingest:") for line in lines
    ).replace("a0:", "service:")
    path.write_text(bomb_in_a_known_key + "\n")
    with pytest.raises(ConfigError, match=r'bomb.yaml:2: unknown key "a1"'):
        file_layer(str(path))
    path.write_text("ingest: &i [unix:///tmp/a.sock]\nservice: *i\n")
    with pytest.raises(ConfigError, match=r'bomb.yaml:2: "service" must be a non-empty name'):
        build_config([file_layer(str(path))])


def test_empty_file_and_empty_limits_mean_defaults(tmp_path: Path) -> None:
    """An empty config file, or an empty ``limits:``, changes nothing."""
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert file_layer(str(path)) == {}
    path.write_text("limits:\n")
    assert file_layer(str(path)) == {}


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """Binary garbage as a config file gives a clear error, not a traceback."""
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"listen: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        file_layer(str(path))


def test_drain_budget_comes_from_flag_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """drain_budget_seconds defaults to 30 and follows flags > environment > file."""
    monkeypatch.delenv("DRAINWATCH_AGENT_CONFIG", raising=False)
    monkeypatch.delenv("DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS", raising=False)
    assert load_config(_args()).drain_budget_seconds == 30.0
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("drain_budget_seconds: 40\n")
    monkeypatch.setenv("DRAINWATCH_AGENT_CONFIG", str(config_file))
    assert load_config(_args()).drain_budget_seconds == 40.0
    monkeypatch.setenv("DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS", "25.5")
    assert load_config(_args()).drain_budget_seconds == 25.5
    assert load_config(_args("--drain-budget", "10")).drain_budget_seconds == 10.0


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            {"DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS": "soon"},
            r'environment variable DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS \("drain_budget_seconds"\)'
            r' must be a number of seconds from 0.1 to 86400: "soon"; set it to '
            r"terminationGracePeriodSeconds minus",
        ),
        (
            {"DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS": "0"},
            "must be a number of seconds from 0.1 to 86400",
        ),
    ],
)
def test_bad_drain_budget_names_source_setting_rule_and_value(
    layer: dict[str, str], message: str
) -> None:
    """A budget that is not a positive number of seconds is refused with the fix."""
    with pytest.raises(ConfigError, match=message):
        build_config([environment_layer(layer)])


def test_bad_drain_budget_in_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    """In a YAML file the error points at file:line and the key."""
    path = tmp_path / "agent.yaml"
    path.write_text("service: checkout\ndrain_budget_seconds: -5\n")
    with pytest.raises(
        ConfigError,
        match=r'agent.yaml:2: "drain_budget_seconds" must be a number of seconds from 0.1',
    ):
        build_config([file_layer(str(path))])
    with pytest.raises(ConfigError, match=r"flag --drain-budget must be a number of seconds"):
        load_config(_args("--drain-budget", "1e9"))
