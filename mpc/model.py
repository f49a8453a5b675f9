"""What the charge-plan optimiser plans for: the site structure, one solve's inputs and the plan it returns.

Three layers of data, all frozen, all numpy on the inside:

* :class:`PlanningSite` - the electrical structure (nodes with per-phase current and power limits,
  connector slots with their phase rotation, batteries, the nodes where forecasts apply). The
  optimisation problem is built once per ``PlanningSite``.
* :class:`PlanInputs` - everything that changes between solves, on a uniform grid of ``step_s``:
  prices, which slot holds a session when, how much energy it wants by when, forecasts, limit
  overrides (capacity frames, DSO), the battery's state of charge and the peak reached so far.
* :class:`PlanSolution` - the plan: per slot power (W) and current (A per phase), battery power,
  grid import/export, the objective and its parts, shortfalls, solver status and timing.

Units are in the names: ``_w`` watt, ``_wh`` watt-hour, ``_a`` ampere, ``_eur_kwh`` euro per kWh.
Grid phases are 0, 1, 2 (L1, L2, L3). Times are aware UTC datetimes.

:func:`planning_site_from` reads the controller's compiled :class:`controller.site.Site`;
:func:`synthetic_site` and :func:`synthetic_inputs` make a realistic plaza of any size fed with the
real data excerpts of :mod:`hil.data` (Dutch day-ahead prices, Dutch PV, a Dutch building load and
the Caltech ACN sessions) for tests and the benchmark.
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from controller.site import Site

__all__ = [
    "MpcError",
    "PlanBattery",
    "PlanCapacityFrame",
    "PlanConnector",
    "PlanInputs",
    "PlanNode",
    "PlanSolution",
    "PlanningSite",
    "capacity_frame_limits_w",
    "planning_site_from",
    "same_time_in_year",
    "synthetic_inputs",
    "synthetic_site",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_EFFICIENCY = 0.95
"""One-way battery efficiency when the site file gives none (a typical Li-ion inverter, ~90 % round trip)."""


class MpcError(Exception):
    """The optimiser cannot produce a plan: bad input (the message names the field) or a failed solve."""


# --------------------------------------------------------------------------------------------------
# The structure
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanNode:
    """A node of the electrical tree: a fuse/cable with a per-phase current limit, maybe a power limit."""

    id: str
    parent: int | None
    """Index of the parent node (parents come before children; the root, index 0, has None)."""
    limit_a: float
    """Per-phase current limit, A (already net of the controller's margin)."""
    power_limit_w: float | None = None
    """Static power limit (contract), W; None if the node has none."""
    connectors: tuple[int, ...] = ()
    """Every connector slot in this node's subtree."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanConnector:
    """A connector slot: fixed for the life of the problem, masked per step when no EV is there."""

    id: str
    node: int
    """The node that feeds it directly."""
    dc: bool
    rotation: tuple[int, ...]
    """Grid phases it loads: one entry for a single-phase AC connector, three for three-phase AC.

    A DC connector loads all three phases equally whatever this says.
    """
    max_power_w: float
    min_power_w: float = 0.0
    """Below this the charger pauses. Not modelled by the plan (a minimum above zero is non-convex)."""
    voltage_v: float = 230.0
    """Phase-to-neutral voltage used to turn watts into amperes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanBattery:
    id: str
    node: int
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0
    charge_efficiency: float = DEFAULT_EFFICIENCY
    """Energy stored per energy drawn from the grid while charging."""
    discharge_efficiency: float = DEFAULT_EFFICIENCY
    """Energy delivered to the grid per energy taken from storage while discharging."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCapacityFrame:
    """A power limit on a node during a daily local-time window (``end < start`` wraps midnight)."""

    node: int
    start_s_of_day: float
    end_s_of_day: float
    limit_w: float

    def active(self, s_of_day: float) -> bool:
        if self.start_s_of_day < self.end_s_of_day:
            return self.start_s_of_day <= s_of_day < self.end_s_of_day
        return s_of_day >= self.start_s_of_day or s_of_day < self.end_s_of_day


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanningSite:
    """The structure one optimisation problem is built for."""

    id: str
    voltage_v: float
    nodes: tuple[PlanNode, ...]
    connectors: tuple[PlanConnector, ...]
    batteries: tuple[PlanBattery, ...] = ()
    metered: tuple[int, ...] = (0,)
    """Nodes where forecasts of uncontrolled load and PV apply (one row each in the forecast arrays)."""
    power_limited: tuple[int, ...] = ()
    """Nodes that get a power constraint: those with a static limit and those capacity frames/DSO
    overrides may limit. Overriding the power of any other node is an error (it has no constraint)."""
    capacity_frames: tuple[PlanCapacityFrame, ...] = ()
    timezone: str = "Europe/Amsterdam"
    pv_peak_w: tuple[float, ...] = ()
    """Installed PV per metered node (used only to scale synthetic forecasts)."""
    building_peak_w: tuple[float, ...] = ()
    """Peak uncontrolled load per metered node (used only to scale synthetic forecasts)."""

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if n == 0:
            raise MpcError("PlanningSite: no nodes")
        if self.voltage_v <= 0.0 or not math.isfinite(self.voltage_v):
            raise MpcError(f"PlanningSite.voltage_v: {self.voltage_v} is not a positive voltage")
        for i, node in enumerate(self.nodes):
            if (i == 0) != (node.parent is None) or (node.parent is not None and not 0 <= node.parent < i):
                raise MpcError(f"PlanningSite.nodes[{i}] ({node.id}): parent must be an earlier node (root first)")
            if not (node.limit_a > 0.0 and math.isfinite(node.limit_a)):
                raise MpcError(f"PlanningSite.nodes[{i}] ({node.id}): limit_a {node.limit_a} is not positive")
            if node.power_limit_w is not None and not (node.power_limit_w >= 0.0 and math.isfinite(node.power_limit_w)):
                raise MpcError(f"PlanningSite.nodes[{i}] ({node.id}): power_limit_w {node.power_limit_w} is invalid")
        for i, conn in enumerate(self.connectors):
            where = f"PlanningSite.connectors[{i}] ({conn.id})"
            if not 0 <= conn.node < n:
                raise MpcError(f"{where}: node {conn.node} out of range")
            if len(conn.rotation) not in (1, 3) or len(set(conn.rotation)) != len(conn.rotation):
                raise MpcError(f"{where}: rotation {conn.rotation} is not 1 or 3 distinct phases")
            if any(p not in (0, 1, 2) for p in conn.rotation):
                raise MpcError(f"{where}: rotation {conn.rotation} names a phase outside 0..2")
            if not (conn.max_power_w > 0.0 and math.isfinite(conn.max_power_w)):
                raise MpcError(f"{where}: max_power_w {conn.max_power_w} is not positive")
            if not (conn.voltage_v > 0.0 and math.isfinite(conn.voltage_v)):
                raise MpcError(f"{where}: voltage_v {conn.voltage_v} is not positive")
        for i, bat in enumerate(self.batteries):
            where = f"PlanningSite.batteries[{i}] ({bat.id})"
            if not 0 <= bat.node < n:
                raise MpcError(f"{where}: node {bat.node} out of range")
            if not (bat.capacity_wh > 0 and bat.max_charge_w >= 0 and bat.max_discharge_w >= 0):
                raise MpcError(f"{where}: capacity and power must be positive")
            if not 0.0 <= bat.soc_min_pct <= bat.soc_max_pct <= 100.0:
                raise MpcError(f"{where}: need 0 <= soc_min_pct <= soc_max_pct <= 100")
            if not (0.0 < bat.charge_efficiency <= 1.0 and 0.0 < bat.discharge_efficiency <= 1.0):
                raise MpcError(f"{where}: efficiencies must be in (0, 1]")
        if len(set(self.metered)) != len(self.metered) or any(not 0 <= m < n for m in self.metered):
            raise MpcError(f"PlanningSite.metered: {self.metered} must be distinct node indices")
        if len(set(self.power_limited)) != len(self.power_limited) or any(not 0 <= m < n for m in self.power_limited):
            raise MpcError(f"PlanningSite.power_limited: {self.power_limited} must be distinct node indices")
        for i, node in enumerate(self.nodes):
            if node.power_limit_w is not None and i not in self.power_limited:
                raise MpcError(f"PlanningSite.nodes[{i}] ({node.id}) has a power limit but is not in power_limited")
        for frame in self.capacity_frames:
            if frame.node not in self.power_limited:
                raise MpcError(f"PlanningSite.capacity_frames: node {frame.node} is not in power_limited")
        for name in ("pv_peak_w", "building_peak_w"):
            values = getattr(self, name)
            if values and len(values) != len(self.metered):
                raise MpcError(f"PlanningSite.{name}: {len(values)} values for {len(self.metered)} metered nodes")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise MpcError(f"PlanningSite.timezone: unknown time zone {self.timezone!r}") from err

    def node_path(self, node: int) -> tuple[int, ...]:
        """Node indices from the root down to ``node``."""
        path = [node]
        parent = self.nodes[node].parent
        while parent is not None:
            path.append(parent)
            parent = self.nodes[parent].parent
        return tuple(reversed(path))


def planning_site_from(site: Site) -> PlanningSite:
    """The planning structure of a compiled controller site.

    Limits are taken net of the site's margins (``margins.current_a``, ``margins.power_kw``): the
    controller keeps those below every limit, so a plan that used them could not be followed.
    Attached building loads and PV define the metered nodes (the root if there are none).
    """
    margin_a = site.config.margins.current_a
    margin_w = site.config.margins.power_kw * 1000.0
    nodes = tuple(
        PlanNode(
            id=node.id,
            parent=node.parent,
            limit_a=max(node.rating_a - margin_a, 1e-3),
            power_limit_w=max(node.power_limit_w - margin_w, 0.0) if node.power_limit_w is not None else None,
            connectors=node.connectors,
        )
        for node in site.nodes
    )
    connectors = tuple(
        PlanConnector(
            id=conn.id,
            node=conn.node,
            dc=conn.dc,
            rotation=(0, 1, 2) if conn.dc else conn.rotation,
            max_power_w=conn.max_power_w if conn.dc else conn.max_current_a * site.voltage_v * len(conn.rotation),
            min_power_w=conn.min_power_w if conn.dc else conn.min_current_a * site.voltage_v * len(conn.rotation),
            voltage_v=site.voltage_v,
        )
        for conn in site.connectors
    )
    batteries = tuple(
        PlanBattery(
            id=b.id,
            node=b.node,
            capacity_wh=b.capacity_wh,
            max_charge_w=b.max_charge_w,
            max_discharge_w=b.max_discharge_w,
            soc_min_pct=b.soc_min_pct,
            soc_max_pct=b.soc_max_pct,
        )
        for b in site.batteries
    )
    metered = tuple(sorted({load.node for load in site.loads})) or (0,)
    pv_peak = {m: 0.0 for m in metered}
    building_peak = {m: 0.0 for m in metered}
    for pv in site.config.pv:
        pv_peak[site.node_index[pv.node]] += pv.peak_kw * 1000.0
    for load in site.loads:
        if not load.generator:
            fallback_a = site.nodes[load.node].rating_a * 0.25
            building_peak[load.node] += (load.max_current_a or fallback_a) * 3 * site.voltage_v
    frames = tuple(
        PlanCapacityFrame(
            node=f.node,
            start_s_of_day=f.start_s_of_day,
            end_s_of_day=f.end_s_of_day,
            limit_w=max(f.limit_w - margin_w, 0.0),
        )
        for f in site.capacity_frames
    )
    return PlanningSite(
        id=site.id,
        voltage_v=site.voltage_v,
        nodes=nodes,
        connectors=connectors,
        batteries=batteries,
        metered=metered,
        power_limited=tuple(sorted(site.power_limited)),
        capacity_frames=frames,
        timezone=str(site.timezone),
        pv_peak_w=tuple(pv_peak[m] for m in metered),
        building_peak_w=tuple(building_peak[m] for m in metered),
    )


GROUP_SHARE = 0.5
"""Synthetic plaza: a group's fuse carries this share of its connectors' worst-phase current ..."""
SUB_SHARE = 0.45
"""... a sub-board's ..."""
MAIN_SHARE = 0.4
"""... the main board's (of all connectors, balanced) ..."""
ROOT_SHARE = 0.35
"""... and the grid connection's."""
CONTRACT_SHARE = 0.3
"""Contracted power of the connection, as a share of the summed connector power."""
FRAME_SHARE = 0.2
"""The evening capacity frame (17:00-21:00 local), as a share of the summed connector power."""


def synthetic_site(n_connectors: int, seed: int = 0) -> PlanningSite:
    """A realistic plaza of ``n_connectors`` slots whose connection limits bind.

    Tree: grid connection -> main board -> sub-boards (up to 6 groups each) -> groups of 6-10
    connectors. Connectors: about 70 % three-phase 11 kW AC (rotated L1L2L3/L2L3L1/L3L1L2), 20 %
    single-phase 7.4 kW AC spread over the three grid phases, 10 % DC of 50, 75 or 150 kW, in their
    own groups. Groups are fused at 80 % of their connectors' current, sub-boards at 70 %, the main
    board at 65 % and the connection at 60 % (contract: 55 % of the summed connector power; a
    capacity frame lowers it to 45 % from 17:00 to 21:00 local). One battery on the main board; PV and
    the building at the connection.
    """
    if n_connectors < 1:
        raise MpcError(f"synthetic_site: n_connectors must be >= 1, got {n_connectors}")
    rng = np.random.default_rng(seed)
    voltage_v = 230.0
    n_dc = n_connectors // 10
    n_one = (n_connectors - n_dc) * 2 // 9
    kinds = ["dc"] * n_dc + ["ac1"] * n_one + ["ac3"] * (n_connectors - n_dc - n_one)
    ac_kinds = [k for k in kinds if k != "dc"]
    rng.shuffle(ac_kinds)

    def chunk(items: list[str]) -> list[list[str]]:
        groups: list[list[str]] = []
        i = 0
        while i < len(items):
            size = int(rng.integers(6, 11))
            if len(items) - (i + size) < 6:
                size = len(items) - i if len(items) - i <= 10 else size
            groups.append(items[i : i + size])
            i += size
        return groups

    groups = chunk(ac_kinds) + (chunk(["dc"] * n_dc) if n_dc else [])
    connectors: list[PlanConnector] = []
    group_members: list[list[int]] = []
    one_phase_next = 0
    for group in groups:
        members: list[int] = []
        for kind in group:
            idx = len(connectors)
            if kind == "dc":
                power_w = float(rng.choice([50_000.0, 75_000.0, 150_000.0]))
                rotation: tuple[int, ...] = (0, 1, 2)
            elif kind == "ac1":
                power_w = 32.0 * voltage_v
                rotation = (one_phase_next % 3,)
                one_phase_next += 1
            else:
                power_w = 16.0 * voltage_v * 3
                r = idx % 3
                rotation = (r, (r + 1) % 3, (r + 2) % 3)
            connectors.append(
                PlanConnector(
                    id=f"c{idx + 1:04d}",
                    node=-1,
                    dc=kind == "dc",
                    rotation=rotation,
                    max_power_w=power_w,
                    min_power_w=(5_000.0 if kind == "dc" else 6.0 * voltage_v * len(rotation)),
                    voltage_v=voltage_v,
                )
            )
            members.append(idx)
        group_members.append(members)

    def phase_current_a(members: list[int]) -> float:
        """Worst-phase current of these connectors at full power."""
        per_phase = np.zeros(3)
        for i in members:
            c = connectors[i]
            phases = (0, 1, 2) if c.dc else c.rotation
            for p in phases:
                per_phase[p] += c.max_power_w / (len(phases) * voltage_v)
        return float(per_phase.max())

    groups_per_sub = 6
    subs = [list(range(i, min(i + groups_per_sub, len(groups)))) for i in range(0, len(groups), groups_per_sub)]
    all_members = [i for m in group_members for i in m]
    total_w = sum(c.max_power_w for c in connectors)
    nodes: list[PlanNode] = []
    node_conns: list[list[int]] = []

    def add(node_id: str, parent: int | None, limit_a: float, power_w: float | None, conns: list[int]) -> int:
        nodes.append(PlanNode(id=node_id, parent=parent, limit_a=limit_a, power_limit_w=power_w))
        node_conns.append(conns)
        return len(nodes) - 1

    per_phase_a = total_w / (3 * voltage_v)
    root = add("grid", None, ROOT_SHARE * per_phase_a, CONTRACT_SHARE * total_w, all_members)
    main = add("main", root, MAIN_SHARE * per_phase_a, None, all_members)
    for si, sub_groups in enumerate(subs):
        sub_members = [i for g in sub_groups for i in group_members[g]]
        sub = add(f"sub-{si + 1}", main, SUB_SHARE * phase_current_a(sub_members), None, sub_members)
        for g in sub_groups:
            gi = add(f"group-{g + 1:02d}", sub, GROUP_SHARE * phase_current_a(group_members[g]), None, group_members[g])
            for c in group_members[g]:
                connectors[c] = replace(connectors[c], node=gi)
    nodes = [replace(node, connectors=tuple(sorted(node_conns[i]))) for i, node in enumerate(nodes)]
    battery = PlanBattery(
        id="bess",
        node=main,
        capacity_wh=max(0.15 * total_w, 20_000.0),
        max_charge_w=max(0.07 * total_w, 10_000.0),
        max_discharge_w=max(0.07 * total_w, 10_000.0),
        soc_min_pct=10.0,
        soc_max_pct=95.0,
    )
    frame = PlanCapacityFrame(
        node=root, start_s_of_day=17 * 3600.0, end_s_of_day=21 * 3600.0, limit_w=FRAME_SHARE * total_w
    )
    return PlanningSite(
        id=f"synthetic-{n_connectors}",
        voltage_v=voltage_v,
        nodes=tuple(nodes),
        connectors=tuple(connectors),
        batteries=(battery,),
        metered=(root,),
        power_limited=(root,),
        capacity_frames=(frame,),
        timezone="Europe/Amsterdam",
        pv_peak_w=(0.10 * total_w,),
        building_peak_w=(0.12 * total_w,),
    )


# --------------------------------------------------------------------------------------------------
# One solve's inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanInputs:
    """Everything that changes between solves, on a uniform grid of ``n_steps`` steps of ``step_s``.

    Array shapes: ``T`` steps, ``S`` connector slots, ``M`` metered nodes, ``N`` nodes, ``K`` batteries.
    """

    start: datetime
    """Start of step 0 (aware, UTC)."""
    step_s: float
    """Length of every step of the input grid, s (the problem may merge steps into blocks)."""
    price_import_eur_kwh: FloatArray
    """(T,) import price, EUR/kWh (day-ahead plus fixed adders; may be negative)."""
    price_export_eur_kwh: FloatArray
    """(T,) export price, EUR/kWh; must not exceed the import price in any step."""
    present: BoolArray
    """(S, T) an EV is plugged into the slot for the whole step and may charge."""
    session_max_power_w: FloatArray
    """(S,) the EV's own power limit (the slot's connector limit applies too)."""
    energy_wh: FloatArray
    """(S,) energy still wanted by departure, Wh."""
    departure_step: IntArray
    """(S,) first step at which the EV is gone; may lie beyond the horizon (then ``T`` or more)."""
    min_energy_wh: FloatArray
    """(S,) guaranteed minimum energy by departure (user profile, SPEC R8), Wh; <= energy_wh."""
    priority: FloatArray
    """(S,) weight of the slot's shortfall, 0..10 (1 = normal; 0 = nothing owed beyond the minimum)."""
    battery_soc_pct: FloatArray
    """(K,) state of charge at ``start``, %."""
    load_w: FloatArray
    """(M, T) forecast uncontrolled (building) load per metered node, W, balanced over the phases."""
    pv_w: FloatArray
    """(M, T) forecast PV production per metered node, W, balanced over the phases."""
    node_limit_a: FloatArray | None = None
    """(N, T) per-phase current limit override, A (``inf`` = none); the lower of it and the static limit holds."""
    node_power_limit_w: FloatArray | None = None
    """(N, T) power limit override (capacity frame, DSO), W (``inf`` = none); only on ``power_limited`` nodes."""
    peak_tariff_eur_kw: float = 0.0
    """Capacity tariff charged on the highest import of the billing period, EUR/kW."""
    peak_reached_w: float = 0.0
    """Highest import already reached this billing period, W: only import above it costs peak tariff."""
    peak_reserve_w: float = 0.0
    """Headroom held back under ``peak_reached_w`` for load the plan cannot see (EVs yet to arrive), W:
    import between ``peak_reached_w - this`` and ``peak_reached_w`` costs ``peak_reserve_eur_kw`` per kW
    (capped at ``peak_reached_w``)."""
    peak_reserve_eur_kw: float = 0.0
    """Price of using the reserve, EUR/kW, at most ``peak_tariff_eur_kw``."""
    slot_cost_eur_kwh: FloatArray | None = None
    """(S, T) cost per kWh delivered to the slot in the step on top of the energy price, EUR/kWh, e.g. the
    risk that the EV has left by then (``docs/mpc.md``); default: none."""
    battery_end_soc_pct: FloatArray | None = None
    """(K,) lowest SoC at the end of the horizon, %; default: the starting SoC (no net draining)."""

    @property
    def n_steps(self) -> int:
        return int(self.price_import_eur_kwh.shape[0])


def capacity_frame_limits_w(site: PlanningSite, start: datetime, n_steps: int, step_s: float) -> FloatArray:
    """(N, T) power limit of the site's capacity frames per step (``inf`` where none is active).

    A frame counts for a step if it is active at the step's start or anywhere inside the step (sampled
    each minute), so a frame starting mid-step lowers the whole step.
    """
    limits = np.full((len(site.nodes), n_steps), np.inf)
    if not site.capacity_frames:
        return limits
    tz = zoneinfo.ZoneInfo(site.timezone)
    samples = max(1, int(step_s // 60))
    for t in range(n_steps):
        for k in range(samples):
            local = (start + timedelta(seconds=t * step_s + k * step_s / samples)).astimezone(tz)
            s_of_day = local.hour * 3600 + local.minute * 60 + local.second
            for frame in site.capacity_frames:
                if frame.active(s_of_day):
                    limits[frame.node, t] = min(limits[frame.node, t], frame.limit_w)
    return limits


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanSolution:
    """A charge plan. Array shapes: ``S`` slots, ``B`` steps (maybe of uneven length), ``K`` batteries."""

    start: datetime
    step_s: FloatArray
    """(B,) length of each step, s."""
    connector_ids: tuple[str, ...]
    battery_ids: tuple[str, ...]
    power_w: FloatArray
    """(S, B) planned charging power per slot, W."""
    current_a: FloatArray
    """(S, B) per-phase current target per slot, A: what the plan topic carries (AC-side for DC)."""
    phase_current_a: FloatArray
    """(S, 3, B) the current each slot draws on grid phase L1, L2, L3, A."""
    battery_power_w: FloatArray
    """(K, B) battery power, W, + charging."""
    battery_soc_pct: FloatArray
    """(K, B) state of charge at the end of each step, %."""
    battery_soc_start_pct: FloatArray
    """(K,) state of charge the plan starts from, %."""
    grid_import_w: FloatArray
    """(B,) power drawn from the grid at the connection, W."""
    grid_export_w: FloatArray
    """(B,) power fed into the grid, W."""
    delivered_wh: FloatArray
    """(S,) energy planned for each slot over the horizon, Wh."""
    shortfall_wh: FloatArray
    """(S,) requested energy the plan does not deliver by departure, Wh (includes ``unavoidable_wh``)."""
    unavoidable_wh: FloatArray
    """(S,) the part of the request no plan could deliver: more than the EV can take while it is there."""
    min_shortfall_wh: FloatArray
    """(S,) guaranteed minimum energy the plan does not deliver by departure, Wh (0 whenever feasible)."""
    limit_violation_w: FloatArray
    """(N, B) how far forecast uncontrolled load forces a node over its limits, W (normally all 0)."""
    objective_eur: float
    objective_split: dict[str, float] = field(default_factory=dict)
    """``energy_cost``, ``peak_cost`` (with the reserve used), ``slot_cost``, ``shortfall_penalty``,
    ``regulariser`` (EUR)."""
    status: str = ""
    solve_s: float = 0.0
    """Wall time of ``solve`` (parameters, solver, unpacking), s."""
    solver_s: float = 0.0
    """Time OSQP itself reports, s."""
    iterations: int = 0

    base_step_s: float = 0.0
    """Step of the input grid the blocks were made of, s (0: unknown)."""
    base_present: BoolArray | None = None
    """(S, T) where each slot could charge on the input grid (lets :meth:`uniform` skip absent steps)."""

    @property
    def n_steps(self) -> int:
        return int(self.step_s.shape[0])

    def step_starts_s(self) -> FloatArray:
        """(B,) offset of each step's start from ``start``, s."""
        return np.concatenate(([0.0], np.cumsum(self.step_s)[:-1]))

    def uniform(self, step_s: float) -> PlanSolution:
        """The same plan on a uniform grid of ``step_s`` for the plan message.

        Every block must be a whole number of ``step_s`` long. On the input grid (``step_s ==
        base_step_s``) a block's energy goes into the steps where the EV is there, at the block's
        average power scaled up (never above the slot's bound, which was the average of those steps);
        otherwise values repeat. The SoC is interpolated linearly within a block.
        """
        repeats = self.step_s / step_s
        reps = np.round(repeats).astype(np.int64)
        if np.any(np.abs(repeats - reps) > 1e-9) or np.any(reps < 1):
            raise MpcError(
                f"PlanSolution.uniform: block lengths {sorted(set(self.step_s.tolist()))} s "
                f"are not whole multiples of {step_s} s"
            )
        if np.all(reps == 1):
            return self
        idx = np.repeat(np.arange(self.n_steps), reps)
        scale = np.ones((self.power_w.shape[0], idx.shape[0]))
        if self.base_present is not None and abs(step_s - self.base_step_s) < 1e-9:
            present = self.base_present.astype(np.float64)
            starts = np.concatenate(([0], np.cumsum(reps)[:-1]))
            counts = np.add.reduceat(present, starts, axis=1)[:, idx]
            scale = np.where(counts > 0, present * reps[idx][None, :] / np.maximum(counts, 1.0), 0.0)
        frac = np.concatenate([(np.arange(r) + 1.0) / r for r in reps])
        soc_before = np.concatenate((self.battery_soc_start_pct[:, None], self.battery_soc_pct[:, :-1]), axis=1)
        soc = soc_before[:, idx] + (self.battery_soc_pct[:, idx] - soc_before[:, idx]) * frac[None, :]
        return replace(
            self,
            step_s=np.full(idx.shape[0], float(step_s)),
            power_w=self.power_w[:, idx] * scale,
            current_a=self.current_a[:, idx] * scale,
            phase_current_a=self.phase_current_a[:, :, idx] * scale[:, None, :],
            battery_power_w=self.battery_power_w[:, idx],
            battery_soc_pct=soc,
            grid_import_w=self.grid_import_w[idx],
            grid_export_w=self.grid_export_w[idx],
            limit_violation_w=self.limit_violation_w[:, idx],
        )


# --------------------------------------------------------------------------------------------------
# Synthetic inputs from the real data excerpts
# --------------------------------------------------------------------------------------------------

IMPORT_ADDER_EUR_KWH = 0.03
"""Supplier margin and volumetric grid fee added to the day-ahead price for import (taxes left out)."""
EXPORT_DEDUCTION_EUR_KWH = 0.01
"""Deducted from the day-ahead price for export (the supplier's feed-in fee)."""
SYNTHETIC_PEAK_TARIFF_EUR_KW = 3.0
"""Dutch-style monthly capacity (kW max) tariff, EUR/kW: charged on the new peak of the horizon."""
PEAK_REACHED_SHARE = 0.5
"""Peak import already reached this billing period, as a share of the connection's contracted power."""
OCCUPANCY = 0.85
"""Share of slots that get a session on a given day."""


@dataclass(frozen=True, slots=True)
class _Series:
    t_s: FloatArray
    values: FloatArray


@functools.lru_cache(maxsize=1)
def _prices() -> _Series:
    from hil.data import load_prices

    ts = load_prices()
    return _Series(np.asarray(ts.t_s), np.asarray(ts.values))


@functools.lru_cache(maxsize=1)
def _pv() -> _Series:
    from hil.data import load_pv_capacity_factor

    ts = load_pv_capacity_factor()
    return _Series(np.asarray(ts.t_s), np.asarray(ts.values))


@functools.lru_cache(maxsize=1)
def _site_load() -> _Series:
    from hil.data import load_site_load_mw

    ts = load_site_load_mw()
    return _Series(np.asarray(ts.t_s), np.asarray(ts.values))


@dataclass(frozen=True, slots=True)
class _AcnDay:
    arrival_s_of_day: float
    duration_s: float
    requested_kwh: float
    delivered_kwh: float


@functools.lru_cache(maxsize=1)
def _acn() -> tuple[_AcnDay, ...]:
    from hil.data import load_acn_sessions

    out: list[_AcnDay] = []
    for s in load_acn_sessions():
        local = s.arrival  # the file's own offset: Caltech local time
        duration = (s.departure - s.arrival).total_seconds()
        if duration < 900.0 or duration > 36 * 3600.0 or s.delivered_energy_kwh <= 0.1:
            continue
        out.append(
            _AcnDay(
                arrival_s_of_day=local.hour * 3600.0 + local.minute * 60.0 + local.second,
                duration_s=duration,
                requested_kwh=s.requested_energy_kwh,
                delivered_kwh=s.delivered_energy_kwh,
            )
        )
    if not out:
        raise MpcError("ACN excerpt holds no usable session")
    return tuple(out)


def same_time_in_year(t: datetime, year: int) -> datetime:
    """The same day-of-year and UTC time of day in ``year``: how a date outside a data excerpt is mapped into it."""
    doy = min(t.timetuple().tm_yday, 365)
    return datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=doy - 1, hours=t.hour, minutes=t.minute, seconds=t.second)


def _step_values(series: _Series, t_s: FloatArray) -> FloatArray:
    """Value of the interval containing each time (last sample at or before it, clamped)."""
    i = np.searchsorted(series.t_s, t_s, side="right") - 1
    return series.values[np.clip(i, 0, len(series.values) - 1)]


def _interp(series: _Series, t_s: FloatArray) -> FloatArray:
    return np.interp(t_s, series.t_s, series.values)


def synthetic_inputs(
    site: PlanningSite,
    start: datetime,
    seed: int,
    *,
    horizon_h: float = 24.0,
    step_min: int = 15,
    demand_scale: float = 1.0,
) -> PlanInputs:
    """Inputs for ``site`` from ``start`` built from real data.

    * prices: Dutch day-ahead 2023 at the same day-of-year and hour (``hil.data.load_prices``), plus
      :data:`IMPORT_ADDER_EUR_KWH` for import, minus :data:`EXPORT_DEDUCTION_EUR_KWH` for export;
    * PV: the Dutch 2019 capacity factor at the same day-of-year and hour times ``site.pv_peak_w``;
    * building load: the OpenSTEF load (Oct 2020 - Jan 2021) at the same weekday and time of day of
      a week chosen by ``seed``, scaled so its excerpt maximum is ``site.building_peak_w``;
    * sessions: Caltech ACN sessions (arrival time of day, duration, energy) drawn per slot with
      ``seed``; each occupied slot gets one session on the start's local day, replaced by one on the
      next day if it has left before ``start``. DC slots keep the arrival but charge for 20-90 min.
      Energy wanted is the driver's request, capped at what the EV could take alone in its stay and,
      for a session already under way, reduced in proportion to the time already spent.

    ``demand_scale`` multiplies every session's request (still capped at what the EV can take): a
    stress case, not data. The Caltech requests are small (median 12 kWh over a 6 h stay), so at
    1.0 the fuses of the synthetic plaza rarely bind and the previous peak is what holds import down.

    The same ``seed`` and a ``start`` one step later give the same sessions one step earlier, as a
    rolling MPC sees them.
    """
    if not (math.isfinite(demand_scale) and demand_scale >= 0.0):
        raise MpcError(f"synthetic_inputs: demand_scale {demand_scale} must be finite and >= 0")
    if start.tzinfo is None:
        raise MpcError("synthetic_inputs: start must be an aware datetime")
    start = start.astimezone(UTC)
    step_s = step_min * 60.0
    n = round(horizon_h * 3600.0 / step_s)
    t0 = start.timestamp()
    t_start: FloatArray = t0 + np.arange(n, dtype=np.float64) * step_s

    doy_offset = same_time_in_year(start, 2023).timestamp() - t0
    price_mwh = _step_values(_prices(), t_start + doy_offset)
    price_import = price_mwh / 1000.0 + IMPORT_ADDER_EUR_KWH
    price_export = price_mwh / 1000.0 - EXPORT_DEDUCTION_EUR_KWH

    m = len(site.metered)
    pv_offset = same_time_in_year(start, 2019).timestamp() - t0
    pv_cf = np.clip(_interp(_pv(), t_start + (step_s / 2 + pv_offset)), 0.0, 1.0)
    pv_peak = np.asarray(site.pv_peak_w or (0.0,) * m)
    pv_w = pv_peak[:, None] * pv_cf[None, :]

    load = _site_load()
    first = datetime.fromtimestamp(load.t_s[0], UTC)
    monday = (first + timedelta(days=(7 - first.weekday()) % 7)).replace(hour=0, minute=0, second=0)
    n_weeks = int((load.t_s[-1] - monday.timestamp()) // (7 * 86400)) - 1
    week = monday.timestamp() + (seed % max(n_weeks, 1)) * 7 * 86400.0
    s_of_week = (t_start - 4 * 86400.0) % (7 * 86400.0)  # 1970-01-05, four days in, was a Monday
    load_shape = _interp(load, week + s_of_week) / float(load.values.max())
    building_peak = np.asarray(site.building_peak_w or (0.0,) * m)
    load_w = building_peak[:, None] * load_shape[None, :]

    present, max_w, energy_wh, departure, min_wh, priority = _sessions(site, start, seed, n, step_s, demand_scale)
    k = len(site.batteries)
    rng = np.random.default_rng([seed, 7])
    soc = rng.uniform(35.0, 65.0, size=k) if k else np.zeros(0)
    frame_w = capacity_frame_limits_w(site, start, n, step_s)
    root_limit = site.nodes[0].power_limit_w or float(sum(c.max_power_w for c in site.connectors))
    return PlanInputs(
        start=start,
        step_s=step_s,
        price_import_eur_kwh=price_import,
        price_export_eur_kwh=price_export,
        present=present,
        session_max_power_w=max_w,
        energy_wh=energy_wh,
        departure_step=departure,
        min_energy_wh=min_wh,
        priority=priority,
        battery_soc_pct=soc,
        load_w=load_w,
        pv_w=pv_w,
        node_power_limit_w=frame_w if np.isfinite(frame_w).any() else None,
        peak_tariff_eur_kw=SYNTHETIC_PEAK_TARIFF_EUR_KW,
        peak_reached_w=PEAK_REACHED_SHARE * root_limit,
    )


def _sessions(
    site: PlanningSite, start: datetime, seed: int, n: int, step_s: float, demand_scale: float
) -> tuple[BoolArray, FloatArray, FloatArray, IntArray, FloatArray, FloatArray]:
    pool = _acn()
    s_count = len(site.connectors)
    # All random draws are made up front, in a fixed order, so they do not depend on ``start``.
    rng = np.random.default_rng([seed, 1])
    occupied = rng.random((s_count, 2)) < OCCUPANCY
    pick = rng.integers(0, len(pool), size=(s_count, 2))
    ev_share = rng.choice([1.0, 1.0, 0.67, 0.34], size=s_count)
    dc_minutes = rng.uniform(20.0, 90.0, size=(s_count, 2))
    guaranteed = rng.random(s_count) < 0.4
    prio = rng.choice([1.0, 1.0, 1.0, 1.0, 3.0, 0.5], size=s_count)

    tz = zoneinfo.ZoneInfo(site.timezone)
    local_day: date = start.astimezone(tz).date()
    t0 = start.timestamp()
    present = np.zeros((s_count, n), dtype=np.bool_)
    max_w = np.zeros(s_count)
    energy = np.zeros(s_count)
    departure = np.zeros(s_count, dtype=np.int64)
    min_wh = np.zeros(s_count)
    for s, conn in enumerate(site.connectors):
        ev_w = conn.max_power_w * (1.0 if conn.dc else ev_share[s])
        max_w[s] = ev_w
        for d in (0, 1):
            if not occupied[s, d]:
                continue
            sess = pool[int(pick[s, d])]
            day = datetime.combine(local_day + timedelta(days=d), datetime.min.time(), tzinfo=tz)
            arrive = (day + timedelta(seconds=sess.arrival_s_of_day)).timestamp()
            stay = dc_minutes[s, d] * 60.0 if conn.dc else sess.duration_s
            leave = arrive + stay
            if leave <= t0 + step_s:
                continue
            wanted_wh = min(sess.requested_kwh * 1000.0 * demand_scale, ev_w * stay / 3600.0 * 0.9)
            if conn.dc:
                wanted_wh = min(max(sess.delivered_kwh, 15.0) * 1000.0 * demand_scale, ev_w * stay / 3600.0 * 0.8)
            done = max(0.0, min(1.0, (t0 - arrive) / stay))
            first = max(0, math.ceil((arrive - t0) / step_s - 1e-9))
            last = math.floor((leave - t0) / step_s + 1e-9)
            if first >= n or last <= first:
                if first >= n:
                    break
                continue
            present[s, first : min(last, n)] = True
            departure[s] = last
            energy[s] = wanted_wh * (1.0 - done)
            min_wh[s] = min(10_000.0, 0.5 * energy[s]) if guaranteed[s] else 0.0
            break
    return present, max_w, energy, departure, min_wh, prio
