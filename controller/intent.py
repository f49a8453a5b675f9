"""Step 4 of the cycle: what each session would like, before protection decides what it may have.

The default intent (used until a cloud plan or the fallback schedule supplies one): charge every
session as fast as its charger and EV allow toward its energy target and departure time. The session's
priority class comes from its RFID profile, else its parking location, else the site default; a session
whose slack (laxity) is below ``urgent_laxity_s`` is served before the calm ones of its priority; a
session past its energy target only gets what is left over. Sessions of flexible users (or priority 0)
that are not urgent wait for PV surplus (F11). An EV that keeps drawing less than its setpoint gets a
demand cap just above its draw, so the spare capacity goes to others; the cap is lifted every
``probe_interval_s`` to find out whether the EV can take more again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from controller.image import ConnectorReading, ProcessImage, Quality, SessionState
from controller.site import Connector, Site

DRAWING_A = 1.0
"""Current above which a phase counts as loaded by the EV."""
CAP_AFTER_S = 30.0
"""How long an EV must stay below its setpoint before its demand is capped at its draw."""
CALM_LAXITY_S = 1e9
_GOOD = Quality.GOOD
"""Looked up once: reading an Enum member through its class costs about 0.1 µs (Python 3.11)."""


@dataclass(slots=True)
class Session:
    """What the controller remembers about the session on one connector."""

    started_ts: float
    id_token: str | None
    departure_ts: float | None
    energy_wh: float | None
    draw_cap_a: float = math.inf
    below_since_ts: float | None = None
    cap_set_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Intent:
    """A connector's wish for this cycle, in per-phase amperes."""

    demand_a: float
    phases: tuple[int, ...]
    rank: int
    laxity_s: float
    base_priority: int
    flexible: bool


NO_INTENT_RANK = -1


def used_phases(connector: Connector, reading: ConnectorReading) -> tuple[int, ...]:
    """Grid phases the EV loads: the measured ones while it draws, else all the charger can use."""
    rotation = connector.rotation
    if connector.dc or len(rotation) == 1:
        return rotation  # a single-phase charger loads its one phase whether the EV draws or not
    current = reading.current_a
    if (current[0] > DRAWING_A) == (current[1] > DRAWING_A) == (current[2] > DRAWING_A):
        return rotation  # drawing on every phase, or on none yet: the common cases, without a loop
    return tuple(rotation[k] for k in range(len(rotation)) if current[k] > DRAWING_A) or rotation


def _next_departure(site: Site, started_ts: float, s_of_day: float) -> float:
    local = datetime.fromtimestamp(started_ts, UTC).astimezone(site.timezone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    departure = midnight + timedelta(seconds=s_of_day)
    if departure <= local:
        departure += timedelta(days=1)
    return departure.timestamp()


def open_session(site: Site, connector: Connector, reading: ConnectorReading, now: float) -> Session:
    """Start remembering a session, with the RFID profile's defaults as its targets."""
    profile = site.users.get(reading.id_token) if reading.id_token else None
    departure_ts = None
    energy_wh = None
    if profile is not None:
        if profile.default_departure_s_of_day is not None:
            departure_ts = _next_departure(site, now, profile.default_departure_s_of_day)
        energy_wh = profile.default_energy_wh
    return Session(started_ts=now, id_token=reading.id_token, departure_ts=departure_ts, energy_wh=energy_wh)


def update_draw_cap(
    session: Session,
    connector: Connector,
    reading: ConnectorReading,
    setpoint_a: float,
    now: float,
    headroom_a: float,
    probe_interval_s: float,
) -> None:
    """Cap the demand of an EV that keeps drawing well below its setpoint; lift the cap now and then."""
    if session.draw_cap_a != math.inf and now - session.cap_set_ts >= probe_interval_s:
        session.draw_cap_a = math.inf
        session.below_since_ts = None
    if setpoint_a <= 0.0 or connector.dc or reading.state not in SessionState.CHARGING:
        session.below_since_ts = None
        return
    draw_a = max(reading.current_a)
    if draw_a < setpoint_a - headroom_a:
        if session.below_since_ts is None:
            session.below_since_ts = now
        elif now - session.below_since_ts >= CAP_AFTER_S:
            session.draw_cap_a = max(connector.min_current_a, draw_a + headroom_a)
            session.cap_set_ts = now
            session.below_since_ts = None
    else:
        session.below_since_ts = None


def connector_intent(
    site: Site,
    connector: Connector,
    reading: ConnectorReading,
    session: Session,
    image: ProcessImage,
    previous: Intent | None = None,
) -> Intent:
    """Default intent for one connector with a live reading and an open session.

    ``previous`` is the connector's intent of the last cycle: it is returned itself when nothing in
    it changed, as is the rule for a session that just charges on (see ``_reuse``).
    """
    now = image.t
    request = image.requests.get(connector.id)
    departure_ts = session.departure_ts
    energy_wh = session.energy_wh
    if request is not None:
        departure_ts = request.departure_ts if request.departure_ts is not None else departure_ts
        energy_wh = request.energy_wh if request.energy_wh is not None else energy_wh
    profile = site.users.get(session.id_token) if session.id_token else None
    if request is not None and request.priority is not None:
        base = request.priority
    elif profile is not None:
        base = profile.priority
    elif connector.location_priority is not None:
        base = connector.location_priority
    else:
        base = site.default_priority
    flexible = (profile.flexible if profile is not None else False) or base == 0
    phases = used_phases(connector, reading)
    if reading.state not in SessionState.CONNECTED or reading.quality != _GOOD:
        return _reuse(previous, 0.0, phases, NO_INTENT_RANK, CALM_LAXITY_S, base, flexible)
    max_a = min(connector.max_current_a, session.draw_cap_a)
    remaining_wh = max(0.0, energy_wh - reading.energy_wh) if energy_wh is not None else math.inf
    if remaining_wh <= 0.0:
        return _reuse(previous, max_a, phases, 0, CALM_LAXITY_S, base, flexible)
    laxity_s = CALM_LAXITY_S
    if departure_ts is not None:
        rate_w = max_a * site.voltage_v * len(phases)
        needed_s = remaining_wh / rate_w * 3600.0 if math.isfinite(remaining_wh) else 0.0
        laxity_s = departure_ts - now - needed_s
    urgent = laxity_s < site.config.control.urgent_laxity_s
    rank = 1 + 2 * base + (1 if urgent else 0)
    return _reuse(previous, max_a, phases, rank, laxity_s, base, flexible and not urgent)


def _reuse(
    previous: Intent | None,
    demand_a: float,
    phases: tuple[int, ...],
    rank: int,
    laxity_s: float,
    base_priority: int,
    flexible: bool,
) -> Intent:
    """An Intent with these fields: ``previous`` itself when it has them all already.

    Most sessions want the same from one cycle to the next, and comparing six fields costs a fraction
    of building a frozen dataclass, which on a large site is a good part of the cycle time.
    """
    if (
        previous is not None
        and previous.demand_a == demand_a
        and previous.laxity_s == laxity_s
        and previous.rank == rank
        and previous.phases == phases
        and previous.base_priority == base_priority
        and previous.flexible == flexible
    ):
        return previous
    return Intent(demand_a, phases, rank, laxity_s, base_priority, flexible)


def pv_surplus_w(site: Site, image: ProcessImage, flexible_draw_w: float, battery_charge_w: float) -> float:
    """Power exported at the connection plus what flexible sessions and the battery already soak up."""
    meter = site.nodes[0].meter
    reading = image.meters.get(meter) if meter is not None else None
    if reading is None or reading.quality != _GOOD:
        return 0.0
    return max(0.0, -reading.power_w + flexible_draw_w + battery_charge_w)
