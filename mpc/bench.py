"""``plaza-ems bench mpc``: time the charge-plan QP and check it against an independent LP.

The benchmark builds :func:`~mpc.model.synthetic_site` with N connectors, compiles the problem, solves
it cold, then re-solves it warm as a rolling MPC does: each re-solve gets the inputs of a start one
step later (new prices, forecasts and the same sessions one step on, plus fresh arrivals).

The reference is the same *linear* problem (no regulariser) solved by HiGHS through
``scipy.optimize.linprog``, built here from the :class:`~mpc.model.PlanningSite` and
:class:`~mpc.model.PlanInputs` arrays alone, on purpose in another shape than the QP: no flow
variables (each node-phase row sums every connector of its subtree directly), limits in amperes
rather than kW per phase, shortfalls in kWh. A modelling error in the QP therefore shows up as a gap.
``objective`` is the linear objective of the OSQP plan *replayed* from its decisions (slot powers and
battery power; grid import/export, the new peak and the shortfalls recomputed from them), so it does
not trust the QP's own auxiliary variables either.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from mpc.model import FloatArray, MpcError, PlanInputs, PlanningSite, PlanSolution, synthetic_inputs, synthetic_site
from mpc.problem import ChargePlanProblem, Penalties, coarse_blocking

__all__ = ["LpReference", "add_arguments", "bench_mpc", "lp_reference", "main", "replay_objective"]

DEFAULT_START = datetime(2023, 6, 14, 10, 0, tzinfo=UTC)
"""A Wednesday in June: workplace sessions under way, PV, an evening capacity frame ahead."""


# --------------------------------------------------------------------------------------------------
# The reference LP, built from the arrays (shares nothing with mpc.problem but Penalties' numbers)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    """The linear model's data on the block grid, derived from the inputs independently of the QP."""

    dt_h: FloatArray  # (B,)
    avg: FloatArray  # (B, T) dense averaging matrix
    upper_kw: FloatArray  # (S, B) slot power bound
    energy_kwh: FloatArray  # (S,) requested energy as modelled
    min_kwh: FloatArray  # (S,)
    c_imp: FloatArray  # (B,) EUR per kW over the block
    c_exp: FloatArray
    c_p: FloatArray  # (S, B) EUR per kW of the slot over the block
    reserve_kw: float  # the reserve under the peak reached
    net_kw: FloatArray  # (M, B) uncontrolled load minus PV
    lim_a: FloatArray  # (N, B) per-phase limit for the plan, A
    plim_kw: FloatArray  # (N, B) power limit for the plan, kW (inf = none)
    e0_kwh: FloatArray
    e_end_kwh: FloatArray


def _model(site: PlanningSite, inputs: PlanInputs, blocks: tuple[int, ...]) -> _Model:
    t_n = inputs.n_steps
    b_n = len(blocks)
    step_h = inputs.step_s / 3600.0
    dt_h = np.array(blocks, dtype=np.float64) * step_h
    avg = np.zeros((b_n, t_n))
    t = 0
    for b, width in enumerate(blocks):
        avg[b, t : t + width] = 1.0 / width
        t += width
    s_n = len(site.connectors)
    upper = np.zeros((s_n, b_n))
    energy = np.zeros(s_n)
    minimum = np.zeros(s_n)
    for s, conn in enumerate(site.connectors):
        p_kw = min(conn.max_power_w, float(inputs.session_max_power_w[s])) / 1000.0
        dep = int(inputs.departure_step[s])
        here = np.array([bool(inputs.present[s, i]) and i < dep for i in range(t_n)], dtype=np.float64)
        if not here.any():
            continue
        upper[s] = p_kw * (avg @ here)
        # Energy the EV could still take after the horizon if it stays on beyond it.
        later = p_kw * max(dep - t_n, 0) * step_h if here[-1] else 0.0
        alone = float(upper[s] @ dt_h)
        energy[s] = min(max(float(inputs.energy_wh[s]) / 1000.0 - later, 0.0), alone)
        floor = min(float(inputs.min_energy_wh[s]), float(inputs.energy_wh[s])) / 1000.0
        minimum[s] = min(max(floor - later, 0.0), energy[s])
    n_n = len(site.nodes)
    lim = np.array([[node.limit_a] * t_n for node in site.nodes], dtype=np.float64)
    if inputs.node_limit_a is not None:
        lim = np.minimum(lim, inputs.node_limit_a)
    plim = np.array([[node.power_limit_w if node.power_limit_w is not None else np.inf] * t_n for node in site.nodes])
    if inputs.node_power_limit_w is not None:
        for n in site.power_limited:
            plim[n] = np.minimum(plim[n], inputs.node_power_limit_w[n])
    lim_b = np.zeros((n_n, b_n))
    plim_b = np.zeros((n_n, b_n))
    t = 0
    for b, width in enumerate(blocks):
        lim_b[:, b] = lim[:, t : t + width].min(axis=1)
        plim_b[:, b] = plim[:, t : t + width].min(axis=1) / 1000.0
        t += width
    net = avg @ ((inputs.load_w - inputs.pv_w) / 1000.0).T  # (B, M)
    # Forecast load a node's limit cannot hold is let through (the plan gives that subtree nothing).
    for n in range(n_n):
        below = [j for j, m in enumerate(site.metered) if n in site.node_path(m)]
        sub_kw = net[:, below].sum(axis=1) if below else np.zeros(b_n)
        lim_b[n] = np.maximum(lim_b[n], np.abs(sub_kw) * 1000.0 / (3.0 * site.voltage_v))
        if n in site.power_limited:
            plim_b[n] = np.maximum(plim_b[n], sub_kw)
        else:
            plim_b[n] = np.inf
    k_n = len(site.batteries)
    e0 = np.zeros(k_n)
    e_end = np.zeros(k_n)
    for k, bat in enumerate(site.batteries):
        soc = min(max(float(inputs.battery_soc_pct[k]), bat.soc_min_pct), bat.soc_max_pct)
        end = (
            soc
            if inputs.battery_end_soc_pct is None
            else min(max(float(inputs.battery_end_soc_pct[k]), bat.soc_min_pct), soc)
        )
        e0[k] = bat.capacity_wh * soc / 100.0 / 1000.0
        e_end[k] = bat.capacity_wh * end / 100.0 / 1000.0
    return _Model(
        dt_h=dt_h,
        avg=avg,
        upper_kw=upper,
        energy_kwh=energy,
        min_kwh=minimum,
        c_imp=(avg @ inputs.price_import_eur_kwh) * dt_h,
        c_exp=(avg @ inputs.price_export_eur_kwh) * dt_h,
        c_p=np.zeros((s_n, b_n))
        if inputs.slot_cost_eur_kwh is None
        else (avg @ inputs.slot_cost_eur_kwh.T).T * dt_h[None, :],
        reserve_kw=min(inputs.peak_reserve_w, inputs.peak_reached_w) / 1000.0,
        net_kw=net.T,
        lim_a=lim_b,
        plim_kw=plim_b,
        e0_kwh=e0,
        e_end_kwh=e_end,
    )


@dataclass(frozen=True, slots=True)
class LpReference:
    objective_eur: float
    status: str
    solve_s: float
    variables: int
    constraints: int
    power_kw: FloatArray
    """(S, B) the LP's slot powers."""


def _phase_share(site: PlanningSite, s: int) -> dict[int, float]:
    """Amperes per kW a slot draws on each grid phase."""
    conn = site.connectors[s]
    if conn.dc:
        return {p: 1000.0 / (3.0 * conn.voltage_v) for p in (0, 1, 2)}
    return {p: 1000.0 / (len(conn.rotation) * conn.voltage_v) for p in conn.rotation}


def lp_reference(
    site: PlanningSite,
    inputs: PlanInputs,
    blocks: tuple[int, ...],
    penalties: Penalties | None = None,
) -> LpReference:
    """Solve the linear charge-plan problem with HiGHS (``scipy.optimize.linprog``)."""
    pen = penalties or Penalties()
    m = _model(site, inputs, blocks)
    s_n, b_n, k_n, n_n = len(site.connectors), len(blocks), len(site.batteries), len(site.nodes)
    # Column layout.
    off: dict[str, int] = {}
    size = {
        "p": s_n * b_n,
        "ch": k_n * b_n,
        "dis": k_n * b_n,
        "soc": k_n * b_n,
        "imp": b_n,
        "exp": b_n,
        "peak": 1,
        "reserve": 1,
        "short": s_n,
        "short_min": s_n,
    }
    n_cols = 0
    for name, width in size.items():
        off[name] = n_cols
        n_cols += width

    def col(name: str, i: int = 0, b: int = 0) -> int:
        return (
            off[name]
            + i * (b_n if name in ("p", "ch", "dis", "soc") else 1)
            + (b if name not in ("peak", "reserve") else 0)
        )

    c = np.zeros(n_cols)
    c[off["imp"] : off["imp"] + b_n] = m.c_imp
    c[off["exp"] : off["exp"] + b_n] = -m.c_exp
    c[off["peak"]] = inputs.peak_tariff_eur_kw
    c[off["reserve"]] = inputs.peak_reserve_eur_kw
    c[off["p"] : off["p"] + s_n * b_n] = m.c_p.ravel()
    c[off["short"] : off["short"] + s_n] = pen.shortfall_eur_kwh * inputs.priority
    c[off["short_min"] : off["short_min"] + s_n] = pen.minimum_eur_kwh

    lo = np.zeros(n_cols)
    hi = np.full(n_cols, np.inf)
    hi[off["p"] : off["p"] + s_n * b_n] = m.upper_kw.ravel()
    hi[off["reserve"]] = m.reserve_kw
    for k, bat in enumerate(site.batteries):
        hi[col("ch", k) : col("ch", k) + b_n] = bat.max_charge_w / 1000.0
        hi[col("dis", k) : col("dis", k) + b_n] = bat.max_discharge_w / 1000.0
        lo[col("soc", k) : col("soc", k) + b_n] = bat.capacity_wh * bat.soc_min_pct / 100.0 / 1000.0
        hi[col("soc", k) : col("soc", k) + b_n] = bat.capacity_wh * bat.soc_max_pct / 100.0 / 1000.0
        lo[col("soc", k, b_n - 1)] = max(lo[col("soc", k, b_n - 1)], m.e_end_kwh[k])

    ub_rows: list[int] = []
    ub_cols: list[int] = []
    ub_vals: list[float] = []
    ub_rhs: list[float] = []
    eq_rows: list[int] = []
    eq_cols: list[int] = []
    eq_vals: list[float] = []
    eq_rhs: list[float] = []

    def ub(entries: list[tuple[int, float]], rhs: float) -> None:
        r = len(ub_rhs)
        for j, v in entries:
            ub_rows.append(r)
            ub_cols.append(j)
            ub_vals.append(v)
        ub_rhs.append(rhs)

    def eq(entries: list[tuple[int, float]], rhs: float) -> None:
        r = len(eq_rhs)
        for j, v in entries:
            eq_rows.append(r)
            eq_cols.append(j)
            eq_vals.append(v)
        eq_rhs.append(rhs)

    # Energy: delivered + shortfall >= owed, for both tiers (as -delivered - shortfall <= -owed).
    for s in range(s_n):
        delivered = [(col("p", s, b), -float(m.dt_h[b])) for b in range(b_n)]
        ub([*delivered, (col("short", s), -1.0)], -float(m.energy_kwh[s]))
        ub([*delivered, (col("short_min", s), -1.0)], -float(m.min_kwh[s]))

    # Node limits, each node summing its whole subtree directly: per phase in A, power in kW.
    bat_under = {n: [k for k, bat in enumerate(site.batteries) if n in site.node_path(bat.node)] for n in range(n_n)}
    amps_per_kw_bat = 1000.0 / (3.0 * site.voltage_v)
    for n, node in enumerate(site.nodes):
        below = [j for j, meter in enumerate(site.metered) if n in site.node_path(meter)]
        for b in range(b_n):
            load_a = float(m.net_kw[below, b].sum()) * amps_per_kw_bat if below else 0.0
            for phase in (0, 1, 2):
                entries = [
                    (col("p", s, b), share[phase]) for s in node.connectors if phase in (share := _phase_share(site, s))
                ]
                for k in bat_under[n]:
                    entries += [(col("ch", k, b), amps_per_kw_bat), (col("dis", k, b), -amps_per_kw_bat)]
                limit = float(m.lim_a[n, b])
                ub(entries, limit - load_a)
                ub([(j, -v) for j, v in entries], limit + load_a)
            if np.isfinite(m.plim_kw[n, b]):
                entries = [(col("p", s, b), 1.0) for s in node.connectors]
                for k in bat_under[n]:
                    entries += [(col("ch", k, b), 1.0), (col("dis", k, b), -1.0)]
                load_kw = float(m.net_kw[below, b].sum()) if below else 0.0
                ub(entries, float(m.plim_kw[n, b]) - load_kw)

    # Grid: import - export = everything at the connection; peak epigraph.
    site_load = m.net_kw.sum(axis=0)
    for b in range(b_n):
        entries = [(col("imp", 0, b), 1.0), (col("exp", 0, b), -1.0)]
        entries += [(col("p", s, b), -1.0) for s in range(s_n)]
        for k in range(k_n):
            entries += [(col("ch", k, b), -1.0), (col("dis", k, b), 1.0)]
        eq(entries, float(site_load[b]))
        ub(
            [(col("imp", 0, b), 1.0), (col("peak"), -1.0), (col("reserve"), -1.0)],
            float(inputs.peak_reached_w) / 1000.0 - m.reserve_kw,
        )

    # Battery energy.
    for k, bat in enumerate(site.batteries):
        for b in range(b_n):
            entries = [
                (col("soc", k, b), 1.0),
                (col("ch", k, b), -bat.charge_efficiency * float(m.dt_h[b])),
                (col("dis", k, b), float(m.dt_h[b]) / bat.discharge_efficiency),
            ]
            if b:
                entries.append((col("soc", k, b - 1), -1.0))
            eq(entries, float(m.e0_kwh[k]) if b == 0 else 0.0)

    a_ub = sp.csr_array((ub_vals, (ub_rows, ub_cols)), shape=(len(ub_rhs), n_cols))
    a_eq = sp.csr_array((eq_vals, (eq_rows, eq_cols)), shape=(len(eq_rhs), n_cols))
    t0 = time.perf_counter()
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=np.array(ub_rhs),
        A_eq=a_eq,
        b_eq=np.array(eq_rhs),
        bounds=np.column_stack((lo, hi)),
        method="highs",
    )
    elapsed = time.perf_counter() - t0
    if res.status != 0 or res.x is None:
        raise MpcError(f"HiGHS reference LP failed: {res.message}")
    return LpReference(
        objective_eur=float(res.fun),
        status=str(res.message),
        solve_s=elapsed,
        variables=n_cols,
        constraints=len(ub_rhs) + len(eq_rhs),
        power_kw=res.x[off["p"] : off["p"] + s_n * b_n].reshape(s_n, b_n),
    )


def replay_objective(
    site: PlanningSite,
    inputs: PlanInputs,
    blocks: tuple[int, ...],
    plan: PlanSolution,
    penalties: Penalties | None = None,
) -> dict[str, float]:
    """The linear objective of a plan recomputed from its slot and battery powers (EUR), and its worst
    constraint excess (``max_excess_a`` per phase, ``max_excess_kw`` of power)."""
    pen = penalties or Penalties()
    m = _model(site, inputs, blocks)
    p_kw = plan.power_w / 1000.0
    bat_kw = plan.battery_power_w / 1000.0
    at_grid = p_kw.sum(axis=0) + bat_kw.sum(axis=0) + m.net_kw.sum(axis=0)
    imp = np.maximum(at_grid, 0.0)
    exp = np.maximum(-at_grid, 0.0)
    delivered = p_kw @ m.dt_h
    short = np.maximum(m.energy_kwh - delivered, 0.0)
    short_min = np.maximum(m.min_kwh - delivered, 0.0)
    peak0_kw = float(inputs.peak_reached_w) / 1000.0
    peak = max(float(imp.max(initial=0.0)) - peak0_kw, 0.0)
    reserve = min(max(float(imp.max(initial=0.0)) - (peak0_kw - m.reserve_kw), 0.0), m.reserve_kw)
    energy_cost = float(m.c_imp @ imp - m.c_exp @ exp)
    slot_cost = float((m.c_p * p_kw).sum())
    peak_cost = float(inputs.peak_tariff_eur_kw) * peak + float(inputs.peak_reserve_eur_kw) * reserve
    shortfall = float(pen.shortfall_eur_kwh * (inputs.priority @ short) + pen.minimum_eur_kwh * short_min.sum())
    # Worst excess over the limits the LP enforces.
    excess_a = 0.0
    excess_kw = 0.0
    amps_per_kw = 1000.0 / (3.0 * site.voltage_v)
    for n, node in enumerate(site.nodes):
        below = [j for j, meter in enumerate(site.metered) if n in site.node_path(meter)]
        load_kw = m.net_kw[below].sum(axis=0) if below else np.zeros(len(blocks))
        bats = [k for k, bat in enumerate(site.batteries) if n in site.node_path(bat.node)]
        bat_sum = bat_kw[bats].sum(axis=0) if bats else np.zeros(len(blocks))
        for phase in (0, 1, 2):
            amps = (load_kw + bat_sum) * amps_per_kw
            for s in node.connectors:
                share = _phase_share(site, s)
                if phase in share:
                    amps = amps + p_kw[s] * share[phase]
            excess_a = max(excess_a, float((np.abs(amps) - m.lim_a[n]).max()))
        if np.isfinite(m.plim_kw[n]).any():
            total = p_kw[list(node.connectors)].sum(axis=0) + bat_sum + load_kw
            excess_kw = max(excess_kw, float(np.where(np.isfinite(m.plim_kw[n]), total - m.plim_kw[n], -np.inf).max()))
    return {
        "objective_eur": energy_cost + peak_cost + slot_cost + shortfall,
        "energy_cost": energy_cost,
        "peak_cost": peak_cost,
        "slot_cost": slot_cost,
        "shortfall_penalty": shortfall,
        "max_excess_a": excess_a,
        "max_excess_kw": excess_kw,
    }


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def bench_mpc(
    connectors: int,
    horizon_h: float = 24.0,
    step_min: int = 15,
    *,
    resolves: int = 12,
    blocking: str = "none",
    seed: int = 0,
    start: datetime = DEFAULT_START,
    demand_scale: float = 1.0,
) -> dict[str, Any]:
    """Build, solve cold, re-solve ``resolves`` times rolling one step each; compare with HiGHS."""
    if connectors < 1 or resolves < 1 or horizon_h <= 0 or step_min <= 0:
        raise MpcError("bench mpc: need connectors >= 1, resolves >= 1, horizon_h > 0, step_min > 0")
    site = synthetic_site(connectors, seed)
    n_steps = round(horizon_h * 60 / step_min)
    blocks = coarse_blocking(n_steps, step_min) if blocking == "coarse" else None
    step = timedelta(minutes=step_min)
    instances = [
        synthetic_inputs(
            site, start + i * step, seed, horizon_h=horizon_h, step_min=step_min, demand_scale=demand_scale
        )
        for i in range(resolves + 1)
    ]
    t0 = time.perf_counter()
    problem = ChargePlanProblem(site, horizon_h, step_min, blocks)
    problem.compile()
    compile_s = time.perf_counter() - t0
    cold = problem.solve(instances[0], warm=False)
    warm: list[PlanSolution] = [problem.solve(inputs) for inputs in instances[1:]]
    last_inputs, last = instances[-1], warm[-1]
    blocks_t = problem.blocks
    ref = lp_reference(site, last_inputs, blocks_t, problem.penalties)
    replay = replay_objective(site, last_inputs, blocks_t, last, problem.penalties)
    objective = replay["objective_eur"]
    gap_pct = 100.0 * (objective - ref.objective_eur) / max(abs(ref.objective_eur), 1e-6)
    times = [w.solve_s for w in warm]
    iters = [float(w.iterations) for w in warm]
    return {
        "connectors": connectors,
        "variables": problem.n_variables,
        "compile_s": round(compile_s, 4),
        "solve_cold_s": round(cold.solve_s, 4),
        "solve_warm_p50_s": round(_percentile(times, 50), 4),
        "solve_warm_p95_s": round(_percentile(times, 95), 4),
        "objective": round(objective, 4),
        "lp_reference_objective": round(ref.objective_eur, 4),
        "gap_pct": round(gap_pct, 4),
        "steps": problem.n_blocks,
        "horizon_h": horizon_h,
        "step_min": step_min,
        "blocking": blocking,
        "demand_scale": demand_scale,
        "resolves": resolves,
        "iterations_cold": cold.iterations,
        "iterations_p50": _percentile(iters, 50),
        "osqp_warm_p50_s": round(_percentile([w.solver_s for w in warm], 50), 4),
        "status": last.status,
        "qp_objective": round(last.objective_eur, 4),
        "max_excess_a": round(replay["max_excess_a"], 4),
        "max_excess_kw": round(replay["max_excess_kw"], 4),
        "lp_solve_s": round(ref.solve_s, 3),
        "lp_variables": ref.variables,
        "lp_constraints": ref.constraints,
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [
        ("connectors", f"{result['connectors']}"),
        ("steps (blocks)", f"{result['steps']} over {result['horizon_h']} h ({result['blocking']} blocking)"),
        ("variables", f"{result['variables']}"),
        ("compile", f"{result['compile_s']:.3f} s"),
        ("cold solve", f"{result['solve_cold_s']:.3f} s ({result['iterations_cold']} iterations)"),
        (
            "warm re-solve p50 / p95",
            f"{result['solve_warm_p50_s']:.3f} / {result['solve_warm_p95_s']:.3f} s "
            f"({result['iterations_p50']:.0f} iterations p50, {result['resolves']} re-solves)",
        ),
        ("objective (OSQP plan, linear part)", f"{result['objective']:.3f} EUR"),
        ("LP reference (HiGHS)", f"{result['lp_reference_objective']:.3f} EUR"),
        ("gap", f"{result['gap_pct']:.3f} %"),
        ("worst limit excess", f"{result['max_excess_a']:.3f} A, {result['max_excess_kw']:.3f} kW"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``plaza-ems bench mpc``."""
    parser.add_argument("--connectors", type=int, default=200)
    parser.add_argument("--horizon-h", type=float, default=24.0)
    parser.add_argument("--step-min", type=int, default=15)
    parser.add_argument("--resolves", type=int, default=12, help="warm re-solves, each one step later (>= 10)")
    parser.add_argument(
        "--blocking",
        choices=("none", "coarse"),
        default="none",
        help="'coarse': 15 min for 6 h, 30 min for 6 h, 60 min after",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--demand-scale", type=float, default=1.0, help="multiply every session's request (stress case; 1 = the data)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print JSON (``--json``) or a table to stdout.

    Exit status as the rest of ``plaza-ems``: 0 measured, 2 bad options, 3 a data file could not be
    read, 4 the benchmark could not measure (a solve failed).
    """
    from hil.data import DataError

    if args.connectors < 1 or args.resolves < 10 or args.horizon_h <= 0 or args.step_min <= 0 or args.demand_scale < 0:
        print(
            "error: bench mpc: need --connectors >= 1, --resolves >= 10, --horizon-h > 0, --step-min > 0",
            file=sys.stderr,
        )
        return 2
    try:
        result = bench_mpc(
            args.connectors,
            args.horizon_h,
            args.step_min,
            resolves=args.resolves,
            blocking=args.blocking,
            seed=args.seed,
            demand_scale=args.demand_scale,
        )
    except DataError as err:
        print(f"error: bench mpc: {err}", file=sys.stderr)
        return 3
    except MpcError as err:
        print(f"error: bench mpc: {err}", file=sys.stderr)
        return 4
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m mpc.bench")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
