"""Digital I/O module: the fire panel's (and emergency stop's) NC contacts and the DSO relay stage inputs.

Contacts are published as read; the interlock step judges them (open, broken wire, no reading = alarm).
A DSO stage that a missing input could decide is not published, so the limit step applies the site's
fail-safe stage. The module is polled every cycle and its requests time out well inside the period, so
a silent module is noticed — and the fire latch trips — within one cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.config import DsoRelayConfig
from controller.image import ContactReading, DsoReading, InputSnapshot
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.maps.digital_io import (
    DSO_RELAY_0_PCT,
    DSO_RELAY_30_PCT,
    DSO_RELAY_60_PCT,
    IoPoint,
    dso_stage_pct,
    io_module_map,
)
from drivers.modbus.registers import Table


def _point_name(contact_id: str) -> str:
    return "contact_" + "".join(ch if ch.isalnum() else "_" for ch in contact_id.lower())


class IoModuleDevice(ModbusDevice):
    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        contacts: Mapping[str, int],
        dso: DsoRelayConfig | None,
        table: Table = Table.DISCRETE,
    ) -> None:
        points = [
            IoPoint(name=_point_name(cid), address=address, meaning=f"NC contact {cid}")
            for cid, address in contacts.items()
        ]
        if dso is not None:
            points += [
                IoPoint(name=DSO_RELAY_0_PCT, address=dso.zero_pct, meaning="DSO relay 0 %"),
                IoPoint(name=DSO_RELAY_30_PCT, address=dso.thirty_pct, meaning="DSO relay 30 %"),
                IoPoint(name=DSO_RELAY_60_PCT, address=dso.sixty_pct, meaning="DSO relay 60 %"),
            ]
        register_map = io_module_map(
            device=name, points=points, unit_id=endpoint.unit_id if endpoint.unit_id is not None else 1, table=table
        )
        super().__init__(name, endpoint, [register_map])
        self.contacts = {cid: _point_name(cid) for cid in contacts}
        self.dso = dso

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        for contact_id, point in self.contacts.items():
            snapshot.contacts[contact_id] = ContactReading(bool(self.values.get(point)), now)
        if self.dso is None:
            return
        stage = dso_stage_pct(
            zero_pct=_bit(self.values.get(DSO_RELAY_0_PCT)),
            thirty_pct=_bit(self.values.get(DSO_RELAY_30_PCT)),
            sixty_pct=_bit(self.values.get(DSO_RELAY_60_PCT)),
            restricted_level=self.dso.restricted_level,
        )
        snapshot.dso = DsoReading(stage, now) if stage is not None else None

    def unpublish(self, snapshot: InputSnapshot) -> None:
        for contact_id in self.contacts:
            snapshot.contacts.pop(contact_id, None)
        if self.dso is not None:
            snapshot.dso = None


def _bit(value: object) -> bool | None:
    return value if isinstance(value, bool) else None
