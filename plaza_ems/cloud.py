"""The scan cycle's side of the cloud link: plans and commands in, acks, telemetry, sessions and alarms out.

Before each freeze (``refresh``) the accepted plans and commands the link has queued are taken: a plan
replaces the one in force (one whose window has already ended is acked as rejected), a departure
command becomes the session's request (intent, like an ISO 15118 or app request). The plan in force
becomes the cycle's targets (``InputSnapshot.targets``) while it is valid *and* the cloud is alive: when
the link has been down for ``plan_stale_after_s`` the plan is dropped and the local fallback schedule
decides (SPEC F19, R4). Commands: a departure or priority command becomes the session's request (intent)
until the session ends (a priority until its ``until``); a DSO limit command replaces the one before for
its node and binds until its end, capacity frames replace those they overlap — both as limits of step 3,
whatever the link does meanwhile. Commands in force are kept in the state directory for a restart.

After each cycle (``after_cycle``) a newly accepted plan is acked with what local protection clamped
(``CycleOutput.clamped``: the connector, what the plan asked, what it got — SPEC R1); session starts and
stops and interlock/overdraw events go to the outbox with stable event ids (a session's id is its
connector and start time, so an event replayed after a restart is recognised as the same one); and
telemetry goes out every ``telemetry_interval_s``.

The plan in force is kept in the state directory (``cloud-plan.json``, written atomically when a plan is
accepted), so a restarted controller goes on with it while it is valid — and, as any plan, drops it once
the link has been down for ``plan_stale_after_s``.

For the optimiser a site snapshot (structure and state: sessions, SoC, uncontrolled load, the billing
period's peak import, remote limits, prices) goes out every ``snapshot_interval_s`` while connected, and
sooner — at most once per ``snapshot_debounce_s`` — after a session starts or stops or a departure or
priority command changes what a session wants. It is published at QoS 1 but never kept in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from controller.config import SiteConfig
from controller.image import InputSnapshot, ProcessImage, Quality, SessionRequest
from controller.intent import Session
from controller.limits import RemoteCapacityBlock, RemoteDsoLimit, RemoteLimits
from controller.program import ControlProgram, CycleOutput
from controller.site import Site
from controller.targets import PriceCurve, Targets
from drivers.mqtt.config import MqttConfig
from drivers.mqtt.link import CloudLink, Received
from drivers.mqtt.messages import (
    Clamp,
    DepartureCommand,
    DsoLimitCommand,
    Plan,
    PricesCommand,
    PriorityCommand,
    SiteIds,
    SnapshotSession,
    alarm_message,
    plan_targets,
    session_event,
    site_structure,
    snapshot_message,
    structure_hash,
)
from drivers.mqtt.messages import telemetry_message as build_telemetry
from drivers.mqtt.outbox import Outbox
from plaza_ems.statestore import write_json_atomically

log = logging.getLogger("plaza_ems.cloud")

ALARM_SEVERITY = {"tripped": "critical", "overdraw": "warning"}
OUTBOX_FILE = "mqtt-outbox.sqlite"
PLAN_FILE = "cloud-plan.json"
PRICES_FILE = "cloud-prices.json"
SESSION_UPDATE_S = 300.0
"""A running session's energy and targets go to ``sessions`` this often (between its start and stop)."""
COMMANDS_FILE = "cloud-commands.json"
PEAK_FILE = "billing-peak.json"
PEAK_WINDOW_S = 900.0
"""The capacity tariff's measuring period: the highest 15-min average import of the month (as Dutch DSOs bill it)."""


class CloudBridge:
    """Between one site's control program and its ``CloudLink``."""

    def __init__(
        self, config: MqttConfig, site_config: SiteConfig, site: Site, program: ControlProgram, state_dir: Path
    ) -> None:
        self.config = config
        self.site = site
        self.program = program
        # The outbox lives with the rest of the controller's state unless the site file puts it elsewhere.
        path = Path(config.outbox.path) if "path" in config.outbox.model_fields_set else state_dir / OUTBOX_FILE
        outbox = Outbox(path, max_rows=config.outbox.max_rows, max_bytes=config.outbox.max_bytes)
        self.link = CloudLink(config, SiteIds.from_config(site_config), outbox=outbox)
        self._plan_path = state_dir / PLAN_FILE
        self.plan: Plan | None = load_plan(self._plan_path, site.id)
        self._prices_path = state_dir / PRICES_FILE
        self.prices: PriceCurve | None = load_prices(self._prices_path)
        """The last known day-ahead prices, for the local fallback schedule (kept across restarts)."""
        # Commands in force, kept across restarts: session requests (departure, energy, priority) by
        # connector until the session ends, DSO limits by node and capacity blocks until their end.
        self._commands_path = state_dir / COMMANDS_FILE
        self._requests: dict[str, SessionRequest] = {}
        self._priority_until: dict[str, float] = {}
        self._dso: dict[str | None, RemoteDsoLimit] = {}
        self._blocks: list[RemoteCapacityBlock] = []
        self._load_commands()
        self.targets: Targets | None = None
        self._plan_to_ack: Received | None = None
        self._down_since_ts: float | None = None
        self._next_telemetry_ts = 0.0
        self._sessions: list[Session | None] = [None] * len(site.connectors)
        self._energy_wh: list[float] = [0.0] * len(site.connectors)
        self._updated_ts: list[float] = [0.0] * len(site.connectors)
        self._structure = site_structure(site)
        self.structure_hash = structure_hash(site.id, self._structure)
        self._next_snapshot_ts = -math.inf
        self._last_snapshot_ts = -math.inf
        self._snapshot_reason: str | None = "connect"
        """Why the next snapshot is brought forward (None: it waits for its interval)."""
        self._was_connected = False
        self.snapshots_sent = 0
        self.peak = BillingPeak(state_dir / PEAK_FILE, site.timezone)

    async def run(self, stop: asyncio.Event) -> None:
        await self.link.run(stop)

    # -- before the freeze ------------------------------------------------------------------------

    def refresh(self, snapshot: InputSnapshot, now: float) -> None:
        while not self.link.queue.empty():
            self._take(self.link.queue.get_nowait(), snapshot, now)
        if self.link.connected:
            self._down_since_ts = None
        elif self._down_since_ts is None:
            self._down_since_ts = now
        stale = self._down_since_ts is not None and now - self._down_since_ts >= self.config.plan_stale_after_s
        if self.plan is not None and stale:
            log.warning(
                "cloud link down for %.0f s: plan %s no longer used, the local fallback schedule decides",
                now - (self._down_since_ts or now),
                self.plan.id,
            )
            self.plan = None
        self.targets = plan_targets(self.plan, now) if self.plan is not None else None
        if self.plan is not None and self.targets is None and now >= self.plan.valid_to_ts:
            log.info("plan %s has ended; the local fallback schedule decides", self.plan.id)
            self.plan = None
        snapshot.targets = self.targets
        snapshot.prices = self.prices
        self._expire(now)
        # Re-applied every cycle: another source (an OCPP station's ISO 15118 needs) may have replaced them.
        snapshot.requests.update(self._requests)
        snapshot.remote_limits = (
            RemoteLimits(tuple(self._dso.values()), tuple(self._blocks)) if self._dso or self._blocks else None
        )

    def _expire(self, now: float) -> None:
        """Drop the commands whose time is over."""
        changed = False
        for connector, until in list(self._priority_until.items()):
            if now >= until:
                del self._priority_until[connector]
                request = self._requests.get(connector)
                if request is not None:
                    self._requests[connector] = replace(request, priority=None)
                changed = True
        for node, command in list(self._dso.items()):
            if now >= command.valid_to_ts:
                del self._dso[node]
                changed = True
        blocks = [b for b in self._blocks if now < b.end_ts]
        if len(blocks) != len(self._blocks):
            self._blocks = blocks
            changed = True
        if changed:
            self._save_commands()

    def _save_commands(self) -> None:
        document = {
            "requests": {
                c: {"departure_ts": r.departure_ts, "energy_wh": r.energy_wh, "ts": r.ts, "priority": r.priority}
                for c, r in self._requests.items()
            },
            "priority_until": self._priority_until,
            "dso": [
                {
                    "node": d.node,
                    "limit_pct": d.limit_pct,
                    "valid_from_ts": d.valid_from_ts,
                    "valid_to_ts": d.valid_to_ts,
                }
                for d in self._dso.values()
            ],
            "capacity": [
                {"node": b.node, "start_ts": b.start_ts, "end_ts": b.end_ts, "limit_w": b.limit_w} for b in self._blocks
            ],
        }
        write_json_atomically(self._commands_path, document, "the commands in force")

    def _load_commands(self) -> None:
        try:
            document = json.loads(self._commands_path.read_text(encoding="utf-8"))
            requests = {
                str(c): SessionRequest(
                    _opt_float(r["departure_ts"]),
                    _opt_float(r["energy_wh"]),
                    float(r["ts"]),
                    None if r["priority"] is None else min(9, max(0, int(r["priority"]))),
                )
                for c, r in document["requests"].items()
            }
            until = {str(c): float(t) for c, t in document["priority_until"].items()}
            dso = {
                _opt_str(d["node"]): RemoteDsoLimit(
                    _opt_str(d["node"]), float(d["limit_pct"]), _opt_float(d["valid_from_ts"]), float(d["valid_to_ts"])
                )
                for d in document["dso"]
            }
            blocks = [
                RemoteCapacityBlock(str(b["node"]), float(b["start_ts"]), float(b["end_ts"]), float(b["limit_w"]))
                for b in document["capacity"]
            ]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.error("kept commands %s not used: %s", self._commands_path, err)
            return
        self._requests, self._priority_until, self._dso, self._blocks = requests, until, dso, blocks
        log.info(
            "commands kept from before the restart: %d session request(s), %d DSO limit(s), %d capacity block(s)",
            len(requests),
            len(dso),
            len(blocks),
        )

    def _take(self, received: Received, snapshot: InputSnapshot, now: float) -> None:
        message = received.message
        if isinstance(message, Plan):
            if message.valid_to_ts <= now:
                self.link.acknowledge(message.id, received.topic, accepted=False, reason="plan window has ended")
                return
            if self._plan_to_ack is not None and isinstance(self._plan_to_ack.message, Plan):
                # Replaced before its first cycle: accepted, and superseded at once.
                self.link.acknowledge(
                    self._plan_to_ack.message.id, self._plan_to_ack.topic, accepted=True, reason="superseded"
                )
            self.plan = message
            self._plan_to_ack = received
            save_plan(self._plan_path, message)
            log.info("plan %s accepted: %d steps of %d s", message.id, message.steps, message.step_s)
        elif isinstance(message, PricesCommand):
            self.prices = message.curve()
            save_prices(self._prices_path, message)
            log.info(
                "day-ahead prices %s: %d steps of %d s from %s",
                message.id,
                len(message.prices_eur_mwh),
                message.step_s,
                message.start_ts,
            )
            self.link.acknowledge(message.id, received.topic, accepted=True)
        elif isinstance(message, DepartureCommand | PriorityCommand):
            connector = message.connector or self._connector_of_token(snapshot, message.id_token)
            if connector is None:
                self.link.acknowledge(
                    message.id, received.topic, accepted=False, reason=f"no session with id token {message.id_token!r}"
                )
                return
            before = self._requests.get(connector)
            if isinstance(message, DepartureCommand):
                priority = before.priority if before is not None else None
                request = SessionRequest(message.departure_ts, message.energy_wh, now, priority)
            else:
                departure, energy = (before.departure_ts, before.energy_wh) if before is not None else (None, None)
                request = SessionRequest(departure, energy, now, message.priority)
                if message.until_ts is not None:
                    self._priority_until[connector] = message.until_ts
            self._requests[connector] = request
            self._save_commands()
            self._snapshot_reason = self._snapshot_reason or "command"
            self.link.acknowledge(message.id, received.topic, accepted=True)
        elif isinstance(message, DsoLimitCommand):
            # The newest command for a node replaces the one before: that is how the DSO lifts a limit.
            self._dso[message.node] = RemoteDsoLimit(
                message.node, message.limit_pct, message.valid_from_ts, message.valid_to_ts
            )
            log.warning(
                "DSO limit command %s: %s at %.0f %% until %s",
                message.id,
                message.node or "the DSO node",
                message.limit_pct,
                message.valid_to_ts,
            )
            self._save_commands()
            self.link.acknowledge(message.id, received.topic, accepted=True)
        else:
            # New capacity frames replace the ones they overlap on the same node (a corrected day-ahead).
            new = [RemoteCapacityBlock(f.node, f.start_ts, f.end_ts, f.limit_w) for f in message.frames]
            self._blocks = [
                b
                for b in self._blocks
                if not any(n.node == b.node and n.start_ts < b.end_ts and b.start_ts < n.end_ts for n in new)
            ] + new
            self._save_commands()
            self.link.acknowledge(message.id, received.topic, accepted=True)

    def _connector_of_token(self, snapshot: InputSnapshot, id_token: str | None) -> str | None:
        for connector_id, reading in snapshot.connectors.items():
            if id_token is not None and reading.id_token == id_token:
                return connector_id
        return None

    # -- after the cycle --------------------------------------------------------------------------

    def after_cycle(self, image: ProcessImage, output: CycleOutput) -> None:
        now = output.t
        if self._plan_to_ack is not None and output.target_source == "plan":
            self._ack_plan(self._plan_to_ack, output)
            self._plan_to_ack = None
        self._session_events(image, now)
        for event in output.events:
            severity = ALARM_SEVERITY.get(event.kind, "info")
            self.link.send(
                "alarm",
                alarm_message(
                    self.link.topics,
                    event_id=f"{event.latch}-{event.kind}-{int(event.ts * 1000)}",
                    ts=event.ts,
                    alarm=event.latch,
                    kind=event.kind,
                    severity=severity,  # type: ignore[arg-type]
                    detail=event.detail,
                ),
            )
        if now >= self._next_telemetry_ts:
            self._next_telemetry_ts = now + self.config.telemetry_interval_s
            self.link.publish_telemetry(
                build_telemetry(self.link.topics, self.site, image, output, targets=self.program.targets_in_force)
            )
        self._track_peak(image, now)
        self._maybe_snapshot(image, output)

    def _track_peak(self, image: ProcessImage, now: float) -> None:
        root = self.site.nodes[0]
        reading = image.meters.get(root.meter) if root.meter is not None else None
        good = reading is not None and reading.quality == Quality.GOOD and math.isfinite(reading.power_w)
        self.peak.add(reading.power_w if reading is not None and good else None, now)

    def _maybe_snapshot(self, image: ProcessImage, output: CycleOutput) -> None:
        now = output.t
        if not self.link.connected:
            self._was_connected = False
            return
        if not self._was_connected:
            self._was_connected = True
            self._snapshot_reason = "connect"
        due = now >= self._next_snapshot_ts
        early = self._snapshot_reason is not None and now - self._last_snapshot_ts >= self.config.snapshot_debounce_s
        if not (due or early):
            return
        reason = self._snapshot_reason or "interval"
        if self.link.publish_snapshot(self._snapshot(image, output, reason)):
            self.snapshots_sent += 1
            self._last_snapshot_ts = now
            self._next_snapshot_ts = now + self.config.snapshot_interval_s
            self._snapshot_reason = None

    def _snapshot(self, image: ProcessImage, output: CycleOutput, reason: str) -> dict[str, object]:
        site = self.site
        memories = self.program.state.connectors
        sessions: dict[str, SnapshotSession | None] = {}
        for index, connector in enumerate(site.connectors):
            session = memories[index].session
            reading = image.connectors[index]
            if session is None:
                sessions[connector.id] = None
                continue
            # What the user or fleet asked (ISO 15118, app, cmd/departure) over the badge's defaults.
            request = image.requests.get(connector.id)
            departure = request.departure_ts if request is not None else None
            energy = request.energy_wh if request is not None else None
            sessions[connector.id] = SnapshotSession(
                started_ts=session.started_ts,
                energy_wh=reading.energy_wh if reading is not None else self._energy_wh[index],
                energy_target_wh=energy if energy is not None else session.energy_wh,
                departure_ts=departure if departure is not None else session.departure_ts,
                min_energy_wh=self._guaranteed_wh(session.id_token),
                priority=self._priority(image, connector.id, connector.location_priority, session.id_token),
            )
        socs = {
            b.id: (r.soc_pct if r is not None and r.quality == Quality.GOOD else None)
            for b, r in zip(site.batteries, image.batteries, strict=True)
        }
        structure_nodes = self._structure["nodes"]
        uncontrolled = output.uncontrolled
        loads = {
            node["id"]: (uncontrolled.power_w[i] if uncontrolled is not None else None)
            for i, node in enumerate(structure_nodes)
            if node["metered"]
        }
        return snapshot_message(
            self.link.topics,
            snapshot_id=uuid.uuid4().hex,
            ts=output.t,
            reason=reason,
            structure=self._structure,
            structure_id=self.structure_hash,
            sessions=sessions,
            battery_soc_pct=socs,
            uncontrolled_w=loads,
            peak_import_w=self.peak.peak_w,
            dso_pct=output.dso_pct,
            remote_limits=image.remote_limits,
            prices=self.prices,
        )

    def _priority(
        self, image: ProcessImage, connector: str, location_priority: int | None, id_token: str | None
    ) -> int:
        """As the controller ranks the session: a fleet command, else the badge, else the location."""
        request = image.requests.get(connector)
        if request is not None and request.priority is not None:
            return request.priority
        user = self.site.users.get(id_token) if id_token is not None else None
        if user is not None:
            return user.priority
        return location_priority if location_priority is not None else self.site.default_priority

    def _ack_plan(self, received: Received, output: CycleOutput) -> None:
        plan = received.message
        assert isinstance(plan, Plan)
        by_id = {s.connector: s for s in output.setpoints}
        wanted = self.targets.connectors if self.targets is not None else {}
        clamped = tuple(
            Clamp(c, round(wanted.get(c, 0.0), 1), round(by_id[c].current_a, 1), "local protection: node limit")
            for c in output.clamped
        )
        self.link.acknowledge(
            plan.id,
            received.topic,
            accepted=True,
            reason="clamped by local protection" if clamped else "",
            clamped=clamped,
        )

    def _session_events(self, image: ProcessImage, now: float) -> None:
        memories = self.program.state.connectors
        for index, connector in enumerate(self.site.connectors):
            session = memories[index].session
            reading = image.connectors[index]
            if reading is not None:
                self._energy_wh[index] = reading.energy_wh
            before = self._sessions[index]
            if session is before:
                if session is not None and now - self._updated_ts[index] >= SESSION_UPDATE_S:
                    self._updated_ts[index] = now
                    self._send_session("update", connector.id, session, self._energy_wh[index], now)
                continue
            self._updated_ts[index] = now
            self._snapshot_reason = self._snapshot_reason or "session"
            if before is not None:
                self._send_session("stop", connector.id, before, self._energy_wh[index], now)
                # The fleet system's wishes were for that session: the next one starts afresh.
                if self._requests.pop(connector.id, None) is not None:
                    self._priority_until.pop(connector.id, None)
                    self._save_commands()
            if session is not None:
                self._send_session("start", connector.id, session, 0.0, now)
            self._sessions[index] = session

    def _send_session(self, event: str, connector: str, session: Session, energy_wh: float, now: float) -> None:
        session_id = f"{self.site.id}-{connector}-{int(session.started_ts * 1000)}"
        # Start and stop happen once per session; an update is one of many, named by its time.
        kind = f"update-{int(now)}" if event == "update" else event
        self.link.send(
            "session",
            session_event(
                self.link.topics,
                event_id=f"{session_id}-{kind}",
                ts=now,
                event=event,  # type: ignore[arg-type]
                session_id=session_id,
                connector=connector,
                id_token=session.id_token,
                energy_wh=energy_wh,
                departure_ts=session.departure_ts,
                energy_target_wh=session.energy_wh,
            ),
        )

    def _guaranteed_wh(self, id_token: str | None) -> float:
        """The badge's guaranteed energy (SPEC R8), which the optimiser serves before other requests."""
        profile = self.site.users.get(id_token) if id_token else None
        return profile.guaranteed_energy_wh if profile is not None else 0.0

    def report(self) -> dict[str, Any]:
        stats = self.link.stats
        return {
            "connected": stats.connected,
            "plan": self.plan.id if self.plan is not None else None,
            "intent_source": self.targets.source if self.targets is not None else None,
            "outbox_rows": len(self.link.outbox),
            "snapshots_sent": self.snapshots_sent,
            "last_error": stats.last_error,
        }


def _opt_float(value: Any) -> float | None:
    """None, or a finite number; anything else is not a value this file can hold (ValueError)."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a name")


def save_prices(path: Path, prices: PricesCommand) -> None:
    document = {"id": prices.id, "start_ts": prices.start_ts, "step_s": prices.step_s, "prices": prices.prices_eur_mwh}
    write_json_atomically(path, document, f"prices {prices.id}")


def load_prices(path: Path) -> PriceCurve | None:
    """The day-ahead prices kept by ``save_prices``, or None (none, or unreadable: logged)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        start, step = float(document["start_ts"]), int(document["step_s"])
        prices = [float(p) for p in document["prices"]]
        if not prices or step <= 0 or not all(math.isfinite(p) for p in [start, *prices]):
            raise ValueError("no usable prices in it")
        return PriceCurve(tuple(start + i * step for i in range(len(prices))), tuple(prices), float(step))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.error("kept prices %s not used: %s", path, err)
        return None


def save_plan(path: Path, plan: Plan) -> None:
    """Keep the plan in force for a restart (atomically: a crash leaves the old file or the new one)."""
    document = {
        "id": plan.id,
        "site": plan.site,
        "created_ts": plan.created_ts,
        "valid_from_ts": plan.valid_from_ts,
        "valid_to_ts": plan.valid_to_ts,
        "step_s": plan.step_s,
        "connectors": {k: list(v) for k, v in plan.connectors.items()},
        "batteries": {k: list(v) for k, v in plan.batteries.items()},
        "site_import_cap_w": list(plan.site_import_cap_w) if plan.site_import_cap_w is not None else None,
    }
    write_json_atomically(path, document, f"plan {plan.id}")


def load_plan(path: Path, site_id: str) -> Plan | None:
    """The plan kept by ``save_plan`` for this site, or None (none, unreadable or another site's: logged)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["site"] != site_id:
            raise ValueError(f"it is for site {document['site']!r}")
        cap = document["site_import_cap_w"]
        plan = Plan(
            id=str(document["id"]),
            site=site_id,
            created_ts=float(document["created_ts"]),
            valid_from_ts=float(document["valid_from_ts"]),
            valid_to_ts=float(document["valid_to_ts"]),
            step_s=int(document["step_s"]),
            connectors={str(k): tuple(v) for k, v in document["connectors"].items()},
            batteries={str(k): tuple(v) for k, v in document["batteries"].items()},
            site_import_cap_w=tuple(cap) if cap is not None else None,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.error("kept plan %s not used: %s", path, err)
        return None
    log.info("plan %s kept from before the restart (valid until %s)", plan.id, plan.valid_to_ts)
    return plan


class BillingPeak:
    """The highest 15-min average import at the connection this billing period (calendar month, site time).

    The optimiser's peak tariff only charges import above it. Averaged over each quarter hour as the
    capacity tariff is billed — one cycle's spike is not a peak — over the time the meter was good in
    it. Kept in the state directory whenever it rises, so a restart does not forget the month's peak;
    the quarter hour in progress at a restart is lost.
    """

    def __init__(self, path: Path, timezone: tzinfo) -> None:
        self._path = path
        self._timezone = timezone
        self.month: str | None = None
        self.peak_w: float | None = None
        self._window: float | None = None
        self._energy_ws = 0.0
        self._covered_s = 0.0
        self._last_ts: float | None = None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            self.month, self.peak_w = str(document["month"]), _opt_float(document["peak_w"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("kept billing peak %s not used: %s", path, err)

    def add(self, power_w: float | None, now: float) -> None:
        """One cycle's import at the connection (None: no good reading, the time does not count)."""
        window = now - now % PEAK_WINDOW_S
        if window != self._window:
            self._close_window()
            self._window, self._energy_ws, self._covered_s = window, 0.0, 0.0
            # Once per quarter hour, not every cycle: months begin on a quarter hour in every time zone.
            month = datetime.fromtimestamp(now, self._timezone).strftime("%Y-%m")
            if month != self.month:
                self.month, self.peak_w = month, None
        dt_s = 0.0 if self._last_ts is None else min(max(0.0, now - self._last_ts), PEAK_WINDOW_S)
        self._last_ts = now
        if power_w is not None:
            self._energy_ws += power_w * dt_s
            self._covered_s += dt_s

    def _close_window(self) -> None:
        # A quarter hour the meter covered for less than a third says too little to be billed on.
        if self._window is None or self._covered_s < PEAK_WINDOW_S / 3.0:
            return
        average_w = self._energy_ws / self._covered_s
        if self.peak_w is None or average_w > self.peak_w:
            self.peak_w = average_w
            write_json_atomically(self._path, {"month": self.month, "peak_w": average_w}, "the billing peak")


def cloud_config(raw: Any, source: str) -> MqttConfig:
    """The site file's ``mqtt`` section as an ``MqttConfig`` (ConfigError with paths when invalid)."""
    from pydantic import ValidationError

    from controller.config import ConfigError, ConfigIssue

    try:
        return MqttConfig.model_validate(raw)
    except ValidationError as err:
        issues: Sequence[ConfigIssue] = [
            ConfigIssue("mqtt" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in e["loc"]), e["msg"])
            for e in err.errors()
        ]
        raise ConfigError(issues, source) from None
