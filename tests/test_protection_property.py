"""Property: whatever the tree, rotations, uncontrolled loads and demands, no node is ever pushed over
its limit on any phase while its measurements are fresh, and every setpoint is 0 or >= the minimum."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import allocation
from controller.allocation import Demand, allocate
from controller.config import validate_config
from controller.image import ConnectorReading, ContactReading, InputSnapshot, MeterReading, freeze
from controller.program import ControlProgram
from controller.protection import per_phase
from controller.site import KEYS_PER_NODE, POWER, Site, compile_site

ROTATIONS = ["L1L2L3", "L2L3L1", "L3L1L2", "L1L3L2", "L1", "L2", "L3"]
V = 230.0


@dataclass(frozen=True)
class Case:
    config: dict[str, Any]
    building_a: dict[str, tuple[float, float, float]]
    """True uncontrolled load attached directly at a node, per grid phase."""
    ev_phases: dict[str, int]
    ev_max_a: dict[str, float]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    levels = draw(st.integers(1, 5))
    counter = [0]
    meters: list[dict[str, str]] = []
    building: dict[str, tuple[float, float, float]] = {}
    ev_phases: dict[str, int] = {}
    ev_max: dict[str, float] = {}

    def node(depth: int) -> dict[str, Any]:
        counter[0] += 1
        node_id = f"n{counter[0]}"
        out: dict[str, Any] = {"id": node_id, "limit_a": draw(st.floats(6.0, 120.0))}
        if draw(st.booleans()):
            out["power_limit_kw"] = draw(st.floats(4.0, 80.0))
        if draw(st.booleans()) or depth == 1:
            meters.append({"id": f"m-{node_id}"})
            out["meter"] = f"m-{node_id}"
            if draw(st.booleans()):
                building[node_id] = (
                    draw(st.floats(0.0, 60.0)),
                    draw(st.floats(0.0, 60.0)),
                    draw(st.floats(0.0, 60.0)),
                )
        if depth == levels or (depth > 1 and draw(st.integers(0, 3)) == 0):
            connectors = []
            for _ in range(draw(st.integers(1, 2))):
                counter[0] += 1
                cid = f"c{counter[0]}"
                rotation = draw(st.sampled_from(ROTATIONS))
                connectors.append({"id": cid, "phases": rotation, "max_current_a": draw(st.floats(6.0, 63.0))})
                ev_phases[cid] = draw(st.sampled_from([1, 3]))
                ev_max[cid] = draw(st.floats(0.0, 63.0))
            out["connectors"] = connectors
        else:
            out["children"] = [node(depth + 1) for _ in range(draw(st.integers(1, 3)))]
        return out

    tree = node(1)
    config = {
        "site": {"id": "prop"},
        "margins": {"current_a": draw(st.sampled_from([0.0, 1.0])), "power_kw": 0.0},
        "meters": meters,
        "fire_panel": {"id": "fire"},
        "tree": tree,
    }
    return Case(config, building, ev_phases, ev_max)


def true_loads(site: Site, case: Case, draws: dict[str, tuple[float, float, float]]) -> list[list[float]]:
    """Physical per-phase current at every node: building loads plus EV draws below it."""
    loads = [[0.0, 0.0, 0.0] for _ in site.nodes]
    for node in site.nodes:
        extra = case.building_a.get(node.id)
        if extra is not None:
            for n in node.path:
                for p in range(3):
                    loads[n][p] += extra[p]
    for conn in site.connectors:
        grid = per_phase(conn.rotation, draws[conn.id])
        for n in conn.path:
            for p in range(3):
                loads[n][p] += grid[p]
    return loads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cycles=st.integers(1, 6))
def test_no_node_exceeds_its_limit_on_any_phase_when_measurements_are_fresh(case: Case, cycles: int) -> None:
    site = compile_site(validate_config(case.config, "prop").config)
    program = ControlProgram(site)
    snapshot = InputSnapshot()
    ids = tuple(c.id for c in site.connectors)
    draws = {cid: (0.0, 0.0, 0.0) for cid in ids}
    t = 1.8e9
    for _ in range(cycles):
        t += 1.0
        loads = true_loads(site, case, draws)
        for node in site.nodes:
            if node.meter is not None:
                snapshot.meters[node.meter] = MeterReading(
                    (loads[node.index][0], loads[node.index][1], loads[node.index][2]), sum(loads[node.index]) * V, t
                )
        for conn in site.connectors:
            state = "C2" if max(draws[conn.id]) > 0 else "B2"
            snapshot.connectors[conn.id] = ConnectorReading(state, draws[conn.id], 0.0, 0.0, None, t)
        snapshot.contacts["fire"] = ContactReading(True, t)
        output = program.step(freeze(snapshot, t, 3.0, ids, ()))
        setpoints = {s.connector: s.current_a for s in output.setpoints}
        for conn in site.connectors:
            value = setpoints[conn.id]
            assert value == 0.0 or value >= conn.min_current_a - 1e-9, (conn.id, value)
        # The EVs follow at once, on their own phases, up to what they can take.
        worst = {}
        for conn in site.connectors:
            draw_a = min(setpoints[conn.id], case.ev_max_a[conn.id])
            phases = min(case.ev_phases[conn.id], len(conn.rotation))
            worst[conn.id] = tuple(setpoints[conn.id] if k < phases else 0.0 for k in range(3))
            draws[conn.id] = tuple(draw_a if k < phases else 0.0 for k in range(3))  # type: ignore[assignment]
        building_only = true_loads(site, case, {cid: (0.0, 0.0, 0.0) for cid in ids})
        # Worst case: every EV draws its full setpoint on every phase it has.
        charging = true_loads(site, Case(case.config, {}, case.ev_phases, case.ev_max_a), worst)  # type: ignore[arg-type]
        margin = site.config.margins.current_a
        for node in site.nodes:
            limit = output.limits[node.index].current_a
            for p in range(3):
                room = max(0.0, limit - margin - building_only[node.index][p])
                assert charging[node.index][p] <= room + 1e-6, (node.id, p, charging[node.index][p], room)
            if node.power_limit_w is not None:
                power_room = max(0.0, node.power_limit_w - sum(building_only[node.index]) * V)
                assert sum(charging[node.index]) * V <= power_room + 1e-3, (node.id, "power")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), data=st.data())
def test_allocation_is_feasible_and_wastes_no_capacity(case: Case, data: st.DataObject) -> None:
    """The allocator alone: within every constraint, 0 or >= min, and a session below its demand
    is held there by a saturated node-phase or node power on its path (capacity is not left idle)."""
    site = compile_site(validate_config(case.config, "prop").config)
    rem = [0.0] * (len(site.nodes) * KEYS_PER_NODE)
    for node in site.nodes:
        base = node.index * KEYS_PER_NODE
        for p in range(3):
            rem[base + p] = data.draw(st.floats(0.0, 120.0))
        rem[base + POWER] = data.draw(st.floats(0.0, 60_000.0)) if node.power_limit_w is not None else math.inf
    demands = []
    for conn in site.connectors:
        phases = conn.rotation if data.draw(st.booleans()) else conn.rotation[:1]
        demands.append(
            Demand(
                index=conn.index,
                lo_a=conn.min_current_a,
                hi_a=data.draw(st.floats(conn.min_current_a, 63.0)),
                phases=phases,
                rank=data.draw(st.integers(0, 3)),
                laxity_s=data.draw(st.floats(-1000.0, 1e6)),
                running=data.draw(st.booleans()),
            )
        )
    start = list(rem)
    result = allocate(site, list(rem), demands)
    used = [0.0] * len(rem)
    for d in demands:
        x = result[d.index]
        assert x == 0.0 or d.lo_a - 1e-9 <= x <= d.hi_a + 1e-9
        for n in site.connectors[d.index].path:
            for p in d.phases:
                used[n * KEYS_PER_NODE + p] += x
            used[n * KEYS_PER_NODE + POWER] += x * V * len(d.phases)
    for k, cap in enumerate(start):
        assert used[k] <= cap + 1e-6 * max(1.0, cap) if cap != math.inf else True, (k, used[k], cap)
    for d in demands:
        x = result[d.index]
        if x <= 0.0 or x >= d.hi_a - 1e-6:
            continue
        keys = [n * KEYS_PER_NODE + p for n in site.connectors[d.index].path for p in d.phases]
        keys += [n * KEYS_PER_NODE + POWER for n in site.connectors[d.index].path]
        slack = min((start[k] - used[k]) / (V * len(d.phases) if k % KEYS_PER_NODE == POWER else 1.0) for k in keys)
        assert slack <= 1e-6, (d.index, x, d.hi_a, slack)


def test_the_compiled_core_is_built() -> None:
    """CI machines have a C compiler: the fast core must be there (PLAZA_EMS_PURE_PYTHON turns it off)."""
    if os.environ.get("PLAZA_EMS_PURE_PYTHON"):
        pytest.skip("pure Python requested")
    assert allocation._NATIVE is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), data=st.data())
def test_compiled_core_gives_the_same_allocation_as_the_python_reference(case: Case, data: st.DataObject) -> None:
    native = allocation._NATIVE
    if native is None:
        pytest.skip("compiled core not built")
    site = compile_site(validate_config(case.config, "prop").config)
    rem = [0.0] * (len(site.nodes) * KEYS_PER_NODE)
    for node in site.nodes:
        base = node.index * KEYS_PER_NODE
        for p in range(3):
            rem[base + p] = data.draw(st.floats(-5.0, 120.0))
        rem[base + POWER] = data.draw(st.floats(0.0, 60_000.0)) if node.power_limit_w is not None else math.inf
    order = sorted(
        (
            Demand(
                index=conn.index,
                lo_a=conn.min_current_a,
                hi_a=data.draw(st.floats(0.0, 63.0)),
                phases=conn.rotation if data.draw(st.booleans()) else conn.rotation[:1],
                rank=data.draw(st.integers(0, 3)),
                laxity_s=data.draw(st.floats(-1000.0, 1e6)),
                running=data.draw(st.booleans()),
                start_margin_a=data.draw(st.sampled_from([0.0, 1.0])),
            )
            for conn in site.connectors
        ),
        key=lambda d: (-d.rank, not d.running, d.laxity_s, d.index),
    )
    rem_py, rem_c = list(rem), list(rem)
    expected = allocation.allocate_python(site, rem_py, order)
    got = allocation._allocate_native(native, site, rem_c, order)
    assert got.keys() == expected.keys()
    for index, value in expected.items():
        assert got[index] == pytest.approx(value, abs=1e-6), index
    for a, b in zip(rem_c, rem_py, strict=True):
        assert a == pytest.approx(b, abs=1e-6) or (math.isinf(a) and math.isinf(b))
