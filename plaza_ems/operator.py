"""The operator desk: maintenance commands carried out on the scan cycle's side, and the state they leave.

OPC UA method calls arrive on the OPC UA server's thread; ``submit`` queues them and hands back a
future. Before each cycle, ``refresh`` (on the scan loop's thread) takes the queued commands: a latch
reset goes into the process image like any other reset and is answered after the cycle has judged it
(``after_cycle``), so "reset refused: contact still open" comes from the interlock logic itself; an
acknowledgement goes to the alarm book; availability and maintenance mode change what the next image
carries. Connectors taken out of service and nodes in maintenance are kept in ``operator.json`` in the
state directory, so a restart does not put them back in service behind the engineer's back. Every
command is logged with its user and its result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from controller.alarms import AlarmBook, AlarmError, AlarmTransition
from controller.image import InputSnapshot, LatchReset
from controller.interlocks import EMERGENCY_STOP, FIRE
from controller.operator import CommandResult, OperatorCommand
from controller.program import CycleOutput
from controller.site import Site
from drivers.ocpp201.csms import Csms
from plaza_ems.statestore import write_json_atomically

log = logging.getLogger("plaza_ems.operator")

STATE_FILE = "operator.json"


class OperatorDesk:
    def __init__(self, site: Site, state_dir: Path, alarms: AlarmBook, csms: Csms | None = None) -> None:
        self.site = site
        self.alarms = alarms
        self.csms = csms
        self.path = state_dir / STATE_FILE
        self._queue: queue.SimpleQueue[tuple[OperatorCommand, Future[CommandResult]]] = queue.SimpleQueue()
        self._pending_resets: list[tuple[OperatorCommand, Future[CommandResult]]] = []
        self.transitions: list[AlarmTransition] = []
        """Acknowledgements since the last ``take_transitions``, for the alarm events."""
        self.maintenance: frozenset[str] = frozenset()
        self.unavailable: frozenset[str] = frozenset()
        self._latches = {
            name
            for name, fitted in ((FIRE, site.config.fire_panel), (EMERGENCY_STOP, site.config.emergency_stop))
            if fitted is not None
        }
        self._tasks: set[asyncio.Task[Any]] = set()
        self._load()

    # -- any thread ------------------------------------------------------------------------------

    def submit(self, command: OperatorCommand) -> Future[CommandResult]:
        future: Future[CommandResult] = Future()
        self._queue.put((command, future))
        return future

    # -- the scan loop's thread ------------------------------------------------------------------

    def refresh(self, snapshot: InputSnapshot, now: float) -> None:
        while True:
            try:
                command, future = self._queue.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                self._carry_out(command, future, snapshot, now)
        snapshot.maintenance = self.maintenance
        snapshot.unavailable = self.unavailable

    def after_cycle(self, output: CycleOutput) -> None:
        """Answer the latch resets this cycle judged."""
        if not self._pending_resets:
            return
        for command, future in self._pending_resets:
            event = next((e for e in output.events if e.latch == command.target and e.kind.startswith("reset")), None)
            if event is None:
                result = CommandResult("Good", f"{command.target} was not latched: nothing to reset")
            elif event.kind == "reset":
                result = CommandResult("Good", f"{command.target} latch reset")
            else:
                result = CommandResult("BadInvalidState", f"{command.target} reset refused: {event.detail}")
            self._answer(command, future, result)
        self._pending_resets.clear()

    def take_transitions(self) -> list[AlarmTransition]:
        taken, self.transitions = self.transitions, []
        return taken

    def _carry_out(
        self, command: OperatorCommand, future: Future[CommandResult], snapshot: InputSnapshot, now: float
    ) -> None:
        site = self.site
        if command.kind == "reset_latch":
            if command.target not in self._latches:
                self._answer(command, future, CommandResult("BadInvalidArgument", f"no {command.target} input fitted"))
                return
            snapshot.resets.append(LatchReset(command.target, command.user, now))
            self._pending_resets.append((command, future))
        elif command.kind == "acknowledge":
            try:
                transition = self.alarms.acknowledge(command.target, command.user, command.comment, now)
            except AlarmError as err:
                self._answer(command, future, CommandResult(err.code, str(err)))
                return
            self.transitions.append(transition)
            self._answer(command, future, CommandResult("Good", f"{command.target} acknowledged"))
        elif command.kind == "availability":
            if command.target not in site.connector_index:
                self._answer(command, future, CommandResult("BadInvalidArgument", f"no connector {command.target!r}"))
                return
            if command.enabled:
                self.unavailable = self.unavailable - {command.target}
            else:
                self.unavailable = self.unavailable | {command.target}
            self._save()
            self._tell_station(command.target, command.enabled)
            word = "available" if command.enabled else "out of service"
            self._answer(command, future, CommandResult("Good", f"{command.target} {word}"))
        else:
            if command.target not in site.node_index:
                self._answer(command, future, CommandResult("BadInvalidArgument", f"no tree node {command.target!r}"))
                return
            if command.enabled:
                self.maintenance = self.maintenance | {command.target}
            else:
                self.maintenance = self.maintenance - {command.target}
            self._save()
            word = "in maintenance: everything below is held at 0" if command.enabled else "back in operation"
            self._answer(command, future, CommandResult("Good", f"{command.target} {word}"))

    def _answer(self, command: OperatorCommand, future: Future[CommandResult], result: CommandResult) -> None:
        level = logging.INFO if result.ok else logging.WARNING
        log.log(
            level,
            "operator %s: %s %s -> %s: %s",
            command.user,
            command.kind,
            command.target,
            result.status,
            result.message,
        )
        future.set_result(result)

    def _tell_station(self, connector_id: str, operative: bool) -> None:
        """An OCPP station also hears it (ChangeAvailability), so its display says so; the setpoint 0 is what counts."""
        if self.csms is None or connector_id not in self.csms.by_connector:
            return
        station, evse = self.csms.by_connector[connector_id]
        task = asyncio.get_running_loop().create_task(
            self.csms.change_availability(station.spec.id, evse.spec.evse_id, operative)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            maintenance = [str(n) for n in document.get("maintenance", [])]
            unavailable = [str(c) for c in document.get("unavailable", [])]
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.error(
                "%s cannot be read (%s): every connector starts available, no node in maintenance", self.path, err
            )
            return
        # Items no longer in the site file are dropped, with a word in the log.
        dropped = [n for n in maintenance if n not in self.site.node_index] + [
            c for c in unavailable if c not in self.site.connector_index
        ]
        if dropped:
            log.warning("%s names items the site no longer has: %s", self.path, ", ".join(dropped))
        self.maintenance = frozenset(n for n in maintenance if n in self.site.node_index)
        self.unavailable = frozenset(c for c in unavailable if c in self.site.connector_index)
        if self.maintenance or self.unavailable:
            log.warning(
                "kept from before the restart: in maintenance %s; out of service %s",
                sorted(self.maintenance) or "none",
                sorted(self.unavailable) or "none",
            )

    def _save(self) -> None:
        document = {"maintenance": sorted(self.maintenance), "unavailable": sorted(self.unavailable)}
        write_json_atomically(self.path, document, "operator state")
