"""Intent from outside the cycle: the targets a cloud plan or the local fallback schedule sets.

Both sources say the same thing in the same form: per connector the per-phase current its session
should charge at *now* (a ceiling on the session's own demand; 0 = wait), per battery the power it
should take or give (W, + = charging), and optionally a cap on the site's grid import. They are intent
only: the control program caps a session's demand with its target and then protection and allocation
decide, so a target can never push a node over its limit (SPEC R1). A connector without a target keeps
its own demand.

``PriceCurve`` is the day-ahead price the fallback schedule and the telemetry use: hourly (or finer)
steps, EUR/MWh, on epoch seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

TargetSource = Literal["plan", "fallback"]


@dataclass(frozen=True, slots=True)
class Targets:
    source: TargetSource
    connectors: Mapping[str, float] = field(default_factory=dict)
    """Connector id -> target current per phase in A (AC and DC alike; DC as its AC-side equivalent)."""
    batteries: Mapping[str, float] = field(default_factory=dict)
    """Battery id -> target power in W (+ charging, - discharging)."""
    site_import_cap_w: float | None = None
    """A ceiling on the grid import the source wants (e.g. a peak it plans around); never a floor."""
    reference: str = ""
    """Where they come from: the plan id, or the fallback rule that set them."""


@dataclass(frozen=True, slots=True)
class PriceCurve:
    """A step curve of prices: ``prices_eur_mwh[i]`` holds from ``starts_ts[i]`` to the next start."""

    starts_ts: Sequence[float]
    prices_eur_mwh: Sequence[float]
    step_s: float = 3600.0
    """The length of the last step (and of every step of an hourly day-ahead curve)."""

    def __post_init__(self) -> None:
        if len(self.starts_ts) != len(self.prices_eur_mwh):
            raise ValueError("starts_ts and prices_eur_mwh differ in length")
        if any(b <= a for a, b in zip(self.starts_ts, self.starts_ts[1:], strict=False)):
            raise ValueError("starts_ts must increase")

    @property
    def end_ts(self) -> float:
        return self.starts_ts[-1] + self.step_s if self.starts_ts else float("-inf")

    def at(self, ts: float) -> float | None:
        """The price in force at ``ts``, None outside the curve."""
        if not self.starts_ts or ts < self.starts_ts[0] or ts >= self.end_ts:
            return None
        return self.prices_eur_mwh[bisect.bisect_right(self.starts_ts, ts) - 1]

    def steps(self, from_ts: float, to_ts: float) -> list[tuple[float, float, float]]:
        """(start, end, price) of every step overlapping [from_ts, to_ts), clipped to it."""
        out: list[tuple[float, float, float]] = []
        for i, start in enumerate(self.starts_ts):
            end = self.starts_ts[i + 1] if i + 1 < len(self.starts_ts) else self.end_ts
            lo, hi = max(start, from_ts), min(end, to_ts)
            if hi > lo:
                out.append((lo, hi, self.prices_eur_mwh[i]))
        return out


class TargetFollower:
    """The per-connector targets in force, gliding when their source changes.

    A plan and the fallback schedule may disagree: the plan charges a session now, the fallback would
    wait for a cheaper hour. When the source changes (the cloud is lost, or comes back) a target that
    falls does not drop at once: over ``switch_s`` it glides down from what it was, and a session that
    was charging keeps at least its minimum current until the glide ends, so the switch itself pauses
    nobody. A target that rises follows the controller's normal ramp-up. Within one source targets
    apply as they are.
    """

    def __init__(self, switch_s: float) -> None:
        self.switch_s = switch_s
        self.source: TargetSource | None = None
        self.switched_ts = float("-inf")
        self._at_switch: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def follow(self, targets: Targets | None, now_ts: float, min_current_a: Mapping[str, float]) -> dict[str, float]:
        """Connector id -> the target to apply now (absent: no target); ``min_current_a`` per connector id."""
        source = targets.source if targets is not None else None
        if source != self.source:
            self.source = source
            self.switched_ts = now_ts
            self._at_switch = self._last
        wanted = targets.connectors if targets is not None else {}
        elapsed_s = now_ts - self.switched_ts
        if elapsed_s >= self.switch_s or not self._at_switch:
            self._last = dict(wanted)
            return self._last
        left = 1.0 - elapsed_s / self.switch_s
        out: dict[str, float] = {}
        for connector, target_a in wanted.items():
            before_a = self._at_switch.get(connector)
            if before_a is None or target_a >= before_a:
                out[connector] = target_a
                continue
            glide_a = before_a * left
            minimum_a = min_current_a.get(connector, 0.0)
            if before_a >= minimum_a:
                glide_a = max(glide_a, minimum_a)
            out[connector] = max(target_a, glide_a)
        self._last = out
        return out
