"""What every simulated device is built from: its site-file entry, the plant, the plaza state, the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from controller.config import DeviceConfig, SiteConfig
from drivers.modbus.registers import RegisterMap
from hil.plant import Plant


class PlazaState(Protocol):
    """What the simulated I/O module mirrors: contact positions (True = closed) and the DSO stage."""

    contacts: dict[str, bool]
    dso_pct: float


@dataclass(frozen=True, slots=True)
class SimContext:
    site: SiteConfig
    device: DeviceConfig
    plant: Plant
    state: PlazaState
    now: Callable[[], float]

    def unit(self, register_map: RegisterMap) -> RegisterMap:
        """The map answering on the configured unit id (registers with their own unit id keep it)."""
        if self.device.unit_id is None:
            return register_map
        return replace(register_map, behaviour=replace(register_map.behaviour, default_unit_id=self.device.unit_id))
