"""Simulated battery inverters wired to the plant's batteries: SMA external control and SunSpec model 124.

``SimSmaStorage`` serves the SMA map (unit 3 by default). A setpoint (40149, positive = discharge)
takes effect only together with external control 802 (40151) in the same request; a setpoint written
on its own is ignored and counted in ``lone_setpoints``. Without a new 802 for ``watchdog_s`` (option,
default 60 s) it drops external control (803) and goes to 0 W. 803 releases at once.

``SimSunSpecStorage`` serves models 1, 103 and 124 at 40000. Its battery pushes as far as the enforced
bounds let it (StorCtl_Mod bit 0 with InWRte, bit 1 with OutWRte, % of WChaMax): a charge bound alone
charges at it, a discharge bound alone discharges at it, anything else idles; a real battery's own
logic would stay within the bounds instead. Without a write to the mode, the rates or their timer for
InOutWRte_RvrtTms seconds (0 = no timeout) it reverts: StorCtl_Mod 0, rates 100 %, idle.

Both report AC power positive when feeding the grid (discharging), as the real devices do.
"""

from __future__ import annotations

import logging
import math

from drivers.modbus.maps import sma_storage, sunspec
from drivers.modbus.registers import Value
from hil.modbus.context import SimContext
from hil.modbus.image import WriteRejected
from hil.modbus.pv import COMMON_LENGTH, sunspec_chain, write_chain_headers, write_identity, write_inverter
from hil.modbus.server import SimulatedDevice

log = logging.getLogger(__name__)

CHARGING = 4
DISCHARGING = 3
HOLDING = 6
"""ChaSt values of model 124."""


class SimSmaStorage(SimulatedDevice):
    """An SMA Sunny Island / Sunny Boy Storage under external control."""

    def __init__(self, ctx: SimContext) -> None:
        assert ctx.device.battery is not None
        super().__init__(ctx.device.id, [ctx.unit(sma_storage.MAP)], ctx.now)
        self.battery = ctx.plant.batteries[ctx.device.battery]
        self.watchdog_s = float(ctx.device.options.get("watchdog_s", sma_storage.MAP.behaviour.watchdog_s or 60.0))
        self.external = False
        self.setpoint_w = 0
        """Positive = discharge, as SMA counts it."""
        self.last_control_s = -math.inf
        self.lone_setpoints = 0
        self.fallbacks = 0
        self._pending: tuple[int, float] | None = None
        self.image.set("external_control", sma_storage.EXTERNAL_CONTROL_INACTIVE)

    def update(self, t: float) -> None:
        if self._pending is not None:
            # The request that carried this setpoint had no external control: SMA ignores it.
            self.lone_setpoints += 1
            self._pending = None
        if self.external and t - self.last_control_s > self.watchdog_s:
            log.info("%s: no external control for %.0f s, back to 0 W", self.name, self.watchdog_s)
            self._release(t)
            self.fallbacks += 1
        self.image.set("ac_power_w", round(-self.battery.power_w))
        self.image.set("soc_pct", round(self.battery.soc * 100.0))

    def _release(self, t: float) -> None:
        self.external = False
        self.setpoint_w = 0
        self.image.set("external_control", sma_storage.EXTERNAL_CONTROL_INACTIVE)
        self.battery.command(t, 0.0)

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        if name == "power_setpoint_w":
            if not isinstance(value, int):
                raise WriteRejected(f"setpoint {value!r} is not a number of watts", address=False)
            if self._pending is not None:
                self.lone_setpoints += 1
            # The server hands every register of one request the same t: 802 must follow with it.
            self._pending = (value, t)
        elif name == "external_control":
            pending, self._pending = self._pending, None
            if value == sma_storage.EXTERNAL_CONTROL_INACTIVE:
                self._release(t)
                return
            if value != sma_storage.EXTERNAL_CONTROL_ACTIVE:
                raise WriteRejected(f"external control {value!r} is not 802 or 803", address=False)
            if pending is not None and pending[1] == t:
                self.setpoint_w = pending[0]
            elif pending is not None:
                self.lone_setpoints += 1
            self.external = True
            self.last_control_s = t
            self.battery.command(t, -float(self.setpoint_w))


class SimSunSpecStorage(SimulatedDevice):
    """A battery inverter with SunSpec models 1, 103 and 124."""

    def __init__(self, ctx: SimContext) -> None:
        assert ctx.device.battery is not None
        self.models = [(sunspec.COMMON, COMMON_LENGTH), (sunspec.INVERTER_3PH, 50), (sunspec.STORAGE, 24)]
        unit_id = ctx.device.unit_id if ctx.device.unit_id is not None else 1
        base = sunspec.BASE_ADDRESSES[0]
        chain = sunspec_chain(base, self.models, unit_id, f"simulated SunSpec storage {ctx.device.id}")
        super().__init__(ctx.device.id, [chain], ctx.now)
        self.battery = ctx.plant.batteries[ctx.device.battery]
        self.voltage_v = ctx.site.site.nominal_voltage_v
        self.last_write_s = -math.inf
        self.reverts = 0
        self.energy_wh = 0.0
        image = self.image
        write_chain_headers(image, self.models)
        write_identity(image, "SunSpec storage", ctx.device.id)
        image.set("charge_max_sf", 1)
        image.set("soc_sf", -1)
        image.set("rate_sf", -2)
        image.set("charge_max_w", self.battery.max_charge_w)
        self._revert_state()

    def _revert_state(self) -> None:
        self.image.set("storage_control_mode", 0)
        self.image.set("charge_rate_pct", 100.0)
        self.image.set("discharge_rate_pct", 100.0)

    def update(self, t: float) -> None:
        image = self.image
        revert_s = image.get("rate_revert_s")
        controlled = image.get("storage_control_mode") != 0
        if controlled and isinstance(revert_s, int) and revert_s > 0 and t - self.last_write_s >= revert_s:
            log.info("%s: no refresh for %d s, rate limits reverted", self.name, revert_s)
            self._revert_state()
            self.battery.command(t, 0.0)
            self.reverts += 1
        power_w = self.battery.power_w
        write_inverter(image, -power_w, self.voltage_v, self.energy_wh)
        image.set("soc_pct", self.battery.soc * 100.0)
        image.set("charge_status", CHARGING if power_w > 0 else DISCHARGING if power_w < 0 else HOLDING)

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        if name in ("charge_rate_pct", "discharge_rate_pct"):
            if not isinstance(value, int | float) or not -100.0 <= value <= 100.0:
                raise WriteRejected(f"{name} {value!r} outside -100..100 %", address=False)
        elif name == "storage_control_mode":
            if not isinstance(value, int) or not 0 <= value <= 3:
                raise WriteRejected(f"StorCtl_Mod {value!r} has bits other than 0 and 1", address=False)
        elif name != "rate_revert_s":
            return
        self.last_write_s = t
        self.battery.command(t, self._target_w())

    def _target_w(self) -> float:
        """Battery power (positive = charging) the enforced bounds push it to."""
        image = self.image
        mode = image.get("storage_control_mode")
        charge = image.get("charge_rate_pct")
        discharge = image.get("discharge_rate_pct")
        if not isinstance(mode, int) or not isinstance(charge, int | float) or not isinstance(discharge, int | float):
            return 0.0
        max_w = self.battery.max_charge_w
        charge_w = max(0.0, charge) / 100.0 * max_w if mode & sunspec.STORCTL_ENFORCE_CHARGE else max_w
        discharge_w = max(0.0, discharge) / 100.0 * max_w if mode & sunspec.STORCTL_ENFORCE_DISCHARGE else max_w
        if mode == 0 or (charge_w > 0) == (discharge_w > 0):
            return 0.0
        return charge_w if charge_w > 0 else -discharge_w
