"""The local fallback schedule: per-cycle intent (targets) while no usable cloud plan exists.

``FallbackSchedule.targets(inputs, now_ts)`` returns a ``controller.targets.Targets(source="fallback")``:
per connector with an open session the per-phase current to charge at now (a ceiling, 0 = wait), per
battery the power to take or give. No solver: departure-aware sessions charge at full rate in the
cheapest price steps before they leave (and at once when their slack is small), walk-in sessions
charge fully while the price is at or below the median of the next 12 h and at their minimum
otherwise, PV surplus goes to waiting sessions first and then to the battery, and the battery shaves
import peaks. The rules and their parameters are explained in ``docs/fallback.md``.

It runs every cycle, so the expensive part (choosing price steps) is kept per session and redone only
when the session or the curve changes, and every ``REFRESH_S`` to catch up with what was delivered;
every other cycle costs a few comparisons per session. Decisions taken at a refresh keep a step that
was charging on until the step ends, so a session never switches on and off within a price step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.site import Battery, Site
from controller.targets import PriceCurve, Targets
from fallback.inputs import FallbackInputs, SessionInput
from fallback.prices import DAY_S, PriceHorizon, build_horizon

SAFETY_FACTOR = 1.2
"""Planned charging time = 1.2 × the time the energy needs at full rate: room for an EV that draws less."""
REFRESH_S = 900.0
"""A session's plan is redone this often to account for what it actually received."""
PRICE_BLIND_PRIORITY = 5
"""Sessions of this base priority or higher charge at full rate whatever the price."""
WALK_IN_WINDOW_S = 12 * 3600.0
"""A walk-in charges fully while the price is at or below the median of this window from the step's start."""
BATTERY_WINDOW_S = DAY_S
"""The battery charges from the grid in the cheapest steps of this window that fill it."""
PEAK_SHAVE_FRACTION = 0.8
"""The battery discharges to hold the grid import at this fraction of the connection's import limit."""
SOC_HYSTERESIS_PCT = 2.0
"""An empty (full) battery discharges (charges) again only once this far inside its SoC bounds."""
ENERGY_RAISED_WH = 1.0
"""Remaining energy that grows by more than this means a new target: the session is planned afresh."""
NO_PRICES_RECHECK_S = 60.0
"""Without a usable curve the horizon is looked for again this often (a future curve may come into force)."""

# The rule that set a connector's target, as named in ``Targets.reference`` and docs/fallback.md.
DONE = "done"
PRIORITY = "priority"
URGENT = "urgent"
FLEXIBLE = "flexible"
NO_PRICES = "no_prices"
AS_MUCH_AS_POSSIBLE = "as_much_as_possible"
CHEAP_STEP = "cheap_step"
WAIT = "wait"
WALK_IN_CHEAP = "walk_in_cheap"
WALK_IN_LOW = "walk_in_low"
PV = "pv"

PlanKey = tuple[float | None, float, int, int, bool, bool]
"""What a session's plan depends on besides its energy: departure, max current, phases, priority,
flexible, and whether it has an energy target."""


@dataclass(slots=True)
class _SessionMemory:
    key: PlanKey
    last_wh: float
    curve_version: int = -1
    planned_ts: float = -math.inf
    windows: tuple[tuple[float, float], ...] = ()
    """The chosen price steps (clipped), in time order: charge at full rate inside them."""
    on: bool = False
    valid_until_ts: float = -math.inf
    """Until when ``on`` holds: the end of the window it is in, or the start of the next one."""
    urgent: bool = False
    """Latched: once its slack ran low a session charges at full rate until it is done or changes."""
    on_surplus: bool = False


@dataclass(slots=True)
class _BatteryMemory:
    discharge_blocked: bool = False
    charge_blocked: bool = False
    cheap_horizon: PriceHorizon | None = None
    """The horizon ``cheap`` was decided on: one per price step (or per curve), so one decision per step."""
    cheap: bool = False


class FallbackSchedule:
    """The fallback schedule of one site, with the memory it keeps between cycles."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._margin_s = site.config.control.urgent_laxity_s
        self._start_margin_a = site.config.control.resume_margin_a
        self._batteries: dict[str, tuple[Battery, _BatteryMemory]] = {
            b.id: (b, _BatteryMemory()) for b in site.batteries
        }
        self._sessions: dict[str, _SessionMemory] = {}
        self._curve: PriceCurve | None = None
        self._curve_version = 0
        self._horizon: PriceHorizon | None = None
        self._horizon_until_ts = -math.inf
        self._walk_in_cheap: bool | None = None
        self.rules: dict[str, str] = {}
        """Per connector, the rule that set its target in the last cycle (for telemetry and tests)."""

    def targets(self, inputs: FallbackInputs, now_ts: float) -> Targets:
        self._update_prices(inputs.prices, now_ts)
        voltage_v = self.site.voltage_v
        old = self._sessions
        memories: dict[str, _SessionMemory] = {}
        connectors: dict[str, float] = {}
        rules: dict[str, str] = {}
        waiting: list[tuple[SessionInput, _SessionMemory]] = []
        planned_w = 0.0
        for s in inputs.sessions:
            key: PlanKey = (
                s.departure_ts,
                s.max_current_a,
                s.phase_count,
                s.priority,
                s.flexible,
                s.remaining_wh is None,
            )
            wh = s.remaining_wh if s.remaining_wh is not None else math.inf
            memory = old.get(s.connector)
            if memory is None or memory.key != key or wh > memory.last_wh + ENERGY_RAISED_WH:
                memory = _SessionMemory(key, wh)
            memory.last_wh = wh
            memories[s.connector] = memory
            target_a, rule = self._session_target(s, memory, now_ts)
            connectors[s.connector] = target_a
            rules[s.connector] = rule
            planned_w += target_a * voltage_v * s.phase_count
            if target_a < s.max_current_a:
                waiting.append((s, memory))
            else:
                memory.on_surplus = False
        self._sessions = memories
        left_w = max(0.0, inputs.pv_surplus_w - planned_w)
        if waiting and left_w > 0.0:
            left_w = self._share_surplus(waiting, connectors, rules, left_w)
        else:
            for _, memory in waiting:
                memory.on_surplus = False
        batteries = self._battery_targets(inputs, left_w)
        self.rules = rules
        counts: dict[str, int] = {}
        for rule in rules.values():
            counts[rule] = counts.get(rule, 0) + 1
        reference = "fallback: " + ", ".join(f"{counts[r]} {r}" for r in sorted(counts))
        return Targets(source="fallback", connectors=connectors, batteries=batteries, reference=reference)

    # -- prices ----------------------------------------------------------------------------------

    def _update_prices(self, curve: PriceCurve | None, now_ts: float) -> None:
        """Rebuild the horizon when the curve changes or the step in force ends; never in between."""
        if curve is not self._curve:
            if curve != self._curve:  # a fresh copy of the same curve changes nothing
                self._curve_version += 1
                self._horizon_until_ts = -math.inf
            self._curve = curve
        if self._horizon is not None and now_ts < self._horizon.steps[0][0]:
            self._horizon_until_ts = -math.inf  # the clock went back
        if now_ts < self._horizon_until_ts:
            return
        horizon = self._horizon = build_horizon(curve, now_ts)
        if horizon is None:
            self._horizon_until_ts = now_ts + NO_PRICES_RECHECK_S
            self._walk_in_cheap = None
            return
        self._horizon_until_ts = horizon.step_end_ts
        start_ts, _, price = horizon.steps[0]
        window_end_ts = start_ts + WALK_IN_WINDOW_S
        self._walk_in_cheap = (
            price <= horizon.median_eur_mwh(start_ts, window_end_ts) if horizon.covers(window_end_ts) else None
        )

    # -- sessions --------------------------------------------------------------------------------

    def _session_target(self, s: SessionInput, memory: _SessionMemory, now_ts: float) -> tuple[float, str]:
        max_a = s.max_current_a
        remaining_wh = s.remaining_wh
        if remaining_wh is not None and remaining_wh <= 0.0:
            return 0.0, DONE
        if s.priority >= PRICE_BLIND_PRIORITY:
            return max_a, PRIORITY
        departure_ts = s.departure_ts
        if departure_ts is None:
            if s.flexible:
                return 0.0, FLEXIBLE
            cheap = self._walk_in_cheap
            if cheap is None:
                return max_a, NO_PRICES
            return (max_a, WALK_IN_CHEAP) if cheap else (s.min_current_a, WALK_IN_LOW)
        if remaining_wh is None:
            return max_a, AS_MUCH_AS_POSSIBLE
        needed_s = remaining_wh / (max_a * self.site.voltage_v * s.phase_count) * 3600.0
        plan_s = SAFETY_FACTOR * needed_s
        plan_end_ts = departure_ts - self._margin_s
        if memory.urgent or plan_end_ts - now_ts < plan_s:
            memory.urgent = True
            return max_a, URGENT
        if s.flexible:
            return 0.0, FLEXIBLE
        horizon = self._horizon
        if horizon is None or (plan_end_ts > horizon.end_ts and not horizon.complete):
            return max_a, NO_PRICES
        if memory.curve_version != self._curve_version:
            self._plan(memory, horizon, now_ts, min(plan_end_ts, horizon.end_ts), plan_s, keep_on=False)
        elif now_ts - memory.planned_ts >= REFRESH_S:
            self._plan(memory, horizon, now_ts, min(plan_end_ts, horizon.end_ts), plan_s, keep_on=True)
        if now_ts >= memory.valid_until_ts:
            memory.on, memory.valid_until_ts = _locate(memory.windows, now_ts)
        return (max_a, CHEAP_STEP) if memory.on else (0.0, WAIT)

    def _plan(
        self,
        memory: _SessionMemory,
        horizon: PriceHorizon,
        now_ts: float,
        plan_end_ts: float,
        plan_s: float,
        keep_on: bool,
    ) -> None:
        """Choose the cheapest steps in [now, departure − margin) that give ``plan_s`` at full rate.

        ``keep_on``: a refresh keeps a step the session is charging in on until it ends, so its target
        changes only at step edges (and it can only gain charging time, never lose what it planned).
        """
        kept: list[tuple[float, float]] = []
        if keep_on and memory.on and now_ts < memory.valid_until_ts:
            kept.append((now_ts, memory.valid_until_ts))
            plan_s -= memory.valid_until_ts - now_ts
        chosen = horizon.cheapest(now_ts, plan_end_ts, plan_s) if plan_s > 0.0 else []
        if kept and not any(lo <= now_ts < hi for lo, hi in chosen):
            chosen = kept + chosen
        memory.windows = tuple(sorted(chosen))
        memory.curve_version = self._curve_version
        memory.planned_ts = now_ts
        memory.on, memory.valid_until_ts = _locate(memory.windows, now_ts)

    def _share_surplus(
        self,
        waiting: list[tuple[SessionInput, _SessionMemory]],
        connectors: dict[str, float],
        rules: dict[str, str],
        left_w: float,
    ) -> float:
        """Raise the targets of waiting sessions to absorb PV surplus; what is left goes to the battery.

        Sessions that need their energy come first, earliest departure first (walk-ins last), then the
        flexible ones in equal shares as the program shares surplus among them, then those already past
        their target. The order uses only fixed attributes, so float noise in a slack never reorders it.
        """
        voltage_v = self.site.voltage_v
        needing = [w for w in waiting if not w[0].flexible and rules[w[0].connector] != DONE]
        flexible = [w for w in waiting if w[0].flexible and rules[w[0].connector] != DONE]
        done = [w for w in waiting if rules[w[0].connector] == DONE]
        needing.sort(key=_edf)
        flexible.sort(key=_edf)
        done.sort(key=_edf)
        for s, memory in needing:
            left_w = self._raise(s, memory, left_w, left_w, connectors, rules, voltage_v)
        while flexible:
            # Equal shares; the last in order drops out while a share cannot start everyone.
            share_w = left_w / len(flexible)
            if all(self._fits(s, memory, share_w, connectors, voltage_v) for s, memory in flexible):
                for s, memory in flexible:
                    left_w = self._raise(s, memory, share_w, left_w, connectors, rules, voltage_v)
                break
            flexible.pop()[1].on_surplus = False
        for s, memory in done:
            left_w = self._raise(s, memory, left_w, left_w, connectors, rules, voltage_v)
        return left_w

    def _fits(
        self, s: SessionInput, memory: _SessionMemory, give_w: float, connectors: dict[str, float], voltage_v: float
    ) -> bool:
        """Whether ``give_w`` starts a waiting session: its minimum, plus the start margin unless it runs on it."""
        if connectors[s.connector] > 0.0:
            return True
        start_a = s.min_current_a + (0.0 if memory.on_surplus else self._start_margin_a)
        return give_w >= start_a * voltage_v * s.phase_count

    def _raise(
        self,
        s: SessionInput,
        memory: _SessionMemory,
        give_w: float,
        left_w: float,
        connectors: dict[str, float],
        rules: dict[str, str],
        voltage_v: float,
    ) -> float:
        per_a_w = voltage_v * s.phase_count
        current_a = connectors[s.connector]
        if give_w <= 0.0 or not self._fits(s, memory, give_w, connectors, voltage_v):
            memory.on_surplus = False
            return left_w
        raised_a = min(s.max_current_a, current_a + give_w / per_a_w)
        connectors[s.connector] = raised_a
        rules[s.connector] = PV
        memory.on_surplus = True
        return left_w - (raised_a - current_a) * per_a_w

    # -- batteries -------------------------------------------------------------------------------

    def _battery_targets(self, inputs: FallbackInputs, pv_left_w: float) -> dict[str, float]:
        """Shave import above the threshold, else charge from surplus or in the cheapest steps, else hold."""
        import_w = inputs.grid_import_w - sum(b.power_w for b in inputs.batteries)  # as if no battery ran
        room_w = PEAK_SHAVE_FRACTION * inputs.import_limit_w - import_w
        out: dict[str, float] = {}
        for b in inputs.batteries:
            entry = self._batteries.get(b.battery)
            if entry is None:
                continue  # not in this site's config: nothing to command
            battery, memory = entry
            if b.soc_pct <= battery.soc_min_pct:
                memory.discharge_blocked = True
            elif b.soc_pct >= battery.soc_min_pct + SOC_HYSTERESIS_PCT:
                memory.discharge_blocked = False
            if b.soc_pct >= battery.soc_max_pct:
                memory.charge_blocked = True
            elif b.soc_pct <= battery.soc_max_pct - SOC_HYSTERESIS_PCT:
                memory.charge_blocked = False
            power_w = 0.0
            if room_w < 0.0:
                if not memory.discharge_blocked:
                    power_w = -min(battery.max_discharge_w, -room_w)
            elif not memory.charge_blocked:
                if pv_left_w > 0.0:
                    power_w = min(battery.max_charge_w, pv_left_w)
                    pv_left_w -= power_w
                elif self._cheap_for(battery, memory, b.soc_pct):
                    power_w = min(battery.max_charge_w, room_w)  # never charge into a new peak
            room_w += power_w
            out[b.battery] = power_w
        return out

    def _cheap_for(self, battery: Battery, memory: _BatteryMemory, soc_pct: float) -> bool:
        """Whether the step in force is one of the cheapest that fill the battery in the next day; per step."""
        horizon = self._horizon
        if horizon is None:
            return False  # without prices no hour is cheaper than another: do not charge from the grid
        if memory.cheap_horizon is horizon:
            return memory.cheap
        start_ts = horizon.steps[0][0]
        energy_wh = (battery.soc_max_pct - soc_pct) / 100.0 * battery.capacity_wh
        plan_s = SAFETY_FACTOR * energy_wh / battery.max_charge_w * 3600.0
        chosen = horizon.cheapest(start_ts, start_ts + BATTERY_WINDOW_S, plan_s) if plan_s > 0.0 else []
        memory.cheap = bool(chosen) and chosen[0][0] == start_ts
        memory.cheap_horizon = horizon
        return memory.cheap


def _edf(item: tuple[SessionInput, _SessionMemory]) -> tuple[int, float, str]:
    s = item[0]
    return (-s.priority, s.departure_ts if s.departure_ts is not None else math.inf, s.connector)


def _locate(windows: tuple[tuple[float, float], ...], now_ts: float) -> tuple[bool, float]:
    """Inside a window (and until its end) or before the next one (and until its start)."""
    for lo, hi in windows:
        if now_ts < lo:
            return False, lo
        if now_ts < hi:
            return True, hi
    return False, math.inf
