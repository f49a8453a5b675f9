"""Plant model of a charging plaza: EVs, chargers, battery, PV, building load and the wiring between them.

It is physics, not control: chargers follow the limits they are given after their response delay and
fall back to their own safe current when nobody refreshes them; EVs draw what their on-board charger
and state of charge allow (tapering near full); the battery follows its command after its delay;
meters see the sum of everything under their node, per phase. The plant knows the site only through
the public site-file schema; it never looks inside the controller.

Sign conventions match the site meters: node current/power positive = import; battery power positive
= charging; PV power positive = generating.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.config import (
    BatteryConfig,
    BuildingLoadConfig,
    PvConfig,
    SiteConfig,
    parse_phases,
    walk_tree,
)

IEC_MIN_A = 6.0
TAPER_FROM_SOC = 0.8
TAPER_END_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class EvSpec:
    id: str
    connector: str
    arrive_s: float
    depart_s: float
    energy_wh: float
    """What the driver asked for."""
    capacity_wh: float
    soc0: float
    max_current_a: float
    """On-board charger limit per phase (AC)."""
    phases: int
    max_dc_power_w: float
    id_token: str | None = None
    tell_departure: bool = True


@dataclass(slots=True)
class Ev:
    spec: EvSpec
    soc: float
    delivered_wh: float = 0.0

    def taper(self) -> float:
        """Fraction of full rate the battery accepts at this state of charge."""
        if self.soc >= 1.0:
            return 0.0
        if self.soc <= TAPER_FROM_SOC:
            return 1.0
        span = (self.soc - TAPER_FROM_SOC) / (1.0 - TAPER_FROM_SOC)
        return 1.0 - span * (1.0 - TAPER_END_FRACTION)


@dataclass(frozen=True, slots=True)
class ChargerBehaviour:
    response_delay_s: float = 2.0
    watchdog_s: float = 60.0
    """Without a fresh limit for this long the charger applies its own fallback current."""
    never_below_a: float = 0.0
    """Some chargers never go below this when charging (they ignore lower limits except 0)."""


@dataclass(slots=True)
class ChargerSim:
    id: str
    node: str
    rotation: tuple[int, ...]
    dc: bool
    max_current_a: float
    fallback_current_a: float
    voltage_v: float
    behaviour: ChargerBehaviour
    ev: Ev | None = None
    applied_a: float = 0.0
    """Per-phase current limit in force (DC: AC-equivalent per phase)."""
    pending: list[tuple[float, float]] = field(default_factory=list)
    last_write_s: float = -math.inf
    grid_a: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    charger_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    power_w: float = 0.0
    session_wh: float = 0.0
    finished: list[Ev] = field(default_factory=list)

    def write_limit(self, t: float, current_a: float) -> None:
        self.last_write_s = t
        if self.pending and self.pending[-1][1] == current_a:
            return
        if not self.pending and current_a == self.applied_a:
            return
        self.pending.append((t + self.behaviour.response_delay_s, current_a))

    def state(self) -> str:
        if self.ev is None:
            return "A1"
        return "C2" if self.power_w > 0.0 else "B2"

    def step(self, t: float, dt: float) -> None:
        """Advance from t to t + dt; the currents hold for the interval that follows."""
        end = t + dt
        while self.pending and self.pending[0][0] <= end:
            self.applied_a = self.pending.pop(0)[1]
        if end - self.last_write_s > self.behaviour.watchdog_s:
            self.applied_a = self.fallback_current_a
            self.pending.clear()
        ev = self.ev
        if ev is not None and end >= ev.spec.depart_s:
            self.finished.append(ev)
            self.ev = ev = None
        if ev is None:
            if self.power_w:
                self.grid_a = [0.0, 0.0, 0.0]
                self.charger_a = (0.0, 0.0, 0.0)
                self.power_w = 0.0
            return
        limit_a = min(self.applied_a, self.max_current_a)
        if self.dc:
            power_w = min(limit_a * 3 * self.voltage_v, ev.spec.max_dc_power_w * ev.taper())
            per_phase = power_w / (3 * self.voltage_v)
            charger = (per_phase, per_phase, per_phase)
        else:
            if limit_a < IEC_MIN_A:
                draw_a = 0.0
            else:
                draw_a = min(max(limit_a, self.behaviour.never_below_a), ev.spec.max_current_a) * ev.taper()
            phases = min(ev.spec.phases, len(self.rotation))
            charger = tuple(draw_a if k < phases else 0.0 for k in range(3))  # type: ignore[assignment]
            power_w = draw_a * phases * self.voltage_v
        room_wh = (1.0 - ev.soc) * ev.spec.capacity_wh
        energy_wh = min(power_w * dt / 3600.0, room_wh)
        ev.soc += energy_wh / ev.spec.capacity_wh
        ev.delivered_wh += energy_wh
        self.session_wh = ev.delivered_wh
        self.charger_a = charger
        self.power_w = power_w
        grid = [0.0, 0.0, 0.0]
        for k, phase in enumerate(self.rotation):
            grid[phase] += charger[k]
        self.grid_a = grid

    def plug_in(self, ev: Ev) -> None:
        self.ev = ev
        self.session_wh = 0.0


@dataclass(slots=True)
class BatterySim:
    id: str
    node: str
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    response_delay_s: float
    soc: float
    power_w: float = 0.0
    pending: list[tuple[float, float]] = field(default_factory=list)

    def command(self, t: float, power_w: float) -> None:
        target = self.pending[-1][1] if self.pending else self.power_w
        if abs(power_w - target) > 1.0:
            self.pending.append((t + self.response_delay_s, power_w))

    def step(self, t: float, dt: float) -> None:
        end = t + dt
        while self.pending and self.pending[0][0] <= end:
            self.power_w = self.pending.pop(0)[1]
        power_w = min(max(self.power_w, -self.max_discharge_w), self.max_charge_w)
        # The battery's own BMS stops at empty or full, whatever it was told.
        if (power_w < 0 and self.soc <= 0.0) or (power_w > 0 and self.soc >= 1.0):
            power_w = 0.0
        self.power_w = power_w
        self.soc = min(1.0, max(0.0, self.soc + power_w * dt / 3600.0 / self.capacity_wh))


Profile = Callable[[float], float]


@dataclass(slots=True)
class LoadSim:
    """A building load or PV plant: a power profile over time, balanced over three phases."""

    id: str
    node: str
    profile_w: Profile
    generator: bool
    extra_w: float = 0.0
    power_w: float = 0.0
    cap_w: float | None = None
    """Generators: the most the inverter lets through (its curtailment), None = no limit."""

    def step(self, t: float) -> None:
        power_w = max(0.0, self.profile_w(t) + self.extra_w)
        if self.generator and self.cap_w is not None:
            power_w = min(power_w, self.cap_w)
        self.power_w = power_w


class Plant:
    """Everything physical on the site, wired as the site file describes."""

    def __init__(self, config: SiteConfig) -> None:
        self.voltage_v = config.site.nominal_voltage_v
        self.node_ids: list[str] = []
        self.parent: dict[str, str | None] = {}
        self.meter_node: dict[str, str] = {}
        self.node_limit_a: dict[str, float] = {}
        self.chargers: dict[str, ChargerSim] = {}
        for item in walk_tree(config.tree):
            node = item.node
            self.node_ids.append(node.id)
            self.parent[node.id] = item.parent.id if item.parent is not None else None
            self.node_limit_a[node.id] = node.limit_a
            if node.meter is not None:
                self.meter_node[node.meter] = node.id
            for conn in node.connectors:
                rotation = parse_phases(conn.phases) or (0, 1, 2)
                dc = conn.type == "dc"
                max_a = (conn.max_power_kw or 0.0) * 1000.0 / (3 * self.voltage_v) if dc else conn.max_current_a
                self.chargers[conn.id] = ChargerSim(
                    id=conn.id,
                    node=node.id,
                    rotation=rotation,
                    dc=dc,
                    max_current_a=max_a,
                    fallback_current_a=conn.fallback_current_a,
                    voltage_v=self.voltage_v,
                    behaviour=ChargerBehaviour(response_delay_s=conn.response_delay_s),
                )
        self.batteries: dict[str, BatterySim] = {}
        for b in config.batteries:
            self.batteries[b.id] = BatterySim(
                id=b.id,
                node=b.node,
                capacity_wh=b.capacity_kwh * 1000.0,
                max_charge_w=b.max_charge_kw * 1000.0,
                max_discharge_w=b.max_discharge_kw * 1000.0,
                response_delay_s=b.response_delay_s,
                soc=0.5,
            )
        self.loads: dict[str, LoadSim] = {}
        for load in config.building_loads:
            self.loads[load.id] = LoadSim(load.id, load.node, lambda _t: 0.0, generator=False)
        for pv in config.pv:
            self.loads[pv.id] = LoadSim(pv.id, pv.node, lambda _t: 0.0, generator=True)
        self.device_meter: dict[str, str] = {}
        devices: list[BatteryConfig | BuildingLoadConfig | PvConfig] = [
            *config.batteries,
            *config.building_loads,
            *config.pv,
        ]
        for device in devices:
            if device.meter is not None:
                self.device_meter[device.meter] = device.id
        # Precomputed ancestors so node sums are one pass per device.
        self._ancestors: dict[str, tuple[str, ...]] = {}
        for node_id in self.node_ids:
            chain: list[str] = []
            current: str | None = node_id
            while current is not None:
                chain.append(current)
                current = self.parent[current]
            self._ancestors[node_id] = tuple(chain)
        self.contacts: dict[str, bool] = {}
        self.dso_pct = 100.0
        self.node_current_a: dict[str, list[float]] = {n: [0.0, 0.0, 0.0] for n in self.node_ids}
        self.node_power_w: dict[str, float] = dict.fromkeys(self.node_ids, 0.0)

    def step(self, t: float, dt: float) -> None:
        for charger in self.chargers.values():
            charger.step(t, dt)
        for battery in self.batteries.values():
            battery.step(t, dt)
        for load in self.loads.values():
            load.step(t + dt)
        self._sum_nodes()

    def _sum_nodes(self) -> None:
        current = {n: [0.0, 0.0, 0.0] for n in self.node_ids}
        power = dict.fromkeys(self.node_ids, 0.0)
        third_v = 3 * self.voltage_v

        def add(node: str, grid: list[float] | tuple[float, float, float], power_w: float) -> None:
            for ancestor in self._ancestors[node]:
                target = current[ancestor]
                target[0] += grid[0]
                target[1] += grid[1]
                target[2] += grid[2]
                power[ancestor] += power_w

        for charger in self.chargers.values():
            if charger.power_w:
                add(charger.node, charger.grid_a, sum(charger.grid_a) * self.voltage_v)
        for battery in self.batteries.values():
            per_phase = battery.power_w / third_v
            add(battery.node, (per_phase, per_phase, per_phase), battery.power_w)
        for load in self.loads.values():
            signed_w = -load.power_w if load.generator else load.power_w
            per_phase = signed_w / third_v
            add(load.node, (per_phase, per_phase, per_phase), signed_w)
        self.node_current_a = current
        self.node_power_w = power

    def meter_values(self, meter: str) -> tuple[tuple[float, float, float], float]:
        """Per-phase current and total power as the meter sees them now."""
        node = self.meter_node.get(meter)
        if node is not None:
            c = self.node_current_a[node]
            return (c[0], c[1], c[2]), self.node_power_w[node]
        device = self.device_meter[meter]
        if device in self.batteries:
            power_w = self.batteries[device].power_w
        else:
            load = self.loads[device]
            power_w = load.power_w
        per_phase = power_w / (3 * self.voltage_v)
        return (per_phase, per_phase, per_phase), power_w
