"""The price horizon the fallback schedule plans on: the last known day-ahead curve, extended by rule.

The cloud link is down while the fallback runs, so the curve it has may end before the sessions'
departures. Rule: a time the curve covers gets its own price; a time outside it gets the price of the
same moment of the nearest day the curve covers in full (``DAY_S`` apart: the last 24 h of the curve
after its end, the first 24 h before its start), which repeats the last known day's profile by hour of
day. A curve shorter than a day cannot be repeated: the horizon then stops where the curve stops, and
the schedule treats what lies beyond as unknown (flat).

The horizon is built from the start of the price step in force, so its steps keep the curve's natural
edges and every decision taken "per step" is the same whichever cycle of the step takes it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from controller.targets import PriceCurve

DAY_S = 86_400.0
HORIZON_S = 2 * DAY_S
"""How far ahead the schedule looks: beyond tomorrow's departures, and still cheap to sort (≤ 192 steps)."""

Step = tuple[float, float, float]
"""(start_ts, end_ts, price_eur_mwh)."""


@dataclass(frozen=True, slots=True)
class PriceHorizon:
    """Price steps from the start of the step in force, in time order, and their order by price."""

    steps: tuple[Step, ...]
    by_price: tuple[Step, ...]
    """The same steps, cheapest first; equal prices earliest first (charging early keeps a margin)."""
    end_ts: float
    """Where pricing stops: the horizon's end, or earlier where a short curve runs out."""
    complete: bool
    """False when a curve shorter than a day ran out before the horizon's end: beyond it is unknown."""

    @property
    def step_end_ts(self) -> float:
        """The end of the step in force: the next instant at which a per-step decision may change."""
        return self.steps[0][1]

    def covers(self, to_ts: float) -> bool:
        return to_ts <= self.end_ts

    def median_eur_mwh(self, from_ts: float, to_ts: float) -> float:
        """The time-weighted median price over [from_ts, to_ts) (the price below which half the time lies)."""
        pieces = [(p, min(e, to_ts) - max(s, from_ts)) for s, e, p in self.by_price if min(e, to_ts) > max(s, from_ts)]
        half_s = sum(d for _, d in pieces) / 2.0
        acc_s = 0.0
        for price, duration_s in pieces:
            acc_s += duration_s
            if acc_s >= half_s:
                return price
        return math.nan  # an empty interval: callers only ask about intervals the horizon covers

    def cheapest(self, from_ts: float, to_ts: float, needed_s: float) -> list[tuple[float, float]]:
        """The cheapest steps (clipped to [from_ts, to_ts)) that together last ``needed_s``, by start.

        The last step taken is kept whole: a session charges from its start and stops at its target,
        so the unused rest costs nothing, and the spare time is a margin for an EV that draws less.
        """
        chosen: list[tuple[float, float]] = []
        acc_s = 0.0
        for start, end, _ in self.by_price:
            if acc_s >= needed_s:
                break
            lo = start if start > from_ts else from_ts
            hi = end if end < to_ts else to_ts
            if hi > lo:
                chosen.append((lo, hi))
                acc_s += hi - lo
        chosen.sort()
        return chosen


def build_horizon(curve: PriceCurve | None, now_ts: float, horizon_s: float = HORIZON_S) -> PriceHorizon | None:
    """The horizon from the step in force at ``now_ts``; None when not even ``now_ts`` can be priced."""
    if curve is None or not curve.starts_ts:
        return None
    start_ts = _step_start(curve, now_ts)
    if start_ts is None:
        return None
    steps = _priced_steps(curve, start_ts, now_ts + horizon_s)
    if not steps:
        return None
    return PriceHorizon(
        steps=tuple(steps),
        by_price=tuple(sorted(steps, key=lambda s: (s[2], s[0]))),
        end_ts=steps[-1][1],
        complete=steps[-1][1] >= now_ts + horizon_s,
    )


def _shift_days(curve: PriceCurve, ts: float) -> int | None:
    """How many days to add to ``ts`` to land on a moment the curve prices; None if it cannot be repeated."""
    first, end = curve.starts_ts[0], curve.end_ts
    if first <= ts < end:
        return 0
    if end - first < DAY_S:
        return None
    if ts >= end:
        return -(int((ts - end) // DAY_S) + 1)
    return math.ceil((first - ts) / DAY_S)


def _step_start(curve: PriceCurve, ts: float) -> float | None:
    shift = _shift_days(curve, ts)
    if shift is None:
        return None
    source_ts = ts + shift * DAY_S
    start = curve.starts_ts[bisect.bisect_right(curve.starts_ts, source_ts) - 1]
    if shift < 0:
        # The repeated day starts at its own edge, which may cut a source step in two.
        start = max(start, curve.end_ts - DAY_S)
    return start - shift * DAY_S


def _priced_steps(curve: PriceCurve, from_ts: float, to_ts: float) -> list[Step]:
    """Steps covering [from_ts, to_ts) in time order, up to the first moment that cannot be priced."""
    first, end = curve.starts_ts[0], curve.end_ts
    out: list[Step] = []
    t = from_ts
    while t < to_ts:
        shift = _shift_days(curve, t)
        if shift is None:
            break
        # The stretch of [t, to_ts) that one shift maps into the curve, then the curve's steps there.
        if shift == 0:
            seg_end = min(to_ts, end)
        elif shift < 0:
            seg_end = min(to_ts, end + (-shift) * DAY_S)
        else:
            seg_end = min(to_ts, first - (shift - 1) * DAY_S)
        offset_s = shift * DAY_S
        out.extend((s - offset_s, e - offset_s, p) for s, e, p in curve.steps(t + offset_s, seg_end + offset_s))
        t = seg_end
    return out
