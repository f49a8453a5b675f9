"""The site's MQTT v5 link to the cloud (SPEC F19, R4): one persistent session, an outbox, plans in, acks out.

``CloudLink.run`` keeps one connection to the broker: TLS, username/password, ``clean_start=False``
with a session expiry, so plans and commands published while the site was away wait for it at the
broker. On connect it publishes the retained ``state`` birth (``online``; the last will says
``offline``), subscribes to ``plan`` and ``cmd/+`` at QoS 1, and replays the outbox in order. A lost
connection is retried with exponential back-off and jitter by the link itself: gmqtt's own reconnect
waits a fixed delay without jitter, so it is switched off (``NoReconnectClient.reconnect``). Nothing raises into
the caller: a refused CONNACK (wrong password), a TLS failure (bad certificate) or a dead broker is
logged once per change of reason and retried.

Inbound messages go through ``messages.parse_inbound``; a rejected one is acked with its reason at
once, an accepted one is put on ``queue`` for the controller, which acks it (``acknowledge``) once it
knows what it clamped. The PUBACK of an inbound message is sent after that (so an accepted message is
on the queue or its rejection in the outbox before the broker forgets it). Session events, alarms and
acks go through the SQLite outbox and leave it on PUBACK; telemetry goes out at QoS 0 while connected
and, thinned, through the outbox while not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.storage import PersistentStorage

from drivers.mqtt.config import MqttConfig
from drivers.mqtt.messages import (
    Clamp,
    Inbound,
    Rejected,
    SiteIds,
    Topics,
    ack_message,
    encode,
    parse_inbound,
    state_message,
)
from drivers.mqtt.outbox import Kind, Outbox

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 16
"""Outbox rows published and not yet PUBACKed; below mosquitto's default receive maximum of 20."""
SEEN_IDS = 1024
"""Ids of recent plans and commands: a redelivered one (QoS 1 DUP, a retained plan) is not queued twice."""
TOPIC_OF_KIND: Mapping[Kind, str] = {"session": "sessions", "alarm": "alarms", "ack": "ack", "telemetry": "telemetry"}


@dataclass(frozen=True, slots=True)
class Received:
    """An accepted plan or command for the controller."""

    topic: str
    message: Inbound
    received_ts: float


@dataclass(slots=True)
class LinkStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    last_error: str = ""
    connected_since_ts: float | None = None
    last_message_ts: float | None = None
    """When the last plan or command arrived (accepted or not)."""
    messages_in: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    published: int = 0
    delivered: int = 0
    """Outbox rows PUBACKed by the broker."""
    telemetry_sent: int = 0
    telemetry_stored: int = 0


class NoReconnectClient(gmqtt.Client):  # type: ignore[misc]  # gmqtt ships no type information
    async def reconnect(self, delay: bool = False) -> None:
        """gmqtt calls this after a lost connection; its owner reconnects itself (back-off with jitter)."""


class _Inflight(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged QoS 1 publishes, told which outbox row each packet id carries.

    ``Client.publish`` returns nothing, but stores the packet under its id right away; the row to map it
    to is set just before. A PUBACK removes the packet: that row is delivered.
    """

    def __init__(self, delivered: Callable[[int], None]) -> None:
        super().__init__()
        self.next_seq: int | None = None
        self._seq_by_mid: dict[int, int] = {}
        self._delivered = delivered

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if self.next_seq is not None:
            self._seq_by_mid[mid] = self.next_seq
            self.next_seq = None

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        seq = self._seq_by_mid.pop(mid, None)
        if seq is not None:
            self._delivered(seq)


class _LostError(Exception):
    """The connection went away (its reason is in the message)."""


class CloudLink:
    """One controller's connection to the cloud broker; ``run`` it as a task, feed it, read ``queue``."""

    def __init__(
        self,
        config: MqttConfig,
        site: SiteIds,
        *,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        software: str = "",
    ) -> None:
        self.config = config
        self.site = site
        self.topics = Topics(site.site, config.controller)
        # Not ``outbox or ...``: an empty Outbox is falsy (it has a length).
        self.outbox = (
            outbox
            if outbox is not None
            else Outbox(config.outbox.path, max_rows=config.outbox.max_rows, max_bytes=config.outbox.max_bytes)
        )
        self.clock = clock
        self.rng = rng or random.Random()
        self.software = software
        self.queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=config.inbound_queue_size)
        self.stats = LinkStats()
        self._client: NoReconnectClient | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._delivered: list[int] = []
        self._inflight: set[int] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._last_offline_telemetry_ts = -float("inf")
        self._logged_error = ""

    # -- what the controller calls -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.stats.connected

    def send(self, kind: Kind, message: Mapping[str, Any]) -> None:
        """Queue a session event, alarm or ack (with its ``event_id``) for delivery; survives restarts."""
        self.outbox.append(
            kind,
            self.topics.of(TOPIC_OF_KIND[kind]),
            encode(message),
            event_id=message["event_id"],
            created_ts=self.clock(),
        )
        self._wake.set()

    def acknowledge(
        self, message_id: str | None, topic: str, *, accepted: bool, reason: str = "", clamped: tuple[Clamp, ...] = ()
    ) -> None:
        """Answer a plan or command on ``ack``."""
        ack = ack_message(
            self.topics,
            event_id=uuid.uuid4().hex,
            ts=self.clock(),
            message_id=message_id,
            topic=topic,
            accepted=accepted,
            reason=reason,
            clamped=clamped,
        )
        self.send("ack", ack)

    def publish_telemetry(self, message: Mapping[str, Any]) -> None:
        """QoS 0 while connected; while not, one in ``outbox.telemetry_offline_interval_s`` is kept for later."""
        client = self._client
        if self.stats.connected and client is not None:
            client.publish(self.topics.of("telemetry"), encode(message), qos=0)
            self.stats.telemetry_sent += 1
            return
        now = self.clock()
        if now - self._last_offline_telemetry_ts < self.config.outbox.telemetry_offline_interval_s:
            return
        self._last_offline_telemetry_ts = now
        self.outbox.append(
            "telemetry", self.topics.of("telemetry"), encode(message), event_id=uuid.uuid4().hex, created_ts=now
        )
        self.stats.telemetry_stored += 1

    def publish_snapshot(self, message: Mapping[str, Any]) -> bool:
        """QoS 1, not retained, only while connected (False otherwise): a stale snapshot is useless.

        Not through the outbox: the next one, due within ``snapshot_interval_s``, replaces a lost one.
        """
        client = self._client
        if not self.stats.connected or client is None:
            return False
        client.publish(self.topics.of("snapshot"), encode(message), qos=1)
        return True

    # -- the connection ------------------------------------------------------------------------

    def backoff_s(self, failures: int) -> float:
        return self.config.backoff_s(failures, self.rng)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``; never raises (cancellation aside)."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    failures = 0
                except _LostError:
                    # Logged when it happened; the next attempt starts the back-off afresh.
                    failures = 1
                except Exception as err:  # every failure is retried; none may reach the cycle
                    failures += 1
                    self.stats.connect_failures += 1
                    self._failed(failure_reason(err))
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.backoff_s(max(1, failures)))
        finally:
            self.stats.connected = False
            self.outbox.delete(self._delivered)
            self._delivered.clear()

    def _failed(self, reason: str) -> None:
        self.stats.last_error = reason
        if reason != self._logged_error:
            log.warning("cloud link %s:%d: %s (retrying with back-off)", self.config.host, self.config.port, reason)
            self._logged_error = reason
        else:
            log.debug("cloud link: %s again", reason)

    def _tls(self) -> ssl.SSLContext | bool:
        return self.config.tls.context() if self.config.tls is not None else False

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: connect, birth, subscribe, then deliver the outbox until lost or stopped."""
        will = gmqtt.Message(
            self.topics.of("state"), encode(state_message(self.topics, self.clock(), "offline")), qos=1, retain=True
        )
        storage = _Inflight(self._on_delivered)
        client = NoReconnectClient(
            self.config.client_id_for(self.site.site),
            clean_session=False,
            optimistic_acknowledgement=False,
            will_message=will,
            persistent_storage=storage,
            session_expiry_interval=self.config.session_expiry_s,
            logger=logging.getLogger("drivers.mqtt.gmqtt"),
        )
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        if self.config.username is not None:
            client.set_auth_credentials(self.config.username, self.config.password_value())
        self._lost.clear()
        self._inflight.clear()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await client.connect(
                    self.config.host, self.config.port, ssl=self._tls(), keepalive=self.config.keepalive_s
                )
            self._client = client
            client.subscribe([gmqtt.Subscription(topic, qos=1) for topic in self.topics.subscriptions])
            online = state_message(self.topics, self.clock(), "online", self.software)
            client.publish(self.topics.of("state"), encode(online), qos=1, retain=True)
            self._connected()
            await self._deliver(client, storage, stop)
        finally:
            self._client = None
            self.outbox.delete(self._delivered)
            self._delivered.clear()
            if self.stats.connected:
                self.stats.connected = False
                log.warning("cloud link lost: %s", self._lost_reason or "stopped")
            await self._close(client, graceful=stop.is_set())

    def _connected(self) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        self.stats.connected_since_ts = self.clock()
        self.stats.last_error = ""
        self._logged_error = ""
        log.info(
            "cloud link connected to %s:%d as %s (%d message(s) to replay)",
            self.config.host,
            self.config.port,
            self.topics.base,
            len(self.outbox),
        )

    async def _deliver(self, client: NoReconnectClient, storage: _Inflight, stop: asyncio.Event) -> None:
        """Publish outbox rows in order, at most ``INFLIGHT_WINDOW`` unacknowledged, until lost or stopped."""
        cursor = 0
        while not stop.is_set():
            if self._lost.is_set() or not client.is_connected:
                raise _LostError(self._lost_reason or "connection closed")
            self.outbox.delete(self._delivered)
            self._delivered.clear()
            room = INFLIGHT_WINDOW - len(self._inflight)
            for row in self.outbox.pending(cursor, room) if room > 0 else ():
                storage.next_seq = row.seq
                client.publish(row.topic, row.payload, qos=row.qos)
                self._inflight.add(row.seq)
                self.stats.published += 1
                cursor = row.seq
            self._wake.clear()
            waiters = {asyncio.ensure_future(w.wait()) for w in (stop, self._wake, self._lost)}
            try:
                await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _close(self, client: NoReconnectClient, *, graceful: bool) -> None:
        if graceful and client.is_connected:
            # A clean DISCONNECT suppresses the will: say offline ourselves.
            offline = state_message(self.topics, self.clock(), "offline", self.software)
            client.publish(self.topics.of("state"), encode(offline), qos=1, retain=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.disconnect()

    def _on_delivered(self, seq: int) -> None:
        self._inflight.discard(seq)
        self._delivered.append(seq)
        self.stats.delivered += 1
        self._wake.set()

    def _on_disconnect(self, client: NoReconnectClient, packet: object, exc: BaseException | None = None) -> None:
        self._lost_reason = failure_reason(exc) if exc is not None else "broker closed the connection"
        self._lost.set()

    async def _on_message(
        self, client: NoReconnectClient, topic: str, payload: bytes, qos: int, properties: object
    ) -> int:
        """Every inbound PUBLISH; the return value is the PUBACK reason code (0: success)."""
        self.stats.messages_in += 1
        now = self.clock()
        self.stats.last_message_ts = now
        result = parse_inbound(
            topic, payload, topics=self.topics, site=self.site, max_payload_bytes=self.config.max_payload_bytes
        )
        if isinstance(result, Rejected):
            self._reject(topic, result.id, result.reason)
            return 0
        if result.id in self._seen:
            self.stats.duplicates += 1
            log.debug("cloud link: %s %s again, not queued twice", topic, result.id)
            return 0
        try:
            self.queue.put_nowait(Received(topic, result, now))
        except asyncio.QueueFull:
            self._reject(topic, result.id, f"controller busy: {self.queue.qsize()} messages not yet taken")
            return 0
        self._seen[result.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        self.stats.accepted += 1
        return 0

    def _reject(self, topic: str, message_id: str | None, reason: str) -> None:
        self.stats.rejected += 1
        log.warning("cloud link: rejected %s (id %s): %s", topic, message_id, reason)
        self.acknowledge(message_id, topic, accepted=False, reason=reason)


def failure_reason(err: BaseException) -> str:
    """A connection failure in one line, as it is logged and kept in the stats."""
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    if isinstance(err, gmqtt.MQTTConnectError):
        return f"CONNACK refused: {err}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
