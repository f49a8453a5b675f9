"""End to end over loopback: OCPP 2.0.1 and Modbus chargers under one 5-level tree, the controller as a process.

The site is ``examples/sites/hil-mixed.site.yaml``: the controller's CSMS on 127.0.0.1:19200, an OCPP AC
station (two EVSEs), an OCPP DC station and a dual-socket Alfen over Modbus, meters and the fire/DSO
I/O module on 127.0.0.1:152xx. The simulated stations are clients of the controller's CSMS; the test
watches the plant's physical currents and what every station received. Each test is bounded (scenario
seconds and process timeouts) and stops the controller by its PID.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.ocpp201.station import SimStation
from plaza_ems.hilrun import HilPlaza
from tests.hil_harness import with_controller

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-mixed.site.yaml"
PERIOD_S = 0.5
TX_UPDATED_INTERVAL_S = 2.0
CHARGER_RESPONSE_S = 1.0
LIMITS_A = {"grid": 160.0, "main": 125.0, "sub-ac": 80.0, "row-1": 63.0, "ac1": 32.0, "cp1": 32.0, "sub-dc": 100.0}
LIMITS_A |= {"dc1": 80.0}
WARM_UP_S = 8.0
"""Stations boot after the controller's first cycle, then their transactions start: checks begin after this."""

pytestmark = pytest.mark.slow

EV_AC = {"arrive_s": 0, "depart_s": 600, "energy_kwh": 40}
ALL_SESSIONS: list[dict[str, Any]] = [
    {"connector": "ac1-1", **EV_AC, "id_token": "FLEET-0001"},
    {"connector": "ac1-2", **EV_AC, "id_token": "GUEST-0001"},
    {"connector": "cp1-1", **EV_AC},
    {"connector": "cp1-2", **EV_AC, "phases": 1},
    {"connector": "dc1-1", "arrive_s": 0, "depart_s": 600, "energy_kwh": 30, "max_dc_power_kw": 50},
]


def write_scenario(tmp_path: Path, sessions: list[dict[str, Any]], events: list[dict[str, Any]]) -> Path:
    scenario = {
        "name": "hil-ocpp-test",
        "site": str(SITE),
        "start": "2023-03-14T05:00:00Z",
        "duration_s": 600,
        "loads": {"workshop": {"constant_kw": 3}},
        "evs": {"sessions": sessions},
        "events": events,
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    return path


def t_rel(plaza: HilPlaza) -> float:
    return plaza.clock() - plaza.scenario.start_s


def node_peaks(plaza: HilPlaza) -> dict[str, float]:
    return {node: max(plaza.simulation.plant.node_current_a[node]) for node in LIMITS_A}


def station(plaza: HilPlaza, station_id: str) -> SimStation:
    return plaza.stations[station_id]


def last_limit(plaza: HilPlaza, station_id: str, evse: int) -> float:
    limits = station(plaza, station_id).evses[evse - 1].profile_limits
    assert limits, f"{station_id} EVSE {evse} never received a TxProfile"
    return limits[-1][1]


def test_mixed_plaza_stays_within_every_node_limit_during_a_spike(tmp_path: Path) -> None:
    # 20 kW ≈ 29 A per phase more on sub-ac (80 A) from 14 s to 24 s, while AC, DC and Modbus charge.
    spike_at_s = 14.0
    scenario = write_scenario(
        tmp_path,
        ALL_SESSIONS,
        [{"at_s": spike_at_s, "type": "load_spike", "load": "workshop", "extra_kw": 20, "duration_s": 10}],
    )
    window_s = 2 * PERIOD_S + CHARGER_RESPONSE_S + 1.0
    worst: dict[str, float] = dict.fromkeys(LIMITS_A, -1e9)
    before: list[dict[str, float]] = []
    during: list[dict[str, float]] = []

    def watch(plaza: HilPlaza, _: float) -> None:
        now = t_rel(plaza)
        peaks = node_peaks(plaza)
        if now < WARM_UP_S:
            return
        if now < spike_at_s:
            before.append(peaks)
        elif now < spike_at_s + 10.0:
            during.append(peaks)
        if not spike_at_s <= now < spike_at_s + window_s:
            for node, peak in peaks.items():
                worst[node] = max(worst[node], peak - LIMITS_A[node])

    plaza = asyncio.run(with_controller(scenario, 28.0, watch, site=SITE, tmp_path=tmp_path))
    plant = plaza.simulation.plant
    # Not vacuous: every kind of charger charged, and the spike made sub-ac the binding node.
    # 48 A before + 29 A of spike is more than sub-ac's 80 A less the margin: the controller must act.
    assert max(p["sub-ac"] for p in before) > 48.0, "AC chargers should share sub-ac before the spike"
    assert max(p["main"] for p in before) > 90.0, "the DC charger should load the main board"
    assert plant.chargers["dc1-1"].session_wh > 0
    assert plant.chargers["ac1-1"].session_wh > 0
    assert plant.chargers["cp1-1"].session_wh > 0
    assert max(p["sub-ac"] for p in during) > 70.0
    for node, excess in worst.items():
        assert excess <= 0.0, f"{node} over its limit by {excess:.2f} A outside the reaction window"
    stats = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert stats["overruns"] == 0
    assert all(s["connected"] is False and s["booted"] for s in stats["ocpp"]["stations"].values())


def test_fire_alarm_sets_every_ocpp_tx_profile_to_zero_within_a_cycle_and_a_round_trip(tmp_path: Path) -> None:
    fire_at_s = 12.0
    scenario = write_scenario(tmp_path, ALL_SESSIONS, [{"at_s": fire_at_s, "type": "fire_alarm"}])
    opened_wall: list[float] = []
    charging_before: list[float] = []

    def watch(plaza: HilPlaza, _: float) -> None:
        if t_rel(plaza) >= fire_at_s and not opened_wall and not plaza.simulation.contacts["fire"]:
            opened_wall.append(time.time())  # the tick that applied the event has just run
        if fire_at_s - 1.0 <= t_rel(plaza) < fire_at_s:
            charging_before.append(sum(c.power_w for c in plaza.simulation.plant.chargers.values()))

    plaza = asyncio.run(with_controller(scenario, 16.0, watch, site=SITE, tmp_path=tmp_path))
    assert opened_wall, "the fire contact never opened"
    assert min(charging_before) > 30_000.0, "the plaza should be charging when the alarm comes"
    for station_id, evses in (("AC1", (1, 2)), ("DC1", (1,))):
        for evse_id in evses:
            limits = station(plaza, station_id).evses[evse_id - 1].profile_limits
            zero = [ts for ts, limit in limits if limit == 0.0 and ts >= opened_wall[0]]
            assert zero, f"{station_id} EVSE {evse_id} never received a TxProfile of 0"
            # The contact may open just after the I/O read: seen at the next read, acted on at the freeze
            # after it, and sent at once; one round trip and the tick granularity (0.1 s) on top.
            assert zero[0] - opened_wall[0] <= 2 * PERIOD_S + 0.25, f"{station_id} EVSE {evse_id} too late"
    assert all(c.power_w == 0.0 for c in plaza.simulation.plant.chargers.values()), "nothing charges after it"


def test_offline_station_queues_its_transaction_events_and_none_is_lost(tmp_path: Path) -> None:
    # DC1 is away from 10 s to 20 s; one DC session ends and the next starts while it is offline.
    sessions = [
        {"connector": "ac1-1", **EV_AC, "id_token": "FLEET-0001"},
        {"connector": "dc1-1", "arrive_s": 0, "depart_s": 13, "energy_kwh": 30, "max_dc_power_kw": 50},
        {"connector": "dc1-1", "arrive_s": 15, "depart_s": 24, "energy_kwh": 30, "max_dc_power_kw": 50},
    ]
    scenario = write_scenario(
        tmp_path, sessions, [{"at_s": 10, "type": "ocpp_fault", "station": "DC1", "fault": "offline", "duration_s": 10}]
    )
    worst: dict[str, float] = dict.fromkeys(LIMITS_A, -1e9)
    offline_seen: list[bool] = []

    def watch(plaza: HilPlaza, _: float) -> None:
        if t_rel(plaza) < WARM_UP_S:
            return
        offline_seen.append(station(plaza, "DC1").link is None)
        for node, peak in node_peaks(plaza).items():
            worst[node] = max(worst[node], peak - LIMITS_A[node])

    plaza = asyncio.run(with_controller(scenario, 30.0, watch, site=SITE, tmp_path=tmp_path))
    dc1 = station(plaza, "DC1")
    assert any(offline_seen), "the station should have been offline"
    assert dc1.connects >= 2, "it reconnected"
    assert not dc1.outbox, "it sent everything it had queued"
    assert all(excess <= 0.0 for excess in worst.values()), worst
    # A frame sent into a connection that was just closing is sent again: count seqNos, not frames.
    sent: dict[str, set[int]] = defaultdict(set)
    offline_sent: dict[str, set[int]] = defaultdict(set)
    for frame in map(json.loads, dc1.sent):
        if frame[0] == 2 and frame[2] == "TransactionEvent":
            tx_id = frame[3]["transactionInfo"]["transactionId"]
            sent[tx_id].add(frame[3]["seqNo"])
            if frame[3].get("offline"):
                offline_sent[tx_id].add(frame[3]["seqNo"])
    assert len(dc1.transaction_ids) == 2
    assert set(sent) == set(dc1.transaction_ids)
    assert sum(map(len, offline_sent.values())) >= 2, "the Ended of the first and the Started of the second"
    records = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))["ocpp"]["transactions"]
    for tx_id in dc1.transaction_ids:
        record = records[tx_id]
        assert record["distinct_events"] == len(sent[tx_id]), f"{tx_id}: every event arrived"
        assert record["offline_events"] >= len(offline_sent[tx_id])
        assert record["complete"], f"{tx_id}: Started, Ended and every seqNo between"
        assert record["stopped_reason"] == "EVDisconnected"
        assert record["energy_wh"] > 0


@pytest.mark.parametrize("fleet_on", [1, 2])
def test_rfid_priority_profile_changes_the_allocation(tmp_path: Path, fleet_on: int) -> None:
    # Two EVs on AC1 (a 32 A node): the fleet badge (priority 5) is served before the guest (priority 1).
    tokens = {fleet_on: "FLEET-0001", 3 - fleet_on: "GUEST-0001"}
    sessions = [{"connector": f"ac1-{evse}", **EV_AC, "id_token": tokens[evse]} for evse in (1, 2)]
    scenario = write_scenario(tmp_path, sessions, [])
    plaza = asyncio.run(with_controller(scenario, 12.0, lambda p, t: None, site=SITE, tmp_path=tmp_path))
    fleet, guest = last_limit(plaza, "AC1", fleet_on), last_limit(plaza, "AC1", 3 - fleet_on)
    assert fleet >= guest + 10.0, f"fleet {fleet} A, guest {guest} A"
    assert guest >= 6.0, "the guest still gets the IEC minimum"
    applied = station(plaza, "AC1").evses[fleet_on - 1].limit_a
    assert applied == pytest.approx(fleet), "the station applies its TxProfile under its max profile"


def test_overdrawing_station_is_detected_and_its_neighbours_make_room(tmp_path: Path) -> None:
    # AC1's EVs take 20 A each; from 12 s the station ignores its profiles. Row-1 (63 A) must still hold:
    # the controller sees the overdraw in AC1's meter values and squeezes the Alfen beside it.
    overdraw_at_s = 12.0
    sessions = [
        {"connector": "ac1-1", **EV_AC, "id_token": "GUEST-0001", "max_current_a": 20},
        {"connector": "ac1-2", **EV_AC, "id_token": "GUEST-0001", "max_current_a": 20},
        {"connector": "cp1-1", **EV_AC},
        {"connector": "cp1-2", **EV_AC},
    ]
    events = [{"at_s": overdraw_at_s, "type": "ocpp_fault", "station": "AC1", "fault": "overdraw", "duration_s": 60}]
    scenario = write_scenario(tmp_path, sessions, events)
    window_s = CHARGER_RESPONSE_S + TX_UPDATED_INTERVAL_S + 2 * PERIOD_S + CHARGER_RESPONSE_S + 1.0
    row_before: list[float] = []
    row_after: list[float] = []
    ac1_after: list[float] = []

    def watch(plaza: HilPlaza, _: float) -> None:
        now = t_rel(plaza)
        peaks = node_peaks(plaza)
        if WARM_UP_S <= now < overdraw_at_s:
            row_before.append(peaks["row-1"])
        if now >= overdraw_at_s + window_s:
            row_after.append(peaks["row-1"])
            ac1_after.append(peaks["ac1"])

    asyncio.run(with_controller(scenario, 22.0, watch, site=SITE, tmp_path=tmp_path))
    assert max(row_before) > 55.0, "row-1 should be nearly full before the overdraw"
    assert min(ac1_after) >= 39.0, "AC1 draws what its EVs take, whatever its profiles say"
    assert max(row_after) <= LIMITS_A["row-1"], f"row-1 at {max(row_after):.1f} A"
    log = (tmp_path / "controller.log").read_text(encoding="utf-8")
    assert "ac1-1 overdraw" in log
    assert "ac1-2 overdraw" in log
