"""The cloud bridge without a broker: what plans and commands do to the cycle's inputs, and what survives a restart.

Messages are put on the link's queue as the link would after its checks; acks land in the outbox.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from controller.config import parse_config
from controller.image import ConnectorReading, InputSnapshot, ProcessImage, SessionRequest, freeze
from controller.intent import Session
from controller.limits import RemoteCapacityBlock, RemoteDsoLimit
from controller.program import ControlProgram
from controller.site import compile_site
from drivers.mqtt.config import MqttConfig
from drivers.mqtt.link import Received
from drivers.mqtt.messages import (
    CapacityFrame,
    CapacityFrameCommand,
    DepartureCommand,
    DsoLimitCommand,
    Plan,
    PricesCommand,
    PriorityCommand,
    plan_targets,
)
from plaza_ems.cloud import PLAN_FILE, PRICES_FILE, CloudBridge, load_plan, load_prices, save_plan, save_prices

SITE_TEXT = """
site: {id: s1}
dso: {id: dso, node: grid}
tree:
  id: grid
  limit_a: 100
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}, {id: c2}]}
"""
T = 2_000_000_000.0

PLAN = Plan(
    id="p7",
    site="s1",
    created_ts=1000.0,
    valid_from_ts=1000.0,
    valid_to_ts=1000.0 + 4 * 900,
    step_s=900,
    connectors={"c1": (16.0, None, 6.0, 32.0)},
    batteries={"bat": (1000.0, 0.0, -2000.0, 0.0)},
    site_import_cap_w=(50_000.0, None, None, 40_000.0),
)


def test_the_plan_in_force_is_kept_for_a_restart(tmp_path: Path) -> None:
    save_plan(tmp_path / PLAN_FILE, PLAN)
    kept = load_plan(tmp_path / PLAN_FILE, "s1")
    assert kept == PLAN
    assert plan_targets(kept, 1000.0 + 900 * 3 + 1) == plan_targets(PLAN, 1000.0 + 900 * 3 + 1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"site": "s2"}', "for site 's2'"),
        ("{broken", "Expecting"),
        ('{"site": "s1"}', "not used: 'site_import_cap_w'"),
    ],
)
def test_a_kept_plan_that_cannot_be_used_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    (tmp_path / PLAN_FILE).write_text(content, encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert load_plan(tmp_path / PLAN_FILE, "s1") is None
    assert reason in caplog.text
    assert load_plan(tmp_path / "none.json", "s1") is None


def test_the_last_day_ahead_prices_are_kept_for_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prices = PricesCommand("da-1", 0.0, "NL", 3600.0, 3600, (80.0, 20.0, 55.0))
    save_prices(tmp_path / PRICES_FILE, prices)
    kept = load_prices(tmp_path / PRICES_FILE)
    assert kept is not None
    assert (kept.at(3600.0), kept.at(7200.0), kept.at(3 * 3600.0 + 3599)) == (80.0, 20.0, 55.0)
    (tmp_path / PRICES_FILE).write_text('{"start_ts": 0, "step_s": 3600, "prices": ["NaN"]}', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert load_prices(tmp_path / PRICES_FILE) is None
    assert "no usable prices" in caplog.text


def bridge(state_dir: Path) -> CloudBridge:
    config = parse_config(SITE_TEXT).config
    site = compile_site(config)
    return CloudBridge(MqttConfig(host="127.0.0.1", port=1), config, site, ControlProgram(site), state_dir)


def take(b: CloudBridge, snapshot: InputSnapshot, *messages: object, now: float = T) -> list[dict[str, object]]:
    """Queue the messages, run refresh, return the acks written."""
    for message in messages:
        b.link.queue.put_nowait(Received("plaza/v1/s1/main/cmd/x", message, now))  # type: ignore[arg-type]
    b.refresh(snapshot, now)
    return [json.loads(r.payload) for r in b.link.outbox.pending(limit=1000) if r.kind == "ack"]


def test_departure_and_priority_commands_become_the_session_request_and_survive_a_restart(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    snapshot = InputSnapshot()
    snapshot.connectors["c2"] = ConnectorReading("C2", (16.0, 16.0, 16.0), 11_000.0, 0.0, "BADGE-2", T)
    acks = take(
        b,
        snapshot,
        DepartureCommand("d1", T, "c1", None, T + 3600, 20_000.0),
        PriorityCommand("p1", T, None, "BADGE-2", 7, T + 600),
        DepartureCommand("d2", T, None, "NOBODY", T + 3600, None),
    )
    assert snapshot.requests["c1"] == SessionRequest(T + 3600, 20_000.0, T, None)
    assert snapshot.requests["c2"] == SessionRequest(None, None, T, 7)
    assert [(a["id"], a["accepted"]) for a in acks] == [("d1", True), ("p1", True), ("d2", False)]
    assert "no session with id token 'NOBODY'" in str(acks[2]["reason"])
    # Another source (an OCPP station's charging needs) writes the same key: the command is applied again.
    snapshot.requests["c1"] = SessionRequest(T + 99, None, T)
    b.refresh(snapshot, T + 1)
    assert snapshot.requests["c1"].departure_ts == T + 3600
    # A restarted controller has them; the priority ends at its `until`.
    restarted = bridge(tmp_path)
    fresh = InputSnapshot()
    restarted.refresh(fresh, T + 601)
    assert fresh.requests["c1"].energy_wh == 20_000.0
    assert fresh.requests["c2"].priority is None


def test_a_session_that_ends_takes_its_requests_with_it(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    snapshot = InputSnapshot()
    take(b, snapshot, DepartureCommand("d1", T, "c1", None, T + 3600, 20_000.0))
    memory = b.program.state.connectors[0]
    memory.session = Session(T, None, None, None)
    image = _image(snapshot)
    b._session_events(image, T)  # the session opens
    memory.session = None
    b._session_events(image, T + 10)  # and ends
    fresh = InputSnapshot()
    b.refresh(fresh, T + 11)
    assert "c1" not in fresh.requests


def test_dso_limits_replace_per_node_and_capacity_frames_replace_what_they_overlap(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    snapshot = InputSnapshot()
    take(
        b,
        snapshot,
        DsoLimitCommand("l1", T, None, 30.0, None, T + 3600),
        CapacityFrameCommand(
            "f1", T, (CapacityFrame("grid", T, T + 900, 40_000.0), CapacityFrame("grid", T + 900, T + 1800, 50_000.0))
        ),
    )
    assert snapshot.remote_limits is not None
    assert snapshot.remote_limits.dso == (RemoteDsoLimit(None, 30.0, None, T + 3600),)
    take(
        b,
        snapshot,
        DsoLimitCommand("l2", T, None, 100.0, None, T + 3600),  # the DSO lifts its limit
        CapacityFrameCommand("f2", T, (CapacityFrame("grid", T + 1000, T + 1200, 45_000.0),)),
    )
    assert snapshot.remote_limits is not None
    assert snapshot.remote_limits.dso == (RemoteDsoLimit(None, 100.0, None, T + 3600),)
    assert snapshot.remote_limits.capacity == (
        RemoteCapacityBlock("grid", T, T + 900, 40_000.0),
        RemoteCapacityBlock("grid", T + 1000, T + 1200, 45_000.0),
    )
    # Kept for a restart, dropped when over.
    restarted = bridge(tmp_path)
    fresh = InputSnapshot()
    restarted.refresh(fresh, T + 1100)
    assert fresh.remote_limits is not None
    assert [blk.limit_w for blk in fresh.remote_limits.capacity] == [45_000.0]
    restarted.refresh(fresh, T + 3600)
    assert fresh.remote_limits is None


def _image(snapshot: InputSnapshot) -> ProcessImage:
    return freeze(snapshot, T, 5.0, ("c1", "c2"), ())


def test_a_running_session_is_reported_every_five_minutes_between_its_start_and_stop(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    snapshot = InputSnapshot()
    memory = b.program.state.connectors[0]
    memory.session = Session(T, "BADGE-1", T + 7200, 20_000.0)
    for dt in (0.0, 100.0, 299.0, 300.0, 450.0, 601.0):
        b._session_events(_image(snapshot), T + dt)
    memory.session = None
    b._session_events(_image(snapshot), T + 700.0)
    events = [json.loads(r.payload) for r in b.link.outbox.pending(limit=100) if r.kind == "session"]
    assert [e["event"] for e in events] == ["start", "update", "update", "stop"]
    assert len({e["event_id"] for e in events}) == 4
    assert {e["session_id"] for e in events} == {f"s1-c1-{int(T * 1000)}"}


def test_a_badges_guaranteed_energy_goes_to_the_optimiser_as_the_sessions_minimum(tmp_path: Path) -> None:
    text = SITE_TEXT + "priorities:\n  users:\n    - {id_token: FLEET-7, guaranteed_energy_kwh: 12}\n"
    config = parse_config(text).config
    site = compile_site(config)
    b = CloudBridge(MqttConfig(host="127.0.0.1", port=1), config, site, ControlProgram(site), tmp_path)
    b.program.state.connectors[0].session = Session(T, "FLEET-7", T + 7200, 30_000.0)
    b.program.state.connectors[1].session = Session(T, "VISITOR", T + 7200, 30_000.0)
    image = _image(InputSnapshot())
    message = b._snapshot(image, b.program.step(image), "interval")
    state: dict[str, dict[str, dict[str, float]]] = message["state"]  # type: ignore[assignment]
    assert state["connectors"]["c1"]["min_energy_wh"] == 12_000.0
    assert state["connectors"]["c2"]["min_energy_wh"] == 0.0


def test_the_billing_peak_is_the_highest_quarter_hour_average_and_survives_a_restart(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from plaza_ems.cloud import PEAK_FILE, BillingPeak

    amsterdam = ZoneInfo("Europe/Amsterdam")
    start = 1_701_385_200.0  # 2023-12-01 00:00 in Amsterdam: a quarter hour and a month begin
    peak = BillingPeak(tmp_path / PEAK_FILE, amsterdam)
    for k in range(900):  # a quarter hour at 20 kW with one cycle's 90 kW spike
        peak.add(90_000.0 if k == 450 else 20_000.0, start + k)
    peak.add(10_000.0, start + 900)  # closes the first quarter hour
    assert peak.peak_w is not None
    assert abs(peak.peak_w - 20_078.0) < 1.0
    for k in range(1, 900):  # the next one at 30 kW, but the meter is stale for its last 12 minutes
        peak.add(30_000.0 if k < 180 else None, start + 900 + k)
    peak.add(10_000.0, start + 1800)
    assert peak.peak_w is not None
    assert abs(peak.peak_w - 20_078.0) < 1.0
    again = BillingPeak(tmp_path / PEAK_FILE, amsterdam)
    assert again.month == "2023-12"
    assert again.peak_w == peak.peak_w
    again.add(5_000.0, 1_704_063_600.0)  # 2024-01-01 00:00 in Amsterdam: a new billing period
    assert again.month == "2024-01"
    assert again.peak_w is None
