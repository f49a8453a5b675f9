"""What the maintenance address space shows, object by object, and which values changed in a cycle.

``SiteLayout`` lays the site out as OPC UA objects — electrical tree nodes with their meters, chargers
and connectors, batteries, PV and building loads below them, the safety I/O and the controller — each
of a fixed type whose variables are listed in ``TYPES``. ``SiteValues.changes`` runs on the scan
cycle's thread after every cycle: it computes each object's values from the process image and the
cycle output and returns only the objects whose values or quality changed since the last call, one
batch per cycle. It imports no OPC UA library, so the cost of the publish step can be measured on
its own (``plaza-ems bench opcua``).

Each value carries the quality and timestamp of where it came from: a measured value those of its
reading (GOOD / STALE → Uncertain / BAD or absent → Bad), a value the controller decided those of the
cycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.image import BatteryReading, ConnectorReading, MeterReading, ProcessImage, Quality
from controller.interlocks import EMERGENCY_STOP, FIRE
from controller.limits import NodeLimit
from controller.program import CycleOutput
from controller.site import Site

DOUBLE = "Double"
STRING = "String"
BOOLEAN = "Boolean"
UINT32 = "UInt32"

A = "A"
V = "V"
W = "W"
KWH = "kWh"
PCT = "%"
MS = "ms"
S = "s"

PARENT_BUDGET = "parent_budget"


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    data_type: str
    unit: str | None = None
    measured: bool = False
    """Takes the quality and timestamp of its object's reading (else: the cycle's)."""
    description: str = ""


def _phases(prefix: str, unit: str, what: str) -> tuple[Var, ...]:
    return tuple(Var(f"{prefix}L{k}{unit}", DOUBLE, unit, True, f"{what}, grid phase L{k}") for k in (1, 2, 3))


TYPES: dict[str, tuple[Var, ...]] = {
    "ElectricalNodeType": (
        Var("RatingA", DOUBLE, A, description="Fuse/cable rating per phase"),
        Var("PowerLimitW", DOUBLE, W, description="Own power limit; +Inf: none"),
        Var("EffectiveLimitA", DOUBLE, A, description="Per-phase limit in force now"),
        Var("EffectiveLimitW", DOUBLE, W, description="Power limit in force now; +Inf: none"),
        Var(
            "LimitReason", STRING, description="fuse, dso, dso_command, capacity_frame, capacity_command, parent_budget"
        ),
        *_phases("Current", "A", "Measured current (meter; else the sum of the controlled devices)"),
        Var("PowerW", DOUBLE, W, True, "Measured import power"),
        Var("HeadroomA", DOUBLE, A, True, "Effective limit minus the most loaded phase"),
        Var("Metered", BOOLEAN, description="The node has its own meter"),
        Var("Maintenance", BOOLEAN, description="Maintenance mode: everything below is held at 0"),
    ),
    "MeterType": (
        *_phases("Current", "A", "Current"),
        Var("PowerW", DOUBLE, W, True, "Active power, + import"),
    ),
    "ChargerType": (
        Var("Driver", STRING, description="Driver (protocol and device family)"),
        Var("Address", STRING, description="Where the controller reaches it"),
        Var("Online", BOOLEAN, description="The device answers"),
    ),
    "ConnectorType": (
        Var("State", STRING, measured=True, description="IEC 61851-1 state (A1..F)"),
        *_phases("Current", "A", "Charging current"),
        Var("PowerW", DOUBLE, W, True, "Charging power"),
        Var("EnergyKWh", DOUBLE, KWH, True, "Energy of the running session"),
        Var("IdToken", STRING, measured=True, description="Badge or contract id of the session; empty: none"),
        Var("SetpointA", DOUBLE, A, description="Per-phase current limit written this cycle (DC: AC equivalent)"),
        Var("SetpointW", DOUBLE, W, description="Power limit written this cycle (AC: setpoint × V × phases)"),
        Var("Paused", BOOLEAN, description="Setpoint 0"),
        Var("Available", BOOLEAN, description="In service (SetConnectorAvailability)"),
        Var("Phases", STRING, description="Grid phases feeding charger L1, L2, L3"),
    ),
    "BatteryType": (
        Var("SocPct", DOUBLE, PCT, True, "State of charge"),
        Var("PowerW", DOUBLE, W, True, "Power, + charging"),
        Var("SetpointW", DOUBLE, W, description="Power commanded this cycle, + charging"),
        Var("Standby", BOOLEAN, description="Commanded to standby"),
    ),
    "PvType": (Var("PowerW", DOUBLE, W, True, "Power at the PV meter (its own sign convention)"),),
    "LoadType": (
        *_phases("Current", "A", "Current of the non-controllable load"),
        Var("PowerW", DOUBLE, W, True, "Power of the non-controllable load"),
    ),
    "SafetyIoType": (
        Var("FirePanelClosed", BOOLEAN, measured=True, description="Fire-panel NC contact closed (healthy)"),
        Var("EmergencyStopClosed", BOOLEAN, measured=True, description="E-stop NC contact closed (healthy)"),
        Var("DsoStagePct", DOUBLE, PCT, True, "DSO relay stage in force"),
    ),
    "ControllerType": (
        Var("Mode", STRING, description="normal, fire, emergency_stop"),
        Var("FireLatched", BOOLEAN),
        Var("EmergencyStopLatched", BOOLEAN),
        Var("Cycles", UINT32),
        Var("Overruns", UINT32),
        Var("PeriodMs", DOUBLE, MS),
        Var("LogicP99Ms", DOUBLE, MS),
        Var("CycleP99Ms", DOUBLE, MS),
        Var("JitterP99Ms", DOUBLE, MS),
        Var("PlanSource", STRING, description="plan, fallback, or empty: the program's own rules"),
        Var("PlanId", STRING),
        Var("PlanAgeS", DOUBLE, S, description="Since the plan in force was created; -1: no plan"),
        Var("CloudLinkConnected", BOOLEAN),
        Var("FirmwareVersion", STRING),
        Var("ConfigHash", STRING, description="SHA-256 of the site configuration (first 16 hex digits)"),
    ),
}


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    node_id: str
    """String NodeId of the object; its variables are ``{node_id}.{Var.name}``."""
    browse_name: str
    type_name: str
    parent: str
    """NodeId of the parent object ("" for the Site object's direct children set by the server)."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class ControllerInfo:
    """What the controller object shows besides the cycle: cloud link and plan, software, config."""

    firmware_version: str
    config_hash: str
    cloud_connected: bool = False
    plan_id: str | None = None
    plan_created_ts: float | None = None


Values = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ObjectUpdate:
    object_index: int
    values: Values
    quality: Quality
    """Of the object's measured variables; the others are GOOD."""
    source_ts: float
    """Measurement time of the measured variables."""
    cycle_ts: float
    changed: tuple[int, ...]
    """Indices into the object's variables whose value or quality changed."""


class SiteLayout:
    """The objects of the address space in a fixed order, parents before children."""

    def __init__(self, site: Site) -> None:
        self.site = site
        cfg = site.config
        objects: list[ObjectSpec] = []
        self.node_objects: list[int] = []
        self.meter_objects: list[tuple[int, str]] = []
        self.charger_objects: list[tuple[int, str]] = []
        self.connector_objects: list[int] = []
        self.battery_objects: list[int] = []
        self.pv_objects: list[tuple[int, str | None]] = []
        self.load_objects: list[tuple[int, str | None]] = []
        device_of: dict[str, str] = {}
        for device in cfg.devices:
            for connector_id in device.connectors:
                device_of[connector_id] = device.id
        connectors_at: dict[int, list[int]] = {}
        for connector in site.connectors:
            connectors_at.setdefault(connector.node, []).append(connector.index)
        connector_object: dict[int, int] = {}
        battery_object: dict[int, int] = {}
        for node in site.nodes:
            parent = f"Node.{site.nodes[node.parent].id}" if node.parent is not None else "Site"
            self.node_objects.append(len(objects))
            objects.append(ObjectSpec(f"Node.{node.id}", node.id, "ElectricalNodeType", parent, f"Tree node {node.id}"))
            here = f"Node.{node.id}"
            if node.meter is not None:
                self.meter_objects.append((len(objects), node.meter))
                objects.append(ObjectSpec(f"Meter.{node.meter}", node.meter, "MeterType", here, f"Meter of {node.id}"))
            seen_devices: set[str] = set()
            for index in connectors_at.get(node.index, []):
                connector = site.connectors[index]
                device_id = device_of.get(connector.id)
                owner = here
                if device_id is not None:
                    owner = f"Device.{device_id}"
                    if device_id not in seen_devices:
                        seen_devices.add(device_id)
                        self.charger_objects.append((len(objects), device_id))
                        objects.append(ObjectSpec(owner, device_id, "ChargerType", here, f"Charger {device_id}"))
                connector_object[index] = len(objects)
                objects.append(ObjectSpec(f"Connector.{connector.id}", connector.id, "ConnectorType", owner))
            for i, battery in enumerate(site.batteries):
                if battery.node == node.index:
                    battery_object[i] = len(objects)
                    objects.append(ObjectSpec(f"Battery.{battery.id}", battery.id, "BatteryType", here))
            for load in site.loads:
                if load.node != node.index:
                    continue
                if load.generator:
                    self.pv_objects.append((len(objects), load.meter))
                    objects.append(ObjectSpec(f"Pv.{load.id}", load.id, "PvType", here))
                else:
                    self.load_objects.append((len(objects), load.meter))
                    objects.append(ObjectSpec(f"Load.{load.id}", load.id, "LoadType", here))
        self.connector_objects = [connector_object[c.index] for c in site.connectors]
        self.battery_objects = [battery_object[i] for i in range(len(site.batteries))]
        self.safety_object = len(objects)
        objects.append(ObjectSpec("SafetyIO", "SafetyIO", "SafetyIoType", "Site", "Fire panel, e-stop, DSO relays"))
        self.controller_object = len(objects)
        objects.append(ObjectSpec("Controller", "Controller", "ControllerType", "Site", "The site controller"))
        self.objects = tuple(objects)
        self.device_addresses = {
            d.id: (d.driver, f"{d.host}:{d.port}" + (f" unit {d.unit_id}" if d.unit_id is not None else ""))
            for d in cfg.devices
        }

    def variable_count(self) -> int:
        return sum(len(TYPES[o.type_name]) for o in self.objects)


_GOOD = Quality.GOOD
_BAD = Quality.BAD
_INF = math.inf


def _reading_quality(reading: MeterReading | ConnectorReading | BatteryReading | None) -> Quality:
    return _BAD if reading is None else reading.quality


class SiteValues:
    """Per object: the last values published, and what changed this cycle."""

    def __init__(self, layout: SiteLayout) -> None:
        self.layout = layout
        site = layout.site
        self._last: list[tuple[Values, Quality] | None] = [None] * len(layout.objects)
        self._phases_text = tuple("".join(f"L{p + 1}" for p in c.rotation) for c in site.connectors)
        self._per_amp_w = tuple(site.voltage_v * len(c.rotation) for c in site.connectors)
        self._upward = tuple((n.index, n.parent) for n in reversed(site.nodes) if n.parent is not None)
        self._node_meter = tuple(n.meter for n in site.nodes)
        self._fire_contact = site.config.fire_panel.id if site.config.fire_panel is not None else None
        self._estop_contact = site.config.emergency_stop.id if site.config.emergency_stop is not None else None

    def changes(
        self,
        image: ProcessImage,
        output: CycleOutput,
        stats: Mapping[str, float | int],
        info: ControllerInfo,
        devices_online: Mapping[str, bool],
    ) -> list[ObjectUpdate]:
        """The objects whose values or quality differ from the last call (all of them the first time)."""
        updates: list[ObjectUpdate] = []
        t = output.t
        for index, values, quality, ts in self._compute(image, output, stats, info, devices_online):
            last = self._last[index]
            if last is not None and last[0] == values and last[1] == quality:
                continue
            if last is None or last[1] != quality:
                changed = tuple(range(len(values)))
            else:
                old = last[0]
                changed = tuple(k for k, v in enumerate(values) if v != old[k])
            self._last[index] = (values, quality)
            updates.append(ObjectUpdate(index, values, quality, ts, t, changed))
        return updates

    def _compute(
        self,
        image: ProcessImage,
        output: CycleOutput,
        stats: Mapping[str, float | int],
        info: ControllerInfo,
        devices_online: Mapping[str, bool],
    ) -> list[tuple[int, Values, Quality, float]]:
        layout = self.layout
        site = layout.site
        t = output.t
        rows: list[tuple[int, Values, Quality, float]] = []
        setpoints = output.setpoints
        unavailable = image.unavailable
        maintenance = image.maintenance
        meters = image.meters

        # Controlled currents per node and grid phase, summed bottom-up: what an unmetered node carries.
        n_nodes = len(site.nodes)
        sums = [[0.0, 0.0, 0.0, 0.0] for _ in range(n_nodes)]
        sum_quality = [_GOOD] * n_nodes
        for connector, reading in zip(site.connectors, image.connectors, strict=True):
            acc = sums[connector.node]
            if reading is None or reading.quality != _GOOD:
                sum_quality[connector.node] = (
                    _BAD if reading is None else max(sum_quality[connector.node], reading.quality)
                )
                if reading is None:
                    continue
            for k, phase in enumerate(connector.rotation):
                acc[phase] += reading.current_a[k]
            acc[3] += reading.power_w
        for child, parent in self._upward:
            a, b = sums[child], sums[parent]
            b[0] += a[0]
            b[1] += a[1]
            b[2] += a[2]
            b[3] += a[3]
            sum_quality[parent] = max(sum_quality[parent], sum_quality[child])

        effective = self._effective(output.limits)
        for node, obj in zip(site.nodes, layout.node_objects, strict=True):
            limit_a, limit_w, reason = effective[node.index]
            meter_id = self._node_meter[node.index]
            meter = meters.get(meter_id) if meter_id is not None else None
            if meter_id is not None:
                quality = _reading_quality(meter)
                ts = meter.ts if meter is not None else t
                i1, i2, i3 = meter.current_a if meter is not None else (math.nan, math.nan, math.nan)
                power_w = meter.power_w if meter is not None else math.nan
            else:
                acc = sums[node.index]
                quality = sum_quality[node.index]
                ts = t
                i1, i2, i3, power_w = acc
            in_maintenance = any(site.nodes[p].id in maintenance for p in node.path) if maintenance else False
            values = (
                node.rating_a,
                node.power_limit_w if node.power_limit_w is not None else _INF,
                limit_a,
                limit_w,
                reason,
                i1,
                i2,
                i3,
                power_w,
                limit_a - max(i1, i2, i3),
                meter_id is not None,
                in_maintenance,
            )
            rows.append((obj, values, quality, ts))

        for obj, meter_id in layout.meter_objects:
            meter = meters.get(meter_id)
            if meter is None:
                rows.append((obj, (math.nan, math.nan, math.nan, math.nan), _BAD, t))
            else:
                rows.append((obj, (*meter.current_a, meter.power_w), meter.quality, meter.ts))

        for obj, device_id in layout.charger_objects:
            driver, address = layout.device_addresses[device_id]
            rows.append((obj, (driver, address, devices_online.get(device_id, False)), _GOOD, t))

        phases_text = self._phases_text
        per_amp_w = self._per_amp_w
        for connector, obj, reading, setpoint in zip(
            site.connectors, layout.connector_objects, image.connectors, setpoints, strict=True
        ):
            index = connector.index
            setpoint_w = setpoint.power_w if setpoint.power_w is not None else setpoint.current_a * per_amp_w[index]
            available = connector.id not in unavailable
            if reading is None:
                rows.append(
                    (
                        obj,
                        (
                            "",
                            math.nan,
                            math.nan,
                            math.nan,
                            math.nan,
                            math.nan,
                            "",
                            setpoint.current_a,
                            setpoint_w,
                            setpoint.paused,
                            available,
                            phases_text[index],
                        ),
                        _BAD,
                        t,
                    )
                )
                continue
            c1, c2, c3 = reading.current_a
            rows.append(
                (
                    obj,
                    (
                        reading.state,
                        c1,
                        c2,
                        c3,
                        reading.power_w,
                        reading.energy_wh / 1000.0,
                        reading.id_token or "",
                        setpoint.current_a,
                        setpoint_w,
                        setpoint.paused,
                        available,
                        phases_text[index],
                    ),
                    reading.quality,
                    reading.ts,
                )
            )

        commands = {b.battery: b for b in output.batteries}
        for battery, obj, b_reading in zip(site.batteries, layout.battery_objects, image.batteries, strict=True):
            command = commands.get(battery.id)
            setpoint_w = command.power_w if command is not None else 0.0
            standby = command.standby if command is not None else False
            if b_reading is None:
                rows.append((obj, (math.nan, math.nan, setpoint_w, standby), _BAD, t))
            else:
                rows.append(
                    (obj, (b_reading.soc_pct, b_reading.power_w, setpoint_w, standby), b_reading.quality, b_reading.ts)
                )

        for obj, meter_id in layout.pv_objects:
            pv_meter = meters.get(meter_id) if meter_id is not None else None
            if pv_meter is None:
                rows.append((obj, (math.nan,), _BAD, t))
            else:
                rows.append((obj, (pv_meter.power_w,), pv_meter.quality, pv_meter.ts))
        for obj, meter_id in layout.load_objects:
            load_meter = meters.get(meter_id) if meter_id is not None else None
            if load_meter is None:
                rows.append((obj, (math.nan, math.nan, math.nan, math.nan), _BAD, t))
            else:
                rows.append((obj, (*load_meter.current_a, load_meter.power_w), load_meter.quality, load_meter.ts))

        rows.append(self._safety(image, output, t))
        latches = output.latches
        fire = latches.get(FIRE)
        estop = latches.get(EMERGENCY_STOP)
        plan_age_s = t - info.plan_created_ts if info.plan_created_ts is not None else -1.0
        rows.append(
            (
                layout.controller_object,
                (
                    output.mode.value,
                    fire is not None and fire.active,
                    estop is not None and estop.active,
                    int(stats.get("cycles", 0)),
                    int(stats.get("overruns", 0)),
                    float(stats.get("period_ms", site.period_s * 1000.0)),
                    round(float(stats.get("logic_p99_ms", 0.0)), 3),
                    round(float(stats.get("cycle_p99_ms", 0.0)), 3),
                    round(float(stats.get("jitter_p99_ms", 0.0)), 3),
                    output.target_source or "",
                    info.plan_id or "",
                    round(plan_age_s),
                    info.cloud_connected,
                    info.firmware_version,
                    info.config_hash,
                ),
                _GOOD,
                t,
            )
        )
        return rows

    def _safety(self, image: ProcessImage, output: CycleOutput, t: float) -> tuple[int, Values, Quality, float]:
        quality = _GOOD
        ts = t
        closed: list[bool] = []
        for contact_id in (self._fire_contact, self._estop_contact):
            if contact_id is None:
                closed.append(True)
                continue
            contact = image.contacts.get(contact_id)
            if contact is None:
                quality = _BAD
                closed.append(False)
                continue
            quality = max(quality, contact.quality)
            ts = contact.ts
            closed.append(contact.closed)
        if image.dso is not None:
            quality = max(quality, image.dso.quality)
        return (self.layout.safety_object, (closed[0], closed[1], output.dso_pct), quality, ts)

    def _effective(self, limits: tuple[NodeLimit, ...]) -> list[tuple[float, float, str]]:
        """Per node: the limit in force, its own or a parent's where that is lower, and why."""
        site = self.layout.site
        out: list[tuple[float, float, str]] = []
        for node, limit in zip(site.nodes, limits, strict=True):
            current_a, power_w, reason = limit.current_a, limit.power_w, limit.reason
            if node.parent is not None:
                parent_a, parent_w, _ = out[node.parent]
                if parent_a < current_a:
                    current_a, reason = parent_a, PARENT_BUDGET
                if parent_w < power_w:
                    power_w = parent_w
                    reason = PARENT_BUDGET
            out.append((current_a, power_w, reason))
        return out
