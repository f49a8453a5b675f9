"""The optimiser service against a real mosquitto (TLS, passwords, ACL): bad snapshots, good ones, dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gmqtt
import pytest

from drivers.mqtt.config import MqttTlsConfig
from hil.broker import MOSQUITTO, SKIP_REASON, USERS, Broker
from hil.pki import client_context
from mpc.service import BrokerConfig, OptimizerConfig, OptimizerService
from tests.test_mqtt_link import synchronous, until
from tests.test_optimizer import site_of, snapshot_of

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)

BASE = "plaza/v1/small/main"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker.start(tmp_path / "broker")
    try:
        yield broker
    finally:
        broker.kill()


def optimizer_config(broker: Broker, **kwargs: Any) -> OptimizerConfig:
    return OptimizerConfig(
        broker=BrokerConfig(
            host="127.0.0.1",
            port=broker.port,
            tls=MqttTlsConfig(ca_file=str(broker.pki.ca.cert)),
            username="optimizer",
            password=USERS["optimizer"],
            client_id="optimizer-test",
            backoff_first_s=0.2,
            backoff_cap_s=1.0,
        ),
        horizon_h=4.0,
        **kwargs,
    )


class Watcher:
    """A client that records plans and snapshot acks; ``user`` publishes (``site`` sends snapshots)."""

    def __init__(self, broker: Broker, user: str) -> None:
        self.broker = broker
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.client = gmqtt.Client(f"{user}-watcher")
        self.client.set_auth_credentials(user, USERS[user])
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        with contextlib.suppress(ValueError):  # it also sees the malformed snapshots the tests send
            self.received.append((topic, json.loads(payload)))
        return 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for t, m in self.received if t == f"{BASE}/{kind}"]


@contextlib.asynccontextmanager
async def client(broker: Broker, user: str, subscribe: str | None = None) -> AsyncIterator[Watcher]:
    watcher = Watcher(broker, user)
    await watcher.client.connect("127.0.0.1", broker.port, ssl=client_context(broker.pki))
    if subscribe is not None:
        watcher.client.subscribe(subscribe, qos=1)
    try:
        yield watcher
    finally:
        with contextlib.suppress(Exception):
            await watcher.client.disconnect()


@contextlib.asynccontextmanager
async def serving(service: OptimizerService) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: service.stats.connected)
        await asyncio.sleep(0.2)  # the SUBACK
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


def good_snapshot(snapshot_id: str) -> dict[str, Any]:
    from drivers.mqtt.messages import SnapshotSession

    now = time.time()
    session = SnapshotSession(
        started_ts=now - 300, energy_wh=1000, energy_target_wh=12_000, departure_ts=now + 7200, priority=1
    )
    return snapshot_of(site_of("small"), ts=now, sessions={"cp1-1": session}, snapshot_id=snapshot_id)


@synchronous
async def test_a_bad_snapshot_is_refused_and_the_next_good_one_answered(broker: Broker) -> None:
    service = OptimizerService(optimizer_config(broker), prices=None)
    async with asyncio.timeout(30), serving(service), client(broker, "cloud", f"{BASE}/#") as cloud:
        async with client(broker, "site") as site:
            site.client.publish(f"{BASE}/snapshot", b"{not json", qos=1)
            bad_schema = good_snapshot("s-bad-schema") | {"reason": "because"}
            site.client.publish(f"{BASE}/snapshot", json.dumps(bad_schema).encode(), qos=1)
            nonsense = good_snapshot("s-nonsense")
            nonsense["state"]["connectors"]["zz"] = None  # a connector the structure does not have
            site.client.publish(f"{BASE}/snapshot", json.dumps(nonsense).encode(), qos=1)
            # Sent at once, the good one would supersede it while it waits for the solver.
            await until(lambda: len(cloud.of("snapshot/ack")) >= 3)
            site.client.publish(f"{BASE}/snapshot", json.dumps(good_snapshot("s-good")).encode(), qos=1)
            await until(lambda: len(cloud.of("snapshot/ack")) >= 4)
        acks = {a["snapshot_id"]: a for a in cloud.of("snapshot/ack")}
        from drivers.mqtt.messages import validator

        for ack in acks.values():
            validator("snapshot-ack").validate(ack)
        assert acks[None]["accepted"] is False
        assert acks[None]["reason"].startswith("malformed JSON")
        assert acks["s-bad-schema"]["reason"].startswith("schema-invalid at reason")
        assert acks["s-nonsense"]["reason"] == "state.connectors: 'zz' is not in the structure"
        good = acks["s-good"]
        assert good["accepted"] is True
        assert good["plan_id"] == "p-s-good"
        assert good["solve_s"] > 0
        plans = cloud.of("plan")
        assert [p["snapshot_id"] for p in plans] == ["s-good"]
        validator("plan").validate(plans[0])
        assert service.report()["rejected"] == 3
        assert service.report()["solved"] == 1


@synchronous
async def test_no_snapshot_is_solved_twice(broker: Broker) -> None:
    service = OptimizerService(optimizer_config(broker, max_snapshot_age_s=30.0), prices=None)
    async with asyncio.timeout(30), serving(service), client(broker, "cloud", f"{BASE}/#") as cloud:
        async with client(broker, "site") as site, client(broker, "optimizer") as other:
            # Another optimiser has answered s-2 already: a redelivery of it is not solved here.
            other.client.publish(f"{BASE}/plan", json.dumps({"id": "p-s-2", "snapshot_id": "s-2"}).encode(), qos=1)
            await until(lambda: service.stats.plans_seen >= 1)
            for snapshot_id in ("s-1", "s-1", "s-2"):
                site.client.publish(f"{BASE}/snapshot", json.dumps(good_snapshot(snapshot_id)).encode(), qos=1)
            old = good_snapshot("s-old")
            old["created"] = "2020-01-01T00:00:00Z"
            site.client.publish(f"{BASE}/snapshot", json.dumps(old).encode(), qos=1)
            await until(lambda: service.report()["too_old"] >= 1 and service.report()["solved"] >= 1)
            await until(lambda: service.report()["duplicates"] >= 2)
            await asyncio.sleep(0.5)
        answered = [p["snapshot_id"] for p in cloud.of("plan") if p.get("schema")]
        assert answered == ["s-1"]
        report = service.report()
        assert report["solved"] == 1
        assert report["duplicates"] == 2
        assert report["too_old"] == 1
        old_ack = next(a for a in cloud.of("snapshot/ack") if a["snapshot_id"] == "s-old")
        assert old_ack["accepted"] is False
        assert old_ack["reason"].startswith("too old")


@synchronous
async def test_the_broker_acl_keeps_the_optimizer_to_its_topics(broker: Broker) -> None:
    """It may not publish commands: mosquitto drops them silently (MQTT v5 PUBACK 135 is not sent by 2.0)."""
    async with asyncio.timeout(20), client(broker, "cloud", f"{BASE}/#") as cloud, client(broker, "optimizer") as opt:
        opt.client.publish(f"{BASE}/cmd/priority", b'{"x": 1}', qos=1)
        opt.client.publish(f"{BASE}/snapshot/ack", b'{"probe": 1}', qos=1)
        await until(lambda: any(t.endswith("snapshot/ack") for t, _ in cloud.received))
        await asyncio.sleep(0.3)
        assert [t for t, _ in cloud.received] == [f"{BASE}/snapshot/ack"]
