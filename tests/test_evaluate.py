"""``plaza-ems evaluate`` on a short window: strategies against the same physics, accounting, the CLI."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from typing import Any

import numpy as np
import pytest

from mpc import evaluate as ev
from plaza_ems.cli import main as cli_main

START = date(2019, 5, 6)
"""A Monday of the committed ACN excerpt: two working days."""


@pytest.fixture(scope="module")
def world() -> ev.World:
    return ev.build_world(START, 2, n_slots=24)


@pytest.fixture(scope="module")
def result(world: ev.World) -> dict[str, Any]:
    return ev.evaluate(world, connection_share=0.6)


def test_uncontrolled_violates_the_tight_connection_and_the_controlled_strategies_do_not(
    result: dict[str, Any],
) -> None:
    runs = result["strategies"]
    assert runs["uncontrolled"]["violations"] > 0
    for name in ("fallback", "mpc", "offline"):
        assert runs[name]["violations"] == 0, name
        assert runs[name]["max_excess_a"] <= ev.VIOLATION_TOLERANCE_A, name


def test_offline_optimum_is_a_lower_bound_of_what_the_mpc_achieves(result: dict[str, Any]) -> None:
    runs = result["strategies"]
    assert runs["offline"]["lp_objective_eur"] <= runs["mpc"]["objective_eur"] + 1e-6
    # Applied through the controller the offline schedule still lands close to its LP figures.
    assert runs["offline"]["cost_eur"] == pytest.approx(runs["offline"]["lp_objective_eur"], rel=0.03)


def test_mpc_beats_fallback_and_uncontrolled_on_the_objective(result: dict[str, Any]) -> None:
    runs = result["strategies"]
    # On these two days (drivers' estimates) the MPC holds its import cap and delivers about what the
    # fallback does, at a lower bill and peak (2026-12-02: 93.4 against 94.0 %, 389 against 429 EUR, 56.5
    # against 70.0 kW); the objective, which prices every missed kWh, says the trade is worth it.
    assert runs["mpc"]["energy_delivered_kwh"] >= 0.95 * runs["offline"]["energy_delivered_kwh"]
    for other in ("fallback", "uncontrolled"):
        assert runs["mpc"]["objective_eur"] < runs[other]["objective_eur"], other
        assert runs["mpc"]["cost_eur"] < runs[other]["cost_eur"], other
        assert runs["mpc"]["peak_kw"] < runs[other]["peak_kw"], other
    assert runs["mpc"]["solves"] >= 2 * ev.STEPS_PER_DAY
    # A re-solve OSQP does not finish would leave the site on its fallback for that step. These two days
    # had 8 (max_iter) before the peak's unit went to 7 % of the connection and a stalled solve got
    # further attempts from zero (docs/mpc.md).
    assert runs["mpc"]["solve_failures"] == 0


def test_energy_accounting_is_consistent(world: ev.World, result: dict[str, Any]) -> None:
    requested = sum(s.requested_wh for s in world.sessions) / 1000.0
    deliverable = sum(s.deliverable_wh for s in world.sessions) / 1000.0
    assert deliverable <= requested
    for name, run in result["strategies"].items():
        assert run["energy_deliverable_kwh"] == pytest.approx(deliverable, abs=1e-3), name
        assert run["energy_delivered_kwh"] <= deliverable + 1e-6, name
        assert 0.0 < run["energy_delivered_pct"] <= 100.0 + 1e-9, name
    # Uncontrolled charges every EV flat out from arrival: each gets all it can take in its stay.
    assert result["strategies"]["uncontrolled"]["energy_delivered_pct"] == pytest.approx(100.0, abs=1e-6)


def test_physics_gives_an_ev_no_more_than_it_can_draw_while_it_is_there(world: ev.World) -> None:
    probe = ev._run_uncontrolled(world, None, np.inf)
    for j, s in enumerate(world.sessions):
        stay_h = (s.depart_tick - s.arrive_tick) * ev.TICK_S / 3600.0
        assert probe.delivered_wh[j] <= min(s.requested_wh, s.max_a * ev.VOLTAGE_V * stay_h) + 1e-6
        assert probe.delivered_wh[j] == pytest.approx(s.deliverable_wh, abs=1e-6)


def test_connection_limit_is_the_share_of_the_uncontrolled_peak(result: dict[str, Any]) -> None:
    assert result["connection_limit_a"] == pytest.approx(0.6 * result["uncontrolled_peak_a"], abs=0.1)
    assert result["strategies"]["uncontrolled"]["peak_kw"] > result["connection_limit_kw"] * 0.6


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategies", "mpc,bogus"],
        ["--connection-share", "0"],
        ["--days", "0"],
        ["--start", "May first"],
        ["--days", "not-a-number"],
        ["--departures", "guessed"],
    ],
)
def test_bad_options_exit_2(argv: list[str]) -> None:
    try:
        code = cli_main(["evaluate", *argv])
    except SystemExit as exc:  # argparse refuses what it cannot parse itself
        code = exc.code  # type: ignore[assignment]
    assert code == 2


def test_window_outside_the_committed_excerpt_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["evaluate", "--start", "2019-05-20", "--days", "30"]) == 4
    assert "committed ACN excerpt" in capsys.readouterr().err


def test_cli_json_has_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        [
            "evaluate",
            "--start",
            "2019-05-07",
            "--days",
            "1",
            "--connectors",
            "12",
            "--strategies",
            "uncontrolled,mpc,offline",
            "--departures",
            "known",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["departures"] == "known"
    assert set(out["strategies"]) == {"uncontrolled", "mpc", "offline"}
    for run in out["strategies"].values():
        for key in (
            "energy_delivered_pct",
            "energy_delivered_kwh",
            "cost_eur",
            "peak_kw",
            "violations",
            "solves",
            "solve_p50_ms",
            "solve_p95_ms",
            "solve_max_ms",
            "wall_s",
        ):
            assert key in run
    assert {"cost_ratio", "energy_ratio"} <= set(out["mpc_vs_offline"])


def test_departure_model_learns_the_drivers_error_and_conditions_on_the_ev_still_being_there(
    world: ev.World,
) -> None:
    def step_of(hours: float) -> int:
        """The plan step (15 min from the outlook's time) that many hours on."""
        return int(hours * 4)

    def session(arrive_tick: int, stay_est_h: float, error_h: float) -> ev.EvalSession:
        estimate_s = world.start_s + arrive_tick * ev.TICK_S + stay_est_h * 3600.0
        depart_tick = arrive_tick + round((stay_est_h + error_h) * 60)
        return ev.EvalSession(
            id=f"h{arrive_tick}",
            slot=-1,
            arrive_tick=arrive_tick,
            depart_tick=depart_tick,
            estimate_s=estimate_s,
            requested_wh=10_000.0,
            max_a=32.0,
            deliverable_wh=10_000.0,
        )

    # 40 earlier 3-hour estimates whose drivers left 0.0 .. 3.9 h after them; 40 long ones left on time.
    history = tuple(session(-10_000 + 60 * i, 3.0, 0.1 * i) for i in range(40))
    history += tuple(session(-5_000 + 60 * i, 9.0, 0.0) for i in range(40))
    model = ev._DepartureModel(dataclasses.replace(world, history_sessions=history, sessions=()))
    model.learn(0)
    now = session(0, 3.0, 0.0)
    t0 = world.start_s
    window_end, gone = model.outlook(now, t0)
    # Its class (2-4 h estimates) learned the late departures; the 9 h ones do not dilute them.
    assert window_end - now.estimate_s == pytest.approx(0.9 * 3.9 * 3600.0, abs=400.0)
    assert gone[step_of(2.9)] == 0.0
    assert gone[step_of(4.0)] == pytest.approx(0.25, abs=0.05)  # 1 h after the estimate: a quarter gone
    # Still plugged in 2 h after its estimate: only the later departures remain possible.
    later_end, later_gone = model.outlook(now, now.estimate_s + 2 * 3600.0)
    assert later_gone[0] < 0.1
    assert later_gone[step_of(1.0)] == pytest.approx(0.5, abs=0.1)
    assert later_end - now.estimate_s == pytest.approx((2.1 + 0.9 * 1.8) * 3600.0, abs=400.0)
    # Beyond all it has seen it assumes a departure within the next two hours.
    _, overdue = model.outlook(now, now.estimate_s + 6 * 3600.0)
    assert overdue[step_of(2.0)] == 1.0


def test_known_departures_tell_the_site_the_true_departure_and_the_mpc_plans_to_it(world: ev.World) -> None:
    known = ev.build_world(START, 2, n_slots=24, departures="known")
    assert (known.departures, world.departures) == ("known", "estimate")
    assert [s.depart_tick for s in known.sessions] == [s.depart_tick for s in world.sessions]
    for s in known.sessions + known.history_sessions:
        assert s.estimate_s == known.start_s + s.depart_tick * ev.TICK_S
    assert sum(abs(s.estimate_s - (world.start_s + s.depart_tick * ev.TICK_S)) > 3600.0 for s in world.sessions) > 5, (
        "the drivers' estimates are often an hour or more off"
    )
    model = ev._DepartureModel(known)
    model.learn(0)
    s = max(known.sessions, key=lambda s: s.depart_tick - s.arrive_tick)
    t = known.start_s + s.arrive_tick * ev.TICK_S
    window_end, gone = model.outlook(s, t)
    assert window_end == s.estimate_s
    left_steps = (s.estimate_s - t) / ev.STEP_S
    assert left_steps > 8
    assert not gone[: int(left_steps - 0.5)].any(), "no risk while it is surely there"
    assert gone[int(left_steps + 0.5) :].all()
