"""The MPC charge-plan problem: one cvxpy QP per site structure, re-solved by OSQP with new parameters.

Built once per :class:`~mpc.model.PlanningSite`; every input that changes between solves (prices,
which slot holds a session when, energy wanted, forecasts, capacity frames, DSO limits, battery SoC,
the billing period's peak) is a cvxpy ``Parameter``, so the problem is DPP: cvxpy canonicalises it
once and a re-solve only re-applies the cached parameter map and hands OSQP new ``q``, ``l``, ``u``
(``P`` and ``A`` never change, so OSQP keeps its factorisation) and the previous solution as its
warm start. The one exception, per-slot costs, is added to OSQP's ``q`` directly (see ``c_p``). The
formulation, with units, is in ``docs/mpc.md``.

Units inside the problem: kW, kWh, hours, EUR (the public interface is W, Wh, s).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import cvxpy as cp
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from cvxpy.atoms.quad_form import quad_form

from mpc.model import BoolArray, FloatArray, MpcError, PlanInputs, PlanningSite, PlanSolution

__all__ = [
    "ChargePlanProblem",
    "OsqpSettings",
    "Penalties",
    "coarse_blocking",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Penalties:
    """Prices of the soft parts of the plan, EUR per kWh (or per kWh^2 for the regulariser).

    Tiers, each far above the one below it, so the cheaper tier never buys its way into a dearer one:
    energy prices (~0.1) < ``shortfall`` x priority (<= 10 x 2 = 20) < ``minimum`` (200).
    """

    shortfall_eur_kwh: float = 2.0
    """Per kWh of requested energy not delivered by departure, times the slot's priority weight."""
    minimum_eur_kwh: float = 200.0
    """Per kWh of the guaranteed minimum (SPEC R8) not delivered: "hard where feasible"."""
    fairness_eur_kwh: float = 1e-3
    """Regulariser ``fairness * sum(dt * p^2 / p_max)``: at full power it adds 2 x this per kWh."""
    battery_eur_kwh: float = 1e-3
    """Regulariser ``battery * sum(dt * (ch^2 + dis^2) / p_max)`` on battery charge and discharge."""
    grid_eur_kwh: float = 1e-2
    """Regulariser ``grid * sum(dt * (imp^2 + exp^2) / p_conn)`` on the connection (p_conn: its power)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise MpcError(f"Penalties.{f.name}: {value} must be finite and >= 0")
        if self.shortfall_eur_kwh <= 0.0:
            raise MpcError("Penalties.shortfall_eur_kwh: must be > 0 (it is the unit of the shortfall variables)")
        if self.minimum_eur_kwh <= MAX_PRIORITY * self.shortfall_eur_kwh:
            raise MpcError("Penalties: minimum_eur_kwh must exceed 10 x shortfall_eur_kwh (the top priority)")


MAX_PRIORITY = 10.0
PEAK_UNIT = 0.07
"""Solver unit of the new-peak and reserve variables, as a share of the connection's power (see _column_scales)."""
TIGHT_ROW_WEIGHT = 3.0
"""Weight of the rows holding the grid import (peak epigraph, connection balance): a 3x finer tolerance."""
SHORTFALL_UNIT_H = 0.1
"""Solver unit of the shortfall variables: this many hours of the slot at full power (see _column_scales)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OsqpSettings:
    """OSQP settings (reasons in ``docs/mpc.md``)."""

    eps_abs: float = 1e-4
    eps_rel: float = 1e-4
    max_iter: int = 10_000
    polishing: bool = False
    warm_starting: bool = True
    adaptive_rho: bool = True
    adaptive_rho_interval: int = 100
    alpha: float = 1.6
    rho: float = 0.1
    sigma: float = 1e-6
    rho_is_vec: bool = True
    time_limit: float = 30.0
    """Seconds of ADMM per attempt (0 = none). Hitting it fails the solve (MpcError): no half-solved plan."""
    scaling: int = 10
    check_termination: int = 25
    adaptive_rho_tolerance: float = 5.0
    check_dualgap: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def coarse_blocking(n_steps: int, step_min: int = 15) -> tuple[int, ...]:
    """Move blocking: base steps for the first 6 h, 30 min for the next 6 h, 60 min after that.

    Returns block lengths in base steps, summing to ``n_steps``.
    """
    per_h = max(1, round(60 / step_min))
    blocks: list[int] = []
    used = 0
    for hours, width in ((6, 1), (6, max(1, per_h // 2)), (10_000, per_h)):
        limit = min(n_steps, used + hours * per_h)
        while used < limit:
            w = min(width, limit - used)
            blocks.append(w)
            used += w
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class _Derived:
    """What solving needs besides the parameters: energies owed, availability, start SoC, forced excess."""

    energy_kwh: FloatArray
    """Requested energy as modelled (within the horizon, capped at what the slot could take alone)."""
    min_kwh: FloatArray
    wanted_kwh: FloatArray
    """Requested energy within the horizon, uncapped (for the reported shortfall)."""
    avail: BoolArray
    e0_kwh: FloatArray
    excess_w: FloatArray
    forced_peak_kw: float
    """New peak no plan can avoid (forecast load alone), taken out of the QP's peak variable."""
    forced_reserve_kw: float
    """Reserve no plan can avoid using, taken out of the QP's reserve variable."""


# Status names of OSQP 1.x (``info.status``) that count as a usable plan.
_SOLVED = "solved"
_SOLVED_INACCURATE = "solved inaccurate"
_MAX_ITER = "maximum iterations reached"

RETRY_ALPHA = 1.0
"""Over-relaxation of the last attempt after ``max_iter``, cold: plain ADMM is slower but steadier
(docs/mpc.md)."""


class ChargePlanProblem:
    """The charge-plan QP for one site structure; :meth:`solve` it as often as needed.

    ``blocking`` merges base steps into blocks of constant power (move blocking): a sequence of
    block lengths in base steps (see :func:`coarse_blocking`); None = every base step its own block.
    """

    def __init__(
        self,
        site: PlanningSite,
        horizon_h: float = 24.0,
        step_min: int = 15,
        blocking: Sequence[int] | None = None,
        *,
        penalties: Penalties | None = None,
        settings: OsqpSettings | None = None,
        accept_inaccurate: bool = False,
    ) -> None:
        if step_min <= 0 or horizon_h <= 0:
            raise MpcError(f"ChargePlanProblem: need horizon_h > 0 and step_min > 0, got {horizon_h}, {step_min}")
        n_steps = horizon_h * 60.0 / step_min
        if abs(n_steps - round(n_steps)) > 1e-9:
            raise MpcError(f"ChargePlanProblem: horizon {horizon_h} h is not a whole number of {step_min} min steps")
        self.site = site
        self.step_s = step_min * 60.0
        self.n_steps = round(n_steps)
        blocks = tuple(int(b) for b in blocking) if blocking is not None else (1,) * self.n_steps
        if any(b < 1 for b in blocks) or sum(blocks) != self.n_steps:
            raise MpcError(f"ChargePlanProblem: blocking {blocks} must be positive and sum to {self.n_steps} steps")
        self.blocks = blocks
        self.penalties = penalties or Penalties()
        self.settings = settings or OsqpSettings()
        self.accept_inaccurate = accept_inaccurate
        self.block_start = np.concatenate(([0], np.cumsum(blocks)[:-1])).astype(np.int64)
        self.dt_h = np.asarray(blocks, dtype=np.float64) * self.step_s / 3600.0
        # (B, T) averaging matrix: block value = mean of its base steps.
        b_of_t = np.repeat(np.arange(len(blocks)), blocks)
        self._avg = sp.csr_array(
            (1.0 / np.asarray(blocks, dtype=np.float64)[b_of_t], (b_of_t, np.arange(self.n_steps))),
            shape=(len(blocks), self.n_steps),
        )
        self._b_of_t = b_of_t
        self._build()
        self._engine: _Osqp | None = None
        self._last_start: datetime | None = None
        self.compile_s = 0.0

    # ----------------------------------------------------------------------------------------------
    # Structure
    # ----------------------------------------------------------------------------------------------

    def _build(self) -> None:
        site = self.site
        s_n, b_n, n_n, k_n = len(site.connectors), len(self.blocks), len(site.nodes), len(site.batteries)
        r_n = 3 * n_n
        v_site = site.voltage_v
        self.pmax_kw = np.array([c.max_power_w for c in site.connectors]) / 1000.0

        # Direct attachment of each slot to its node's three phase rows, in kW of phase flow per kW of
        # charging (phase flow = current x site voltage): 1 on the one phase of a 1-phase connector,
        # 1/3 on each phase of a 3-phase AC or a DC connector.
        rows, cols, vals = [], [], []
        for s, c in enumerate(site.connectors):
            phases = (0, 1, 2) if c.dc else c.rotation
            for p in phases:
                rows.append(3 * c.node + p)
                cols.append(s)
                vals.append(v_site / (len(phases) * c.voltage_v))
        self.share = sp.csr_array((vals, (rows, cols)), shape=(r_n, s_n))
        # Child-to-parent aggregation of phase flows.
        rows, cols = [], []
        for i, node in enumerate(site.nodes):
            if node.parent is not None:
                for p in range(3):
                    rows.append(3 * node.parent + p)
                    cols.append(3 * i + p)
        child = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(r_n, r_n))
        bat_share = sp.csr_array(
            (
                np.full(3 * k_n, 1.0 / 3.0),
                ([3 * b.node + p for b in site.batteries for p in range(3)], [k for k in range(k_n) for _ in range(3)]),
            ),
            shape=(r_n, k_n),
        )
        powered = list(site.power_limited)
        self.powered = powered
        np_n = len(powered)
        power_sum = sp.csr_array(
            (
                np.ones(3 * np_n),
                ([j for j in range(np_n) for _ in range(3)], [3 * n + p for n in powered for p in range(3)]),
            ),
            shape=(np_n, r_n),
        )
        # Subtree aggregation (node phase row <- every metered node below it), for the forced-load check.
        rows, cols = [], []
        for j, m in enumerate(site.metered):
            for n in site.node_path(m):
                rows.append(n)
                cols.append(j)
        self._subtree_of_metered = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n_n, len(site.metered)))

        eye_b = sp.identity(b_n, format="csr")
        dt = self.dt_h

        def kron(a: sp.csr_array | sp.csr_matrix) -> sp.csr_array:
            return sp.csr_array(sp.kron(a, eye_b, format="csr"))

        # Variables, flattened row-major: x[i * B + b] is entity i in block b.
        self.p = cp.Variable(s_n * b_n, name="p_kw")
        self.f = cp.Variable(r_n * b_n, name="phase_flow_kw")
        self.imp = cp.Variable(b_n, name="import_kw")
        self.exp = cp.Variable(b_n, name="export_kw")
        self.peak = cp.Variable(name="new_peak_kw")
        self.reserve = cp.Variable(name="reserve_used_kw")
        # Shortfalls in EUR at the tier's price (kWh x price), so the cost of a shortfall is its value.
        self.short = cp.Variable(s_n, name="shortfall_eur")
        self.short_min = cp.Variable(s_n, name="min_shortfall_eur")
        self.ch = cp.Variable(k_n * b_n, name="charge_kw") if k_n else None
        self.dis = cp.Variable(k_n * b_n, name="discharge_kw") if k_n else None
        self.soc = cp.Variable(k_n * b_n, name="stored_kwh") if k_n else None
        # Variables whose rows need a finer tolerance (see _Osqp).
        self._tight = {self.imp.id, self.exp.id}
        # Variables indexed by (entity, block), whose warm start moves with time.
        self._timed = {v.id for v in (self.p, self.f, self.imp, self.exp, self.ch, self.dis, self.soc) if v is not None}

        # Parameters.
        self.par_pmax = cp.Parameter(s_n * b_n, name="available_kw", nonneg=True)
        self.par_energy = cp.Parameter(s_n, name="energy_kwh", nonneg=True)
        self.par_min = cp.Parameter(s_n, name="min_energy_kwh", nonneg=True)
        self.par_priority = cp.Parameter(s_n, name="priority", nonneg=True)
        self.par_uncontrolled = cp.Parameter(r_n * b_n, name="uncontrolled_kw")
        self.par_phase_lim = cp.Parameter(r_n * b_n, name="phase_limit_kw", nonneg=True)
        self.par_power_lim = cp.Parameter(np_n * b_n, name="power_limit_kw", nonneg=True) if np_n else None
        self.par_c_imp = cp.Parameter(b_n, name="import_eur_kw_block")
        self.par_c_exp = cp.Parameter(b_n, name="export_eur_kw_block")
        self.par_tariff = cp.Parameter(name="peak_tariff_eur_kw", nonneg=True)
        self.par_peak0 = cp.Parameter(name="peak_reached_kw", nonneg=True)
        self.par_reserve = cp.Parameter(name="peak_reserve_kw", nonneg=True)
        self.par_reserve_price = cp.Parameter(name="peak_reserve_eur_kw", nonneg=True)
        # The slot costs go into OSQP's q directly (_Osqp.add_cost), not through cvxpy: a Parameter times
        # the slot powers in the objective makes cvxpy's QP canonicalisation build a dense (objective
        # variables x parameter entries) matrix, 52 GB at 500 connectors.
        self.c_p = np.zeros(s_n * b_n)
        self.par_e0 = cp.Parameter(k_n, name="stored_start_kwh", nonneg=True) if k_n else None
        self.par_e_end = cp.Parameter(k_n, name="stored_end_min_kwh", nonneg=True) if k_n else None

        p, f = self.p, self.f
        # Energy over the horizon: one row per slot. (A running-total chain per slot instead makes the
        # KKT factor several times denser: every time-separator then holds one variable per slot.)
        energy_of = sp.csr_array(sp.kron(sp.identity(s_n), dt[None, :], format="csr"))
        flow_out = kron(sp.identity(r_n, format="csr") - child)
        cons: list[cp.Constraint] = [
            p >= 0,
            p <= self.par_pmax,
            energy_of @ p + self.short / self.penalties.shortfall_eur_kwh >= self.par_energy,
            energy_of @ p + self.short_min / self.penalties.minimum_eur_kwh >= self.par_min,
            self.short >= 0,
            self.short_min >= 0,
            self.imp >= 0,
            self.exp >= 0,
            self.peak >= 0,
            self.reserve >= 0,
            self.reserve <= self.par_reserve,
            self.imp - self.peak - self.reserve <= self.par_peak0,
        ]
        balance = flow_out @ f - kron(self.share) @ p
        if k_n:
            assert self.ch is not None
            assert self.dis is not None
            assert self.soc is not None
            assert self.par_e0 is not None
            assert self.par_e_end is not None
            balance = balance - kron(bat_share) @ (self.ch - self.dis)
            eta_c = np.array([b.charge_efficiency for b in site.batteries])
            eta_d = np.array([b.discharge_efficiency for b in site.batteries])
            e_min = np.array([b.capacity_wh * b.soc_min_pct / 100.0 for b in site.batteries]) / 1000.0
            e_max = np.array([b.capacity_wh * b.soc_max_pct / 100.0 for b in site.batteries]) / 1000.0
            ch_max = np.array([b.max_charge_w for b in site.batteries]) / 1000.0
            dis_max = np.array([b.max_discharge_w for b in site.batteries]) / 1000.0
            # stored[b] - stored[b-1] = eta_c dt ch - dt / eta_d dis, stored[-1] = e0.
            diff = sp.identity(b_n, format="csr") - sp.eye(b_n, k=-1, format="csr")
            first = sp.csr_array(
                ([1.0] * k_n, ([k * b_n for k in range(k_n)], list(range(k_n)))), shape=(k_n * b_n, k_n)
            )
            last = sp.csr_array(
                ([1.0] * k_n, (list(range(k_n)), [k * b_n + b_n - 1 for k in range(k_n)])), shape=(k_n, k_n * b_n)
            )
            gain_c = sp.diags_array(np.kron(eta_c, dt))
            gain_d = sp.diags_array(np.kron(1.0 / eta_d, dt))
            cons += [
                sp.csr_array(sp.kron(sp.identity(k_n), diff, format="csr")) @ self.soc
                - gain_c @ self.ch
                + gain_d @ self.dis
                == first @ self.par_e0,
                self.soc >= np.repeat(e_min, b_n),
                self.soc <= np.repeat(e_max, b_n),
                last @ self.soc >= self.par_e_end,
                self.ch >= 0,
                self.ch <= np.repeat(ch_max, b_n),
                self.dis >= 0,
                self.dis <= np.repeat(dis_max, b_n),
            ]
        cons.append(balance == self.par_uncontrolled)
        cons += [f <= self.par_phase_lim, -f <= self.par_phase_lim]
        if np_n:
            assert self.par_power_lim is not None
            cons.append(kron(power_sum) @ f <= self.par_power_lim)
        root_sum = sp.csr_array(([1.0, 1.0, 1.0], ([0, 0, 0], [0, 1, 2])), shape=(1, r_n))
        cons.append(self.imp - self.exp == kron(root_sum) @ f)

        pen = self.penalties
        reg_p = pen.fairness_eur_kwh * np.kron(1.0 / np.maximum(self.pmax_kw, 1e-3), dt)
        self.reg_p = reg_p
        linear = (
            self.par_c_imp @ self.imp
            - self.par_c_exp @ self.exp
            + self.par_tariff * self.peak
            + self.par_reserve_price * self.reserve
            + self.par_priority @ self.short
            + np.ones(s_n) @ self.short_min
        )
        quad = quad_form(p, sp.diags_array(reg_p), assume_PSD=True)
        if k_n:
            assert self.ch is not None
            assert self.dis is not None
            bat_scale = np.array([max(b.max_charge_w, b.max_discharge_w, 1.0) for b in site.batteries]) / 1000.0
            reg_b = pen.battery_eur_kwh * np.kron(1.0 / bat_scale, dt)
            self.reg_b = reg_b
            quad = quad + quad_form(self.ch, sp.diags_array(reg_b), assume_PSD=True)
            quad = quad + quad_form(self.dis, sp.diags_array(reg_b), assume_PSD=True)
        conn_kw = 3.0 * site.nodes[0].limit_a * site.voltage_v / 1000.0
        reg_g = pen.grid_eur_kwh * dt / conn_kw
        self.reg_g = reg_g
        if pen.grid_eur_kwh > 0.0:
            quad = quad + quad_form(self.imp, sp.diags_array(reg_g), assume_PSD=True)
            quad = quad + quad_form(self.exp, sp.diags_array(reg_g), assume_PSD=True)
        self.problem = cp.Problem(cp.Minimize(linear + quad), cons)

    def _column_scales(self) -> dict[int, FloatArray | float]:
        """Typical size of each variable (its unit for the solver), by variable id."""
        site = self.site
        b_n = self.n_blocks
        node_kw = np.array([n.limit_a for n in site.nodes]) * site.voltage_v / 1000.0
        root_kw = 3.0 * node_kw[0]
        pmax = np.maximum(self.pmax_kw, 1e-3)
        pen = self.penalties
        scales: dict[int, FloatArray | float] = {
            self.p.id: np.repeat(pmax, b_n),
            self.f.id: np.repeat(np.repeat(node_kw, 3), b_n),
            self.imp.id: root_kw,
            self.exp.id: root_kw,
            # Smaller units for the variables with large costs, so that no entry of the cost vector
            # dwarfs the energy prices (OSQP's dual tolerance is relative to its largest entry): 7 % of
            # the connection for the new peak and the reserve (3 % left the evaluation plaza's night plans
            # at max_iter, 10 % slowed the benchmark, docs/mpc.md); for both shortfall tiers the value, at
            # the requested tier's price, of 6 minutes of the slot at full power.
            self.peak.id: PEAK_UNIT * root_kw,
            self.reserve.id: PEAK_UNIT * root_kw,
            self.short.id: SHORTFALL_UNIT_H * max(pen.shortfall_eur_kwh, 1e-3) * pmax,
            self.short_min.id: SHORTFALL_UNIT_H * max(pen.shortfall_eur_kwh, 1e-3) * pmax,
        }
        if self.ch is not None and self.dis is not None and self.soc is not None:
            scales[self.ch.id] = np.repeat([max(b.max_charge_w, 1.0) / 1000.0 for b in site.batteries], b_n)
            scales[self.dis.id] = np.repeat([max(b.max_discharge_w, 1.0) / 1000.0 for b in site.batteries], b_n)
            scales[self.soc.id] = np.repeat([b.capacity_wh / 1000.0 for b in site.batteries], b_n)
        return scales

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_variables(self) -> int:
        return int(sum(v.size for v in self.problem.variables()))

    def is_dpp(self) -> bool:
        return bool(self.problem.is_dpp())

    def compile(self) -> float:
        """Canonicalise once (cvxpy builds its parameter map); returns the seconds it took."""
        if self.compile_s == 0.0:
            self._fill_defaults()
            t0 = time.perf_counter()
            self.problem.get_problem_data(cp.OSQP, enforce_dpp=True)
            self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def _fill_defaults(self) -> None:
        for par in self.problem.parameters():
            if par.value is None:
                par.value = np.zeros(par.shape)

    # ----------------------------------------------------------------------------------------------
    # Inputs -> parameter values
    # ----------------------------------------------------------------------------------------------

    def _set_parameters(self, inputs: PlanInputs) -> _Derived:
        """Check ``inputs`` and set every parameter; returns the derived arrays the solution needs."""
        site = self.site
        s_n, t_n, n_n, k_n = len(site.connectors), self.n_steps, len(site.nodes), len(site.batteries)
        m_n = len(site.metered)
        _check_inputs(inputs, s_n=s_n, t_n=t_n, n_n=n_n, k_n=k_n, m_n=m_n, step_s=self.step_s)
        avg = self._avg
        dt_base_h = self.step_s / 3600.0

        # Slots: availability, effective power bound, energy owed within the horizon.
        steps = np.arange(t_n)
        avail = inputs.present & (steps[None, :] < inputs.departure_step[:, None])
        pmax_kw = np.minimum(self.pmax_kw, inputs.session_max_power_w / 1000.0)
        avail_frac = (avg @ avail.astype(np.float64).T).T  # (S, B)
        self.par_pmax.value = (pmax_kw[:, None] * avail_frac).ravel()
        beyond_h = np.maximum(inputs.departure_step - t_n, 0) * dt_base_h
        after_kwh = np.where(avail[:, -1] if t_n else False, pmax_kw * beyond_h, 0.0)
        energy = np.maximum(inputs.energy_wh / 1000.0 - after_kwh, 0.0)
        minimum = np.maximum(np.minimum(inputs.min_energy_wh, inputs.energy_wh) / 1000.0 - after_kwh, 0.0)
        has_session = avail.any(axis=1)
        wanted = np.where(has_session, energy, 0.0)
        # What a slot could take alone (full power whenever present) caps both targets: a shortfall no
        # plan can avoid is reported but kept out of the QP, where it would only pin that slot at full
        # power behind a huge dual and slow OSQP down (docs/mpc.md).
        alone_kwh = (pmax_kw[:, None] * avail_frac) @ self.dt_h
        energy = np.minimum(wanted, alone_kwh)
        minimum = np.minimum(np.where(has_session, minimum, 0.0), energy)
        self.par_energy.value = energy
        self.par_min.value = minimum
        self.par_priority.value = inputs.priority.astype(np.float64)

        # Uncontrolled load net of PV, balanced over the phases, at the metered nodes.
        net_kw = (inputs.load_w - inputs.pv_w) / 1000.0  # (M, T)
        net_b = (avg @ net_kw.T).T  # (M, B)
        unc = np.zeros((3 * n_n, self.n_blocks))
        for j, node in enumerate(site.metered):
            unc[3 * node : 3 * node + 3, :] += net_b[j] / 3.0
        self.par_uncontrolled.value = unc.ravel()

        # Limits: the lower of static and override, per step; a block takes its tightest step.
        static_a = np.array([node.limit_a for node in site.nodes])
        limit_a = np.broadcast_to(static_a[:, None], (n_n, t_n))
        if inputs.node_limit_a is not None:
            limit_a = np.minimum(limit_a, inputs.node_limit_a)
        lim_b = self._block_min(limit_a) * site.voltage_v / 1000.0  # (N, B) kW per phase
        # Where the forecast uncontrolled load (or PV) alone is over a limit, no plan can keep it: the
        # limit is raised to that load for the plan (EVs below get nothing) and the excess reported.
        # So the QP is feasible for any input (all EVs off, battery idle is always a solution).
        sub_kw = self._subtree_of_metered @ net_b  # (N, B) net uncontrolled load of each subtree
        forced = np.abs(sub_kw) / 3.0
        excess_w = np.maximum(forced - lim_b, 0.0) * 3000.0
        self.par_phase_lim.value = np.repeat(np.maximum(lim_b, forced), 3, axis=0).ravel()
        if inputs.node_power_limit_w is not None:
            others = np.setdiff1d(np.arange(n_n), self.powered)
            bad = others[np.isfinite(inputs.node_power_limit_w[others]).any(axis=1)]
            if bad.size:
                raise MpcError(
                    f"PlanInputs.node_power_limit_w: node {site.nodes[int(bad[0])].id!r} has no power "
                    "constraint in this problem (add it to PlanningSite.power_limited)"
                )
        if self.par_power_lim is not None:
            static_w = np.array([site.nodes[n].power_limit_w or np.inf for n in self.powered])
            lim_w = np.broadcast_to(static_w[:, None], (len(self.powered), t_n))
            if inputs.node_power_limit_w is not None:
                lim_w = np.minimum(lim_w, inputs.node_power_limit_w[self.powered])
            lim_pb = self._block_min(lim_w) / 1000.0
            sub_p = sub_kw[self.powered]
            excess_w[self.powered] = np.maximum(excess_w[self.powered], (sub_p - lim_pb) * 1000.0)
            # No limit: a bound far above anything the site can draw (OSQP needs no infinity here).
            cap = 10.0 * (self.pmax_kw.sum() + 1.0 + float(np.abs(net_kw).max(initial=0.0)))
            self.par_power_lim.value = np.minimum(np.maximum(lim_pb, sub_p), cap).ravel()

        # Prices per block (EUR per kW held over the block), peak tariff.
        self.par_c_imp.value = (avg @ inputs.price_import_eur_kwh) * self.dt_h
        self.par_c_exp.value = (avg @ inputs.price_export_eur_kwh) * self.dt_h
        self.par_tariff.value = float(inputs.peak_tariff_eur_kw)
        self.par_reserve_price.value = float(inputs.peak_reserve_eur_kw)
        slot_cost = np.zeros((s_n, t_n)) if inputs.slot_cost_eur_kwh is None else inputs.slot_cost_eur_kwh
        self.c_p = ((avg @ slot_cost.T).T * self.dt_h[None, :]).ravel()
        # Import in a block is at least the forecast net load less every battery at full discharge (EVs
        # only add), so the new peak is at least the highest such floor above the peak reached. That part
        # is a constant: the QP starts its peak from there. Left in the QP, a peak set by the forecast
        # load puts the whole tariff (3 EUR/kW, ~100x a block's energy price) on the dual of one or two
        # epigraph rows, and OSQP oscillated for 10 000 iterations on plans with no EV at all
        # (docs/mpc.md, "Tight connection").
        # The reserve below the peak reached is priced the same way: what the floor forces of it is a
        # constant too.
        peak0_kw = float(inputs.peak_reached_w) / 1000.0
        reserve_kw = min(float(inputs.peak_reserve_w) / 1000.0, peak0_kw)
        discharge_kw = sum(b.max_discharge_w for b in site.batteries) / 1000.0
        floor_kw = float(np.max(net_b.sum(axis=0) - discharge_kw, initial=0.0))
        level_kw = max(peak0_kw - reserve_kw, floor_kw)
        forced_peak_kw = max(floor_kw - peak0_kw, 0.0)
        forced_reserve_kw = min(max(floor_kw - (peak0_kw - reserve_kw), 0.0), reserve_kw)
        self.par_peak0.value = level_kw
        self.par_reserve.value = max(peak0_kw - level_kw, 0.0)

        e0 = np.zeros(k_n)
        if k_n:
            assert self.par_e0 is not None
            assert self.par_e_end is not None
            cap_kwh = np.array([b.capacity_wh for b in site.batteries]) / 1000.0
            lo = np.array([b.soc_min_pct for b in site.batteries])
            hi = np.array([b.soc_max_pct for b in site.batteries])
            # Out-of-band SoC (after an emergency) is planned from the nearest bound: keeps the QP feasible.
            soc0 = np.clip(inputs.battery_soc_pct, lo, hi)
            end = soc0 if inputs.battery_end_soc_pct is None else np.clip(inputs.battery_end_soc_pct, lo, soc0)
            e0 = cap_kwh * soc0 / 100.0
            self.par_e0.value = e0
            self.par_e_end.value = cap_kwh * end / 100.0
        return _Derived(
            energy_kwh=energy,
            min_kwh=minimum,
            wanted_kwh=wanted,
            avail=avail,
            e0_kwh=e0,
            excess_w=excess_w,
            forced_peak_kw=forced_peak_kw,
            forced_reserve_kw=forced_reserve_kw,
        )

    def _block_min(self, values: FloatArray) -> FloatArray:
        """(rows, T) -> (rows, B): the tightest base step of each block."""
        return np.minimum.reduceat(values, self.block_start, axis=1)

    # ----------------------------------------------------------------------------------------------
    # Solve
    # ----------------------------------------------------------------------------------------------

    def solve(self, inputs: PlanInputs, warm: bool = True) -> PlanSolution:
        """Plan for ``inputs``; raises :class:`MpcError` on bad input or when OSQP does not solve.

        ``warm``: start OSQP from the previous solution, shifted in time by the steps ``inputs.start``
        moved on since (a rolling MPC), rounded to the nearest step; otherwise from zero.
        """
        t0 = time.perf_counter()
        derived = self._set_parameters(inputs)
        if self._engine is None:
            tc = time.perf_counter()
            data, _, _ = self.problem.get_problem_data(cp.OSQP, enforce_dpp=True)
            if self.compile_s == 0.0:
                self.compile_s = time.perf_counter() - tc
            self._engine = _Osqp(self, data, self.settings)
        else:
            data, _, _ = self.problem.get_problem_data(cp.OSQP, enforce_dpp=True)
        engine = self._engine
        data = engine.add_cost(data, self.p, self.c_p)
        shift = 0
        if warm and self._last_start is not None:
            moved = (inputs.start - self._last_start).total_seconds() / self.step_s
            # A re-solve off the step grid (a session started mid-step) starts from the nearest shift: a
            # few minutes off is still far closer than zero (cold solves of a tight plaza took 3-10x
            # the iterations).
            shift = round(moved) if 0 <= round(moved) < self.n_steps else -1
        started_warm = warm and self._last_start is not None and shift >= 0
        result = engine.solve(data, warm=started_warm, shift=max(shift, 0))
        iterations, solver_s = int(result.info.iter), float(result.info.run_time)
        # A solve that stalls gets more attempts from zero at the starting rho. After a warm start, first
        # the same ADMM (the warm point, or the rho adapted on earlier plans, can lead it astray); then
        # plain ADMM, slower, but it does not circle a degenerate optimum (a new peak held by a few rows)
        # as over-relaxed ADMM sometimes does.
        for alpha in ((engine.settings.alpha,) if started_warm else ()) + (RETRY_ALPHA,):
            if not self._stalled(str(result.info.status)):
                break
            result = engine.solve_again(data, alpha)
            iterations += int(result.info.iter)
            solver_s += float(result.info.run_time)
        status = str(result.info.status)
        ok = status == _SOLVED or (self.accept_inaccurate and status == _SOLVED_INACCURATE)
        if not ok or not np.all(np.isfinite(result.x)):
            engine.forget()
            self._last_start = None
            raise MpcError(
                f"OSQP did not solve the charge plan: status {status!r} after {iterations} iterations "
                f"({solver_s:.3f} s); primal residual {result.info.prim_res:.3g}, "
                f"dual residual {result.info.dual_res:.3g}"
            )
        self._last_start = inputs.start
        for var, value in engine.split(result.x):
            var.value = value
        return self._solution(inputs, derived, status, time.perf_counter() - t0, solver_s, iterations)

    def _stalled(self, status: str) -> bool:
        """OSQP stopped short of a plan this problem accepts, but another attempt may get there."""
        return status == _MAX_ITER or (status == _SOLVED_INACCURATE and not self.accept_inaccurate)

    def _solution(
        self, inputs: PlanInputs, derived: _Derived, status: str, elapsed: float, solver_s: float, iterations: int
    ) -> PlanSolution:
        site = self.site
        s_n, b_n, k_n = len(site.connectors), self.n_blocks, len(site.batteries)
        dt = self.dt_h

        def val(v: cp.Variable | None, shape: tuple[int, ...]) -> FloatArray:
            if v is None or v.value is None:
                return np.zeros(shape)
            return np.asarray(v.value, dtype=np.float64).reshape(shape)

        # Clip solver noise (|x| ~ eps) so a plan never carries a negative power.
        p_kw = np.clip(val(self.p, (s_n, b_n)), 0.0, None)
        p_kw = np.minimum(p_kw, np.asarray(self.par_pmax.value).reshape(s_n, b_n))
        ch = np.clip(val(self.ch, (k_n, b_n)), 0.0, None)
        dis = np.clip(val(self.dis, (k_n, b_n)), 0.0, None)
        imp = np.clip(val(self.imp, (b_n,)), 0.0, None)
        exp = np.clip(val(self.exp, (b_n,)), 0.0, None)
        peak_new = max(float(val(self.peak, ()).item()), 0.0) + derived.forced_peak_kw
        reserve_used = max(float(val(self.reserve, ()).item()), 0.0) + derived.forced_reserve_kw
        stored = val(self.soc, (k_n, b_n))
        delivered_kwh = p_kw @ dt
        shortfall = np.maximum(derived.energy_kwh - delivered_kwh, 0.0)
        min_short = np.maximum(derived.min_kwh - delivered_kwh, 0.0)
        missed = np.maximum(derived.wanted_kwh - delivered_kwh, 0.0)

        volts = np.array([c.voltage_v for c in site.connectors])
        n_ph = np.array([3 if c.dc else len(c.rotation) for c in site.connectors], dtype=np.float64)
        current = p_kw * 1000.0 / (n_ph * volts)[:, None]
        phase_current = np.zeros((s_n, 3, b_n))
        for s, c in enumerate(site.connectors):
            for ph in (0, 1, 2) if c.dc else c.rotation:
                phase_current[s, ph, :] = current[s]
        cap_kwh = np.array([b.capacity_wh for b in site.batteries]) / 1000.0
        soc_pct = 100.0 * stored / cap_kwh[:, None] if k_n else np.zeros((0, b_n))

        c_imp = np.asarray(self.par_c_imp.value)
        c_exp = np.asarray(self.par_c_exp.value)
        pen = self.penalties
        energy_cost = float(c_imp @ imp - c_exp @ exp)
        peak_cost = float(inputs.peak_tariff_eur_kw) * peak_new + float(inputs.peak_reserve_eur_kw) * reserve_used
        slot_cost = float(self.c_p @ p_kw.ravel())
        shortfall_pen = float(
            pen.shortfall_eur_kwh * (inputs.priority @ shortfall) + pen.minimum_eur_kwh * min_short.sum()
        )
        reg = float(self.reg_p @ (p_kw.ravel() ** 2) + self.reg_g @ (imp**2) + self.reg_g @ (exp**2))
        if k_n:
            reg += float(self.reg_b @ (ch.ravel() ** 2) + self.reg_b @ (dis.ravel() ** 2))
        split = {
            "energy_cost": energy_cost,
            "peak_cost": peak_cost,
            "slot_cost": slot_cost,
            "shortfall_penalty": shortfall_pen,
            "regulariser": reg,
        }
        return PlanSolution(
            start=inputs.start,
            step_s=dt * 3600.0,
            connector_ids=tuple(c.id for c in site.connectors),
            battery_ids=tuple(b.id for b in site.batteries),
            power_w=p_kw * 1000.0,
            current_a=current,
            phase_current_a=phase_current,
            battery_power_w=(ch - dis) * 1000.0,
            battery_soc_pct=soc_pct,
            battery_soc_start_pct=100.0 * derived.e0_kwh / cap_kwh if k_n else np.zeros(0),
            grid_import_w=imp * 1000.0,
            grid_export_w=exp * 1000.0,
            delivered_wh=delivered_kwh * 1000.0,
            shortfall_wh=missed * 1000.0,
            unavoidable_wh=(derived.wanted_kwh - derived.energy_kwh) * 1000.0,
            min_shortfall_wh=min_short * 1000.0,
            limit_violation_w=derived.excess_w,
            objective_eur=float(sum(split.values())),
            objective_split=split,
            status=status,
            solve_s=elapsed,
            solver_s=solver_s,
            iterations=iterations,
            base_step_s=self.step_s,
            base_present=derived.avail,
        )


def _check_inputs(inputs: PlanInputs, *, s_n: int, t_n: int, n_n: int, k_n: int, m_n: int, step_s: float) -> None:
    """Shapes, finiteness and ranges of every field; MpcError names the first bad one."""
    if inputs.start.tzinfo is None:
        raise MpcError("PlanInputs.start: must be an aware datetime")
    if abs(inputs.step_s - step_s) > 1e-9:
        raise MpcError(f"PlanInputs.step_s: {inputs.step_s} s, but the problem is built for {step_s} s steps")
    shapes: dict[str, tuple[int, ...]] = {
        "price_import_eur_kwh": (t_n,),
        "price_export_eur_kwh": (t_n,),
        "present": (s_n, t_n),
        "session_max_power_w": (s_n,),
        "energy_wh": (s_n,),
        "departure_step": (s_n,),
        "min_energy_wh": (s_n,),
        "priority": (s_n,),
        "battery_soc_pct": (k_n,),
        "load_w": (m_n, t_n),
        "pv_w": (m_n, t_n),
        "node_limit_a": (n_n, t_n),
        "node_power_limit_w": (n_n, t_n),
        "battery_end_soc_pct": (k_n,),
        "slot_cost_eur_kwh": (s_n, t_n),
    }
    for name, shape in shapes.items():
        value = getattr(inputs, name)
        if value is None and name in ("node_limit_a", "node_power_limit_w", "battery_end_soc_pct", "slot_cost_eur_kwh"):
            continue
        if not isinstance(value, np.ndarray):
            raise MpcError(f"PlanInputs.{name}: expected a numpy array of shape {shape}, got {type(value).__name__}")
        if value.shape != shape:
            raise MpcError(f"PlanInputs.{name}: shape {value.shape}, expected {shape}")
        if name == "present":
            if value.dtype != np.bool_:
                raise MpcError(f"PlanInputs.present: dtype {value.dtype}, expected bool")
            continue
        if name == "departure_step":
            if not np.issubdtype(value.dtype, np.integer):
                raise MpcError(f"PlanInputs.departure_step: dtype {value.dtype}, expected an integer type")
            if np.any(value < 0):
                raise MpcError("PlanInputs.departure_step: negative step index")
            continue
        if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
            raise MpcError(f"PlanInputs.{name}: dtype {value.dtype} is not real")
        bad = np.isnan(value) if name in ("node_limit_a", "node_power_limit_w") else ~np.isfinite(value)
        if np.any(bad):
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise MpcError(f"PlanInputs.{name}: non-finite value {float(value[where])} at index {where}")
    nonneg = (
        "session_max_power_w",
        "energy_wh",
        "min_energy_wh",
        "load_w",
        "pv_w",
        "node_limit_a",
        "node_power_limit_w",
    )
    for name in nonneg:
        value = getattr(inputs, name)
        if value is not None and np.any(value < 0):
            where = tuple(int(i) for i in np.argwhere(value < 0)[0])
            raise MpcError(f"PlanInputs.{name}: negative value {float(value[where])} at index {where}")
    if np.any((inputs.priority < 0) | (inputs.priority > MAX_PRIORITY)):
        raise MpcError(f"PlanInputs.priority: weights must be in 0..{MAX_PRIORITY:g}")
    for name in ("battery_soc_pct", "battery_end_soc_pct"):
        value = getattr(inputs, name)
        if value is not None and np.any((value < 0) | (value > 100)):
            raise MpcError(f"PlanInputs.{name}: SoC must be in 0..100 %")
    if np.any(inputs.price_export_eur_kwh > inputs.price_import_eur_kwh + 1e-12):
        t = int(np.argmax(inputs.price_export_eur_kwh - inputs.price_import_eur_kwh))
        raise MpcError(
            f"PlanInputs.price_export_eur_kwh: exceeds the import price at step {t} "
            "(import and export at once would pay; not modelled)"
        )
    for name in ("peak_tariff_eur_kw", "peak_reached_w", "peak_reserve_w", "peak_reserve_eur_kw"):
        value = float(getattr(inputs, name))
        if not (math.isfinite(value) and value >= 0.0):
            raise MpcError(f"PlanInputs.{name}: {value} must be finite and >= 0")
    if inputs.peak_reserve_eur_kw > inputs.peak_tariff_eur_kw:
        raise MpcError(
            f"PlanInputs.peak_reserve_eur_kw: {inputs.peak_reserve_eur_kw} exceeds the peak tariff "
            f"{inputs.peak_tariff_eur_kw} (the reserve lies below the peak reached)"
        )


class _Osqp:
    """OSQP on cvxpy's compiled data, with a presolve and a time-shifted warm start.

    cvxpy hands OSQP every variable bound as its own one-sided row (``p >= 0`` and ``p <= u`` are two
    rows). Rows with a single entry are merged here into one two-sided row per variable, which OSQP
    treats as a box: fewer rows and a markedly more accurate solution at the same tolerance. ``P`` and
    ``A`` are fixed (the parameters only move ``q``, ``l``, ``u``), so OSQP factorises once and each
    re-solve is ``update`` + ``warm_start`` + ``solve``.
    """

    def __init__(self, owner: ChargePlanProblem, data: dict[str, Any], settings: OsqpSettings) -> None:
        import osqp

        a_full = sp.csr_array(sp.vstack([data["A"], data["F"]], format="csr"))
        self.shape = (a_full.shape, data["P"].nnz, a_full.nnz)
        n = a_full.shape[1]
        b_n = owner.n_blocks
        self._layout(owner, data, n)
        # Presolve 1: one-entry rows -> one box row per variable.
        single = np.diff(a_full.indptr) == 1
        self.keep = np.flatnonzero(~single)
        first = a_full.indptr[:-1][single]
        cols = a_full.indices[first]
        self.single = np.flatnonzero(single)
        self.coef = a_full.data[first]
        self.order = np.argsort(cols, kind="stable")
        self.bounded, self.starts = np.unique(cols[self.order], return_index=True)
        # Presolve 2: variables in units of their own size (kW of the connector, limit of the node, ...)
        # and every row scaled to a largest entry of 1. OSQP's tolerances are relative to the largest
        # row and cost entry (infinity norms): unscaled, a 2 MW connection row would let a 10 kWh
        # session's energy row be off by ~1 kWh at eps 1e-3.
        col = self.col_scale
        kept = sp.csr_array(a_full[self.keep] @ sp.diags_array(col))
        row = np.maximum(np.abs(kept).max(axis=1).toarray().ravel(), 1e-12)
        # A slot's energy row sums its power over the whole horizon: scaled to a largest entry of 1 its
        # value reaches the number of blocks (~30 for a long stay), and OSQP's relative tolerance
        # (eps_rel x the largest row value) let every other row be off by that much more. On the tight
        # plaza that was a 0.1 kW import over the peak in one step, billed at 3 EUR/kW (0.6 % of the
        # objective). Rows spanning many blocks are scaled to an entry sum of 1 (value <= 1 at full
        # power); OSQP's own Ruiz scaling restores their weight in the iteration itself.
        entry_block = self.col_block[kept.indices]
        entry_row = np.repeat(np.arange(kept.shape[0]), np.diff(kept.indptr))
        timed = entry_block >= 0
        span = np.zeros(kept.shape[0], dtype=np.int64)
        np.add.at(span, np.unique(entry_row[timed] * b_n + entry_block[timed]) // b_n, 1)
        wide = span > 2
        row[wide] = np.abs(kept[wide]).sum(axis=1).ravel()
        self.row_scale = 1.0 / row
        # Rows with the grid import get a finer tolerance: the new peak is a max over the steps,
        # so a tolerance-sized excess in any one step would be billed at the full peak tariff.
        tight = np.zeros(n)
        for var, c0 in self.vars:
            if var.id in owner._tight:
                tight[c0 : c0 + var.size] = 1.0
        self.row_scale[np.asarray(abs(kept) @ tight).ravel() > 0] *= TIGHT_ROW_WEIGHT
        a_mat = sp.vstack(
            [sp.diags_array(self.row_scale) @ kept, sp.identity(n, format="csr")[self.bounded]], format="csc"
        )
        p_mat = sp.csc_matrix(sp.triu(sp.diags_array(col) @ data["P"] @ sp.diags_array(col), format="csc"))
        l_vec, u_vec = self._bounds(data)
        self.settings = settings
        self.solver = osqp.OSQP()
        self.solver.setup(
            p_mat, col * data["q"], sp.csc_matrix(a_mat), l_vec, u_vec, verbose=False, **settings.as_dict()
        )
        self.x: FloatArray | None = None
        self.y: FloatArray | None = None
        self._rows(sp.csr_array(a_mat))

    def _bounds(self, data: dict[str, Any]) -> tuple[FloatArray, FloatArray]:
        b_eq, g = data["b"], data["G"]
        lower = np.concatenate((b_eq, np.full(g.shape[0], -np.inf)))
        upper = np.concatenate((b_eq, g))
        lo = lower[self.single] / self.coef
        hi = upper[self.single] / self.coef
        neg = self.coef < 0
        lo, hi = np.where(neg, hi, lo)[self.order], np.where(neg, lo, hi)[self.order]
        col = self.col_scale[self.bounded]
        box_lo = np.maximum.reduceat(lo, self.starts) / col
        box_hi = np.minimum.reduceat(hi, self.starts) / col
        return (
            np.concatenate((lower[self.keep] * self.row_scale, box_lo)),
            np.concatenate((upper[self.keep] * self.row_scale, np.maximum(box_hi, box_lo))),
        )

    def _layout(self, owner: ChargePlanProblem, data: dict[str, Any], n: int) -> None:
        """Where each variable sits in x, its scale, and its block (-1: not indexed by time)."""
        prog = data[cp.settings.PARAM_PROB]
        b_n = owner.n_blocks
        scales = owner._column_scales()
        self.col_scale = np.ones(n)
        self.vars: list[tuple[cp.Variable, int]] = []
        self.col_of: dict[int, int] = {}
        col_block = np.full(n, -1, dtype=np.int64)
        col_group = np.arange(n, dtype=np.int64)  # columns of one entity over time share a group id
        for var in owner.problem.variables():
            if var.id not in prog.var_id_to_col:
                raise MpcError(f"internal: variable {var.name()} is not in cvxpy's compiled problem")
            col = int(prog.var_id_to_col[var.id])
            self.vars.append((var, col))
            self.col_of[var.id] = col
            self.col_scale[col : col + var.size] = scales.get(var.id, 1.0)
            if var.id in owner._timed:
                idx = np.arange(var.size)
                col_block[col + idx] = idx % b_n
                col_group[col + idx] = col + idx - idx % b_n
        if sum(v.size for v, _ in self.vars) != n:
            raise MpcError("internal: cvxpy added variables to the problem; the warm-start layout does not hold")
        self.col_block = col_block
        self.col_group = col_group
        self.block_of_t = owner._b_of_t
        self.block_start = owner.block_start

    def _rows(self, a_mat: sp.csr_array) -> None:
        """Key every row by its pattern, so the same row one block later can be found.

        A row's pattern is the set of (entity, block offset from the row's first block) of its
        entries; rows spanning more than two blocks (a slot's energy over the horizon) or none are
        not shifted. Patterns are hashed (random 64-bit weights, wrapping sums) and looked up sorted.
        """
        n_rows = a_mat.shape[0]
        entry_row = np.repeat(np.arange(n_rows), np.diff(a_mat.indptr))
        cols = a_mat.indices
        blocks = self.col_block[cols]
        timed = blocks >= 0
        big = np.iinfo(np.int64).max
        starts = a_mat.indptr[:-1]
        nonempty = np.diff(a_mat.indptr) > 0
        t_lo = np.full(n_rows, big)
        t_hi = np.full(n_rows, -1)
        t_lo[nonempty] = np.minimum.reduceat(np.where(timed, blocks, big), starts[nonempty])
        t_hi[nonempty] = np.maximum.reduceat(np.where(timed, blocks, -1), starts[nonempty])
        shiftable = (t_hi >= 0) & (t_hi - t_lo <= 1)
        t0 = np.where(shiftable, t_lo, -1)
        rel = np.where(timed & shiftable[entry_row], blocks - t0[entry_row], -1)
        rng = np.random.default_rng(20240611)
        weight = rng.integers(1, 2**62, size=self.col_group.shape[0], dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):
            term = weight[self.col_group[cols]] * (rel + 3).astype(np.uint64)
            pattern = np.zeros(n_rows, dtype=np.uint64)
            pattern[nonempty] = np.add.reduceat(term, starts[nonempty])
        self.row_t0 = t0
        self.row_pattern = pattern
        self.time_weight = rng.integers(1, 2**62, dtype=np.uint64) | np.uint64(1)
        keys = self._key(pattern, t0)
        self.sorted_rows = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.sorted_rows]
        self._shift_cache: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        self.n_rows = n_rows

    def _key(self, pattern: npt.NDArray[np.uint64], t0: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            return pattern + (t0 + 2).astype(np.uint64) * self.time_weight

    def _find_rows(self, pattern: npt.NDArray[np.uint64], t0: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows with this pattern starting in this block (-1 where there is none)."""
        keys = self._key(pattern, t0)
        at = np.minimum(np.searchsorted(self.sorted_keys, keys), self.sorted_keys.shape[0] - 1)
        return np.where(self.sorted_keys[at] == keys, self.sorted_rows[at], -1)

    def _shift_maps(self, shift: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Source index in the previous x and y for every entry of the new ones."""
        cached = self._shift_cache.get(shift)
        if cached is not None:
            return cached
        last_t = len(self.block_of_t) - 1
        src_block = self.block_of_t[np.minimum(self.block_start + shift, last_t)]
        timed = self.col_block >= 0
        x_src = np.arange(self.col_block.shape[0], dtype=np.int64)
        # Columns of one entity are consecutive in time, so the group id + block is the column.
        x_src[timed] = self.col_group[timed] + src_block[self.col_block[timed]]
        y_src = np.arange(self.n_rows, dtype=np.int64)
        moving = np.flatnonzero(self.row_t0 >= 0)
        target = src_block[self.row_t0[moving]]
        found = self._find_rows(self.row_pattern[moving], target)
        y_src[moving] = np.where(found >= 0, found, moving)
        self._shift_cache[shift] = (x_src, y_src)
        return x_src, y_src

    def solve(self, data: dict[str, Any], *, warm: bool, shift: int) -> Any:
        if (
            (data["A"].shape[0] + data["F"].shape[0], data["A"].shape[1]),
            data["P"].nnz,
            data["A"].nnz + data["F"].nnz,
        ) != self.shape:
            raise MpcError("internal: the problem's matrices changed between solves (not DPP-constant)")
        l_vec, u_vec = self._bounds(data)
        self.solver.update(q=self.col_scale * data["q"], l=l_vec, u=u_vec)
        if warm and self.x is not None and self.y is not None:
            if shift:
                x_src, y_src = self._shift_maps(shift)
                self.solver.warm_start(x=self.x[x_src], y=self.y[y_src])
            else:
                self.solver.warm_start(x=self.x, y=self.y)
        else:
            self.solver.warm_start(x=np.zeros(self.col_block.shape[0]), y=np.zeros(self.n_rows))
        result = self.solver.solve(raise_error=False)
        self.x, self.y = np.array(result.x), np.array(result.y)
        return result

    def add_cost(self, data: dict[str, Any], var: cp.Variable, cost_per_entry: FloatArray) -> dict[str, Any]:
        """``data`` with ``cost_per_entry`` added to the linear cost of ``var``'s columns."""
        q = np.array(data["q"], dtype=np.float64)
        col = self.col_of[var.id]
        q[col : col + var.size] += cost_per_entry
        return {**data, "q": q}

    def solve_again(self, data: dict[str, Any], alpha: float) -> Any:
        """Another attempt at the same data: from zero and the starting rho, with this ``alpha``; the
        configured alpha is restored afterwards."""
        self.solver.update_settings(alpha=alpha, rho=self.settings.rho)
        try:
            return self.solve(data, warm=False, shift=0)
        finally:
            self.solver.update_settings(alpha=self.settings.alpha)

    def forget(self) -> None:
        self.x = self.y = None

    def split(self, x_scaled: FloatArray) -> Iterator[tuple[cp.Variable, FloatArray]]:
        x = x_scaled * self.col_scale
        for var, col in self.vars:
            yield var, np.reshape(x[col : col + var.size], var.shape, order="F")
