"""Step 5 of the cycle, the safety half: how much capacity is really left at each node and phase.

Uncontrolled load (building, processes) is estimated from meters: at a metered node it is the measured
current minus what the controllable devices under it measure themselves; an un-metered node sums its
children and its own measured loads. A stale or bad meter makes its node assume its whole limit is
used by uncontrolled load, so nothing under it charges until the meter is back. A charger or battery
that stops answering is assumed to draw the higher of its last setpoint and its own fallback value; a
charger that draws more than its setpoint allows has what it draws above it reserved as well
(``ControlProgram._overdraw``).

After allocation, two rules shape the setpoints in time: ramp up gradually, ramp down at once; and
*break before make* — capacity a session gives up is handed to another only after the first one's
response delay, so a slow charger going down and a fast one going up never overlap above a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.limits import NodeLimit
from controller.site import KEYS_PER_NODE, POWER, Site


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
    controllable: list[float],
    limits: tuple[NodeLimit, ...],
) -> list[float]:
    """Uncontrolled load per allocation key, bottom-up: A on a node's phase keys, W on its POWER key.

    ``meters`` maps meter id to (per-phase current, power) when its reading is good, else None.
    ``controllable`` is, per allocation key, the measured draw of controllable devices in the node's
    subtree. Flat per-key lists (like the allocator's) spare building three-element lists per node.
    """
    load = [0.0] * (len(site.nodes) * KEYS_PER_NODE)
    voltage_v = site.voltage_v
    for attached in site.loads:
        if attached.generator:
            continue  # no credit for generation at un-metered nodes: a cloud can take it away in seconds
        measured = meters.get(attached.meter) if attached.meter is not None else None
        base = attached.node * KEYS_PER_NODE
        if measured is not None:
            for p in range(3):
                load[base + p] += max(0.0, measured[0][p])
            load[base + POWER] += max(0.0, measured[1])
        else:
            worst_a = attached.max_current_a
            if worst_a is None:
                worst_a = site.nodes[attached.node].rating_a
            for p in range(3):
                load[base + p] += worst_a
            load[base + POWER] += worst_a * voltage_v * 3
    for node in reversed(site.nodes):
        base = node.index * KEYS_PER_NODE
        if node.meter is not None:
            measured = meters.get(node.meter)
            if measured is None:
                limit = limits[node.index]
                load[base] = load[base + 1] = load[base + 2] = limit.current_a
                load[base + POWER] = limit.power_w if math.isfinite(limit.power_w) else limit.current_a * voltage_v * 3
            else:
                current_a = measured[0]
                load[base] = max(0.0, current_a[0] - controllable[base])
                load[base + 1] = max(0.0, current_a[1] - controllable[base + 1])
                load[base + 2] = max(0.0, current_a[2] - controllable[base + 2])
                load[base + POWER] = max(0.0, measured[1] - controllable[base + POWER])
        if node.parent is not None:
            parent = node.parent * KEYS_PER_NODE
            load[parent] += load[base]
            load[parent + 1] += load[base + 1]
            load[parent + 2] += load[base + 2]
            load[parent + POWER] += load[base + POWER]
        # A metered parent overwrites this sum with its own measurement when its turn comes.
    return load


def uncontrolled_by_node(load: list[float]) -> Uncontrolled:
    """The published form of ``estimate_uncontrolled``'s per-key list."""
    return Uncontrolled(
        tuple(zip(load[0::KEYS_PER_NODE], load[1::KEYS_PER_NODE], load[2::KEYS_PER_NODE], strict=True)),
        tuple(load[POWER::KEYS_PER_NODE]),
    )


def capacity(
    site: Site,
    limits: tuple[NodeLimit, ...],
    uncontrolled: list[float],
    fixed: list[float],
) -> list[float]:
    """Remaining capacity per allocation key: limit - margin - uncontrolled - fixed loads.

    ``uncontrolled`` and ``fixed`` are per allocation key, like the result.
    """
    margin_a = site.config.margins.current_a
    margin_w = site.config.margins.power_kw * 1000.0
    rem = [0.0] * (len(site.nodes) * KEYS_PER_NODE)
    isfinite = math.isfinite
    for i, limit in enumerate(limits):
        base = i * KEYS_PER_NODE
        current_a = limit.current_a - margin_a
        rem[base] = current_a - uncontrolled[base] - fixed[base]
        rem[base + 1] = current_a - uncontrolled[base + 1] - fixed[base + 1]
        rem[base + 2] = current_a - uncontrolled[base + 2] - fixed[base + 2]
        power_w = limit.power_w
        if isfinite(power_w):
            rem[base + POWER] = power_w - margin_w - uncontrolled[base + POWER] - fixed[base + POWER]
        else:
            rem[base + POWER] = math.inf
    return rem
