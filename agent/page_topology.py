"""The shutdown topology as a picture: the components a ``ShutdownCoordinator`` declared,
in the columns they stop in (left first), with an arrow from each component to each one
it depends on, and how long each one's stop took in the last shutdown.

Stop order, as the coordinator runs it: a component stops before the components it
depends on, and every business component stops before any health one. The layout works
from the reported topology alone and never fails on a cycle or an unknown name (those are
drawn in a last column).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .page_html import clip, esc, items, number, seconds, text

MAX_COMPONENTS: Final = 128
COLUMN_WIDTH: Final = 190
NODE_WIDTH: Final = 150
NODE_HEIGHT: Final = 40
ROW_GAP: Final = 16
MARGIN: Final = 12


def topology_of(state_service: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest topology any process of the service reported."""
    found: Mapping[str, Any] | None = None
    newest = float("-inf")
    for instance in items(state_service.get("instances")):
        shutdown = instance.get("shutdown")
        topology = shutdown.get("topology") if isinstance(shutdown, Mapping) else None
        seen = number(instance.get("first_seen")) or 0.0
        if isinstance(topology, Mapping) and seen >= newest:
            found, newest = topology, seen
    return found


def _depends_on(component: Mapping[str, Any]) -> list[str]:
    found = component.get("depends_on")
    return [name for name in found if isinstance(name, str)] if isinstance(found, list) else []


def stop_levels(components: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Component names in stop order, as columns; the unplaceable ones in a last column."""
    names = [text(c.get("name"), "?") for c in components]
    roles = {text(c.get("name"), "?"): text(c.get("role"), "business") for c in components}
    dependents: dict[str, set[str]] = {name: set() for name in names}
    for component in components:
        for dependency in _depends_on(component):
            if dependency in dependents:
                dependents[dependency].add(text(component.get("name"), "?"))
    levels: list[list[str]] = []
    stopped: set[str] = set()
    for health_pass in (False, True):
        pending = {name for name in names if (roles[name] == "health") == health_pass}
        others = {name for name in names if (roles[name] == "health") != health_pass}
        while pending:
            level = sorted(n for n in pending if dependents[n] <= stopped | others)
            if not level:  # a cycle: draw what is left together
                levels.append(sorted(pending))
                stopped |= pending
                break
            levels.append(level)
            stopped.update(level)
            pending.difference_update(level)
    return levels


def topology_svg(
    topology: Mapping[str, Any] | None, report: Mapping[str, Any] | None, marker_id: str
) -> str:
    """The picture, or a sentence saying why there is none; ``marker_id`` names its arrow
    head (unique on the page)."""
    components = items((topology or {}).get("components"))[:MAX_COMPONENTS]
    if not components:
        return (
            '<p class="none">No topology reported: a <code>drainwatch.ShutdownCoordinator</code> '
            "declares its components and their dependencies.</p>"
        )
    steps = {text(s.get("name")): s for s in items((report or {}).get("steps"))}
    levels = stop_levels(components)
    place: dict[str, tuple[float, float]] = {}
    for column, level in enumerate(levels):
        for row, name in enumerate(level):
            place[name] = (
                MARGIN + column * COLUMN_WIDTH,
                MARGIN + 18 + row * (NODE_HEIGHT + ROW_GAP),
            )
    width = MARGIN * 2 + (len(levels) - 1) * COLUMN_WIDTH + NODE_WIDTH
    height = MARGIN * 2 + 18 + max(len(level) for level in levels) * (NODE_HEIGHT + ROW_GAP)
    edges = []
    for component in components:
        source = text(component.get("name"), "?")
        for dependency in _depends_on(component):
            if dependency not in place:
                continue
            (x1, y1), (x2, y2) = place[source], place[dependency]
            edges.append(
                f'<line class="edge" x1="{x1 + NODE_WIDTH:.0f}" y1="{y1 + NODE_HEIGHT / 2:.0f}" '
                f'x2="{x2:.0f}" y2="{y2 + NODE_HEIGHT / 2:.0f}" marker-end="url(#{marker_id})">'
                f"<title>{esc(source)} depends on {esc(dependency)}: stops before it</title></line>"
            )
    nodes = []
    for component in components:
        name = text(component.get("name"), "?")
        role = text(component.get("role"), "business")
        x, y = place[name]
        step = steps.get(name)
        status, state = "not stopped", "idle"
        if step is not None:
            took = number(step.get("duration"))
            if step.get("finished") is None:
                status, state = "never finished", "bad"
            else:
                status = f"stopped in {seconds(took)}"
                state = "bad" if step.get("ok") is False else "ok"
        nodes.append(
            f'<g class="node role-{esc(role)} state-{state}"><title>{esc(name)} ({esc(role)}): '
            f"{esc(status)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6"/>'
            f'<text class="name" x="{x + 8:.0f}" y="{y + 16:.0f}">{esc(clip(name, 20))}</text>'
            f'<text class="status" x="{x + 8:.0f}" y="{y + 32:.0f}">{esc(role)} \u00b7 '
            f"{esc(status)}</text></g>"
        )
    headers = "".join(
        f'<text class="column" x="{MARGIN + column * COLUMN_WIDTH:.0f}" y="{MARGIN + 8}">'
        f"stops {'first' if column == 0 else f'#{column + 1}'}</text>"
        for column in range(len(levels))
    )
    return (
        '<div class="topology-wrap">'
        f'<svg class="topology" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="Shutdown topology: {len(components)} components" '
        'xmlns="http://www.w3.org/2000/svg">'
        f'<defs><marker id="{marker_id}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z"/></marker></defs>'
        f"{headers}{''.join(edges)}{''.join(nodes)}</svg></div>"
    )
