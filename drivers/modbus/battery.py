"""Stationary batteries over Modbus TCP: SMA Sunny Island / Sunny Boy Storage and SunSpec model 124.

Both publish a ``BatteryReading`` (SoC in %, power positive = charging, the process image's sign) and
turn the cycle's ``BatteryCommand`` (positive = charge; standby = hold at 0 W) into the device's own
control, rewritten every third of the device's fallback time so the battery only falls back on its own
when the controller is gone.

SMA: the setpoint (40149, S32 W, positive = discharge, so the sign is flipped) only counts together
with external control 802 (40151) in the same FC16 request. The pair is mapped here as one 4-register
write unit, so the base class can never send one without the other — a changed setpoint alone would
otherwise be written without the unchanged 802. Standby is 0 W under external control (not 803: that
would hand the battery back to its own self-consumption logic while an interlock wants it idle). AC
power (30775, positive = feeding the grid, i.e. discharging) gives the reading's power.

SunSpec 124: InWRte/OutWRte are the most the battery may charge/discharge, in % of WChaMax, enforced by
StorCtl_Mod bits 0/1 and reverting after InOutWRte_RvrtTms. A charge command of P sets InWRte = P and
OutWRte = 0, a discharge the reverse, 0 W/standby both 0 (evcc's "hold"); the battery's own logic
decides within those bounds (forcing a charge with a negative rate is vendor-specific and not used).
Power comes from the device's inverter model 101-103 (W positive = discharging) if it has one, else
from the reading of the battery's site ``meter``, which another device publishes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from controller.image import BatteryReading, InputSnapshot, MeterReading, Quality
from controller.program import BatteryCommand, CycleOutput
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.maps import sma_storage, sunspec
from drivers.modbus.pv import Layout, SunSpecDevice, place, to_raw
from drivers.modbus.registers import Access, DataType, Register, RegisterMap, Table, Value
from drivers.runtime import DeviceError

SMA_SETPOINT_AND_CONTROL = "setpoint_and_control"
SMA_FAST = ("ac_power_w", "soc_pct")
SMA_WATCHDOG_S = sma_storage.MAP.behaviour.watchdog_s or 60.0
"""Default time after which the battery drops external control without a refresh (evcc's figure)."""


def _sma_control_map() -> RegisterMap:
    """The SMA map with 40149 (setpoint) and 40151 (external control) as one U64 write unit."""
    pair = Register(
        name=SMA_SETPOINT_AND_CONTROL,
        pdu=40149,
        doc_address="40149 + 40151",
        table=Table.HOLDING,
        type=DataType.U64,
        access=Access.W,
        meaning="power setpoint (S32 W, + = discharge) in the high 32 bits, external control (U32) in the low ones",
    )
    kept = tuple(r for r in sma_storage.MAP.registers if r.name not in ("power_setpoint_w", "external_control"))
    return replace(sma_storage.MAP, registers=(*kept, pair))


def sma_pair(setpoint_w: int, control: int = sma_storage.EXTERNAL_CONTROL_ACTIVE) -> int:
    """The U64 whose four words are the S32 setpoint followed by the U32 external-control value."""
    return ((setpoint_w & 0xFFFF_FFFF) << 32) | control


def _command_for(output: CycleOutput, battery_id: str) -> BatteryCommand | None:
    return next((c for c in output.batteries if c.battery == battery_id), None)


class SmaBatteryDevice(ModbusDevice):
    """An SMA battery inverter under external control."""

    slow_every_s = 60.0

    def __init__(self, name: str, endpoint: Endpoint, *, battery_id: str, watchdog_s: float) -> None:
        super().__init__(name, endpoint, [_sma_control_map()], fast=SMA_FAST)
        self.battery_id = battery_id
        self.watchdog_s = watchdog_s

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        # 30775 is positive when the inverter feeds the grid, i.e. discharges.
        power_w = -self.number("ac_power_w")
        snapshot.batteries[self.battery_id] = BatteryReading(self.number("soc_pct"), power_w, now)

    def unpublish(self, snapshot: InputSnapshot) -> None:
        snapshot.batteries.pop(self.battery_id, None)

    def setpoint_w(self, output: CycleOutput) -> int | None:
        """The SMA setpoint (positive = discharge) for this cycle, or None if the output has no command."""
        command = _command_for(output, self.battery_id)
        if command is None:
            return None
        return 0 if command.standby else -round(command.power_w)

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        setpoint_w = self.setpoint_w(output)
        if setpoint_w is None:
            return {}
        return {SMA_SETPOINT_AND_CONTROL: sma_pair(setpoint_w)}

    def refresh_s(self, name: str) -> float | None:
        return self.watchdog_s / 3.0


STORAGE_CONTROL_BOTH = sunspec.STORCTL_ENFORCE_CHARGE | sunspec.STORCTL_ENFORCE_DISCHARGE
STORAGE_KEEP = (
    "charge_max_w",
    "charge_max_sf",
    "storage_control_mode",
    "soc_pct",
    "soc_sf",
    "charge_status",
    "discharge_rate_pct",
    "charge_rate_pct",
    "rate_revert_s",
    "rate_sf",
)
STORAGE_RAW = {"discharge_rate_pct": "discharge_rate_raw", "charge_rate_pct": "charge_rate_raw"}
STORAGE_FAST = ("soc_pct",)
"""ChaState_SF (+22) is not beside ChaState (+8): it is read on connect and with the slow registers."""


@dataclass(frozen=True, slots=True)
class BatterySpec:
    """What the SunSpec battery adapter needs from the site file's battery entry."""

    id: str
    meter: str | None
    """The battery's meter in the site (the power source when the device has no inverter model)."""
    max_charge_w: float
    """Used for the rate percentages when the device does not report WChaMax."""


class SunSpecBatteryDevice(SunSpecDevice):
    """A battery with SunSpec model 124 (storage), and model 101-103 for its AC power if present."""

    slow_every_s = 10.0

    def __init__(
        self, name: str, endpoint: Endpoint, *, battery: BatterySpec, meter_id: str | None, revert_s: float
    ) -> None:
        super().__init__(name, endpoint)
        self.battery = battery
        self.meter_id = meter_id
        """The meter this device publishes from its inverter model (the battery's meter), or None."""
        self.revert_s = revert_s
        self.inverter_model: int | None = None

    def install(self, layout: Layout) -> tuple[list[RegisterMap], list[str]]:
        storage = layout.find(sunspec.STORAGE.id)
        if storage is None:
            raise DeviceError(f"{layout.describe()}: no model 124 (storage) for battery '{self.battery.id}'")
        maps, fast, self.inverter_model = self.inverter_maps(layout)
        if self.inverter_model is None and (self.meter_id is not None or self.battery.meter is None):
            raise DeviceError(
                f"{layout.describe()}: no inverter model 101-103 for battery '{self.battery.id}'s power"
                + (
                    f", so it cannot publish meter '{self.meter_id}'"
                    if self.meter_id is not None
                    else ", and the battery has no meter in the site file to take it from"
                )
            )
        maps.append(place(sunspec.STORAGE, storage, self.unit, keep=STORAGE_KEEP, raw=STORAGE_RAW))
        return maps, fast + list(STORAGE_FAST)

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        soc_pct = self.number("soc_pct")
        if self.inverter_model is not None:
            # The inverter's W is positive when it feeds the grid, i.e. discharges the battery.
            power_w = -self.number("power_w")
            ts = now
            if self.meter_id is not None:
                magnitude = self.inverter_currents_a(self.inverter_model)
                sign = -1.0 if power_w < 0 else 1.0
                current_a = (sign * magnitude[0], sign * magnitude[1], sign * magnitude[2])
                snapshot.meters[self.meter_id] = MeterReading(current_a, power_w, now)
        else:
            meter = snapshot.meters.get(self.battery.meter) if self.battery.meter is not None else None
            good = meter is not None and meter.quality == Quality.GOOD
            # The battery's meter counts import as positive: charging, the image's battery sign.
            power_w = meter.power_w if meter is not None and good else math.nan
            ts = min(now, meter.ts) if meter is not None else now
        snapshot.batteries[self.battery.id] = BatteryReading(soc_pct, power_w, ts)

    def unpublish(self, snapshot: InputSnapshot) -> None:
        snapshot.batteries.pop(self.battery.id, None)
        if self.meter_id is not None:
            snapshot.meters.pop(self.meter_id, None)

    def rates_pct(self, output: CycleOutput) -> tuple[float, float] | None:
        """(charge %, discharge %) of WChaMax for this cycle's command, or None without a command."""
        command = _command_for(output, self.battery.id)
        if command is None:
            return None
        power_w = 0.0 if command.standby else command.power_w
        max_w = self.number("charge_max_w")
        if not math.isfinite(max_w) or max_w <= 0.0:
            max_w = self.battery.max_charge_w
        pct = min(100.0, abs(power_w) / max_w * 100.0)
        return (pct, 0.0) if power_w > 0 else (0.0, pct)

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        rates = self.rates_pct(output)
        sf = self.scale_factor("rate_sf")
        if rates is None or sf is None:
            return {}
        charge_pct, discharge_pct = rates
        return {
            "storage_control_mode": STORAGE_CONTROL_BOTH,
            "discharge_rate_raw": to_raw(discharge_pct, sf),
            "charge_rate_raw": to_raw(charge_pct, sf),
            "rate_revert_s": round(self.revert_s),
        }

    def refresh_s(self, name: str) -> float | None:
        return self.revert_s / 3.0
