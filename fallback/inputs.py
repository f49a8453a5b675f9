"""What the fallback schedule reads each cycle, and helpers that fill it from the control program's records.

The schedule takes plain values, not the process image, so it can be tested and timed on its own and
does not depend on how the program keeps its memory. The helpers show (and test) the one way to fill
them from a cycle: ``session_input`` per connector with an open session, ``uncontrolled_surplus_w`` and
``import_limit_w`` once per cycle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controller.image import ConnectorReading, ProcessImage, Quality, SessionRequest
from controller.intent import Intent, Session
from controller.limits import NodeLimit
from controller.site import Connector, Site
from controller.targets import PriceCurve


@dataclass(frozen=True, slots=True)
class SessionInput:
    """One connector with an open session."""

    connector: str
    phase_count: int
    """Grid phases the EV loads (``len(Intent.phases)``; 3 for DC, whose currents are AC equivalents)."""
    min_current_a: float
    max_current_a: float
    """Per phase: the charger's maximum, or less where the EV is seen to take less (its draw cap)."""
    remaining_wh: float | None
    """Energy still wanted; None = as much as possible."""
    departure_ts: float | None
    priority: int
    """The base priority 0-9 (RFID profile, else parking location, else site default)."""
    flexible: bool
    """The user charges from PV surplus only (F11)."""


@dataclass(frozen=True, slots=True)
class BatteryInput:
    battery: str
    soc_pct: float
    power_w: float
    """Measured, + charging."""


@dataclass(frozen=True, slots=True)
class FallbackInputs:
    sessions: Sequence[SessionInput]
    prices: PriceCurve | None
    """The last known day-ahead curve; None when none ever arrived."""
    pv_surplus_w: float
    """Generation beyond the site's uncontrolled consumption: what would be exported if no EV and no
    battery drew (≥ 0). Not the export itself, which falls as soon as sessions absorb it."""
    grid_import_w: float
    """Measured at the connection, + import."""
    import_limit_w: float
    """The connection's import limit now (its effective limit: fuse, DSO stage, capacity frame)."""
    batteries: Sequence[BatteryInput] = ()


def session_input(
    site: Site,
    connector: Connector,
    reading: ConnectorReading,
    session: Session,
    intent: Intent,
    request: SessionRequest | None,
) -> SessionInput:
    """The schedule's view of one session, from the program's records of this cycle.

    A request from the user or fleet system overrides the profile's defaults, as in
    ``controller.intent.connector_intent``.
    """
    departure_ts = session.departure_ts
    energy_wh = session.energy_wh
    if request is not None:
        departure_ts = request.departure_ts if request.departure_ts is not None else departure_ts
        energy_wh = request.energy_wh if request.energy_wh is not None else energy_wh
    return SessionInput(
        connector=connector.id,
        phase_count=len(intent.phases),
        min_current_a=connector.min_current_a,
        max_current_a=min(connector.max_current_a, session.draw_cap_a),
        remaining_wh=max(0.0, energy_wh - reading.energy_wh) if energy_wh is not None else None,
        departure_ts=departure_ts,
        priority=intent.base_priority,
        flexible=intent.flexible,
    )


def uncontrolled_surplus_w(site: Site, image: ProcessImage) -> float:
    """Export at the connection plus what every session and battery draws now: the PV they may share.

    Adding the controllable draws back makes the figure independent of how much of it the schedule
    already hands out, so targets raised by it do not lower it in the next cycle (no feedback loop).
    0 while the connection meter is not good, as the program does for its own surplus.
    """
    meter = site.nodes[0].meter
    root = image.meters.get(meter) if meter is not None else None
    if root is None or root.quality != Quality.GOOD:
        return 0.0
    drawn_w = sum(r.power_w for r in image.connectors if r is not None and r.quality == Quality.GOOD)
    drawn_w += sum(b.power_w for b in image.batteries if b is not None and b.quality == Quality.GOOD)
    return max(0.0, drawn_w - root.power_w)


def import_limit_w(site: Site, limits: Sequence[NodeLimit]) -> float:
    """The connection's effective import limit in W: its power limit or its per-phase current on three phases."""
    root = limits[0]
    phase_w = root.current_a * 3 * site.voltage_v
    return min(root.power_w, phase_w) if math.isfinite(root.power_w) else phase_w
