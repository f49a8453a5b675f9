"""Energy meters (Eastron SDM630, Janitza UMG 604): per-phase currents and total power at a node."""

from __future__ import annotations

from controller.image import InputSnapshot, MeterReading
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.registers import RegisterMap

FAST = ("current_l1_a", "current_l2_a", "current_l3_a", "power_w")


class MeterDevice(ModbusDevice):
    """A three-phase meter feeding one meter id of the site."""

    def __init__(self, name: str, endpoint: Endpoint, register_map: RegisterMap, meter_id: str) -> None:
        super().__init__(name, endpoint, [register_map], fast=FAST)
        self.meter_id = meter_id

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        n = self.number
        current_a = (n("current_l1_a"), n("current_l2_a"), n("current_l3_a"))
        snapshot.meters[self.meter_id] = MeterReading(current_a, n("power_w"), now)

    def unpublish(self, snapshot: InputSnapshot) -> None:
        snapshot.meters.pop(self.meter_id, None)
