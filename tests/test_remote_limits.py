"""Cycle tables for limits commanded from outside the site: DSO commands (SPEC F17), capacity blocks (R2).

Each command binds only inside its own window and only ever lowers a node's limit; the reported
``NodeLimit.reason`` says which term binds.
"""

from __future__ import annotations

import math

import pytest

from controller.limits import (
    CAPACITY_COMMAND,
    DSO,
    DSO_COMMAND,
    FUSE,
    RemoteCapacityBlock,
    RemoteDsoLimit,
    RemoteLimits,
    effective_limits,
    fuse_limits,
)
from tests.cycles import T0, Ev, Plaza

FAR_TS = T0 + 365 * 86_400.0
"""An end of validity no test reaches (an infinite one would be ignored as non-finite)."""

BASE = """
site: {id: t}
scan: {period_ms: 1000, stale_after_ms: 3000}
margins: {current_a: 0, power_kw: 0}
control: {ramp_up_a_per_s: 100, resume_delay_s: 60, resume_margin_a: 1}
meters: [{id: m_grid}]
fire_panel: {id: fire}
emergency_stop: {id: estop}
"""

TREE = """
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
    - {id: cp2, limit_a: 32, connectors: [{id: c2}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
"""

WITH_DSO = BASE + TREE + "dso: {id: dso, node: grid, fail_safe_pct: 30}\n"
WITH_POWER = BASE + TREE.replace("limit_a: 100\n", "limit_a: 100\n  power_limit_kw: 22.08\n")
"""22.08 kW / (230 V x 3 phases) = 32 A at the connection in all: two sessions get 16 A each."""

NESTED = (
    BASE
    + """
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
)


def charging(text: str, *connectors: str, dso_pct: float | None = None) -> Plaza:
    """A plaza whose given connectors have an EV that wants everything, after one settling cycle."""
    plaza = Plaza.from_yaml(text)
    evs: dict[str, Ev | None] = {c: (Ev() if c in connectors else None) for c in ("c1", "c2", "c3")}
    plaza.cycle(meters={"m_grid": (0.0, 0.0, 0.0)}, evs=evs, dso_pct=dso_pct)
    return plaza


def reason(plaza: Plaza, node: str) -> str:
    assert plaza.last is not None
    return plaza.last.limits[plaza.site.node_index[node]].reason


def dso_command(
    pct: float, *, node: str | None = None, valid_from_ts: float | None = None, valid_to_ts: float = FAR_TS
) -> RemoteDsoLimit:
    return RemoteDsoLimit(node, pct, valid_from_ts, valid_to_ts)


def test_dso_command_at_50_pct_halves_the_connection_only_inside_its_window() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=100.0)
    start_ts = plaza.t + 2
    plaza.snapshot.remote_limits = RemoteLimits(
        dso=(dso_command(50.0, valid_from_ts=start_ts, valid_to_ts=start_ts + 3),)
    )
    # Before the window: the chargers' own 32 A bind.
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert reason(plaza, "grid") == FUSE
    # Inside it: 50 A at the connection, 25 A each.
    for _ in range(3):
        assert plaza.cycle() == pytest.approx({"c1": 25.0, "c2": 25.0, "c3": 0.0})
        assert reason(plaza, "grid") == DSO_COMMAND
    # The window's end is exclusive.
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert reason(plaza, "grid") == FUSE


def test_dso_command_without_start_is_in_force_at_once_until_its_end() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=100.0)
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(50.0, valid_to_ts=plaza.t + 2),))
    assert plaza.cycle() == pytest.approx({"c1": 25.0, "c2": 25.0, "c3": 0.0})
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})


def test_the_lower_of_relay_stage_and_commands_wins() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=60.0)
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(80.0), dso_command(50.0), dso_command(70.0)))
    # Relay 60 A, commands 80/50/70 A: the 50 % command binds.
    assert plaza.cycle() == pytest.approx({"c1": 25.0, "c2": 25.0, "c3": 0.0})
    assert reason(plaza, "grid") == DSO_COMMAND
    # The relay drops to 30 %, below the command: the relay binds.
    assert plaza.cycle(dso_pct=30.0) == pytest.approx({"c1": 15.0, "c2": 15.0, "c3": 0.0})
    assert reason(plaza, "grid") == DSO


def test_a_dso_command_never_raises_a_limit() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=30.0)
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(100.0), dso_command(250.0)))
    assert plaza.cycle() == pytest.approx({"c1": 15.0, "c2": 15.0, "c3": 0.0})
    assert reason(plaza, "grid") == DSO


def test_a_dso_command_below_0_pct_counts_as_0_pct() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=100.0)
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(-20.0),))
    assert plaza.cycle() == pytest.approx({"c1": 0.0, "c2": 0.0, "c3": 0.0})
    assert plaza.last is not None
    assert plaza.last.limits[plaza.site.node_index["grid"]].current_a == 0.0


def test_a_dso_command_scales_the_node_power_limit_too() -> None:
    plaza = charging(WITH_POWER, "c1", "c2")
    assert plaza.cycle() == pytest.approx({"c1": 16.0, "c2": 16.0, "c3": 0.0})
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(50.0, node="grid"),))
    # 50 A is not binding, 11.04 kW = 16 A in all is.
    assert plaza.cycle() == pytest.approx({"c1": 8.0, "c2": 8.0, "c3": 0.0})
    assert reason(plaza, "grid") == DSO_COMMAND


def test_a_dso_command_without_node_acts_on_the_dso_node_or_else_the_root() -> None:
    plaza = charging(NESTED + "dso: {id: dso, node: sub}\n", "c1", "c2", "c3", dso_pct=100.0)
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(50.0),))
    # The DSO acts on the sub board: 20 A for c1 and c2, c3 keeps its 32 A.
    assert plaza.cycle() == pytest.approx({"c1": 10.0, "c2": 10.0, "c3": 32.0})
    assert reason(plaza, "sub") == DSO_COMMAND

    plaza = charging(NESTED, "c1", "c2", "c3")
    plaza.snapshot.remote_limits = RemoteLimits(dso=(dso_command(50.0),))
    # No dso section: the command acts on the root, 50 A shared by three.
    assert plaza.cycle() == pytest.approx({"c1": 50 / 3, "c2": 50 / 3, "c3": 50 / 3})
    assert reason(plaza, "grid") == DSO_COMMAND


def test_a_capacity_block_limits_a_node_power_only_in_its_window() -> None:
    plaza = charging(WITH_POWER.replace("power_limit_kw: 22.08", "power_limit_kw: 100"), "c1", "c2")
    start_ts = plaza.t + 2
    block = RemoteCapacityBlock("grid", start_ts, start_ts + 2, 11_040.0)
    plaza.snapshot.remote_limits = RemoteLimits(capacity=(block,))
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    for _ in range(2):
        assert plaza.cycle() == pytest.approx({"c1": 8.0, "c2": 8.0, "c3": 0.0})
        assert reason(plaza, "grid") == CAPACITY_COMMAND
        assert plaza.last is not None
        assert plaza.last.limits[plaza.site.node_index["grid"]].power_w == 11_040.0
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert reason(plaza, "grid") == FUSE


def test_a_capacity_block_on_a_node_without_power_limit_binds_through_its_current() -> None:
    # cp1 has neither a power limit nor a configured frame, so the allocator checks no power there.
    plaza = charging(BASE + TREE, "c1", "c2")
    plaza.snapshot.remote_limits = RemoteLimits(capacity=(RemoteCapacityBlock("cp1", plaza.t, plaza.t + 60, 4_140.0),))
    # 4140 W / (230 V x 3 phases) = 6 A per phase.
    assert plaza.cycle() == pytest.approx({"c1": 6.0, "c2": 32.0, "c3": 0.0})
    assert reason(plaza, "cp1") == CAPACITY_COMMAND


def test_a_capacity_block_never_raises_a_limit() -> None:
    plaza = charging(WITH_POWER, "c1", "c2")
    plaza.snapshot.remote_limits = RemoteLimits(
        capacity=(RemoteCapacityBlock("grid", plaza.t, plaza.t + 60, 50_000.0),)
    )
    assert plaza.cycle() == pytest.approx({"c1": 16.0, "c2": 16.0, "c3": 0.0})
    assert reason(plaza, "grid") == FUSE


def test_commands_on_an_unknown_node_are_ignored() -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=100.0)
    plaza.snapshot.remote_limits = RemoteLimits(
        dso=(dso_command(0.0, node="nowhere"),),
        capacity=(RemoteCapacityBlock("nowhere", plaza.t, plaza.t + 60, 0.0),),
    )
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert plaza.last is not None
    assert {limit.reason for limit in plaza.last.limits} == {FUSE}


@pytest.mark.parametrize(
    "remote",
    [
        RemoteLimits(dso=(dso_command(math.nan),)),
        RemoteLimits(dso=(dso_command(0.0, valid_from_ts=-math.inf),)),
        RemoteLimits(dso=(dso_command(0.0, valid_to_ts=math.inf),)),
        RemoteLimits(capacity=(RemoteCapacityBlock("grid", 0.0, FAR_TS, math.nan),)),
        RemoteLimits(capacity=(RemoteCapacityBlock("grid", -math.inf, FAR_TS, 0.0),)),
    ],
    ids=["dso_nan_pct", "dso_infinite_start", "dso_infinite_end", "capacity_nan_w", "capacity_infinite_start"],
)
def test_commands_with_non_finite_numbers_are_ignored_not_read_as_zero(remote: RemoteLimits) -> None:
    plaza = charging(WITH_DSO, "c1", "c2", dso_pct=100.0)
    plaza.snapshot.remote_limits = remote
    assert plaza.cycle() == pytest.approx({"c1": 32.0, "c2": 32.0, "c3": 0.0})
    assert reason(plaza, "grid") == FUSE


def test_without_commands_in_force_the_fuse_limits_are_handed_back_unchanged() -> None:
    plaza = Plaza.from_yaml(BASE + TREE)
    fuse = fuse_limits(plaza.site)
    assert effective_limits(plaza.site, fuse, plaza.t, None) is fuse
    assert effective_limits(plaza.site, fuse, plaza.t, None, RemoteLimits()) is fuse
