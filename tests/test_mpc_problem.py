"""The MPC charge-plan QP: what a plan must do, checked on small sites against their limits and HiGHS."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest

from controller.config import load_config
from controller.site import compile_site
from mpc import bench
from mpc.model import (
    FloatArray,
    MpcError,
    PlanBattery,
    PlanConnector,
    PlanInputs,
    PlanningSite,
    PlanNode,
    PlanSolution,
    capacity_frame_limits_w,
    planning_site_from,
    synthetic_inputs,
    synthetic_site,
)
from mpc.problem import ChargePlanProblem, OsqpSettings, coarse_blocking

START = datetime(2023, 6, 14, 10, 0, tzinfo=UTC)
V = 230.0
STEP_S = 900.0
AC3_W = 16.0 * V * 3  # 11.04 kW
AC1_W = 32.0 * V  # 7.36 kW
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sites"


# --------------------------------------------------------------------------------------------------
# A small hand-made site and inputs
# --------------------------------------------------------------------------------------------------


def ac3(cid: str, node: int = 1) -> PlanConnector:
    return PlanConnector(id=cid, node=node, dc=False, rotation=(0, 1, 2), max_power_w=AC3_W, voltage_v=V)


def ac1_on_l2(cid: str, node: int = 1) -> PlanConnector:
    return PlanConnector(id=cid, node=node, dc=False, rotation=(1,), max_power_w=AC1_W, voltage_v=V)


def dc(cid: str, power_w: float, node: int = 1) -> PlanConnector:
    return PlanConnector(id=cid, node=node, dc=True, rotation=(0, 1, 2), max_power_w=power_w, voltage_v=V)


def two_level_site(
    connectors: list[PlanConnector],
    *,
    group_a: float = 200.0,
    root_a: float = 400.0,
    root_power_w: float | None = None,
    batteries: tuple[PlanBattery, ...] = (),
) -> PlanningSite:
    """grid (root, metered) -> group (every connector)."""
    every = tuple(range(len(connectors)))
    return PlanningSite(
        id="test",
        voltage_v=V,
        nodes=(
            PlanNode(id="grid", parent=None, limit_a=root_a, power_limit_w=root_power_w, connectors=every),
            PlanNode(id="group", parent=0, limit_a=group_a, connectors=every),
        ),
        connectors=tuple(connectors),
        batteries=batteries,
        metered=(0,),
        power_limited=(0,),
    )


def inputs_for(
    site: PlanningSite,
    n_steps: int,
    *,
    price: FloatArray | None = None,
    present: list[tuple[int, int]] | None = None,
    energy_kwh: list[float] | None = None,
    min_kwh: list[float] | None = None,
    priority: list[float] | None = None,
    load_w: float = 0.0,
    soc_pct: list[float] | None = None,
) -> PlanInputs:
    """Sessions present from step a to b (exclusive), leaving at b."""
    s_n = len(site.connectors)
    windows = present or [(0, n_steps)] * s_n
    mask = np.zeros((s_n, n_steps), dtype=np.bool_)
    for s, (a, b) in enumerate(windows):
        mask[s, a:b] = True
    price_import = np.full(n_steps, 0.20) if price is None else np.asarray(price, dtype=np.float64)
    return PlanInputs(
        start=START,
        step_s=STEP_S,
        price_import_eur_kwh=price_import,
        price_export_eur_kwh=price_import - 0.05,
        present=mask,
        session_max_power_w=np.array([c.max_power_w for c in site.connectors]),
        energy_wh=np.array(energy_kwh or [10.0] * s_n) * 1000.0,
        departure_step=np.array([b for _, b in windows], dtype=np.int64),
        min_energy_wh=np.array(min_kwh or [0.0] * s_n) * 1000.0,
        priority=np.array(priority or [1.0] * s_n),
        battery_soc_pct=np.array(soc_pct or [50.0] * len(site.batteries)),
        load_w=np.full((len(site.metered), n_steps), load_w),
        pv_w=np.zeros((len(site.metered), n_steps)),
    )


def node_phase_currents_a(site: PlanningSite, plan: PlanSolution, inputs: PlanInputs) -> FloatArray:
    """(N, 3, B) current on each node's phases, summed from the plan (independently of the QP)."""
    b_n = plan.n_steps
    out = np.zeros((len(site.nodes), 3, b_n))
    for n, node in enumerate(site.nodes):
        for s in node.connectors:
            out[n] += plan.phase_current_a[s]
        for k, bat in enumerate(site.batteries):
            if n in site.node_path(bat.node):
                out[n] += plan.battery_power_w[k] / (3 * site.voltage_v)
        for j, m in enumerate(site.metered):
            if n in site.node_path(m):
                net = inputs.load_w[j] - inputs.pv_w[j]
                if b_n == inputs.n_steps:
                    out[n] += net / (3 * site.voltage_v)
    return out


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def test_problem_is_dpp_and_new_parameters_leave_its_matrices_alone() -> None:
    site = synthetic_site(12)
    problem = ChargePlanProblem(site, horizon_h=12)
    assert problem.is_dpp()
    assert problem.problem.is_dpp()
    assert problem.n_blocks == 48
    matrices = []
    for hours, seed in ((0, 0), (5, 3)):
        problem.solve(synthetic_inputs(site, START + timedelta(hours=hours), seed, horizon_h=12))
        data, _, _ = problem.problem.get_problem_data(cp.OSQP)
        matrices.append((data["P"], data["A"], data["F"], data["q"], data["G"]))
    (p0, a0, f0, q0, g0), (p1, a1, f1, q1, g1) = matrices
    for m0, m1 in ((p0, p1), (a0, a1), (f0, f1)):
        assert (m0 != m1).nnz == 0
    assert not np.array_equal(q0, q1)  # prices moved the cost vector ...
    assert not np.array_equal(g0, g1)  # ... and sessions and forecasts the bounds


def test_phase_limits_hold_every_step_and_one_phase_connector_loads_only_l2() -> None:
    # Group fuse 20 A/phase: the 1-phase EV (32 A on L2) and the 3-phase EV (16 A each) cannot both
    # run flat out; L2 is the phase that binds.
    site = two_level_site([ac1_on_l2("one"), ac3("three")], group_a=20.0)
    n = 16
    inputs = inputs_for(site, n, energy_kwh=[40.0, 40.0])
    plan = ChargePlanProblem(site, horizon_h=4).solve(inputs)
    currents = node_phase_currents_a(site, plan, inputs)
    limits = np.array([node.limit_a for node in site.nodes])
    assert np.all(currents <= limits[:, None, None] + 0.05)
    # The single-phase connector draws on grid L2 only, the 3-phase one equally on all three.
    assert np.all(plan.phase_current_a[0, 0] == 0.0)
    assert np.all(plan.phase_current_a[0, 2] == 0.0)
    assert plan.phase_current_a[0, 1].max() > 1.0
    np.testing.assert_allclose(plan.phase_current_a[1, 0], plan.phase_current_a[1, 2])
    np.testing.assert_allclose(plan.current_a[1], plan.power_w[1] / (3 * V))
    np.testing.assert_allclose(plan.current_a[0], plan.power_w[0] / V)
    # L2 is full; L1 and L3 have room left.
    assert currents[1, 1].min() == pytest.approx(20.0, abs=0.05)
    assert currents[1, 0].max() < 19.0


def test_dc_connector_loads_all_three_phases_with_p_over_3v() -> None:
    site = two_level_site([dc("dc", 50_000.0)], group_a=50.0)
    plan = ChargePlanProblem(site, horizon_h=2).solve(inputs_for(site, 8, energy_kwh=[100.0]))
    expected = plan.power_w[0] / (3 * V)
    for phase in range(3):
        np.testing.assert_allclose(plan.phase_current_a[0, phase], expected)
    # 50 A per phase on the group is 34.5 kW, less than the charger's 50 kW.
    assert plan.power_w[0].max() == pytest.approx(50.0 * 3 * V, rel=1e-3)


def test_per_node_limits_hold_on_a_synthetic_plaza() -> None:
    site = synthetic_site(20, seed=3)
    inputs = synthetic_inputs(site, START, 3, horizon_h=12)
    plan = ChargePlanProblem(site, horizon_h=12).solve(inputs)
    currents = node_phase_currents_a(site, plan, inputs)
    limits = np.array([node.limit_a for node in site.nodes])
    assert np.all(np.abs(currents) <= limits[:, None, None] + 0.1)
    assert np.all(plan.power_w >= 0.0)
    assert np.all(plan.power_w <= np.array([c.max_power_w for c in site.connectors])[:, None] + 1e-6)


# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


def test_energy_delivered_by_departure_when_feasible() -> None:
    site = two_level_site([ac3("a"), ac3("b")])
    inputs = inputs_for(site, 24, present=[(0, 16), (4, 12)], energy_kwh=[20.0, 15.0])
    plan = ChargePlanProblem(site, horizon_h=6).solve(inputs)
    np.testing.assert_allclose(plan.delivered_wh, [20_000.0, 15_000.0], atol=20.0)
    assert plan.shortfall_wh.max() < 20.0
    assert plan.objective_split["shortfall_penalty"] < 0.05


def test_cheap_hours_are_used_before_expensive_ones() -> None:
    site = two_level_site([ac3("a")])
    price = np.full(24, 0.40)
    price[8:12] = 0.05
    price[18:22] = 0.10
    # 16.56 kWh = 1.5 h at full power: the whole cheapest hour, then the next cheapest.
    inputs = inputs_for(site, 24, price=price, energy_kwh=[AC3_W * 1.5 / 1000.0])
    plan = ChargePlanProblem(site, horizon_h=6).solve(inputs)
    energy_kwh = plan.power_w[0] * 0.25 / 1000.0
    assert energy_kwh[8:12].sum() == pytest.approx(AC3_W / 1000.0, rel=2e-3)
    assert energy_kwh[18:22].sum() == pytest.approx(AC3_W * 0.5 / 1000.0, rel=5e-3)
    assert energy_kwh[price == 0.40].sum() < 0.01


def test_session_outside_its_window_gets_nothing() -> None:
    site = two_level_site([ac3("a"), ac3("b")])
    price = np.linspace(0.05, 0.30, 24)  # the window is not where it is cheapest
    inputs = inputs_for(site, 24, price=price, present=[(6, 10), (0, 24)], energy_kwh=[30.0, 5.0])
    plan = ChargePlanProblem(site, horizon_h=6).solve(inputs)
    outside = np.ones(24, dtype=bool)
    outside[6:10] = False
    assert np.all(plan.power_w[0, outside] == 0.0)
    assert np.all(plan.current_a[0, outside] == 0.0)
    # Inside its 1-hour window it charges flat out and still falls short (30 kWh wanted, 11 possible).
    np.testing.assert_allclose(plan.power_w[0, 6:10], AC3_W, rtol=1e-3)
    assert plan.shortfall_wh[0] == pytest.approx(30_000.0 - AC3_W, rel=1e-3)
    assert plan.unavoidable_wh[0] == pytest.approx(30_000.0 - AC3_W, rel=1e-6)


def test_shortfall_is_reported_when_the_site_cannot_deliver() -> None:
    # 10 A per phase on the group = 6.9 kW for four EVs wanting 20 kWh each over 4 h: 27.6 kWh in all.
    site = two_level_site([ac3(f"c{i}") for i in range(4)], group_a=10.0)
    inputs = inputs_for(site, 16, energy_kwh=[20.0] * 4)
    plan = ChargePlanProblem(site, horizon_h=4).solve(inputs)
    assert plan.status == "solved"
    possible_wh = 10.0 * 3 * V * 4.0
    assert plan.delivered_wh.sum() == pytest.approx(possible_wh, rel=2e-3)
    assert plan.shortfall_wh.sum() == pytest.approx(80_000.0 - possible_wh, rel=2e-3)
    assert plan.unavoidable_wh.sum() == 0.0  # each EV alone could have made it
    assert plan.objective_split["shortfall_penalty"] > 100.0


def test_higher_priority_is_served_first() -> None:
    # 8 A per phase on the group: 5.52 kW, 11.04 kWh over 2 h for two EVs wanting 20 kWh each.
    site = two_level_site([ac3("low"), ac3("high")], group_a=8.0)
    inputs = inputs_for(site, 8, energy_kwh=[20.0, 20.0], priority=[1.0, 5.0])
    plan = ChargePlanProblem(site, horizon_h=2).solve(inputs)
    assert plan.delivered_wh[1] == pytest.approx(8.0 * 3 * V * 2.0, rel=2e-3)
    assert plan.delivered_wh[0] < 50.0


def test_minimum_guarantee_is_honoured_before_another_sessions_request() -> None:
    # 11.04 kWh fit through the group over 2 h. "low" is guaranteed 5 kWh; "high" (top priority) wants 20.
    site = two_level_site([ac3("low"), ac3("high")], group_a=8.0)
    capacity_wh = 8.0 * 3 * V * 2.0
    guaranteed = inputs_for(site, 8, energy_kwh=[5.0, 20.0], min_kwh=[5.0, 0.0], priority=[1.0, 10.0])
    plan = ChargePlanProblem(site, horizon_h=2).solve(guaranteed)
    assert plan.delivered_wh[0] == pytest.approx(5_000.0, abs=20.0)
    assert plan.min_shortfall_wh.max() < 20.0
    assert plan.delivered_wh[1] == pytest.approx(capacity_wh - 5_000.0, abs=30.0)
    # Without the guarantee the top-priority session takes everything.
    plain = dataclasses.replace(guaranteed, min_energy_wh=np.zeros(2))
    plan = ChargePlanProblem(site, horizon_h=2).solve(plain)
    assert plan.delivered_wh[0] < 50.0
    assert plan.delivered_wh[1] == pytest.approx(capacity_wh, abs=30.0)


def test_departure_beyond_the_horizon_only_owes_what_cannot_wait() -> None:
    site = two_level_site([ac3("a")])
    price = np.full(8, 0.30)
    inputs = inputs_for(site, 8, price=price, present=[(0, 8)], energy_kwh=[30.0])
    # Leaves 2 h after the 2 h horizon: 2 h x 11.04 kWh can still come later; 30 - 22.08 is owed now.
    inputs = dataclasses.replace(inputs, departure_step=np.array([16]))
    plan = ChargePlanProblem(site, horizon_h=2).solve(inputs)
    assert plan.delivered_wh[0] == pytest.approx(30_000.0 - 2 * AC3_W, abs=20.0)


# --------------------------------------------------------------------------------------------------
# Battery, limits, peak
# --------------------------------------------------------------------------------------------------


def battery() -> PlanBattery:
    return PlanBattery(
        id="bess",
        node=0,
        capacity_wh=100_000.0,
        max_charge_w=50_000.0,
        max_discharge_w=50_000.0,
        soc_min_pct=10.0,
        soc_max_pct=90.0,
    )


def test_battery_stays_within_soc_bounds_and_arbitrages_a_price_spread() -> None:
    site = two_level_site([ac3("a")], batteries=(battery(),))
    price = np.concatenate((np.full(16, 0.05), np.full(16, 0.40)))
    inputs = inputs_for(site, 32, price=price, present=[(0, 0)], energy_kwh=[0.0], load_w=60_000.0)
    plan = ChargePlanProblem(site, horizon_h=8).solve(inputs)
    soc = plan.battery_soc_pct[0]
    assert soc.min() >= 10.0 - 0.05
    assert soc.max() <= 90.0 + 0.05
    assert soc.max() == pytest.approx(90.0, abs=0.1)  # filled while cheap ...
    assert soc[-1] >= 50.0 - 0.05  # ... and not left emptier than it started
    assert plan.battery_power_w[0, :16].sum() > 0.0  # charges in the cheap half
    assert plan.battery_power_w[0, 16:].sum() < 0.0  # discharges in the expensive half
    # Cheaper than doing nothing with the battery.
    idle = 60.0 * (0.05 * 4 + 0.40 * 4)
    assert plan.objective_split["energy_cost"] < idle - 5.0


def test_battery_starting_outside_its_band_does_not_make_the_problem_infeasible() -> None:
    site = two_level_site([ac3("a")], batteries=(battery(),))
    inputs = inputs_for(site, 8, energy_kwh=[5.0], soc_pct=[3.0])
    plan = ChargePlanProblem(site, horizon_h=2).solve(inputs)
    assert plan.battery_soc_start_pct[0] == pytest.approx(10.0)
    assert plan.battery_soc_pct[0].min() >= 10.0 - 0.05


def test_capacity_frame_override_lowers_the_nodes_import_in_that_block() -> None:
    site = two_level_site([ac3(f"c{i}") for i in range(6)], root_power_w=100_000.0)
    price = np.full(16, 0.20)
    price[4:8] = 0.02  # everyone wants to charge in hour 2
    base = inputs_for(site, 16, price=price, energy_kwh=[11.0] * 6)
    free = ChargePlanProblem(site, horizon_h=4).solve(base)
    assert free.grid_import_w[4:8].min() > 60_000.0
    frame = np.full((2, 16), np.inf)
    frame[0, 4:8] = 20_000.0
    limited = dataclasses.replace(base, node_power_limit_w=frame)
    plan = ChargePlanProblem(site, horizon_h=4).solve(limited)
    assert plan.grid_import_w[4:8].max() <= 20_000.0 + 20.0
    np.testing.assert_allclose(plan.delivered_wh, 11_000.0, atol=20.0)  # the rest moves to other hours


def test_capacity_frames_of_the_site_become_per_step_limits() -> None:
    site = synthetic_site(8)
    limits = capacity_frame_limits_w(site, datetime(2023, 6, 14, 14, 0, tzinfo=UTC), 16, STEP_S)
    # 17:00-21:00 Amsterdam (CEST) is 15:00-19:00 UTC: from step 4 of a 14:00 UTC start.
    assert np.all(np.isinf(limits[0, :4]))
    assert np.all(limits[0, 4:] == site.capacity_frames[0].limit_w)
    assert np.all(np.isinf(limits[1:]))


def test_power_override_on_a_node_without_power_constraint_is_an_error() -> None:
    site = two_level_site([ac3("a")])
    frame = np.full((2, 8), np.inf)
    frame[1, 0] = 1_000.0
    inputs = dataclasses.replace(inputs_for(site, 8), node_power_limit_w=frame)
    with pytest.raises(MpcError, match=r"node_power_limit_w: node 'group' has no power constraint"):
        ChargePlanProblem(site, horizon_h=2).solve(inputs)


def test_forecast_load_above_a_limit_is_reported_not_infeasible() -> None:
    site = two_level_site([ac3("a")], root_a=50.0)
    over_w = 50.0 * 3 * V + 6_000.0
    plan = ChargePlanProblem(site, horizon_h=2).solve(inputs_for(site, 8, energy_kwh=[5.0], load_w=over_w))
    assert plan.status == "solved"
    np.testing.assert_allclose(plan.limit_violation_w[0], 6_000.0, rtol=1e-6)
    assert plan.power_w.max() < 1.0
    assert plan.shortfall_wh[0] == pytest.approx(5_000.0, abs=1.0)


def test_peak_tariff_spreads_the_load_and_only_charges_new_peak() -> None:
    site = two_level_site([ac3(f"c{i}") for i in range(4)])
    price = np.full(16, 0.20)
    price[0:4] = 0.19  # a small incentive to bunch everything into the first hour
    bunched = inputs_for(site, 16, price=price, energy_kwh=[11.0] * 4)
    plan = ChargePlanProblem(site, horizon_h=4).solve(bunched)
    assert plan.grid_import_w.max() > 40_000.0
    spread = dataclasses.replace(bunched, peak_tariff_eur_kw=5.0, peak_reached_w=5_000.0)
    plan = ChargePlanProblem(site, horizon_h=4).solve(spread)
    assert plan.grid_import_w.max() == pytest.approx(11_000.0, rel=1e-2)  # 44 kWh over 4 h
    assert plan.objective_split["peak_cost"] == pytest.approx(5.0 * 6.0, rel=2e-2)


def test_peak_reserve_is_used_for_energy_the_evs_need_not_for_a_cheaper_hour() -> None:
    site = two_level_site([ac3(f"c{i}") for i in range(4)])
    price = np.full(16, 0.20)
    price[8:12] = 0.10  # a cheap hour: bunching all four EVs into it would pay 0.10 EUR/kWh
    base = inputs_for(site, 16, price=price, energy_kwh=[8.0] * 4, present=[(0, 16)] * 4)
    free = dataclasses.replace(base, peak_tariff_eur_kw=3.0, peak_reached_w=40_000.0)
    plan = ChargePlanProblem(site, horizon_h=4).solve(free)
    assert plan.grid_import_w[8:12].max() > 30_000.0  # the month's peak is free: the cheap hour is filled
    reserved = dataclasses.replace(free, peak_reserve_w=30_000.0, peak_reserve_eur_kw=3.0)
    problem = ChargePlanProblem(site, horizon_h=4)
    plan = problem.solve(reserved)
    # 32 kWh over 4 h is 8 kW flat: only 10 kW is free, and 2 EUR/kW of reserve outweighs the 1 EUR the
    # cheap hour would save on 10 kWh.
    assert plan.grid_import_w.max() < 10_300.0
    assert plan.delivered_wh.sum() == pytest.approx(32_000.0, rel=1e-3)
    assert plan.objective_split["peak_cost"] == pytest.approx(0.0, abs=0.5)
    # Energy the EVs need buys the reserve: 32 kWh in the first 2 h takes 16 kW, 6 kW into the reserve.
    short = dataclasses.replace(reserved, present=np.tile(np.arange(16) < 8, (4, 1)), departure_step=np.full(4, 8))
    plan = problem.solve(short)
    assert plan.delivered_wh.sum() == pytest.approx(32_000.0, rel=1e-3)
    assert plan.grid_import_w.max() == pytest.approx(16_000.0, rel=2e-2)
    assert plan.objective_split["peak_cost"] == pytest.approx(3.0 * 6.0, rel=3e-2)
    # The LP reference models the reserve the same way.
    ref = bench.lp_reference(site, short, problem.blocks, problem.penalties)
    replay = bench.replay_objective(site, short, problem.blocks, plan, problem.penalties)
    assert replay["objective_eur"] == pytest.approx(ref.objective_eur, rel=5e-3)


def test_slot_cost_moves_a_sessions_energy_earlier_and_the_lp_agrees() -> None:
    site = two_level_site([ac3("early"), ac3("late")])
    price = np.linspace(0.30, 0.10, 16)  # later is cheaper
    inputs = inputs_for(site, 16, price=price, energy_kwh=[11.0, 11.0])
    problem = ChargePlanProblem(site, horizon_h=4)
    plan = problem.solve(inputs)
    assert plan.power_w[0, :8].sum() * 0.25 < 500.0  # both wait for the cheap end
    risk = np.zeros((2, 16))
    risk[0] = np.linspace(0.0, 1.5, 16)  # the first EV is likely gone later: its late kWh cost more
    costed = dataclasses.replace(inputs, slot_cost_eur_kwh=risk)
    plan = problem.solve(costed)
    # The first EV is done in the first two hours (at full power, 11 kW, it takes one), the second at
    # the cheap end.
    assert plan.power_w[0, :8].sum() * 0.25 == pytest.approx(11_000.0, rel=1e-2)
    assert plan.power_w[1, 8:].sum() * 0.25 == pytest.approx(11_000.0, rel=1e-2)
    assert plan.objective_split["slot_cost"] > 0.0
    ref = bench.lp_reference(site, costed, problem.blocks, problem.penalties)
    replay = bench.replay_objective(site, costed, problem.blocks, plan, problem.penalties)
    assert replay["objective_eur"] == pytest.approx(ref.objective_eur, rel=5e-3)
    linear = plan.objective_eur - plan.objective_split["regulariser"]
    assert linear == pytest.approx(replay["objective_eur"], rel=5e-3)


def test_bad_reserve_and_slot_cost_inputs_are_refused_by_name() -> None:
    site = two_level_site([ac3("a")])
    inputs = inputs_for(site, 8)
    problem = ChargePlanProblem(site, horizon_h=2)
    with pytest.raises(MpcError, match="peak_reserve_eur_kw"):
        problem.solve(dataclasses.replace(inputs, peak_tariff_eur_kw=1.0, peak_reserve_eur_kw=2.0))
    with pytest.raises(MpcError, match="peak_reserve_w"):
        problem.solve(dataclasses.replace(inputs, peak_reserve_w=-1.0))
    with pytest.raises(MpcError, match=r"slot_cost_eur_kwh: shape \(1, 4\)"):
        problem.solve(dataclasses.replace(inputs, slot_cost_eur_kwh=np.zeros((1, 4))))
    with pytest.raises(MpcError, match="slot_cost_eur_kwh: non-finite"):
        problem.solve(dataclasses.replace(inputs, slot_cost_eur_kwh=np.full((1, 8), np.nan)))


# --------------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------------


def test_warm_resolve_after_new_parameters_matches_a_fresh_build() -> None:
    # Tight tolerances, so both runs must land on the (unique, regularised) optimum: this checks the
    # warm path (parameter update, time-shifted start), not OSQP's accuracy.
    site = synthetic_site(16, seed=1)
    first = synthetic_inputs(site, START, 1, horizon_h=12)
    later = synthetic_inputs(site, START + timedelta(minutes=15), 1, horizon_h=12)
    reversed_price = later.price_import_eur_kwh[::-1].copy()
    later = dataclasses.replace(later, price_import_eur_kwh=reversed_price, price_export_eur_kwh=reversed_price - 0.05)
    tight = OsqpSettings(eps_abs=1e-7, eps_rel=1e-7, max_iter=100_000)
    rolling = ChargePlanProblem(site, horizon_h=12, settings=tight)
    rolling.solve(first)
    warm = rolling.solve(later)
    fresh = ChargePlanProblem(site, horizon_h=12, settings=tight).solve(later, warm=False)
    assert warm.objective_eur == pytest.approx(fresh.objective_eur, rel=1e-5)
    np.testing.assert_allclose(warm.power_w, fresh.power_w, atol=50.0)
    np.testing.assert_allclose(warm.grid_import_w, fresh.grid_import_w, atol=100.0)
    np.testing.assert_allclose(warm.battery_power_w, fresh.battery_power_w, atol=100.0)
    # At the default tolerance the two agree on what matters.
    rolling = ChargePlanProblem(site, horizon_h=12)
    rolling.solve(first)
    warm = rolling.solve(later)
    fresh = ChargePlanProblem(site, horizon_h=12).solve(later, warm=False)
    assert warm.objective_eur == pytest.approx(fresh.objective_eur, rel=3e-3)
    np.testing.assert_allclose(warm.delivered_wh, fresh.delivered_wh, atol=150.0)


def test_gap_to_the_highs_lp_is_small() -> None:
    site = synthetic_site(12, seed=2)
    inputs = synthetic_inputs(site, START, 2, horizon_h=12)
    problem = ChargePlanProblem(site, horizon_h=12)
    plan = problem.solve(inputs)
    ref = bench.lp_reference(site, inputs, problem.blocks, problem.penalties)
    replay = bench.replay_objective(site, inputs, problem.blocks, plan, problem.penalties)
    gap_pct = 100.0 * (replay["objective_eur"] - ref.objective_eur) / abs(ref.objective_eur)
    assert abs(gap_pct) < 0.5
    assert replay["max_excess_a"] < 0.1
    # The QP's own account of the linear part agrees with the replay too.
    linear = plan.objective_eur - plan.objective_split["regulariser"]
    assert linear == pytest.approx(replay["objective_eur"], rel=5e-3)


def test_move_blocking_plans_coarse_later_and_expands_to_the_input_grid() -> None:
    site = synthetic_site(10, seed=4)
    inputs = synthetic_inputs(site, START, 4, horizon_h=12)
    blocks = coarse_blocking(48, 15)
    assert blocks[:24] == (1,) * 24
    assert blocks[24:] == (2,) * 12
    problem = ChargePlanProblem(site, horizon_h=12, blocking=blocks)
    plan = problem.solve(inputs)
    assert plan.n_steps == 36
    grid = plan.uniform(STEP_S)
    assert grid.n_steps == 48
    np.testing.assert_allclose(grid.step_s, STEP_S)
    # Energy is kept, and nothing is planned where an EV is not there.
    np.testing.assert_allclose(grid.power_w @ grid.step_s, plan.power_w @ plan.step_s, rtol=1e-9, atol=1e-6)
    avail = inputs.present & (np.arange(48)[None, :] < inputs.departure_step[:, None])
    assert np.all(grid.power_w[~avail] == 0.0)
    assert np.all(grid.power_w <= np.array([c.max_power_w for c in site.connectors])[:, None] * (1 + 1e-6))
    with pytest.raises(MpcError, match="multiples"):
        plan.uniform(600.0)


def test_a_solve_that_does_not_converge_in_either_attempt_raises() -> None:
    site = synthetic_site(8)
    problem = ChargePlanProblem(site, horizon_h=6, settings=OsqpSettings(max_iter=10))
    with pytest.raises(MpcError, match=r"OSQP did not solve .* after 20 iterations"):
        problem.solve(synthetic_inputs(site, START, 0, horizon_h=6))


def test_a_solve_that_hits_max_iter_is_tried_once_more_plain_and_cold() -> None:
    site = synthetic_site(12)
    inputs = synthetic_inputs(site, START, 0, horizon_h=6)
    # This instance takes 500 iterations with the configured alpha (1.6) and 400 with the retry's plain
    # ADMM: with 450 allowed the first attempt stops and the second solves it.
    problem = ChargePlanProblem(site, horizon_h=6, settings=OsqpSettings(max_iter=450))
    plan = problem.solve(inputs, warm=False)
    assert plan.status == "solved"
    assert 450 < plan.iterations <= 2 * 450
    unhurried = ChargePlanProblem(site, horizon_h=6).solve(inputs, warm=False)
    assert plan.objective_eur == pytest.approx(unhurried.objective_eur, rel=1e-3)
    # The retry's settings do not stay behind: the same cold solve again takes both attempts again.
    assert problem.solve(inputs, warm=False).iterations == plan.iterations


def test_a_stalled_warm_solve_is_tried_from_zero_then_with_plain_admm() -> None:
    site = synthetic_site(16)
    problem = ChargePlanProblem(site, horizon_h=6, settings=OsqpSettings(max_iter=300))
    # The first solve has nothing to start from: cold, then plain ADMM (2 x 300 iterations).
    with pytest.raises(MpcError, match=r"after 600 iterations"):
        problem.solve(synthetic_inputs(site, START, 0, horizon_h=6))
    assert problem.solve(synthetic_inputs(site, START, 1, horizon_h=6)).status == "solved"
    # Warm from that plan it stalls: warm, cold at the configured alpha, cold plain (3 x 300).
    with pytest.raises(MpcError, match=r"after 900 iterations"):
        problem.solve(synthetic_inputs(site, START, 2, horizon_h=6))


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("pv_w", "nan", r"PlanInputs\.pv_w: non-finite value nan at index \(0, 3\)"),
        ("price_import_eur_kwh", "inf", r"price_import_eur_kwh: non-finite"),
        ("load_w", "shape", r"load_w: shape \(1, 7\), expected \(1, 8\)"),
        ("energy_wh", "negative", r"energy_wh: negative"),
        ("present", "dtype", r"present: dtype float64, expected bool"),
        ("node_limit_a", "nan", r"node_limit_a: non-finite"),
    ],
)
def test_bad_inputs_raise_naming_the_field(field: str, bad: str, message: str) -> None:
    site = two_level_site([ac3("a")])
    inputs = inputs_for(site, 8)
    value = getattr(inputs, field)
    if field == "node_limit_a":
        value = np.full((2, 8), np.inf)
    value = np.array(value, dtype=np.float64 if bad != "shape" else None, copy=True)
    if bad == "nan":
        value[(0, 3)] = np.nan
    elif bad == "inf":
        value[2] = np.inf
    elif bad == "shape":
        value = value[:, :7]
    elif bad == "negative":
        value[0] = -1.0
    with pytest.raises(MpcError, match=message):
        ChargePlanProblem(site, horizon_h=2).solve(dataclasses.replace(inputs, **{field: value}))  # type: ignore[arg-type]


def test_export_price_above_import_is_rejected() -> None:
    site = two_level_site([ac3("a")])
    inputs = inputs_for(site, 8)
    inputs = dataclasses.replace(inputs, price_export_eur_kwh=inputs.price_import_eur_kwh + 0.01)
    with pytest.raises(MpcError, match="price_export_eur_kwh: exceeds the import price at step 0"):
        ChargePlanProblem(site, horizon_h=2).solve(inputs)


# --------------------------------------------------------------------------------------------------
# Sites from the controller, and the benchmark
# --------------------------------------------------------------------------------------------------


def test_planning_site_from_the_controller_site_file() -> None:
    site = compile_site(load_config(EXAMPLES / "plaza-40.site.yaml").config)
    planning = planning_site_from(site)
    assert len(planning.connectors) == 40
    assert [n.id for n in planning.nodes] == [n.id for n in site.nodes]
    margins = site.config.margins
    assert planning.nodes[0].limit_a == site.nodes[0].rating_a - margins.current_a
    assert planning.nodes[0].power_limit_w == pytest.approx(250_000.0 - margins.power_kw * 1000.0)
    single = [c for c in planning.connectors if len(c.rotation) == 1]
    assert {c.rotation for c in single} == {(1,), (2,)}  # cp05 on L2, cp15 on L3
    assert all(c.max_power_w == pytest.approx(c.voltage_v * 32.0 * len(c.rotation)) for c in planning.connectors)
    assert planning.batteries[0].capacity_wh == 200_000.0
    assert planning.capacity_frames
    assert planning.capacity_frames[0].node == 0
    inputs = synthetic_inputs(planning, START, 0, horizon_h=6)
    assert inputs.node_power_limit_w is not None
    plan = ChargePlanProblem(planning, horizon_h=6).solve(inputs)
    currents = node_phase_currents_a(planning, plan, inputs)
    limits = np.array([n.limit_a for n in planning.nodes])
    assert np.all(np.abs(currents) <= limits[:, None, None] + 0.1)


def test_bench_main_prints_one_json_object_with_a_small_gap() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.main(parser.parse_args(["--connectors", "10", "--resolves", "3"])) == 2
    args = parser.parse_args(["--connectors", "10", "--horizon-h", "12", "--resolves", "10", "--json"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert bench.main(args) == 0
    result = json.loads(out.getvalue())
    keys = {
        "connectors",
        "variables",
        "compile_s",
        "solve_cold_s",
        "solve_warm_p50_s",
        "solve_warm_p95_s",
        "objective",
        "lp_reference_objective",
        "gap_pct",
    }
    assert keys <= result.keys()
    assert result["connectors"] == 10
    assert result["resolves"] == 10
    assert abs(result["gap_pct"]) < 0.5
    assert result["solve_warm_p50_s"] <= result["solve_warm_p95_s"]


def test_bench_main_without_json_prints_a_table() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = io.StringIO()
    with redirect_stdout(out):
        assert bench.main(parser.parse_args(["--connectors", "6", "--horizon-h", "6", "--resolves", "10"])) == 0
    assert "gap" in out.getvalue()
    assert "warm re-solve p50 / p95" in out.getvalue()


# --------------------------------------------------------------------------------------------------
# Tight connection (the evaluation plaza of mpc/evaluate.py in small)
# --------------------------------------------------------------------------------------------------


def tight_plaza(n_boards: int = 2, per_board: int = 9) -> PlanningSite:
    """grid -> boards of single-phase 32 A connectors spread over L1-L3; the grid is the tight limit."""
    connectors = [
        PlanConnector(id=f"c{b}-{i}", node=1 + b, dc=False, rotation=(i % 3,), max_power_w=AC1_W, voltage_v=V)
        for b in range(n_boards)
        for i in range(per_board)
    ]
    boards = tuple(
        PlanNode(id=f"board-{b}", parent=0, limit_a=100.0, connectors=tuple(range(b * per_board, (b + 1) * per_board)))
        for b in range(n_boards)
    )
    root_a = 0.6 * 32.0 * len(connectors) / 3.0  # 0.6 x every connector at full current
    return PlanningSite(
        id="tight",
        voltage_v=V,
        nodes=(PlanNode(id="grid", parent=None, limit_a=root_a, connectors=tuple(range(len(connectors)))), *boards),
        connectors=tuple(connectors),
        batteries=(),
        metered=(0,),
    )


def tight_inputs(site: PlanningSite, step: int, *, evs: bool) -> PlanInputs:
    """A building load whose forecast peak (evening) is above the month's peak so far; long stays."""
    n = 96
    t = (step + np.arange(n)) % 96
    load_w = 20_000.0 + 18_000.0 * np.exp(-(((t - 70) / 8.0) ** 2))
    price = 0.12 + 0.06 * np.sin(2 * np.pi * (t - 30) / 96)
    s_n = len(site.connectors)
    present = np.zeros((s_n, n), dtype=np.bool_)
    departure = np.zeros(s_n, dtype=np.int64)
    energy = np.zeros(s_n)
    rng = np.random.default_rng(7)
    if evs:
        for s in range(s_n):
            stay = int(rng.integers(24, 44)) - step
            if stay > 0:
                present[s, :stay] = True
                departure[s] = stay
                energy[s] = float(rng.uniform(15.0, 45.0)) * 1000.0
    return PlanInputs(
        start=START + step * timedelta(seconds=STEP_S),
        step_s=STEP_S,
        price_import_eur_kwh=price,
        price_export_eur_kwh=price - 0.04,
        present=present,
        session_max_power_w=np.full(s_n, AC1_W),
        energy_wh=energy,
        departure_step=departure,
        min_energy_wh=np.zeros(s_n),
        priority=np.full(s_n, 5.0),
        battery_soc_pct=np.zeros(0),
        load_w=load_w[None, :],
        pv_w=np.zeros((1, n)),
        peak_tariff_eur_kw=3.0,
        peak_reached_w=30_000.0,
    )


@pytest.mark.parametrize("evs", [False, True], ids=["no-ev-forecast-peak", "evs-tight-connection"])
def test_tight_connection_with_a_peak_tariff_converges_close_to_the_lp(evs: bool) -> None:
    """The evaluation plaza's hard case: the peak tariff (3 EUR/kW, ~100x a block's energy price) on a
    connection that binds. OSQP used to hit 10 000 iterations here, even with no EV at all."""
    site = tight_plaza()
    problem = ChargePlanProblem(site, 24.0, 15)
    for step in range(3):
        inputs = tight_inputs(site, step, evs=evs)
        plan = problem.solve(inputs)
        assert plan.status == "solved"
        ref = bench.lp_reference(site, inputs, problem.blocks)
        replay = bench.replay_objective(site, inputs, problem.blocks, plan)
        assert replay["objective_eur"] == pytest.approx(ref.objective_eur, rel=5e-3)
        # The solver's tolerance on the root's phase flow: 0.003-0.06 A over its 115 A for peak units of
        # 5-10 % of the connection (docs/mpc.md); a modelling error would be amperes.
        assert replay["max_excess_a"] < 0.1
