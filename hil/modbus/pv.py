"""Simulated SunSpec devices: the model chain discovery walks, and a PV inverter that obeys curtailment.

``sunspec_chain`` lays out the "SunS" marker, each model's ``[ID, L]`` header and registers, and the
0xFFFF end marker from the same model tables the driver places (``drivers/modbus/maps/sunspec.py``),
so discovery and decoding are tested against what the driver was written from.

``SimSunSpecPv`` serves models 1, 103 and 123 (or 704, option ``controls_model``; 0 = none) at
``base_address`` (default 40000). Its output is the plant's PV power, capped at WMaxLimPct of WMax
(the PV rating) while WMaxLim_Ena = 1; without a write to the limit, its timer or its enable for
WMaxLimPct_RvrtTms seconds (0 = no timeout) the enable falls back to 0 and the cap is lifted, as the
SunSpec revert timer does on a real inverter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from drivers.modbus.maps import sunspec
from drivers.modbus.registers import Behaviour, DataType, Register, RegisterMap, Table, Value
from hil.modbus.context import SimContext
from hil.modbus.image import RegisterImage, WriteRejected
from hil.modbus.server import SimulatedDevice

log = logging.getLogger(__name__)

COMMON_LENGTH = 66
"""Model 1 with the Pad register."""
DER_CONTROLS_LENGTH = 54
"""Just long enough for the points ``DER_CONTROLS`` maps (scale factors at +54/+55)."""
SUNS_VALUE = (sunspec.SUNS[0] << 16) | sunspec.SUNS[1]

INVERTER_SCALE_FACTORS = {
    "current_sf": -2,
    "voltage_sf": -1,
    "power_sf": 1,
    "frequency_sf": -2,
    "energy_sf": 0,
}
"""Different signs on purpose: a driver that ignores or inverts a scale factor reads a wrong value."""


def _header(name: str, pdu: int, meaning: str) -> Register:
    return Register(name=name, pdu=pdu, doc_address=f"{pdu}", table=Table.HOLDING, type=DataType.U16, meaning=meaning)


def sunspec_chain(
    base: int, models: Sequence[tuple[sunspec.SunSpecModel, int]], unit_id: int, device: str
) -> RegisterMap:
    """One map with the marker at ``base``, then each (model, L) with its header, then the end marker."""
    registers = [
        Register(
            name="suns",
            pdu=base,
            doc_address=f"{base} (SunS)",
            table=Table.HOLDING,
            type=DataType.U32,
            meaning="SunSpec marker 0x53756E53",
        )
    ]
    address = base + sunspec.HEADER_LENGTH
    for model, length in models:
        registers.append(_header(f"model_{model.id}_id", address, f"model {model.id} ID"))
        registers.append(_header(f"model_{model.id}_length", address + 1, f"model {model.id} L"))
        registers += sunspec.absolute(model, address, length=length, unit_id=unit_id).registers
        address += sunspec.HEADER_LENGTH + length
    registers.append(_header("end_id", address, "end marker 0xFFFF"))
    registers.append(_header("end_length", address + 1, "end marker L = 0"))
    return RegisterMap(
        device=device, source=sunspec.SOURCE, registers=tuple(registers), behaviour=Behaviour(default_unit_id=unit_id)
    )


def write_chain_headers(image: RegisterImage, models: Sequence[tuple[sunspec.SunSpecModel, int]]) -> None:
    image.set("suns", SUNS_VALUE)
    for model, length in models:
        image.set(f"model_{model.id}_id", model.id)
        image.set(f"model_{model.id}_length", length)
    image.set("end_id", sunspec.END_MODEL_ID)
    image.set("end_length", 0)


def write_identity(image: RegisterImage, model: str, serial: str) -> None:
    image.set("manufacturer", "plaza-ems HIL")
    image.set("model", model)
    image.set("serial_number", serial)


def write_inverter(image: RegisterImage, power_w: float, voltage_v: float, energy_wh: float) -> None:
    """Model 103 values for AC power ``power_w`` (positive = feeding the grid), balanced over three phases."""
    for name, sf in INVERTER_SCALE_FACTORS.items():
        image.set(name, sf)
    current_a = abs(power_w) / (3.0 * voltage_v)
    for k in range(3):
        image.set(f"current_l{k + 1}_a", current_a)
        image.set(f"voltage_l{k + 1}_v", voltage_v)
    image.set("power_w", power_w)
    image.set("frequency_hz", 50.0)
    image.set("energy_wh", max(1.0, energy_wh))  # acc32 0 means "not implemented"


class SimSunSpecPv(SimulatedDevice):
    """A SunSpec PV inverter (models 1, 103, 123 or 704) feeding the plant's PV load of the same id."""

    def __init__(self, ctx: SimContext) -> None:
        assert ctx.device.pv is not None
        options = ctx.device.options
        self.base = int(options.get("base_address", sunspec.BASE_ADDRESSES[0]))
        controls_id = int(options.get("controls_model", sunspec.CONTROLS.id))
        models: list[tuple[sunspec.SunSpecModel, int]] = [(sunspec.COMMON, COMMON_LENGTH), (sunspec.INVERTER_3PH, 50)]
        if controls_id == sunspec.CONTROLS.id:
            models.append((sunspec.CONTROLS, 24))
        elif controls_id == sunspec.DER_CONTROLS.id:
            models.append((sunspec.DER_CONTROLS, DER_CONTROLS_LENGTH))
        elif controls_id != 0:
            raise ValueError(f"{ctx.device.id}: controls_model must be 123, 704 or 0 (none), not {controls_id}")
        unit_id = ctx.device.unit_id if ctx.device.unit_id is not None else 1
        chain = sunspec_chain(self.base, models, unit_id, f"simulated SunSpec PV inverter {ctx.device.id}")
        super().__init__(ctx.device.id, [chain], ctx.now)
        self.pv = ctx.plant.loads[ctx.device.pv]
        self.voltage_v = ctx.site.site.nominal_voltage_v
        self.wmax_w = next(p.peak_kw for p in ctx.site.pv if p.id == ctx.device.pv) * 1000.0
        self.has_controls = controls_id != 0
        self.last_limit_write_s = -math.inf
        self.reverts = 0
        self.energy_wh = 0.0
        self._last_t: float | None = None
        write_chain_headers(self.image, models)
        write_identity(self.image, "SunSpec PV", ctx.device.id)
        if self.has_controls:
            self.image.set("power_limit_sf", -1)
            self.image.set("power_limit_pct", 100.0)
            self.image.set("power_limit_revert_s", 0)
            self.image.set("power_limit_enable", 0)
        if controls_id == sunspec.CONTROLS.id:
            self.image.set("power_factor_sf", -3)
            self.image.set("connect", 1)

    def update(self, t: float) -> None:
        if self.has_controls and self.image.get("power_limit_enable") == 1:
            revert_s = self.image.get("power_limit_revert_s")
            if isinstance(revert_s, int) and revert_s > 0 and t - self.last_limit_write_s >= revert_s:
                # The revert timer ran out: the inverter drops the limit on its own.
                self.image.set("power_limit_enable", 0)
                self.pv.cap_w = None
                self.reverts += 1
                log.info("%s: no refresh for %d s, power limit reverted", self.name, revert_s)
        if self._last_t is not None and t > self._last_t:
            self.energy_wh += self.pv.power_w * (t - self._last_t) / 3600.0
        self._last_t = t
        write_inverter(self.image, self.pv.power_w, self.voltage_v, self.energy_wh)
        capped = self.pv.cap_w is not None and self.pv.power_w >= self.pv.cap_w - 1.0
        state = 2 if self.pv.power_w <= 0.0 else 5 if capped else 4  # SLEEPING, THROTTLED, MPPT
        self.image.set("operating_state", state)

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        if name == "power_limit_pct":
            if not isinstance(value, int | float) or not 0.0 <= value <= 100.0:
                raise WriteRejected(f"WMaxLimPct {value!r} outside 0..100 %", address=False)
        elif name == "power_limit_enable":
            if value not in (0, 1):
                raise WriteRejected(f"WMaxLim_Ena {value!r} is not 0 or 1", address=False)
        elif name != "power_limit_revert_s":
            return
        self.last_limit_write_s = t
        enabled = self.image.get("power_limit_enable") == 1
        pct = self.image.get("power_limit_pct")
        self.pv.cap_w = float(pct) / 100.0 * self.wmax_w if enabled and isinstance(pct, int | float) else None
