"""Cycle tables for the control program: inputs per cycle on a fake clock -> expected setpoints."""

from __future__ import annotations

import pytest

from controller.interlocks import SiteMode
from tests.cycles import Ev, Plaza

BASE = """
site: {id: t}
scan: {period_ms: 1000, stale_after_ms: 3000}
margins: {current_a: 0, power_kw: 0}
control: {ramp_up_a_per_s: 100, resume_delay_s: 60, resume_margin_a: 1}
meters: [{id: m_grid}, {id: m_sub}]
fire_panel: {id: fire}
emergency_stop: {id: estop}
"""

THREE = (
    BASE
    + """
tree:
  id: grid
  limit_a: 40
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
"""
)


def mode_of(plaza: Plaza) -> SiteMode:
    assert plaza.last is not None
    return plaza.last.mode


def drawing(a: float, phases: int = 3) -> Ev:
    return Ev(current_a=(a, a if phases == 3 else 0.0, a if phases == 3 else 0.0))


def test_equal_demands_get_equal_shares_of_a_binding_fuse() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    sp = plaza.cycle()
    assert sp["c1"] == pytest.approx(40 / 3)
    assert sp["c2"] == pytest.approx(40 / 3)
    assert sp["c3"] == pytest.approx(40 / 3)


def test_measured_building_load_is_subtracted_but_own_chargers_are_not_counted_twice() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (10.0, 10.0, 10.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert plaza.cycle()["c1"] == pytest.approx(30.0)
    # The EV now draws 30 A: the grid meter shows 40 A, of which 10 A is the building.
    sp = plaza.cycle(meters={"m_grid": (40.0, 40.0, 40.0)}, evs={"c1": drawing(30.0)})
    assert sp["c1"] == pytest.approx(30.0)
    # The building jumps by 8 A: the charger gives it up in the same cycle.
    sp = plaza.cycle(meters={"m_grid": (48.0, 48.0, 48.0)})
    assert sp["c1"] == pytest.approx(22.0)


def test_single_phase_ev_loads_only_its_grid_phase_through_the_rotation() -> None:
    text = (
        BASE
        + """
tree:
  id: grid
  limit_a: 20
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1, phases: L2L3L1}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2, phases: L1}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3, phases: L3}]}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    sp = plaza.cycle()
    # Before c1's EV draws, it is assumed to load all three phases: 10 A each on L1 and L3.
    assert sp == pytest.approx({"c1": 10.0, "c2": 10.0, "c3": 10.0})
    # c1's EV turns out to be single-phase: charger L1 is grid L2, so L1 and L3 are free for c2/c3.
    sp = plaza.cycle(
        meters={"m_grid": (10.0, 10.0, 10.0)},
        evs={"c1": drawing(10.0, phases=1), "c2": drawing(10.0, 1), "c3": drawing(10.0, 1)},
    )
    assert sp == pytest.approx({"c1": 20.0, "c2": 20.0, "c3": 20.0})


def test_every_setpoint_is_zero_or_at_least_the_minimum_current() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 16\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    sp = plaza.cycle()
    # 16 A cannot carry three sessions at 6 A: two charge at 8 A, the third waits at 0.
    assert sorted(sp.values()) == pytest.approx([0.0, 8.0, 8.0])


def test_higher_priority_rfid_profile_is_curtailed_last() -> None:
    text = (
        THREE
        + """
priorities:
  default: 1
  users:
    - {id_token: VIP, priority: 5}
"""
    )
    plaza = Plaza.from_yaml(text.replace("limit_a: 40\n", "limit_a: 44\n"))
    vip = Ev(id_token="VIP")
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": vip, "c2": Ev(), "c3": Ev()})
    sp = plaza.cycle()
    assert sp["c1"] == pytest.approx(32.0)
    assert sp["c2"] == pytest.approx(6.0)
    assert sp["c3"] == pytest.approx(6.0)


def test_parking_location_priority_applies_without_rfid() -> None:
    text = (
        BASE
        + """
priorities:
  locations: [{id: fleet, priority: 4}, {id: visitor, priority: 1}]
tree:
  id: grid
  limit_a: 38
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, location: visitor, connectors: [{id: c1}]}
    - {id: cp2, limit_a: 32, location: fleet, connectors: [{id: c2}]}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev()})
    assert plaza.cycle() == pytest.approx({"c1": 6.0, "c2": 32.0})


def test_urgent_session_is_served_before_calm_ones_of_the_same_priority() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 44\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    # c2 leaves in 40 min and needs 20 kWh: at 22 kW that takes ~55 min, it is late already.
    plaza.cycle(requests={"c2": (plaza.t + 2400.0, 20_000.0), "c1": (plaza.t + 36_000.0, 10_000.0)})
    # The calm sessions drop to 6 A at once; c2 takes the room once their chargers have followed.
    sp = plaza.cycle()
    assert sp["c1"] == pytest.approx(6.0)
    assert sp["c3"] == pytest.approx(6.0)
    for _ in range(3):
        sp = plaza.cycle()
    assert sp == pytest.approx({"c1": 6.0, "c2": 32.0, "c3": 6.0})


def test_ramp_up_is_gradual_and_ramp_down_immediate() -> None:
    plaza = Plaza.from_yaml(THREE.replace("ramp_up_a_per_s: 100", "ramp_up_a_per_s: 4"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    seen = [
        plaza.cycle(evs={"c1": drawing(plaza.last.setpoints[0].current_a if plaza.last else 0)})["c1"] for _ in range(6)
    ]
    assert seen == pytest.approx([10.0, 14.0, 18.0, 22.0, 26.0, 30.0])
    # The building takes 25 A next to the EV's 30 A: down to 15 A in this very cycle.
    sp = plaza.cycle(evs={"c1": drawing(30.0)}, meters={"m_grid": (55.0, 55.0, 55.0)})
    assert sp["c1"] == pytest.approx(15.0)


def test_paused_session_waits_for_the_resume_delay_and_a_margin() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 20\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert plaza.cycle(evs={"c1": drawing(20.0)}, meters={"m_grid": (20.0, 20.0, 20.0)})["c1"] == pytest.approx(20.0)
    # The building takes 16 A: 4 A left is below 6 A, the session pauses.
    assert plaza.cycle(meters={"m_grid": (36.0, 36.0, 36.0)})["c1"] == 0.0
    plaza.cycle(evs={"c1": Ev(state="B2")}, meters={"m_grid": (16.0, 16.0, 16.0)})
    # The building drops back at once, but the session stays paused for the resume delay.
    for _ in range(5):
        assert plaza.cycle(meters={"m_grid": (6.0, 6.0, 6.0)})["c1"] == 0.0
    assert plaza.cycle(dt=60.0)["c1"] == pytest.approx(14.0)


def test_paused_session_needs_the_resume_margin_on_top_of_the_minimum() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 20\n"))
    plaza.cycle(meters={"m_grid": (14.5, 14.5, 14.5)}, evs={"c1": Ev(), "c2": None, "c3": None})
    # 5.5 A free: below 6 A. Then 6.5 A free: the minimum fits but not the 1 A start margin.
    assert plaza.cycle()["c1"] == 0.0
    assert plaza.cycle(meters={"m_grid": (13.5, 13.5, 13.5)})["c1"] == 0.0
    assert plaza.cycle(meters={"m_grid": (12.5, 12.5, 12.5)})["c1"] == pytest.approx(7.5)


def test_stale_meter_assumes_its_limit_is_used_and_pauses_everything_below() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert plaza.cycle()["c1"] > 0.0
    plaza.silence("m_grid")
    plaza.cycle()
    plaza.cycle()
    assert plaza.cycle()["c1"] > 0.0  # 3 s old: still fresh (stale when older than 3 s)
    assert plaza.cycle()["c1"] == 0.0  # 4 s old: stale


def test_nan_meter_value_is_bad_and_pauses_everything_below() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert plaza.cycle()["c1"] > 0.0
    assert plaza.cycle(meters={"m_grid": (float("nan"), 0.0, 0.0)})["c1"] == 0.0


def test_silent_charger_is_counted_at_its_worst_and_others_make_room() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 80\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": None})
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    plaza.cycle(evs={"c1": drawing(32.0), "c2": drawing(32.0)}, meters={"m_grid": (64.0, 64.0, 64.0)})
    plaza.silence("c1")
    for _ in range(3):
        plaza.cycle()
    sp = plaza.cycle()
    # c1 no longer answers: it is held at its last 32 A and reserved at 32 A on top of the meter
    # reading, which may contain its real draw (counted twice, on purpose: its draw is unknown).
    assert sp["c1"] == pytest.approx(32.0)
    assert sp["c2"] == pytest.approx(16.0)
    plaza.wake("c1")
    plaza.cycle(evs={"c2": drawing(16.0)}, meters={"m_grid": (48.0, 48.0, 48.0)})
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})


def test_ev_drawing_less_than_offered_frees_capacity_for_others() -> None:
    plaza = Plaza.from_yaml(THREE.replace("limit_a: 40\n", "limit_a: 44\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": None})
    assert plaza.cycle() == pytest.approx({"c1": 22.0, "c2": 22.0, "c3": 0.0})
    # c1's EV only takes 10 A (on-board charger limit): after 30 s it is capped at 12 A.
    for _ in range(31):
        sp = plaza.cycle(evs={"c1": drawing(10.0), "c2": drawing(22.0)}, meters={"m_grid": (32.0, 32.0, 32.0)})
    assert sp["c1"] == pytest.approx(12.0)
    for _ in range(4):
        sp = plaza.cycle()
    assert sp["c2"] == pytest.approx(32.0)


def test_decrease_in_flight_is_not_handed_to_another_charger_before_the_response_delay() -> None:
    text = THREE.replace("limit_a: 40\n", "limit_a: 44\n").replace(
        "connectors: [{id: c1}]", "connectors: [{id: c1, response_delay_s: 5}]"
    )
    text = text.replace("{id: c2}]}", "{id: c2, response_delay_s: 5}]}")
    text += "priorities:\n  users: [{id_token: VIP, priority: 5}]\n"
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert plaza.cycle(evs={"c1": drawing(0.0)})["c1"] == pytest.approx(32.0)
    plaza.cycle(evs={"c1": drawing(32.0)}, meters={"m_grid": (32.0, 32.0, 32.0)})
    # A VIP plugs into c2: c1 must give way to 12 A, but its charger needs 5 s to follow.
    sp = plaza.cycle(evs={"c2": Ev(id_token="VIP")})
    assert sp == pytest.approx({"c1": 12.0, "c2": 12.0, "c3": 0.0})
    during = [plaza.cycle()["c2"] for _ in range(5)]
    # While c1 may still draw 32 A, c2 gets what is left beside it: 44 - 32 = 12 A.
    assert during[1:] == pytest.approx([12.0] * 4)
    # c1's charger has followed: it draws its 12 A (still drawing 32 A now would be an overdraw).
    assert plaza.cycle(evs={"c1": drawing(12.0)}, meters={"m_grid": (12.0, 12.0, 12.0)})["c2"] == pytest.approx(32.0)


def test_fire_alarm_pauses_everything_in_the_same_cycle_and_latches_until_reset() -> None:
    text = (
        THREE
        + """
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(
        meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": None}, battery={"bess": (50.0, 0.0)}
    )
    assert plaza.cycle()["c1"] > 0.0
    sp = plaza.cycle(contacts={"fire": False})
    assert set(sp.values()) == {0.0}
    assert plaza.last is not None
    assert plaza.last.mode is SiteMode.FIRE
    assert all(b.standby and b.power_w == 0.0 for b in plaza.last.batteries)
    assert set(plaza.cycle(contacts={"fire": True}).values()) == {0.0}  # contact healthy: still latched
    assert set(plaza.cycle(dt=120.0).values()) == {0.0}
    plaza.cycle(resets=[("fire", "alice")])
    assert mode_of(plaza) is SiteMode.NORMAL
    assert [e.kind for e in plaza.last.events] == ["reset"]


def test_silent_fire_panel_io_module_is_an_alarm() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    plaza.silence("fire")
    for _ in range(3):
        plaza.cycle()
    assert mode_of(plaza) is SiteMode.NORMAL
    assert set(plaza.cycle().values()) == {0.0}
    assert mode_of(plaza) is SiteMode.FIRE


def test_emergency_stop_pauses_and_latches() -> None:
    plaza = Plaza.from_yaml(THREE)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    assert set(plaza.cycle(contacts={"estop": False}).values()) == {0.0}
    assert plaza.last is not None
    assert plaza.last.mode is SiteMode.EMERGENCY_STOP
    plaza.cycle(contacts={"estop": True})
    assert plaza.last.mode is SiteMode.EMERGENCY_STOP


def test_dso_stage_scales_the_connection_limit_and_a_silent_dso_input_fails_safe() -> None:
    text = THREE + "dso: {id: dso, node: grid, fail_safe_pct: 30}\n"
    plaza = Plaza.from_yaml(text.replace("limit_a: 40\n", "limit_a: 100\n"))
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": None}, dso_pct=100.0)
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert plaza.cycle(dso_pct=60.0) == pytest.approx({"c1": 30.0, "c2": 30.0, "c3": 0.0})
    plaza.silence("dso")
    for _ in range(3):
        plaza.cycle()
    assert plaza.cycle() == pytest.approx({"c1": 15.0, "c2": 15.0, "c3": 0.0})


def test_node_power_limit_binds_across_phases() -> None:
    text = THREE.replace("limit_a: 40\n", "limit_a: 100\n  power_limit_kw: 22.08\n")
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": None})
    # 22.08 kW / (230 V x 3 phases) = 32 A in all, 16 A each.
    assert plaza.cycle() == pytest.approx({"c1": 16.0, "c2": 16.0, "c3": 0.0})


def test_metered_sub_board_protects_its_subtree_while_parent_has_room() -> None:
    text = (
        BASE
        + """
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: sub
      limit_a: 40
      meter: m_sub
      children:
        - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
        - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(
        meters={"m_grid": (30.0, 30.0, 30.0), "m_sub": (20.0, 20.0, 20.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()}
    )
    assert plaza.cycle() == pytest.approx({"c1": 10.0, "c2": 10.0, "c3": 32.0})


def test_dc_connector_gets_a_power_setpoint() -> None:
    text = (
        BASE
        + """
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: hpc
      limit_a: 250
      connectors: [{id: d1, type: dc, max_power_kw: 150, min_power_kw: 5}]
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(meters={"m_grid": (10.0, 10.0, 10.0)}, evs={"d1": Ev()})
    plaza.cycle()
    assert plaza.last is not None
    setpoint = plaza.last.setpoints[0]
    assert setpoint.current_a == pytest.approx(90.0)
    assert setpoint.power_w == pytest.approx(90.0 * 3 * 230.0)


def test_battery_discharges_to_shave_a_peak_when_sessions_are_curtailed() -> None:
    text = (
        THREE
        + """
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50}
"""
    )
    plaza = Plaza.from_yaml(text)
    plaza.cycle(
        meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()}, battery={"bess": (60.0, 0.0)}
    )
    plaza.cycle()
    assert plaza.last is not None
    assert plaza.last.batteries[0].power_w < -20_000.0
    # An empty battery is never asked to discharge.
    plaza.cycle(battery={"bess": (5.0, 0.0)})
    assert plaza.last.batteries[0].power_w >= 0.0


PV_SITE = (
    THREE.replace("limit_a: 40\n", "limit_a: 63\n")
    + """
priorities:
  users: [{id_token: SUN, priority: 1, flexible: true}]
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50}
"""
)


def test_flexible_session_waits_for_pv_surplus_and_takes_only_the_surplus() -> None:
    plaza = Plaza.from_yaml(PV_SITE)
    # Importing 10 A per phase: no surplus, the flexible session waits.
    plaza.cycle(
        meters={"m_grid": (10.0, 10.0, 10.0)},
        evs={"c1": Ev(id_token="SUN"), "c2": None, "c3": None},
        battery={"bess": (50.0, 0.0)},
    )
    assert plaza.cycle()["c1"] == 0.0
    # 9.66 kW exported (14 A per phase, signed negative): the session takes that much.
    sp = plaza.cycle(dt=61.0, meters={"m_grid": (-14.0, -14.0, -14.0)})
    assert sp["c1"] == pytest.approx(14.0)


def test_battery_charges_from_exported_pv_and_stays_idle_otherwise() -> None:
    plaza = Plaza.from_yaml(PV_SITE)
    plaza.cycle(
        meters={"m_grid": (10.0, 10.0, 10.0)}, evs={"c1": None, "c2": None, "c3": None}, battery={"bess": (50.0, 0.0)}
    )
    plaza.cycle()
    assert plaza.last is not None
    assert plaza.last.batteries[0].power_w == 0.0
    plaza.cycle(meters={"m_grid": (-10.0, -10.0, -10.0)})
    assert plaza.last.batteries[0].power_w == pytest.approx(6900.0)
    # A full battery is never asked to charge.
    plaza.cycle(battery={"bess": (96.0, 0.0)})
    assert plaza.last.batteries[0].power_w <= 0.0
