"""Targets of a plan (or of the fallback schedule) in the cycle: intent only, protection wins, seamless switches."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.image import SessionRequest
from controller.targets import PriceCurve, TargetFollower, Targets
from tests.cycles import T0, Ev, Plaza

SITE = """
site: {id: t}
scan: {period_ms: 1000, stale_after_ms: 3000}
margins: {current_a: 0, power_kw: 0}
control: {ramp_up_a_per_s: 100, resume_delay_s: 60, resume_margin_a: 1, target_switch_s: 10}
meters: [{id: m_grid}]
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: sub
      limit_a: 40
      children:
        - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
        - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
"""


def plaza() -> Plaza:
    p = Plaza.from_yaml(SITE)
    p.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": Ev(), "c3": Ev()})
    return p


def test_a_plan_target_caps_a_session_and_the_room_goes_to_the_others() -> None:
    p = plaza()
    p.snapshot.targets = Targets("plan", {"c1": 10.0})
    assert p.cycle()["c1"] == pytest.approx(10.0)
    # c2 takes what c1 gave up once c1's decrease has had its response delay (break before make).
    sp = [p.cycle() for _ in range(4)][-1]
    assert sp["c1"] == pytest.approx(10.0)
    assert sp["c2"] == pytest.approx(30.0), "sub's 40 A less c1's 10 A"
    assert sp["c3"] == pytest.approx(32.0), "no target: its own demand"
    assert p.last is not None
    assert p.last.target_source == "plan"
    assert p.last.clamped == ()


def test_a_target_below_the_minimum_current_waits() -> None:
    p = plaza()
    p.snapshot.targets = Targets("plan", {"c1": 3.0})
    assert p.cycle()["c1"] == 0.0


def test_full_power_everywhere_is_clamped_by_local_protection_and_reported() -> None:
    # The plan asks 32 A on every connector; sub is at its 40 A limit with two of them.
    p = plaza()
    p.snapshot.targets = Targets("plan", {"c1": 32.0, "c2": 32.0, "c3": 32.0})
    sp = p.cycle()
    assert sp["c1"] + sp["c2"] <= 40.0 + 1e-9
    assert sp["c3"] == pytest.approx(32.0)
    assert p.last is not None
    assert set(p.last.clamped) == {"c1", "c2"}, "what protection cut is named; c3 got its target"


def test_a_plans_import_cap_holds_the_import_against_the_measured_building_load() -> None:
    # The connectors are three-phase: 1 A on each phase is 690 W. The building draws 10 A a phase
    # (6.9 kW); the plan's cap leaves 24 A for charging, shared max-min fairly below the targets.
    p = plaza()
    cap_w = 6_900.0 + 24 * 690.0
    p.snapshot.targets = Targets("plan", {"c1": 12.0, "c2": 12.0, "c3": 32.0}, site_import_cap_w=cap_w)
    sp = p.cycle(meters={"m_grid": (10.0, 10.0, 10.0)})
    assert sp == pytest.approx({"c1": 8.0, "c2": 8.0, "c3": 8.0})
    assert p.last is not None
    grid = p.last.limits[p.site.node_index["grid"]]
    assert (grid.reason, grid.power_w) == ("fuse", math.inf), "the cap is the plan's intent, not a limit"
    # The building rises 10 A a phase above what the plan expected: charging gives way, not the cap.
    sp = p.cycle(meters={"m_grid": (20.0, 20.0, 20.0)})
    assert sum(sp.values()) <= 14.0 + 1e-9
    assert all(a == 0.0 or a >= 6.0 for a in sp.values()), sp
    # A cap below the building alone pauses charging; it cannot ask the building to shed.
    p.snapshot.targets = Targets("plan", {"c1": 12.0, "c2": 12.0, "c3": 32.0}, site_import_cap_w=5_000.0)
    assert p.cycle(meters={"m_grid": (10.0, 10.0, 10.0)}) == {"c1": 0.0, "c2": 0.0, "c3": 0.0}
    # Without a cap the same plan gets its targets, once the paused sessions' resume delay (60 s) is over.
    p.snapshot.targets = Targets("plan", {"c1": 12.0, "c2": 12.0, "c3": 32.0})
    sp = [p.cycle(dt=61.0 if i == 0 else None, meters={"m_grid": (10.0, 10.0, 10.0)}) for i in range(3)][-1]
    assert sp == pytest.approx({"c1": 12.0, "c2": 12.0, "c3": 32.0})


def test_no_plan_means_no_targets_and_nothing_is_clamped() -> None:
    p = plaza()
    sp = p.cycle()
    assert sp["c1"] + sp["c2"] == pytest.approx(40.0)
    assert p.last is not None
    assert p.last.target_source is None
    assert p.last.clamped == ()


def test_switching_source_pauses_nobody_and_glides_down() -> None:
    # The plan charges c1 at 20 A; the fallback then wants it to wait (0 A). Over target_switch_s (10 s)
    # the target glides from 20 A down, never below the 6 A minimum; after it, the fallback's 0 applies.
    p = plaza()
    p.snapshot.targets = Targets("plan", {"c1": 20.0})
    assert p.cycle()["c1"] == pytest.approx(20.0)
    p.snapshot.targets = Targets("fallback", {"c1": 0.0})
    seen = [p.cycle()["c1"] for _ in range(10)]
    assert seen[0] == pytest.approx(20.0)  # the glide starts where the plan was
    assert all(a >= 6.0 for a in seen), seen
    assert all(b <= a for a, b in itertools.pairwise(seen)), "it only comes down"
    assert seen[-1] < 10.0
    assert p.cycle()["c1"] == 0.0, "after the switch window the fallback decides"
    assert p.last is not None
    assert p.last.target_source == "fallback"


def test_follower_applies_rises_at_once_and_a_new_target_within_one_source_as_it_is() -> None:
    follower = TargetFollower(switch_s=10.0)
    minimum = {"c1": 6.0}
    assert follower.follow(Targets("plan", {"c1": 20.0}), 0.0, minimum) == {"c1": 20.0}
    assert follower.follow(Targets("plan", {"c1": 8.0}), 1.0, minimum) == {"c1": 8.0}
    assert follower.follow(Targets("fallback", {"c1": 16.0}), 2.0, minimum) == {"c1": 16.0}
    # A session that was not charging (target 0) is not started by the glide.
    follower.follow(Targets("fallback", {"c1": 0.0}), 20.0, minimum)
    assert follower.follow(Targets("plan", {"c1": 0.0}), 21.0, minimum) == {"c1": 0.0}


def test_price_curve_steps_and_lookup() -> None:
    curve = PriceCurve([0.0, 3600.0, 7200.0], [50.0, 20.0, 80.0])
    assert curve.at(-1.0) is None
    assert curve.at(0.0) == 50.0
    assert curve.at(3600.0) == 20.0
    assert curve.at(10_799.0) == 80.0
    assert curve.at(10_800.0) is None
    assert curve.steps(1800.0, 5400.0) == [(1800.0, 3600.0, 50.0), (3600.0, 5400.0, 20.0)]
    with pytest.raises(ValueError, match="increase"):
        PriceCurve([0.0, 0.0], [1.0, 2.0])


def test_without_a_plan_the_fallback_waits_for_the_cheap_hours_and_a_plan_overrides_it() -> None:
    p = Plaza.from_yaml(SITE)
    # Expensive for four hours, then cheap; the EV leaves in 8 h and wants 20 kWh (about 1 h at 22 kW).
    p.snapshot.prices = PriceCurve([T0 + h * 3600.0 for h in range(8)], [200.0] * 4 + [20.0] * 4)
    departure = T0 + 8 * 3600.0
    p.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs={"c1": Ev(), "c2": None, "c3": None})
    sp = p.cycle(requests={"c1": (departure, 20_000.0)})
    assert sp["c1"] == 0.0, "it waits in the expensive hours"
    assert p.last is not None
    assert p.last.target_source == "fallback"
    p.snapshot.targets = Targets("plan", {"c1": 16.0}, reference="p1")
    sp = follow(p, 3)
    assert sp["c1"] == pytest.approx(16.0), "a usable plan decides, not the fallback"
    p.snapshot.targets = None
    p.cycle(dt=4 * 3600.0)  # into the cheap hours (and past the switch glide)
    assert follow(p, 5)["c1"] == pytest.approx(32.0), "the fallback charges in the cheapest hours"


def follow(p: Plaza, cycles: int) -> dict[str, float]:
    """Run cycles in which c1's EV draws what it was told (an EV that draws less gets its demand capped)."""
    sp = p.cycle()
    for _ in range(cycles - 1):
        a = sp["c1"]
        sp = p.cycle(evs={"c1": Ev(current_a=(a, a, a))})
    return sp


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["c1", "c2", "c3", "zz"]),
            st.floats(allow_nan=True, allow_infinity=True),
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.sampled_from(["plan", "fallback", None]), min_size=1, max_size=6),
)
def test_no_target_whatever_it_says_pushes_a_node_over_its_limit(
    targets: list[dict[str, float]], sources: list[str | None]
) -> None:
    p = plaza()
    for i, wanted in enumerate(targets):
        source = sources[i % len(sources)]
        p.snapshot.targets = None if source is None else Targets(source, wanted)  # type: ignore[arg-type]
        for _ in range(3):
            sp = follow(p, 1)
            assert all(math.isfinite(a) and a >= 0.0 for a in sp.values()), sp
            assert sp["c1"] + sp["c2"] <= 40.0 + 1e-6, sp
            assert max(sp.values()) <= 32.0 + 1e-6, sp


def test_a_fleet_priority_request_serves_its_session_first() -> None:
    p = plaza()
    p.snapshot.requests["c2"] = SessionRequest(None, None, T0, priority=9)
    sp = follow(p, 4)
    assert sp["c2"] == pytest.approx(32.0), "priority 9 is served first on sub's 40 A"
    assert sp["c1"] == pytest.approx(8.0)


BATTERY_SITE = """
site: {id: tb}
scan: {period_ms: 1000, stale_after_ms: 3000}
margins: {current_a: 0, power_kw: 0}
meters: [{id: m_grid}]
tree:
  id: grid
  limit_a: 63
  meter: m_grid
  connectors: [{id: c1}]
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50}
"""


def battery_w(p: Plaza) -> float:
    assert p.last is not None
    return p.last.batteries[0].power_w


def test_a_plan_battery_target_is_followed_within_the_room_left_and_the_soc_bounds() -> None:
    p = Plaza.from_yaml(BATTERY_SITE)
    p.cycle(meters={"m_grid": (10.0, 10.0, 10.0)}, evs={"c1": None}, battery={"bess": (50.0, 0.0)})
    p.snapshot.targets = Targets("plan", batteries={"bess": -15_000.0})
    p.cycle()
    assert battery_w(p) == pytest.approx(-15_000.0), "a discharge only lowers the import"
    # Charging from the grid: 63 A less the 10 A building is 36.6 kW, less a 6 A band: 32.4 kW.
    p.snapshot.targets = Targets("plan", batteries={"bess": 45_000.0})
    p.cycle(battery={"bess": (50.0, 0.0)})
    room_w = (63.0 - 10.0 - 6.0) * 3 * 230.0
    assert battery_w(p) == pytest.approx(room_w)
    p.snapshot.targets = Targets("plan", batteries={"bess": 20_000.0})
    p.cycle()
    assert battery_w(p) == pytest.approx(20_000.0)
    p.cycle(battery={"bess": (96.0, 0.0)})  # full
    assert battery_w(p) <= 0.0
