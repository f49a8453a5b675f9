"""OCPP 2.0.1 meter values (``meterValue[].sampledValue[]``) turned into the controller's units.

Any measurand in any unit the station sends is either understood or ignored cleanly: currents per
phase in A, active power in W, the energy register in Wh, SoC in %. ``unitOfMeasure`` (unit and power
of ten ``multiplier``) is applied; kW, kWh, mA are converted; a measurand without a phase that the
controller needs per phase (current) is taken as balanced. Unknown measurands, units and malformed
values are counted in ``ignored`` for the log — never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MEASURAND = "Energy.Active.Import.Register"
_UNIT_FACTORS: Mapping[str, Mapping[str, float]] = {
    "Current.Import": {"A": 1.0, "mA": 0.001},
    "Power.Active.Import": {"W": 1.0, "kW": 1000.0},
    "Energy.Active.Import.Register": {"Wh": 1.0, "kWh": 1000.0},
    "SoC": {"Percent": 1.0},
}
_DEFAULT_UNITS = {
    "Current.Import": "A",
    "Power.Active.Import": "W",
    "Energy.Active.Import.Register": "Wh",
    "SoC": "Percent",
}
_PHASES = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}


@dataclass(slots=True)
class Sample:
    """What one MeterValues / TransactionEvent carried; None where it did not say."""

    current_a: list[float | None] = field(default_factory=lambda: [None, None, None])
    current_total_a: float | None = None
    power_w: float | None = None
    energy_wh: float | None = None
    soc_pct: float | None = None
    ignored: list[str] = field(default_factory=list)

    def currents(self, phases: int) -> tuple[float, float, float] | None:
        """Per-phase currents; an unphased current is spread over the ``phases`` the EVSE uses."""
        if any(c is not None for c in self.current_a):
            return (self.current_a[0] or 0.0, self.current_a[1] or 0.0, self.current_a[2] or 0.0)
        if self.current_total_a is not None:
            share = self.current_total_a / max(1, phases)
            return (share, share if phases > 1 else 0.0, share if phases > 2 else 0.0)
        return None


def parse_meter_values(meter_values: Iterable[Mapping[str, Any]]) -> Sample:
    """The newest value of each measurand across the given meterValue entries (snake_case keys)."""
    sample = Sample()
    ordered = sorted(meter_values, key=lambda mv: str(mv.get("timestamp", "")))
    for meter_value in ordered:
        for sampled in meter_value.get("sampled_value", []) or []:
            _take(sample, sampled)
    return sample


def _take(sample: Sample, sampled: Mapping[str, Any]) -> None:
    measurand = str(sampled.get("measurand", DEFAULT_MEASURAND))
    factors = _UNIT_FACTORS.get(measurand)
    if factors is None:
        sample.ignored.append(measurand)
        return
    unit_of_measure = sampled.get("unit_of_measure") or {}
    unit = str(unit_of_measure.get("unit", _DEFAULT_UNITS[measurand]))
    factor = factors.get(unit)
    value = sampled.get("value")
    multiplier = unit_of_measure.get("multiplier", 0)
    if factor is None or not isinstance(value, int | float) or not isinstance(multiplier, int):
        sample.ignored.append(f"{measurand} [{unit}]")
        return
    number = float(value) * factor * 10.0**multiplier
    if not math.isfinite(number):
        sample.ignored.append(f"{measurand} (not finite)")
        return
    phase = sampled.get("phase")
    if measurand == "Current.Import":
        if phase in _PHASES:
            sample.current_a[_PHASES[phase]] = number
        elif phase is None:
            sample.current_total_a = number
        else:
            sample.ignored.append(f"{measurand} phase {phase}")
    elif measurand == "Power.Active.Import":
        sample.power_w = number if phase is None else (sample.power_w or 0.0) + number
    elif measurand == "Energy.Active.Import.Register":
        if phase is None:
            sample.energy_wh = number
    elif measurand == "SoC":
        sample.soc_pct = number
