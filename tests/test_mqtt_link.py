"""The cloud link against a real mosquitto broker: birth and will, plans and acks, bad input, outages."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import gmqtt
import pytest

from drivers.mqtt.config import MqttConfig, MqttTlsConfig, OutboxConfig
from drivers.mqtt.link import CloudLink
from drivers.mqtt.messages import Plan, SiteIds, session_event, validator
from hil.broker import MOSQUITTO, SKIP_REASON, USERS, Broker
from hil.pki import client_context

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)

SITE = SiteIds("s1", frozenset({"c1", "c2"}), frozenset({"bat"}), frozenset({"main"}), "main")
BASE = "plaza/v1/s1/main"
T0 = "2030-01-01T00:00:00Z"


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no async plugin), fixtures passed through."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker.start(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.kill()


def _config(broker: Broker, tmp_path: Path, password: str = "secret", **kwargs: Any) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        tls=MqttTlsConfig(ca_file=str(broker.pki.ca.cert)),
        username="site",
        password=password,
        backoff_first_s=0.2,
        backoff_cap_s=1.0,
        outbox=OutboxConfig(path=str(tmp_path / "outbox.sqlite")),
        **kwargs,
    )


class Cloud:
    """The cloud side: a gmqtt client that records what it receives, by topic."""

    def __init__(self, broker: Broker, persistent: bool = False, base: str = BASE, user: str = "cloud") -> None:
        self.broker = broker
        self.base = base
        self.received: list[tuple[str, dict[str, Any], bool]] = []
        self.arrived = asyncio.Event()
        # A persistent session (as the cloud's consumer has) gets what was published while it was away.
        session = {"clean_session": False, "session_expiry_interval": 3600} if persistent else {}
        self.client = gmqtt.Client(f"{user}-test", **session)
        self.client.set_auth_credentials(user, USERS[user])
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        self.received.append((topic, json.loads(payload), bool(properties.get("retain"))))
        self.arrived.set()
        return 0

    async def connect(self) -> None:
        await self.client.connect("127.0.0.1", self.broker.port, ssl=client_context(self.broker.pki))
        self.client.subscribe(f"{self.base}/#", qos=1)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for t, m, _ in self.received if t == f"{self.base}/{kind}"]

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        while len(self.of(kind)) < count:
            self.arrived.clear()
            await self.arrived.wait()
        return self.of(kind)

    def publish(self, kind: str, payload: bytes | dict[str, Any]) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.client.publish(f"{self.base}/{kind}", data, qos=1)


@contextlib.asynccontextmanager
async def running(link: CloudLink) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task


@contextlib.asynccontextmanager
async def cloud(broker: Broker, persistent: bool = False, user: str = "cloud") -> AsyncIterator[Cloud]:
    side = Cloud(broker, persistent, user=user)
    await side.connect()
    try:
        yield side
    finally:
        with contextlib.suppress(Exception):
            await side.client.disconnect()


async def until(predicate: Any) -> None:
    # Polls state the link updates from several callbacks; each test's asyncio.timeout bounds it.
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def plan(plan_id: str = "p1", **overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "schema": "plaza/v1/plan",
        "id": plan_id,
        "site": "s1",
        "created": T0,
        "valid_from": T0,
        "valid_to": "2030-01-01T01:00:00Z",
        "step_s": 900,
        "connectors": {"c1": [16.0, 10.0, None, 6.0]},
        "batteries": {"bat": [1000.0, 0.0, -2000.0, 0.0]},
    }
    message.update(overrides)
    return message


@synchronous
async def test_birth_is_retained_and_the_will_says_offline_when_the_process_is_killed(
    broker: Broker, tmp_path: Path
) -> None:
    config = _config(broker, tmp_path)
    script = f"""
import asyncio
from drivers.mqtt.config import MqttConfig
from drivers.mqtt.link import CloudLink
from drivers.mqtt.messages import SiteIds
config = MqttConfig.model_validate_json({config.model_dump_json()!r})
site = SiteIds("s1", frozenset(), frozenset(), frozenset({{"main"}}), None)
asyncio.run(CloudLink(config, site).run(asyncio.Event()))
"""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)  # noqa: ASYNC220
    try:
        async with asyncio.timeout(20):
            async with cloud(broker) as first:
                states = await first.wait_for("state")
            assert states[-1]["state"] == "online"
            validator("state").validate(states[-1])
            # A client that subscribes later still sees it: the birth is retained.
            async with cloud(broker) as late:
                await late.wait_for("state")
                assert late.received[0][2] is True
                assert late.of("state")[-1]["state"] == "online"
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                await until(lambda: late.of("state")[-1]["state"] == "offline")
            async with cloud(broker) as after:
                await after.wait_for("state")
                assert after.of("state")[-1]["state"] == "offline"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@synchronous
async def test_a_plan_reaches_the_queue_and_is_acked(broker: Broker, tmp_path: Path) -> None:
    link = CloudLink(_config(broker, tmp_path), SITE)
    async with asyncio.timeout(20), running(link), cloud(broker) as side:
        await until(lambda: link.connected)
        side.publish("plan", plan())
        received = await link.queue.get()
        assert isinstance(received.message, Plan)
        assert received.message.connectors["c1"] == (16.0, 10.0, None, 6.0)
        link.acknowledge(received.message.id, received.topic, accepted=True)
        acks = await side.wait_for("ack")
        assert acks[0]["id"] == "p1"
        assert acks[0]["accepted"] is True
        validator("ack").validate(acks[0])
        assert link.stats.accepted == 1
        assert link.stats.last_message_ts is not None
        # A redelivered plan (same id) is not queued twice.
        side.publish("plan", plan())
        await until(lambda: link.stats.duplicates == 1)
        assert link.queue.empty()


@synchronous
async def test_a_plan_from_a_client_the_broker_does_not_authorise_never_reaches_the_controller(
    broker: Broker, tmp_path: Path
) -> None:
    link = CloudLink(_config(broker, tmp_path), SITE)
    async with asyncio.timeout(20), running(link), cloud(broker, user="intruder") as intruder:
        await until(lambda: link.connected)
        intruder.publish("plan", plan("forged"))
        intruder.publish("cmd/departure", {"schema": "plaza/v1/cmd/departure", "id": "forged-cmd"})
        await asyncio.sleep(1.0)
        assert link.queue.empty()
        assert link.stats.accepted == link.stats.rejected == 0, "the broker's ACL dropped them"
        async with cloud(broker) as side:  # the cloud's own login gets through
            side.publish("plan", plan("real"))
            received = await link.queue.get()
            assert received.message.id == "real"


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("plan", b"{not json", "malformed JSON"),
        ("plan", json.dumps(plan(schema="plaza/v2/plan")).encode(), "unsupported schema version"),
        ("plan", json.dumps(plan(schema="plaza/v1/cmd/priority")).encode(), "wrong schema"),
        ("plan", b'{"schema": "plaza/v1/plan", "id": "big", "pad": "' + b"x" * 300_000 + b'"}', "payload too large"),
        (
            "plan",
            json.dumps(plan(connectors={"c1": [float("nan"), 1.0, 1.0, 1.0]})).encode(),
            "malformed JSON: NaN is not a number",
        ),
        ("plan", json.dumps(plan(site="other")).encode(), "plan for site 'other'"),
        (
            "plan",
            json.dumps(plan(connectors={"c1": [-5.0, 1.0, 1.0, 1.0]})).encode(),
            "schema-invalid at connectors/c1/0",
        ),
        ("plan", json.dumps(plan(connectors={"zz": [1.0, 1.0, 1.0, 1.0]})).encode(), "unknown connector 'zz'"),
        ("cmd/reboot", b"{}", "unknown topic"),
    ],
)
@synchronous
async def test_bad_messages_are_acked_as_rejected_and_the_link_stays_up(
    broker: Broker, tmp_path: Path, kind: str, payload: bytes, reason: str
) -> None:
    link = CloudLink(_config(broker, tmp_path), SITE)
    async with asyncio.timeout(20), running(link), cloud(broker) as side:
        await until(lambda: link.connected)
        side.publish(kind, payload)
        acks = await side.wait_for("ack")
        assert acks[0]["accepted"] is False
        assert reason in acks[0]["reason"], acks[0]["reason"]
        validator("ack").validate(acks[0])
        # Still up and serving: a good plan after the bad one gets through.
        side.publish("plan", plan("good"))
        received = await link.queue.get()
        assert received.message.id == "good"
        assert link.connected
        assert link.stats.connects == 1


@synchronous
async def test_a_wrong_password_is_logged_once_and_retried_with_back_off(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = CloudLink(_config(broker, tmp_path, password="wrong"), SITE)
    with caplog.at_level(logging.WARNING, logger="drivers.mqtt.link"):
        async with asyncio.timeout(20), running(link):
            await until(lambda: link.stats.connect_failures >= 3)
    assert not link.connected
    assert "CONNACK refused" in link.stats.last_error
    assert "Not authorized" in link.stats.last_error
    refused = [r for r in caplog.records if "CONNACK refused" in r.getMessage()]
    assert len(refused) == 1


@synchronous
async def test_an_untrusted_broker_certificate_is_a_clear_tls_error(broker: Broker, tmp_path: Path) -> None:
    config = _config(broker, tmp_path).model_copy(
        update={"tls": MqttTlsConfig(ca_file=str(broker.pki.foreign_ca.cert))}
    )
    link = CloudLink(config, SITE)
    async with asyncio.timeout(20), running(link):
        await until(lambda: link.stats.connect_failures >= 2)
    assert "TLS: CERTIFICATE_VERIFY_FAILED" in link.stats.last_error


@synchronous
async def test_session_events_from_an_outage_arrive_once_and_in_order(broker: Broker, tmp_path: Path) -> None:
    link = CloudLink(_config(broker, tmp_path), SITE)

    def event(i: int) -> dict[str, Any]:
        return session_event(
            link.topics, event_id=f"ev-{i}", ts=1.9e9 + i, event="update", session_id="s-1",
            connector="c1", id_token="TOKEN", energy_wh=100.0 * i,
        )  # fmt: skip

    async with asyncio.timeout(40), running(link):
        await until(lambda: link.connected)
        async with cloud(broker, persistent=True) as side:
            for i in range(5):
                link.send("session", event(i))
            await side.wait_for("sessions", 5)
            before = side.of("sessions")
            broker.stop()
            await until(lambda: not link.connected)
        for i in range(5, 25):
            link.send("session", event(i))
        # 20 new rows, plus any of the first five whose PUBACK the outage swallowed (sent again).
        assert len(link.outbox) >= 20
        broker.launch()
        await until(lambda: link.connected)
        await until(lambda: len(link.outbox) == 0)
        async with cloud(broker, persistent=True) as side:
            # Wait for every id, not for a count: replays of the first five may come first.
            wanted = {f"ev-{i}" for i in range(5, 25)}
            while not wanted <= {m["event_id"] for m in side.of("sessions")}:
                await side.wait_for("sessions", len(side.of("sessions")) + 1)
            after = side.of("sessions")
        # Replayed rows may come twice on the wire; the consumer keeps the first of each event_id.
        seen: dict[str, dict[str, Any]] = {}
        for message in before + after:
            seen.setdefault(message["event_id"], message)
        assert list(seen) == [f"ev-{i}" for i in range(25)]
        assert [m["energy_wh"] for m in seen.values()] == [100.0 * i for i in range(25)]
        assert link.stats.connects == 2
        validator("session").validate(seen["ev-5"])
