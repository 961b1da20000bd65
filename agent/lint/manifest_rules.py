"""The Kubernetes manifest rules, DW201 to DW205, over composed YAML nodes.

Pod specs are found in ``Pod``, ``Deployment``, ``StatefulSet``, ``DaemonSet``,
``ReplicaSet``, ``ReplicationController``, ``Job`` and ``CronJob`` objects, and in the
items of a ``List``. Documents of other kinds (and YAML that is not a Kubernetes object at
all) are passed over.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from .manifest_yaml import Node, get, integer, items, position, text, words
from .rules import (
    EXEC_PRESTOP_DISTROLESS,
    GRACE_TOO_SHORT,
    LIVENESS_ON_BUSINESS_PORT,
    LIVENESS_WITHOUT_GRACE,
    SIDECAR_WITHOUT_PTRACE,
    Finding,
    Rule,
    finding_at,
)

DEFAULT_GRACE_SECONDS: Final = 30  # Kubernetes' default terminationGracePeriodSeconds
DRAIN_ANNOTATION: Final = "drainwatch.io/drain-timeout-seconds"
_TEMPLATED: Final = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
)
# Flags that set a server's own drain timeout; gunicorn's default when it has none.
_DRAIN_FLAGS: Final = ("--timeout-graceful-shutdown", "--graceful-timeout", "--drain-timeout")
_GUNICORN_DEFAULT_GRACE: Final = 30
_SLEEP: Final = re.compile(r"\bsleep\s+(\d+(?:\.\d+)?)")
_NOT_BUSINESS_PORT: Final = re.compile(r"health|probe|metric|admin|manage|status|live|ready", re.I)
_DISTROLESS: Final = re.compile(r"distroless|^cgr\.dev/chainguard/|/chainguard/", re.I)
_NOT_IN_DISTROLESS: Final = frozenset(
    {"sh", "bash", "ash", "dash", "zsh", "sleep", "curl", "wget", "kill", "pkill", "nginx"}
)
_FALSE: Final = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True, slots=True)
class PodSpec:
    kind: str
    name: str
    spec: Node
    annotations: dict[str, str]


def _annotations(*metadata: Node | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in metadata:
        annotations = get(node, "annotations")
        for key_node, value_node in getattr(annotations, "value", []) or []:
            key, value = text(key_node), text(value_node)
            if key is not None and value is not None:
                found[key] = value
    return found


def pod_specs(document: Node) -> Iterator[PodSpec]:
    kind = text(get(document, "kind")) or ""
    if kind == "List":
        for item in items(get(document, "items")):
            if text(get(item, "kind")) != "List":
                yield from pod_specs(item)
        return
    name = text(get(document, "metadata", "name")) or "(unnamed)"
    metadata = get(document, "metadata")
    spec: Node | None = None
    template: Node | None = None
    if kind == "Pod":
        spec = get(document, "spec")
    elif kind in _TEMPLATED:
        template = get(document, "spec", "template")
    elif kind == "CronJob":
        template = get(document, "spec", "jobTemplate", "spec", "template")
    if template is not None:
        spec = get(template, "spec")
    if spec is not None:
        yield PodSpec(kind, name, spec, _annotations(metadata, get(template, "metadata")))


def _where(pod: PodSpec) -> str:
    return f"{pod.kind} {pod.name!r}"


def _container_name(container: Node) -> str:
    return text(get(container, "name")) or "(unnamed)"


def _at(path: str, node: Node | None, rule: Rule, message: str) -> Finding:
    line, column = position(node)
    return finding_at(path, line, column, rule, message)


# -- DW201 --------------------------------------------------------------------------------------


def _prestop_seconds(container: Node) -> float:
    pre_stop = get(container, "lifecycle", "preStop")
    sleep_seconds = integer(get(pre_stop, "sleep", "seconds"))
    if sleep_seconds is not None:
        return float(sleep_seconds)
    command = " ".join(words(get(pre_stop, "exec", "command")))
    return sum(float(value) for value in _SLEEP.findall(command))


def _drain_seconds(container: Node, pod: PodSpec) -> tuple[float, str] | None:
    annotated = pod.annotations.get(DRAIN_ANNOTATION)
    if annotated is not None:
        try:
            return float(annotated), f"the {DRAIN_ANNOTATION} annotation"
        except ValueError:
            pass
    argv = words(get(container, "command")) + words(get(container, "args"))
    for index, word in enumerate(argv):
        for flag in _DRAIN_FLAGS:
            value = None
            if word == flag and index + 1 < len(argv):
                value = argv[index + 1]
            elif word.startswith(flag + "="):
                value = word.partition("=")[2]
            if value is not None:
                try:
                    return float(value), f"{flag} {value}"
                except ValueError:
                    continue
    if any(word.rpartition("/")[2] == "gunicorn" for word in argv):
        return float(_GUNICORN_DEFAULT_GRACE), "gunicorn's default --graceful-timeout 30"
    return None


def _agent_budget(container: Node) -> float | None:
    argv = words(get(container, "command")) + words(get(container, "args"))
    for index, word in enumerate(argv):
        if word == "--drain-budget" and index + 1 < len(argv):
            value = argv[index + 1]
        elif word.startswith("--drain-budget="):
            value = word.partition("=")[2]
        else:
            continue
        try:
            return float(value)
        except ValueError:
            return None
    for entry in items(get(container, "env")):
        if text(get(entry, "name")) == "DRAINWATCH_AGENT_DRAIN_BUDGET_SECONDS":
            try:
                return float(text(get(entry, "value")) or "")
            except ValueError:
                return None
    return None


def check_grace(path: str, pod: PodSpec) -> Iterator[Finding]:
    grace_node = get(pod.spec, "terminationGracePeriodSeconds")
    grace = integer(grace_node)
    default = grace is None
    grace = DEFAULT_GRACE_SECONDS if grace is None else grace
    stated = f"{grace} (the default)" if default else str(grace)
    anchor = grace_node if grace_node is not None else get(pod.spec, "containers")
    longest_prestop = 0.0
    for container in items(get(pod.spec, "containers")):
        prestop = _prestop_seconds(container)
        longest_prestop = max(longest_prestop, prestop)
        drain = _drain_seconds(container, pod)
        name = _container_name(container)
        if drain is None:
            if prestop and prestop >= grace:
                yield _at(
                    path,
                    anchor,
                    GRACE_TOO_SHORT,
                    f"terminationGracePeriodSeconds is {stated} but container {name!r} in "
                    f"{_where(pod)} sleeps {prestop:g} s in preStop: nothing is left for the "
                    "drain before SIGKILL; make the grace period preStop + drain + a few seconds",
                )
            continue
        seconds, source = drain
        if grace < prestop + seconds:
            yield _at(
                path,
                anchor,
                GRACE_TOO_SHORT,
                f"terminationGracePeriodSeconds is {stated} but container {name!r} in "
                f"{_where(pod)} needs {prestop:g} s of preStop + {seconds:g} s of drain "
                f"({source}): Kubernetes sends SIGKILL mid-drain; set it to at least "
                f"{int(prestop + seconds) + 5} or shorten the drain",
            )
    for container in _all_containers(pod.spec):
        budget = _agent_budget(container)
        if budget is not None and budget > grace - longest_prestop:
            yield _at(
                path,
                container,
                GRACE_TOO_SHORT,
                f"the drainwatch agent's drain budget ({budget:g} s) is longer than what the "
                f"app really has in {_where(pod)}: terminationGracePeriodSeconds {stated} minus "
                f"{longest_prestop:g} s of preStop; set --drain-budget to "
                f"{max(0.0, grace - longest_prestop):g} so the budget alerts fire before SIGKILL",
            )


# -- DW202, DW203 --------------------------------------------------------------------------------


def _ports(container: Node) -> dict[str, int]:
    """Declared container ports by name (unnamed ones by their number)."""
    found: dict[str, int] = {}
    for entry in items(get(container, "ports")):
        number = integer(get(entry, "containerPort"))
        if number is not None:
            found[text(get(entry, "name")) or str(number)] = number
    return found


def _probe_port(probe: Node | None) -> Node | None:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        port = get(probe, handler, "port")
        if port is not None:
            return port
    return None


def check_probes(path: str, pod: PodSpec) -> Iterator[Finding]:
    grace = integer(get(pod.spec, "terminationGracePeriodSeconds")) or DEFAULT_GRACE_SECONDS
    for container in items(get(pod.spec, "containers")):
        probe = get(container, "livenessProbe")
        if probe is None:
            continue
        name = _container_name(container)
        ports = _ports(container)
        port_node = _probe_port(probe)
        port_text = text(port_node)
        number = integer(port_node)
        if number is None and port_text is not None:
            number = ports.get(port_text)
        business = {value for key, value in ports.items() if not _NOT_BUSINESS_PORT.search(key)}
        if number is not None and number in business:
            yield _at(
                path,
                port_node,
                LIVENESS_ON_BUSINESS_PORT,
                f"the liveness probe of container {name!r} in {_where(pod)} checks port "
                f"{number}, the business port: when the server closes that listener to drain, "
                "liveness fails and the kubelet kills the pod mid-drain; serve health on its "
                "own port (a 'health' containerPort) that closes last",
            )
        probe_grace_node = get(probe, "terminationGracePeriodSeconds")
        probe_grace = integer(probe_grace_node)
        if probe_grace is None:
            yield _at(
                path,
                probe,
                LIVENESS_WITHOUT_GRACE,
                f"the liveness probe of container {name!r} in {_where(pod)} has no probe-level "
                f"terminationGracePeriodSeconds: a hung container that fails liveness is given "
                f"the pod's whole {grace} s drain budget before SIGKILL; set "
                "livenessProbe.terminationGracePeriodSeconds (a few seconds) so a wedged "
                "process restarts fast while rollouts still drain fully",
            )
        elif probe_grace >= grace:
            yield _at(
                path,
                probe_grace_node,
                LIVENESS_WITHOUT_GRACE,
                f"the liveness probe of container {name!r} in {_where(pod)} sets "
                f"terminationGracePeriodSeconds {probe_grace}, not less than the pod's {grace}: "
                "it changes nothing; make it a few seconds",
            )


# -- DW204 ----------------------------------------------------------------------------------------


def check_prestop_exec(path: str, pod: PodSpec) -> Iterator[Finding]:
    for container in _all_containers(pod.spec):
        image = text(get(container, "image")) or ""
        command_node = get(container, "lifecycle", "preStop", "exec", "command")
        command = words(command_node)
        if not command or not _DISTROLESS.search(image):
            continue
        program = command[0].rpartition("/")[2]
        if program not in _NOT_IN_DISTROLESS:
            continue
        yield _at(
            path,
            command_node,
            EXEC_PRESTOP_DISTROLESS,
            f"container {_container_name(container)!r} in {_where(pod)} runs `{program}` in "
            f"its preStop hook, but {image} is distroless: there is no shell or {program} in "
            "it, the hook fails at once and the pod gets no propagation delay; use "
            "`lifecycle.preStop.sleep.seconds` (Kubernetes 1.30+) or an httpGet hook",
        )


# -- DW205 ----------------------------------------------------------------------------------------


def _all_containers(spec: Node) -> list[Node]:
    return [*items(get(spec, "containers")), *items(get(spec, "initContainers"))]


def _is_sampling_agent(container: Node) -> bool:
    """A ``drainwatch agent`` container (by its command, or a drainwatch image whose
    command is the agent or left to the image) with py-spy left on."""
    image = (text(get(container, "image")) or "").lower()
    argv = words(get(container, "command")) + words(get(container, "args"))
    if any(word.rpartition("/")[2] == "drainwatch" for word in argv):
        is_agent = "agent" in argv
    else:
        is_agent = "drainwatch" in image and (not argv or "agent" in argv)
    if not is_agent or "--no-pyspy" in argv:
        return False
    for entry in items(get(container, "env")):
        if text(get(entry, "name")) == "DRAINWATCH_AGENT_PYSPY":
            return (text(get(entry, "value")) or "").strip().lower() not in _FALSE
    return True


def check_sidecar(path: str, pod: PodSpec) -> Iterator[Finding]:
    for container in _all_containers(pod.spec):
        if not _is_sampling_agent(container):
            continue
        name = _container_name(container)
        context = get(container, "securityContext")
        added = {
            (value or "").upper().removeprefix("CAP_")
            for value in words(get(context, "capabilities", "add"))
        }
        privileged = (text(get(context, "privileged")) or "").lower() == "true"
        if "SYS_PTRACE" not in added and not privileged:
            yield _at(
                path,
                context if context is not None else container,
                SIDECAR_WITHOUT_PTRACE,
                f"the drainwatch agent {name!r} in {_where(pod)} samples stacks with py-spy but "
                "lacks the SYS_PTRACE capability: every sample is refused; add it to "
                "securityContext.capabilities.add, or pass --no-pyspy",
            )
        shared = (text(get(pod.spec, "shareProcessNamespace")) or "").lower() == "true"
        if not shared:
            yield _at(
                path,
                get(pod.spec, "shareProcessNamespace") or container,
                SIDECAR_WITHOUT_PTRACE,
                f"the drainwatch agent {name!r} in {_where(pod)} cannot see the app's "
                "processes: the pod does not set shareProcessNamespace: true, so there is "
                "nothing to sample or watch; set it on the pod spec",
            )


def check(path: str, documents: list[Node]) -> Iterator[Finding]:
    for document in documents:
        for pod in pod_specs(document):
            yield from check_grace(path, pod)
            yield from check_probes(path, pod)
            yield from check_prestop_exec(path, pod)
            yield from check_sidecar(path, pod)
