"""Alfen NG9xx (one or two sockets) under "Active load balancing" over Modbus TCP.

Each socket gets its max-current setpoint (1210, float32 A, one FC16) from the cycle's output; 0 A
pauses. The setpoint only lives for the charger's validity time, so it is rewritten every third of it
even when unchanged; if the controller dies the socket falls back to its own safe current (1212), which
the driver reads back and checks against what the site file told the controller to assume. When the
charger reports that it no longer uses the setpoint (1214 = 0, e.g. after a reboot or an expired
validity) the driver says so once and rewrites it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from controller.config import ConnectorConfig
from controller.image import ConnectorReading, InputSnapshot
from controller.program import CycleOutput
from drivers.modbus.chargers import SessionEnergy, prefixed
from drivers.modbus.device import ChargerTraits, Endpoint, ModbusDevice
from drivers.modbus.maps.alfen_ng9xx import SOCKET_BEHAVIOUR, STATION_MAP, socket_map
from drivers.modbus.registers import Value

log = logging.getLogger(__name__)

FAST = (
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_w",
    "mode3_state",
    "applied_max_current_a",
    "validity_remaining_s",
    "setpoint_in_use",
)


class AlfenDevice(ModbusDevice):
    slow_every_s = 10.0

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        connectors: Sequence[ConnectorConfig],
        *,
        validity_s: float,
        safe_current_a: float | None = None,
    ) -> None:
        maps = [prefixed(socket_map(i + 1), f"s{i + 1}_") for i in range(len(connectors))]
        fast = [f"s{i + 1}_{n}" for i in range(len(connectors)) for n in FAST]
        super().__init__(name, endpoint, [*maps, STATION_MAP], fast=fast)
        self.connectors = tuple(connectors)
        self.validity_s = validity_s
        self.safe_current_a = safe_current_a
        self.energy = SessionEnergy()
        self._fallback_reported: set[str] = set()
        self.fallback_active: dict[str, bool] = {c.id: False for c in connectors}

    def charger_traits(self) -> Mapping[str, ChargerTraits]:
        behaviour = SOCKET_BEHAVIOUR
        traits = ChargerTraits(
            min_current_a=behaviour.min_current_a,
            zero_pauses=behaviour.zero_pauses,
            pause_power_w=None,
            phase_switching=behaviour.phase_switching,
            # Set on the charger; the site file may state it (checked at start-up), 1212 reads it back.
            fallback_current_a=self.safe_current_a,
            watchdog_s=self.validity_s,
        )
        return dict.fromkeys((c.id for c in self.connectors), traits)

    def on_connect(self) -> None:
        self._fallback_reported.clear()

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        for i, conn in enumerate(self.connectors):
            p = f"s{i + 1}_"
            n = self.number
            state = self.values.get(p + "mode3_state")
            letter = state if isinstance(state, str) and state else "F"
            snapshot.connectors[conn.id] = ConnectorReading(
                letter,
                (n(p + "current_l1_a"), n(p + "current_l2_a"), n(p + "current_l3_a")),
                n(p + "power_w"),
                self.energy.session_wh(conn.id, letter, n(p + "energy_delivered_wh")),
                None,
                now,
            )
            self._check_fallback(conn, p)

    def _check_fallback(self, conn: ConnectorConfig, p: str) -> None:
        safe_a = self.number(p + "safe_current_a")
        if math.isfinite(safe_a) and safe_a > conn.fallback_current_a and conn.id not in self._fallback_reported:
            log.error(
                "%s socket %s: the charger's safe current is %.1f A but the site file assumes %.1f A "
                "(connectors.fallback_current_a); a silent charger would be underestimated — fix one of them",
                self.name,
                p[1:-1],
                safe_a,
                conn.fallback_current_a,
            )
            self._fallback_reported.add(conn.id)
        in_use = self.values.get(p + "setpoint_in_use")
        falling_back = in_use == 0
        if falling_back and not self.fallback_active[conn.id]:
            log.warning(
                "%s socket %s (%s) is not using the EMS setpoint: it applies its safe current %.1f A "
                "(validity expired or charger restarted)",
                self.name,
                p[1:-1],
                conn.id,
                safe_a,
            )
        elif not falling_back and self.fallback_active[conn.id] and in_use == 1:
            log.info("%s socket %s (%s) follows the EMS setpoint again", self.name, p[1:-1], conn.id)
        self.fallback_active[conn.id] = falling_back

    def unpublish(self, snapshot: InputSnapshot) -> None:
        for conn in self.connectors:
            snapshot.connectors.pop(conn.id, None)

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        wanted: dict[str, Value] = {}
        index = {c.id: i for i, c in enumerate(self.connectors)}
        for setpoint in output.setpoints:
            i = index.get(setpoint.connector)
            if i is not None:
                wanted[f"s{i + 1}_max_current_setpoint_a"] = 0.0 if setpoint.paused else round(setpoint.current_a, 1)
        return wanted

    def refresh_s(self, name: str) -> float | None:
        return self.validity_s / 3.0
