"""Modbus TCP adapters for the ABB Terra AC, the Phoenix Contact CHARX SEC-3xxx and the Alpitronic hypercharger.

Each adapter turns its register map (``drivers/modbus/maps``) into ``ConnectorReading``s and writes the
cycle's setpoint per connector; polling, decoding, plausibility, exception responses and the rewrite of
every setpoint after a reconnect come from ``ModbusDevice``.

- ABB Terra AC (one outlet): 0x4100 current limit in mA (UINT32, FC16), on change; below 6 A pauses. The
  charger stops charging on its own when it is not polled for its configured communication timeout, so
  its fallback is 0 A and the every-cycle poll is its keep-alive. 0x4105 (start/stop) is never written.
- Phoenix CHARX (one device, connectors 1..n at n × 1000 + offset on one unit): x301 max current in whole
  amperes (U16, FC16), on change; 0 pauses. No fallback is documented.
- Alpitronic hypercharger (DC, connectors 1-4): base+0 max power in W (UINT32, FC16), on change. 0 W
  would abort the session and make the connector unavailable, so a pause writes ``PAUSE_POWER_W`` and no
  limit below it is written — except under a fire or emergency-stop interlock, which writes 0 W: the
  sessions end, but no energy flows. The station falls back to its own limit when it is not polled; how
  high that is must be given in the site file (``options.fallback_power_kw``), it defaults to the
  connector's full power.

The maps give no setpoint watchdog for any of the three (``Behaviour.watchdog_s`` is None), so setpoints
are written on change only; should a map gain one, ``refresh_s`` rewrites at a third of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from controller.config import ConnectorConfig
from controller.image import ConnectorReading, InputSnapshot, SessionState
from controller.interlocks import SiteMode
from controller.program import ConnectorSetpoint, CycleOutput
from drivers.modbus.device import ChargerTraits, Endpoint, ModbusDevice
from drivers.modbus.maps.abb_terra_ac import MAP as ABB_MAP
from drivers.modbus.maps.abb_terra_ac import abb_state_letter
from drivers.modbus.maps.alpitronic_hyc import alpitronic_map
from drivers.modbus.maps.phoenix_charx import CONNECTOR_STRIDE, charx_map, charx_state_letter
from drivers.modbus.registers import Behaviour, Register, RegisterMap, Value
from drivers.runtime import DeviceError

log = logging.getLogger(__name__)

SLOW_EVERY_S = 10.0
"""Counters and setpoint read-backs: session energy should not lag by a minute, as on the Alfen."""

ABB_EV_PLUGGED_LOCK_STATE = 0x0101
"""evcc abb.go: with the state "other", a socket lock state >= 0x0101 means the EV is still plugged in."""

ALPITRONIC_STATE_LETTERS: Mapping[int, str] = {
    0: "A",  # Available
    1: "B1",  # EV plugged in, waiting for authorisation: no energy offered
    2: "B2",  # Preparing, EV ready
    3: "C2",  # Charging
    4: "B2",  # Suspended by the EV: the station offers, the EV takes nothing
    5: "B1",  # Suspended by the station
    6: "B1",  # Finishing / disconnect required: still plugged in
    7: "A",  # Reserved: no EV (OpenEMS AvailableState; not in the map's STATES)
    8: "F",  # Unavailable: IEC 61851 state F is "EVSE not available"
    9: "F",  # Unavailable, firmware update (OpenEMS; not in the map's STATES)
    10: "F",  # Faulted
    11: "F",  # Unavailable, connection object (OpenEMS; not in the map's STATES)
}
"""IEC 61851 letters for the Alpitronic connector state (input register base + 0).

Grouped as evcc's alpitronic.go groups them (0, 7-10 no EV; 1, 2, 4-6 connected; 3 charging), except that
the unavailable and faulted codes become F rather than A: the connector cannot charge, which is what F says.
"""


def prefixed(register_map: RegisterMap, prefix: str) -> RegisterMap:
    """Every connector's map uses the same register names; prefix them so one device (and one image) holds all."""
    return replace(register_map, registers=tuple(replace(r, name=prefix + r.name) for r in register_map.registers))


def connector_prefix(connector: int) -> str:
    """``c1_``, ``c2_``, ...: the name prefix of connector ``connector`` (counted from 1, as the vendors do)."""
    return f"c{connector}_"


class SessionEnergy:
    """Session energy from a lifetime counter: the counter minus its value when the session began.

    The start is taken while no EV is plugged in (and on the first reading, so a session already running
    when the driver starts counts from then). A counter that goes backwards (meter replaced) starts over.
    """

    def __init__(self) -> None:
        self._start_wh: dict[str, float] = {}

    def session_wh(self, connector: str, state: str, counter_wh: float) -> float:
        start_wh = self._start_wh.get(connector, math.nan)
        if state in SessionState.NO_EV or not math.isfinite(start_wh) or counter_wh < start_wh:
            self._start_wh[connector] = start_wh = counter_wh
        session_wh = counter_wh - start_wh
        # An unknown counter must not make the whole reading BAD: the energy only shapes the intent.
        return session_wh if math.isfinite(session_wh) else 0.0


class _ChargerDevice(ModbusDevice):
    """What the three adapters share: connectors in device order, bad-state errors, the setpoints meant for them."""

    slow_every_s = SLOW_EVERY_S

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        maps: Iterable[RegisterMap],
        connectors: Sequence[ConnectorConfig],
        behaviour: Behaviour,
        fast: Iterable[str],
    ) -> None:
        super().__init__(name, endpoint, maps, fast=fast)
        self.connectors = tuple(connectors)
        self.behaviour = behaviour
        self.energy = SessionEnergy()
        self._index = {c.id: i + 1 for i, c in enumerate(self.connectors)}
        self._non_finite_reported: set[str] = set()

    def unpublish(self, snapshot: InputSnapshot) -> None:
        for conn in self.connectors:
            snapshot.connectors.pop(conn.id, None)

    def refresh_s(self, name: str) -> float | None:
        watchdog_s = self.behaviour.watchdog_s
        return watchdog_s / 3.0 if watchdog_s is not None else None

    def _register(self, name: str) -> Register:
        for register_map in self.maps:
            for register in register_map.registers:
                if register.name == name:
                    return register
        raise KeyError(name)

    def _raw(self, name: str) -> int:
        """An integer register's raw value, or DeviceError naming it."""
        value = self.values.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            register = self._register(name)
            raise DeviceError(f"register {name!r} ({register.doc_address}) has no value ({value!r})")
        return value

    def _state_error(self, name: str, err: Exception) -> DeviceError:
        register = self._register(name)
        return DeviceError(f"register {name!r} ({register.doc_address}): {err}")

    def _setpoints(self, output: CycleOutput) -> Iterable[tuple[int, ConnectorSetpoint, bool]]:
        """(connector number, setpoint, paused) for each connector of this device in the output.

        A non-finite setpoint is a controller fault: the connector is held paused rather than left at
        whatever it had (a failed write would keep the old limit), and the fault is logged once.
        """
        for setpoint in output.setpoints:
            number = self._index.get(setpoint.connector)
            if number is None:
                continue
            finite = math.isfinite(setpoint.current_a) and (setpoint.power_w is None or math.isfinite(setpoint.power_w))
            if not finite and setpoint.connector not in self._non_finite_reported:
                log.error(
                    "%s: setpoint for %s is not finite (%r): holding it paused", self.name, setpoint.connector, setpoint
                )
                self._non_finite_reported.add(setpoint.connector)
            yield number, setpoint, setpoint.paused or not finite


class AbbTerraAcDevice(_ChargerDevice):
    """ABB Terra AC wallbox: one outlet, everything in one block 0x400A..0x401F read every cycle."""

    def __init__(self, name: str, endpoint: Endpoint, connector: ConnectorConfig) -> None:
        # One contiguous block holds every readable register, so all of them are fast at no extra request.
        fast = [r.name for r in ABB_MAP.registers if r.access.readable]
        super().__init__(name, endpoint, [ABB_MAP], [connector], ABB_MAP.behaviour, fast)

    def charger_traits(self) -> Mapping[str, ChargerTraits]:
        behaviour = self.behaviour
        traits = ChargerTraits(
            min_current_a=behaviour.min_current_a,
            zero_pauses=behaviour.zero_pauses,
            pause_power_w=None,
            phase_switching=behaviour.phase_switching,
            # Not polled for its communication timeout, the charger stops charging.
            fallback_current_a=0.0,
            # The timeout is configured on the charger and the documents give no default; the poll of
            # every cycle is what keeps it alive, not the setpoint.
            watchdog_s=None,
        )
        return {self.connectors[0].id: traits}

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        conn = self.connectors[0]
        try:
            letter = abb_state_letter(self._raw("state_raw"))
        except ValueError as err:
            raise self._state_error("state_raw", err) from None
        if letter == "other":
            # A stopped session: connected (not charging) while the EV is still plugged in.
            plugged = self._raw("socket_lock_state_raw") >= ABB_EV_PLUGGED_LOCK_STATE
            letter = "B1" if plugged else "A"
        n = self.number
        session_wh = n("session_energy_wh")
        snapshot.connectors[conn.id] = ConnectorReading(
            letter,
            (n("current_l1_a"), n("current_l2_a"), n("current_l3_a")),
            n("power_w"),
            session_wh if math.isfinite(session_wh) else 0.0,
            None,
            now,
        )

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        wanted: dict[str, Value] = {}
        for _, setpoint, paused in self._setpoints(output):
            # Whole 0.1 A, rounded down: never above the allocation, and a setpoint that only jitters in
            # the third decimal is not rewritten every cycle.
            wanted["current_limit_setpoint_a"] = 0.0 if paused else math.floor(setpoint.current_a * 10 + 1e-6) / 10
        return wanted


CHARX_MAX_CONNECTORS = (0xFFFF - 301) // CONNECTOR_STRIDE
"""Connector n answers at n × 1000 + offset, so 65 fit the address space. The group's real controller
count (holding register 114 in evcc's phoenix-charx.go) is not in the map: a connector beyond it is
refused by the device at the first read (exception 2 naming the register)."""

CHARX_FAST = (
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_w",
    "state_raw",
)
"""Voltages share the block x232..x245 with the currents and power, so they come at no extra request."""


class CharxDevice(_ChargerDevice):
    """Phoenix Contact CHARX: connectors 1..n of one charge-controller group, all on one unit id."""

    def __init__(self, name: str, endpoint: Endpoint, connectors: Sequence[ConnectorConfig]) -> None:
        numbers = range(1, len(connectors) + 1)
        maps = [prefixed(charx_map(n), connector_prefix(n)) for n in numbers]
        fast = [connector_prefix(n) + r for n in numbers for r in CHARX_FAST]
        super().__init__(name, endpoint, maps, connectors, charx_map(1).behaviour, fast)

    def charger_traits(self) -> Mapping[str, ChargerTraits]:
        behaviour = self.behaviour
        traits = ChargerTraits(
            min_current_a=behaviour.min_current_a,
            zero_pauses=behaviour.zero_pauses,
            pause_power_w=None,
            phase_switching=behaviour.phase_switching,
            fallback_current_a=None,  # none documented: the controller assumes the site file's value
            watchdog_s=behaviour.watchdog_s,
        )
        return dict.fromkeys((c.id for c in self.connectors), traits)

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        readings: dict[str, ConnectorReading] = {}
        for number, conn in enumerate(self.connectors, start=1):
            p = connector_prefix(number)
            try:
                letter = charx_state_letter(self._raw(p + "state_raw"))
            except ValueError as err:
                raise self._state_error(p + "state_raw", err) from None
            n = self.number
            readings[conn.id] = ConnectorReading(
                letter,
                (n(p + "current_l1_a"), n(p + "current_l2_a"), n(p + "current_l3_a")),
                n(p + "power_w"),
                self.energy.session_wh(conn.id, letter, n(p + "energy_wh")),
                None,
                now,
            )
        # All or nothing: a bad state on connector 2 must not leave connector 1 half updated.
        snapshot.connectors.update(readings)

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        wanted: dict[str, Value] = {}
        minimum_a = self.behaviour.min_current_a or 0.0
        for number, setpoint, paused in self._setpoints(output):
            # x301 takes whole amperes: round down, never above the allocation; a value that would land
            # below the charger's minimum pauses rather than being raised to it.
            amps = 0 if paused else math.floor(setpoint.current_a + 1e-6)
            wanted[connector_prefix(number) + "max_current_setpoint_a"] = amps if amps >= minimum_a else 0
        return wanted


ALPITRONIC_FAST = ("state_code", "dc_voltage_v", "dc_current_a", "power_w")
"""Input registers base+0..base+5: one request per connector per cycle."""


class AlpitronicDevice(_ChargerDevice):
    """Alpitronic hypercharger (DC): connectors 1-4 on unit 1, a power limit per connector.

    The controller thinks in per-phase AC currents: a DC connector's reading carries the AC-equivalent
    per-phase current ``power_w / (3 × voltage_v)`` on all three phases (what the plaza's feed carries),
    never the DC current, and its setpoint's ``power_w`` is what is written.
    """

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        connectors: Sequence[ConnectorConfig],
        *,
        voltage_v: float,
        fallback_power_w: float | None = None,
    ) -> None:
        numbers = range(1, len(connectors) + 1)
        maps = [prefixed(alpitronic_map(n), connector_prefix(n)) for n in numbers]
        fast = [connector_prefix(n) + r for n in numbers for r in ALPITRONIC_FAST]
        super().__init__(name, endpoint, maps, connectors, alpitronic_map(1).behaviour, fast)
        self.voltage_v = voltage_v
        self.fallback_power_w = fallback_power_w
        pause_power_w = self.behaviour.pause_power_w
        if pause_power_w is None or pause_power_w <= 0:
            # The map says 0 W aborts: without a pause power this adapter could not pause at all.
            raise ValueError("the Alpitronic map must give a positive pause_power_w")
        self.pause_power_w = pause_power_w

    def charger_traits(self) -> Mapping[str, ChargerTraits]:
        behaviour = self.behaviour
        traits: dict[str, ChargerTraits] = {}
        for conn in self.connectors:
            # Undocumented, so unless the site file says what the station was set to: its full power.
            fallback_w = self.fallback_power_w
            if fallback_w is None:
                fallback_w = (conn.max_power_kw or 0.0) * 1000.0
            traits[conn.id] = ChargerTraits(
                min_current_a=None,
                zero_pauses=behaviour.zero_pauses,
                pause_power_w=self.pause_power_w,
                phase_switching=behaviour.phase_switching,
                fallback_current_a=fallback_w / (3 * self.voltage_v),
                watchdog_s=behaviour.watchdog_s,
            )
        return traits

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        readings: dict[str, ConnectorReading] = {}
        for number, conn in enumerate(self.connectors, start=1):
            p = connector_prefix(number)
            code = self._raw(p + "state_code")
            letter = ALPITRONIC_STATE_LETTERS.get(code)
            if letter is None:
                raise self._state_error(p + "state_code", ValueError(f"state {code} is not documented"))
            n = self.number
            power_w = n(p + "power_w")
            # OpenEMS: the power register read 0 before firmware 1.7.2. DC voltage × current stands in
            # when it is higher — counting more draw than there is is the safe error.
            dc_power_w = n(p + "dc_voltage_v") * n(p + "dc_current_a")
            if math.isfinite(dc_power_w) and not dc_power_w <= power_w:
                power_w = dc_power_w
            per_phase_a = power_w / (3 * self.voltage_v)
            readings[conn.id] = ConnectorReading(
                letter,
                (per_phase_a, per_phase_a, per_phase_a),
                power_w,
                self.energy.session_wh(conn.id, letter, n(p + "total_energy_wh")),
                None,
                now,
            )
        snapshot.connectors.update(readings)

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        wanted: dict[str, Value] = {}
        pause_w = self.pause_power_w
        interlocked = output.mode is not SiteMode.NORMAL
        for number, setpoint, paused in self._setpoints(output):
            if interlocked:
                # Fire or emergency stop: no energy at all, not the 1.5 kW of a pause. Ending the
                # sessions is the price; the interlock wins over session continuity.
                watts = 0.0
            elif paused:
                watts = pause_w
            else:
                watts = setpoint.power_w if setpoint.power_w is not None else setpoint.current_a * 3 * self.voltage_v
                # Whole watts, rounded down; never below the pause power: anything lower risks the abort
                # at 0 W, and the station holds a paused session at the pause power anyway.
                watts = max(pause_w, float(math.floor(watts + 1e-6)))
            wanted[connector_prefix(number) + "max_power_w"] = int(watts)
        return wanted
