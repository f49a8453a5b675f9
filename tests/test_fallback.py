"""The local fallback schedule: cheap steps, urgency, missing prices, walk-ins, PV surplus, battery, stability."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import parse_config
from controller.image import ConnectorReading, InputSnapshot, MeterReading, freeze
from controller.intent import Intent, Session
from controller.limits import NodeLimit
from controller.site import Site, compile_site
from controller.targets import PriceCurve
from fallback import (
    BatteryInput,
    FallbackInputs,
    FallbackSchedule,
    SessionInput,
    import_limit_w,
    session_input,
    uncontrolled_surplus_w,
)
from fallback.prices import DAY_S, build_horizon

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
H = 3600.0
V = 230.0

SITE = """
site: {id: t}
meters: [{id: m_grid}]
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50, soc_min_pct: 10, soc_max_pct: 95}
"""


def make_site() -> Site:
    return compile_site(parse_config(SITE).config)


def night_cheap_curve(days: int = 2) -> PriceCurve:
    """Hourly from T0: 20 EUR/MWh 00-06, 200 in the evening 17-22, 80 otherwise."""
    prices = []
    for h in range(24 * days):
        hour = h % 24
        prices.append(20.0 + hour if hour < 6 else 200.0 if 17 <= hour < 22 else 80.0)
    return PriceCurve(starts_ts=[T0 + h * H for h in range(24 * days)], prices_eur_mwh=prices)


def session(
    connector: str = "c1",
    *,
    remaining_wh: float | None = 22_000.0,
    departure_ts: float | None = T0 + 31 * H,
    max_a: float = 16.0,
    phases: int = 3,
    priority: int = 1,
    flexible: bool = False,
) -> SessionInput:
    return SessionInput(connector, phases, 6.0, max_a, remaining_wh, departure_ts, priority, flexible)


def inputs(
    *sessions: SessionInput,
    prices: PriceCurve | None = None,
    pv_w: float = 0.0,
    grid_w: float = 0.0,
    limit_w: float = 69_000.0,
    batteries: tuple[BatteryInput, ...] = (),
) -> FallbackInputs:
    return FallbackInputs(list(sessions), prices, pv_w, grid_w, limit_w, batteries)


# -- departure-aware sessions ------------------------------------------------------------------------


def test_departing_session_charges_in_the_cheap_night_and_waits_in_the_expensive_evening() -> None:
    schedule = FallbackSchedule(make_site())
    curve = night_cheap_curve()
    # Plugged in at 18:00, leaves at 07:00, needs 2 h at 11 kW: planned 2.4 h -> the three cheapest night hours.
    for hour in (18, 20, 23):
        out = schedule.targets(inputs(session(), prices=curve), T0 + hour * H)
        assert out.source == "fallback"
        assert out.connectors["c1"] == 0.0, hour
        assert schedule.rules["c1"] == "wait"
    out = schedule.targets(inputs(session(), prices=curve), T0 + 24 * H)
    assert out.connectors["c1"] == 16.0
    assert schedule.rules["c1"] == "cheap_step"
    # Integrated: it waits from 18:00 to midnight, charges at full rate and is done 2 h later.
    reached_ts, changes = simulate(FallbackSchedule(make_site()), session(), curve, T0 + 18 * H)
    assert changes == [(T0 + 18 * H, 0.0), (T0 + 24 * H, 16.0), (pytest.approx(T0 + 26 * H, abs=60.0), 0.0)]
    assert reached_ts == pytest.approx(T0 + 26 * H, abs=60.0)


def test_session_with_little_slack_charges_at_max_now_even_in_the_expensive_evening() -> None:
    schedule = FallbackSchedule(make_site())
    # Leaves at 20:45 and needs 2 h at full rate: 1.2 x 2 h + the 30 min margin > the 2.75 h left.
    urgent = session(departure_ts=T0 + 20.75 * H)
    out = schedule.targets(inputs(urgent, prices=night_cheap_curve()), T0 + 18 * H)
    assert out.connectors["c1"] == 16.0
    assert schedule.rules["c1"] == "urgent"


def test_without_prices_sessions_charge_at_max() -> None:
    schedule = FallbackSchedule(make_site())
    out = schedule.targets(inputs(session(), session("c2", departure_ts=None)), T0 + 18 * H)
    assert out.connectors == {"c1": 16.0, "c2": 16.0}
    assert set(schedule.rules.values()) == {"no_prices"}
    # A curve shorter than a day cannot be repeated: beyond it prices are unknown, as good as flat.
    short = PriceCurve(starts_ts=[T0 + 18 * H, T0 + 19 * H], prices_eur_mwh=[200.0, 10.0])
    out = FallbackSchedule(make_site()).targets(inputs(session(), prices=short), T0 + 18 * H)
    assert out.connectors["c1"] == 16.0


def test_a_curve_that_ends_is_repeated_by_hour_of_day() -> None:
    one_day = PriceCurve(starts_ts=[T0 + h * H for h in range(24)], prices_eur_mwh=[float(h) for h in range(24)])
    horizon = build_horizon(one_day, T0 + 2 * DAY_S + 5.5 * H)
    assert horizon is not None
    assert horizon.complete
    assert horizon.steps[0] == (T0 + 2 * DAY_S + 5 * H, T0 + 2 * DAY_S + 6 * H, 5.0)
    assert [p for _, _, p in horizon.steps[:20]] == [float(h % 24) for h in range(5, 25)]
    # ... so a session planned after the curve ran out still charges in the (repeated) cheapest hours.
    schedule = FallbackSchedule(make_site())
    late = session(remaining_wh=11_000.0, departure_ts=T0 + 3 * DAY_S + 12 * H)
    assert schedule.targets(inputs(late, prices=one_day), T0 + 2 * DAY_S + 18 * H).connectors["c1"] == 0.0
    assert schedule.targets(inputs(late, prices=one_day), T0 + 3 * DAY_S + 60.0).connectors["c1"] == 16.0


def simulate(
    schedule: FallbackSchedule, s: SessionInput, prices: PriceCurve, start_ts: float, dt_s: float = 60.0
) -> tuple[float | None, list[tuple[float, float]]]:
    """Integrate target x voltage x phases in cycles of ``dt_s``: when the target was reached (to the second,
    within its cycle), and every change of target."""
    assert s.remaining_wh is not None
    assert s.departure_ts is not None
    remaining_wh = s.remaining_wh
    reached_ts: float | None = None
    changes: list[tuple[float, float]] = []
    last_a = -1.0
    t = start_ts
    while t < s.departure_ts:
        given = inputs(replace(s, remaining_wh=remaining_wh), prices=prices)
        target_a = schedule.targets(given, t).connectors[s.connector]
        if target_a != last_a:
            changes.append((t, target_a))
            last_a = target_a
        if reached_ts is not None:
            break
        power_w = target_a * V * s.phase_count
        if power_w * dt_s / H >= remaining_wh:
            reached_ts = t + remaining_wh / power_w * H
            remaining_wh = 0.0
        else:
            remaining_wh -= power_w * dt_s / H
        t += dt_s
    return reached_ts, changes


@settings(max_examples=60, deadline=None)
@given(
    max_a=st.floats(6.0, 32.0),
    phases=st.sampled_from([1, 3]),
    energy_wh=st.floats(500.0, 60_000.0),
    start_s=st.floats(0.0, DAY_S),
    spare=st.floats(1.21, 6.0),
    prices=st.lists(st.floats(-50.0, 400.0), min_size=48, max_size=48),
)
def test_a_feasible_session_reaches_its_energy_before_departure(
    max_a: float, phases: int, energy_wh: float, start_s: float, spare: float, prices: list[float]
) -> None:
    needed_s = energy_wh / (max_a * V * phases) * H
    departure_ts = T0 + start_s + min(spare * needed_s, 40 * H)
    if departure_ts - (T0 + start_s) <= 1.2 * needed_s:
        return  # capped at 40 h: no longer feasible with the safety factor
    curve = PriceCurve(starts_ts=[T0 + h * H for h in range(48)], prices_eur_mwh=prices)
    s = session(remaining_wh=energy_wh, departure_ts=departure_ts, max_a=max_a, phases=phases)
    reached_ts, _ = simulate(FallbackSchedule(make_site()), s, curve, T0 + start_s)
    assert reached_ts is not None
    assert reached_ts <= departure_ts


def test_a_session_switches_only_at_price_step_edges() -> None:
    # An EV that takes a little less than its target (float noise) over a whole evening and night.
    schedule = FallbackSchedule(make_site())
    s = session(remaining_wh=40_000.0, departure_ts=T0 + 31 * H)
    _, changes = simulate(schedule, s, night_cheap_curve(), T0 + 18 * H + 7.0, dt_s=10.0)
    assert len(changes) >= 3  # waits, charges, stops
    for t, target_a in changes[1:]:
        assert (t - T0) % H < 10.0 or target_a == 0.0, (t - T0) / H


def test_a_refresh_never_switches_off_the_step_a_session_charges_in() -> None:
    # Cheapest: 01:00, then 03:00, then 00:00. Planned at 23:00 the 2.4 h need all three; half an hour into
    # midnight's step the other two would do, but the session keeps charging until the step ends.
    prices = [100.0] * 48
    prices[24], prices[25], prices[27] = 12.0, 10.0, 11.0
    curve = PriceCurve(starts_ts=[T0 + h * H for h in range(48)], prices_eur_mwh=prices)
    _, changes = simulate(FallbackSchedule(make_site()), session(), curve, T0 + 23 * H)
    assert changes == [(T0 + 23 * H, 0.0), (T0 + 24 * H, 16.0), (pytest.approx(T0 + 26 * H, abs=60.0), 0.0)]


def test_identical_inputs_give_identical_outputs() -> None:
    a, b = FallbackSchedule(make_site()), FallbackSchedule(make_site())
    curve = night_cheap_curve()
    sessions = (session(), session("c2", departure_ts=None), session("c3", flexible=True))
    for k in range(200):
        now = T0 + 17 * H + k * 300.0
        given = inputs(
            *sessions,
            prices=curve,
            pv_w=3000.0 + (k % 7) * 1000.0,
            grid_w=20_000.0,
            batteries=(BatteryInput("bess", 50.0, 0.0),),
        )
        out_a, out_b = a.targets(given, now), b.targets(given, now)
        assert out_a == out_b
        assert a.targets(given, now) == out_a  # and the same schedule asked twice


# -- walk-ins ----------------------------------------------------------------------------------------


def test_walk_in_charges_below_the_median_and_at_its_minimum_above_it_unless_high_priority() -> None:
    curve = night_cheap_curve()
    walk_in, vip = session(departure_ts=None), session("c2", departure_ts=None, priority=5)
    schedule = FallbackSchedule(make_site())
    evening = schedule.targets(inputs(walk_in, vip, prices=curve), T0 + 18 * H)
    assert evening.connectors == {"c1": 6.0, "c2": 16.0}
    assert schedule.rules == {"c1": "walk_in_low", "c2": "priority"}
    night = schedule.targets(inputs(walk_in, vip, prices=curve), T0 + 26 * H)
    assert night.connectors == {"c1": 16.0, "c2": 16.0}


# -- PV surplus --------------------------------------------------------------------------------------


def test_pv_surplus_raises_waiting_sessions_and_flexible_ones_charge_only_from_it() -> None:
    curve = night_cheap_curve()
    waiting, flexible = session(), session("c2", flexible=True)
    schedule = FallbackSchedule(make_site())
    assert schedule.targets(inputs(waiting, flexible, prices=curve), T0 + 12 * H).connectors == {"c1": 0.0, "c2": 0.0}
    # 9.66 kW of surplus: the waiting session (it needs its energy) takes it, 14 A on three phases.
    out = schedule.targets(inputs(waiting, flexible, prices=curve, pv_w=9660.0), T0 + 12 * H + 1.0)
    assert out.connectors["c1"] == pytest.approx(14.0)
    assert out.connectors["c2"] == 0.0
    # 20 kW: the waiting session is full at 16 A, the flexible one gets the rest.
    out = schedule.targets(inputs(waiting, flexible, prices=curve, pv_w=20_000.0), T0 + 12 * H + 2.0)
    assert out.connectors["c1"] == pytest.approx(16.0)
    assert out.connectors["c2"] == pytest.approx((20_000.0 - 16 * 3 * V) / (3 * V))
    assert schedule.rules == {"c1": "pv", "c2": "pv"}


def test_surplus_hovering_at_a_sessions_minimum_does_not_switch_it_on_and_off() -> None:
    schedule = FallbackSchedule(make_site())
    flexible = session(flexible=True)
    min_w = 6.0 * 3 * V
    # Just above the minimum is not enough to start (the start margin) ...
    assert schedule.targets(inputs(flexible, pv_w=min_w + 100.0), T0).connectors["c1"] == 0.0
    # ... once started it runs on while the surplus dithers around the minimum.
    assert schedule.targets(inputs(flexible, pv_w=min_w + 1000.0), T0 + 1.0).connectors["c1"] > 0.0
    for k in range(20):
        out = schedule.targets(inputs(flexible, pv_w=min_w + (1e-6 if k % 2 else 1e-3)), T0 + 2.0 + k)
        assert out.connectors["c1"] == pytest.approx(6.0)


# -- battery -----------------------------------------------------------------------------------------


def test_battery_shaves_import_above_the_threshold_and_never_below_its_min_soc() -> None:
    schedule = FallbackSchedule(make_site())
    limit_w = 69_000.0
    # 80 % of 69 kW is 55.2 kW; importing 65 kW: discharge the 9.8 kW above it.
    out = schedule.targets(inputs(grid_w=65_000.0, limit_w=limit_w, batteries=(BatteryInput("bess", 50.0, 0.0),)), T0)
    assert out.batteries["bess"] == pytest.approx(-9800.0)
    # The battery already discharging 9.8 kW: the import shown (55.2 kW) does not make it stop.
    out = schedule.targets(
        inputs(grid_w=55_200.0, limit_w=limit_w, batteries=(BatteryInput("bess", 50.0, -9800.0),)), T0 + 1.0
    )
    assert out.batteries["bess"] == pytest.approx(-9800.0)
    # Below the threshold: hold.
    out = schedule.targets(inputs(grid_w=40_000.0, limit_w=limit_w, batteries=(BatteryInput("bess", 50.0, 0.0),)), T0)
    assert out.batteries["bess"] == 0.0
    # At its min SoC it stops, and starts again only 2 % above it.
    for soc, expected in ((10.0, 0.0), (11.0, 0.0), (12.0, -9800.0)):
        out = schedule.targets(
            inputs(grid_w=65_000.0, limit_w=limit_w, batteries=(BatteryInput("bess", soc, 0.0),)), T0 + 2.0
        )
        assert out.batteries["bess"] == pytest.approx(expected), soc


def test_battery_charges_from_surplus_left_by_sessions_and_in_the_cheapest_steps() -> None:
    schedule = FallbackSchedule(make_site())
    curve = night_cheap_curve()
    bess = (BatteryInput("bess", 50.0, 0.0),)
    # 20 kW surplus, one session takes 11.04 kW of it: the battery the rest.
    out = schedule.targets(inputs(session(), prices=curve, pv_w=20_000.0, batteries=bess), T0 + 12 * H)
    assert out.batteries["bess"] == pytest.approx(20_000.0 - 16 * 3 * V)
    # A full battery does not charge.
    full = (BatteryInput("bess", 95.0, 0.0),)
    assert schedule.targets(inputs(prices=curve, pv_w=20_000.0, batteries=full), T0 + 12 * H).batteries["bess"] == 0.0
    # 45 kWh to fill at 50 kW: about one hour -> the cheapest step of the next day, 00:00, from the grid,
    # up to the peak threshold; in a dear hour it holds.
    fresh = FallbackSchedule(make_site())
    night = fresh.targets(inputs(prices=curve, grid_w=30_000.0, batteries=bess), T0 + 24 * H + 60.0)
    assert night.batteries["bess"] == pytest.approx(min(50_000.0, 0.8 * 69_000.0 - 30_000.0))
    day = FallbackSchedule(make_site()).targets(inputs(prices=curve, batteries=bess), T0 + 12 * H)
    assert day.batteries["bess"] == 0.0


# -- filling the inputs ------------------------------------------------------------------------------


def test_inputs_from_the_programs_records() -> None:
    site = make_site()
    snapshot = InputSnapshot()
    snapshot.meters["m_grid"] = MeterReading((-10.0, -10.0, -10.0), -6900.0, T0)
    snapshot.connectors["c1"] = ConnectorReading("C2", (6.0, 6.0, 6.0), 4140.0, 2000.0, "TAG", T0)
    image = freeze(snapshot, T0, 3.0, tuple(c.id for c in site.connectors), tuple(b.id for b in site.batteries))
    # Exporting 6.9 kW while the EV draws 4.14 kW: 11.04 kW is there to share.
    assert uncontrolled_surplus_w(site, image) == pytest.approx(11_040.0)
    reading = image.connectors[0]
    assert reading is not None
    sess = Session(started_ts=T0, id_token="TAG", departure_ts=T0 + 8 * H, energy_wh=10_000.0, draw_cap_a=20.0)
    intent = Intent(20.0, (0, 1, 2), 3, 1000.0, 2, False)
    s = session_input(site, site.connectors[0], reading, sess, intent, None)
    assert s == SessionInput("c1", 3, 6.0, 20.0, 8000.0, T0 + 8 * H, 2, False)
    assert import_limit_w(site, [NodeLimit(100.0, math.inf, "fuse")]) == pytest.approx(69_000.0)
    assert import_limit_w(site, [NodeLimit(100.0, 50_000.0, "capacity_frame")]) == pytest.approx(50_000.0)
