"""Cycle-table harness: feed the control program inputs cycle by cycle on a fake clock, read setpoints.

A test builds a site from YAML, then calls ``cycle(...)`` with the readings of that cycle (anything
not given keeps its previous value and is re-stamped fresh, like a live driver) and asserts on the
returned setpoints. ``silence(...)`` stops re-stamping a device so its readings age into STALE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from controller.config import parse_config
from controller.image import (
    BatteryReading,
    ConnectorReading,
    ContactReading,
    DsoReading,
    InputSnapshot,
    LatchReset,
    MeterReading,
    ProcessImage,
    SessionRequest,
    freeze,
)
from controller.program import ControlProgram, CycleOutput
from controller.site import Site, compile_site

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass(slots=True)
class Ev:
    state: str = "C2"
    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    energy_wh: float = 0.0
    id_token: str | None = None


@dataclass(slots=True)
class Plaza:
    site: Site
    program: ControlProgram
    snapshot: InputSnapshot = field(default_factory=InputSnapshot)
    t: float = T0
    silent: set[str] = field(default_factory=set)
    last: CycleOutput | None = None
    image: ProcessImage | None = None

    @classmethod
    def from_yaml(cls, text: str) -> Plaza:
        site = compile_site(parse_config(text).config)
        plaza = cls(site, ControlProgram(site))
        for contact in (site.config.fire_panel, site.config.emergency_stop):
            if contact is not None:
                plaza.snapshot.contacts[contact.id] = ContactReading(True, plaza.t)
        return plaza

    def silence(self, *ids: str) -> None:
        self.silent.update(ids)

    def wake(self, *ids: str) -> None:
        self.silent.difference_update(ids)

    def cycle(
        self,
        *,
        dt: float | None = None,
        meters: dict[str, tuple[float, float, float]] | None = None,
        evs: dict[str, Ev | None] | None = None,
        contacts: dict[str, bool] | None = None,
        battery: dict[str, tuple[float, float]] | None = None,
        dso_pct: float | None = None,
        requests: dict[str, tuple[float | None, float | None]] | None = None,
        resets: list[tuple[str, str]] | None = None,
    ) -> dict[str, float]:
        """Advance the clock, apply the given readings, run one cycle; setpoints (A) by connector id."""
        self.t += self.site.period_s if dt is None else dt
        t = self.t
        snap = self.snapshot
        for meter_id, current in (meters or {}).items():
            snap.meters[meter_id] = MeterReading(current, sum(current) * self.site.voltage_v, t)
        for conn_id, ev in (evs or {}).items():
            if ev is None:
                snap.connectors[conn_id] = ConnectorReading("A1", (0.0, 0.0, 0.0), 0.0, 0.0, None, t)
            else:
                power_w = sum(ev.current_a) * self.site.voltage_v
                snap.connectors[conn_id] = ConnectorReading(
                    ev.state, ev.current_a, power_w, ev.energy_wh, ev.id_token, t
                )
        for contact_id, closed in (contacts or {}).items():
            snap.contacts[contact_id] = ContactReading(closed, t)
        for battery_id, (soc_pct, power_w) in (battery or {}).items():
            snap.batteries[battery_id] = BatteryReading(soc_pct, power_w, t)
        if dso_pct is not None:
            snap.dso = DsoReading(dso_pct, t)
        for conn_id, (departure_ts, energy_wh) in (requests or {}).items():
            snap.requests[conn_id] = SessionRequest(departure_ts, energy_wh, t)
        for latch, operator in resets or []:
            snap.resets.append(LatchReset(latch, operator, t))
        self._restamp(t)
        image = freeze(
            snap,
            t,
            self.site.stale_after_s,
            tuple(c.id for c in self.site.connectors),
            tuple(b.id for b in self.site.batteries),
        )
        self.image = image
        self.last = self.program.step(image)
        return {s.connector: s.current_a for s in self.last.setpoints}

    def _restamp(self, t: float) -> None:
        """Live devices answer every cycle with their last values; silent ones do not."""
        snap = self.snapshot
        snap.meters = {k: (v if k in self.silent else _at(v, t)) for k, v in snap.meters.items()}
        snap.connectors = {k: (v if k in self.silent else _at(v, t)) for k, v in snap.connectors.items()}
        snap.contacts = {k: (v if k in self.silent else _at(v, t)) for k, v in snap.contacts.items()}
        snap.batteries = {k: (v if k in self.silent else _at(v, t)) for k, v in snap.batteries.items()}
        if snap.dso is not None and "dso" not in self.silent:
            snap.dso = _at(snap.dso, t)


R = TypeVar("R", MeterReading, ConnectorReading, ContactReading, BatteryReading, DsoReading)


def _at(reading: R, t: float) -> R:
    return replace(reading, ts=t)
