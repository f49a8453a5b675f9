"""Step 5 of the cycle, the safety half: how much capacity is really left at each node and phase.

Uncontrolled load (building, processes) is estimated from meters: at a metered node it is the measured
current minus what the controllable devices under it measure themselves; an un-metered node sums its
children and its own measured loads. A stale or bad meter makes its node assume its whole limit is
used by uncontrolled load, so nothing under it charges until the meter is back. A charger or battery
that stops answering is assumed to draw the higher of its last setpoint and its own fallback value.

After allocation, two rules shape the setpoints in time: ramp up gradually, ramp down at once; and
*break before make* — capacity a session gives up is handed to another only after the first one's
response delay, so a slow charger going down and a fast one going up never overlap above a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.limits import NodeLimit
from controller.site import KEYS_PER_NODE, POWER, Site

Phase3 = list[float]


@dataclass(frozen=True, slots=True)
class Load:
    """A per-grid-phase current and a power that the allocator must treat as already taken."""

    current_a: tuple[float, float, float]
    power_w: float


@dataclass(frozen=True, slots=True)
class Uncontrolled:
    current_a: tuple[tuple[float, float, float], ...]
    """Per node, per grid phase."""
    power_w: tuple[float, ...]


def per_phase(rotation: tuple[int, ...], charger_a: tuple[float, float, float]) -> list[float]:
    """Map a charger's L1..L3 currents onto grid phases through its rotation."""
    grid = [0.0, 0.0, 0.0]
    for k, phase in enumerate(rotation):
        grid[phase] += charger_a[k]
    return grid


def estimate_uncontrolled(
    site: Site,
    meters: dict[str, tuple[tuple[float, float, float], float] | None],
    controllable_a: list[Phase3],
    controllable_w: list[float],
    limits: tuple[NodeLimit, ...],
) -> Uncontrolled:
    """Uncontrolled load per node, bottom-up.

    ``meters`` maps meter id to (per-phase current, power) when its reading is good, else None.
    ``controllable_a/_w`` are, per node, the measured draw of controllable devices in its subtree.
    """
    count = len(site.nodes)
    current: list[Phase3] = [[0.0, 0.0, 0.0] for _ in range(count)]
    power: list[float] = [0.0] * count
    voltage_v = site.voltage_v
    for load in site.loads:
        if load.generator:
            continue  # no credit for generation at un-metered nodes: a cloud can take it away in seconds
        measured = meters.get(load.meter) if load.meter is not None else None
        target = current[load.node]
        if measured is not None:
            for p in range(3):
                target[p] += max(0.0, measured[0][p])
            power[load.node] += max(0.0, measured[1])
        else:
            worst_a = load.max_current_a if load.max_current_a is not None else site.nodes[load.node].rating_a
            for p in range(3):
                target[p] += worst_a
            power[load.node] += worst_a * voltage_v * 3
    for node in reversed(site.nodes):
        i = node.index
        if node.meter is not None:
            measured = meters.get(node.meter)
            if measured is None:
                limit = limits[i]
                current[i] = [limit.current_a] * 3
                power[i] = limit.power_w if math.isfinite(limit.power_w) else limit.current_a * voltage_v * 3
            else:
                own = controllable_a[i]
                current[i] = [max(0.0, measured[0][p] - own[p]) for p in range(3)]
                power[i] = max(0.0, measured[1] - controllable_w[i])
        if node.parent is not None:
            parent = current[node.parent]
            mine = current[i]
            for p in range(3):
                parent[p] += mine[p]
            power[node.parent] += power[i]
        # A metered parent overwrites this sum with its own measurement when its turn comes.
    return Uncontrolled(tuple((c[0], c[1], c[2]) for c in current), tuple(power))


def capacity(
    site: Site,
    limits: tuple[NodeLimit, ...],
    uncontrolled: Uncontrolled,
    fixed_a: list[Phase3],
    fixed_w: list[float],
) -> list[float]:
    """Remaining capacity per allocation key: limit - margin - uncontrolled - fixed loads."""
    margin_a = site.config.margins.current_a
    margin_w = site.config.margins.power_kw * 1000.0
    rem = [0.0] * (len(site.nodes) * KEYS_PER_NODE)
    for node in site.nodes:
        i = node.index
        base = i * KEYS_PER_NODE
        limit = limits[i]
        for p in range(3):
            rem[base + p] = limit.current_a - margin_a - uncontrolled.current_a[i][p] - fixed_a[i][p]
        if math.isfinite(limit.power_w):
            rem[base + POWER] = limit.power_w - margin_w - uncontrolled.power_w[i] - fixed_w[i]
        else:
            rem[base + POWER] = math.inf
    return rem

