"""Simulated Modbus devices wired to the plant model, with each vendor's own behaviour.

Every device serves the same register map the driver reads (``drivers/modbus/maps``), filled from the
plant each tick. Writes act on the plant through the device's rules: the Alfen socket takes its
setpoint after its response delay and falls back to its safe current when the setpoint's validity
expires; the I/O module mirrors the fire-panel contacts and the DSO relays. ``SIM_DEVICES`` maps each
driver name of the site file to the simulator serving it, so a scenario's site file is both what
``plaza-ems hil`` serves and what ``plaza-ems run --config`` drives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from drivers.modbus.maps import alfen_ng9xx, digital_io, eastron_sdm630, janitza_umg604
from drivers.modbus.registers import RegisterMap, Table, Value, encode
from hil.modbus.battery import SimSmaStorage, SimSunSpecStorage
from hil.modbus.chargers import SimAbbTerraAc, SimAlpitronic, SimCharx
from hil.modbus.context import SimContext
from hil.modbus.image import WriteRejected
from hil.modbus.pv import SimSunSpecPv
from hil.modbus.server import SimulatedDevice

NOMINAL_FREQUENCY_HZ = 50.0


class SimMeter(SimulatedDevice):
    """A three-phase meter: current magnitudes per phase, signed power, counters that integrate."""

    def __init__(self, ctx: SimContext, register_map: RegisterMap) -> None:
        super().__init__(ctx.device.id, [ctx.unit(register_map)], ctx.now)
        assert ctx.device.meter is not None
        self.meter_id = ctx.device.meter
        self.plant = ctx.plant
        self.voltage_v = ctx.site.site.nominal_voltage_v
        self.import_wh = 0.0
        self.export_wh = 0.0
        self._last_t: float | None = None

    def update(self, t: float) -> None:
        current_a, power_w = self.plant.meter_values(self.meter_id)
        if self._last_t is not None and t > self._last_t:
            energy_wh = power_w * (t - self._last_t) / 3600.0
            if energy_wh >= 0:
                self.import_wh += energy_wh
            else:
                self.export_wh -= energy_wh
        self._last_t = t
        image = self.image
        for k in range(3):
            image.set(f"voltage_l{k + 1}_v", self.voltage_v)
            image.set(f"current_l{k + 1}_a", abs(current_a[k]))
            image.set(f"power_l{k + 1}_w", power_w / 3.0)
        image.set("power_w", power_w)
        image.set("frequency_hz", NOMINAL_FREQUENCY_HZ)
        image.set("import_energy_wh", self.import_wh)
        image.set("export_energy_wh", self.export_wh)


@dataclass(slots=True)
class _Socket:
    connector: str
    prefix_unit: int
    last_write_s: float = -math.inf
    energy_wh: float = 0.0


class SimAlfen(SimulatedDevice):
    """An Alfen NG9xx: sockets on unit 1/2, station on unit 200, setpoint validity and safe current."""

    def __init__(self, ctx: SimContext) -> None:
        sockets = [alfen_ng9xx.socket_map(i + 1) for i in range(len(ctx.device.connectors))]
        super().__init__(ctx.device.id, [*sockets, alfen_ng9xx.STATION_MAP], ctx.now)
        self.plant = ctx.plant
        self.validity_s = float(ctx.device.options.get("validity_s", 60.0))
        self.safe_current_a = float(ctx.device.options.get("safe_current_a", 6.0))
        self.sockets = [_Socket(c, i + 1) for i, c in enumerate(ctx.device.connectors)]
        self._last_t: float | None = None
        for socket in self.sockets:
            charger = self.plant.chargers[socket.connector]
            charger.fallback_current_a = self.safe_current_a
            charger.behaviour = replace(charger.behaviour, watchdog_s=self.validity_s)
        # One image holds both sockets; unit ids pick the socket, so names are per unit.
        self._by_unit = {s.prefix_unit: s for s in self.sockets}

    def update(self, t: float) -> None:
        dt = t - self._last_t if self._last_t is not None and t > self._last_t else 0.0
        self._last_t = t
        voltage_v = self.plant.voltage_v
        for socket in self.sockets:
            charger = self.plant.chargers[socket.connector]
            socket.energy_wh += charger.power_w * dt / 3600.0
            unit = socket.prefix_unit
            remaining_s = max(0.0, self.validity_s - (t - socket.last_write_s))
            values: dict[str, Value] = {
                "mode3_state": _alfen_state(charger.state()),
                "applied_max_current_a": charger.applied_a,
                "validity_remaining_s": int(remaining_s) if math.isfinite(remaining_s) else 0,
                "safe_current_a": self.safe_current_a,
                "setpoint_in_use": 1 if remaining_s > 0 else 0,
                "availability": 1,
                "power_w": charger.power_w,
                "energy_delivered_wh": socket.energy_wh,
            }
            for k in range(3):
                values[f"voltage_l{k + 1}_v"] = voltage_v
                values[f"current_l{k + 1}_a"] = charger.charger_a[k]
                values[f"power_l{k + 1}_w"] = charger.charger_a[k] * voltage_v
            for name, value in values.items():
                self._set(unit, name, value)
        self.image.set("socket_count", len(self.sockets))
        self.image.set("active_max_current_a", max(self.plant.chargers[s.connector].applied_a for s in self.sockets))

    def _set(self, unit: int, name: str, value: Value) -> None:
        register = self.image.register(name)
        self.image.set_words(unit, register, encode(register, value))

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        socket = self._by_unit.get(unit)
        if socket is None:
            return
        if name == "max_current_setpoint_a":
            if not isinstance(value, float) or not math.isfinite(value) or not 0.0 <= value <= 80.0:
                raise WriteRejected(f"setpoint {value!r} A outside 0..80 A", address=False)
            socket.last_write_s = t
            self.plant.chargers[socket.connector].write_limit(t, value)


def _alfen_state(letter: str) -> str:
    """The plant's letters (A1, B2, C2) as the Alfen reports them (A, B1..D2)."""
    return "A" if letter.startswith("A") else letter


class SimIoModule(SimulatedDevice):
    """Discrete inputs mirroring the fire panel / e-stop NC contacts and the DSO relays."""

    def __init__(self, ctx: SimContext) -> None:
        unit_id = ctx.device.unit_id if ctx.device.unit_id is not None else 1
        points = [
            digital_io.IoPoint(name=f"c_{i}", address=address, meaning=cid)
            for i, (cid, address) in enumerate(ctx.device.contacts.items())
        ]
        relays = ctx.device.dso_relays
        if relays is not None:
            points += [
                digital_io.IoPoint(name=digital_io.DSO_RELAY_0_PCT, address=relays.zero_pct, meaning="0 %"),
                digital_io.IoPoint(name=digital_io.DSO_RELAY_30_PCT, address=relays.thirty_pct, meaning="30 %"),
                digital_io.IoPoint(name=digital_io.DSO_RELAY_60_PCT, address=relays.sixty_pct, meaning="60 %"),
            ]
        table = Table.COIL if ctx.device.options.get("table") == "coil" else Table.DISCRETE
        register_map = digital_io.io_module_map(device=ctx.device.id, points=points, unit_id=unit_id, table=table)
        super().__init__(ctx.device.id, [register_map], ctx.now)
        self.state = ctx.state
        self.contacts = {f"c_{i}": cid for i, cid in enumerate(ctx.device.contacts)}
        self.relays = relays

    def update(self, t: float) -> None:
        for point, contact_id in self.contacts.items():
            self.image.set(point, bool(self.state.contacts.get(contact_id, False)))
        if self.relays is None:
            return
        active = not self.relays.restricted_level
        stage = self.state.dso_pct
        # Exactly one relay is active per stage below 100 %, as a ripple-control receiver switches.
        self.image.set(digital_io.DSO_RELAY_0_PCT, active if stage > 0.0 else not active)
        self.image.set(digital_io.DSO_RELAY_30_PCT, active if not 0.0 < stage <= 30.0 else not active)
        self.image.set(digital_io.DSO_RELAY_60_PCT, active if not 30.0 < stage <= 60.0 else not active)


SimFactory = Callable[[SimContext], SimulatedDevice]

SIM_DEVICES: Mapping[str, SimFactory] = {
    "eastron_sdm630": lambda ctx: SimMeter(ctx, eastron_sdm630.MAP),
    "janitza_umg604": lambda ctx: SimMeter(ctx, janitza_umg604.MAP),
    "alfen_ng9xx": SimAlfen,
    "digital_io": SimIoModule,
    "abb_terra_ac": SimAbbTerraAc,
    "phoenix_charx": SimCharx,
    "alpitronic_hyc": SimAlpitronic,
    "sunspec_pv": SimSunSpecPv,
    "sma_storage": SimSmaStorage,
    "sunspec_storage": SimSunSpecStorage,
}
