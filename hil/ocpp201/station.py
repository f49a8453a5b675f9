"""A simulated OCPP 2.0.1 charging station: the ``ocpp`` library's ChargePoint as a client of the CSMS.

One ``SimStation`` per ``driver: ocpp201`` device of the site file. It connects to the controller's CSMS
(``ws[s]://HOST:PORT/ocpp/{id}``, subprotocol ``ocpp2.0.1``, Basic auth with the device's ``password``),
boots, reports its EVSEs, and drives the plant's chargers of its connectors:

- A plugged-in EV (the scenario's timeline) is an RFID swipe (Authorize, if the EV has a token and the
  station is online), a transaction (TransactionEvent Started, Updated every ``TxUpdatedInterval`` with
  per-phase current, power, the energy register and, for DC, SoC; Ended when the EV leaves) and, for an
  ISO 15118 EV that tells its departure, NotifyEVChargingNeeds.
- The profiles it receives are stored and combined as a station does: the EVSE's TxProfile (or its
  TxDefaultProfile) under the station's ChargingStationMaxProfile, which caps the sum over its EVSEs.
  The composite is what the plant charger is told, every tick, and what GetCompositeSchedule answers.
- It answers SetVariables/GetVariables, ClearChargingProfile, RequestStart/StopTransaction,
  ChangeAvailability, TriggerMessage and Reset.
- Without a connection it keeps charging on its stored profiles and queues its TransactionEvents with
  ``offline=true``; after reconnecting it sends them all, in order (none lost).

Faults (scenario event ``ocpp_fault``): ``offline`` (away for the duration), ``unresponsive`` (answers no
call), ``overdraw`` (ignores its profiles and draws what the EV takes), and the one-shot frames
``malformed_json``, ``wrong_message_type``, ``unknown_action``, ``schema_invalid``, ``duplicate_seq_no``,
``out_of_order_seq_no``. The answers the CSMS gives to bad frames are kept in ``bad_frame_answers``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import ocpp.messages
import websockets
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result, enums
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from controller.config import DeviceConfig, SiteConfig, walk_tree
from hil.plant import IEC_MIN_A, ChargerSim, Plant
from hil.scenario import OcppFaultKind

log = logging.getLogger(__name__)

# The library hands every frame's schema validation to a thread pool by default. Validating costs
# 0.05 ms p50 / 0.7 ms p99; the hop to the pool and back cost 4 ms p50 / 40 ms p99 per frame at 200
# stations on 2 cores (docs/benchmarks.md). Validate in line.
ocpp.messages.ASYNC_VALIDATION = False

SUBPROTOCOL = "ocpp2.0.1"
RECONNECT_FIRST_S = 0.5
RECONNECT_CAP_S = 5.0
DEFAULT_TX_UPDATED_INTERVAL_S = 10.0
CALL_TIMEOUT_S = 10.0
FRAMES_KEPT = 20_000
"""Frames kept per direction in ``sent`` / ``received`` (for tests and debugging), the newest."""

LASTING_FAULTS = frozenset({"offline", "unresponsive", "overdraw"})

_BAD_FRAMES: dict[str, str] = {
    "malformed_json": '[2, "bad-json", "Heartbeat", {',
    "wrong_message_type": '[7, "bad-type", "Heartbeat", {}]',
    "unknown_action": '[2, "bad-action", "MakeCoffee", {}]',
    "schema_invalid": (
        '[2, "bad-schema", "StatusNotification", {"timestamp": "2026-01-01T00:00:00Z", '
        '"connectorStatus": "Available", "evseId": "one", "connectorId": 1}]'
    ),
}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class Profile:
    """One stored charging profile, reduced to what a simple station applies: its schedule's periods."""

    id: int
    evse_id: int
    purpose: str
    stack_level: int
    unit: str
    periods: list[tuple[float, float]]
    """(start_period_s, limit) in the profile's unit, sorted."""
    start_ts: float | None
    """Absolute profiles: the schedule's start (wall clock); relative ones start with the transaction."""
    transaction_id: str | None

    def limit(self, now: float, tx_start_ts: float | None) -> float | None:
        origin = self.start_ts if self.start_ts is not None else tx_start_ts
        elapsed = now - origin if origin is not None else 0.0
        current: float | None = None
        for start_s, limit in self.periods:
            if start_s <= elapsed:
                current = limit
        return current


@dataclass(slots=True)
class SimEvse:
    evse_id: int
    charger: ChargerSim
    phases: int
    available: bool = True
    ev_key: int | None = None
    """id() of the plugged EV this EVSE has seen, to notice plug-in and departure."""
    transaction_id: str | None = None
    tx_start_ts: float | None = None
    seq_no: int = 0
    charging_state: str = "EVConnected"
    last_sample_t: float = -math.inf
    energy_register_wh: float = 0.0
    remote_token: str | None = None
    refused: bool = False
    limit_a: float = 0.0
    """The composite limit applied now, A per phase."""
    profile_limits: list[tuple[float, float]] = field(default_factory=list)
    """(wall time, limit in its unit) of every TxProfile received, for tests that watch what the CSMS sent."""


@dataclass(slots=True)
class StationFault:
    kind: OcppFaultKind
    until_ts: float


class _Link(ChargePoint):  # type: ignore[misc]  # the ocpp library is untyped
    """The station's side of one WebSocket connection: the handlers of what the CSMS asks."""

    def __init__(self, station: SimStation, connection: ClientConnection) -> None:
        super().__init__(station.id, connection, response_timeout=CALL_TIMEOUT_S)
        self.station = station

    async def route_message(self, raw_msg: str | bytes) -> None:
        station = self.station
        station.received.append(str(raw_msg))
        try:
            message = unpack(raw_msg)
        except Exception:
            message = None
        if message is not None:
            if message.message_type_id == MessageType.Call and station.fault_active("unresponsive"):
                return
            if message.message_type_id != MessageType.Call and message.unique_id in station.bad_frame_ids:
                station.bad_frame_answers.append(json.loads(raw_msg))
                return
        await super().route_message(raw_msg)

    async def _send(self, message: str) -> None:
        self.station.sent.append(message)
        await super()._send(message)

    @on(enums.Action.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        status = self.station.store_profile(evse_id, charging_profile)
        return call_result.SetChargingProfile(status=status)

    @on(enums.Action.clear_charging_profile)
    def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, charging_profile_criteria: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        cleared = self.station.clear_profiles(charging_profile_id, charging_profile_criteria or {})
        return call_result.ClearChargingProfile(status="Accepted" if cleared else "Unknown")

    @on(enums.Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        return self.station.composite_schedule(duration, evse_id, charging_rate_unit or "A")

    @on(enums.Action.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = [self.station.set_variable(item) for item in set_variable_data]
        return call_result.SetVariables(set_variable_result=results)

    @on(enums.Action.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return call_result.GetVariables(get_variable_result=[self.station.get_variable(i) for i in get_variable_data])

    @on(enums.Action.request_start_transaction)
    def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, evse_id: int | None = None, **_: Any
    ) -> Any:
        status = self.station.remote_start(str(id_token.get("id_token", "")), evse_id)
        return call_result.RequestStartTransaction(status=status)

    @on(enums.Action.request_stop_transaction)
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        return call_result.RequestStopTransaction(status=self.station.remote_stop(transaction_id))

    @on(enums.Action.change_availability)
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        evse_id = int(evse["id"]) if evse else 0
        status = self.station.change_availability(operational_status == "Operative", evse_id)
        return call_result.ChangeAvailability(status=status)

    @on(enums.Action.trigger_message)
    def on_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        status = self.station.trigger(requested_message, int(evse["id"]) if evse else None)
        return call_result.TriggerMessage(status=status)

    @on(enums.Action.reset)
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        self.station.reset_requested = True
        self.station._wake.set()
        return call_result.Reset(status="Accepted")


class SimStation:
    """One simulated station on the plant's chargers; ``run`` keeps it connected, ``update`` drives it."""

    def __init__(
        self,
        site: SiteConfig,
        device: DeviceConfig,
        plant: Plant,
        *,
        url: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if site.ocpp is None:
            raise ValueError("the site has no ocpp section")
        self.id = device.id
        self.plant = plant
        self.wall = wall
        given = device.options.get("password")
        if password is None and not isinstance(given, str) and site.ocpp.security_profile < 3:
            raise ValueError(f"{device.id}: a simulated station needs options.password (not only its SHA-256)")
        self.password: str | None = password if password is not None else (given if isinstance(given, str) else None)
        """None: no Basic auth (profile 3, the client certificate identifies the station)."""
        host = "127.0.0.1" if site.ocpp.host in ("0.0.0.0", "::") else site.ocpp.host
        scheme = "wss" if site.ocpp.security_profile >= 2 else "ws"
        self.url = url or f"{scheme}://{host}:{site.ocpp.port}/ocpp/{device.id}"
        self.ssl_context = ssl_context
        self.evses: list[SimEvse] = []
        connectors = {c.id: c for item in walk_tree(site.tree) for c in item.node.connectors}
        for index, connector_id in enumerate(device.connectors):
            charger = plant.chargers[connector_id]
            # A station keeps applying its stored profiles: no Modbus-style setpoint watchdog.
            charger.behaviour = replace(charger.behaviour, watchdog_s=math.inf)
            conn = connectors[connector_id]
            phases = 3 if charger.dc else len(conn.phases) // 2
            self.evses.append(SimEvse(index + 1, charger, phases))
        self.profiles: dict[int, Profile] = {}
        self.tx_updated_interval_s = DEFAULT_TX_UPDATED_INTERVAL_S
        self.heartbeat_interval_s = 60.0
        self.outbox: deque[Callable[[_Link], Any]] = deque()
        self._wake = asyncio.Event()
        self.link: _Link | None = None
        self.online = False
        self.booted = False
        self.reset_requested = False
        self.faults: list[StationFault] = []
        self.bad_frame_ids: set[str] = set()
        self.bad_frame_answers: list[Any] = []
        self.sent: deque[str] = deque(maxlen=FRAMES_KEPT)
        self.received: deque[str] = deque(maxlen=FRAMES_KEPT)
        self.boots = 0
        self.call_errors = 0
        self.connects = 0
        self.refused_connections = 0
        self.transaction_ids: list[str] = []
        self.te_roundtrip_s: list[float] = []
        """Round trip of every TransactionEvent (send to answer), as the station sees it."""
        self._seq_fault: Literal["duplicate_seq_no", "out_of_order_seq_no"] | None = None
        self._held: Callable[[_Link], Any] | None = None
        self._tx_counter = itertools.count(1)
        self._last_t: float | None = None

    # -- faults -------------------------------------------------------------------------------------

    def fault_active(self, kind: OcppFaultKind) -> bool:
        if not self.faults:
            return False
        now = self.wall()
        self.faults = [f for f in self.faults if f.until_ts > now]
        return any(f.kind == kind for f in self.faults)

    def inject(self, kind: OcppFaultKind, duration_s: float) -> None:
        """Start a fault now: lasting ones for ``duration_s``, the frame faults once."""
        log.warning("%s: fault %s", self.id, kind)
        if kind in LASTING_FAULTS:
            self.faults.append(StationFault(kind, self.wall() + duration_s))
            if kind == "offline" and self.link is not None:
                connection = self.link._connection
                asyncio.get_running_loop().create_task(connection.close(1001, "going offline"))
        elif kind in ("duplicate_seq_no", "out_of_order_seq_no"):
            self._seq_fault = kind
        else:
            frame = _BAD_FRAMES[kind]
            # The CSMS answers a frame it cannot read with message id -1.
            self.bad_frame_ids.add("-1" if kind == "malformed_json" else json.loads(frame)[1])
            self.outbox.appendleft(lambda link: link._send(frame))
            self._wake.set()

    # -- the connection -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``: connect, boot when needed, send what is queued, reconnect."""
        failures = 0
        while not stop.is_set():
            if self.fault_active("offline"):
                await _sleep_or_stop(stop, 0.2)
                continue
            headers = {}
            if self.password is not None:
                credentials = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
                headers["Authorization"] = "Basic " + credentials
            try:
                connection = await websockets.connect(
                    self.url,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    additional_headers=headers,
                    ssl=self.ssl_context,
                    open_timeout=5,
                    ping_interval=None,
                )
            except (OSError, InvalidHandshake, TimeoutError) as err:
                failures += 1
                if isinstance(err, InvalidHandshake):
                    self.refused_connections += 1
                log.debug("%s: connect failed: %s", self.id, err)
                await _sleep_or_stop(stop, min(RECONNECT_CAP_S, RECONNECT_FIRST_S * 2 ** (failures - 1)))
                continue
            failures = 0
            self.connects += 1
            await self._serve(connection, stop)
            self.online = False
            self.link = None

    async def _serve(self, connection: ClientConnection, stop: asyncio.Event) -> None:
        link = _Link(self, connection)
        self.link = link
        reader = asyncio.create_task(link.start(), name=f"sim-{self.id}-read")
        stopper = asyncio.create_task(stop.wait())
        worker = asyncio.create_task(self._work(link), name=f"sim-{self.id}-work")
        try:
            await asyncio.wait({reader, stopper, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, stopper, worker):
                task.cancel()
            await asyncio.gather(reader, stopper, worker, return_exceptions=True)
            with contextlib.suppress(Exception):
                await connection.close()

    async def _work(self, link: _Link) -> None:
        """Boot if needed, announce the EVSEs, then send the outbox and heartbeats while connected."""
        if not self.booted or self.reset_requested:
            await self._boot(link, "RemoteReset" if self.reset_requested else "PowerUp")
        self.online = True
        for evse in self.evses:
            await self._call(link, self._status_notification(evse))
        next_heartbeat = time.monotonic() + self.heartbeat_interval_s
        while True:
            if self.reset_requested:
                # A reset: wait for the transactions' last events to go, then drop the link and boot again.
                await asyncio.sleep(0.2)
                await link._connection.close(1000, "reset")
                return
            while self.outbox:
                job = self.outbox.popleft()
                try:
                    await job(link)
                except (TimeoutError, ConnectionClosed):
                    self.outbox.appendleft(job)  # sent again on the next connection: nothing is lost
                    return
                except OCPPError as error:
                    # The CSMS refused it: sending it again would be refused again.
                    self.call_errors += 1
                    log.warning("%s: the CSMS answered CallError %s: %s", self.id, error.code, error.description)
            if time.monotonic() >= next_heartbeat:
                await self._call(link, call.Heartbeat())
                next_heartbeat = time.monotonic() + self.heartbeat_interval_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, next_heartbeat - time.monotonic()))

    async def _boot(self, link: _Link, reason: str) -> None:
        while True:
            result = await link.call(
                call.BootNotification(
                    charging_station={"model": "HIL-AC/DC", "vendor_name": "plaza-ems-sim", "firmware_version": "1"},
                    reason=reason,
                ),
                suppress=False,
            )
            self.boots += 1
            self.heartbeat_interval_s = float(result.interval) if result.interval > 0 else 60.0
            if result.status == "Accepted":
                self.booted = True
                self.reset_requested = False
                return
            log.info("%s: boot %s, again in %d s", self.id, result.status, result.interval)
            await asyncio.sleep(max(1.0, float(result.interval)))

    async def _call(self, link: _Link, payload: Any) -> Any:
        return await link.call(payload, suppress=False)

    def _queue(self, job: Callable[[_Link], Any], *, persistent: bool) -> None:
        """Queue a message; only transaction events are kept while offline (others are re-sent on reconnect)."""
        if not persistent and not self.online:
            return
        self.outbox.append(job)
        self._wake.set()

    # -- the plant ----------------------------------------------------------------------------------

    def update(self, t: float) -> None:
        """Called every plant tick at plant time ``t``: sessions from the plant, limits to the plant."""
        dt = t - self._last_t if self._last_t is not None and t > self._last_t else 0.0
        self._last_t = t
        now = self.wall()
        limits = self._limits(now)
        overdraw = self.fault_active("overdraw")
        for evse, limit_a in zip(self.evses, limits, strict=True):
            charger = evse.charger
            evse.energy_register_wh += charger.power_w * dt / 3600.0
            ev = charger.ev
            key = id(ev) if ev is not None else None
            # Not registered yet (no accepted boot): no transactions (OCPP 2.0.1 B02: nothing starts while Pending).
            if key != evse.ev_key and self.booted:
                if evse.ev_key is not None:
                    self._unplugged(evse, now)
                evse.ev_key = key
                if ev is not None:
                    self._plugged(evse, now, ev.spec.id_token, ev.spec.tell_departure, t)
            if evse.transaction_id is None or not evse.available:
                limit_a = 0.0
            if overdraw and evse.transaction_id is not None:
                limit_a = charger.max_current_a
            evse.limit_a = limit_a
            charger.write_limit(t, limit_a)
            if evse.transaction_id is not None:
                state = self._charging_state(evse)
                if state != evse.charging_state:
                    evse.charging_state = state
                    self._transaction_event(evse, "Updated", "ChargingStateChanged", now)
                elif now - evse.last_sample_t >= self.tx_updated_interval_s:
                    self._transaction_event(evse, "Updated", "MeterValuePeriodic", now)

    def _charging_state(self, evse: SimEvse) -> str:
        charger = evse.charger
        if charger.power_w > 0.0:
            return "Charging"
        ev = charger.ev
        if ev is not None and ev.taper() <= 0.0:
            return "SuspendedEV"
        suspended = evse.limit_a <= 0.0 or (not charger.dc and evse.limit_a < IEC_MIN_A)
        return "SuspendedEVSE" if suspended else "EVConnected"

    def _plugged(self, evse: SimEvse, now: float, token: str | None, tells_departure: bool, t: float) -> None:
        evse.refused = False
        self._queue_status(evse, "Occupied")
        token = token or evse.remote_token
        evse.remote_token = None
        if token is not None and self.online:
            self._queue(lambda link: self._authorize_then_start(link, evse, token), persistent=True)
        else:
            self._start(evse, token, now, "CablePluggedIn")
        ev = evse.charger.ev
        if tells_departure and ev is not None:
            departure_ts = now + (ev.spec.depart_s - t)
            needs: dict[str, Any] = {
                "requested_energy_transfer": "DC" if evse.charger.dc else "AC_three_phase",
                "departure_time": iso(departure_ts),
            }
            params_key = "dc_charging_parameters" if evse.charger.dc else "ac_charging_parameters"
            if evse.charger.dc:
                needs[params_key] = {
                    "ev_max_current": 400,
                    "ev_max_voltage": 800,
                    "energy_amount": int(ev.spec.energy_wh),
                }
            else:
                needs[params_key] = {
                    "energy_amount": int(ev.spec.energy_wh),
                    "ev_min_current": 6,
                    "ev_max_current": int(ev.spec.max_current_a),
                    "ev_max_voltage": 400,
                }
            payload = call.NotifyEVChargingNeeds(charging_needs=needs, evse_id=evse.evse_id)
            self._queue(lambda link: self._call(link, payload), persistent=False)

    async def _authorize_then_start(self, link: _Link, evse: SimEvse, token: str) -> None:
        result = await self._call(link, call.Authorize(id_token={"id_token": token, "type": "ISO14443"}))
        status = result.id_token_info.get("status") if isinstance(result.id_token_info, dict) else None
        if status != "Accepted":
            log.info("%s EVSE %d: token %s %s, no transaction", self.id, evse.evse_id, token, status)
            evse.refused = True
            return
        if evse.charger.ev is not None and evse.transaction_id is None:
            self._start(evse, token, self.wall(), "Authorized", front=True)

    def _start(self, evse: SimEvse, token: str | None, now: float, trigger: str, *, front: bool = False) -> None:
        evse.transaction_id = f"{self.id}-{evse.evse_id}-{next(self._tx_counter)}-{int(now)}"
        self.transaction_ids.append(evse.transaction_id)
        evse.tx_start_ts = now
        evse.seq_no = 0
        evse.charging_state = self._charging_state(evse)
        self._transaction_event(evse, "Started", trigger, now, token=token, front=front)

    def _unplugged(self, evse: SimEvse, now: float) -> None:
        if evse.transaction_id is not None:
            self._transaction_event(evse, "Ended", "EVCommunicationLost", now, stopped_reason="EVDisconnected")
            self._end(evse)
        self._queue_status(evse, "Available")

    def _end(self, evse: SimEvse) -> None:
        evse.transaction_id = None
        evse.tx_start_ts = None
        for profile_id in [
            p.id for p in self.profiles.values() if p.purpose == "TxProfile" and p.evse_id == evse.evse_id
        ]:
            del self.profiles[profile_id]

    def _transaction_event(
        self,
        evse: SimEvse,
        event_type: str,
        trigger: str,
        now: float,
        *,
        token: str | None = None,
        stopped_reason: str | None = None,
        front: bool = False,
    ) -> None:
        assert evse.transaction_id is not None
        evse.last_sample_t = now
        info: dict[str, Any] = {"transaction_id": evse.transaction_id, "charging_state": evse.charging_state}
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        payload = call.TransactionEvent(
            event_type=event_type,
            timestamp=iso(now),
            trigger_reason=trigger,
            seq_no=evse.seq_no,
            transaction_info=info,
            meter_value=[self._meter_value(evse, now)],
            offline=True if not self.online else None,
            evse={"id": evse.evse_id, "connector_id": 1} if event_type == "Started" else None,
            id_token={"id_token": token, "type": "ISO14443"} if token else None,
        )
        evse.seq_no += 1
        job = self._transaction_job(evse, payload)
        if front:
            self.outbox.appendleft(job)
            self._wake.set()
            return
        fault, self._seq_fault = self._seq_fault, None
        if fault == "duplicate_seq_no":
            self._queue(job, persistent=True)
        if fault == "out_of_order_seq_no":
            self._held = job
            return
        self._queue(job, persistent=True)
        if self._held is not None:
            held, self._held = self._held, None
            self._queue(held, persistent=True)

    def _transaction_job(self, evse: SimEvse, payload: Any) -> Callable[[_Link], Any]:
        async def send(link: _Link) -> None:
            started = time.perf_counter()
            result = await self._call(link, payload)
            self.te_roundtrip_s.append(time.perf_counter() - started)
            info = result.id_token_info if result is not None else None
            status = info.get("status") if isinstance(info, dict) else None
            if payload.event_type == "Started" and status not in (None, "Accepted"):
                tx_id = payload.transaction_info["transaction_id"]
                if evse.transaction_id == tx_id:
                    log.info("%s EVSE %d: token refused (%s), transaction ends", self.id, evse.evse_id, status)
                    evse.refused = True
                    self._transaction_event(evse, "Ended", "Deauthorized", self.wall(), stopped_reason="DeAuthorized")
                    self._end(evse)

        return send

    def _meter_value(self, evse: SimEvse, now: float) -> dict[str, Any]:
        charger = evse.charger
        sampled: list[dict[str, Any]] = [
            {
                "value": round(charger.charger_a[k], 3),
                "measurand": "Current.Import",
                "phase": f"L{k + 1}",
                "unit_of_measure": {"unit": "A"},
            }
            for k in range(3)
        ]
        sampled.append(
            {"value": round(charger.power_w, 1), "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}}
        )
        sampled.append(
            {
                "value": round(evse.energy_register_wh, 1),
                "measurand": "Energy.Active.Import.Register",
                "unit_of_measure": {"unit": "Wh"},
            }
        )
        ev = charger.ev
        if charger.dc and ev is not None:
            sampled.append(
                {"value": round(ev.soc * 100.0, 1), "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}}
            )
        return {"timestamp": iso(now), "sampled_value": sampled}

    def _queue_status(self, evse: SimEvse, status: str | None = None) -> None:
        self._queue(lambda link: self._call(link, self._status_notification(evse, status)), persistent=False)

    def _status_notification(self, evse: SimEvse, status: str | None = None) -> Any:
        if status is None:
            status = (
                "Unavailable" if not evse.available else ("Occupied" if evse.charger.ev is not None else "Available")
            )
        return call.StatusNotification(
            timestamp=iso(self.wall()), connector_status=status, evse_id=evse.evse_id, connector_id=1
        )

    # -- profiles -----------------------------------------------------------------------------------

    def store_profile(self, evse_id: int, profile: dict[str, Any]) -> str:
        purpose = str(profile["charging_profile_purpose"])
        schedule = profile["charging_schedule"][0]
        evse = self._evse(evse_id)
        if evse_id != 0 and evse is None:
            return "Rejected"
        if purpose == "ChargingStationMaxProfile" and evse_id != 0:
            return "Rejected"
        tx_id = profile.get("transaction_id")
        if purpose == "TxProfile" and (evse is None or evse.transaction_id is None or tx_id != evse.transaction_id):
            return "Rejected"
        periods = sorted((float(p["start_period"]), float(p["limit"])) for p in schedule["charging_schedule_period"])
        start_ts = _epoch(schedule.get("start_schedule")) if profile["charging_profile_kind"] == "Absolute" else None
        # The same id, or the same purpose, EVSE and stack level, replaces the stored profile (2.0.1 K01).
        for other in list(self.profiles.values()):
            if other.id == profile["id"] or (
                other.purpose == purpose and other.evse_id == evse_id and other.stack_level == profile["stack_level"]
            ):
                del self.profiles[other.id]
        self.profiles[int(profile["id"])] = Profile(
            int(profile["id"]),
            evse_id,
            purpose,
            int(profile["stack_level"]),
            str(schedule["charging_rate_unit"]),
            periods,
            start_ts,
            tx_id,
        )
        if purpose == "TxProfile" and evse is not None:
            evse.profile_limits.append((self.wall(), periods[0][1]))
        return "Accepted"

    def clear_profiles(self, profile_id: int | None, criteria: dict[str, Any]) -> bool:
        matches = [
            p
            for p in self.profiles.values()
            if (profile_id is None or p.id == profile_id)
            and ("evse_id" not in criteria or p.evse_id == criteria["evse_id"])
            and ("charging_profile_purpose" not in criteria or p.purpose == criteria["charging_profile_purpose"])
            and ("stack_level" not in criteria or p.stack_level == criteria["stack_level"])
        ]
        for profile in matches:
            del self.profiles[profile.id]
        return bool(matches)

    def _to_amps(self, evse: SimEvse, limit: float, unit: str) -> float:
        if unit == "W":
            return limit / (self.plant.voltage_v * evse.phases)
        return limit

    def _evse_limit_a(self, evse: SimEvse, now: float) -> float:
        """The EVSE's own limit: its TxProfile, else its TxDefaultProfile (EVSE or station-wide), else its rating."""
        best: tuple[int, float] | None = None
        for purpose in ("TxProfile", "TxDefaultProfile"):
            for p in self.profiles.values():
                if p.purpose != purpose or p.evse_id not in (0, evse.evse_id):
                    continue
                if purpose == "TxProfile" and p.transaction_id != evse.transaction_id:
                    continue
                limit = p.limit(now, evse.tx_start_ts)
                if limit is None:
                    continue
                rank = p.stack_level + (1000 if p.evse_id == evse.evse_id else 0)
                if best is None or rank > best[0]:
                    best = (rank, self._to_amps(evse, limit, p.unit))
            if best is not None:
                return min(best[1], evse.charger.max_current_a)
        return evse.charger.max_current_a

    def _limits(self, now: float) -> list[float]:
        """Per EVSE the composite limit in A per phase: its own under the station's max profile (a sum)."""
        own = [self._evse_limit_a(e, now) if e.transaction_id is not None else 0.0 for e in self.evses]
        cap_a = min(
            (
                self._to_amps(self.evses[0], limit, p.unit)
                for p in self.profiles.values()
                if p.purpose == "ChargingStationMaxProfile" and (limit := p.limit(now, None)) is not None
            ),
            default=math.inf,
        )
        total = sum(own)
        if total > cap_a:
            own = [a * max(0.0, cap_a) / total for a in own]
        return own

    def composite_schedule(self, duration: int, evse_id: int, unit: str) -> Any:
        now = self.wall()
        limits = self._limits(now)
        if evse_id == 0:
            limit_a = sum(limits)
            phases = 3
        else:
            evse = self._evse(evse_id)
            if evse is None:
                return call_result.GetCompositeSchedule(status="Rejected")
            limit_a = limits[evse_id - 1]
            phases = evse.phases
        limit = limit_a * self.plant.voltage_v * phases if unit == "W" else limit_a
        return call_result.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": iso(now),
                "charging_rate_unit": unit,
                "charging_schedule_period": [{"start_period": 0, "limit": round(limit, 1)}],
            },
        )

    # -- other requests -----------------------------------------------------------------------------

    def set_variable(self, item: dict[str, Any]) -> dict[str, Any]:
        component, variable = item["component"], item["variable"]
        status = "UnknownVariable"
        if component.get("name") == "SampledDataCtrlr" and variable.get("name") == "TxUpdatedInterval":
            try:
                value = float(item["attribute_value"])
            except ValueError:
                status = "Rejected"
            else:
                if value > 0:
                    self.tx_updated_interval_s, status = value, "Accepted"
                else:
                    status = "Rejected"
        return {"attribute_status": status, "component": component, "variable": variable}

    def get_variable(self, item: dict[str, Any]) -> dict[str, Any]:
        component, variable = item["component"], item["variable"]
        values = {
            ("SampledDataCtrlr", "TxUpdatedInterval"): f"{self.tx_updated_interval_s:g}",
            ("OCPPCommCtrlr", "HeartbeatInterval"): f"{self.heartbeat_interval_s:g}",
        }
        value = values.get((component.get("name"), variable.get("name")))
        result: dict[str, Any] = {
            "attribute_status": "Accepted" if value is not None else "UnknownVariable",
            "component": component,
            "variable": variable,
        }
        if value is not None:
            result["attribute_value"] = value
        return result

    def remote_start(self, token: str, evse_id: int | None) -> str:
        evse = self._evse(evse_id) if evse_id else next((e for e in self.evses if e.transaction_id is None), None)
        if evse is None or evse.transaction_id is not None or not evse.available:
            return "Rejected"
        if evse.charger.ev is None:
            evse.remote_token = token  # starts when the EV plugs in
        else:
            self._start(evse, token, self.wall(), "RemoteStart")
        return "Accepted"

    def remote_stop(self, transaction_id: str) -> str:
        for evse in self.evses:
            if evse.transaction_id == transaction_id:
                self._transaction_event(evse, "Ended", "RemoteStop", self.wall(), stopped_reason="Remote")
                self._end(evse)
                return "Accepted"
        return "Rejected"

    def change_availability(self, operative: bool, evse_id: int) -> str:
        targets = self.evses if evse_id == 0 else [e for e in self.evses if e.evse_id == evse_id]
        if not targets:
            return "Rejected"
        for evse in targets:
            evse.available = operative
            self._queue_status(evse)
        return "Accepted"

    def trigger(self, message: str, evse_id: int | None) -> str:
        targets = [e for e in self.evses if evse_id in (None, e.evse_id)]
        if message == "StatusNotification":
            for evse in targets:
                self._queue_status(evse)
        elif message == "Heartbeat":
            self._queue(lambda link: self._call(link, call.Heartbeat()), persistent=False)
        elif message == "BootNotification":
            self._queue(lambda link: self._boot(link, "Triggered"), persistent=False)
        elif message in ("MeterValues", "TransactionEvent"):
            for evse in targets:
                if evse.transaction_id is not None:
                    self._transaction_event(evse, "Updated", "Trigger", self.wall())
        else:
            return "NotImplemented"
        return "Accepted"

    def _evse(self, evse_id: int | None) -> SimEvse | None:
        return next((e for e in self.evses if e.evse_id == evse_id), None)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
