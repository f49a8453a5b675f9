"""The optimiser's pure parts: snapshot → problem and inputs, the plan it answers with, the dedupe queue."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.config import load_config
from controller.limits import RemoteCapacityBlock, RemoteDsoLimit, RemoteLimits
from controller.site import Site, compile_site
from drivers.mqtt.messages import (
    Plan,
    SiteIds,
    SnapshotSession,
    Topics,
    encode,
    parse_inbound,
    site_structure,
    snapshot_message,
    structure_hash,
    validator,
)
from mpc.model import MpcError, planning_site_from
from mpc.problem import ChargePlanProblem
from mpc.service import OptimizerConfigError, SnapshotQueue, load_optimizer_config
from mpc.snapshot import (
    PlanSettings,
    Refused,
    Snapshot,
    parse_snapshot,
    plan_inputs,
    plan_message,
    planning_site,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_100.0
"""2023-11-14T22:15:00Z: on the 15 min grid."""
SETTINGS = PlanSettings(horizon_h=4.0, step_min=15)


def site_of(name: str) -> Site:
    return compile_site(load_config(str(ROOT / "examples" / "sites" / f"{name}.site.yaml")).config)


def snapshot_of(
    site: Site,
    *,
    ts: float = T0 + 120.0,
    sessions: dict[str, SnapshotSession] | None = None,
    uncontrolled_w: dict[str, float | None] | None = None,
    dso_pct: float = 100.0,
    remote: RemoteLimits | None = None,
    snapshot_id: str | None = None,
    controller: str = "main",
) -> dict[str, Any]:
    structure = site_structure(site)
    metered = [n["id"] for n in structure["nodes"] if n["metered"]]
    return snapshot_message(
        Topics(site.id, controller),
        snapshot_id=snapshot_id or uuid.uuid4().hex,
        ts=ts,
        reason="interval",
        structure=structure,
        structure_id=structure_hash(site.id, structure),
        sessions={c.id: (sessions or {}).get(c.id) for c in site.connectors},
        battery_soc_pct={b.id: 50.0 for b in site.batteries},
        uncontrolled_w=uncontrolled_w if uncontrolled_w is not None else dict.fromkeys(metered, 2000.0),
        peak_import_w=30_000.0,
        dso_pct=dso_pct,
        remote_limits=remote,
        prices=None,
    )


def parsed(message: dict[str, Any]) -> Snapshot:
    topic = f"plaza/v1/{message['site']}/{message['controller']}/snapshot"
    result = parse_snapshot(topic, encode(message), max_payload_bytes=1 << 22)
    assert isinstance(result, Snapshot), result
    return result


@pytest.mark.parametrize("name", ["small", "plaza-40", "hil-mixed", "hil-plaza-40"])
def test_the_snapshot_structure_is_the_planning_site_of_the_compiled_site(name: str) -> None:
    site = site_of(name)
    message = snapshot_of(site)
    validator("snapshot").validate(message)
    # pv_peak_w and building_peak_w only scale synthetic forecasts; the snapshot carries measurements.
    assert planning_site(parsed(message)) == replace(planning_site_from(site), pv_peak_w=(), building_peak_w=())


def test_sessions_become_presence_energy_and_priority_on_the_step_grid() -> None:
    site = site_of("small")
    sessions = {
        "cp1-1": SnapshotSession(
            started_ts=T0 - 600, energy_wh=4000, energy_target_wh=10_000, departure_ts=T0 + 3 * 900 + 100, priority=3
        ),
        # Nothing known: the default energy from the default dwell after its start.
        "cp2-1": SnapshotSession(started_ts=T0, energy_wh=500, energy_target_wh=None, departure_ts=None, priority=1),
        # Its departure has passed but it is still plugged in: the step in force is still planned.
        "dc1-1": SnapshotSession(
            started_ts=T0 - 3600, energy_wh=0, energy_target_wh=5000, departure_ts=T0 - 60, priority=0
        ),
    }
    snapshot = parsed(snapshot_of(site, sessions=sessions))
    plan_site = planning_site(snapshot)
    inputs = plan_inputs(snapshot, plan_site, SETTINGS, None)
    ids = [c.id for c in plan_site.connectors]
    assert inputs.start.timestamp() == T0  # created 2 min into the step: valid_from is its start
    assert inputs.n_steps == 16
    cp11, cp21, dc = ids.index("cp1-1"), ids.index("cp2-1"), ids.index("dc1-1")
    assert inputs.present[cp11].tolist() == [True] * 3 + [False] * 13
    assert inputs.energy_wh[cp11] == 6000.0
    assert inputs.priority[cp11] == 3.0
    assert inputs.present[cp21].sum() == 16  # 4 h dwell from T0 covers the whole horizon
    assert inputs.energy_wh[cp21] == SETTINGS.default_energy_wh - 500
    assert inputs.present[dc].tolist() == [True] + [False] * 15
    assert not inputs.present[ids.index("cp1-2")].any()
    assert inputs.peak_reached_w == 30_000.0
    assert inputs.peak_reserve_w == 0.0  # SETTINGS hold back no reserve
    np.testing.assert_allclose(inputs.load_w, 2000.0)
    reserved = replace(SETTINGS, peak_tariff_eur_kw=3.0, peak_reserve_share=0.2)
    inputs = plan_inputs(snapshot, plan_site, reserved, None)
    assert inputs.peak_reserve_w == pytest.approx(6_000.0)
    assert inputs.peak_reserve_eur_kw == 3.0  # default: the tariff
    cheap = replace(reserved, peak_reserve_eur_kw=0.5)
    assert plan_inputs(snapshot, plan_site, cheap, None).peak_reserve_eur_kw == 0.5


def test_dso_stage_and_remote_limits_become_limit_overrides() -> None:
    site = site_of("small")
    remote = RemoteLimits(
        dso=(RemoteDsoLimit("cp1", 50.0, T0 + 900, T0 + 1800),),
        capacity=(RemoteCapacityBlock("grid", T0, T0 + 900, 50_000.0), RemoteCapacityBlock("cp2", T0, T0 + 900, 6900)),
    )
    snapshot = parsed(snapshot_of(site, dso_pct=60.0, remote=remote))
    plan_site = planning_site(snapshot)
    inputs = plan_inputs(snapshot, plan_site, SETTINGS, None)
    names = [n.id for n in plan_site.nodes]
    assert inputs.node_limit_a is not None
    assert inputs.node_power_limit_w is not None
    grid, cp1, cp2 = names.index("grid"), names.index("cp1"), names.index("cp2")
    # small has no DSO input: the stage acts on the root, current and contract alike, for the whole horizon.
    assert inputs.node_limit_a[grid, 5] == pytest.approx(plan_site.nodes[grid].limit_a * 0.6)
    assert inputs.node_power_limit_w[grid, 0] == 50_000.0
    assert inputs.node_power_limit_w[grid, 5] == pytest.approx(plan_site.nodes[grid].power_limit_w * 0.6)  # type: ignore[operator]
    assert inputs.node_limit_a[cp1].tolist()[:3] == [np.inf, plan_site.nodes[cp1].limit_a * 0.5, np.inf]
    # cp2 has no power constraint in the problem: its block becomes a balanced current limit.
    assert inputs.node_limit_a[cp2, 0] == pytest.approx(6900 / (3 * 230.0))
    assert inputs.node_limit_a[cp2, 1] == np.inf


def test_uncontrolled_load_is_split_between_nested_metered_nodes() -> None:
    site = site_of("plaza-40")
    structure = site_structure(site)
    metered = [n["id"] for n in structure["nodes"] if n["metered"]]
    assert len(metered) >= 1
    values: dict[str, float | None] = dict.fromkeys(metered, 1000.0)
    snapshot = parsed(snapshot_of(site, uncontrolled_w=values))
    plan_site = planning_site(snapshot)
    inputs = plan_inputs(snapshot, plan_site, SETTINGS, None)
    # Each metered node reports its subtree; the problem adds each one's own part up the tree, so the
    # metered nodes' parts add up to what the topmost of them reported.
    assert inputs.load_w[:, 0].sum() == pytest.approx(1000.0 * _topmost(plan_site))
    assert (inputs.load_w >= 0).all()


def _topmost(plan_site: Any) -> int:
    """Metered nodes with no metered ancestor."""
    metered = set(plan_site.metered)
    return sum(1 for m in metered if not set(plan_site.node_path(m)[:-1]) & metered)


def test_the_plan_answers_the_snapshot_and_the_controller_accepts_it() -> None:
    site = site_of("small")
    sessions = {
        "cp1-1": SnapshotSession(
            started_ts=T0, energy_wh=0, energy_target_wh=15_000, departure_ts=T0 + 3600, priority=1
        ),
    }
    snapshot = parsed(snapshot_of(site, sessions=sessions))
    plan_site = planning_site(snapshot)
    inputs = plan_inputs(snapshot, plan_site, SETTINGS, None)
    solution = ChargePlanProblem(plan_site, horizon_h=4.0, step_min=15).solve(inputs)
    message = plan_message(snapshot, inputs, solution, plan_id="p-1", created_ts=T0 + 130)
    validator("plan").validate(message)
    plan = parse_inbound(
        f"plaza/v1/{site.id}/main/plan",
        encode(message),
        topics=Topics(site.id, "main"),
        site=SiteIds.from_config(site.config),
    )
    assert isinstance(plan, Plan)
    assert plan.snapshot_id == snapshot.id
    assert plan.valid_from_ts == T0
    assert plan.steps == 16
    cp11 = plan.connectors["cp1-1"]
    assert all(a is None for a in cp11[4:])
    assert all(a is not None for a in cp11[:4])
    # What it wants by its departure, no more (per-phase A x 3 phases x 230 V x 1/4 h per step).
    assert sum(a or 0.0 for a in cp11) * 3 * 230.0 * 0.25 == pytest.approx(15_000.0, rel=0.01)
    assert plan.connectors["cp2-1"] == (None,) * 16


def _raw(message: Any) -> bytes:
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: b"{not json", "malformed JSON"),
        (lambda m: _raw([1, 2]), "a JSON object expected"),
        (lambda m: _raw(m | {"schema": "plaza/v2/snapshot"}), "unsupported schema version"),
        (lambda m: _raw(m | {"schema": "plaza/v1/plan"}), "wrong or missing schema"),
        (lambda m: _raw(m | {"created": "yesterday"}), "schema-invalid at created"),
        (lambda m: _raw(m | {"site": "elsewhere"}), "on the topic of small/main"),
        (lambda m: _raw(m | {"structure_hash": "0" * 32}), "structure_hash does not match"),
        (lambda m: _raw(m | {"created": "2023-13-01T00:00:00Z"}), "not a valid date-time"),
    ],
)
def test_a_bad_snapshot_is_refused_with_its_reason(mutate: Any, reason: str) -> None:
    message = snapshot_of(site_of("small"), snapshot_id="s-1")
    result = parse_snapshot("plaza/v1/small/main/snapshot", mutate(message), max_payload_bytes=1 << 22)
    assert isinstance(result, Refused)
    assert reason in result.reason
    assert (result.site, result.controller) == ("small", "main")


def test_a_structure_that_makes_no_sense_raises_naming_the_field() -> None:
    message = snapshot_of(site_of("small"))
    structure = message["structure"]
    structure["connectors"][0]["node"] = "nowhere"
    message["structure_hash"] = structure_hash("small", structure)
    with pytest.raises(MpcError, match=r"structure.connectors\[0\].node: unknown node 'nowhere'"):
        planning_site(parsed(message))
    message = snapshot_of(site_of("small"))
    message["structure"]["nodes"][1]["limit_a"] = 0
    message["structure_hash"] = structure_hash("small", message["structure"])
    with pytest.raises(MpcError, match=r"limit_a 0\.0 is not positive"):
        planning_site(parsed(message))


def test_a_payload_too_large_is_refused_before_parsing() -> None:
    result = parse_snapshot("plaza/v1/s/main/snapshot", b"x" * 2000, max_payload_bytes=1024)
    assert isinstance(result, Refused)
    assert result.reason.startswith("payload too large")
    assert parse_snapshot("plaza/v1/s/main/plan", b"{}", max_payload_bytes=1024) is None


# -- the queue ---------------------------------------------------------------------------------------


def snap(snapshot_id: str, created_ts: float, site: str = "a") -> Snapshot:
    return Snapshot(
        id=snapshot_id,
        site=site,
        controller="main",
        created_ts=created_ts,
        reason="interval",
        structure_hash="0" * 32,
        structure={},
        state={},
    )


def test_the_queue_solves_each_snapshot_once() -> None:
    queue = SnapshotQueue(max_age_s=60, memory=100)
    assert queue.offer(snap("s1", 100), 101) == []
    assert queue.offer(snap("s1", 100), 101) == [(snap("s1", 100), "duplicate")]
    taken, dropped = queue.take(102)
    assert taken == snap("s1", 100)
    assert dropped == []
    # Redelivered after it was taken: not solved twice.
    assert queue.offer(snap("s1", 100), 103)[0][1] == "duplicate"
    assert queue.take(103) == (None, [])
    assert queue.stats.duplicates == 2


def test_a_snapshot_another_optimiser_answered_is_never_solved() -> None:
    queue = SnapshotQueue(max_age_s=60, memory=100)
    assert queue.answered("s2") is None
    assert queue.offer(snap("s2", 100), 101)[0][1] == "duplicate"
    queue.offer(snap("s3", 100), 101)
    assert queue.answered("s3") == snap("s3", 100)
    assert queue.take(102) == (None, [])
    assert queue.stats.duplicates == 2


def test_a_newer_snapshot_of_the_same_controller_supersedes_the_one_waiting() -> None:
    queue = SnapshotQueue(max_age_s=60, memory=100)
    queue.offer(snap("a1", 100), 100)
    queue.offer(snap("b1", 100, site="b"), 100)
    assert queue.offer(snap("a2", 110), 110) == [(snap("a1", 100), "superseded")]
    # An older one arriving late is the one dropped.
    assert queue.offer(snap("a0", 90), 110) == [(snap("a0", 90), "superseded")]
    assert queue.stats.superseded == 2
    # Site a keeps its place ahead of b.
    assert queue.take(111)[0] == snap("a2", 110)
    assert queue.take(111)[0] == snap("b1", 100, site="b")


def test_snapshots_too_old_are_dropped_on_arrival_and_while_waiting() -> None:
    queue = SnapshotQueue(max_age_s=60, memory=100)
    assert queue.offer(snap("old", 100), 161)[0][1] == "too_old"
    queue.offer(snap("s", 150), 151)
    assert queue.take(211) == (None, [(snap("s", 150), "too_old")])
    assert queue.stats.too_old == 2


def test_the_queue_remembers_a_bounded_number_of_ids() -> None:
    queue = SnapshotQueue(max_age_s=1e9, memory=100)
    for i in range(250):
        queue.answered(f"s{i}")
    assert not queue.seen("s0")
    assert queue.seen("s249")
    assert len(queue._seen) == 100


def test_the_config_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.yaml"
    path.write_text("broker: {host: h, password: x}\nstep_min: 0\nshare_groop: x\n", encoding="utf-8")
    with pytest.raises(OptimizerConfigError) as info:
        load_optimizer_config(str(path))
    assert info.value.issues == [
        "broker: a password needs a username",
        "step_min: Input should be greater than or equal to 1",
        "share_groop: Extra inputs are not permitted",
    ]
    path.write_text("broker: {host: h}\nhorizon_h: 1.1\n", encoding="utf-8")
    with pytest.raises(OptimizerConfigError, match=r"horizon_h 1\.1 is not a whole number of 15 min steps"):
        load_optimizer_config(str(path))
