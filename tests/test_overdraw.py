"""Cycle tables: a charger that draws more than its setpoint shrinks the headroom of its nodes."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, parse_config
from controller.interlocks import InterlockEvent
from tests.cycles import Ev, Plaza

HEAD = """
site: {id: t}
scan: {period_ms: 1000, stale_after_ms: 3000}
control: {ramp_up_a_per_s: 100, resume_delay_s: 60, resume_margin_a: 1}
meters: [{id: m_grid}]
"""

SUB = (
    HEAD
    + """
margins: {current_a: 2, power_kw: 0}
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: sub
      limit_a: 42
      children:
        - {id: cp1, limit_a: 40, connectors: [{id: c1}]}
        - {id: cp2, limit_a: 40, connectors: [{id: c2}]}
        - {id: cp3, limit_a: 40, connectors: [{id: c3}]}
    - {id: cp4, limit_a: 40, connectors: [{id: c4}]}
"""
)
SUB_ROOM_A = 42.0 - 2.0
"""The sub-board's limit minus the margin."""
SHARE_A = SUB_ROOM_A / 3

TWO = (
    HEAD
    + """
margins: {current_a: 0, power_kw: 0}
tree:
  id: grid
  limit_a: 40
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1, response_delay_s: 5}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
"""
)


def drawing(a: float) -> Ev:
    return Ev(current_a=(a, a, a))


def follow(plaza: Plaza, draws: dict[str, float], building_a: float = 0.0) -> dict[str, float]:
    """One cycle in which every charger draws ``draws[id]`` on its three phases, all seen by the grid meter."""
    total_a = building_a + sum(draws.values())
    return plaza.cycle(evs={c: drawing(a) for c, a in draws.items()}, meters={"m_grid": (total_a, total_a, total_a)})


def events(plaza: Plaza) -> list[InterlockEvent]:
    assert plaza.last is not None
    return list(plaza.last.events)


def overdrawing_sub() -> tuple[Plaza, dict[str, float]]:
    """SUB with four sessions charging at their shares, every charger drawing what it was told."""
    plaza = Plaza.from_yaml(SUB)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={c: Ev() for c in ("c1", "c2", "c3", "c4")})
    sp = plaza.cycle()
    assert sp == pytest.approx({"c1": SHARE_A, "c2": SHARE_A, "c3": SHARE_A, "c4": 32.0})
    for _ in range(3):  # past the first setpoints' response delay (see the restart test)
        sp = follow(plaza, sp)
        assert sp == pytest.approx({"c1": SHARE_A, "c2": SHARE_A, "c3": SHARE_A, "c4": 32.0})
        assert events(plaza) == []
    return plaza, sp


def test_overdrawing_charger_shrinks_its_nodes_headroom_and_the_others_make_room() -> None:
    plaza, sp = overdrawing_sub()
    # c1's charger ignores its 13.3 A and draws 32 A; the others follow their setpoints.
    for cycle in range(10):
        sp = follow(plaza, {**sp, "c1": 32.0})
        # Its 18.7 A excess is reserved on cp1 and the sub-board: beside c1's real 32 A, 8 A are left
        # there, room for one minimum current: c2 gets them, c3 pauses. From the very cycle that sees it.
        assert sp == pytest.approx({"c1": SHARE_A, "c2": 8.0, "c3": 0.0, "c4": 32.0}), cycle
        assert 32.0 + sp["c2"] + sp["c3"] <= SUB_ROOM_A + 1e-9
        # c1 stays controlled: its setpoint is still allocated and written (not lowered: lowering a
        # limit it ignores would free nothing). c4, outside the sub-board, keeps its 32 A.
        assert plaza.last is not None
        assert plaza.last.uncontrolled is not None
        assert plaza.last.uncontrolled.current_a[0] == pytest.approx((0.0, 0.0, 0.0))


def test_overdraw_is_reported_once_when_it_starts_and_once_when_it_ends() -> None:
    plaza, sp = overdrawing_sub()
    sp = follow(plaza, {**sp, "c1": 32.0})
    [started] = events(plaza)
    assert (started.ts, started.latch, started.kind) == (plaza.t, "c1", "overdraw")
    assert started.excess_a == pytest.approx(32.0 - SHARE_A)
    assert "32.0 A" in started.detail
    for _ in range(5):
        sp = follow(plaza, {**sp, "c1": 32.0})
        assert events(plaza) == []
    # It goes back to what it was told: the overdraw ends, once, and its headroom is free again.
    sp = follow(plaza, sp)
    assert [(e.latch, e.kind, e.excess_a) for e in events(plaza)] == [("c1", "overdraw_ended", None)]
    assert sp["c1"] + sp["c2"] + sp["c3"] == pytest.approx(SUB_ROOM_A)  # c3 waits out its resume delay
    for _ in range(3):
        sp = follow(plaza, sp)
        assert events(plaza) == []


def test_a_draw_hovering_at_the_threshold_is_one_overdraw_not_one_per_cycle() -> None:
    plaza, sp = overdrawing_sub()
    seen: list[str] = []
    for over_a in (3.2, 2.8, 3.2, 2.6, 3.4, 2.8):  # tolerance 3 A; it ends at 2.5 A
        sp = follow(plaza, {**sp, "c1": sp["c1"] + over_a})
        seen += [e.kind for e in events(plaza)]
    assert seen == ["overdraw"]
    follow(plaza, {**sp, "c1": sp["c1"] + 2.4})
    assert [e.kind for e in events(plaza)] == ["overdraw_ended"]


def test_decrease_in_flight_is_not_an_overdraw_until_its_response_delay_has_passed() -> None:
    plaza = Plaza.from_yaml(TWO)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev()})
    assert plaza.cycle() == pytest.approx({"c1": 20.0, "c2": 20.0})
    assert follow(plaza, {"c1": 20.0, "c2": 20.0}) == pytest.approx({"c1": 20.0, "c2": 20.0})
    # A 10 A building load appears: both go down to 15 A; c1's charger takes 5 s to follow.
    assert follow(plaza, {"c1": 20.0, "c2": 20.0}, building_a=10.0) == pytest.approx({"c1": 15.0, "c2": 15.0})
    for _ in range(5):
        # c1 still draws its old 20 A, 5 A above its setpoint: allowed while the decrease is in
        # flight, so c2 is not squeezed and nothing is reported.
        assert follow(plaza, {"c1": 20.0, "c2": 15.0}, building_a=10.0) == pytest.approx({"c1": 15.0, "c2": 15.0})
        assert events(plaza) == []
    # Its response delay (and one scan) has passed and it still draws 20 A: now it overdraws.
    assert follow(plaza, {"c1": 20.0, "c2": 15.0}, building_a=10.0) == pytest.approx({"c1": 15.0, "c2": 10.0})
    assert [(e.latch, e.kind) for e in events(plaza)] == [("c1", "overdraw")]


def test_a_charger_that_follows_its_decrease_in_time_is_never_reported() -> None:
    plaza = Plaza.from_yaml(TWO)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev()})
    plaza.cycle()
    follow(plaza, {"c1": 20.0, "c2": 20.0})
    follow(plaza, {"c1": 20.0, "c2": 20.0}, building_a=10.0)
    for _ in range(4):
        follow(plaza, {"c1": 20.0, "c2": 15.0}, building_a=10.0)
    for _ in range(5):
        assert follow(plaza, {"c1": 15.0, "c2": 15.0}, building_a=10.0) == pytest.approx({"c1": 15.0, "c2": 15.0})
        assert events(plaza) == []


@pytest.mark.parametrize("follows", [True, False])
def test_a_restarted_controller_gives_chargers_their_response_delay_before_calling_it_overdraw(follows: bool) -> None:
    """After a restart the program knows no setpoints: the chargers still draw what they were told before."""
    plaza = Plaza.from_yaml(TWO)
    # c1 still runs at the 25 A an earlier controller gave it; the new one shares 40 A equally.
    sp = plaza.cycle(evs={"c1": drawing(25.0), "c2": drawing(15.0)}, meters={"m_grid": (40.0, 40.0, 40.0)})
    assert sp == pytest.approx({"c1": 20.0, "c2": 20.0})
    assert events(plaza) == []
    for _ in range(5):  # c1's response delay
        assert follow(plaza, {"c1": 25.0, "c2": 20.0}) == pytest.approx({"c1": 20.0, "c2": 20.0})
        assert events(plaza) == []
    # One scan later its first setpoint has been in force for its response delay.
    follow(plaza, {"c1": 20.0 if follows else 25.0, "c2": 20.0})
    assert [e.kind for e in events(plaza)] == ([] if follows else ["overdraw"])


@pytest.mark.parametrize(
    ("control", "over_a", "flagged"),
    [
        ("", 2.5, False),  # default tolerance 3 A
        ("", 3.0, False),
        ("", 3.5, True),
        ("overdraw_tolerance_a: 1.0", 2.5, True),
        ("overdraw_tolerance_a: 1.0", 0.9, False),
        ("overdraw_tolerance_a: 0", 0.5, True),
    ],
)
def test_a_draw_within_the_tolerance_is_not_an_overdraw(control: str, over_a: float, flagged: bool) -> None:
    text = TWO.replace("resume_margin_a: 1}", f"resume_margin_a: 1, {control}}}") if control else TWO
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev()})
    plaza.cycle()
    for _ in range(6):  # past c1's first response delay
        follow(plaza, {"c1": 20.0, "c2": 20.0})
    sp = follow(plaza, {"c1": 20.0 + over_a, "c2": 20.0})
    if flagged:
        assert sp == pytest.approx({"c1": 20.0, "c2": 20.0 - over_a})
        assert [(e.latch, e.kind) for e in events(plaza)] == [("c1", "overdraw")]
    else:
        assert sp == pytest.approx({"c1": 20.0, "c2": 20.0})
        assert events(plaza) == []


def test_a_paused_dc_charger_holding_its_pause_power_is_not_an_overdraw() -> None:
    """An Alpitronic cannot pause at 0 W: a paused session still takes 1547 W, 2.2 A per phase."""
    text = (
        HEAD
        + """
margins: {current_a: 0, power_kw: 0}
priorities:
  users: [{id_token: VIP, priority: 5}]
tree:
  id: grid
  limit_a: 12
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
    - {id: hpc, limit_a: 250, connectors: [{id: d1, type: dc, max_power_kw: 150, zero_pauses: false}]}
"""
    )
    pause_a = 1547.0 / (3 * 230.0)
    for tolerance, flagged in (("", False), (", overdraw_tolerance_a: 2", True)):
        plaza = Plaza.from_yaml(text.replace("resume_margin_a: 1}", f"resume_margin_a: 1{tolerance}}}"))
        plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(id_token="VIP"), "d1": Ev()})
        # 12 A cannot carry the VIP's 6 A and the DC minimum (5 kW, 7.2 A): d1 is paused, the VIP takes all.
        assert plaza.cycle() == pytest.approx({"c1": 12.0, "d1": 0.0})
        for _ in range(3):
            follow(plaza, {"c1": 12.0, "d1": 0.0})
        follow(plaza, {"c1": 12.0, "d1": pause_a})
        assert [e.kind for e in events(plaza)] == (["overdraw"] if flagged else [])


def test_overdraw_counts_against_a_node_power_limit_too() -> None:
    text = (
        HEAD
        + """
margins: {current_a: 0, power_kw: 0}
tree:
  id: grid
  limit_a: 100
  power_limit_kw: 27.6
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev()})
    # 27.6 kW / (230 V x 3 phases) = 40 A in all: 20 A each; the 100 A fuse does not bind.
    assert plaza.cycle() == pytest.approx({"c1": 20.0, "c2": 20.0})
    for _ in range(3):
        follow(plaza, {"c1": 20.0, "c2": 20.0})
    sp = follow(plaza, {"c1": 30.0, "c2": 20.0})
    assert sp == pytest.approx({"c1": 20.0, "c2": 10.0})
    assert (30.0 + sp["c2"]) * 3 * 230.0 <= 27_600.0 + 1e-6


def test_single_phase_overdraw_shrinks_only_the_grid_phase_it_loads() -> None:
    text = (
        HEAD
        + """
margins: {current_a: 0, power_kw: 0}
tree:
  id: grid
  limit_a: 20
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1, phases: L2}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2, phases: L1}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3, phases: L2}]}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    assert plaza.cycle() == pytest.approx({"c1": 10.0, "c2": 20.0, "c3": 10.0})

    def one_phase(a: float) -> Ev:
        return Ev(current_a=(a, 0.0, 0.0))

    for _ in range(3):
        plaza.cycle(
            evs={"c1": one_phase(10.0), "c2": one_phase(20.0), "c3": one_phase(10.0)},
            meters={"m_grid": (20.0, 20.0, 0.0)},
        )
    # c1 (on grid L2) draws 16 A against its 10 A: L2 has 20 - 16 = 4 A left, below c3's minimum.
    sp = plaza.cycle(
        evs={"c1": one_phase(16.0), "c2": one_phase(20.0), "c3": one_phase(10.0)}, meters={"m_grid": (20.0, 26.0, 0.0)}
    )
    assert sp == pytest.approx({"c1": 10.0, "c2": 20.0, "c3": 0.0})
    assert [(e.latch, e.kind) for e in events(plaza)] == [("c1", "overdraw")]


def test_overdraw_tolerance_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"control\.overdraw_tolerance_a: must be >= 0"):
        parse_config(TWO.replace("resume_margin_a: 1}", "resume_margin_a: 1, overdraw_tolerance_a: -1}"))
    assert parse_config(TWO).config.control.overdraw_tolerance_a == 3.0
