"""``plaza-ems evaluate``: replay real ACN sessions on a 54-connector Dutch plaza and compare strategies.

The plaza, the data mapping, the strategies, what each strategy knows and the cost definition are
explained in ``docs/evaluate.md``; in short:

* one connector slot per Caltech station id (54), single-phase 32 A, rotated over L1/L2/L3, under
  twin-charger nodes, three sub-boards and one grid connection whose per-phase limit is
  ``connection_share`` x the highest per-phase current of the uncontrolled run;
* a building load at the connection: the real Dutch 15-min load scaled to :data:`BUILDING_PEAK_W`;
* Dutch day-ahead prices (2023, same day of year) plus :data:`IMPORT_ADDER_EUR_KWH`, and a capacity
  tariff of :data:`PEAK_TARIFF_EUR_KW` on the period's highest 15-min import;
* the same minute-by-minute physics for every strategy (:class:`_Physics`): an EV draws
  ``min(setpoint, its own maximum)`` (nothing below 6 A) until it has its requested energy or leaves.

Strategies: ``uncontrolled`` (every EV at full power), ``fallback`` (the real
:class:`controller.program.ControlProgram` with its local fallback schedule), ``mpc`` (a
:class:`mpc.problem.ChargePlanProblem` re-solved every 15 min on what is known then, its first step
handed to the same control program as a plan) and ``offline`` (a perfect-foresight LP over the whole
period, solved once by HiGHS, its schedule handed to the control program the same way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from controller.config import validate_config
from controller.image import ConnectorReading, InputSnapshot, MeterReading, SessionRequest, freeze
from controller.program import ControlProgram
from controller.site import Site, compile_site
from controller.targets import PriceCurve, Targets
from mpc.bench import lp_reference
from mpc.forecast import ProfileLoadForecaster
from mpc.model import (
    IMPORT_ADDER_EUR_KWH,
    SYNTHETIC_PEAK_TARIFF_EUR_KW,
    FloatArray,
    IntArray,
    MpcError,
    PlanInputs,
    PlanningSite,
    planning_site_from,
)
from mpc.problem import ChargePlanProblem, Penalties

__all__ = [
    "DEPARTURES",
    "STRATEGIES",
    "EvalError",
    "World",
    "add_arguments",
    "build_world",
    "evaluate",
    "format_table",
    "main",
]

STRATEGIES = ("uncontrolled", "fallback", "mpc", "offline")
DEPARTURES = ("estimate", "known")
"""What the site is told of each departure (``docs/evaluate.md``, *Departures*): the driver's
``estimated_departure`` from the data, or the true departure at plug-in (ACN-Sim's convention, and a fleet
whose manager sets the departure times)."""

CONNECTORS = 54
"""Connector slots: the Caltech garage's 54 EVSEs (a month's data names 50-52 of them; the rest stay idle)."""
VOLTAGE_V = 230.0
"""Phase-to-neutral (400 V between phases)."""
CONNECTOR_MAX_A = 32.0
"""Every connector is single-phase 32 A (7.4 kW)."""
SMALL_EV_A = 16.0
SMALL_EV_SHARE = 0.2
"""This share of the EVs (chosen by a hash of the session id) has a 16 A on-board charger; the rest 32 A."""
CAP_SEEN_BELOW_A = 1.0
"""The MPC takes an EV drawing more than this below its setpoint to be at its own maximum."""
PROBE_A = SMALL_EV_A + 2.0 * CAP_SEEN_BELOW_A
"""A new session's first target: far enough above the small on-board charger class that a 16 A EV shows itself."""
CHARGER_LIMIT_A = 40.0
"""Twin charger feed (its two connectors are on different phases, so it never binds)."""
BOARD_LIMIT_A = 100.0
"""Each of the three sub-boards (18 connectors, 6 per phase)."""
BUILDING_PEAK_W = 50_000.0
"""The OpenSTEF load is scaled so that its maximum over the whole file is this (an office next to the plaza)."""
PEAK_TARIFF_EUR_KW = SYNTHETIC_PEAK_TARIFF_EUR_KW
"""Capacity tariff on the period's highest 15-min average import, EUR/kW (one billing month)."""
TICK_S = 60
"""Physics and control period, s."""
STEP_S = 900
"""Plan step and billing interval, s."""
TICKS_PER_STEP = STEP_S // TICK_S
STEPS_PER_DAY = 86400 // STEP_S
HORIZON_STEPS = STEPS_PER_DAY
VIOLATION_TOLERANCE_A = 0.3
"""A node-phase counts as over its limit only above limit + this (meter accuracy class and rounding)."""
MIN_CURRENT_A = 6.0
"""IEC 61851: below this an AC EV does not charge."""
ROUND_UP_FROM_A = 3.0
"""A plan current in (0, 6) A is sent as 6 A from this value up, else 0 (see docs/evaluate.md)."""
MPC_PRIORITY = 5.0
"""Weight of every session's shortfall in the MPC's plan (x 2 EUR/kWh): a missed kWh outweighs the kW of
peak it would take (3 EUR/kW), which the MPC, seeing only the month so far, would otherwise save."""
DEPARTURE_PRIOR_S = (-3600.0, 0.0, 3600.0)
"""Departure errors (actual - the driver's estimate) the MPC assumes until DEPARTURE_MIN_SESSIONS have left."""
DEPARTURE_MIN_SESSIONS = 30
"""Completed sessions before the learned departure errors replace the prior (and per estimated-stay class)."""
STAY_CLASSES_H = (2.0, 4.0, 6.0, 8.0)
"""Bounds of the estimated-stay classes whose departure errors are learned apart (docs/evaluate.md)."""
DEPARTURE_WINDOW_QUANTILE = 0.9
"""The MPC's window for a session ends at this quantile of its departure (given it is still plugged in)."""
DEPARTURE_RISK_EUR_KWH = 10.0
"""Each kWh the MPC plans for a session in a step costs this x the probability that the EV has left by then:
the expected value of the energy it would not get (docs/evaluate.md, *Departure risk*)."""
PEAK_RESERVE_SHARE = 0.2
"""The top this share of the month's peak is held back for EVs yet to arrive (PlanInputs.peak_reserve_w)."""
PEAK_RESERVE_EUR_KW = 0.5
"""Price of using that reserve in a plan, EUR/kW: a sixth of the tariff, so energy the EVs need buys it (at up to
10 EUR/kWh) and a price difference of cents does not (docs/evaluate.md)."""
PUBLISH_HOUR_LOCAL = 13
"""Day-ahead prices of the next day are known from this local hour (EPEX auction at 12:00 CET)."""
LOAD_HISTORY_DAYS = 28
"""Days of the load series before the window: history for the MPC's load forecaster."""
LOAD_RECENT_DECAY = 0.8
"""The MPC's building-load forecast carries the last step's error on, fading by this per step: the
meter's 15-min errors persist (lag-1 correlation 0.74 over May 2019's first week), and the controller
holds the plan's import cap against the real load (docs/evaluate.md)."""
SHORTFALL_EUR_KWH = Penalties().shortfall_eur_kwh
"""Undelivered deliverable energy in the objective, EUR/kWh (the MPC's own shortfall price, priority 1)."""
TZ = "Europe/Amsterdam"

ACN_EXCERPT_WINDOW = (date(2019, 5, 1), date(2019, 5, 31))


class EvalError(Exception):
    """The evaluation cannot run as asked (bad window, no sessions, a failed LP)."""


# --------------------------------------------------------------------------------------------------
# The world: sessions, building load, prices
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalSession:
    id: str
    slot: int
    arrive_tick: int
    """First tick the EV is plugged in (arrival rounded up to the tick)."""
    depart_tick: int
    """First tick it is gone (departure rounded down); > arrive_tick."""
    estimate_s: float
    """The departure the site is told (epoch s): all the MPC and the fallback know of it. The driver's
    estimate, or with ``departures="known"`` the true departure (the first tick it is gone)."""
    requested_wh: float
    """The driver's request: what the EV takes before it stops (its need)."""
    max_a: float
    deliverable_wh: float
    """min(requested, max_a x V x stay): what an unconstrained plaza would deliver."""


@dataclass(frozen=True, kw_only=True)
class World:
    """Everything the evaluation replays, on the tick grid (``TICK_S``) and the step grid (``STEP_S``)."""

    start: datetime
    days: int
    slot_ids: tuple[str, ...]
    phase: IntArray
    """(S,) grid phase of each slot."""
    board: IntArray
    """(S,) sub-board of each slot."""
    sessions: tuple[EvalSession, ...]
    building_w: FloatArray
    """(n_steps,) building load per step (constant within the step), W."""
    history_t_s: FloatArray
    history_w: FloatArray
    """The building load on the plaza's clock from LOAD_HISTORY_DAYS before the start (for forecasters)."""
    price_eur_mwh: FloatArray
    """(n_steps + HORIZON_STEPS,) day-ahead price per step, EUR/MWh."""
    history_sessions: tuple[EvalSession, ...]
    """Sessions of the LOAD_HISTORY_DAYS before the window that ended before it (negative ticks, slot -1):
    known history for the MPC's departure margin."""
    dropped_sessions: int
    departures: str
    """One of :data:`DEPARTURES`."""
    load_offset_days: int
    """Building load: plaza day d is load-series day d + this."""

    @property
    def n_steps(self) -> int:
        return self.days * STEPS_PER_DAY

    @property
    def n_ticks(self) -> int:
        return self.n_steps * TICKS_PER_STEP

    @property
    def start_s(self) -> float:
        return self.start.timestamp()

    @property
    def import_eur_kwh(self) -> FloatArray:
        return self.price_eur_mwh / 1000.0 + IMPORT_ADDER_EUR_KWH


def _ev_max_a(session_id: str) -> float:
    digest = hashlib.sha256(session_id.encode()).digest()
    return SMALL_EV_A if digest[0] / 256.0 < SMALL_EV_SHARE else CONNECTOR_MAX_A


def _shared_acn_file(data_dir: Path, day: date) -> Path:
    for path in sorted((data_dir / "acn_sessions").glob("caltech_*.csv.gz")):
        parts = path.name.removesuffix(".csv.gz").split("_")
        first, last = date.fromisoformat(parts[1]), date.fromisoformat(parts[2])
        if first <= day <= last:
            return path
    raise EvalError(f"no ACN file in {data_dir / 'acn_sessions'} covers {day.isoformat()}")


def _told_departure_s(s: Any, depart: float, d_tick: int, start_s: float, tz: zoneinfo.ZoneInfo, known: bool) -> float:
    """The departure the site is told: the true one (the first tick gone) or the driver's estimate."""
    if known:
        return start_s + d_tick * TICK_S
    est = s.estimated_departure
    return est.replace(tzinfo=None).replace(tzinfo=tz).timestamp() if est is not None else depart


def _history_session(
    s: Any, arrive: float, depart: float, start_s: float, tz: zoneinfo.ZoneInfo, known: bool
) -> EvalSession:
    """A session before the window, on the window's tick clock (negative ticks), as the MPC's history."""
    a_tick = math.ceil((arrive - start_s) / TICK_S)
    d_tick = max(a_tick + 1, math.floor((depart - start_s) / TICK_S))
    estimate_s = _told_departure_s(s, depart, d_tick, start_s, tz, known)
    max_a = _ev_max_a(s.session_id)
    requested = s.requested_energy_kwh * 1000.0
    return EvalSession(
        id=s.session_id,
        slot=-1,
        arrive_tick=a_tick,
        depart_tick=d_tick,
        estimate_s=estimate_s,
        requested_wh=requested,
        max_a=max_a,
        deliverable_wh=min(requested, max_a * VOLTAGE_V * (d_tick - a_tick) * TICK_S / 3600.0),
    )


def build_world(
    start_day: date,
    days: int,
    data_dir: Path | None = None,
    n_slots: int = CONNECTORS,
    departures: str = "estimate",
) -> World:
    """Read the data and map them onto the plaza (``docs/evaluate.md``, *Data mapping*)."""
    from hil.data import load_acn_sessions, load_prices
    from mpc.forecast_eval import load_site_load_with_weather

    if days < 1:
        raise EvalError(f"--days must be >= 1, got {days}")
    if departures not in DEPARTURES:
        raise EvalError(f"--departures must be one of {', '.join(DEPARTURES)}, got {departures!r}")
    known = departures == "known"
    tz = zoneinfo.ZoneInfo(TZ)
    start = datetime.combine(start_day, datetime.min.time(), tzinfo=tz).astimezone(UTC)
    if data_dir is None:
        first, last = ACN_EXCERPT_WINDOW
        if not (first <= start_day and start_day + timedelta(days=days - 1) <= last):
            raise EvalError(
                f"the committed ACN excerpt covers {first}..{last}; {days} days from {start_day} do not fit "
                "(give --data-dir ../shared/data for the other windows)"
            )
        acn_path = None
        load_path = None
    else:
        acn_path = _shared_acn_file(data_dir, start_day)
        load_path = data_dir / "site_load" / "openstef_pid_287_15min.csv.gz"
    raw = load_acn_sessions(acn_path)
    prices = load_prices(None if data_dir is None else data_dir / "prices" / "nl_dayahead_2023.csv")
    load_series, _ = load_site_load_with_weather(load_path)

    # Slots: one per station id of the whole file, sorted; ids beyond n_slots are dropped.
    stations = sorted({s.station_id for s in raw})[:n_slots]
    slot_of = {sid: i for i, sid in enumerate(stations)}
    slot_ids = tuple(stations) + tuple(f"spare-{i + 1}" for i in range(n_slots - len(stations)))
    start_s = start.timestamp()
    n_ticks = days * STEPS_PER_DAY * TICKS_PER_STEP
    sessions: list[EvalSession] = []
    history: list[EvalSession] = []
    dropped = 0
    busy_until = [0] * n_slots
    for s in raw:
        # Caltech wall-clock time is replayed as Amsterdam wall-clock time on the same date.
        arrive = s.arrival.replace(tzinfo=None).replace(tzinfo=tz).timestamp()
        depart = s.departure.replace(tzinfo=None).replace(tzinfo=tz).timestamp()
        if depart <= start_s and arrive >= start_s - LOAD_HISTORY_DAYS * 86400.0 and s.requested_energy_kwh > 0.0:
            history.append(_history_session(s, arrive, depart, start_s, tz, known))
        if depart <= start_s or arrive >= start_s + n_ticks * TICK_S:
            continue
        slot = slot_of.get(s.station_id)
        a_tick = max(0, math.ceil((arrive - start_s) / TICK_S))
        d_tick = min(n_ticks, math.floor((depart - start_s) / TICK_S))
        if slot is None or d_tick <= a_tick or arrive < start_s or a_tick < busy_until[slot]:
            dropped += 1  # unknown station, under a minute, under way at the start, or overlapping
            continue
        busy_until[slot] = d_tick
        estimate = _told_departure_s(s, depart, d_tick, start_s, tz, known)
        max_a = _ev_max_a(s.session_id)
        requested = s.requested_energy_kwh * 1000.0
        deliverable = min(requested, max_a * VOLTAGE_V * (d_tick - a_tick) * TICK_S / 3600.0)
        if requested <= 0.0:
            dropped += 1
            continue
        sessions.append(
            EvalSession(
                id=s.session_id,
                slot=slot,
                arrive_tick=a_tick,
                depart_tick=d_tick,
                estimate_s=estimate,
                requested_wh=requested,
                max_a=max_a,
                deliverable_wh=deliverable,
            )
        )
    if not sessions:
        raise EvalError(f"no ACN session in the {days} days from {start_day}")

    # Building load: the load series from LOAD_HISTORY_DAYS after its first day, on the same weekday as
    # the window's first day, shifted onto the plaza's clock by whole days (constant within each step).
    load_t, load_v = np.asarray(load_series.t_s, dtype=np.float64), np.asarray(load_series.values, dtype=np.float64)
    ok = np.isfinite(load_v)
    load_t, load_v = load_t[ok], load_v[ok]
    scale_w = BUILDING_PEAK_W / float(load_v.max())
    first_day = datetime.fromtimestamp(float(load_t[0]), UTC).date() + timedelta(days=LOAD_HISTORY_DAYS + 1)
    first_day += timedelta(days=(start_day.weekday() - first_day.weekday()) % 7)
    offset_days = (first_day - start_day).days
    offset_s = offset_days * 86400.0
    step_t = start_s + np.arange(days * STEPS_PER_DAY) * float(STEP_S)
    if step_t[-1] + offset_s > load_t[-1]:
        raise EvalError(f"the building load series ends before day {days} of the window (at most ~80 days)")
    idx = np.clip(np.searchsorted(load_t, step_t + offset_s, side="right") - 1, 0, len(load_v) - 1)
    building_w = load_v[idx] * scale_w
    hist = (load_t - offset_s >= start_s - LOAD_HISTORY_DAYS * 86400.0) & (load_t - offset_s < step_t[-1] + STEP_S)

    # Prices: 2023 at the same day of year and UTC time (as mpc.model.synthetic_inputs maps them).
    p_t = np.asarray(prices.t_s)
    p_v = np.asarray(prices.values)
    all_t = start_s + np.arange(days * STEPS_PER_DAY + HORIZON_STEPS) * float(STEP_S)
    doy_offset = datetime(2023, 1, 1, tzinfo=UTC).timestamp() - datetime(start.year, 1, 1, tzinfo=UTC).timestamp()
    if start.year % 4 == 0 and start_day >= date(start.year, 3, 1):
        doy_offset += 86400.0
    pi = np.clip(np.searchsorted(p_t, all_t + doy_offset, side="right") - 1, 0, len(p_v) - 1)

    phase = np.arange(n_slots, dtype=np.int64) % 3
    board = (np.arange(n_slots, dtype=np.int64) * 3) // n_slots
    return World(
        start=start,
        days=days,
        slot_ids=slot_ids,
        phase=phase,
        board=board,
        sessions=tuple(sessions),
        history_sessions=tuple(history),
        building_w=building_w,
        history_t_s=load_t[hist] - offset_s,
        history_w=load_v[hist] * scale_w,
        price_eur_mwh=p_v[pi].astype(np.float64),
        dropped_sessions=dropped,
        departures=departures,
        load_offset_days=offset_days,
    )


# --------------------------------------------------------------------------------------------------
# The plaza as the controller sees it
# --------------------------------------------------------------------------------------------------


def site_config(world: World, connection_a: float) -> dict[str, Any]:
    """The site file (as data): grid -> 3 sub-boards -> twin chargers -> single-phase connectors."""
    phase_names = ("L1", "L2", "L3")
    boards: list[dict[str, Any]] = []
    for b in range(3):
        slots = [i for i in range(len(world.slot_ids)) if world.board[i] == b]
        chargers = []
        for k in range(0, len(slots), 2):
            pair = slots[k : k + 2]
            chargers.append(
                {
                    "id": f"cp-{pair[0] + 1:02d}",
                    "limit_a": CHARGER_LIMIT_A,
                    "connectors": [
                        {
                            "id": world.slot_ids[i],
                            "phases": phase_names[int(world.phase[i])],
                            "max_current_a": CONNECTOR_MAX_A,
                            "fallback_current_a": MIN_CURRENT_A,
                            "response_delay_s": 2.0,
                        }
                        for i in pair
                    ],
                }
            )
        boards.append({"id": f"board-{b + 1}", "limit_a": BOARD_LIMIT_A, "children": chargers})
    return {
        "site": {"id": "eval-plaza", "name": "ACN replay plaza", "timezone": TZ, "nominal_voltage_v": VOLTAGE_V},
        "scan": {"period_ms": TICK_S * 1000, "stale_after_ms": 3 * TICK_S * 1000},
        "meters": [{"id": "m_grid"}],
        "tree": {"id": "grid", "limit_a": round(connection_a, 1), "meter": "m_grid", "children": boards},
        "building_loads": [{"id": "building", "node": "grid"}],
    }


def build_site(world: World, connection_a: float) -> Site:
    return compile_site(validate_config(site_config(world, connection_a), "<evaluate>").config)


# --------------------------------------------------------------------------------------------------
# Physics: the same for every strategy
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    """What a run measured."""

    delivered_wh: FloatArray
    step_import_w: FloatArray
    """(n_steps,) average grid import per step, W."""
    energy_cost_eur: float = 0.0
    violation_node_ticks: int = 0
    """(node, tick) pairs with any phase above limit + tolerance."""
    violation_ticks: int = 0
    max_excess_a: float = 0.0
    max_phase_a: FloatArray = field(default_factory=lambda: np.zeros(0))
    solve_s: list[float] = field(default_factory=list)
    solve_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Physics:
    """The plaza, vectorised over slots: plugging in, drawing, leaving, node currents, cost.

    Node rows: 0 grid, 1-3 sub-boards, then the twin chargers; (node, phase) current = sum of the slot
    currents below on that phase, plus the building load (balanced over the phases) at the grid.
    """

    def __init__(self, world: World, site: Site | None, connection_a: float) -> None:
        self.world = world
        s_n = len(world.slot_ids)
        if site is not None:
            nodes = site.nodes
            limits = np.array([n.rating_a for n in nodes])
            incidence = np.zeros((len(nodes) * 3, s_n))
            for c in site.connectors:
                for n in c.path:
                    incidence[3 * n + c.rotation[0], c.index] = 1.0
            order = [site.connector_index[sid] for sid in world.slot_ids]
            self.incidence = incidence[:, order]
        else:
            limits = np.array([connection_a])
            self.incidence = np.zeros((3, s_n))
            self.incidence[world.phase, np.arange(s_n)] = 1.0
        self.limits = np.repeat(limits, 3) + VIOLATION_TOLERANCE_A
        self.n_nodes = len(limits)
        self.session_at = np.full(s_n, -1, dtype=np.int64)
        self.remaining_wh = np.zeros(s_n)
        self.max_a = np.zeros(s_n)
        self.current_a = np.zeros(s_n)
        sessions = world.sessions
        self._by_arrival = sorted(range(len(sessions)), key=lambda j: sessions[j].arrive_tick)
        self._next = 0
        self.depart_tick = np.full(s_n, -1, dtype=np.int64)
        self.record = _Record(
            delivered_wh=np.zeros(len(sessions)),
            step_import_w=np.zeros(world.n_steps),
            max_phase_a=np.zeros(self.n_nodes * 3),
        )
        self._prices = world.import_eur_kwh
        self._tick_wh = TICK_S / 3600.0

    def begin_tick(self, k: int) -> None:
        """Departures and arrivals at tick ``k`` (before the controller reads the chargers)."""
        gone = (self.session_at >= 0) & (self.depart_tick <= k)
        if gone.any():
            self.session_at[gone] = -1
            self.remaining_wh[gone] = 0.0
            self.current_a[gone] = 0.0
        sessions = self.world.sessions
        while self._next < len(self._by_arrival) and sessions[self._by_arrival[self._next]].arrive_tick <= k:
            j = self._by_arrival[self._next]
            s = sessions[j]
            self.session_at[s.slot] = j
            self.remaining_wh[s.slot] = s.requested_wh
            self.max_a[s.slot] = s.max_a
            self.depart_tick[s.slot] = s.depart_tick
            self.current_a[s.slot] = 0.0
            self._next += 1

    def apply(self, k: int, setpoint_a: FloatArray) -> None:
        """Run tick ``k`` with these per-slot setpoints: EVs draw, node currents are checked, import is billed."""
        plugged = self.session_at >= 0
        draw_a = np.where(plugged & (setpoint_a >= MIN_CURRENT_A), np.minimum(setpoint_a, self.max_a), 0.0)
        energy_wh = np.minimum(draw_a * VOLTAGE_V * self._tick_wh, self.remaining_wh)
        self.remaining_wh -= energy_wh
        current = energy_wh / (VOLTAGE_V * self._tick_wh)
        self.current_a = current
        rec = self.record
        idx = self.session_at[plugged]
        rec.delivered_wh[idx] += energy_wh[plugged]
        step = k // TICKS_PER_STEP
        building_w = float(self.world.building_w[step])
        node_a = self.incidence @ current
        node_a[:3] += building_w / (3.0 * VOLTAGE_V)
        np.maximum(rec.max_phase_a, node_a, out=rec.max_phase_a)
        excess = node_a - self.limits
        if excess.max() > 0.0:
            over_nodes = (excess.reshape(self.n_nodes, 3) > 0.0).any(axis=1)
            rec.violation_node_ticks += int(over_nodes.sum())
            rec.violation_ticks += 1
            rec.max_excess_a = max(rec.max_excess_a, float(excess.max()) + VIOLATION_TOLERANCE_A)
        import_w = float(current.sum()) * VOLTAGE_V + building_w
        rec.step_import_w[step] += import_w / TICKS_PER_STEP
        rec.energy_cost_eur += import_w * self._tick_wh / 1000.0 * float(self._prices[step])

    def meter(self, k: int) -> tuple[tuple[float, float, float], float]:
        """The connection meter at tick ``k``: last tick's charging plus the building load of this step.

        The building load is that of the step now starting: a controller scanning every second sees a
        step change of the building within a second, so at the evaluation's 60 s tick it knows it.
        """
        building_a = float(self.world.building_w[k // TICKS_PER_STEP]) / (3.0 * VOLTAGE_V)
        phase_a = self.incidence[:3] @ self.current_a + building_a
        return (float(phase_a[0]), float(phase_a[1]), float(phase_a[2])), float(phase_a.sum()) * VOLTAGE_V


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------


def _run_uncontrolled(world: World, site: Site | None, connection_a: float) -> _Record:
    physics = _Physics(world, site, connection_a)
    full = np.full(len(world.slot_ids), CONNECTOR_MAX_A)
    for k in range(world.n_ticks):
        physics.begin_tick(k)
        physics.apply(k, full)
    return physics.record


class _Controlled:
    """The real control program over the physics: readings in, setpoints out, once per tick."""

    def __init__(self, world: World, site: Site, connection_a: float) -> None:
        self.world = world
        self.site = site
        self.physics = _Physics(world, site, connection_a)
        self.program = ControlProgram(site)
        self.snapshot = InputSnapshot()
        self.connector_ids = tuple(c.id for c in site.connectors)
        self.slot_of_connector = np.array([world.slot_ids.index(cid) for cid in self.connector_ids])
        self.price_curve_day: date | None = None
        self.tz = zoneinfo.ZoneInfo(TZ)

    def _published_until_s(self, t: float) -> float:
        """End of the last day whose day-ahead prices are published at ``t``."""
        local = datetime.fromtimestamp(t, self.tz)
        days = 2 if local.hour >= PUBLISH_HOUR_LOCAL else 1
        end = datetime.combine(local.date() + timedelta(days=days), datetime.min.time(), tzinfo=self.tz)
        return end.timestamp()

    def _update_prices(self, t: float) -> None:
        until = self._published_until_s(t)
        key = datetime.fromtimestamp(until, self.tz).date()
        if key == self.price_curve_day:
            return
        self.price_curve_day = key
        w = self.world
        n = min(len(w.price_eur_mwh), int((until - w.start_s) // STEP_S))
        hours = range(0, n, 4)
        self.snapshot.prices = PriceCurve(
            starts_ts=[w.start_s + h * STEP_S for h in hours],
            prices_eur_mwh=[float(w.price_eur_mwh[h]) for h in hours],
            step_s=3600.0,
        )

    def tick(self, k: int, targets: Targets | None) -> None:
        w = self.world
        physics = self.physics
        t = w.start_s + k * TICK_S
        physics.begin_tick(k)
        self._update_prices(t)
        snap = self.snapshot
        phase_a, power_w = physics.meter(k)
        snap.meters["m_grid"] = MeterReading(phase_a, power_w, t)
        requests = snap.requests
        for cid, slot in zip(self.connector_ids, self.slot_of_connector, strict=True):
            j = int(physics.session_at[slot])
            if j < 0:
                snap.connectors[cid] = ConnectorReading("A1", (0.0, 0.0, 0.0), 0.0, 0.0, None, t)
                requests.pop(cid, None)
                continue
            current = float(physics.current_a[slot])
            s = w.sessions[j]
            delivered = float(physics.record.delivered_wh[j])
            snap.connectors[cid] = ConnectorReading(
                "C2" if current > 0.0 else "B2", (current, 0.0, 0.0), current * VOLTAGE_V, delivered, None, t
            )
            if cid not in requests:
                requests[cid] = SessionRequest(s.estimate_s, s.requested_wh, t)
        snap.targets = targets
        image = freeze(snap, t, self.site.stale_after_s, self.connector_ids, ())
        output = self.program.step(image)
        setpoints = np.zeros(len(w.slot_ids))
        for sp_ in output.setpoints:
            setpoints[self.slot_of_connector[self.site.connector_index[sp_.connector]]] = sp_.current_a
        physics.apply(k, setpoints)


def _plan_target_a(current_a: float) -> float:
    """A plan current as sent to the site: below 6 A an EV does not charge, so round to 0 or 6 A."""
    if current_a >= MIN_CURRENT_A:
        return min(current_a, CONNECTOR_MAX_A)
    return MIN_CURRENT_A if current_a >= ROUND_UP_FROM_A else 0.0


def _run_fallback(world: World, site: Site, connection_a: float) -> _Record:
    ctl = _Controlled(world, site, connection_a)
    for k in range(world.n_ticks):
        ctl.tick(k, None)
    return ctl.physics.record


class _Mpc:
    """The cloud optimiser as it would run: every 15 min, on what is known then."""

    def __init__(self, world: World, planning: PlanningSite, solver: str) -> None:
        self.world = world
        self.planning = planning
        self.solver = solver
        self.problem = (
            ChargePlanProblem(planning, horizon_h=24.0, step_min=STEP_S // 60, accept_inaccurate=True)
            if solver == "osqp"
            else None
        )
        self.forecaster = ProfileLoadForecaster(step_s=STEP_S, tz=TZ, recent_decay=LOAD_RECENT_DECAY)
        self.history = _History(world.history_t_s, world.history_w)
        self.slot_of_planning = np.array([world.slot_ids.index(c.id) for c in planning.connectors])
        self.observed_cap_a: dict[int, float] = {}
        self.probed: set[int] = set()
        self.tz = zoneinfo.ZoneInfo(TZ)
        self.prices = world.import_eur_kwh
        self.departures = _DepartureModel(world)

    def observe(self, physics: _Physics, setpoints_a: FloatArray) -> None:
        """Telemetry: an EV drawing clearly less than its setpoint shows its own maximum."""
        for slot in np.flatnonzero((physics.session_at >= 0) & (physics.current_a > 0.0)):
            j = int(physics.session_at[slot])
            if setpoints_a[slot] - physics.current_a[slot] > CAP_SEEN_BELOW_A and physics.remaining_wh[slot] > 0.0:
                self.observed_cap_a[j] = max(self.observed_cap_a.get(j, 0.0), float(physics.current_a[slot]))

    def _prices(self, step: int, t: float) -> FloatArray:
        local = datetime.fromtimestamp(t, self.tz)
        days = 2 if local.hour >= PUBLISH_HOUR_LOCAL else 1
        end = datetime.combine(local.date() + timedelta(days=days), datetime.min.time(), tzinfo=self.tz)
        known = int((end.timestamp() - self.world.start_s) // STEP_S)
        idx = step + np.arange(HORIZON_STEPS)
        late = idx >= known
        # Not yet published: the same step a day earlier (forecast.price_curve's first rule).
        idx = np.where(late, idx - STEPS_PER_DAY * ((idx - known) // STEPS_PER_DAY + 1), idx)
        return self.prices[idx]

    def plan(self, k: int, physics: _Physics, peak_reached_w: float) -> tuple[Targets, float]:
        """Plan from tick ``k`` (15-min plan steps from there): the first step's targets with the plan's import
        cap, and the solve time."""
        w = self.world
        step = k // TICKS_PER_STEP
        t = w.start_s + k * TICK_S
        planning = self.planning
        s_n = len(planning.connectors)
        present = np.zeros((s_n, HORIZON_STEPS), dtype=np.bool_)
        energy = np.zeros(s_n)
        departure = np.zeros(s_n, dtype=np.int64)
        max_w = np.full(s_n, CONNECTOR_MAX_A * VOLTAGE_V)
        slot_cost = np.zeros((s_n, HORIZON_STEPS))
        self.departures.learn(k)
        for i, slot in enumerate(self.slot_of_planning):
            j = int(physics.session_at[slot])
            if j < 0:
                continue
            s = w.sessions[j]
            leave_s, gone = self.departures.outlook(s, t)
            dep = math.ceil((max(leave_s, t + STEP_S) - t) / STEP_S - 1e-9)
            departure[i] = dep
            present[i, : min(dep, HORIZON_STEPS)] = True
            slot_cost[i] = DEPARTURE_RISK_EUR_KWH * gone
            energy[i] = max(0.0, float(physics.remaining_wh[slot]))
            max_w[i] = self.observed_cap_a.get(j, CONNECTOR_MAX_A) * VOLTAGE_V
        load = self.forecaster.fit(self.history, t).predict(t, HORIZON_STEPS)
        price = self._prices(step, t)
        inputs = PlanInputs(
            start=datetime.fromtimestamp(t, UTC),
            step_s=float(STEP_S),
            price_import_eur_kwh=price,
            price_export_eur_kwh=price - 0.04,
            present=present,
            session_max_power_w=max_w,
            energy_wh=energy,
            departure_step=departure,
            min_energy_wh=np.zeros(s_n),
            priority=np.full(s_n, MPC_PRIORITY),
            battery_soc_pct=np.zeros(0),
            load_w=load[None, :],
            pv_w=np.zeros((1, HORIZON_STEPS)),
            peak_tariff_eur_kw=PEAK_TARIFF_EUR_KW,
            peak_reached_w=peak_reached_w,
            peak_reserve_w=PEAK_RESERVE_SHARE * peak_reached_w,
            peak_reserve_eur_kw=PEAK_RESERVE_EUR_KW,
            slot_cost_eur_kwh=slot_cost,
        )
        started = time.perf_counter()
        if self.problem is not None:
            solution = self.problem.solve(inputs)
            current_a = solution.current_a[:, 0]
            import_w = solution.grid_import_w
        else:
            # Every connector is single-phase: its current is its power over the phase voltage.
            power_kw = lp_reference(planning, inputs, (1,) * HORIZON_STEPS).power_kw
            current_a = power_kw[:, 0] * 1000.0 / VOLTAGE_V
            import_w = power_kw.sum(axis=0) * 1000.0 + load
        elapsed = time.perf_counter() - started
        # The peak the plan plans around, as the optimiser service publishes it (mpc.snapshot).
        cap_w = max(peak_reached_w, float(np.max(import_w)))
        targets: dict[str, float] = {}
        for i, slot in enumerate(self.slot_of_planning):
            target_a = _plan_target_a(float(current_a[i]))
            j = int(physics.session_at[slot])
            if j >= 0 and j not in self.probed and energy[i] > 0.0:
                # A new session's first target lies just above the small on-board charger class: whether
                # it draws that shows which EV it is (planned at 32 A until then).
                self.probed.add(j)
                target_a = max(target_a, PROBE_A)
            targets[planning.connectors[i].id] = target_a
        return Targets(source="plan", connectors=targets, site_import_cap_w=cap_w, reference=f"tick-{k}"), elapsed


class _DepartureModel:
    """When a plugged-in EV leaves, learned from the sessions that have left (what the cloud sees).

    The error of the driver's estimate (actual - estimated departure) is learned per estimated-stay class
    (:data:`STAY_CLASSES_H`; a class with fewer than DEPARTURE_MIN_SESSIONS sessions uses all of them).
    For an EV still plugged in at ``t`` only the errors it has not yet passed count (its departure is
    later than ``t``).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.fit_step = -1
        self.errors: dict[int, FloatArray] = {}
        self.all_errors = np.sort(np.asarray(DEPARTURE_PRIOR_S, dtype=np.float64))
        self.mid_s = (np.arange(HORIZON_STEPS) + 0.5) * STEP_S

    @staticmethod
    def _stay_class(s: EvalSession, start_s: float) -> int:
        stay_h = (s.estimate_s - (start_s + s.arrive_tick * TICK_S)) / 3600.0
        return int(np.searchsorted(STAY_CLASSES_H, stay_h, side="right"))

    def learn(self, k: int) -> None:
        """Once per step: the errors of the sessions that have left before tick ``k``."""
        step = k // TICKS_PER_STEP
        if step == self.fit_step:
            return
        self.fit_step = step
        w = self.world
        done = [s for s in w.history_sessions + w.sessions if s.depart_tick <= k]
        if len(done) < DEPARTURE_MIN_SESSIONS:
            return
        err = np.array([w.start_s + s.depart_tick * TICK_S - s.estimate_s for s in done])
        cls = np.array([self._stay_class(s, w.start_s) for s in done])
        self.all_errors = np.sort(err)
        self.errors = {
            c: np.sort(err[cls == c])
            for c in range(len(STAY_CLASSES_H) + 1)
            if (cls == c).sum() >= DEPARTURE_MIN_SESSIONS
        }

    def outlook(self, s: EvalSession, t: float) -> tuple[float, FloatArray]:
        """The end of the planning window (epoch s) and, per plan step from ``t``, the probability that the EV
        has left by the middle of the step."""
        if self.world.departures == "known":
            return s.estimate_s, (t + self.mid_s >= s.estimate_s).astype(np.float64)
        errors = self.errors.get(self._stay_class(s, self.world.start_s), self.all_errors)
        later = errors[errors > t - s.estimate_s]
        if len(later) < 5:
            # Beyond what history shows: assume it leaves within the next hour or two.
            later = t - s.estimate_s + np.array([900.0, 1800.0, 3600.0, 5400.0, 7200.0])
        leave = s.estimate_s + later
        window_end = float(np.quantile(leave, DEPARTURE_WINDOW_QUANTILE))
        gone = np.searchsorted(leave, t + self.mid_s, side="right") / len(leave)
        return window_end, gone.astype(np.float64)


@dataclass(frozen=True, slots=True)
class _History:
    """A building-load series for the forecaster (``SeriesLike``)."""

    t_s: FloatArray
    values: FloatArray


def _run_mpc(world: World, site: Site, connection_a: float, solver: str) -> _Record:
    planning = planning_site_from(site)
    ctl = _Controlled(world, site, connection_a)
    mpc = _Mpc(world, planning, solver)
    rec = ctl.physics.record
    targets: Targets | None = None
    planned: set[int] = set()
    for k in range(world.n_ticks):
        ctl.physics.begin_tick(k)
        plugged = {int(j) for j in ctl.physics.session_at if j >= 0}
        # Every 15 min, and at once when a session starts (the cloud hears of it on the sessions topic).
        if k % TICKS_PER_STEP == 0 or not plugged <= planned:
            step = k // TICKS_PER_STEP
            planned = plugged
            peak_w = float(rec.step_import_w[:step].max()) if step else 0.0
            try:
                targets, elapsed = mpc.plan(k, ctl.physics, peak_w)
                rec.solve_s.append(elapsed)
            except (MpcError, ValueError):
                rec.solve_failures += 1
                targets = None  # no usable plan: the site runs its fallback schedule
        ctl.tick(k, targets)
        mpc.observe(ctl.physics, _setpoints_of(ctl))
    return rec


def _setpoints_of(ctl: _Controlled) -> FloatArray:
    out = np.zeros(len(ctl.world.slot_ids))
    for i, memory in enumerate(ctl.program.state.connectors):
        out[ctl.slot_of_connector[i]] = memory.setpoint_a
    return out


# --------------------------------------------------------------------------------------------------
# Offline: perfect foresight, one LP over the whole period
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Offline:
    power_kw: list[FloatArray]
    """Per session: power per step from its first step, kW (average over the step)."""
    first_step: IntArray
    avail: list[FloatArray]
    """Per session: the share of each of its steps it is plugged in."""
    objective_eur: float
    energy_cost_eur: float
    peak_kw: float
    shortfall_kwh: float
    solve_s: float
    variables: int
    constraints: int


def _availability(s: EvalSession) -> tuple[int, FloatArray]:
    first = s.arrive_tick // TICKS_PER_STEP
    last = (s.depart_tick - 1) // TICKS_PER_STEP
    ticks = np.arange(first * TICKS_PER_STEP, (last + 1) * TICKS_PER_STEP)
    inside = (ticks >= s.arrive_tick) & (ticks < s.depart_tick)
    return first, inside.reshape(-1, TICKS_PER_STEP).mean(axis=1)


def solve_offline(world: World, planning: PlanningSite) -> _Offline:
    """The perfect-foresight optimum of the period's objective (energy + peak tariff + shortfall), by HiGHS.

    The same linear objective as the MPC's QP without its regulariser, but with one column per
    session and step (all sessions of the period, true arrivals, departures, EV maxima and building
    load) instead of one per slot, which :func:`mpc.bench.lp_reference` cannot express.
    """
    sessions = world.sessions
    n_steps = world.n_steps
    dt_h = STEP_S / 3600.0
    price = world.import_eur_kwh[:n_steps]
    building_kw = world.building_w / 1000.0
    cols_session: list[IntArray] = []
    cols_step: list[IntArray] = []
    upper: list[FloatArray] = []
    firsts = np.zeros(len(sessions), dtype=np.int64)
    avails: list[FloatArray] = []
    for j, s in enumerate(sessions):
        first, avail = _availability(s)
        firsts[j] = first
        avails.append(avail)
        cols_session.append(np.full(len(avail), j, dtype=np.int64))
        cols_step.append(first + np.arange(len(avail), dtype=np.int64))
        upper.append(s.max_a * VOLTAGE_V / 1000.0 * avail)
    x_sess = np.concatenate(cols_session)
    x_step = np.concatenate(cols_step)
    x_hi = np.concatenate(upper)
    n_x = len(x_sess)
    j_n = len(sessions)
    col_short = n_x + np.arange(j_n)
    col_peak = n_x + j_n
    n_cols = col_peak + 1
    cost = np.zeros(n_cols)
    cost[:n_x] = price[x_step] * dt_h
    cost[col_short] = SHORTFALL_EUR_KWH
    cost[col_peak] = PEAK_TARIFF_EUR_KW
    bounds = np.zeros((n_cols, 2))
    bounds[:n_x, 1] = x_hi
    bounds[n_x:, 1] = np.inf

    # Energy: delivered + shortfall = deliverable (the EV takes no more than its request).
    eq = sp.coo_array(
        (
            np.concatenate((np.full(n_x, dt_h), np.ones(j_n))),
            (np.concatenate((x_sess, np.arange(j_n))), np.concatenate((np.arange(n_x), col_short))),
        ),
        shape=(j_n, n_cols),
    )
    eq_rhs = np.array([s.deliverable_wh / 1000.0 for s in sessions])

    # Node-phase limits (net of the controller's margin) and the peak epigraph, per step.
    slot_index = {c.id: i for i, c in enumerate(planning.connectors)}
    pl_slot = np.array([slot_index[sid] for sid in world.slot_ids])
    x_slot = pl_slot[np.array([s.slot for s in sessions])][x_sess]
    x_phase = np.array([planning.connectors[i].rotation[0] for i in range(len(planning.connectors))])[x_slot]
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    rhs: list[FloatArray] = []
    row0 = 0
    kw_to_a = 1000.0 / VOLTAGE_V
    for n, node in enumerate(planning.nodes):
        members = np.zeros(len(planning.connectors), dtype=np.bool_)
        members[list(node.connectors)] = True
        full_a = np.zeros(3)
        for c in node.connectors:
            full_a[planning.connectors[c].rotation[0]] += planning.connectors[c].max_power_w / VOLTAGE_V
        load_a = building_kw * kw_to_a / 3.0 if n == 0 else np.zeros(n_steps)
        if float(full_a.max() + load_a.max()) <= node.limit_a:
            continue  # cannot bind
        sel = np.flatnonzero(members[x_slot])
        for p in range(3):
            on = sel[x_phase[sel] == p]
            rows.append(row0 + x_step[on])
            cols.append(on)
            vals.append(np.full(len(on), kw_to_a))
            rhs.append(node.limit_a - load_a)
            row0 += n_steps
    rows.append(row0 + x_step)
    cols.append(np.arange(n_x))
    vals.append(np.ones(n_x))
    rows.append(row0 + np.arange(n_steps))
    cols.append(np.full(n_steps, col_peak))
    vals.append(np.full(n_steps, -1.0))
    rhs.append(-building_kw)
    row0 += n_steps
    ub = sp.coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(row0, n_cols))
    ub_rhs = np.concatenate(rhs)
    if np.any(ub_rhs[: row0 - n_steps] < 0.0):
        raise EvalError("the building load alone exceeds the connection limit: no schedule can keep it")
    started = time.perf_counter()
    res = linprog(cost, A_ub=ub.tocsr(), b_ub=ub_rhs, A_eq=eq.tocsr(), b_eq=eq_rhs, bounds=bounds, method="highs")
    elapsed = time.perf_counter() - started
    if res.status != 0 or res.x is None:
        raise EvalError(f"offline LP (HiGHS) failed: {res.message}")
    x = np.asarray(res.x)
    power = [x[:n_x][x_sess == j] for j in range(j_n)]
    building_cost = float(price @ building_kw) * dt_h
    energy_cost = float(cost[:n_x] @ x[:n_x]) + building_cost
    peak_kw = float(x[col_peak])
    return _Offline(
        power_kw=power,
        first_step=firsts,
        avail=avails,
        objective_eur=float(res.fun) + building_cost,
        energy_cost_eur=energy_cost,
        peak_kw=peak_kw,
        shortfall_kwh=float(x[col_short].sum()),
        solve_s=elapsed,
        variables=n_cols,
        constraints=row0 + j_n,
    )


def _run_offline(world: World, site: Site, connection_a: float, offline: _Offline) -> _Record:
    """The offline schedule handed to the control program as a plan, step by step."""
    ctl = _Controlled(world, site, connection_a)
    # Per step, per slot: the current that delivers the step's energy in the minutes the EV is there.
    by_step: dict[int, dict[str, float]] = {}
    for j, s in enumerate(world.sessions):
        cid = world.slot_ids[s.slot]
        for i, (p_kw, a) in enumerate(zip(offline.power_kw[j], offline.avail[j], strict=True)):
            if a > 0.0 and p_kw > 1e-6:
                by_step.setdefault(int(offline.first_step[j]) + i, {})[cid] = p_kw * 1000.0 / VOLTAGE_V / a
    targets: Targets | None = None
    for k in range(world.n_ticks):
        if k % TICKS_PER_STEP == 0:
            step = k // TICKS_PER_STEP
            wanted = by_step.get(step, {})
            plan = {cid: _plan_target_a(wanted.get(cid, 0.0)) for cid in world.slot_ids}
            targets = Targets(source="plan", connectors=plan, reference=f"offline-{step}")
        ctl.tick(k, targets)
    rec = ctl.physics.record
    rec.extra = {
        "lp_objective_eur": round(offline.objective_eur, 2),
        "lp_energy_cost_eur": round(offline.energy_cost_eur, 2),
        "lp_peak_kw": round(offline.peak_kw, 3),
        "lp_shortfall_kwh": round(offline.shortfall_kwh, 3),
        "lp_variables": offline.variables,
        "lp_constraints": offline.constraints,
    }
    rec.solve_s.append(offline.solve_s)
    return rec


# --------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------


def _percentile_ms(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), pct)) * 1000.0, 2)


def _summary(world: World, rec: _Record, wall_s: float, building_cost_eur: float) -> dict[str, Any]:
    sessions = world.sessions
    deliverable = np.array([s.deliverable_wh for s in sessions])
    requested = np.array([s.requested_wh for s in sessions])
    delivered = rec.delivered_wh
    peak_kw = float(rec.step_import_w.max()) / 1000.0
    peak_cost = PEAK_TARIFF_EUR_KW * peak_kw
    cost = rec.energy_cost_eur + peak_cost
    shortfall_kwh = float(np.maximum(deliverable - delivered, 0.0).sum()) / 1000.0
    out: dict[str, Any] = {
        "energy_delivered_pct": round(100.0 * float(delivered.sum()) / float(deliverable.sum()), 3),
        "energy_delivered_kwh": round(float(delivered.sum()) / 1000.0, 3),
        "energy_deliverable_kwh": round(float(deliverable.sum()) / 1000.0, 3),
        "energy_requested_kwh": round(float(requested.sum()) / 1000.0, 3),
        "sessions_served_98pct": int(np.sum(delivered >= 0.98 * deliverable)),
        "import_kwh": round(float(rec.step_import_w.sum()) * STEP_S / 3.6e6, 3),
        "cost_eur": round(cost, 2),
        "energy_cost_eur": round(rec.energy_cost_eur, 2),
        "peak_cost_eur": round(peak_cost, 2),
        "charging_cost_eur": round(cost - building_cost_eur, 2),
        "objective_eur": round(cost + SHORTFALL_EUR_KWH * shortfall_kwh, 2),
        "peak_kw": round(peak_kw, 3),
        "violations": rec.violation_node_ticks,
        "violation_ticks": rec.violation_ticks,
        "max_excess_a": round(rec.max_excess_a, 3),
        "solves": len(rec.solve_s),
        "solve_failures": rec.solve_failures,
        "solve_p50_ms": _percentile_ms(rec.solve_s, 50),
        "solve_p95_ms": _percentile_ms(rec.solve_s, 95),
        "solve_max_ms": _percentile_ms(rec.solve_s, 100),
        "wall_s": round(wall_s, 2),
    }
    out.update(rec.extra)
    return out


def evaluate(
    world: World,
    *,
    connection_share: float = 0.6,
    strategies: tuple[str, ...] = STRATEGIES,
    mpc_solver: str = "osqp",
) -> dict[str, Any]:
    """Run the strategies on ``world``; returns the JSON-ready result (``docs/evaluate.md``)."""
    wall0 = time.perf_counter()
    started = time.perf_counter()
    probe = _run_uncontrolled(world, None, math.inf)
    uncontrolled_peak_a = float(probe.max_phase_a[:3].max())
    connection_a = round(connection_share * uncontrolled_peak_a, 1)
    site = build_site(world, connection_a)
    planning = planning_site_from(site)
    if float(world.building_w.max()) / (3.0 * VOLTAGE_V) >= planning.nodes[0].limit_a:
        raise EvalError(
            f"connection limit {connection_a} A is below the building load alone "
            f"({world.building_w.max() / 1000.0:.1f} kW): raise --connection-share"
        )
    price = world.import_eur_kwh[: world.n_steps]
    building_cost = float(price @ world.building_w) * STEP_S / 3.6e6 + PEAK_TARIFF_EUR_KW * float(
        world.building_w.max() / 1000.0
    )
    results: dict[str, dict[str, Any]] = {}
    for name in strategies:
        started = time.perf_counter()
        if name == "uncontrolled":
            rec = _run_uncontrolled(world, site, connection_a)
        elif name == "fallback":
            rec = _run_fallback(world, site, connection_a)
        elif name == "mpc":
            rec = _run_mpc(world, site, connection_a, mpc_solver)
        elif name == "offline":
            rec = _run_offline(world, site, connection_a, solve_offline(world, planning))
        else:
            raise EvalError(f"unknown strategy {name!r}")
        results[name] = _summary(world, rec, time.perf_counter() - started, building_cost)
    out: dict[str, Any] = {
        "start": world.start.isoformat(),
        "days": world.days,
        "connectors": len(world.slot_ids),
        "sessions": len(world.sessions),
        "sessions_dropped": world.dropped_sessions,
        "building_peak_kw": round(float(world.building_w.max()) / 1000.0, 3),
        "building_cost_eur": round(building_cost, 2),
        "load_offset_days": world.load_offset_days,
        "uncontrolled_peak_a": round(uncontrolled_peak_a, 1),
        "connection_share": connection_share,
        "connection_limit_a": connection_a,
        "connection_limit_kw": round(connection_a * 3 * VOLTAGE_V / 1000.0, 1),
        "peak_tariff_eur_kw": PEAK_TARIFF_EUR_KW,
        "mpc_solver": mpc_solver,
        "departures": world.departures,
        "strategies": results,
    }
    if "mpc" in results and "offline" in results:
        mpc, off = results["mpc"], results["offline"]
        out["mpc_vs_offline"] = {
            "cost_ratio": round(mpc["cost_eur"] / off["cost_eur"], 4),
            "charging_cost_ratio": round(mpc["charging_cost_eur"] / off["charging_cost_eur"], 4),
            "energy_ratio": round(mpc["energy_delivered_kwh"] / off["energy_delivered_kwh"], 4),
            "objective_ratio": round(mpc["objective_eur"] / off["objective_eur"], 4),
        }
    out["wall_s"] = round(time.perf_counter() - wall0, 2)
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"plaza-ems evaluate: {result['days']} days from {result['start']}, {result['connectors']} connectors, "
        f"{result['sessions']} sessions ({result['sessions_dropped']} dropped), departures: {result['departures']}",
        f"connection {result['connection_limit_a']} A/phase ({result['connection_limit_kw']} kW) = "
        f"{result['connection_share']} x uncontrolled peak {result['uncontrolled_peak_a']} A; "
        f"building peak {result['building_peak_kw']} kW, building alone {result['building_cost_eur']} EUR",
        "",
        f"{'strategy':<13}{'delivered':>10}{'kWh':>10}{'cost EUR':>11}{'charging':>10}{'peak kW':>9}"
        f"{'violations':>11}{'solves':>8}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>9}{'wall s':>8}",
    ]
    for name, r in result["strategies"].items():

        def ms(key: str, r: dict[str, Any] = r) -> str:
            return "-" if r[key] is None else f"{r[key]:.1f}"

        lines.append(
            f"{name:<13}{r['energy_delivered_pct']:>9.2f}%{r['energy_delivered_kwh']:>10.1f}{r['cost_eur']:>11.2f}"
            f"{r['charging_cost_eur']:>10.2f}{r['peak_kw']:>9.1f}{r['violations']:>11d}{r['solves']:>8d}"
            f"{ms('solve_p50_ms'):>8}{ms('solve_p95_ms'):>8}{ms('solve_max_ms'):>9}{r['wall_s']:>8.1f}"
        )
    ratio = result.get("mpc_vs_offline")
    if ratio:
        lines.append("")
        lines.append(
            f"mpc / offline: cost {ratio['cost_ratio']:.4f}, charging cost {ratio['charging_cost_ratio']:.4f}, "
            f"energy {ratio['energy_ratio']:.4f}, objective {ratio['objective_ratio']:.4f}"
        )
    lines.append(f"wall time {result['wall_s']:.1f} s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``plaza-ems evaluate``."""
    parser.add_argument("--days", type=int, default=30, help="length of the window (>= 30 for the acceptance run)")
    parser.add_argument("--start", default="2019-05-01", help="first day of the window (Caltech local date)")
    parser.add_argument(
        "--data-dir", default=None, help="the shared data folder (e.g. ../shared/data); default: committed excerpts"
    )
    parser.add_argument(
        "--connection-share", type=float, default=0.6, help="connection limit as a share of the uncontrolled peak"
    )
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"comma-separated, from {', '.join(STRATEGIES)}"
    )
    parser.add_argument(
        "--mpc-solver",
        choices=("osqp", "highs"),
        default="osqp",
        help="solver of each MPC re-solve: the optimiser's OSQP QP, or HiGHS on the linear problem "
        "(mpc.bench.lp_reference) for comparison",
    )
    parser.add_argument(
        "--departures",
        choices=DEPARTURES,
        default="known",
        help="what the site is told of each departure: the driver's estimate from the data, or the true "
        "departure at plug-in (ACN-Sim's convention; a fleet with set departure times)",
    )
    parser.add_argument("--connectors", type=int, default=CONNECTORS, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; exit 0 done, 2 bad options, 3 a data file could not be read, 4 could not evaluate."""
    from hil.data import DataError

    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    bad = [s for s in strategies if s not in STRATEGIES]
    try:
        start_day = date.fromisoformat(args.start)
    except ValueError:
        print(f"error: evaluate: --start {args.start!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    if bad or not strategies or len(set(strategies)) != len(strategies):
        print(f"error: evaluate: --strategies must name distinct ones of {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    if args.days < 1 or not (0.0 < args.connection_share <= 1.0) or not (3 <= args.connectors <= CONNECTORS):
        print("error: evaluate: need --days >= 1 and 0 < --connection-share <= 1", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir is not None else None
    if data_dir is not None and not data_dir.is_dir():
        print(f"error: evaluate: no data folder {data_dir}", file=sys.stderr)
        return 3
    try:
        world = build_world(start_day, args.days, data_dir, n_slots=args.connectors, departures=args.departures)
        result = evaluate(
            world, connection_share=args.connection_share, strategies=strategies, mpc_solver=args.mpc_solver
        )
    except DataError as err:
        print(f"error: evaluate: {err}", file=sys.stderr)
        return 3
    except (EvalError, MpcError) as err:
        print(f"error: evaluate: {err}", file=sys.stderr)
        return 4
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m mpc.evaluate")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
