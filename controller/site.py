"""The site model the scan cycle runs on: the validated config compiled into indexed, frozen records.

The control steps address nodes and connectors by integer index (parents before children, root = 0)
so that a cycle over hundreds of connectors is a handful of list walks, not dictionary lookups.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field

from controller.config import CapacityFrameConfig, SiteConfig, parse_phases, walk_tree

PHASES = (0, 1, 2)
KEYS_PER_NODE = 4
"""Allocation constraints per node: phases L1, L2, L3 (A) and power (W), as ``node * 4 + k``."""
POWER = 3


@dataclass(frozen=True, slots=True)
class Node:
    index: int
    id: str
    parent: int | None
    depth: int
    rating_a: float
    power_limit_w: float | None
    meter: str | None
    location_priority: int | None
    path: tuple[int, ...]
    """Node indices from the root down to and including this node."""
    children: tuple[int, ...]
    connectors: tuple[int, ...]
    """Every connector in this node's subtree."""


@dataclass(frozen=True, slots=True)
class Connector:
    index: int
    id: str
    node: int
    path: tuple[int, ...]
    """Node indices from the root down to the charge point that feeds this connector."""
    dc: bool
    rotation: tuple[int, ...]
    """Grid phase (0..2) feeding charger phase L1, L2, L3 (one entry for a single-phase charger)."""
    min_current_a: float
    max_current_a: float
    fallback_current_a: float
    response_delay_s: float
    zero_pauses: bool
    min_power_w: float
    max_power_w: float
    location_priority: int | None


@dataclass(frozen=True, slots=True)
class Battery:
    id: str
    node: int
    path: tuple[int, ...]
    meter: str | None
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min_pct: float
    soc_max_pct: float
    response_delay_s: float


@dataclass(frozen=True, slots=True)
class AttachedLoad:
    """A measured, non-controllable load or generator (building, PV) hanging under a node."""

    id: str
    node: int
    meter: str | None
    max_current_a: float | None
    generator: bool


@dataclass(frozen=True, slots=True)
class UserProfile:
    id_token: str
    name: str
    priority: int
    default_departure_s_of_day: float | None
    default_energy_wh: float | None
    guaranteed_energy_wh: float
    """Energy the user is guaranteed by departure (SPEC R8); 0 = no guarantee."""
    flexible: bool


@dataclass(frozen=True, slots=True)
class CapacityFrame:
    node: int
    start_s_of_day: float
    end_s_of_day: float
    limit_w: float

    def active(self, s_of_day: float) -> bool:
        if self.start_s_of_day < self.end_s_of_day:
            return self.start_s_of_day <= s_of_day < self.end_s_of_day
        return s_of_day >= self.start_s_of_day or s_of_day < self.end_s_of_day


@dataclass(frozen=True, slots=True)
class Constraints:
    """The allocation constraints one connector loads: ``pairs`` of (key, weight), and both apart."""

    pairs: tuple[tuple[int, float], ...]
    keys: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    config: SiteConfig
    timezone: zoneinfo.ZoneInfo
    voltage_v: float
    period_s: float
    stale_after_s: float
    nodes: tuple[Node, ...]
    connectors: tuple[Connector, ...]
    batteries: tuple[Battery, ...]
    loads: tuple[AttachedLoad, ...]
    users: dict[str, UserProfile]
    default_priority: int
    capacity_frames: tuple[CapacityFrame, ...]
    node_index: dict[str, int]
    connector_index: dict[str, int]
    power_limited: frozenset[int] = frozenset()
    """Nodes that can have a power limit (their own, or a capacity frame)."""
    power_checked: frozenset[int] = frozenset({0})
    """Nodes whose power the allocator checks: ``power_limited`` and the root, where a plan's site import
    cap (``Targets.site_import_cap_w``) and a commanded capacity block act as a power, not a current."""
    _constraints: dict[tuple[int, tuple[int, ...]], Constraints] = field(
        default_factory=dict, compare=False, repr=False
    )

    def constraints(self, connector: int, phases: tuple[int, ...]) -> Constraints:
        """Every node-phase and node power a connector loads on these grid phases, cached."""
        cached = self._constraints.get((connector, phases))
        if cached is None:
            per_amp_w = self.voltage_v * len(phases)
            pairs: list[tuple[int, float]] = []
            for n in self.connectors[connector].path:
                pairs.extend((n * KEYS_PER_NODE + p, 1.0) for p in phases)
                if n in self.power_checked:
                    pairs.append((n * KEYS_PER_NODE + POWER, per_amp_w))
            cached = self._constraints[(connector, phases)] = Constraints(
                pairs=tuple(pairs), keys=tuple(k for k, _ in pairs), weights=tuple(w for _, w in pairs)
            )
        return cached

    def constraint_keys(self, connector: int, phases: tuple[int, ...]) -> tuple[tuple[int, float], ...]:
        """(constraint key, weight) pairs of ``constraints``."""
        return self.constraints(connector, phases).pairs

    @property
    def max_level(self) -> int:
        return max(node.depth for node in self.nodes)


def _s_of_day(hour: int, minute: int, second: int) -> float:
    return float(hour * 3600 + minute * 60 + second)


def compile_site(config: SiteConfig) -> Site:
    """Index a validated configuration for the scan cycle."""
    voltage_v = config.site.nominal_voltage_v
    location_priority = {loc.id: loc.priority for loc in config.priorities.locations}
    walked = list(walk_tree(config.tree))
    node_index = {item.node.id: i for i, item in enumerate(walked)}
    paths: list[tuple[int, ...]] = []
    node_location: list[int | None] = []
    for i, item in enumerate(walked):
        parent = node_index[item.parent.id] if item.parent is not None else None
        paths.append((*paths[parent], i) if parent is not None else (i,))
        own = location_priority.get(item.node.location) if item.node.location else None
        inherited = node_location[parent] if parent is not None else None
        node_location.append(own if own is not None else inherited)

    connectors: list[Connector] = []
    for i, item in enumerate(walked):
        for conn in item.node.connectors:
            rotation = parse_phases(conn.phases)
            assert rotation is not None, "validated config has valid phases"
            dc = conn.type == "dc"
            max_power_w = (conn.max_power_kw or 0.0) * 1000.0
            max_current_a = max_power_w / (3 * voltage_v) if dc else conn.max_current_a
            min_current_a = conn.min_power_kw * 1000.0 / (3 * voltage_v) if dc else conn.min_current_a
            connectors.append(
                Connector(
                    index=len(connectors),
                    id=conn.id,
                    node=i,
                    path=paths[i],
                    dc=dc,
                    rotation=rotation,
                    min_current_a=min_current_a,
                    max_current_a=max_current_a,
                    fallback_current_a=conn.fallback_current_a,
                    response_delay_s=conn.response_delay_s,
                    zero_pauses=conn.zero_pauses,
                    min_power_w=conn.min_power_kw * 1000.0,
                    max_power_w=max_power_w,
                    location_priority=node_location[i],
                )
            )
    subtree: list[list[int]] = [[] for _ in walked]
    for conn_rec in connectors:
        for n in conn_rec.path:
            subtree[n].append(conn_rec.index)
    children: list[list[int]] = [[] for _ in walked]
    for i, item in enumerate(walked):
        if item.parent is not None:
            children[node_index[item.parent.id]].append(i)

    nodes = tuple(
        Node(
            index=i,
            id=item.node.id,
            parent=node_index[item.parent.id] if item.parent is not None else None,
            depth=item.depth,
            rating_a=item.node.limit_a,
            power_limit_w=item.node.power_limit_kw * 1000.0 if item.node.power_limit_kw else None,
            meter=item.node.meter,
            location_priority=node_location[i],
            path=paths[i],
            children=tuple(children[i]),
            connectors=tuple(subtree[i]),
        )
        for i, item in enumerate(walked)
    )
    batteries = tuple(
        Battery(
            id=b.id,
            node=node_index[b.node],
            path=paths[node_index[b.node]],
            meter=b.meter,
            capacity_wh=b.capacity_kwh * 1000.0,
            max_charge_w=b.max_charge_kw * 1000.0,
            max_discharge_w=b.max_discharge_kw * 1000.0,
            soc_min_pct=b.soc_min_pct,
            soc_max_pct=b.soc_max_pct,
            response_delay_s=b.response_delay_s,
        )
        for b in config.batteries
    )
    loads = tuple(
        AttachedLoad(id=b.id, node=node_index[b.node], meter=b.meter, max_current_a=b.max_current_a, generator=False)
        for b in config.building_loads
    ) + tuple(
        AttachedLoad(id=p.id, node=node_index[p.node], meter=p.meter, max_current_a=None, generator=True)
        for p in config.pv
    )
    users = {
        u.id_token: UserProfile(
            id_token=u.id_token,
            name=u.name,
            priority=u.priority,
            default_departure_s_of_day=(
                _s_of_day(u.default_departure.hour, u.default_departure.minute, u.default_departure.second)
                if u.default_departure is not None
                else None
            ),
            default_energy_wh=u.default_energy_kwh * 1000.0 if u.default_energy_kwh is not None else None,
            guaranteed_energy_wh=(u.guaranteed_energy_kwh or 0.0) * 1000.0,
            flexible=u.flexible,
        )
        for u in config.priorities.users
    }
    power_limited = frozenset(
        [i for i, item in enumerate(walked) if item.node.power_limit_kw is not None]
        + [node_index[f.node] for f in config.capacity_frames]
    )
    return Site(
        id=config.site.id,
        config=config,
        timezone=zoneinfo.ZoneInfo(config.site.timezone),
        voltage_v=voltage_v,
        period_s=config.scan.period_ms / 1000.0,
        stale_after_s=config.scan.stale_after_ms / 1000.0,
        nodes=nodes,
        connectors=tuple(connectors),
        batteries=batteries,
        loads=loads,
        users=users,
        default_priority=config.priorities.default,
        capacity_frames=tuple(_frame(f, node_index) for f in config.capacity_frames),
        power_limited=power_limited,
        power_checked=power_limited | {0},
        node_index=node_index,
        connector_index={c.id: c.index for c in connectors},
    )


def _frame(frame: CapacityFrameConfig, node_index: dict[str, int]) -> CapacityFrame:
    return CapacityFrame(
        node=node_index[frame.node],
        start_s_of_day=_s_of_day(frame.start.hour, frame.start.minute, frame.start.second),
        end_s_of_day=_s_of_day(frame.end.hour, frame.end.minute, frame.end.second),
        limit_w=frame.limit_kw * 1000.0,
    )
