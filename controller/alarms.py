"""Alarm conditions of the site for maintenance (SPEC F21): what is wrong now, since when, and acknowledged or not.

The alarm set is fixed by the site: fire interlock, emergency stop, DSO limitation, one communication
alarm per field device, one overload alarm per metered node, cycle overrun. ``AlarmBook.evaluate`` runs
after every cycle on its process image and output and returns the transitions (raised, cleared,
acknowledged), which the OPC UA server turns into events. An alarm follows the usual alarm model: it is
active while its condition holds; an operator acknowledges it; it is *retained* (still shown) while it
is active or not yet acknowledged. The book only reports; the control program's reactions do not wait
for anyone to acknowledge anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from controller.image import ProcessImage, Quality
from controller.interlocks import EMERGENCY_STOP, FIRE
from controller.limits import DSO, DSO_COMMAND
from controller.program import CycleOutput
from controller.site import Site

FIRE_ALARM = "FireInterlock"
ESTOP_ALARM = "EmergencyStop"
DSO_ALARM = "DsoLimitation"
OVERRUN_ALARM = "CycleOverrun"
COMM_PREFIX = "CommLost."
OVERLOAD_PREFIX = "Overload."

OVERRUN_HOLD_S = 60.0
"""A cycle overrun keeps its alarm active this long, so a single late cycle is seen, not a flicker."""
OVERLOAD_TOLERANCE_A = 0.5
"""A metered node is overloaded when a phase measures more than its effective limit plus this."""


@dataclass(frozen=True, slots=True)
class AlarmDef:
    id: str
    source: str
    """The site item the alarm is about: a latch, a device, a node, or the controller."""
    severity: int
    """OPC UA severity 1..1000."""
    text: str


@dataclass(frozen=True, slots=True)
class AlarmState:
    active: bool = False
    acked: bool = True
    since_ts: float | None = None
    """When it last became active."""
    message: str = ""
    acked_by: str = ""

    @property
    def retained(self) -> bool:
        return self.active or not self.acked


@dataclass(frozen=True, slots=True)
class AlarmTransition:
    alarm: AlarmDef
    state: AlarmState
    ts: float
    kind: str
    """'raised', 'cleared', 'acknowledged'."""
    comment: str = ""


class AlarmError(ValueError):
    """An acknowledgement that cannot be applied; ``code`` names the OPC UA reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def alarm_defs(site: Site) -> tuple[AlarmDef, ...]:
    cfg = site.config
    defs: list[AlarmDef] = []
    if cfg.fire_panel is not None:
        defs.append(AlarmDef(FIRE_ALARM, FIRE, 1000, "Fire interlock latched: charging stopped"))
    if cfg.emergency_stop is not None:
        defs.append(AlarmDef(ESTOP_ALARM, EMERGENCY_STOP, 1000, "Emergency stop latched: charging stopped"))
    defs.append(AlarmDef(DSO_ALARM, cfg.dso.node if cfg.dso is not None else site.nodes[0].id, 500, "DSO limitation"))
    defs.extend(AlarmDef(f"{COMM_PREFIX}{d.id}", d.id, 700, f"Communication with {d.id} lost") for d in cfg.devices)
    defs.extend(
        AlarmDef(f"{OVERLOAD_PREFIX}{n.id}", n.id, 900, f"Node {n.id} overloaded")
        for n in site.nodes
        if n.meter is not None
    )
    defs.append(AlarmDef(OVERRUN_ALARM, "controller", 400, "Scan cycle overrun"))
    return tuple(defs)


class AlarmBook:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.defs = alarm_defs(site)
        self.by_id = {d.id: d for d in self.defs}
        self.states: dict[str, AlarmState] = {d.id: AlarmState() for d in self.defs}
        self._overruns = 0
        self._overrun_until_ts = float("-inf")
        self._metered = tuple((n.index, n.id, n.meter) for n in site.nodes if n.meter is not None)

    def evaluate(
        self,
        image: ProcessImage,
        output: CycleOutput,
        overruns: int,
        devices_online: Mapping[str, bool],
    ) -> list[AlarmTransition]:
        """Apply this cycle's conditions; ``devices_online`` maps device id to whether it answers."""
        now = output.t
        conditions: dict[str, str | None] = {}
        latches = output.latches
        fire = latches.get(FIRE)
        conditions[FIRE_ALARM] = fire.cause if fire is not None and fire.active else None
        estop = latches.get(EMERGENCY_STOP)
        conditions[ESTOP_ALARM] = estop.cause if estop is not None and estop.active else None
        dso_reasons = [
            self.site.nodes[i].id for i, limit in enumerate(output.limits) if limit.reason in (DSO, DSO_COMMAND)
        ]
        dso = output.dso_pct < 100.0 or bool(dso_reasons)
        conditions[DSO_ALARM] = (
            f"DSO stage {output.dso_pct:.0f} %; binding at {', '.join(dso_reasons) or 'no node'}" if dso else None
        )
        for device, online in devices_online.items():
            conditions[f"{COMM_PREFIX}{device}"] = None if online else f"{device} does not answer"
        for index, node_id, meter_id in self._metered:
            reading = image.meters.get(meter_id) if meter_id is not None else None
            limit = output.limits[index] if index < len(output.limits) else None
            message = None
            if reading is not None and reading.quality == Quality.GOOD and limit is not None:
                worst = max(reading.current_a)
                if worst > limit.current_a + OVERLOAD_TOLERANCE_A:
                    message = f"{worst:.1f} A on a phase, limit {limit.current_a:.1f} A ({limit.reason})"
            conditions[f"{OVERLOAD_PREFIX}{node_id}"] = message
        if overruns > self._overruns:
            self._overrun_until_ts = now + OVERRUN_HOLD_S
        self._overruns = overruns
        conditions[OVERRUN_ALARM] = f"{overruns} overruns so far" if now < self._overrun_until_ts else None

        transitions: list[AlarmTransition] = []
        for alarm_id, message in conditions.items():
            alarm = self.by_id.get(alarm_id)
            if alarm is None:
                continue
            state = self.states[alarm_id]
            if message is not None and not state.active:
                state = AlarmState(active=True, acked=False, since_ts=now, message=message)
                transitions.append(AlarmTransition(alarm, state, now, "raised"))
            elif message is None and state.active:
                state = replace(state, active=False, message=f"cleared: {state.message}")
                transitions.append(AlarmTransition(alarm, state, now, "cleared"))
            elif message is not None and message != state.message:
                state = replace(state, message=message)
            self.states[alarm_id] = state
        return transitions

    def acknowledge(self, alarm_id: str, user: str, comment: str, now: float) -> AlarmTransition:
        alarm = self.by_id.get(alarm_id)
        if alarm is None:
            raise AlarmError("BadInvalidArgument", f"no alarm {alarm_id!r}")
        state = self.states[alarm_id]
        if state.acked:
            raise AlarmError("BadConditionBranchAlreadyAcked", f"{alarm_id} is already acknowledged")
        state = self.states[alarm_id] = replace(state, acked=True, acked_by=user)
        return AlarmTransition(alarm, state, now, "acknowledged", comment)
