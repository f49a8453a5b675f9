"""What a restarted controller needs to resume safely, kept in the state directory across a crash.

The fire and emergency-stop latches (a latch must survive a ``kill -9``: a restart is not a reset),
the open sessions (their start, badge, departure and energy targets) and each connector's last setpoint
and pause time (so a charger that does not answer after the restart is still counted at what it was
told, and a paused session keeps its resume delay). The file is JSON, written atomically (a temporary
file, fsync, rename), so a crash leaves the old state or the new one, never half of each. It is written
when any of that changes and otherwise every ``every_s``; the devices' own watchdogs cover the moments
between (ARCHITECTURE: fail-safe rules).

A file for another site, of another version, or unreadable is reported and ignored: the controller then
starts as new (latches clear only if the contacts are healthy — a fire alarm still open trips again in
the first cycle).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.intent import Session
from controller.interlocks import Latch
from controller.program import BatteryMemory, ConnectorMemory, ProgramState
from controller.site import Site

log = logging.getLogger(__name__)

STATE_FILE = "controller-state.json"
VERSION = 1


def write_json_atomically(path: Path, document: Any, what: str) -> bool:
    """JSON to ``path`` via a temporary file, fsync and rename: a crash leaves the old file or the new one.

    False (and logged) when it cannot be written.
    """
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(document, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        log.error("cannot keep %s in %s: %s", what, path, err.strerror or err)
        return False
    return True


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class StateStore:
    """Saves and restores a site's ``ProgramState`` in ``state_dir``."""

    def __init__(self, state_dir: Path, site: Site, every_s: float = 10.0) -> None:
        self.path = state_dir / STATE_FILE
        self.site = site
        self.every_s = every_s
        self._signature: tuple[Any, ...] | None = None
        self._saved_ts = -math.inf
        self.saves = 0

    # -- saving -----------------------------------------------------------------------------------

    def maybe_save(self, state: ProgramState, now_ts: float) -> None:
        """Save when latches or sessions changed, else every ``every_s``."""
        signature = self._signature_of(state)
        if signature != self._signature or now_ts - self._saved_ts >= self.every_s:
            self.save(state, now_ts)
            self._signature = signature

    def save(self, state: ProgramState, now_ts: float) -> None:
        document = {
            "version": VERSION,
            "site": self.site.id,
            "saved_ts": now_ts,
            "latches": {
                name: {"active": latch.active, "since_ts": latch.since_ts, "cause": latch.cause}
                for name, latch in state.latches.items()
            },
            "connectors": {
                connector.id: _connector_record(memory)
                for connector, memory in zip(self.site.connectors, state.connectors, strict=True)
            },
            "batteries": {
                battery.id: {"setpoint_w": memory.setpoint_w}
                for battery, memory in zip(self.site.batteries, state.batteries, strict=True)
            },
        }
        # Not fatal when it fails: the controller keeps protecting the site; a restart would start as new.
        if write_json_atomically(self.path, document, "the controller state"):
            self._saved_ts = now_ts
            self.saves += 1

    def _signature_of(self, state: ProgramState) -> tuple[Any, ...]:
        latches = tuple((name, latch.active) for name, latch in sorted(state.latches.items()))
        sessions = tuple(
            (m.session.started_ts, m.session.id_token, m.session.departure_ts, m.session.energy_wh)
            if m.session is not None
            else None
            for m in state.connectors
        )
        return latches, sessions

    # -- restoring --------------------------------------------------------------------------------

    def load(self) -> ProgramState | None:
        """The saved state for this site, or None (no file, or one that cannot be used: logged)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            log.error("cannot read the saved controller state %s: %s; starting as new", self.path, err)
            return None
        try:
            document = json.loads(text)
        except ValueError as err:
            log.error("saved controller state %s is not JSON (%s); starting as new", self.path, err)
            return None
        if not isinstance(document, dict) or document.get("version") != VERSION:
            log.error("saved controller state %s has another version; starting as new", self.path)
            return None
        if document.get("site") != self.site.id:
            log.error(
                "saved controller state %s is for site %r, not %r; starting as new",
                self.path,
                document.get("site"),
                self.site.id,
            )
            return None
        state = ProgramState(
            latches=_latches(document.get("latches")),
            connectors=[_connector_memory(document.get("connectors"), c.id) for c in self.site.connectors],
            batteries=[_battery_memory(document.get("batteries"), b.id) for b in self.site.batteries],
        )
        active = sorted(name for name, latch in state.latches.items() if latch.active)
        sessions = sum(1 for m in state.connectors if m.session is not None)
        log.warning(
            "restored the controller state saved at %s: latches active: %s; %d open session(s)",
            document.get("saved_ts"),
            ", ".join(active) or "none",
            sessions,
        )
        return state


def _connector_record(memory: ConnectorMemory) -> dict[str, Any]:
    session = memory.session
    return {
        "setpoint_a": memory.setpoint_a,
        "paused_at_ts": memory.paused_at_ts if math.isfinite(memory.paused_at_ts) else None,
        "session": None
        if session is None
        else {
            "started_ts": session.started_ts,
            "id_token": session.id_token,
            "departure_ts": session.departure_ts,
            "energy_wh": session.energy_wh,
        },
    }


def _latches(raw: Any) -> dict[str, Latch]:
    latches: dict[str, Latch] = {}
    if not isinstance(raw, Mapping):
        return latches
    for name, item in raw.items():
        if isinstance(name, str) and isinstance(item, Mapping) and isinstance(item.get("active"), bool):
            cause = item.get("cause")
            latches[name] = Latch(
                name, item["active"], _finite_or_none(item.get("since_ts")), cause if isinstance(cause, str) else ""
            )
    return latches


def _connector_memory(raw: Any, connector_id: str) -> ConnectorMemory:
    item = raw.get(connector_id) if isinstance(raw, Mapping) else None
    memory = ConnectorMemory()
    if not isinstance(item, Mapping):
        return memory
    setpoint_a = _finite_or_none(item.get("setpoint_a"))
    memory.setpoint_a = max(0.0, setpoint_a) if setpoint_a is not None else 0.0
    paused_at = _finite_or_none(item.get("paused_at_ts"))
    memory.paused_at_ts = paused_at if paused_at is not None else -math.inf
    session = item.get("session")
    if isinstance(session, Mapping) and (started := _finite_or_none(session.get("started_ts"))) is not None:
        token = session.get("id_token")
        memory.session = Session(
            started_ts=started,
            id_token=token if isinstance(token, str) else None,
            departure_ts=_finite_or_none(session.get("departure_ts")),
            energy_wh=_finite_or_none(session.get("energy_wh")),
        )
    return memory


def _battery_memory(raw: Any, battery_id: str) -> BatteryMemory:
    item = raw.get(battery_id) if isinstance(raw, Mapping) else None
    setpoint_w = _finite_or_none(item.get("setpoint_w")) if isinstance(item, Mapping) else None
    return BatteryMemory(setpoint_w=setpoint_w or 0.0)
