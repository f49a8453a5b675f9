"""End to end: a real mosquitto (TLS, passwords), the HIL plaza, the controller as a process, a test cloud client.

The cloud sends a plan that asks 32 A on every connector of a sub-board that cannot carry it: the
controller follows it as far as local protection allows and the ack names what it clamped. Then the
broker is killed mid-session and restarted: within the plan's staleness time the controller drops the
plan for its local schedule, no node exceeds its limit at any moment, the session events of the outage
reach the cloud after the reconnection (once each by id), and a new plan takes over again without a
setpoint jump beyond the ramp and without pausing anyone. Bounded in time; every process stopped by PID.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.broker import MOSQUITTO, SKIP_REASON, Broker
from plaza_ems.hilrun import HilPlaza
from tests.hil_harness import start_controller, stop_process
from tests.test_mqtt_link import Cloud

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-small.site.yaml"
BASE = "plaza/v1/hil-small/main"
LIMITS_A = {"grid": 100.0, "sub-a": 63.0, "cp1": 32.0, "cp2": 32.0}
CONNECTORS = ("cp1-1", "cp1-2", "cp2-1", "cp2-2")
STALE_S = 3.0
SWITCH_S = 4.0
"""control.target_switch_s: the glide when intent changes source."""
PLAN_A = 10.0
"""What the later plans give cp1-1 (less than it would get without them)."""
RAMP_A_PER_S = 4.0  # the site's control.ramp_up_a_per_s default
PERIOD_S = 0.5

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def full_power_plan(plan_id: str, cp1_1_a: float = 32.0) -> dict[str, Any]:
    """32 A on every connector (cp1-1: ``cp1_1_a``) for an hour."""
    now = time.time()
    return {
        "schema": "plaza/v1/plan",
        "id": plan_id,
        "site": "hil-small",
        "created": iso(now),
        "valid_from": iso(now - 60),
        "valid_to": iso(now - 60 + 4 * 900),
        "step_s": 900,
        "connectors": {c: [cp1_1_a if c == "cp1-1" else 32.0] * 4 for c in CONNECTORS},
    }


def site_file(tmp_path: Path, broker: Broker) -> Path:
    site = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    site["control"] = {"target_switch_s": SWITCH_S}
    site["mqtt"] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": {"ca_file": str(broker.pki.ca.cert)},
        "username": "site",
        "password": "secret",
        "backoff_first_s": 0.2,
        "backoff_cap_s": 1.0,
        "telemetry_interval_s": 2.0,
        "plan_stale_after_s": STALE_S,
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site), encoding="utf-8")
    return path


def scenario_file(tmp_path: Path, site: Path) -> Path:
    ev = {"arrive_s": 0, "energy_kwh": 40}
    sessions = [{"connector": c, **ev, "depart_s": 600} for c in ("cp1-1", "cp1-2", "cp2-1")]
    # cp2-2: one EV leaves and the next arrives while the broker is down (from 16 s to 28 s).
    sessions += [
        {"connector": "cp2-2", **ev, "depart_s": 19},
        {"connector": "cp2-2", **ev, "arrive_s": 23, "depart_s": 600},
    ]
    document = {
        "name": "cloud-e2e",
        "site": str(site),
        "start": "2023-03-14T05:00:00Z",
        "duration_s": 600,
        "loads": {"workshop": {"constant_kw": 3}},
        "evs": {"sessions": sessions},
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_plans_outages_and_the_switch_back(tmp_path: Path) -> None:
    broker = Broker.start(tmp_path / "broker")
    site = site_file(tmp_path, broker)
    from hil.scenario import load_scenario

    plaza = HilPlaza(load_scenario(scenario_file(tmp_path, site)))
    worst: dict[str, float] = dict.fromkeys(LIMITS_A, -1e9)
    applied: list[tuple[float, tuple[float, ...]]] = []

    def watch() -> None:
        t_rel = plaza.clock() - plaza.scenario.start_s
        chargers = plaza.simulation.plant.chargers
        applied.append((t_rel, tuple(chargers[c].applied_a for c in CONNECTORS)))
        if t_rel < 4.0:
            return
        for node, limit in LIMITS_A.items():
            worst[node] = max(worst[node], max(plaza.simulation.plant.node_current_a[node]) - limit)

    async def run_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            plaza.tick()
            watch()
            await asyncio.sleep(0.05)

    def charger_a(connector: str) -> float:
        return plaza.simulation.plant.chargers[connector].applied_a

    async def run_until(t_rel: float) -> None:
        while plaza.clock() - plaza.scenario.start_s < t_rel:
            await run_for(0.05)

    async def main() -> dict[str, Any]:
        await plaza.start()
        process = await start_controller(site, tmp_path, "controller.log", stats=True)
        results: dict[str, Any] = {}
        try:
            async with asyncio.timeout(120):
                cloud = Cloud(broker, persistent=True, base=BASE)
                await cloud.connect()
                await run_for(6.0)
                cloud.publish("plan", full_power_plan("p1"))
                while not cloud.of("ack"):
                    await run_for(0.2)
                results["ack1"] = cloud.of("ack")[0]
                await run_until(16.0)
                results["switched_back_at"] = []
                # Two outages: the first while a session ends and the next starts on cp2-2.
                for plan_id, outage_s in (("p2", 12.0), ("p3", 8.0)):
                    await cloud.client.disconnect()
                    broker.kill()
                    await run_for(outage_s)
                    broker.launch()
                    cloud = Cloud(broker, persistent=True, base=BASE)
                    await cloud.connect()
                    await run_for(5.0)
                    results.setdefault("cp1_1_on_fallback_a", []).append(charger_a("cp1-1"))
                    cloud.publish("plan", full_power_plan(plan_id, cp1_1_a=PLAN_A))
                    while not any(a["id"] == plan_id for a in cloud.of("ack")):
                        await run_for(0.2)
                    results["switched_back_at"].append(plaza.clock() - plaza.scenario.start_s)
                    await run_for(SWITCH_S + 3.0)  # the glide down, the charger's response, a margin
                    results.setdefault("cp1_1_on_plan_a", []).append(charger_a("cp1-1"))
                    results.setdefault("sessions", []).extend(cloud.of("sessions"))
                    results.setdefault("acks", []).extend(cloud.of("ack"))
                await cloud.client.disconnect()
        finally:
            await stop_process(process)
            await plaza.stop()
            broker.stop()
        return results

    results = asyncio.run(main())
    log = (tmp_path / "controller.log").read_text(encoding="utf-8")
    # The plan is followed as far as local protection allows, and the ack says what was clamped.
    ack = results["ack1"]
    assert ack["id"] == "p1"
    assert ack["accepted"] is True
    assert {c["target"] for c in ack["clamped"]} <= set(CONNECTORS)
    assert ack["clamped"], "four times 32 A does not fit sub-a's 63 A"
    for node, excess in worst.items():
        assert excess <= 0.0, f"{node} over its limit by {excess:.2f} A"
    # The outage: the plan is dropped within its staleness time (plus a cycle), the fallback decides.
    assert log.count("no longer used, the local fallback schedule decides") == 2, "once per outage"
    # The session events produced while the broker was down arrive after the reconnection, once by id.
    ids = [m["event_id"] for m in results["sessions"]]
    stops = [m for m in results["sessions"] if m["connector"] == "cp2-2" and m["event"] == "stop"]
    starts = [m for m in results["sessions"] if m["connector"] == "cp2-2" and m["event"] == "start"]
    assert len(set(ids)) == len({m["event_id"] for m in results["sessions"]})
    assert len({m["event_id"] for m in stops}) == 1, "the departure during the outage"
    assert len({m["event_id"] for m in starts}) >= 1, "the arrival during the outage"
    # Back on a plan: nobody paused by a switch, no increase faster than the ramp.
    for (t0, a0), (_, a1) in itertools.pairwise(applied):
        for k, (before, after) in enumerate(zip(a0, a1, strict=True)):
            # A start goes to the minimum current at once; a running session rises by the ramp per cycle.
            if before > 0.0 and t0 > 4.0:
                assert after - before <= RAMP_A_PER_S * PERIOD_S + 1e-6, (CONNECTORS[k], t0, before, after)
    # The later plans are followed; on the fallback in between, cp1-1 got more than they give it.
    assert all(a <= PLAN_A + 0.1 for a in results["cp1_1_on_plan_a"]), results["cp1_1_on_plan_a"]
    assert all(a > PLAN_A + 2.0 for a in results["cp1_1_on_fallback_a"]), results["cp1_1_on_fallback_a"]
    for switched in results["switched_back_at"]:
        during_switch = [a for t, a in applied if switched - 2.0 <= t <= switched + 4.0]
        assert all(a[0] > 0.0 and a[1] > 0.0 and a[2] > 0.0 for a in during_switch), "the switch paused nobody"
    assert {a["id"] for a in results["acks"] if a["accepted"]} >= {"p2", "p3"}
    stats = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert stats["cloud"]["plan"] == "p3"
    assert stats["overruns"] == 0


def fuzz_payloads(count: int, seed: int) -> list[tuple[str, bytes]]:
    """Random and mutated payloads for every inbound topic: broken JSON, wrong types, huge and NaN values."""
    rng = random.Random(seed)
    kinds = ["plan", "cmd/departure", "cmd/priority", "cmd/dso_limit", "cmd/capacity_frame", "cmd/prices"]
    leaves: list[Any] = [None, True, -1, 0, 1e308, -1e308, 10**30, "NaN", "x" * 300, [], {}, [[[]]], 3.5]
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        kind = rng.choice(kinds)
        if i % 5 == 0:
            out.append((kind, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))))
            continue
        message: dict[str, Any] = full_power_plan(f"fuzz-{i}") if kind == "plan" else {"id": f"fuzz-{i}"}
        message["schema"] = f"plaza/v1/{kind}"
        for _ in range(rng.randint(1, 4)):
            key = rng.choice([*message.keys(), "connectors", "limit_pct", "node", "priority", "frames", "start"])
            message[key] = rng.choice(leaves)
        text = json.dumps(message)
        if i % 7 == 0:
            text = text.replace('"x', 'NaN, "x', 1)[: rng.randint(1, len(text))]
        out.append((kind, text.encode()))
    return out


def test_random_and_mutated_payloads_on_every_inbound_topic_change_nothing_unsafe(tmp_path: Path) -> None:
    broker = Broker.start(tmp_path / "broker")
    site = site_file(tmp_path, broker)
    from hil.scenario import load_scenario

    plaza = HilPlaza(load_scenario(scenario_file(tmp_path, site)))
    worst: dict[str, float] = dict.fromkeys(LIMITS_A, -1e9)
    payloads = fuzz_payloads(150, seed=20261201)

    async def run_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            plaza.tick()
            if plaza.clock() - plaza.scenario.start_s > 4.0:
                for node, limit in LIMITS_A.items():
                    worst[node] = max(worst[node], max(plaza.simulation.plant.node_current_a[node]) - limit)
            await asyncio.sleep(0.05)

    async def main() -> tuple[list[dict[str, Any]], int | None, list[float]]:
        await plaza.start()
        process = await start_controller(site, tmp_path, "controller.log", stats=True)
        try:
            async with asyncio.timeout(90):
                cloud = Cloud(broker, persistent=True, base=BASE)
                await cloud.connect()
                await run_for(6.0)
                before = [plaza.simulation.plant.chargers[c].applied_a for c in CONNECTORS]
                for kind, payload in payloads:
                    cloud.publish(kind, payload)
                    await run_for(0.02)
                await run_for(4.0)
                acks = cloud.of("ack")
                await cloud.client.disconnect()
                return acks, process.returncode, before
        finally:
            await stop_process(process)
            await plaza.stop()
            broker.stop()

    acks, returncode, before = asyncio.run(main())
    assert returncode is None, "the controller kept running"
    assert all(excess <= 0.0 for excess in worst.values()), worst
    assert len(acks) >= len(payloads) * 0.9, "(nearly) every payload answered; some are too broken to name"
    accepted = [a for a in acks if a["accepted"]]
    # Whatever got through the checks is a well-formed message; none may be a plan with bad numbers.
    assert all(str(a["id"]).startswith("fuzz-") for a in accepted)
    assert all(a["reason"] for a in acks if not a["accepted"])
    assert any(before), "the plaza was charging"
