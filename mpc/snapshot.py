"""A site snapshot (``plaza/v1/snapshot``) as the optimiser reads it: checked, then a problem and its inputs.

``parse_snapshot`` checks an inbound message from the cheapest test to the dearest: size, topic, strict
JSON, the ``schema`` field, the JSON Schema, that the message names the site and controller of its topic,
and that ``structure_hash`` is the hash of its ``structure`` (so a problem cached under that hash is the
right one). ``planning_site`` turns the structure into a :class:`~mpc.model.PlanningSite` (as
:func:`mpc.model.planning_site_from` does from the compiled site: the snapshot's limits are already net
of the site's margins). ``plan_inputs`` turns the state into :class:`~mpc.model.PlanInputs` on the step
grid (``valid_from`` = the snapshot's time rounded down to a step): sessions with their energy and
departure (defaults where the site does not know them), battery SoC, the uncontrolled load held at its
current value (persistence), DSO stage and remote limits as limit overrides, prices from the snapshot or
a day-ahead series. ``plan_message`` makes the ``plaza/v1/plan`` of a solution. Semantic nonsense raises
:class:`~mpc.model.MpcError` naming the field. The interface is in ``docs/optimizer.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
import numpy as np

from drivers.mqtt.messages import PREFIX, VERSION, iso, json_object, message_id, structure_hash, validator
from mpc.forecast import SeriesLike, price_curve
from mpc.model import (
    DEFAULT_EFFICIENCY,
    FloatArray,
    MpcError,
    PlanBattery,
    PlanCapacityFrame,
    PlanConnector,
    PlanInputs,
    PlanningSite,
    PlanNode,
    PlanSolution,
    capacity_frame_limits_w,
    same_time_in_year,
)

SNAPSHOT_KIND = "snapshot"


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    id: str
    site: str
    controller: str
    created_ts: float
    reason: str
    structure_hash: str
    structure: Mapping[str, Any]
    state: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """Which controller it comes from: a newer snapshot of the same key supersedes this one."""
        return (self.site, self.controller)


@dataclass(frozen=True, slots=True)
class Refused:
    """A snapshot that cannot be planned for, and why; ``site``/``controller`` from the topic for the ack."""

    reason: str
    site: str
    controller: str
    id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSettings:
    """How snapshots become plans (the optimiser config's planning part)."""

    horizon_h: float = 24.0
    step_min: int = 15
    peak_tariff_eur_kw: float = 0.0
    peak_reserve_share: float = 0.0
    """The top this share of the month's peak is held back for EVs yet to arrive (``PlanInputs.peak_reserve_w``)."""
    peak_reserve_eur_kw: float | None = None
    """Price of using that reserve, EUR/kW; None: the peak tariff."""
    import_adder_eur_kwh: float = 0.03
    export_deduction_eur_kwh: float = 0.01
    default_energy_wh: float = 20_000.0
    """Energy a session is assumed to want when the site does not know its target."""
    default_dwell_h: float = 4.0
    """Stay (from the session's start) assumed when the site does not know its departure."""
    use_snapshot_prices: bool = True
    """Prices the snapshot carries (the site's last ``cmd/prices``) take precedence over the series."""

    @property
    def step_s(self) -> int:
        return self.step_min * 60

    @property
    def n_steps(self) -> int:
        return round(self.horizon_h * 3600.0 / self.step_s)


def topic_ids(topic: str) -> tuple[str, str] | None:
    """(site, controller) of ``plaza/v1/{site}/{controller}/snapshot``, None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] != SNAPSHOT_KIND or not all(parts[2:4]):
        return None
    return parts[2], parts[3]


def parse_snapshot(topic: str, payload: bytes, *, max_payload_bytes: int) -> Snapshot | Refused | None:
    """One inbound snapshot, checked; None when the topic is not a snapshot topic at all (nobody to answer)."""
    ids = topic_ids(topic)
    if ids is None:
        return None
    site, controller = ids

    def refuse(reason: str, snapshot_id: str | None = None) -> Refused:
        return Refused(reason, site, controller, snapshot_id)

    if len(payload) > max_payload_bytes:
        return refuse(f"payload too large: {len(payload)} bytes > {max_payload_bytes}")
    data = json_object(payload)
    if isinstance(data, str):
        return refuse(data)
    snapshot_id = message_id(data)
    schema = data.get("schema")
    expected = f"{PREFIX}/{SNAPSHOT_KIND}"
    if schema != expected:
        parts = schema.split("/") if isinstance(schema, str) else []
        if len(parts) >= 2 and parts[0] == "plaza" and parts[1] != VERSION:
            return refuse(f"unsupported schema version {schema!r} (this optimiser speaks {PREFIX})", snapshot_id)
        return refuse(f"wrong or missing schema {schema!r} (expected {expected!r})", snapshot_id)
    error = jsonschema.exceptions.best_match(validator(SNAPSHOT_KIND).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return refuse(f"schema-invalid at {where}: {error.message[:300]}", snapshot_id)
    if (data["site"], data["controller"]) != ids:
        named = f"{data['site']}/{data['controller']}"
        return refuse(f"snapshot of {named} on the topic of {site}/{controller}", snapshot_id)
    if structure_hash(site, data["structure"]) != data["structure_hash"]:
        return refuse("structure_hash does not match the structure", snapshot_id)
    try:
        created = _ts(data["created"], "created")
    except MpcError as err:
        return refuse(str(err), snapshot_id)
    return Snapshot(
        id=data["id"],
        site=site,
        controller=controller,
        created_ts=created,
        reason=data["reason"],
        structure_hash=data["structure_hash"],
        structure=data["structure"],
        state=data["state"],
    )


def _ts(text: str, where: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:  # the schema's pattern lets through e.g. month 13
        raise MpcError(f"{where}: {text!r} is not a valid date-time: {err}") from None
    return moment.timestamp()


def _opt_ts(text: str | None, where: str) -> float | None:
    return None if text is None else _ts(text, where)


# -- structure ---------------------------------------------------------------------------------------


def planning_site(snapshot: Snapshot) -> PlanningSite:
    """The structure block as the problem's :class:`PlanningSite` (MpcError on nonsense)."""
    st = snapshot.structure
    voltage_v = float(st["voltage_v"])
    node_index: dict[str, int] = {}
    parents: list[int | None] = []
    for i, node in enumerate(st["nodes"]):
        if node["id"] in node_index:
            raise MpcError(f"structure.nodes[{i}]: duplicate node {node['id']!r}")
        parent = node["parent"]
        if (parent is None) != (i == 0) or (parent is not None and parent not in node_index):
            raise MpcError(f"structure.nodes[{i}] ({node['id']}): parent must be an earlier node (root first, only it)")
        parents.append(node_index[parent] if parent is not None else None)
        node_index[node["id"]] = i
    connector_ids: set[str] = set()
    connectors: list[PlanConnector] = []
    for i, conn in enumerate(st["connectors"]):
        if conn["id"] in connector_ids:
            raise MpcError(f"structure.connectors[{i}]: duplicate connector {conn['id']!r}")
        connector_ids.add(conn["id"])
        node = _index(node_index, conn["node"], f"structure.connectors[{i}].node")
        rotation = (0, 1, 2) if conn["dc"] else tuple(int(p) for p in conn["rotation"])
        phases = len(rotation)
        connectors.append(
            PlanConnector(
                id=conn["id"],
                node=node,
                dc=bool(conn["dc"]),
                rotation=rotation,
                max_power_w=float(conn["max_power_w"]) if conn["dc"] else conn["max_current_a"] * voltage_v * phases,
                min_power_w=float(conn["min_power_w"]) if conn["dc"] else conn["min_current_a"] * voltage_v * phases,
                voltage_v=float(conn["voltage_v"]),
            )
        )
    subtree: list[list[int]] = [[] for _ in parents]
    for s, conn in enumerate(connectors):
        walk: int | None = conn.node
        while walk is not None:
            subtree[walk].append(s)
            walk = parents[walk]
    nodes = tuple(
        PlanNode(
            id=node["id"],
            parent=parents[i],
            limit_a=float(node["limit_a"]),
            power_limit_w=None if node["power_limit_w"] is None else float(node["power_limit_w"]),
            connectors=tuple(subtree[i]),
        )
        for i, node in enumerate(st["nodes"])
    )
    batteries = tuple(
        PlanBattery(
            id=b["id"],
            node=_index(node_index, b["node"], f"structure.batteries[{i}].node"),
            capacity_wh=float(b["capacity_wh"]),
            max_charge_w=float(b["max_charge_w"]),
            max_discharge_w=float(b["max_discharge_w"]),
            soc_min_pct=float(b["soc_min_pct"]),
            soc_max_pct=float(b["soc_max_pct"]),
            charge_efficiency=DEFAULT_EFFICIENCY if b["charge_efficiency"] is None else float(b["charge_efficiency"]),
            discharge_efficiency=(
                DEFAULT_EFFICIENCY if b["discharge_efficiency"] is None else float(b["discharge_efficiency"])
            ),
        )
        for i, b in enumerate(st["batteries"])
    )
    frames = tuple(
        PlanCapacityFrame(
            node=_index(node_index, f["node"], f"structure.capacity_frames[{i}].node"),
            start_s_of_day=float(f["start_s_of_day"]),
            end_s_of_day=float(f["end_s_of_day"]),
            limit_w=float(f["limit_w"]),
        )
        for i, f in enumerate(st["capacity_frames"])
    )
    metered = tuple(i for i, node in enumerate(st["nodes"]) if node["metered"]) or (0,)
    return PlanningSite(
        id=snapshot.site,
        voltage_v=voltage_v,
        nodes=nodes,
        connectors=tuple(connectors),
        batteries=batteries,
        metered=metered,
        power_limited=tuple(i for i, node in enumerate(st["nodes"]) if node["power_limited"]),
        capacity_frames=frames,
        timezone=str(st["timezone"]),
    )


def _index(index: Mapping[str, int], name: str, where: str) -> int:
    try:
        return index[name]
    except KeyError:
        raise MpcError(f"{where}: unknown node {name!r}") from None


# -- state -------------------------------------------------------------------------------------------


def grid_start(created_ts: float, step_s: int) -> datetime:
    """The plan's ``valid_from``: the snapshot's time rounded down to the step grid (UTC epoch)."""
    return datetime.fromtimestamp(math.floor(created_ts / step_s) * step_s, UTC)


def plan_inputs(
    snapshot: Snapshot, site: PlanningSite, settings: PlanSettings, prices: SeriesLike | None
) -> PlanInputs:
    """The state block as one solve's inputs; ``prices``: a day-ahead series (EUR/MWh) when the snapshot has none."""
    step_s, n = settings.step_s, settings.n_steps
    start = grid_start(snapshot.created_ts, step_s)
    start_ts = start.timestamp()
    state = snapshot.state
    conn_index = {c.id: s for s, c in enumerate(site.connectors)}
    node_index = {node.id: i for i, node in enumerate(site.nodes)}
    _known(state["connectors"], conn_index, "state.connectors")
    _known(state["nodes"], node_index, "state.nodes")
    _known(state["batteries"], {b.id: 0 for b in site.batteries}, "state.batteries")

    s_n = len(site.connectors)
    present = np.zeros((s_n, n), dtype=np.bool_)
    max_w = np.array([c.max_power_w for c in site.connectors], dtype=np.float64)
    energy = np.zeros(s_n)
    departure = np.zeros(s_n, dtype=np.int64)
    min_wh = np.zeros(s_n)
    priority = np.ones(s_n)
    for conn_id, session in state["connectors"].items():
        if session is None:
            continue
        s = conn_index[conn_id]
        where = f"state.connectors.{conn_id}"
        started = _ts(session["started"], f"{where}.started")
        leave = _opt_ts(session["departure"], f"{where}.departure")
        if leave is None:
            leave = started + settings.default_dwell_h * 3600.0
        # Still plugged in after its announced departure: plan at least the step in force.
        steps = max(1, math.floor((max(leave, snapshot.created_ts) - start_ts) / step_s + 1e-9))
        present[s, : min(steps, n)] = True
        departure[s] = steps
        delivered = float(session["energy_wh"])
        target = session["energy_target_wh"]
        energy[s] = max(0.0, (settings.default_energy_wh if target is None else float(target)) - delivered)
        min_wh[s] = min(energy[s], max(0.0, float(session["min_energy_wh"]) - delivered))
        priority[s] = float(session["priority"])
        if session["max_power_w"] is not None:
            max_w[s] = min(max_w[s], float(session["max_power_w"]))

    soc = np.array(
        [
            b.soc_min_pct if (v := state["batteries"].get(b.id, {}).get("soc_pct")) is None else float(v)
            for b in site.batteries
        ]
    )
    load = _own_load_w(site, state["nodes"], node_index)
    node_limit_a, node_power_w = _limit_overrides(snapshot, site, start_ts, step_s, n)
    price = _prices_eur_kwh(snapshot, settings, prices, start, n)
    peak = state["peak_import_w"]
    peak_w = 0.0 if peak is None else float(peak)
    return PlanInputs(
        start=start,
        step_s=float(step_s),
        price_import_eur_kwh=price + settings.import_adder_eur_kwh,
        price_export_eur_kwh=price - settings.export_deduction_eur_kwh,
        present=present,
        session_max_power_w=max_w,
        energy_wh=energy,
        departure_step=departure,
        min_energy_wh=min_wh,
        priority=priority,
        battery_soc_pct=soc,
        load_w=np.repeat(load[:, None], n, axis=1),
        pv_w=np.zeros((len(site.metered), n)),
        node_limit_a=node_limit_a,
        node_power_limit_w=node_power_w,
        peak_tariff_eur_kw=settings.peak_tariff_eur_kw,
        peak_reached_w=peak_w,
        peak_reserve_w=settings.peak_reserve_share * peak_w,
        peak_reserve_eur_kw=min(
            settings.peak_tariff_eur_kw if settings.peak_reserve_eur_kw is None else settings.peak_reserve_eur_kw,
            settings.peak_tariff_eur_kw,
        ),
    )


def _known(entries: Mapping[str, Any], known: Mapping[str, int], where: str) -> None:
    for name in entries:
        if name not in known:
            raise MpcError(f"{where}: {name!r} is not in the structure")


def _own_load_w(site: PlanningSite, nodes: Mapping[str, Any], node_index: Mapping[str, int]) -> FloatArray:
    """(M,) uncontrolled load attached at each metered node, W.

    The site reports each metered node's subtree (its meter less what the controller drives); the
    problem adds a metered node's load to every node above it, so each one keeps only what its metered
    descendants do not already carry. Generation gets no credit: the controller gives none either.
    """
    subtree = np.zeros(len(site.nodes))
    for name, entry in nodes.items():
        value = entry["uncontrolled_w"]
        subtree[node_index[name]] = 0.0 if value is None else float(value)
    metered = set(site.metered)
    own = subtree.copy()
    for m in site.metered:
        parent = site.nodes[m].parent
        while parent is not None and parent not in metered:
            parent = site.nodes[parent].parent
        if parent is not None:
            own[parent] -= subtree[m]
    return np.maximum(own[list(site.metered)], 0.0)


def _steps_between(start_ts: float, step_s: int, n: int, lo: float | None, hi: float) -> slice:
    """The steps that overlap [lo, hi)."""
    first = 0 if lo is None else max(0, math.floor((lo - start_ts) / step_s))
    last = min(n, max(0, math.ceil((hi - start_ts) / step_s)))
    return slice(first, max(first, last))


def _limit_overrides(
    snapshot: Snapshot, site: PlanningSite, start_ts: float, step_s: int, n: int
) -> tuple[FloatArray | None, FloatArray | None]:
    """(N, T) current and power limit overrides: the DSO stage now, remote DSO limits, capacity frames and blocks."""
    st, state = snapshot.structure, snapshot.state
    node_index = {node.id: i for i, node in enumerate(site.nodes)}
    limit_a = np.full((len(site.nodes), n), np.inf)
    power_w = capacity_frame_limits_w(site, datetime.fromtimestamp(start_ts, UTC), n, float(step_s))
    dso_node = node_index.get(st["dso_node"], 0) if st["dso_node"] is not None else 0

    def scale(node: int, pct: float, steps: slice) -> None:
        limit_a[node, steps] = np.minimum(limit_a[node, steps], site.nodes[node].limit_a * pct / 100.0)
        own_w = site.nodes[node].power_limit_w
        if own_w is not None and node in site.power_limited:
            power_w[node, steps] = np.minimum(power_w[node, steps], own_w * pct / 100.0)

    # The stage in force now is assumed to hold: a later release only makes the plan cautious.
    if float(state["dso_pct"]) < 100.0:
        scale(dso_node, float(state["dso_pct"]), slice(0, n))
    limits = state["remote_limits"]
    for i, d in enumerate(limits["dso"]):
        where = f"state.remote_limits.dso[{i}]"
        node = dso_node if d["node"] is None else _index(node_index, d["node"], f"{where}.node")
        lo, hi = _opt_ts(d["valid_from"], f"{where}.valid_from"), _ts(d["valid_to"], f"{where}.valid_to")
        scale(node, float(d["limit_pct"]), _steps_between(start_ts, step_s, n, lo, hi))
    for i, b in enumerate(limits["capacity"]):
        where = f"state.remote_limits.capacity[{i}]"
        node = _index(node_index, b["node"], f"{where}.node")
        steps = _steps_between(start_ts, step_s, n, _ts(b["start"], f"{where}.start"), _ts(b["end"], f"{where}.end"))
        if node in site.power_limited:
            power_w[node, steps] = np.minimum(power_w[node, steps], float(b["limit_w"]))
        else:
            # A node without a power constraint in the problem: the same limit as balanced current.
            as_a = float(b["limit_w"]) / (3.0 * site.voltage_v)
            limit_a[node, steps] = np.minimum(limit_a[node, steps], as_a)
    return (
        limit_a if np.isfinite(limit_a).any() else None,
        power_w if np.isfinite(power_w).any() else None,
    )


@dataclass(frozen=True, slots=True)
class _Series:
    t_s: Sequence[float]
    values: Sequence[float]


def _prices_eur_kwh(
    snapshot: Snapshot, settings: PlanSettings, series: SeriesLike | None, start: datetime, n: int
) -> FloatArray:
    step_s = settings.step_s
    carried = snapshot.state["prices"]
    if settings.use_snapshot_prices and carried is not None:
        first = _ts(carried["start"], "state.prices.start")
        price_step = int(carried["step_s"])
        values = [float(v) for v in carried["prices_eur_mwh"]]
        own = _Series([first + i * price_step for i in range(len(values))], values)
        try:
            return price_curve(own, start, step_s, n, price_step_s=price_step)[0]
        except ValueError:
            pass  # none of them within a week of the horizon: the series decides
    if series is None:
        return np.zeros(n)
    t_first, t_last = float(series.t_s[0]), float(series.t_s[-1])
    moment = start
    if not t_first <= start.timestamp() <= t_last - n * step_s:
        moment = same_time_in_year(start, datetime.fromtimestamp(t_first, UTC).year)
    try:
        return price_curve(series, moment, step_s, n)[0]
    except ValueError as err:
        raise MpcError(f"prices: {err}") from None


# -- the plan ----------------------------------------------------------------------------------------


def plan_message(
    snapshot: Snapshot, inputs: PlanInputs, solution: PlanSolution, *, plan_id: str, created_ts: float
) -> dict[str, Any]:
    """The ``plaza/v1/plan`` answering ``snapshot``: per-phase A where a session is, battery W, an import cap.

    The import cap is the peak the plan plans around (the billing period's peak or the plan's own
    highest import, whichever is higher): a ceiling for the controller, never a floor.
    """
    step_s = int(inputs.step_s)
    plan = solution.uniform(float(step_s))
    n = inputs.n_steps
    connectors = {
        conn_id: [round(float(plan.current_a[s, t]), 2) if inputs.present[s, t] else None for t in range(n)]
        for s, conn_id in enumerate(plan.connector_ids)
    }
    batteries = {
        bat_id: [round(min(1e7, max(-1e7, float(plan.battery_power_w[k, t]))), 1) for t in range(n)]
        for k, bat_id in enumerate(plan.battery_ids)
    }
    cap_w = min(1e8, math.ceil(max(inputs.peak_reached_w, float(np.max(plan.grid_import_w, initial=0.0)))))
    valid_from = inputs.start.timestamp()
    message: dict[str, Any] = {
        "schema": f"{PREFIX}/plan",
        "id": plan_id,
        "site": snapshot.site,
        "created": iso(created_ts),
        "valid_from": iso(valid_from),
        "valid_to": iso(valid_from + n * step_s),
        "step_s": step_s,
        "connectors": connectors,
        "site_import_cap_w": [float(cap_w)] * n,
        "snapshot_id": snapshot.id,
    }
    if batteries:
        message["batteries"] = batteries
    return message
