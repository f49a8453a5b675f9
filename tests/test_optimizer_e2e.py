"""End to end: mosquitto (TLS, passwords, ACL) + two ``plaza-ems optimizer`` processes + two controllers.

Each controller (``plaza-ems run --scenario``, its plaza in-process) sends a site snapshot every 2 s;
the optimisers share them through ``$share/optimizers/…``. A test subscriber sees everything: every
snapshot answered by exactly one plan, both optimisers serving, the controllers acking the plans and
following them (telemetry: intent from the plan, setpoints at most the plan's targets, and on them where
protection leaves room). Then one optimiser is killed (SIGKILL by PID) and the other answers every new
snapshot of both sites. Bounded in time; every process stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gmqtt
import pytest
import yaml

from hil.broker import MOSQUITTO, SKIP_REASON, USERS, Broker
from hil.pki import client_context
from tests.hil_harness import stop_process
from tests.test_mqtt_link import synchronous

ROOT = Path(__file__).resolve().parent.parent
SITES = ("plaza-a", "plaza-b")
OPTIMIZERS = ("optimizer-1", "optimizer-2")
SNAPSHOT_S = 2.0
KILL_WINDOW_S = 3.0
"""Snapshots sent around the kill may be lost with the killed process (the next one replaces them)."""

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]


def write_controller(tmp_path: Path, broker: Broker, site_id: str) -> Path:
    site = yaml.safe_load((ROOT / "examples" / "sites" / "small.site.yaml").read_text(encoding="utf-8"))
    site["site"]["id"] = site_id
    site["control"] = {"target_switch_s": 1.0}
    site["mqtt"] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": {"ca_file": str(broker.pki.ca.cert)},
        "username": "site",
        "password": USERS["site"],
        "backoff_first_s": 0.2,
        "backoff_cap_s": 1.0,
        "telemetry_interval_s": 1.0,
        "snapshot_interval_s": SNAPSHOT_S,
        "snapshot_debounce_s": 1.0,
    }
    site_path = tmp_path / f"{site_id}.site.yaml"
    site_path.write_text(yaml.safe_dump(site), encoding="utf-8")
    sessions = [
        {"connector": "cp1-1", "arrive_s": 0, "depart_s": 5400, "energy_kwh": 30},
        {"connector": "cp1-2", "arrive_s": 0, "depart_s": 7200, "energy_kwh": 8},
        {"connector": "cp2-1", "arrive_s": 0, "depart_s": 3600, "energy_kwh": 20},
        {"connector": "dc1-1", "arrive_s": 0, "depart_s": 2400, "energy_kwh": 40},
    ]
    scenario = {
        "name": f"optimizer-e2e-{site_id}",
        "site": str(site_path),
        "start": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": 3600,
        "evs": {"sessions": sessions},
    }
    path = tmp_path / f"{site_id}.scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    return path


def write_optimizer(tmp_path: Path, broker: Broker, name: str) -> Path:
    password = tmp_path / "optimizer.pass"
    password.write_text(USERS["optimizer"] + "\n", encoding="utf-8")
    config = {
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "tls": {"ca_file": str(broker.pki.ca.cert)},
            "username": "optimizer",
            "password_file": str(password),
            "client_id": name,
            "backoff_first_s": 0.2,
            "backoff_cap_s": 1.0,
        },
        "share_group": "optimizers",
        "horizon_h": 6,
        "step_min": 15,
        "stats_interval_s": 5,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def plaza_ems(tmp_path: Path, log_name: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plaza_ems.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp_path / log_name).open("wb"),
    )


class Observer:
    """Subscribes to every site's topics as the cloud; records (arrival time, topic kind, site, message)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.seen: list[tuple[float, str, str, dict[str, Any]]] = []
        self.client = gmqtt.Client("e2e-observer")
        self.client.set_auth_credentials("cloud", USERS["cloud"])
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        parts = topic.split("/", 4)
        self.seen.append((time.monotonic(), parts[4], parts[2], json.loads(payload)))
        return 0

    def of(self, kind: str, site: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        return [m for t, k, s, m in self.seen if k == kind and (site is None or s == site) and t >= since]

    def arrived(self, kind: str) -> list[tuple[float, str, dict[str, Any]]]:
        return [(t, s, m) for t, k, s, m in self.seen if k == kind]


@contextlib.asynccontextmanager
async def observing(broker: Broker) -> AsyncIterator[Observer]:
    observer = Observer(broker)
    await observer.client.connect("127.0.0.1", broker.port, ssl=client_context(broker.pki))
    observer.client.subscribe("plaza/v1/#", qos=1)
    try:
        yield observer
    finally:
        with contextlib.suppress(Exception):
            await observer.client.disconnect()


async def wait_until(predicate: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def answers(observer: Observer) -> dict[str, list[str]]:
    """Snapshot id -> the optimisers whose plans answer it (from the accepted snapshot acks)."""
    out: dict[str, list[str]] = {}
    for ack in observer.of("snapshot/ack"):
        if ack["accepted"]:
            out.setdefault(ack["snapshot_id"], []).append(ack["optimizer"])
    return out


@synchronous
async def test_two_optimizers_share_the_sites_and_one_survives_the_other(tmp_path: Path) -> None:
    broker = Broker.start(tmp_path / "broker")
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        async with asyncio.timeout(90), observing(broker) as observer:
            for name in OPTIMIZERS:
                config = write_optimizer(tmp_path, broker, name)
                processes[name] = await plaza_ems(tmp_path, f"{name}.log", "optimizer", "--config", str(config))
            # The controllers start once both are subscribed: a snapshot no one subscribes to is lost.
            for name in OPTIMIZERS:
                log = tmp_path / f"{name}.log"
                await wait_until(lambda log=log: "share group" in log.read_text(encoding="utf-8"), f"{log.name}", 30)
            await asyncio.sleep(0.5)
            for site in SITES:
                scenario = write_controller(tmp_path, broker, site)
                state = tmp_path / f"state-{site}"
                processes[site] = await plaza_ems(
                    tmp_path, f"{site}.log", "run", "--scenario", str(scenario), "--state-dir", str(state)
                )

            # -- both optimisers serving both sites
            def both_serve() -> bool:
                served = {o for optimizers in answers(observer).values() for o in optimizers}
                per_site = [len(observer.of("plan", site)) >= 4 for site in SITES]
                return served == set(OPTIMIZERS) and all(per_site)

            await wait_until(both_serve, "plans for both sites from both optimisers", 45)
            await asyncio.sleep(2 * SNAPSHOT_S)
            check_plans_followed(observer)

            # -- one optimiser killed: the other serves every site
            victim, survivor = OPTIMIZERS
            os.kill(processes[victim].pid, signal.SIGKILL)
            await processes[victim].wait()
            killed_at = time.monotonic()
            await asyncio.sleep(KILL_WINDOW_S + 4 * SNAPSHOT_S)
            after = [(s, m["id"]) for t, s, m in observer.arrived("snapshot") if t > killed_at + KILL_WINDOW_S]
            await asyncio.sleep(1.5)  # the last ones' plans
            answered = answers(observer)
            late = [snapshot_id for _, snapshot_id in after]
            assert {s for s, _ in after} == set(SITES)
            assert all(answered.get(snapshot_id) == [survivor] for snapshot_id in late[:-2]), [
                (snapshot_id, answered.get(snapshot_id)) for snapshot_id in late
            ]

            check_each_snapshot_solved_once(observer, killed_at)
            assert processes[survivor].returncode is None
    finally:
        for process in processes.values():
            await stop_process(process)
        broker.kill()
    # The survivor stopped cleanly on SIGTERM and logged its figures.
    text = (tmp_path / f"{OPTIMIZERS[1]}.log").read_text(encoding="utf-8")
    assert "stopped: connected=" in text
    assert "solved=" in text


def check_plans_followed(observer: Observer) -> None:
    """The controllers ack the plans accepted and follow them: intent from the plan, setpoints at most the targets."""
    for site in SITES:
        plan_ids = {p["id"] for p in observer.of("plan", site)}
        acks = [a for a in observer.of("ack", site) if a["id"] in plan_ids]
        assert acks, site
        assert all(a["accepted"] for a in acks), acks
        recent = observer.of("telemetry", site)[-3:]
        assert recent
        assert all(t["intent_source"] == "plan" for t in recent), [t["intent_source"] for t in recent]
        assert all(t["intent_reference"] in plan_ids for t in recent)
        followed = 0
        for telemetry in recent:
            for connector, c in telemetry["connectors"].items():
                if c["target_a"] is None:
                    continue
                # Protection and the ramp may give less than the plan, never more.
                assert c["setpoint_a"] <= c["target_a"] + 0.5, (site, connector, c)
                followed += abs(c["setpoint_a"] - c["target_a"]) <= 0.5 and c["target_a"] > 0
        assert followed >= 1, (
            site,
            [(k, c["target_a"], c["setpoint_a"], c["state"]) for k, c in recent[-1]["connectors"].items()],
        )


def check_each_snapshot_solved_once(observer: Observer, killed_at: float) -> None:
    plans_by_snapshot: dict[str, int] = {}
    for plan in observer.of("plan"):
        plans_by_snapshot[plan["snapshot_id"]] = plans_by_snapshot.get(plan["snapshot_id"], 0) + 1
    assert all(n == 1 for n in plans_by_snapshot.values()), plans_by_snapshot
    refused = {a["snapshot_id"] for a in observer.of("snapshot/ack") if not a["accepted"]}
    last = max(t for t, _, _ in observer.arrived("snapshot"))
    for t, site, snapshot in observer.arrived("snapshot"):
        near_kill = abs(t - killed_at) <= KILL_WINDOW_S
        if t >= last - 1.0 or near_kill:
            continue
        assert snapshot["id"] in plans_by_snapshot or snapshot["id"] in refused, (site, snapshot["id"])
    assert not refused & set(plans_by_snapshot)
