"""The central control program: steps 2-5 of the scan cycle over one frozen process image.

``ControlProgram.step(image)`` runs interlocks -> limits -> intent -> protection/allocation and returns
the setpoints to write plus everything worth publishing. It keeps only the memory a PLC program keeps
between cycles (latches, last setpoints, open sessions, pause times, which chargers overdraw) and does
no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.allocation import Demand, allocate
from controller.config import IEC_61851_MIN_CURRENT_A
from controller.image import ProcessImage, Quality, SessionState
from controller.intent import (
    Intent,
    Session,
    connector_intent,
    open_session,
    pv_surplus_w,
    update_draw_cap,
)
from controller.interlocks import (
    EMERGENCY_STOP,
    FIRE,
    InterlockEvent,
    Latch,
    SiteMode,
    evaluate_interlocks,
)
from controller.limits import NodeLimit, dso_limit_pct, effective_limits, fuse_limits
from controller.protection import Uncontrolled, capacity, estimate_uncontrolled, uncontrolled_by_node
from controller.site import KEYS_PER_NODE, POWER, Connector, Site
from controller.targets import TargetFollower, Targets, TargetSource
from fallback import (
    BatteryInput,
    FallbackInputs,
    FallbackSchedule,
    import_limit_w,
    session_input,
    uncontrolled_surplus_w,
)

PAUSED_EPS_A = 1e-6
OVERDRAW_RELEASE_A = 0.5
"""An overdraw ends once the draw is this much below where it started (allowed + tolerance), so a draw
that hovers at the threshold is not reported start and end every cycle."""
CLAMP_EPS_A = 0.5
"""A plan's target is reported clamped when the setpoint falls short of it by more than this."""
_GOOD = Quality.GOOD
"""Looked up once: reading an Enum member through its class costs about 0.1 µs (Python 3.11)."""


@dataclass(frozen=True, slots=True)
class ConnectorSetpoint:
    connector: str
    current_a: float
    """Per-phase current limit; 0 pauses (for DC: the per-phase AC equivalent of power_w)."""
    power_w: float | None
    """DC connectors only: the power limit to write."""

    @property
    def paused(self) -> bool:
        return self.current_a <= PAUSED_EPS_A


@dataclass(frozen=True, slots=True)
class BatteryCommand:
    battery: str
    power_w: float
    """Positive charges."""
    standby: bool


@dataclass(frozen=True, slots=True)
class CycleOutput:
    t: float
    mode: SiteMode
    setpoints: tuple[ConnectorSetpoint, ...]
    batteries: tuple[BatteryCommand, ...]
    limits: tuple[NodeLimit, ...]
    uncontrolled: Uncontrolled | None
    dso_pct: float
    latches: Mapping[str, Latch]
    events: tuple[InterlockEvent, ...]
    target_source: TargetSource | None = None
    """Whose targets shaped the intent this cycle: the cloud plan, the local fallback, or neither."""
    clamped: tuple[str, ...] = ()
    """Connectors given less than the plan's target although their session wanted it: local protection won."""


@dataclass(slots=True)
class ConnectorMemory:
    setpoint_a: float = 0.0
    inflight_a: float = 0.0
    """The higher setpoint a decrease came from, still possibly drawn until ``inflight_until_ts``."""
    inflight_until_ts: float = -math.inf
    paused_at_ts: float = -math.inf
    session: Session | None = None
    overdrawing: bool = False
    """Seen drawing more than its setpoint allows (``_overdraw``); held while the charger is silent."""


@dataclass(slots=True)
class BatteryMemory:
    setpoint_w: float = 0.0


@dataclass(slots=True)
class ProgramState:
    latches: dict[str, Latch] = field(default_factory=dict)
    connectors: list[ConnectorMemory] = field(default_factory=list)
    batteries: list[BatteryMemory] = field(default_factory=list)
    last_t: float | None = None


class ControlProgram:
    """Steps 2-5 of the scan cycle for one site."""

    def __init__(self, site: Site, state: ProgramState | None = None) -> None:
        self.site = site
        self.state = state or ProgramState()
        if len(self.state.connectors) != len(site.connectors):
            self.state.connectors = [ConnectorMemory() for _ in site.connectors]
        if len(self.state.batteries) != len(site.batteries):
            self.state.batteries = [BatteryMemory() for _ in site.batteries]
        cfg = site.config
        self._contact_inputs = {
            FIRE: cfg.fire_panel.id if cfg.fire_panel is not None else None,
            EMERGENCY_STOP: cfg.emergency_stop.id if cfg.emergency_stop is not None else None,
        }
        # What stays the same for the site's lifetime is worked out here once, not every cycle.
        self._fuse_limits = fuse_limits(site)
        # Per connector: the allocation keys of the grid phases its L1..L3 load, and its node's POWER key.
        self._draw_keys = tuple(
            (tuple(c.node * KEYS_PER_NODE + phase for phase in c.rotation), c.node * KEYS_PER_NODE + POWER)
            for c in site.connectors
        )
        # (first key of a node, first key of its parent) for every node but the root, children first.
        self._upward = tuple(
            (node.index * KEYS_PER_NODE, node.parent * KEYS_PER_NODE)
            for node in reversed(site.nodes)
            if node.parent is not None
        )
        # Last cycle's records per connector index, handed out again while their fields stay the same:
        # building a frozen dataclass per connector and cycle is a good part of a large site's cycle.
        self._last_intents: list[Intent | None] = [None] * len(site.connectors)
        self._last_demands: list[Demand | None] = [None] * len(site.connectors)
        self._last_setpoints: list[ConnectorSetpoint | None] = [None] * len(site.connectors)
        # The first cycle of a program without memory: what the chargers draw until its first setpoints
        # have taken effect was set before it ran (``_overdraw``).
        self._started_ts = -math.inf
        self._follower = TargetFollower(site.config.control.target_switch_s)
        self.targets_in_force: Targets | None = None
        """The targets (plan's or fallback's) this cycle's intent was shaped by, for telemetry."""
        self._battery_targets_w: Mapping[str, float] = {}
        self._fallback = FallbackSchedule(site)
        self._min_current_a = {c.id: c.min_current_a for c in site.connectors}
        # Per connector index: what the plan's target asks of a session this cycle, at most what the
        # session wants (for the clamp report).
        self._plan_wants_a: dict[int, float] = {}
        self._blocked_key: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._blocked: frozenset[int] = frozenset()
        self._blocked_nodes: frozenset[int] = frozenset()

    def step(self, image: ProcessImage) -> CycleOutput:
        site = self.site
        state = self.state
        now = image.t
        if state.last_t is None:
            self._started_ts = now
        dt = site.period_s if state.last_t is None else max(0.0, now - state.last_t)
        state.last_t = now

        interlocks = evaluate_interlocks(
            now=now,
            contacts=image.contacts,
            inputs=self._contact_inputs,
            latches=state.latches,
            resets=image.resets,
        )
        state.latches = dict(interlocks.latches)
        limits = effective_limits(site, self._fuse_limits, now, image.dso, image.remote_limits)
        dso_pct = dso_limit_pct(site, image.dso)
        self._track_sessions(image)

        if interlocks.mode is not SiteMode.NORMAL:
            return self._safe_state(image, interlocks.mode, limits, dso_pct, interlocks.events)

        plan = image.targets
        import_cap_w = plan.site_import_cap_w if plan is not None and plan.source == "plan" else None
        uncontrolled, rem, fixed_connectors, overdraws = self._capacity(image, limits, import_cap_w)
        rem_before = list(rem)
        intents = self._intents(image, fixed_connectors, limits)
        demands = self._demands(intents, now)
        allocated = allocate(site, rem, demands)
        setpoints_a = self._shape(allocated, intents, rem_before, now, dt, fixed_connectors)
        batteries = self._batteries(image, intents, allocated, rem)
        events = (*interlocks.events, *overdraws) if overdraws else interlocks.events
        clamped = tuple(
            site.connectors[i].id for i, want_a in self._plan_wants_a.items() if want_a - setpoints_a[i] > CLAMP_EPS_A
        )
        return self._emit(
            image,
            SiteMode.NORMAL,
            setpoints_a,
            batteries,
            limits,
            uncontrolled,
            dso_pct,
            events,
            self._follower.source,
            clamped,
        )

    # -- sessions -------------------------------------------------------------------------------

    def _track_sessions(self, image: ProcessImage) -> None:
        site = self.site
        now = image.t
        control = site.config.control
        headroom_a = control.draw_headroom_a
        probe_interval_s = control.probe_interval_s
        connected = SessionState.CONNECTED
        for connector, reading, memory in zip(site.connectors, image.connectors, self.state.connectors, strict=True):
            if reading is None or reading.quality != _GOOD:
                continue
            if reading.state in connected:
                session = memory.session
                id_token = reading.id_token
                if session is None or (id_token is not None and session.id_token not in (None, id_token)):
                    session = memory.session = open_session(site, connector, reading, now)
                elif session.id_token is None and id_token is not None:
                    session = memory.session = open_session(site, connector, reading, session.started_ts)
                update_draw_cap(session, connector, reading, memory.setpoint_a, now, headroom_a, probe_interval_s)
            else:
                memory.session = None

    # -- capacity ---------------------------------------------------------------------------------

    def _capacity(
        self, image: ProcessImage, limits: tuple[NodeLimit, ...], import_cap_w: float | None
    ) -> tuple[Uncontrolled, list[float], set[int], list[InterlockEvent]]:
        """Uncontrolled load, the capacity left per allocation key, the connectors that are silent, and
        the overdraws that started or ended this cycle.

        ``import_cap_w`` (a plan's ``site_import_cap_w``) also bounds the root's power, measured like its
        limits: the plan's peak holds when the building draws more than the plan forecast. It is intent,
        not protection, so it is no limit (reported limits and stale-meter assumptions stay physical) and
        it never leaves less than nothing (a cap below the uncontrolled load pauses charging, no more).
        """
        site = self.site
        voltage_v = site.voltage_v
        tolerance_a = site.config.control.overdraw_tolerance_a
        size = len(site.nodes) * KEYS_PER_NODE
        # Per allocation key (A on a node's phases, W on its POWER key): what the controllable devices
        # measure, and what the silent ones are assumed to draw or the overdrawing ones draw beyond
        # their setpoint. Each device is added at its own node; one bottom-up pass gives every subtree's sum.
        measured = [0.0] * size
        fixed = [0.0] * size
        fixed_connectors: set[int] = set()
        overdraws: list[InterlockEvent] = []
        excess = False
        for connector, (phase_keys, power_key), reading, memory in zip(
            site.connectors, self._draw_keys, image.connectors, self.state.connectors, strict=True
        ):
            if reading is not None and reading.quality == _GOOD:
                # Unrolled: this loop runs for every connector, and a loop over its phases costs more
                # than the additions. A single-phase charger loads only the phase of its L1. Above its
                # setpoint + tolerance (a decrease in flight aside), or once overdrawing, ``_overdraw``
                # decides; that is rare, so the common case costs one addition and a few comparisons.
                limit_a = memory.setpoint_a + tolerance_a
                if len(phase_keys) == 3:
                    a1, a2, a3 = current = reading.current_a
                    l1, l2, l3 = phase_keys
                    measured[l1] += a1
                    measured[power_key] += a1 * voltage_v
                    measured[l2] += a2
                    measured[power_key] += a2 * voltage_v
                    measured[l3] += a3
                    measured[power_key] += a3 * voltage_v
                    if a1 > limit_a or a2 > limit_a or a3 > limit_a or memory.overdrawing:
                        excess |= self._overdraw(
                            connector, phase_keys, power_key, current, memory, fixed, overdraws, image.t
                        )
                else:
                    current = reading.current_a
                    a1 = current[0]
                    measured[phase_keys[0]] += a1
                    measured[power_key] += a1 * voltage_v
                    if a1 > limit_a or memory.overdrawing:
                        excess |= self._overdraw(
                            connector, phase_keys, power_key, current, memory, fixed, overdraws, image.t
                        )
                continue
            fixed_connectors.add(connector.index)
            assumed_a = max(memory.setpoint_a, connector.fallback_current_a)
            for key in phase_keys:
                fixed[key] += assumed_a
            fixed[power_key] += assumed_a * voltage_v * len(connector.rotation)
        for battery, b_reading, b_memory in zip(site.batteries, image.batteries, self.state.batteries, strict=True):
            base = battery.node * KEYS_PER_NODE
            if b_reading is not None and b_reading.quality == _GOOD:
                for p in range(3):
                    measured[base + p] += b_reading.power_w / (3 * voltage_v)
                measured[base + POWER] += b_reading.power_w
                # Credit a discharge only as far as it is measured; count a charge at its worst.
                worst_w = max(b_reading.power_w, b_memory.setpoint_w)
            else:
                worst_w = max(0.0, b_memory.setpoint_w)
            for p in range(3):
                fixed[base + p] += worst_w / (3 * voltage_v)
            fixed[base + POWER] += worst_w
        for child, parent in self._upward:
            measured[parent] += measured[child]
            measured[parent + 1] += measured[child + 1]
            measured[parent + 2] += measured[child + 2]
            measured[parent + POWER] += measured[child + POWER]
        if fixed_connectors or site.batteries or excess:  # else every fixed load is zero, and so are their sums
            for child, parent in self._upward:
                fixed[parent] += fixed[child]
                fixed[parent + 1] += fixed[child + 1]
                fixed[parent + 2] += fixed[child + 2]
                fixed[parent + POWER] += fixed[child + POWER]
        meters: dict[str, tuple[tuple[float, float, float], float] | None] = {}
        for meter_id, meter in image.meters.items():
            meters[meter_id] = (meter.current_a, meter.power_w) if meter.quality == _GOOD else None
        uncontrolled = estimate_uncontrolled(site, meters, measured, limits)
        rem = capacity(site, limits, uncontrolled, fixed)
        if import_cap_w is not None:
            rem[POWER] = min(rem[POWER], max(0.0, import_cap_w - uncontrolled[POWER] - fixed[POWER]))
        return uncontrolled_by_node(uncontrolled), rem, fixed_connectors, overdraws

    def _overdraw(
        self,
        connector: Connector,
        phase_keys: tuple[int, ...],
        power_key: int,
        current: tuple[float, float, float],
        memory: ConnectorMemory,
        fixed: list[float],
        events: list[InterlockEvent],
        now: float,
    ) -> bool:
        """Reserve, at the connector's node, what a charger draws beyond its setpoint; True if it did.

        A charger may draw up to its setpoint, or while a decrease is in flight up to the setpoint it
        came from (and in the program's first cycles whatever it was told before: its first setpoint
        needs its response delay too). One that draws more than that plus
        ``control.overdraw_tolerance_a`` on any phase ignores its limit: from then on, until its draw is
        back within (``OVERDRAW_RELEASE_A`` below the threshold), everything it draws above its setpoint
        is added to ``fixed`` on its phases, so the headroom of its node and every node above shrinks by
        it. It stays controlled: its own setpoint is still allocated and written (see ``_demands``).
        Start and end are reported once each, as events.
        """
        setpoint_a = memory.setpoint_a
        allowed_a = setpoint_a
        if memory.inflight_until_ts > now and memory.inflight_a > allowed_a:
            allowed_a = memory.inflight_a
        phases = len(phase_keys)
        draw_a = max(current[:phases])
        tolerance_a = self.site.config.control.overdraw_tolerance_a
        if memory.overdrawing:
            if draw_a <= allowed_a + max(0.0, tolerance_a - OVERDRAW_RELEASE_A):
                memory.overdrawing = False
                events.append(
                    InterlockEvent(
                        now,
                        connector.id,
                        "overdraw_ended",
                        f"draws {draw_a:.1f} A per phase, within its allowed {allowed_a:.1f} A + tolerance",
                    )
                )
                return False
        elif draw_a <= allowed_a + tolerance_a:
            return False  # a decrease still in flight: the charger may draw its old setpoint a while
        elif now < self._started_ts + connector.response_delay_s + self.site.period_s:
            return False  # the program just started: this is what the charger was told before, not yet ours
        else:
            memory.overdrawing = True
            events.append(
                InterlockEvent(
                    now,
                    connector.id,
                    "overdraw",
                    f"draws {draw_a:.1f} A per phase, allowed {allowed_a:.1f} A (setpoint {setpoint_a:.1f} A): "
                    f"its nodes reserve the {draw_a - setpoint_a:.1f} A above the setpoint",
                    draw_a - setpoint_a,
                )
            )
        # Above the setpoint, not the in-flight value: a charger that ignores its limit does not follow
        # a decrease either. The allocator counts it at its new setpoint, which ``_demands`` keeps from
        # going below this one, so setpoint + this excess covers all it draws.
        over_a = 0.0
        for k in range(phases):
            above_a = current[k] - setpoint_a
            if above_a > 0.0:
                fixed[phase_keys[k]] += above_a
                over_a += above_a
        fixed[power_key] += over_a * self.site.voltage_v
        return over_a > 0.0

    # -- intent -----------------------------------------------------------------------------------

    def _update_blocked(self, image: ProcessImage) -> None:
        """Connector and node indices an operator blocked (maintenance subtrees, unavailable connectors)."""
        key = (image.maintenance, image.unavailable)
        if key == self._blocked_key:
            return
        site = self.site
        nodes = {site.node_index[n] for n in image.maintenance if n in site.node_index}
        subtree = {n.index for n in site.nodes if any(p in nodes for p in n.path)}
        connectors = {c for n in nodes for c in site.nodes[n].connectors}
        connectors.update(site.connector_index[c] for c in image.unavailable if c in site.connector_index)
        self._blocked_key = key
        self._blocked = frozenset(connectors)
        self._blocked_nodes = frozenset(subtree)

    def _intents(self, image: ProcessImage, fixed: set[int], limits: tuple[NodeLimit, ...]) -> dict[int, Intent]:
        site = self.site
        intents: dict[int, Intent] = {}
        flexible: list[int] = []
        flexible_draw_w = 0.0
        last = self._last_intents
        self._update_blocked(image)
        blocked = self._blocked
        for connector, reading, memory in zip(site.connectors, image.connectors, self.state.connectors, strict=True):
            session = memory.session
            # No intent, no demand: a blocked connector is allocated nothing and paused like any other.
            if session is None or reading is None or connector.index in fixed or connector.index in blocked:
                continue
            index = connector.index
            intent = last[index] = connector_intent(site, connector, reading, session, image, last[index])
            intents[index] = intent
            if intent.flexible and intent.rank > 0:
                flexible.append(index)
                flexible_draw_w += max(reading.current_a) * site.voltage_v * len(intent.phases)
        if flexible:
            self._share_surplus(image, intents, flexible, flexible_draw_w)
        self._apply_targets(image, intents, limits)
        return intents

    def _fallback_targets(
        self, image: ProcessImage, intents: dict[int, Intent], limits: tuple[NodeLimit, ...]
    ) -> Targets:
        """The local fallback schedule's targets for this cycle (no usable plan; prices known)."""
        site = self.site
        memories = self.state.connectors
        sessions = []
        for index, intent in intents.items():
            reading = image.connectors[index]
            session = memories[index].session
            if reading is None or session is None:
                continue
            connector = site.connectors[index]
            sessions.append(session_input(site, connector, reading, session, intent, image.requests.get(connector.id)))
        meter = site.nodes[0].meter
        root = image.meters.get(meter) if meter is not None else None
        batteries = [
            BatteryInput(battery.id, reading.soc_pct, reading.power_w)
            for battery, reading in zip(site.batteries, image.batteries, strict=True)
            if reading is not None and reading.quality == _GOOD
        ]
        inputs = FallbackInputs(
            sessions=sessions,
            prices=image.prices,
            pv_surplus_w=uncontrolled_surplus_w(site, image),
            grid_import_w=root.power_w if root is not None and root.quality == _GOOD else 0.0,
            import_limit_w=import_limit_w(site, limits),
            batteries=batteries,
        )
        return self._fallback.targets(inputs, image.t)

    def _apply_targets(self, image: ProcessImage, intents: dict[int, Intent], limits: tuple[NodeLimit, ...]) -> None:
        """Cap each session's demand with its target (a plan's, else the fallback's): intent only.

        Without a plan and without prices the fallback would only repeat what the sessions want: it is
        skipped, and the program's own rules (priorities, urgency, PV surplus for flexible users) decide.
        """
        source = image.targets
        if source is None and image.prices is not None:
            source = self._fallback_targets(image, intents, limits)
        self.targets_in_force = source
        self._battery_targets_w = source.batteries if source is not None else {}
        targets = self._follower.follow(source, image.t, self._min_current_a)
        plan = self._follower.source == "plan"
        wants = self._plan_wants_a = {}
        if not targets:
            return
        site = self.site
        for index, intent in intents.items():
            connector = site.connectors[index]
            target_a = targets.get(connector.id)
            if target_a is None:
                continue
            if plan:
                wants[index] = min(target_a, intent.demand_a)
            if target_a >= intent.demand_a:
                continue
            demand_a = target_a if target_a >= connector.min_current_a else 0.0
            intents[index] = Intent(
                demand_a, intent.phases, intent.rank, intent.laxity_s, intent.base_priority, intent.flexible
            )

    def _share_surplus(
        self, image: ProcessImage, intents: dict[int, Intent], flexible: list[int], flexible_draw_w: float
    ) -> None:
        """Flexible sessions that are not urgent charge from PV surplus only, in equal shares."""
        site = self.site
        battery_charge_w = sum(max(0.0, r.power_w) for r in image.batteries if r is not None and r.quality == _GOOD)
        share_w = pv_surplus_w(site, image, flexible_draw_w, battery_charge_w) / len(flexible)
        for index in flexible:
            intent = intents[index]
            share_a = share_w / (site.voltage_v * len(intent.phases))
            demand_a = min(intent.demand_a, share_a)
            if demand_a < site.connectors[index].min_current_a:
                demand_a = 0.0
            intents[index] = Intent(demand_a, intent.phases, intent.rank, intent.laxity_s, intent.base_priority, True)

    def _demands(self, intents: dict[int, Intent], now: float) -> list[Demand]:
        site = self.site
        control = site.config.control
        resume_delay_s = control.resume_delay_s
        memories = self.state.connectors
        last = self._last_demands
        demands: list[Demand] = []
        for index, intent in intents.items():
            memory = memories[index]
            running = memory.setpoint_a > PAUSED_EPS_A
            demand_a = intent.demand_a
            if demand_a <= 0.0 or (not running and now - memory.paused_at_ts < resume_delay_s):
                continue  # nothing wanted, or paused too recently to start again
            if running and memory.overdrawing:
                # Its headroom counts what it draws above its last setpoint: lowering that setpoint
                # frees nothing it would follow, yet the allocator would hand the difference to the
                # others. So while it overdraws its setpoint may rise or pause, not shrink (below what
                # it wants). Rare: built afresh every cycle, and not kept for reuse.
                last[index] = None
                lo_a = min(demand_a, max(site.connectors[index].min_current_a, memory.setpoint_a))
                pinned = Demand(
                    index=index,
                    lo_a=lo_a,
                    hi_a=demand_a,
                    phases=intent.phases,
                    rank=intent.rank,
                    laxity_s=intent.laxity_s,
                    running=True,
                    start_margin_a=control.resume_margin_a,
                )
                demands.append(pinned)
                continue
            demand = last[index]
            # The connector's minimum and the start margin never change; the rest is last cycle's
            # demand as long as it still matches.
            if (
                demand is None
                or demand.hi_a != demand_a
                or demand.running != running
                or demand.laxity_s != intent.laxity_s
                or demand.rank != intent.rank
                or demand.phases != intent.phases
            ):
                demand = last[index] = Demand(
                    index=index,
                    lo_a=site.connectors[index].min_current_a,
                    hi_a=demand_a,
                    phases=intent.phases,
                    rank=intent.rank,
                    laxity_s=intent.laxity_s,
                    running=running,
                    start_margin_a=control.resume_margin_a,
                )
            demands.append(demand)
        return demands

    # -- shaping in time --------------------------------------------------------------------------

    def _shape(
        self,
        allocated: dict[int, float],
        intents: dict[int, Intent],
        rem_before: list[float],
        now: float,
        dt: float,
        fixed: set[int],
    ) -> list[float]:
        """Ramp up gradually, down at once, and hold back increases that would overlap a decrease."""
        site = self.site
        ramp_a = site.config.control.ramp_up_a_per_s * max(dt, site.period_s)
        setpoints = [0.0] * len(site.connectors)
        increases: list[int] = []
        for connector, memory in zip(site.connectors, self.state.connectors, strict=True):
            index = connector.index
            previous = memory.setpoint_a
            if index in fixed:
                # Silent device: hold what it was last told; it is counted at its worst case anyway.
                setpoints[index] = previous
                continue
            target = allocated.get(index, 0.0)
            if target > previous + PAUSED_EPS_A:
                target = min(target, max(connector.min_current_a, previous + ramp_a))
                increases.append(index)
            setpoints[index] = target
        if increases:
            self._break_before_make(setpoints, increases, intents, rem_before, fixed, now)
        for connector, memory in zip(site.connectors, self.state.connectors, strict=True):
            index = connector.index
            new = setpoints[index]
            previous = memory.setpoint_a
            if new < previous - PAUSED_EPS_A and index not in fixed:
                memory.inflight_a = max(previous, memory.inflight_a if memory.inflight_until_ts > now else 0.0)
                memory.inflight_until_ts = now + connector.response_delay_s + site.period_s
                if new <= PAUSED_EPS_A and index in intents and intents[index].demand_a > 0.0:
                    memory.paused_at_ts = now
            memory.setpoint_a = new
        return setpoints

    def _break_before_make(
        self,
        setpoints: list[float],
        increases: list[int],
        intents: dict[int, Intent],
        rem_before: list[float],
        fixed: set[int],
        now: float,
    ) -> None:
        """Defer increases on node-phases where decreases still in flight have not freed the capacity.

        A charger that was told to go down keeps drawing its old setpoint for its response delay, so
        during that window it occupies max(new setpoint, old setpoint). ``rem_before`` is the capacity
        left for all allocatable connectors; the increases that would not fit beside those in-flight
        draws wait, least important first, until the decreases have taken effect.
        """
        site = self.site
        voltage_v = site.voltage_v
        used = [0.0] * len(rem_before)
        for connector, memory in zip(site.connectors, self.state.connectors, strict=True):
            index = connector.index
            if index in fixed:
                continue  # already counted at its worst case in rem_before
            pending = max(memory.setpoint_a, memory.inflight_a if memory.inflight_until_ts > now else 0.0)
            occupied = max(setpoints[index], pending)
            if occupied <= 0.0:
                continue
            intent = intents.get(index)
            phases = intent.phases if intent is not None else connector.rotation
            for n in connector.path:
                base = n * KEYS_PER_NODE
                for p in phases:
                    used[base + p] += occupied
                used[base + POWER] += occupied * voltage_v * len(phases)
        violated = {k for k in range(len(used)) if used[k] > rem_before[k] + 1e-6}
        if not violated:
            return
        # Least important first: lowest priority class, then the calmest session.
        increases.sort(key=lambda i: (intents[i].rank, -intents[i].laxity_s))
        for index in increases:
            if not violated:
                break
            connector = site.connectors[index]
            memory = self.state.connectors[index]
            phases = intents[index].phases
            keys = [n * KEYS_PER_NODE + p for n in connector.path for p in phases]
            keys += [n * KEYS_PER_NODE + POWER for n in connector.path]
            if not any(k in violated for k in keys):
                continue
            pending = max(memory.setpoint_a, memory.inflight_a if memory.inflight_until_ts > now else 0.0)
            held = memory.setpoint_a if memory.setpoint_a >= connector.min_current_a else 0.0
            # Grant the part of the increase that already fits; if that is below the minimum, wait.
            per_amp_w = voltage_v * len(phases)
            excess_a = max(
                (used[k] - rem_before[k]) / (per_amp_w if k % KEYS_PER_NODE == POWER else 1.0)
                for k in keys
                if k in violated
            )
            granted = setpoints[index] - excess_a
            new = granted if granted >= connector.min_current_a and granted > held else held
            give_back = max(setpoints[index], pending) - max(new, pending)
            setpoints[index] = new
            for n in connector.path:
                base = n * KEYS_PER_NODE
                for p in phases:
                    used[base + p] -= give_back
                used[base + POWER] -= give_back * voltage_v * len(phases)
            violated = {k for k in violated if used[k] > rem_before[k] + 1e-6}

    # -- battery ----------------------------------------------------------------------------------

    def _batteries(
        self, image: ProcessImage, intents: dict[int, Intent], allocated: dict[int, float], rem: list[float]
    ) -> list[BatteryCommand]:
        """Shave peaks with the battery when sessions are curtailed, soak up PV export, else idle."""
        site = self.site
        commands: list[BatteryCommand] = []
        root_meter = site.nodes[0].meter
        root = image.meters.get(root_meter) if root_meter is not None else None
        net_w = root.power_w if root is not None and root.quality == _GOOD else None
        band_w = 3 * site.voltage_v * IEC_61851_MIN_CURRENT_A
        for battery, reading, memory in zip(site.batteries, image.batteries, self.state.batteries, strict=True):
            if battery.node in self._blocked_nodes:
                memory.setpoint_w = 0.0
                commands.append(BatteryCommand(battery.id, 0.0, standby=True))
                continue
            if reading is None or reading.quality != _GOOD or net_w is None:
                memory.setpoint_w = 0.0
                commands.append(BatteryCommand(battery.id, 0.0, standby=False))
                continue
            headroom_w = math.inf
            for n in battery.path:
                base = n * KEYS_PER_NODE
                node_w = rem[base + POWER]
                phase_w = min(rem[base], rem[base + 1], rem[base + 2]) * 3 * site.voltage_v
                headroom_w = min(headroom_w, node_w, phase_w)
            shortfall_w = 0.0
            under = set(site.nodes[battery.node].connectors)
            for index, intent in intents.items():
                if index in under and intent.rank > 0:
                    missing_a = intent.demand_a - allocated.get(index, 0.0)
                    if missing_a > 0.0:
                        shortfall_w += missing_a * site.voltage_v * len(intent.phases)
            measured_w = reading.power_w
            wanted_w = self._battery_targets_w.get(battery.id)
            if wanted_w is not None and math.isfinite(wanted_w):
                # A plan's (or the fallback's) battery power is intent too. Discharging only lowers the
                # import; charging may use what the battery is already counted at (the higher of its
                # reading and its setpoint) plus what is left on its path, less the band; shaving a
                # peak for curtailed sessions still wins where it discharges more.
                if wanted_w > 0.0:
                    counted_w = max(0.0, measured_w, memory.setpoint_w)
                    target_w = min(wanted_w, counted_w + max(0.0, headroom_w - band_w))
                else:
                    target_w = wanted_w
                if shortfall_w > 0.0 and headroom_w < band_w:
                    target_w = min(target_w, measured_w - shortfall_w - max(0.0, -headroom_w))
            elif shortfall_w > 0.0 and headroom_w < band_w:
                target_w = measured_w - shortfall_w - max(0.0, -headroom_w)
            elif net_w < 0.0:
                target_w = measured_w - net_w
            elif measured_w < 0.0:
                # Give back only what stays unused beyond a band, or a slow battery and the
                # sessions it frees would chase each other.
                target_w = min(0.0, measured_w + max(0.0, headroom_w - band_w))
            else:
                target_w = max(0.0, measured_w - net_w)
            target_w = min(max(target_w, -battery.max_discharge_w), battery.max_charge_w)
            if reading.soc_pct <= battery.soc_min_pct:
                target_w = max(target_w, 0.0)
            if reading.soc_pct >= battery.soc_max_pct:
                target_w = min(target_w, 0.0)
            memory.setpoint_w = target_w
            commands.append(BatteryCommand(battery.id, target_w, standby=False))
        return commands

    # -- outputs ----------------------------------------------------------------------------------

    def _safe_state(
        self,
        image: ProcessImage,
        mode: SiteMode,
        limits: tuple[NodeLimit, ...],
        dso_pct: float,
        events: tuple[InterlockEvent, ...],
    ) -> CycleOutput:
        """Interlock active: every connector paused, every battery to standby, this very cycle."""
        now = image.t
        for connector, memory in zip(self.site.connectors, self.state.connectors, strict=True):
            if memory.setpoint_a > PAUSED_EPS_A:
                memory.inflight_a = memory.setpoint_a
                memory.inflight_until_ts = now + connector.response_delay_s + self.site.period_s
            memory.setpoint_a = 0.0
        for memory_b in self.state.batteries:
            memory_b.setpoint_w = 0.0
        setpoints = [0.0] * len(self.site.connectors)
        batteries = [BatteryCommand(b.id, 0.0, standby=True) for b in self.site.batteries]
        return self._emit(image, mode, setpoints, batteries, limits, None, dso_pct, events)

    def _emit(
        self,
        image: ProcessImage,
        mode: SiteMode,
        setpoints_a: list[float],
        batteries: list[BatteryCommand],
        limits: tuple[NodeLimit, ...],
        uncontrolled: Uncontrolled | None,
        dso_pct: float,
        events: tuple[InterlockEvent, ...],
        target_source: TargetSource | None = None,
        clamped: tuple[str, ...] = (),
    ) -> CycleOutput:
        three_v = 3 * self.site.voltage_v
        last = self._last_setpoints
        setpoints: list[ConnectorSetpoint] = []
        for c, a in zip(self.site.connectors, setpoints_a, strict=True):
            setpoint = last[c.index]
            if setpoint is None or setpoint.current_a != a:
                setpoint = last[c.index] = ConnectorSetpoint(c.id, a, a * three_v if c.dc else None)
            setpoints.append(setpoint)
        return CycleOutput(
            t=image.t,
            mode=mode,
            setpoints=tuple(setpoints),
            batteries=tuple(batteries),
            limits=limits,
            uncontrolled=uncontrolled,
            dso_pct=dso_pct,
            latches=dict(self.state.latches),
            events=events,
            target_source=target_source,
            clamped=clamped,
        )
