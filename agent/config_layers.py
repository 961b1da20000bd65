"""Raw configuration layers: the YAML file and the environment, each value with its source.

The YAML file is read with PyYAML's safe composer so every key keeps its line number:
``/etc/drainwatch/agent.yaml:7: "limits.max_services" must be ...`` rather than a bare
traceback. Anchors are allowed but cannot blow up: values are built once per node.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

import yaml

from .config import KNOWN_KEYS, ConfigError, Source

MAX_CONFIG_BYTES = 1 << 20

Layer = dict[str, tuple[object, Source]]

ENVIRONMENT_KEYS: dict[str, str] = {
    "DRAINWATCH_AGENT_LISTEN": "listen",
    "DRAINWATCH_AGENT_INGEST": "ingest",
    "DRAINWATCH_SERVICE": "service",
    "DRAINWATCH_AGENT_LOG_LEVEL": "log_level",
    "DRAINWATCH_AGENT_RETENTION_SECONDS": "retention_seconds",
    "DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS": "drain_budget_seconds",
    "DRAINWATCH_AGENT_TARGET_PID": "target.pid",
    "DRAINWATCH_AGENT_TARGET_CMDLINE": "target.cmdline",
    "DRAINWATCH_AGENT_HEALTH_PORTS": "ports.health",
    "DRAINWATCH_AGENT_PROBE_HTTP": "probes.http",
    "DRAINWATCH_AGENT_PROBE_GRPC": "probes.grpc",
    "DRAINWATCH_AGENT_PYSPY": "pyspy.enabled",
    "DRAINWATCH_AGENT_STATE_DIR": "state.dir",
    "DRAINWATCH_AGENT_PUSHGATEWAY": "pushgateway.url",
}
ENV_CONFIG_FILE = "DRAINWATCH_AGENT_CONFIG"


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"{hint}known keys: {', '.join(known)}"


def environment_layer(environ: Mapping[str, str] | None = None) -> Layer:
    env = os.environ if environ is None else environ
    layer: Layer = {}
    for variable, key in ENVIRONMENT_KEYS.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        value: object = raw
        if key == "ingest":
            value = [part.strip() for part in raw.split(",") if part.strip()]
        layer[key] = (value, Source(f'environment variable {variable} ("{key}")'))
    return layer


def file_layer(path: str) -> Layer:
    """Read a YAML config file; raise ``ConfigError`` naming file, line and key."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(
            f"config file {path}: cannot read it ({error.strerror or error}); "
            "check the path given to --config or DRAINWATCH_AGENT_CONFIG"
        ) from None
    return parse_layer(path, data)


def parse_layer(path: str, data: bytes) -> Layer:
    """The layer of a config file's bytes (``path`` names it in errors); raise
    ``ConfigError`` naming file, line and key."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes; "
            "an agent config is a few lines, is this the right file?"
        )
    try:
        text = data.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path}: not UTF-8 text ({error.reason})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"config file {where}: invalid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path}: invalid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(
            f"config file {path}: nested too deeply to be an agent config (a few levels of "
            "settings); is this the right file?"
        ) from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"config file {path}:{root.start_mark.line + 1}: the top level must be a mapping "
            "of settings (listen: ..., ingest: ...)"
        )
    layer: Layer = {}
    constructor = yaml.constructor.SafeConstructor()
    top_keys = sorted({key.split(".")[0] for key in KNOWN_KEYS})
    _walk_mapping(path, root, "", top_keys, constructor, layer)
    return layer


def _section_keys(section: str) -> list[str]:
    prefix = section + "."
    return sorted(key.removeprefix(prefix) for key in KNOWN_KEYS if key.startswith(prefix))


def _walk_mapping(
    path: str,
    node: yaml.MappingNode,
    prefix: str,
    known: list[str],
    constructor: yaml.constructor.SafeConstructor,
    layer: Layer,
) -> None:
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key_node.value, str):
            raise ConfigError(f"config file {path}:{line}: keys must be plain names")
        key = key_node.value
        dotted = prefix + key
        if key not in known:
            raise ConfigError(
                f'config file {path}:{line}: unknown key "{dotted}"; {_suggest(key, known)}'
            )
        if key in seen:
            raise ConfigError(f'config file {path}:{line}: key "{dotted}" is given twice')
        seen.add(key)
        section = _section_keys(dotted) if not prefix else []
        if section:
            if isinstance(value_node, yaml.ScalarNode) and value_node.value in ("", "~", "null"):
                continue
            if not isinstance(value_node, yaml.MappingNode):
                raise ConfigError(
                    f'config file {path}:{line}: "{dotted}" must be a mapping of its settings '
                    f"({section[0]}: ...); its keys: {', '.join(section)}"
                )
            _walk_mapping(path, value_node, dotted + ".", section, constructor, layer)
            continue
        try:
            value = constructor.construct_object(value_node, deep=True)
        except yaml.MarkedYAMLError as error:
            # e.g. a tag such as !!python/object: the safe constructor builds plain data only
            raise ConfigError(
                f'config file {path}:{line}: "{dotted}" cannot be read: {error.problem}; '
                "a setting is a plain value (text, number, list or mapping) without tags"
            ) from None
        except RecursionError:
            raise ConfigError(
                f'config file {path}:{line}: "{dotted}" is nested too deeply'
            ) from None
        layer[dotted] = (value, Source(f'config file {path}:{line}: "{dotted}"'))
