"""Replay a scenario in simulated time: the real control program driving the in-process plant model.

Each cycle the plant's meters, chargers, battery and contacts fill the drivers' input snapshot exactly
as protocol drivers will, the scan cycle freezes it and runs the program, and the setpoints go back to
the plant, which follows them after each device's own delay. Physical currents are measured at every
node after every step and compared with the node's limit in force (its rating, scaled by the DSO stage).

``max_overload_a`` leaves out the *reaction window* after each disturbance the controller cannot foresee
(a load spike or a DSO step down): from the event until the controller has seen it (one period) and the
slowest charger under the node has followed (its response delay, plus one period). ``overload_s``
counts every second over a limit, windows included, so nothing is hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.image import (
    BatteryReading,
    ConnectorReading,
    ContactReading,
    DsoReading,
    InputSnapshot,
    LatchReset,
    MeterReading,
    SessionRequest,
    freeze,
)
from controller.interlocks import SiteMode
from controller.program import ControlProgram, CycleOutput
from controller.scan import CycleCollector, percentile
from controller.site import Site, compile_site
from hil.data import TimeSeries
from hil.plant import BatterySim, ChargerSim, Ev, EvSpec, Plant
from hil.scenario import (
    ChargerSilent,
    DeviceFault,
    DsoStage,
    FireAlarm,
    IoSilent,
    LoadSpike,
    MeterFault,
    OcppFault,
    ResetLatch,
    Scenario,
)

Control = Literal["ems", "none"]


@dataclass(slots=True)
class _Faults:
    silent_meters: dict[str, float] = field(default_factory=dict)
    nan_meters: dict[str, float] = field(default_factory=dict)
    silent_contacts: dict[str, float] = field(default_factory=dict)
    silent_chargers: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def active(table: dict[str, float], key: str, t_rel: float) -> bool:
        until = table.get(key)
        return until is not None and t_rel < until


def _profile(source: TimeSeries | float) -> Callable[[float], float]:
    if isinstance(source, TimeSeries):
        return source.at
    value = float(source)
    return lambda _t: value


def deliverable_wh(spec: EvSpec, charger: ChargerSim, voltage_v: float, end_s: float) -> float:
    """What an unconstrained plaza would deliver: min(requested, max rate x dwell)."""
    dwell_h = max(0.0, min(spec.depart_s, end_s) - spec.arrive_s) / 3600.0
    if charger.dc:
        rate_w = min(spec.max_dc_power_w, charger.max_current_a * 3 * voltage_v)
    else:
        phases = min(spec.phases, len(charger.rotation))
        rate_w = min(spec.max_current_a, charger.max_current_a) * phases * voltage_v
    return min(spec.energy_wh, rate_w * dwell_h)


class Simulation:
    """One scenario run; ``run`` returns the JSON-ready summary."""

    def __init__(self, scenario: Scenario, control: Control = "ems") -> None:
        self.scenario = scenario
        self.control = control
        self.site: Site = compile_site(scenario.site)
        self.program = ControlProgram(self.site)
        self.plant = Plant(scenario.site)
        for conn_id, behaviour in scenario.behaviours.items():
            self.plant.chargers[conn_id].behaviour = behaviour
        for load_id, source in scenario.profiles.items():
            self.plant.loads[load_id].profile_w = _profile(source)
        for battery_id, soc_pct in scenario.config.batteries.items():
            self.plant.batteries[battery_id].soc = soc_pct / 100.0
        cfg = scenario.site
        self.contacts = {c.id: True for c in (cfg.fire_panel, cfg.emergency_stop) if c is not None}
        self.fire_id = cfg.fire_panel.id if cfg.fire_panel is not None else None
        self.estop_id = cfg.emergency_stop.id if cfg.emergency_stop is not None else None
        self.dso_pct = 100.0
        self.snapshot = InputSnapshot()
        self.faults = _Faults()
        self.pending_evs = list(scenario.evs)
        self.all_evs: list[tuple[EvSpec, ChargerSim]] = []
        self.events = sorted(scenario.config.events, key=lambda e: e.at_s)
        self.spikes: list[tuple[float, LoadSpike]] = []
        self.windows: dict[str, list[tuple[float, float]]] = {n.id: [] for n in self.site.nodes}
        self.max_delay: dict[str, float] = {}
        for node in self.site.nodes:
            chargers = [self.plant.chargers[self.site.connectors[i].id] for i in node.connectors]
            delays = [charger.behaviour.response_delay_s for charger in chargers]
            self.max_delay[node.id] = max(delays, default=0.0)

    # -- events -------------------------------------------------------------------------------

    def _apply_event(self, event: Any, t_rel: float, t: float) -> None:
        period = self.site.period_s
        if isinstance(event, FireAlarm):
            contact = self.fire_id if event.type.startswith("fire") else self.estop_id
            if contact is not None:
                self.contacts[contact] = event.type.endswith("clear")
        elif isinstance(event, ResetLatch):
            self.snapshot.resets.append(LatchReset(event.latch, event.operator, t))
        elif isinstance(event, LoadSpike):
            load = self.plant.loads[event.load]
            load.extra_w += event.extra_kw * 1000.0
            self.spikes.append((t_rel + event.duration_s, event))
            self._window(load.node, t_rel, period)
        elif isinstance(event, MeterFault):
            table = self.faults.silent_meters if event.type == "meter_silent" else self.faults.nan_meters
            table[event.meter] = t_rel + event.duration_s
        elif isinstance(event, IoSilent):
            self.faults.silent_contacts[event.contact] = t_rel + event.duration_s
        elif isinstance(event, ChargerSilent):
            self.faults.silent_chargers[event.connector] = t_rel + event.duration_s
        elif isinstance(event, DeviceFault):
            self._device_fault(event, t_rel)
        elif isinstance(event, OcppFault) and event.fault == "offline":
            device = next(d for d in self.scenario.site.devices if d.id == event.station)
            for connector in device.connectors:
                self.faults.silent_chargers[connector] = t_rel + event.duration_s
        elif isinstance(event, DsoStage):
            if event.pct < self.dso_pct:
                for node in self.site.nodes:
                    self._window(node.id, t_rel, period)
            self.dso_pct = event.pct

    def _device_fault(self, event: DeviceFault, t_rel: float) -> None:
        """Without a wire, a device fault is what the controller would see: its values missing (or NaN)."""
        if event.fault == "slow":
            return
        until = t_rel + event.duration_s
        device = next(d for d in self.scenario.site.devices if d.id == event.device)
        if device.meter is not None:
            table = self.faults.nan_meters if event.fault == "garbage" else self.faults.silent_meters
            table[device.meter] = until
        for connector in device.connectors:
            self.faults.silent_chargers[connector] = until
        for contact in device.contacts:
            self.faults.silent_contacts[contact] = until

    def _window(self, node_id: str, t_rel: float, period: float) -> None:
        index = self.site.node_index[node_id]
        for n in self.site.nodes[index].path:
            node = self.site.nodes[n]
            self.windows[node.id].append((t_rel, t_rel + 2 * period + self.max_delay[node.id]))

    # -- inputs -----------------------------------------------------------------------------------

    def _fill_snapshot(self, t_rel: float, t: float) -> None:
        snap = self.snapshot
        plant = self.plant
        faults = self.faults
        for meter in self.scenario.site.meters:
            if _Faults.active(faults.silent_meters, meter.id, t_rel):
                continue
            current_a, power_w = plant.meter_values(meter.id)
            if _Faults.active(faults.nan_meters, meter.id, t_rel):
                current_a, power_w = (math.nan, math.nan, math.nan), math.nan
            snap.meters[meter.id] = MeterReading(current_a, power_w, t)
        for conn_id, charger in plant.chargers.items():
            if _Faults.active(faults.silent_chargers, conn_id, t_rel):
                continue
            ev = charger.ev
            snap.connectors[conn_id] = ConnectorReading(
                charger.state(),
                charger.charger_a,
                charger.power_w,
                charger.session_wh,
                ev.spec.id_token if ev is not None else None,
                t,
            )
        for battery in plant.batteries.values():
            snap.batteries[battery.id] = BatteryReading(battery.soc * 100.0, battery.power_w, t)
        for contact, closed in self.contacts.items():
            if not _Faults.active(faults.silent_contacts, contact, t_rel):
                snap.contacts[contact] = ContactReading(closed, t)
        if self.scenario.site.dso is not None:
            snap.dso = DsoReading(self.dso_pct, t)

    def _arrivals(self, t_rel: float, t: float) -> None:
        waiting: list[EvSpec] = []
        for spec in self.pending_evs:
            if spec.arrive_s > t_rel:
                waiting.append(spec)
                continue
            charger = self.plant.chargers[spec.connector]
            if charger.ev is not None:
                waiting.append(spec)
                continue
            # The plant runs on absolute time; scenario times are relative to its start.
            plugged = replace(spec, arrive_s=t, depart_s=self.scenario.start_s + spec.depart_s)
            charger.plug_in(Ev(plugged, soc=plugged.soc0))
            self.all_evs.append((plugged, charger))
            if plugged.tell_departure:
                self.snapshot.requests[spec.connector] = SessionRequest(plugged.depart_s, plugged.energy_wh, t)
        self.pending_evs = waiting

    def inputs(self, t_rel: float, t: float) -> bool:
        """Play the timeline up to t and fill the input snapshot; True if a fire alarm started now."""
        fire_started = False
        while self.events and self.events[0].at_s <= t_rel:
            event = self.events.pop(0)
            fire_started |= isinstance(event, FireAlarm) and event.type == "fire_alarm"
            self._apply_event(event, t_rel, t)
        for end, spike in [s for s in self.spikes if s[0] <= t_rel]:
            self.plant.loads[spike.load].extra_w -= spike.extra_kw * 1000.0
            self.spikes.remove((end, spike))
        self._arrivals(t_rel, t)
        for conn_id, charger in self.plant.chargers.items():
            if charger.ev is None and conn_id in self.snapshot.requests:
                del self.snapshot.requests[conn_id]
        self._fill_snapshot(t_rel, t)
        return fire_started

    # -- outputs ----------------------------------------------------------------------------------

    def apply_outputs(self, output: CycleOutput, t_rel: float, t: float) -> None:
        for setpoint in output.setpoints:
            if not _Faults.active(self.faults.silent_chargers, setpoint.connector, t_rel):
                self.plant.chargers[setpoint.connector].write_limit(t, setpoint.current_a)
        for command in output.batteries:
            battery: BatterySim = self.plant.batteries[command.battery]
            battery.command(t, 0.0 if command.standby else command.power_w)

    def _uncontrolled_outputs(self, t: float) -> None:
        for charger in self.plant.chargers.values():
            charger.write_limit(t, charger.max_current_a)

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        scenario = self.scenario
        site = self.site
        plant = self.plant
        period = site.period_s
        cycles = math.ceil(scenario.config.duration_s / period)
        connector_ids = tuple(c.id for c in site.connectors)
        battery_ids = tuple(b.id for b in site.batteries)
        node_ids = [n.id for n in site.nodes]
        node_rating = {n.id: n.rating_a for n in site.nodes}
        dso_node = scenario.site.dso.node if scenario.site.dso is not None else None
        max_current = {n: [0.0, 0.0, 0.0] for n in node_ids}
        overload_s = dict.fromkeys(node_ids, 0.0)
        max_overload_a = -math.inf
        any_overload_s = 0.0
        logic_s: list[float] = []
        overruns = 0
        energy_import_wh = 0.0
        cost_eur = 0.0
        peak_import_w = 0.0
        fire_edge: int | None = None
        fire_response: int | None = None
        root = node_ids[0]
        wall_start = time.perf_counter()
        plant.step(scenario.start_s - period, period)
        collector = CycleCollector()
        for k in range(cycles):
            t_rel = k * period
            t = scenario.start_s + t_rel
            if self.inputs(t_rel, t) and fire_edge is None:
                fire_edge = k
            if self.control == "ems":
                image = freeze(self.snapshot, t, site.stale_after_s, connector_ids, battery_ids)
                started = time.perf_counter()
                output = self.program.step(image)
                elapsed = time.perf_counter() - started
                logic_s.append(elapsed)
                overruns += elapsed > period
                self.apply_outputs(output, t_rel, t)
                if (
                    fire_edge is not None
                    and fire_response is None
                    and output.mode is SiteMode.FIRE
                    and all(s.paused for s in output.setpoints)
                    and all(b.standby for b in output.batteries)
                ):
                    fire_response = k - fire_edge + 1
            else:
                self._uncontrolled_outputs(t)
            plant.step(t, period)
            # Physical currents for the interval that follows this cycle's outputs.
            t_after = t_rel + period
            over_any = False
            for node_id in node_ids:
                currents = plant.node_current_a[node_id]
                peak = max(currents)
                seen = max_current[node_id]
                for p in range(3):
                    if currents[p] > seen[p]:
                        seen[p] = currents[p]
                limit = node_rating[node_id] * (self.dso_pct / 100.0 if node_id == dso_node else 1.0)
                excess = peak - limit
                if excess > 0.0:
                    overload_s[node_id] += period
                    over_any = True
                if excess > max_overload_a and k > 0 and not any(a <= t_after <= b for a, b in self.windows[node_id]):
                    max_overload_a = excess
            if over_any:
                any_overload_s += period
            import_w = plant.node_power_w[root]
            peak_import_w = max(peak_import_w, import_w)
            energy_wh = import_w * period / 3600.0
            energy_import_wh += energy_wh
            cost_eur += energy_wh / 1e6 * scenario.prices.step_at(t)
            collector.after_cycle()
        collector.close()
        wall_s = time.perf_counter() - wall_start
        return self._summary(
            cycles=cycles,
            wall_s=wall_s,
            max_current=max_current,
            overload_s=overload_s,
            max_overload_a=max_overload_a,
            any_overload_s=any_overload_s,
            logic_s=logic_s,
            overruns=overruns,
            energy_import_wh=energy_import_wh,
            cost_eur=cost_eur,
            peak_import_w=peak_import_w,
            fire_response=fire_response if fire_edge is not None else None,
        )

    def _summary(
        self,
        *,
        cycles: int,
        wall_s: float,
        max_current: dict[str, list[float]],
        overload_s: dict[str, float],
        max_overload_a: float,
        any_overload_s: float,
        logic_s: list[float],
        overruns: int,
        energy_import_wh: float,
        cost_eur: float,
        peak_import_w: float,
        fire_response: int | None,
    ) -> dict[str, Any]:
        scenario = self.scenario
        end_s = scenario.start_s + scenario.config.duration_s
        voltage_v = self.site.voltage_v
        requested = deliverable = delivered = delivered_total = 0.0
        met = 0
        for spec, charger in self.all_evs:
            ev_delivered = next(
                (e.delivered_wh for e in (*charger.finished, charger.ev) if e is not None and e.spec is spec), 0.0
            )
            ev_deliverable = deliverable_wh(spec, charger, voltage_v, end_s)
            requested += spec.energy_wh
            deliverable += ev_deliverable
            delivered += min(ev_delivered, spec.energy_wh)
            delivered_total += ev_delivered
            if ev_delivered >= 0.98 * ev_deliverable:
                met += 1
        return {
            "scenario": scenario.name,
            "control": self.control,
            "simulated_s": cycles * self.site.period_s,
            "wall_s": round(wall_s, 3),
            "cycles": cycles,
            "nodes": [
                {
                    "id": node.id,
                    "limit_a": node.rating_a,
                    "max_current_a": [round(x, 3) for x in max_current[node.id]],
                    "overload_s": overload_s[node.id],
                }
                for node in self.site.nodes
            ],
            "max_overload_a": round(max_overload_a, 3) if math.isfinite(max_overload_a) else None,
            "overload_s": any_overload_s,
            "energy_requested_kwh": round(requested / 1000.0, 3),
            "energy_deliverable_kwh": round(deliverable / 1000.0, 3),
            "energy_delivered_kwh": round(delivered / 1000.0, 3),
            "energy_delivered_total_kwh": round(delivered_total / 1000.0, 3),
            "sessions_total": len(self.all_evs),
            "sessions_met_target": met,
            "sessions_rejected": scenario.rejected_sessions + len(self.pending_evs),
            "fire_response_cycles": fire_response,
            "peak_import_kw": round(peak_import_w / 1000.0, 3),
            "energy_import_kwh": round(energy_import_wh / 1000.0, 3),
            "cost_eur": round(cost_eur, 2),
            "cycle": {
                "period_ms": self.site.period_s * 1000.0,
                "logic_p50_ms": round(percentile(logic_s, 50) * 1000.0, 4),
                "logic_p99_ms": round(percentile(logic_s, 99) * 1000.0, 4),
                "overruns": overruns,
            },
        }


def simulate(scenario: Scenario, control: Control = "ems") -> dict[str, Any]:
    return Simulation(scenario, control).run()
