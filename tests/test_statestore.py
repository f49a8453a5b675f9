"""The controller's saved state: round trip, change detection, and files that must not be used."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from controller.intent import Session
from controller.interlocks import Latch
from controller.program import ProgramState
from plaza_ems.statestore import STATE_FILE, StateStore
from tests.cycles import Ev, Plaza

SITE = """
site: {id: store}
scan: {period_ms: 1000, stale_after_ms: 3000}
meters: [{id: m_grid}]
fire_panel: {id: fire}
tree:
  id: grid
  limit_a: 63
  meter: m_grid
  connectors: [{id: c1}, {id: c2}]
"""


def running_plaza() -> Plaza:
    plaza = Plaza.from_yaml(SITE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(id_token="BADGE-1"), "c2": None})
    plaza.cycle(contacts={"fire": False})  # the alarm latches
    return plaza


def test_latches_sessions_and_setpoints_survive_a_restart(tmp_path: Path) -> None:
    plaza = running_plaza()
    state = plaza.program.state
    assert state.latches["fire"].active
    store = StateStore(tmp_path, plaza.site)
    store.save(state, plaza.t)
    restored = StateStore(tmp_path, plaza.site).load()
    assert restored is not None
    assert restored.latches["fire"] == state.latches["fire"]
    session = restored.connectors[0].session
    assert session is not None
    assert session == Session(state.connectors[0].session.started_ts, "BADGE-1", None, None)  # type: ignore[union-attr]
    assert restored.connectors[1].session is None
    assert [m.setpoint_a for m in restored.connectors] == [m.setpoint_a for m in state.connectors]


def test_it_is_written_on_a_change_and_otherwise_every_interval(tmp_path: Path) -> None:
    plaza = Plaza.from_yaml(SITE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": None, "c2": None})
    store = StateStore(tmp_path, plaza.site, every_s=10.0)
    store.maybe_save(plaza.program.state, plaza.t)
    store.maybe_save(plaza.program.state, plaza.t + 1)
    assert store.saves == 1, "nothing changed"
    plaza.cycle(evs={"c1": Ev()})  # a session opens
    store.maybe_save(plaza.program.state, plaza.t)
    assert store.saves == 2
    store.maybe_save(plaza.program.state, plaza.t + 10.0)
    assert store.saves == 3, "the interval"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"version": 99, "site": "store"}), "another version"),
        (json.dumps({"version": 1, "site": "elsewhere"}), "is for site 'elsewhere'"),
    ],
)
def test_a_file_that_cannot_be_used_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    plaza = Plaza.from_yaml(SITE)
    (tmp_path / STATE_FILE).write_text(content, encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert StateStore(tmp_path, plaza.site).load() is None
    assert reason in caplog.text
    assert "starting as new" in caplog.text


def test_bad_values_in_the_file_are_left_out_not_trusted(tmp_path: Path) -> None:
    plaza = Plaza.from_yaml(SITE)
    document = {
        "version": 1,
        "site": "store",
        "latches": {"fire": {"active": "yes"}, "emergency_stop": {"active": True, "since_ts": "NaN"}},
        "connectors": {"c1": {"setpoint_a": -5, "session": {"started_ts": None}}, "c9": {"setpoint_a": 16}},
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(document), encoding="utf-8")
    state = StateStore(tmp_path, plaza.site).load()
    assert isinstance(state, ProgramState)
    assert state.latches == {"emergency_stop": Latch("emergency_stop", True, None, "")}
    assert state.connectors[0].setpoint_a == 0.0
    assert state.connectors[0].session is None
    assert len(state.connectors) == 2, "an unknown connector is ignored"


def test_a_restored_latch_holds_the_site_in_its_safe_state(tmp_path: Path) -> None:
    plaza = running_plaza()
    StateStore(tmp_path, plaza.site).save(plaza.program.state, plaza.t)
    restarted = Plaza.from_yaml(SITE)
    restarted.program.state = StateStore(tmp_path, restarted.site).load() or ProgramState()
    sp = restarted.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(id_token="BADGE-1"), "c2": None})
    assert sp == {"c1": 0.0, "c2": 0.0}, "the contact is healthy again, but a restart is not a reset"
    assert restarted.last is not None
    assert restarted.last.mode.value == "fire"
