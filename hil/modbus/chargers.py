"""Simulated ABB Terra AC, Phoenix CHARX and Alpitronic hypercharger on the HIL plaza, each with its own rules.

Each serves the register map its driver reads (``drivers/modbus/maps``), filled from the plant every tick,
and applies writes to the plant's chargers as the real device would, refusing what it would refuse:

- ABB Terra AC: 0x4100 takes 0..32 A (below 6 A the EV pauses); 0x4100 is write-only and a read of it is
  refused, as on the charger. Not polled for ``options.comm_timeout_s`` (default 60 s; configured on the
  charger, no documented default) it stops charging: fallback 0 A.
- Phoenix CHARX: x301 takes 0 or 6..80 A (whole amperes). No fallback is documented, so the last limit
  stays in force however long nobody writes.
- Alpitronic: base+0 takes 0..the connector's power. 0 W aborts the session and leaves the connector
  unavailable (state 8) until the EV leaves, as the vendor warns. Not polled for
  ``options.fallback_after_s`` (default 60 s) the station applies its own limit,
  ``options.fallback_power_kw`` (default: the connector's full power).

"Polled" means any request, read or write: the plant's charger watchdog is refreshed by every request the
device answers, so a silent or dropped link (a scenario fault) is what lets a device fall back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from controller.config import ConnectorConfig, walk_tree
from drivers.modbus.chargers import connector_prefix, prefixed
from drivers.modbus.maps import abb_terra_ac, alpitronic_hyc, phoenix_charx
from drivers.modbus.registers import Register, RegisterMap, Table, Value
from hil.modbus.context import SimContext
from hil.modbus.image import RegisterImage, WriteRejected
from hil.modbus.server import SimulatedDevice
from hil.plant import ChargerSim

ABB_MAX_CURRENT_A = 32.0
"""The largest Terra AC (22 kW) charges at 32 A per phase."""
ABB_STATE_CODES = {"A": 0, "B1": 1, "B2": 2, "C1": 3, "C2": 4}
"""The plant's letters as the charging-state code of 0x400C (``abb_terra_ac.STATE_LETTERS`` inverted)."""
ABB_LOCK_PLUGGED_LOCKED = 0x0111
"""Socket lock state: cable plugged in the station (0x001), locked (0x010), plugged in the EV (0x100)."""

CHARX_MAX_CURRENT_A = 80
"""The CHARX takes whole amperes; 80 A is the most a Type 2 outlet carries (single phase)."""

ALPITRONIC_DC_VOLTAGE_V = 400.0
"""The simulated EV battery voltage: DC current = power / this."""
ALPITRONIC_MAX_DC_CURRENT_A = 655.35
"""The DC current register is a U16 in 0.01 A."""
ALPITRONIC_AVAILABLE, ALPITRONIC_PREPARING, ALPITRONIC_CHARGING, ALPITRONIC_UNAVAILABLE = 0, 2, 3, 8

DEFAULT_TIMEOUT_S = 60.0


class PolledImage(RegisterImage):
    """A register image that reports every request to ``on_request`` and refuses reads of write-only registers."""

    def __init__(self, maps: Iterable[RegisterMap], on_request: Callable[[], None]) -> None:
        super().__init__(maps)
        self._on_request = on_request

    def read(self, unit: int, table: Table, address: int, count: int) -> list[int] | None:
        self._on_request()
        for register in self.registers_at(unit, table):
            if not register.access.readable and register.pdu < address + count and register.end > address:
                return None  # answered "illegal data address", as the ABB does for 0x4100
        return super().read(unit, table, address, count)

    def write(self, unit: int, table: Table, address: int, words: Sequence[int]) -> list[tuple[Register, Value | None]]:
        self._on_request()
        return super().write(unit, table, address, words)


class _SimCharger(SimulatedDevice):
    """What the three simulators share: their connectors, the keep-alive of every request, energy counters."""

    def __init__(self, ctx: SimContext, maps: Sequence[RegisterMap]) -> None:
        super().__init__(ctx.device.id, maps, ctx.now)
        self.image = PolledImage(maps, self._keep_alive)
        self.plant = ctx.plant
        self.voltage_v = ctx.plant.voltage_v
        by_id = {c.id: c for item in walk_tree(ctx.site.tree) for c in item.node.connectors}
        self.connectors: list[ConnectorConfig] = [by_id[c] for c in ctx.device.connectors]
        self.options = ctx.device.options
        self.last_request_s = -math.inf
        self.energy_wh: dict[str, float] = {c.id: 0.0 for c in self.connectors}
        """Lifetime energy counters per connector (tests may start them anywhere)."""
        self._last_t: float | None = None

    def charger(self, index: int) -> ChargerSim:
        """The plant's charger behind connector ``index`` (0-based, device order)."""
        return self.plant.chargers[self.connectors[index].id]

    def _keep_alive(self) -> None:
        t = self.now()
        self.last_request_s = t
        for conn in self.connectors:
            charger = self.plant.chargers[conn.id]
            charger.last_write_s = max(charger.last_write_s, t)

    def _fallback(self, current_a: float, after_s: float) -> None:
        """The device's own fallback: ``current_a`` per phase once nothing was asked for ``after_s``."""
        for conn in self.connectors:
            charger = self.plant.chargers[conn.id]
            charger.fallback_current_a = current_a
            charger.behaviour = replace(charger.behaviour, watchdog_s=after_s)

    def _count_energy(self, t: float) -> None:
        dt = t - self._last_t if self._last_t is not None and t > self._last_t else 0.0
        self._last_t = t
        for conn in self.connectors:
            self.energy_wh[conn.id] += self.plant.chargers[conn.id].power_w * dt / 3600.0

    def _option(self, name: str, default: float) -> float:
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: options.{name} must be a number, not {value!r}")
        return float(value)


class SimAbbTerraAc(_SimCharger):
    """An ABB Terra AC: one outlet, mA setpoint at 0x4100, stops charging when not polled."""

    def __init__(self, ctx: SimContext) -> None:
        super().__init__(ctx, [ctx.unit(abb_terra_ac.MAP)])
        self.comm_timeout_s = self._option("comm_timeout_s", DEFAULT_TIMEOUT_S)
        self._fallback(0.0, self.comm_timeout_s)

    def update(self, t: float) -> None:
        self._count_energy(t)
        charger = self.charger(0)
        image = self.image
        state = charger.state()
        image.set("socket_lock_state_raw", 0 if charger.ev is None else ABB_LOCK_PLUGGED_LOCKED)
        # The code sits in byte 2 of the frame: bits 8..15 of the UINT32 (see abb_state_letter).
        image.set("state_raw", ABB_STATE_CODES["A" if state.startswith("A") else state] << 8)
        image.set("applied_current_limit_a", charger.applied_a)
        for k in range(3):
            image.set(f"current_l{k + 1}_a", charger.charger_a[k])
            image.set(f"voltage_l{k + 1}_v", self.voltage_v)
        image.set("power_w", charger.power_w)
        image.set("session_energy_wh", charger.session_wh)

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        if name == "current_limit_setpoint_a":
            if not isinstance(value, float) or not 0.0 <= value <= ABB_MAX_CURRENT_A:
                raise WriteRejected(f"current limit {value!r} A outside 0..{ABB_MAX_CURRENT_A:g} A", address=False)
            self.charger(0).write_limit(t, value)


class SimCharx(_SimCharger):
    """A Phoenix CHARX group: connector n at n × 1000 + offset on one unit, whole-ampere setpoints."""

    def __init__(self, ctx: SimContext) -> None:
        count = len(ctx.device.connectors)
        maps = [ctx.unit(prefixed(phoenix_charx.charx_map(n), connector_prefix(n))) for n in range(1, count + 1)]
        super().__init__(ctx, maps)
        self._fallback(0.0, math.inf)  # no fallback documented: the last limit holds
        self._by_setpoint = {connector_prefix(i + 1) + "max_current_setpoint_a": i for i in range(count)}

    def update(self, t: float) -> None:
        self._count_energy(t)
        image = self.image
        for index, conn in enumerate(self.connectors):
            p = connector_prefix(index + 1)
            charger = self.charger(index)
            image.set(p + "state_raw", ord(charger.state()[0]) << 8)
            for k in range(3):
                image.set(f"{p}voltage_l{k + 1}_v", self.voltage_v)
                image.set(f"{p}current_l{k + 1}_a", charger.charger_a[k])
            image.set(p + "power_w", charger.power_w)
            image.set(p + "energy_wh", round(self.energy_wh[conn.id]))

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        index = self._by_setpoint.get(name)
        if index is None:
            return
        if not isinstance(value, int) or not (value == 0 or 6 <= value <= CHARX_MAX_CURRENT_A):
            raise WriteRejected(f"max current {value!r} A is neither 0 nor 6..{CHARX_MAX_CURRENT_A} A", address=False)
        self.charger(index).write_limit(t, float(value))


class SimAlpitronic(_SimCharger):
    """An Alpitronic hypercharger: DC connectors 1-4, a power limit each, 0 W aborts, fallback when not polled."""

    def __init__(self, ctx: SimContext) -> None:
        count = len(ctx.device.connectors)
        maps = [
            *(ctx.unit(prefixed(alpitronic_hyc.alpitronic_map(n), connector_prefix(n))) for n in range(1, count + 1)),
            ctx.unit(alpitronic_hyc.STATION_MAP),
        ]
        super().__init__(ctx, maps)
        self.max_power_w = [(c.max_power_kw or 0.0) * 1000.0 for c in self.connectors]
        self.fallback_after_s = self._option("fallback_after_s", DEFAULT_TIMEOUT_S)
        self.aborted: set[str] = set()
        """Connectors a 0 W write aborted: unavailable until their EV leaves."""
        self._by_setpoint = {connector_prefix(i + 1) + "max_power_w": i for i in range(count)}
        for index, conn in enumerate(self.connectors):
            fallback_w = self._option("fallback_power_kw", self.max_power_w[index] / 1000.0) * 1000.0
            charger = self.plant.chargers[conn.id]
            charger.fallback_current_a = fallback_w / (3 * self.voltage_v)
            charger.behaviour = replace(charger.behaviour, watchdog_s=self.fallback_after_s)
        self.image.set("max_power_va", sum(self.max_power_w))

    def update(self, t: float) -> None:
        self._count_energy(t)
        image = self.image
        for index, conn in enumerate(self.connectors):
            p = connector_prefix(index + 1)
            charger = self.charger(index)
            ev = charger.ev
            if ev is None:
                self.aborted.discard(conn.id)
                code = ALPITRONIC_AVAILABLE
            elif conn.id in self.aborted:
                code = ALPITRONIC_UNAVAILABLE
            else:
                code = ALPITRONIC_CHARGING if charger.power_w > 0 else ALPITRONIC_PREPARING
            voltage_v = ALPITRONIC_DC_VOLTAGE_V if ev is not None else 0.0
            current_a = min(charger.power_w / ALPITRONIC_DC_VOLTAGE_V, ALPITRONIC_MAX_DC_CURRENT_A)
            image.set(p + "state_code", code)
            image.set(p + "dc_voltage_v", voltage_v)
            image.set(p + "dc_current_a", current_a)
            image.set(p + "power_w", charger.power_w)
            image.set(p + "ev_soc_pct", ev.soc * 100.0 if ev is not None else 0.0)
            image.set(p + "ev_max_power_w", ev.spec.max_dc_power_w if ev is not None else 0.0)
            image.set(p + "ev_min_power_w", 0)
            image.set(p + "total_energy_wh", round(self.energy_wh[conn.id]))

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        index = self._by_setpoint.get(name)
        if index is None:
            return  # the station limit (max_power_va) is stored, not modelled
        max_w = self.max_power_w[index]
        if not isinstance(value, int) or not 0 <= value <= max_w:
            raise WriteRejected(f"max power {value!r} W outside 0..{max_w:g} W", address=False)
        conn = self.connectors[index]
        charger = self.charger(index)
        if value == 0:
            # The vendor's warning, modelled: the session ends and the connector stays unavailable.
            self.aborted.add(conn.id)
        if conn.id in self.aborted:
            charger.write_limit(t, 0.0)
            return
        # The plant takes a DC limit as its AC-equivalent per-phase current.
        charger.write_limit(t, value / (3 * self.voltage_v))
