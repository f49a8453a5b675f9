"""The process image: every input of one scan cycle, frozen, each value with its timestamp and quality.

Drivers keep their latest readings in an ``InputSnapshot``; ``freeze`` copies it into an immutable
``ProcessImage`` at the start of a cycle and judges quality: a reading older than the site's
``stale_after`` is STALE, a reading with a non-finite number is BAD, a device that never answered is
absent (None) and treated as BAD by every step. Timestamps are UTC epoch seconds (floats) inside the
cycle for speed; the clock hands out timezone-aware datetimes at the edges.

Sign conventions: currents and powers at nodes are positive when flowing from the grid towards the
loads (import); battery power is positive when charging; PV power is positive when generating.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import TYPE_CHECKING, TypeVar

from controller.targets import PriceCurve, Targets

if TYPE_CHECKING:
    # controller.limits imports this module at run time; the annotations here are only strings.
    from controller.limits import RemoteLimits

Triple = tuple[float, float, float]
ZERO3: Triple = (0.0, 0.0, 0.0)


class Quality(IntEnum):
    GOOD = 0
    STALE = 1
    BAD = 2


class SessionState:
    """IEC 61851-1 control-pilot states as letters (+ 1/2 for PWM off/on): A1..F."""

    NO_EV = frozenset({"A", "A1", "A2"})
    CONNECTED = frozenset({"B", "B1", "B2", "C", "C1", "C2", "D", "D1", "D2"})
    CHARGING = frozenset({"C", "C2", "D", "D2"})
    ERROR = frozenset({"E", "F"})


@dataclass(frozen=True, slots=True)
class MeterReading:
    current_a: Triple
    power_w: float
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class ConnectorReading:
    state: str
    """IEC 61851 state letter (A1, B2, C2, ...)."""
    current_a: Triple
    """Current on the charger's own L1, L2, L3 (mapped to grid phases through the rotation)."""
    power_w: float
    energy_wh: float
    """Energy delivered in the running session."""
    id_token: str | None
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class BatteryReading:
    soc_pct: float
    power_w: float
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class ContactReading:
    closed: bool
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class DsoReading:
    limit_pct: float
    ts: float
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What a user or fleet system asked for a connector's session (app, RFID profile, ISO 15118)."""

    departure_ts: float | None
    energy_wh: float | None
    ts: float
    priority: int | None = None
    """A priority 0-9 the fleet system set for this session (overrides badge and location)."""


@dataclass(frozen=True, slots=True)
class LatchReset:
    latch: str
    operator: str
    ts: float


R = TypeVar("R", MeterReading, ConnectorReading, BatteryReading, ContactReading, DsoReading)


@dataclass(slots=True)
class InputSnapshot:
    """The drivers' latest readings, mutable, owned by the input side; ``freeze`` copies it."""

    meters: dict[str, MeterReading] = field(default_factory=dict)
    connectors: dict[str, ConnectorReading] = field(default_factory=dict)
    batteries: dict[str, BatteryReading] = field(default_factory=dict)
    contacts: dict[str, ContactReading] = field(default_factory=dict)
    dso: DsoReading | None = None
    requests: dict[str, SessionRequest] = field(default_factory=dict)
    resets: list[LatchReset] = field(default_factory=list)
    targets: Targets | None = None
    """The cloud plan's targets for now, set by the cloud link when a usable plan is in force."""
    prices: PriceCurve | None = None
    """The last known day-ahead prices (for the fallback schedule), set by whoever receives them."""
    remote_limits: RemoteLimits | None = None
    """DSO commands and capacity blocks from outside the site, set by the cloud link; each carries its
    own validity window, so an expired one needs no clearing to stop binding."""
    maintenance: frozenset[str] = frozenset()
    """Tree nodes an operator put in maintenance mode: every connector and battery below is held at 0."""
    unavailable: frozenset[str] = frozenset()
    """Connectors an operator took out of service: held at 0 until made available again."""


@dataclass(frozen=True, slots=True)
class ProcessImage:
    t: float
    meters: Mapping[str, MeterReading]
    connectors: tuple[ConnectorReading | None, ...]
    """Indexed like ``Site.connectors``."""
    batteries: tuple[BatteryReading | None, ...]
    contacts: Mapping[str, ContactReading]
    dso: DsoReading | None
    requests: Mapping[str, SessionRequest]
    resets: tuple[LatchReset, ...]
    targets: Targets | None = None
    """The cloud plan's targets for this cycle; None: no usable plan (the fallback schedule decides)."""
    prices: PriceCurve | None = None
    remote_limits: RemoteLimits | None = None
    """The limit commands held for this cycle; the limits step applies those in force at ``t``."""
    maintenance: frozenset[str] = frozenset()
    unavailable: frozenset[str] = frozenset()


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def judge(reading: R, now: float, stale_after_s: float) -> R:
    """Downgrade a reading's quality for age or non-finite numbers; never upgrade it."""
    quality = reading.quality
    if isinstance(reading, MeterReading):
        ok = _finite(*reading.current_a, reading.power_w)
    elif isinstance(reading, ConnectorReading):
        ok = _finite(*reading.current_a, reading.power_w, reading.energy_wh)
    elif isinstance(reading, BatteryReading):
        ok = _finite(reading.soc_pct, reading.power_w)
    elif isinstance(reading, DsoReading):
        ok = _finite(reading.limit_pct) and 0.0 <= reading.limit_pct <= 100.0
    else:
        ok = True
    if not ok:
        quality = Quality.BAD
    elif now - reading.ts > stale_after_s and quality < Quality.STALE:
        quality = Quality.STALE
    return reading if quality == reading.quality else replace(reading, quality=quality)


def freeze(
    snapshot: InputSnapshot,
    now: float,
    stale_after_s: float,
    connector_ids: tuple[str, ...],
    battery_ids: tuple[str, ...],
) -> ProcessImage:
    """Copy the drivers' latest values into an immutable image and judge their quality."""
    resets = tuple(snapshot.resets)
    snapshot.resets.clear()
    return ProcessImage(
        t=now,
        meters={k: judge(v, now, stale_after_s) for k, v in snapshot.meters.items()},
        connectors=tuple(
            judge(r, now, stale_after_s) if (r := snapshot.connectors.get(cid)) is not None else None
            for cid in connector_ids
        ),
        batteries=tuple(
            judge(b, now, stale_after_s) if (b := snapshot.batteries.get(bid)) is not None else None
            for bid in battery_ids
        ),
        contacts={k: judge(v, now, stale_after_s) for k, v in snapshot.contacts.items()},
        dso=judge(snapshot.dso, now, stale_after_s) if snapshot.dso is not None else None,
        requests=dict(snapshot.requests),
        resets=resets,
        targets=snapshot.targets,
        prices=snapshot.prices,
        remote_limits=snapshot.remote_limits,
        maintenance=snapshot.maintenance,
        unavailable=snapshot.unavailable,
    )


def good(reading: MeterReading | ConnectorReading | BatteryReading | None) -> bool:
    return reading is not None and reading.quality == Quality.GOOD
