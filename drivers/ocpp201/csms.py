"""The controller as the charging stations' OCPP 2.0.1 CSMS: WebSocket server, station state, smart charging.

Stations connect to ``ws[s]://HOST:PORT/ocpp/{stationId}`` with subprotocol ``ocpp2.0.1`` and HTTP Basic
auth (Security Profile 1; profile 2 adds TLS; profile 3 replaces the password by a client certificate
whose CN is the station id). Unknown station ids get HTTP 404, a wrong password or certificate 401, a
missing subprotocol a close with 1002. A boot before the controller's first cycle is answered Pending.

What the stations say becomes process-image readings (``refresh``, called by the cycle before it
freezes): connector state (IEC 61851 letter), per-phase current, power, session energy, idToken. A
connected station's values are re-stamped every cycle as long as they are recent (a charging EVSE's
meter values must be younger than two TxUpdatedIntervals plus a margin, else they go stale and the
controller assumes the worst); a disconnected station has no reading at all, so the controller counts it
at its last setpoint or its fallback current, whichever is higher.

What the cycle decides goes out as profiles (``hand_over``): at boot a ChargingStationMaxProfile on
EVSE 0 (the station's own ceiling should the controller go away) and TxUpdatedInterval; per running
transaction a TxProfile (A for AC, W for DC; 0 pauses). A decrease is sent at once; an increase only
beyond ``profile_deadband_a`` and at most every ``profile_min_interval_s`` per station. Every call has a
timeout; a CallError or timeout is logged and counted, never swallowed. On every (re)connection the
profiles are sent again — a station that reconnects without booting is known from before; one the CSMS
has never seen boot is asked to (TriggerMessage). Every ``verify_interval_s`` the CSMS asks each station
with a transaction what it applies (GetCompositeSchedule) and, where it applies other than it was told,
sends its profiles again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import ocpp.messages
from ocpp.exceptions import OCPPError
from ocpp.messages import CallError, MessageType, unpack
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result, datatypes, enums
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from controller.config import ConfigError, ConfigIssue, OcppConfig, SiteConfig
from controller.image import ConnectorReading, InputSnapshot, SessionRequest
from controller.program import CycleOutput
from drivers.ocpp201.measurands import parse_meter_values
from drivers.ocpp201.stations import EvseSpec, StationSpec, compile_stations

log = logging.getLogger(__name__)

# The library hands every frame's schema validation to a thread pool by default. Validating costs
# 0.05 ms p50 / 0.7 ms p99; the hop to the pool and back cost 4 ms p50 / 40 ms p99 per frame at 200
# stations on 2 cores (docs/benchmarks.md). Validate in line.
ocpp.messages.ASYNC_VALIDATION = False

SUBPROTOCOL = "ocpp2.0.1"
PATH_PREFIX = "/ocpp/"
STALE_MARGIN_S = 5.0
TX_PROFILE_STACK_LEVEL = 0
MAX_PROFILE_ID = 1
"""ChargingStationMaxProfile id; TxProfile ids are 100 + EVSE id, so a new one replaces the old."""
TX_DEFAULT_PROFILE_ID = 2
BOOT_GRACE_S = 3.0
"""A connected station that has not booted within this is asked to (TriggerMessage BootNotification)."""
PENDING_INTERVAL_S = 2
"""Boot retry interval told to stations that boot before the controller's first cycle."""
VERIFY_TOLERANCE = 0.5
"""A composite schedule off the TxProfile by more than this (A, or that many A per phase in W) is a mismatch."""
MAX_RECORDS = 5000
"""Transaction records kept; the oldest ended ones go first."""

_V201_ACTIONS = frozenset(a.value for a in enums.Action)

_STATE_BY_CHARGING_STATE = {
    "Charging": "C2",
    "EVConnected": "B2",
    "SuspendedEV": "B2",
    "SuspendedEVSE": "B2",
    "Idle": "B2",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


@dataclass(slots=True)
class TransactionRecord:
    """Everything received about one transaction: the session record, complete even after offline periods."""

    transaction_id: str
    station: str
    evse_id: int
    connector: str
    id_token: str | None = None
    started_ts: float | None = None
    ended_ts: float | None = None
    seq_nos: list[int] = field(default_factory=list)
    offline_events: int = 0
    energy_wh: float | None = None
    stopped_reason: str | None = None
    events: int = 0

    @property
    def complete(self) -> bool:
        """Started and ended, and every seqNo from the first to the last arrived."""
        if self.started_ts is None or self.ended_ts is None or not self.seq_nos:
            return False
        return sorted(set(self.seq_nos)) == list(range(min(self.seq_nos), max(self.seq_nos) + 1))


@dataclass(slots=True)
class EvseState:
    spec: EvseSpec
    status: str = "Unavailable"
    charging_state: str | None = None
    transaction_id: str | None = None
    id_token: str | None = None
    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    power_w: float = 0.0
    energy_register_wh: float | None = None
    start_register_wh: float | None = None
    measured_ts: float = -math.inf
    wanted: float = 0.0
    """The limit the cycle wants (A for AC, W for DC)."""
    sent: float | None = None
    sent_ts: float = -math.inf
    lowered_ts: float = -math.inf
    """When the last decrease was accepted: meter values sampled before it say nothing about now."""
    before_lowered: float = 0.0
    """The limit the last decrease came from: the charger may draw it for its response delay."""
    sampled_under: float | None = None
    """What the charger was allowed to draw when the last meter values came."""
    request: SessionRequest | None = None

    @property
    def unit(self) -> str:
        return "W" if self.spec.connector.type == "dc" else "A"

    def letter(self) -> str:
        """IEC 61851 letter: a running transaction says more than a StatusNotification that may not have come."""
        if self.status == "Faulted":
            return "F"
        if self.transaction_id is not None:
            return _STATE_BY_CHARGING_STATE.get(self.charging_state or "EVConnected", "B2")
        if self.status == "Unavailable":
            return "F"
        return "B2" if self.status == "Occupied" else "A1"

    def session_wh(self) -> float:
        if self.energy_register_wh is None or self.start_register_wh is None:
            return 0.0
        return max(0.0, self.energy_register_wh - self.start_register_wh)


@dataclass(slots=True)
class StationState:
    """What the CSMS knows of one station, kept across reconnects."""

    spec: StationSpec
    evses: dict[int, EvseState]
    link: StationLink | None = None
    connection: ServerConnection | None = None
    booted: bool = False
    last_seen_ts: float = -math.inf
    calls: int = 0
    call_errors: int = 0
    timeouts: int = 0
    rejected: int = 0
    """Calls the station answered with a Rejected (or otherwise not Accepted) status."""
    mismatches: int = 0
    """Composite schedules above what the station was told."""
    verified_ts: float = -math.inf
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class CsmsStats:
    connects: int = 0
    refused: int = 0
    transaction_event_response_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    """Time from a TransactionEvent frame to its answer sent, newest 100 000."""
    bad_frames: int = 0
    unknown_actions: int = 0


class StationLink(ChargePoint):  # type: ignore[misc]  # the ocpp library is untyped
    """One WebSocket connection to one station: the handlers of what the station sends."""

    def __init__(self, csms: Csms, state: StationState, connection: ServerConnection) -> None:
        super().__init__(state.spec.id, connection, response_timeout=csms.config.call_timeout_s)
        self.csms = csms
        self.state = state

    # -- frames the ocpp library cannot route --------------------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        """The library only logs a frame it cannot unpack; OCPP-J wants a CallError back (message id if known)."""
        try:
            message = unpack(raw_msg)
        except OCPPError as error:
            self.csms.stats.bad_frames += 1
            unique_id = _message_id(raw_msg)
            code = "MessageTypeNotSupported" if _unknown_message_type(raw_msg) else error.code
            log.warning("%s: bad frame (%s): %.200s", self.id, code, raw_msg)
            await self._send(CallError(unique_id, code, error.description, error.details or {}).to_json())
            return
        self.state.last_seen_ts = self.csms.clock()
        if message.message_type_id == MessageType.Call and message.action not in self.route_map:
            # OCPP-J 2.0.1 §4.3: NotImplemented for an action the receiver does not know, NotSupported for
            # one it knows but does not handle (the library answers the other way round).
            known = message.action in _V201_ACTIONS
            code = "NotSupported" if known else "NotImplemented"
            self.csms.stats.unknown_actions += 1
            log.warning("%s: %s action %r", self.id, "unsupported" if known else "unknown", message.action)
            await self._send(CallError(message.unique_id, code, f"{message.action} is not handled here", {}).to_json())
            return
        start = time.perf_counter()
        await super().route_message(raw_msg)
        if _action_of(raw_msg) == "TransactionEvent":
            self.csms.stats.transaction_event_response_s.append(time.perf_counter() - start)

    # -- station -> CSMS ---------------------------------------------------------------------

    @on(enums.Action.boot_notification)
    def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> call_result.BootNotification:
        log.info(
            "%s: boot (%s) %s %s", self.id, reason, charging_station.get("vendor_name"), charging_station.get("model")
        )
        if not self.csms.ready:
            log.info("%s: boot answered Pending: the controller has not run its first cycle", self.id)
            return call_result.BootNotification(
                current_time=_iso(self.csms.clock()),
                interval=PENDING_INTERVAL_S,
                status=enums.RegistrationStatusEnumType.pending,
            )
        self.state.booted = True
        self.csms.after_boot(self.state)
        return call_result.BootNotification(
            current_time=_iso(self.csms.clock()),
            interval=self.csms.config.heartbeat_interval_s,
            status=enums.RegistrationStatusEnumType.accepted,
        )

    @on(enums.Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_iso(self.csms.clock()))

    @on(enums.Action.status_notification)
    def on_status(self, connector_status: str, evse_id: int, **_: Any) -> call_result.StatusNotification:
        evse = self.state.evses.get(evse_id)
        if evse is None:
            log.warning("%s: StatusNotification for unknown EVSE %d", self.id, evse_id)
        else:
            evse.status = connector_status
        return call_result.StatusNotification()

    @on(enums.Action.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> call_result.Authorize:
        token = str(id_token.get("id_token", ""))
        return call_result.Authorize(id_token_info=self.csms.token_info(token))

    @on(enums.Action.transaction_event)
    def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        trigger_reason: str,
        seq_no: int,
        transaction_info: dict[str, Any],
        **extra: Any,
    ) -> call_result.TransactionEvent:
        info = self.csms.transaction_event(
            self.state,
            event_type,
            _epoch(timestamp, self.csms.clock()),
            trigger_reason,
            seq_no,
            transaction_info,
            extra,
        )
        return call_result.TransactionEvent(id_token_info=info)

    @on(enums.Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any) -> call_result.MeterValues:
        evse = self.state.evses.get(evse_id)
        if evse is not None:
            self.csms.take_meter_values(self.state, evse, meter_value)
        return call_result.MeterValues()

    @on(enums.Action.notify_ev_charging_needs)
    def on_charging_needs(
        self, charging_needs: dict[str, Any], evse_id: int, **_: Any
    ) -> call_result.NotifyEVChargingNeeds:
        evse = self.state.evses.get(evse_id)
        now = self.csms.clock()
        if evse is not None:
            departure = charging_needs.get("departure_time")
            params = charging_needs.get("ac_charging_parameters") or charging_needs.get("dc_charging_parameters") or {}
            energy = params.get("energy_amount")
            evse.request = SessionRequest(
                _epoch(departure, math.nan) if departure else None,
                float(energy) if isinstance(energy, int | float) else None,
                now,
            )
        return call_result.NotifyEVChargingNeeds(status=enums.NotifyEVChargingNeedsStatusEnumType.accepted)

    @on(enums.Action.notify_report)
    def on_notify_report(self, **_: Any) -> call_result.NotifyReport:
        return call_result.NotifyReport()

    @on(enums.Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(enums.Action.security_event_notification)
    def on_security_event(self, type: str, **_: Any) -> call_result.SecurityEventNotification:
        log.warning("%s: security event %s", self.id, type)
        return call_result.SecurityEventNotification()


def _message_id(raw: str | bytes) -> str:
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        return "-1"
    if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str):
        return frame[1]
    return "-1"


def _unknown_message_type(raw: str | bytes) -> bool:
    """A JSON array whose first element is a number other than 2, 3, 4 (OCPP-J 2.0.1: MessageTypeNotSupported)."""
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        return False
    return isinstance(frame, list) and bool(frame) and type(frame[0]) is int and frame[0] not in (2, 3, 4)


def _action_of(raw: str | bytes) -> str | None:
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if isinstance(frame, list) and len(frame) > 2 and frame[0] == 2 and isinstance(frame[2], str):
        return frame[2]
    return None


class Csms:
    """The OCPP 2.0.1 server of the site, its stations' state and their profiles."""

    def __init__(self, site: SiteConfig, clock: Callable[[], float] = time.time) -> None:
        if site.ocpp is None:
            raise ValueError("the site has no ocpp section")
        self.config: OcppConfig = site.ocpp
        self.site = site
        self.clock = clock
        specs, issues = compile_stations(site)
        if issues:
            raise ValueError("; ".join(str(i) for i in issues))
        self.stations = {
            sid: StationState(spec, {e.evse_id: EvseState(e) for e in spec.evses}) for sid, spec in specs.items()
        }
        self.by_connector = {e.spec.connector.id: (s, e) for s in self.stations.values() for e in s.evses.values()}
        self.tokens = {u.id_token: u for u in site.priorities.users}
        self.transactions: dict[str, TransactionRecord] = {}
        self.stats = CsmsStats()
        self.ready = False
        """Set by the first hand-over: before it, boots are answered Pending."""
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the server ------------------------------------------------------------------------------

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        if self.config.security_profile >= 2 and ssl_context is None:
            ssl_context = self._tls_context()
        self._server = await serve(
            self._serve,
            self.config.host,
            self.config.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._check_request,
            ssl=ssl_context,
            ping_interval=20,
            ping_timeout=20,
        )
        log.info(
            "OCPP 2.0.1 CSMS on %s://%s:%d%s{stationId} for %d stations",
            "wss" if ssl_context else "ws",
            self.config.host,
            self.config.port,
            PATH_PREFIX,
            len(self.stations),
        )

    def _tls_context(self) -> ssl.SSLContext:
        """TLS >= 1.2, the configured certificate and, for profile 3, the stations' CA; ConfigError if unusable."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        assert self.config.tls_cert is not None
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError([ConfigIssue("ocpp.tls_cert", f"cannot load certificate/key: {err}")]) from err
        if self.config.security_profile == 3:
            assert self.config.tls_ca is not None
            context.verify_mode = ssl.CERT_REQUIRED
            try:
                context.load_verify_locations(self.config.tls_ca)
            except (OSError, ssl.SSLError) as err:
                raise ConfigError([ConfigIssue("ocpp.tls_ca", f"cannot load the stations' CA: {err}")]) from err
        return context

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        station_id = request.path[len(PATH_PREFIX) :] if request.path.startswith(PATH_PREFIX) else ""
        state = self.stations.get(station_id)
        if state is None:
            self.stats.refused += 1
            log.warning("OCPP connection refused: unknown station id in path %r", request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown station\n")
        if self.config.security_profile == 3:
            common_name = _peer_common_name(connection)
            if common_name == station_id:
                return None
            self.stats.refused += 1
            log.warning("%s: OCPP connection refused: client certificate CN %r", station_id, common_name)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "certificate does not name this station\n")
        password = _basic_password(request.headers, station_id)
        if password is None or not state.spec.password_ok(password):
            self.stats.refused += 1
            log.warning("%s: OCPP connection refused: wrong or missing Basic-auth credentials", station_id)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
            return response
        return None

    async def _serve(self, connection: ServerConnection) -> None:
        station_id = connection.request.path[len(PATH_PREFIX) :] if connection.request else ""
        state = self.stations[station_id]
        if connection.subprotocol != SUBPROTOCOL:
            log.warning("%s: refused: no ocpp2.0.1 subprotocol offered", station_id)
            await connection.close(1002, "subprotocol ocpp2.0.1 required")
            return
        if state.connection is not None:
            log.warning("%s: a second connection replaces the first", station_id)
            await state.connection.close(1000, "replaced by a new connection")
        link = StationLink(self, state, connection)
        state.link, state.connection = link, connection
        self.stats.connects += 1
        log.info("%s connected%s", station_id, " (booted before: profiles are sent again)" if state.booted else "")
        for evse in state.evses.values():
            evse.sent = None
        state.wake.set()
        sender = asyncio.create_task(self._sender(state, link), name=f"ocpp-send-{station_id}")
        try:
            await link.start()
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            if state.link is link:
                state.link, state.connection = None, None
                for evse in state.evses.values():
                    evse.sent = None
            log.warning("%s disconnected: assumed at its max profile or last TxProfile until it returns", station_id)

    # -- station events ---------------------------------------------------------------------------

    def after_boot(self, state: StationState) -> None:
        """Accepted boot: (re)send the max profile, the meter-value interval and every TxProfile."""
        for evse in state.evses.values():
            evse.sent = None
        state.wake.set()

    def token_info(self, token: str) -> datatypes.IdTokenInfoType:
        user = self.tokens.get(token)
        accepted = user is not None or self.config.unknown_id_tokens == "accept"
        status = enums.AuthorizationStatusEnumType.accepted if accepted else enums.AuthorizationStatusEnumType.unknown
        return datatypes.IdTokenInfoType(status=status, charging_priority=None)

    def transaction_event(
        self,
        state: StationState,
        event_type: str,
        ts: float,
        trigger_reason: str,
        seq_no: int,
        transaction_info: Mapping[str, Any],
        extra: Mapping[str, Any],
    ) -> datatypes.IdTokenInfoType | None:
        now = self.clock()
        state.last_seen_ts = now
        tx_id = str(transaction_info.get("transaction_id"))
        evse_info = extra.get("evse") or {}
        record = self.transactions.get(tx_id)
        evse_id = int(evse_info.get("id", record.evse_id if record else 0))
        evse = state.evses.get(evse_id)
        if evse is None:
            log.warning(
                "%s: TransactionEvent %s for unknown EVSE %d (tx %s)", state.spec.id, event_type, evse_id, tx_id
            )
            return None
        if record is None:
            record = TransactionRecord(tx_id, state.spec.id, evse_id, evse.spec.connector.id)
            self.transactions[tx_id] = record
            if len(self.transactions) > MAX_RECORDS:
                oldest = next((k for k, r in self.transactions.items() if r.ended_ts is not None), None)
                if oldest is not None:
                    del self.transactions[oldest]
        if record.seq_nos and seq_no in record.seq_nos:
            log.warning("%s: tx %s seqNo %d received twice", state.spec.id, tx_id, seq_no)
        elif record.seq_nos and seq_no != max(record.seq_nos) + 1:
            log.warning(
                "%s: tx %s seqNo %d after %d (gap or out of order)", state.spec.id, tx_id, seq_no, max(record.seq_nos)
            )
        record.seq_nos.append(seq_no)
        record.events += 1
        offline = bool(extra.get("offline"))
        record.offline_events += offline
        id_token = extra.get("id_token")
        token = str(id_token.get("id_token")) if isinstance(id_token, Mapping) else None
        if token:
            record.id_token = token
        charging_state = transaction_info.get("charging_state")
        meter_value = extra.get("meter_value")
        ended = event_type == "Ended"
        if event_type == "Started" and record.started_ts is None:
            record.started_ts = ts
        if ended:
            record.ended_ts = ts
            record.stopped_reason = transaction_info.get("stopped_reason")
        # An offline event replayed after a newer one must not roll the live state back.
        live = not offline or evse.transaction_id in (None, tx_id)
        if live and not (ended and evse.transaction_id not in (None, tx_id)):
            if ended:
                evse.transaction_id = None
                evse.charging_state = None
                evse.request = None
                evse.current_a, evse.power_w = (0.0, 0.0, 0.0), 0.0
            else:
                if evse.transaction_id != tx_id:
                    evse.transaction_id = tx_id
                    evse.start_register_wh = None
                    evse.sent = None
                    state.wake.set()
                if charging_state:
                    evse.charging_state = str(charging_state)
                if token:
                    evse.id_token = token
        if meter_value:
            sample = self._apply_sample(evse, meter_value, ts, live and not ended)
            if sample is not None:
                record.energy_wh = sample
        if ended and live:
            evse.id_token = None
        return self.token_info(token) if token else None

    def take_meter_values(self, state: StationState, evse: EvseState, meter_value: list[dict[str, Any]]) -> None:
        state.last_seen_ts = self.clock()
        self._apply_sample(evse, meter_value, self.clock(), True)

    def _apply_sample(self, evse: EvseState, meter_value: list[dict[str, Any]], ts: float, live: bool) -> float | None:
        sample = parse_meter_values(meter_value)
        if sample.ignored:
            log.debug("%s: ignored measurands %s", evse.spec.connector.id, sorted(set(sample.ignored)))
        session_wh: float | None = None
        if sample.energy_wh is not None:
            if evse.start_register_wh is None:
                evse.start_register_wh = sample.energy_wh
            session_wh = sample.energy_wh - evse.start_register_wh
        if not live:
            return session_wh
        phases = len(evse.spec.connector.phases) // 2
        currents = sample.currents(phases)
        if currents is not None:
            evse.current_a = currents
        if sample.power_w is not None:
            evse.power_w = sample.power_w
            if evse.spec.connector.type == "dc":
                per_phase = sample.power_w / (3 * self.site.site.nominal_voltage_v)
                evse.current_a = (per_phase, per_phase, per_phase)
        if sample.energy_wh is not None:
            evse.energy_register_wh = sample.energy_wh
        now = self.clock()
        evse.measured_ts = now
        settling = now < evse.lowered_ts + evse.spec.connector.response_delay_s
        evse.sampled_under = max(evse.sent or 0.0, evse.before_lowered) if settling else evse.sent
        return session_wh

    # -- the cycle ---------------------------------------------------------------------------------

    def refresh(self, snapshot: InputSnapshot, now: float) -> None:
        """Publish every OCPP connector's reading (before the freeze); see the module docstring."""
        max_age_s = 2 * self.config.tx_updated_interval_s + STALE_MARGIN_S
        for connector_id, (state, evse) in self.by_connector.items():
            if state.link is None or not state.booted:
                snapshot.connectors.pop(connector_id, None)
                snapshot.requests.pop(connector_id, None)
                continue
            letter = evse.letter()
            ts = now if letter != "C2" or now - evse.measured_ts <= max_age_s else evse.measured_ts
            charging = letter in ("C2", "B2") and evse.transaction_id is not None
            current_a, power_w = (evse.current_a, evse.power_w) if charging else ((0.0, 0.0, 0.0), 0.0)
            settled_ts = evse.lowered_ts + evse.spec.connector.response_delay_s
            if charging and evse.measured_ts < settled_ts and evse.sent is not None and self._obeyed(evse):
                current_a, power_w = self._lowered(evse, current_a, power_w, evse.sent)
            snapshot.connectors[connector_id] = ConnectorReading(
                letter,
                current_a,
                power_w,
                evse.session_wh(),
                evse.id_token,
                ts,
            )
            if evse.request is not None:
                snapshot.requests[connector_id] = evse.request
            else:
                snapshot.requests.pop(connector_id, None)

    def _obeyed(self, evse: EvseState) -> bool:
        """The last sample was within what the charger was allowed then: the station follows its profiles.

        One that overdrew keeps its sample as it is, so the controller goes on seeing the overdraw.
        """
        if evse.sampled_under is None:
            return True  # taken before the station had been told anything: nothing to overdraw
        tolerance_a = self.site.control.overdraw_tolerance_a
        if evse.unit == "W":
            return evse.power_w <= evse.sampled_under + tolerance_a * 3 * self.site.site.nominal_voltage_v
        return max(evse.current_a) <= evse.sampled_under + tolerance_a

    def _lowered(
        self, evse: EvseState, current_a: tuple[float, float, float], power_w: float, limit: float
    ) -> tuple[tuple[float, float, float], float]:
        """A sample from before a decrease had settled, capped at the new limit.

        Meter values come every TxUpdatedInterval; until one arrives that was taken after the decrease and
        the charger's response delay, the old, higher current would make a metered node's uncontrolled
        load (meter minus what the chargers draw) look smaller than it is, and the charger look like it
        overdraws. Capping it errs the other way: that load looks larger while the charger comes down.
        A charger that does not come down shows in its next sample; one that overdrew is not capped
        (see ``_obeyed``).
        """
        if evse.unit == "W":
            power_w = min(power_w, limit)
            per_phase = power_w / (3 * self.site.site.nominal_voltage_v)
            return (per_phase, per_phase, per_phase), power_w
        capped = (min(current_a[0], limit), min(current_a[1], limit), min(current_a[2], limit))
        scale = sum(capped) / sum(current_a) if sum(current_a) > 0 else 0.0
        return capped, power_w * scale

    def hand_over(self, output: CycleOutput) -> None:
        """Take the cycle's setpoints; senders wake for what must go out."""
        self.ready = True
        for setpoint in output.setpoints:
            pair = self.by_connector.get(setpoint.connector)
            if pair is None:
                continue
            state, evse = pair
            if evse.unit == "W":
                wanted = 0.0 if setpoint.paused or setpoint.power_w is None else math.floor(setpoint.power_w)
            else:
                wanted = 0.0 if setpoint.paused else math.floor(setpoint.current_a * 10 + 1e-6) / 10
            evse.wanted = wanted
            if self._due(evse, self.clock()):
                state.wake.set()

    def _due(self, evse: EvseState, now: float) -> bool:
        if evse.transaction_id is None:
            return False
        if evse.sent is None:
            return True
        if evse.wanted < evse.sent:
            return True
        deadband = self.config.profile_deadband_a * (3 * self.site.site.nominal_voltage_v if evse.unit == "W" else 1.0)
        return evse.wanted - evse.sent >= deadband and now - evse.sent_ts >= self.config.profile_min_interval_s

    async def _sender(self, state: StationState, link: StationLink) -> None:
        """Per connection: after boot the max profile and interval, then every due TxProfile, newest value."""
        configured = False
        if not state.booted:
            self._later(state, BOOT_GRACE_S)
        connected_ts = self.clock()
        while True:
            await state.wake.wait()
            state.wake.clear()
            if not state.booted:
                if self.ready and self.clock() - connected_ts >= BOOT_GRACE_S:
                    # Connected (perhaps after a CSMS restart) but silent about its boot: ask for it.
                    trigger = call.TriggerMessage(requested_message=enums.MessageTriggerEnumType.boot_notification)
                    await self._call(state, link, trigger)
                    connected_ts = self.clock()
                    self._later(state, BOOT_GRACE_S)
                continue
            if not configured:
                configured = await self._configure(state, link)
            now = self.clock()
            for evse in state.evses.values():
                if self._due(evse, now):
                    await self._send_tx_profile(state, link, evse)
            if self.config.verify_interval_s > 0 and now - state.verified_ts >= self.config.verify_interval_s:
                state.verified_ts = now
                if not await self._verify(state, link):
                    configured = False  # it lost its profiles (a restart?): the max and default ones too
                    state.wake.set()
                self._later(state, self.config.verify_interval_s)
            # Increases held back by the rate limit: look again when they may go.
            if any(e.transaction_id and e.sent is not None and e.wanted > e.sent for e in state.evses.values()):
                self._later(state, self.config.profile_min_interval_s)

    async def _verify(self, state: StationState, link: StationLink) -> bool:
        """GetCompositeSchedule per EVSE with a transaction; False if one applies other than it was told.

        Such an EVSE gets its TxProfile again (and the caller re-sends the station's max and default profiles).
        """
        matches = True
        for evse in state.evses.values():
            if evse.transaction_id is None or evse.sent is None:
                continue
            result = await self._composite(state, link, evse, 60)
            if result is None or result.status != "Accepted" or not result.schedule:
                continue
            periods = result.schedule.get("charging_schedule_period") or []
            applied = periods[0].get("limit") if periods else None
            tolerance = VERIFY_TOLERANCE * (3 * self.site.site.nominal_voltage_v if evse.unit == "W" else 1.0)
            if isinstance(applied, int | float) and abs(applied - evse.sent) > tolerance:
                matches = False
                state.mismatches += 1
                log.warning(
                    "%s EVSE %d applies %g %s, told %g: its profiles are sent again",
                    state.spec.id,
                    evse.spec.evse_id,
                    applied,
                    evse.unit,
                    evse.sent,
                )
                evse.sent = None
        return matches

    def _later(self, state: StationState, delay_s: float) -> None:
        """Wake the station's sender after ``delay_s``."""
        loop = asyncio.get_running_loop()
        loop.call_later(delay_s, state.wake.set)

    async def _call(self, state: StationState, link: StationLink, payload: Any) -> Any | None:
        """One call with the configured timeout; a CallError or a timeout is logged and counted."""
        state.calls += 1
        name = type(payload).__name__
        try:
            return await link.call(payload, suppress=False)
        except TimeoutError:
            state.timeouts += 1
            log.warning("%s: %s: no answer within %.0f s", state.spec.id, name, self.config.call_timeout_s)
        except OCPPError as error:
            state.call_errors += 1
            log.warning("%s: %s answered CallError %s: %s", state.spec.id, name, error.code, error.description)
        except ConnectionClosed:
            log.info("%s: %s not sent, connection closed", state.spec.id, name)
        return None

    async def _configure(self, state: StationState, link: StationLink) -> bool:
        interval = call.SetVariables(
            set_variable_data=[
                datatypes.SetVariableDataType(
                    attribute_value=str(self.config.tx_updated_interval_s),
                    component=datatypes.ComponentType(name="SampledDataCtrlr"),
                    variable=datatypes.VariableType(name="TxUpdatedInterval"),
                )
            ]
        )
        await self._call(state, link, interval)
        await self._set_station_profile(
            state,
            link,
            MAX_PROFILE_ID,
            enums.ChargingProfilePurposeEnumType.charging_station_max_profile,
            state.spec.max_current_a,
        )
        await self._set_station_profile(
            state,
            link,
            TX_DEFAULT_PROFILE_ID,
            enums.ChargingProfilePurposeEnumType.tx_default_profile,
            self.config.tx_default_current_a,
        )
        return True

    async def _set_station_profile(
        self, state: StationState, link: StationLink, profile_id: int, purpose: str, limit_a: float
    ) -> None:
        """A station-wide profile on EVSE 0 in A: the max profile (absolute, from now) or the TxDefault (relative)."""
        absolute = purpose == enums.ChargingProfilePurposeEnumType.charging_station_max_profile
        profile = datatypes.ChargingProfileType(
            id=profile_id,
            stack_level=0,
            charging_profile_purpose=purpose,
            charging_profile_kind=(
                enums.ChargingProfileKindEnumType.absolute if absolute else enums.ChargingProfileKindEnumType.relative
            ),
            charging_schedule=[
                datatypes.ChargingScheduleType(
                    id=profile_id,
                    start_schedule=_iso(self.clock()) if absolute else None,
                    charging_rate_unit=enums.ChargingRateUnitEnumType.amps,
                    charging_schedule_period=[datatypes.ChargingSchedulePeriodType(start_period=0, limit=limit_a)],
                )
            ],
        )
        result = await self._call(state, link, call.SetChargingProfile(evse_id=0, charging_profile=profile))
        if result is not None and result.status != "Accepted":
            log.warning("%s: %s %s", state.spec.id, purpose, result.status)

    async def _send_tx_profile(self, state: StationState, link: StationLink, evse: EvseState) -> None:
        limit = evse.wanted
        tx_id = evse.transaction_id
        if tx_id is None:
            return
        unit = enums.ChargingRateUnitEnumType.watts if evse.unit == "W" else enums.ChargingRateUnitEnumType.amps
        profile = datatypes.ChargingProfileType(
            id=100 + evse.spec.evse_id,
            stack_level=TX_PROFILE_STACK_LEVEL,
            charging_profile_purpose=enums.ChargingProfilePurposeEnumType.tx_profile,
            charging_profile_kind=enums.ChargingProfileKindEnumType.relative,
            transaction_id=tx_id,
            charging_schedule=[
                datatypes.ChargingScheduleType(
                    id=100 + evse.spec.evse_id,
                    charging_rate_unit=unit,
                    charging_schedule_period=[datatypes.ChargingSchedulePeriodType(start_period=0, limit=limit)],
                )
            ],
        )
        sent_ts = self.clock()
        result = await self._call(
            state, link, call.SetChargingProfile(evse_id=evse.spec.evse_id, charging_profile=profile)
        )
        if result is None:
            return
        if result.status == "Accepted":
            if evse.sent is not None and limit < evse.sent:
                evse.lowered_ts, evse.before_lowered = sent_ts, evse.sent
            evse.sent, evse.sent_ts = limit, sent_ts
        else:
            log.warning(
                "%s EVSE %d: TxProfile %g %s %s", state.spec.id, evse.spec.evse_id, limit, evse.unit, result.status
            )

    async def _composite(self, state: StationState, link: StationLink, evse: EvseState, duration_s: int) -> Any:
        unit = enums.ChargingRateUnitEnumType.watts if evse.unit == "W" else enums.ChargingRateUnitEnumType.amps
        request = call.GetCompositeSchedule(duration=duration_s, evse_id=evse.spec.evse_id, charging_rate_unit=unit)
        return await self._call(state, link, request)

    # -- operations (operator, OPC UA, cloud) -------------------------------------------------------

    async def request(self, station_id: str, payload: Any) -> Any | None:
        """Send one call to a connected station: its result, or None (not connected, CallError, timeout).

        A result whose status is not Accepted is logged and counted as rejected.
        """
        state = self.stations.get(station_id)
        if state is None:
            raise KeyError(f"unknown OCPP station {station_id!r}")
        if state.link is None:
            log.warning("%s: %s not sent: the station is not connected", station_id, type(payload).__name__)
            return None
        result = await self._call(state, state.link, payload)
        status = getattr(result, "status", None)
        if status is not None and status != "Accepted":
            state.rejected += 1
            log.warning("%s: %s answered %s", station_id, type(payload).__name__, status)
        return result

    async def composite_schedule(self, station_id: str, evse_id: int, duration_s: int = 60) -> Any | None:
        """Ask the station what it applies (GetCompositeSchedule), to verify the profiles."""
        state = self.stations[station_id]
        if state.link is None:
            return None
        return await self._composite(state, state.link, state.evses[evse_id], duration_s)

    async def clear_tx_profile(self, station_id: str, evse_id: int) -> Any | None:
        """ClearChargingProfile of the controller's TxProfile on one EVSE (the station falls back to its default)."""
        result = await self.request(station_id, call.ClearChargingProfile(charging_profile_id=100 + evse_id))
        if result is not None:
            self.stations[station_id].evses[evse_id].sent = None
        return result

    async def request_start(self, station_id: str, evse_id: int, id_token: str, remote_start_id: int) -> Any | None:
        token = datatypes.IdTokenType(id_token=id_token, type=enums.IdTokenEnumType.central)
        payload = call.RequestStartTransaction(id_token=token, remote_start_id=remote_start_id, evse_id=evse_id)
        return await self.request(station_id, payload)

    async def request_stop(self, station_id: str, transaction_id: str) -> Any | None:
        return await self.request(station_id, call.RequestStopTransaction(transaction_id=transaction_id))

    async def change_availability(self, station_id: str, evse_id: int, operative: bool) -> Any | None:
        """ChangeAvailability of one EVSE (0: the whole station)."""
        status = enums.OperationalStatusEnumType.operative if operative else enums.OperationalStatusEnumType.inoperative
        evse = datatypes.EVSEType(id=evse_id) if evse_id else None
        return await self.request(station_id, call.ChangeAvailability(operational_status=status, evse=evse))

    async def get_variables(self, station_id: str, variables: list[tuple[str, str]]) -> dict[str, str | None]:
        """GetVariables: ``{"Component.Variable": value or None}`` for each (component, variable)."""
        data = [
            datatypes.GetVariableDataType(
                component=datatypes.ComponentType(name=c), variable=datatypes.VariableType(name=v)
            )
            for c, v in variables
        ]
        result = await self.request(station_id, call.GetVariables(get_variable_data=data))
        values: dict[str, str | None] = {f"{c}.{v}": None for c, v in variables}
        for item in result.get_variable_result if result is not None else []:
            key = f"{item['component']['name']}.{item['variable']['name']}"
            values[key] = item.get("attribute_value") if item.get("attribute_status") == "Accepted" else None
        return values

    async def trigger_message(self, station_id: str, message: str, evse_id: int | None = None) -> Any | None:
        evse = datatypes.EVSEType(id=evse_id) if evse_id else None
        payload = call.TriggerMessage(requested_message=enums.MessageTriggerEnumType(message), evse=evse)
        return await self.request(station_id, payload)

    async def reset(self, station_id: str, immediate: bool = False) -> Any | None:
        """Reset: OnIdle waits for the station's transactions to end, Immediate does not."""
        kind = enums.ResetEnumType.immediate if immediate else enums.ResetEnumType.on_idle
        return await self.request(station_id, call.Reset(type=kind))

    def report(self) -> dict[str, Any]:
        """Per-station counters, TransactionEvent response times and the transaction records (for --stats-json)."""
        times = sorted(self.stats.transaction_event_response_s)
        return {
            "connects": self.stats.connects,
            "refused": self.stats.refused,
            "bad_frames": self.stats.bad_frames,
            "unknown_actions": self.stats.unknown_actions,
            "transaction_events": len(times),
            "transaction_event_response_p50_ms": _percentile_ms(times, 0.50),
            "transaction_event_response_p99_ms": _percentile_ms(times, 0.99),
            "stations": {
                sid: {
                    "connected": s.link is not None,
                    "booted": s.booted,
                    "calls": s.calls,
                    "errors": s.call_errors,
                    "timeouts": s.timeouts,
                    "rejected": s.rejected,
                    "mismatches": s.mismatches,
                    "last_seen": _iso(s.last_seen_ts) if math.isfinite(s.last_seen_ts) else None,
                    "evses": {
                        str(evse_id): {
                            "connector": e.spec.connector.id,
                            "status": e.status,
                            "state": e.letter(),
                            "transaction_id": e.transaction_id,
                            "id_token": e.id_token,
                            "limit": e.sent,
                            "unit": e.unit,
                        }
                        for evse_id, e in s.evses.items()
                    },
                }
                for sid, s in self.stations.items()
            },
            "transactions": {
                tx_id: {
                    "station": r.station,
                    "connector": r.connector,
                    "id_token": r.id_token,
                    "events": r.events,
                    "distinct_events": len(set(r.seq_nos)),
                    "offline_events": r.offline_events,
                    "complete": r.complete,
                    "ended": r.ended_ts is not None,
                    "energy_wh": r.energy_wh,
                    "stopped_reason": r.stopped_reason,
                }
                for tx_id, r in self.transactions.items()
            },
        }


def _percentile_ms(sorted_s: list[float], q: float) -> float | None:
    if not sorted_s:
        return None
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000.0, 3)


def _peer_common_name(connection: ServerConnection) -> str | None:
    """The CN of the client certificate of a TLS connection (verified by the SSL context), else None."""
    transport = connection.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _basic_password(headers: Headers, station_id: str) -> str | None:
    """The password of an ``Authorization: Basic`` header whose user is the station id, else None."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not hmac.compare_digest(user, station_id):
        return None
    return password
