"""Site configuration: loading, validation errors named by path, warnings, phase rotations."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import (
    MAX_TREE_LEVELS,
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    load_config,
    parse_config,
    parse_phases,
    validate_config,
    walk_tree,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sites"

Raw = dict[str, Any]


def base() -> Raw:
    """A small valid site: root 'main' with two AC charge points and a DC charger, battery, DSO, frame."""
    return {
        "site": {"id": "test-site"},
        "meters": [{"id": "m_grid"}, {"id": "m_bess"}],
        "tree": {
            "id": "main",
            "limit_a": 100,
            "power_limit_kw": 60,
            "meter": "m_grid",
            "children": [
                {
                    "id": "cp1",
                    "limit_a": 32,
                    "location": "P-staff",
                    "connectors": [{"id": "cp1-1"}, {"id": "cp1-2", "phases": "L2L3L1"}],
                },
                {"id": "cp2", "limit_a": 32, "connectors": [{"id": "cp2-1", "phases": "L3"}]},
                {
                    "id": "cp3",
                    "limit_a": 63,
                    "connectors": [{"id": "dc1", "type": "dc", "max_power_kw": 40}],
                },
            ],
        },
        "priorities": {"locations": [{"id": "P-staff", "priority": 2}]},
        "batteries": [
            {
                "id": "bess",
                "node": "main",
                "meter": "m_bess",
                "capacity_kwh": 50,
                "max_charge_kw": 25,
                "max_discharge_kw": 25,
            }
        ],
        "dso": {"id": "dso", "node": "main"},
        "capacity_frames": [{"node": "main", "start": "17:00", "end": "20:00", "limit_kw": 50}],
    }


def dump(raw: object) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.issues


def assert_rejected(text: str, path: str, message: str) -> None:
    issues = issues_of(text)
    assert ConfigIssue(path, message) in issues, issues


def rejected_with(edit: Callable[[Raw], None], path: str, message: str) -> None:
    raw = base()
    edit(raw)
    assert_rejected(dump(raw), path, message)


def child(raw: Raw, index: int) -> Raw:
    node: Raw = raw["tree"]["children"][index]
    return node


def conn(raw: Raw, node_index: int, index: int = 0) -> Raw:
    connector: Raw = child(raw, node_index)["connectors"][index]
    return connector


# --- valid configurations ---------------------------------------------------------------------------


def test_base_fixture_is_valid() -> None:
    loaded = parse_config(dump(base()))
    assert loaded.warnings == ()
    assert loaded.config.tree.children[2].connectors[0].max_power_kw == 40
    assert loaded.config.capacity_frames[0].start == time(17, 0)


@pytest.mark.parametrize("name", ["plaza-40.site.yaml", "small.site.yaml"])
def test_example_sites_load_without_warnings(name: str) -> None:
    loaded = load_config(EXAMPLES / name)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.warnings == ()


def test_plaza_40_example_has_the_documented_shape() -> None:
    config = load_config(EXAMPLES / "plaza-40.site.yaml").config
    walked = list(walk_tree(config.tree))
    assert max(item.depth for item in walked) == MAX_TREE_LEVELS
    connectors = [c for item in walked for c in item.node.connectors]
    assert len(connectors) == 40
    assert all(c.type == "ac" and c.max_current_a == 32 and c.min_current_a == 6 for c in connectors)
    assert all(c.fallback_current_a == 6 for c in connectors)
    assert sum(1 for c in connectors if len(c.phases) == 2) == 4
    charge_points = [item.node for item in walked if item.node.connectors]
    assert len(charge_points) == 20
    assert all(cp.limit_a == 32 and cp.location is not None for cp in charge_points)
    # The three-phase charge points rotate, so the charger's L1 lands equally on each grid phase.
    rotations = [parse_phases(c.phases) for c in connectors if len(c.phases) == 6]
    assert Counter(r[0] for r in rotations if r is not None) == {0: 12, 1: 12, 2: 12}
    assert config.scan.period_ms == 1000
    assert config.tree.limit_a == 400
    assert config.tree.power_limit_kw == 250
    assert config.batteries[0].response_delay_s == 150
    assert config.capacity_frames[0].start == time(17, 0)
    assert config.capacity_frames[0].end == time(20, 0)
    assert any(user.flexible for user in config.priorities.users)


def test_invalid_example_reports_every_problem() -> None:
    path = EXAMPLES / "invalid.site.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert {issue.path for issue in caught.value.issues} == {
        "site.timezone",
        "tree.grid.children[0].meter",
        "tree.grid.children[0].connectors[0].phases",
        "tree.grid.children[0].connectors[1].min_current_a",
        "tree.grid.children[1].id",
        "tree.grid.children[1].connectors[0].max_power_kw",
        "batteries[0].node",
    }


def test_child_limit_above_parent_is_only_warned() -> None:
    raw = base()
    child(raw, 2)["limit_a"] = 150
    loaded = parse_config(dump(raw))
    assert loaded.warnings == (
        ConfigIssue(
            "tree.main.children[2].limit_a",
            "150 A is above its parent 'main' (100 A); the parent's limit still applies",
        ),
    )


def test_unquoted_clock_times_are_times_not_base_60_numbers() -> None:
    text = dump(base()).replace("'17:00'", "17:00").replace("'20:00'", "20:00")
    assert "start: 17:00" in text
    frame = parse_config(text).config.capacity_frames[0]
    assert (frame.start, frame.end) == (time(17, 0), time(20, 0))


def test_error_message_names_source_and_every_issue() -> None:
    raw = base()
    child(raw, 0)["limit_a"] = 0
    with pytest.raises(ConfigError) as caught:
        parse_config(dump(raw), "site.yaml")
    assert str(caught.value).startswith("site.yaml: invalid site configuration (1 problem(s)):")
    assert "  tree.main.children[0].limit_a: must be > 0" in str(caught.value)


# --- schema errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -16])
def test_non_positive_limit(limit: int) -> None:
    rejected_with(lambda r: child(r, 2).update(limit_a=limit), "tree.main.children[2].limit_a", "must be > 0")


def test_non_positive_root_limit() -> None:
    rejected_with(lambda r: r["tree"].update(limit_a=0), "tree.limit_a", "must be > 0")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_limit(value: str) -> None:
    raw = base()
    child(raw, 1)["limit_a"] = 12345
    text = dump(raw).replace("12345", value)
    assert_rejected(text, "tree.main.children[1].limit_a", "must be a finite number")


def test_non_finite_connector_current() -> None:
    raw = base()
    conn(raw, 0)["max_current_a"] = 12345
    text = dump(raw).replace("12345", ".inf")
    assert_rejected(text, "tree.main.children[0].connectors[0].max_current_a", "must be a finite number")


def test_unknown_field() -> None:
    rejected_with(lambda r: child(r, 0).update(limt_a=32), "tree.main.children[0].limt_a", "unknown field")
    rejected_with(lambda r: r.update(sensors=[]), "sensors", "unknown field")
    rejected_with(lambda r: conn(r, 1).update(phase="L1"), "tree.main.children[1].connectors[0].phase", "unknown field")


def test_missing_required_field() -> None:
    rejected_with(lambda r: child(r, 1).pop("limit_a"), "tree.main.children[1].limit_a", "is required")
    rejected_with(lambda r: r.pop("site"), "site", "is required")
    rejected_with(lambda r: r["batteries"][0].pop("capacity_kwh"), "batteries[0].capacity_kwh", "is required")


def test_error_under_unnamed_node_is_named_after_nearest_named_ancestor() -> None:
    raw = base()
    child(raw, 0).pop("id")
    child(raw, 0)["limit_a"] = -1
    issues = issues_of(dump(raw))
    assert ConfigIssue("tree.main.children[0].id", "is required") in issues
    assert ConfigIssue("tree.main.children[0].limit_a", "must be > 0") in issues


def test_error_deep_in_the_tree_names_the_parent() -> None:
    raw = base()
    child(raw, 0).pop("connectors")
    child(raw, 0)["children"] = [{"id": "deep", "limit_a": 16, "connectors": [{"id": "x", "max_current_a": 0}]}]
    assert_rejected(dump(raw), "tree.cp1.children[0].connectors[0].max_current_a", "must be > 0")


# --- tree shape -------------------------------------------------------------------------------------


def chain(levels: int) -> Raw:
    """A straight tree l1 -> l2 -> ... with one connector on the last level."""
    leaf: Raw = {"id": f"l{levels}", "limit_a": 16, "connectors": [{"id": "c1", "max_current_a": 16}]}
    for level in range(levels - 1, 0, -1):
        leaf = {"id": f"l{level}", "limit_a": 16, "children": [leaf]}
    return {"site": {"id": "deep"}, "tree": leaf}


def test_five_levels_are_accepted() -> None:
    loaded = parse_config(dump(chain(5)))
    assert [item.depth for item in walk_tree(loaded.config.tree)] == [1, 2, 3, 4, 5]


def test_six_levels_are_rejected_naming_the_level() -> None:
    assert issues_of(dump(chain(6))) == [
        ConfigIssue("tree.l5.children[0]", "node 'l6' is at level 6; at most 5 allowed")
    ]


def test_cycle_through_yaml_alias() -> None:
    text = """
site: {id: s}
tree: &a
  id: main
  limit_a: 100
  children:
    - id: sub
      limit_a: 50
      children: [*a]
"""
    assert issues_of(text) == [
        ConfigIssue("tree.sub.children[0]", "cycle in the tree: node 'main' is its own ancestor")
    ]


def test_node_aliased_to_itself_directly() -> None:
    text = "site: {id: s}\ntree: &a {id: x, limit_a: 5, children: [*a]}\n"
    assert issues_of(text) == [ConfigIssue("tree.x.children[0]", "cycle in the tree: node 'x' is its own ancestor")]


def test_node_with_children_and_connectors() -> None:
    message = "a node has either children (a board) or connectors (a charge point)"
    rejected_with(lambda r: r["tree"].update(connectors=[{"id": "stray"}]), "tree", message)

    def board_and_cp(raw: Raw) -> None:
        child(raw, 0)["children"] = [{"id": "sub", "limit_a": 16}]

    rejected_with(board_and_cp, "tree.main.children[0]", message)


# --- identifiers and references ---------------------------------------------------------------------


def test_duplicate_id_node_and_connector() -> None:
    rejected_with(
        lambda r: conn(r, 0).update(id="cp2"),
        "tree.main.children[1].id",
        "duplicate id 'cp2' (first used at tree.main.children[0].connectors[0].id)",
    )


def test_duplicate_id_meter_and_node() -> None:
    rejected_with(
        lambda r: r["meters"].append({"id": "cp3"}),
        "tree.main.children[2].id",
        "duplicate id 'cp3' (first used at meters[2].id)",
    )


def test_duplicate_connector_ids() -> None:
    rejected_with(
        lambda r: conn(r, 1).update(id="cp1-2"),
        "tree.main.children[1].connectors[0].id",
        "duplicate id 'cp1-2' (first used at tree.main.children[0].connectors[1].id)",
    )


def test_unknown_meter() -> None:
    rejected_with(
        lambda r: child(r, 1).update(meter="m_nope"),
        "tree.main.children[1].meter",
        "unknown meter 'm_nope' (declare it under meters)",
    )
    rejected_with(
        lambda r: r["batteries"][0].update(meter="m_nope"),
        "batteries[0].meter",
        "unknown meter 'm_nope' (declare it under meters)",
    )


def test_meter_used_twice() -> None:
    rejected_with(
        lambda r: child(r, 0).update(meter="m_grid"),
        "tree.main.children[0].meter",
        "meter 'm_grid' already measures tree.meter",
    )
    rejected_with(
        lambda r: r["batteries"][0].update(meter="m_grid"),
        "batteries[0].meter",
        "meter 'm_grid' already measures tree.meter",
    )


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda r: r["batteries"][0].update(node="nowhere"), "batteries[0].node"),
        (lambda r: r["dso"].update(node="nowhere"), "dso.node"),
        (lambda r: r["capacity_frames"][0].update(node="nowhere"), "capacity_frames[0].node"),
        (lambda r: r.update(pv=[{"id": "pv", "node": "nowhere", "peak_kw": 10}]), "pv[0].node"),
        (lambda r: r.update(building_loads=[{"id": "b", "node": "nowhere"}]), "building_loads[0].node"),
    ],
)
def test_unknown_node_reference(edit: Callable[[Raw], None], path: str) -> None:
    rejected_with(edit, path, "unknown tree node 'nowhere'")


def test_reference_to_connector_is_not_a_node() -> None:
    rejected_with(lambda r: r["dso"].update(node="cp1-1"), "dso.node", "unknown tree node 'cp1-1'")


def test_unknown_parking_location() -> None:
    rejected_with(
        lambda r: child(r, 1).update(location="P-roof"),
        "tree.main.children[1].location",
        "unknown parking location 'P-roof'",
    )


def test_unknown_time_zone() -> None:
    rejected_with(
        lambda r: r["site"].update(timezone="Europe/Amsterdm"), "site.timezone", "unknown time zone 'Europe/Amsterdm'"
    )
    rejected_with(lambda r: r["site"].update(timezone="Europe"), "site.timezone", "unknown time zone 'Europe'")


# --- connectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phases", ["L4", "L1L1L2", "L1L2", "l1l2l3", "L1L2L3L1", "", "L1\n"])
def test_unknown_phases(phases: str) -> None:
    rejected_with(
        lambda r: conn(r, 0).update(phases=phases),
        "tree.main.children[0].connectors[0].phases",
        f"unknown phases '{phases}': use a rotation like L1L2L3 / L2L3L1 or one phase L1/L2/L3",
    )


def test_dc_connector_needs_max_power() -> None:
    rejected_with(
        lambda r: conn(r, 2).pop("max_power_kw"),
        "tree.main.children[2].connectors[0].max_power_kw",
        "is required for a DC connector",
    )


def test_dc_connector_is_three_phase() -> None:
    rejected_with(
        lambda r: conn(r, 2).update(phases="L1"),
        "tree.main.children[2].connectors[0].phases",
        "a DC charger is fed by all three phases",
    )


def test_min_current_above_max_current() -> None:
    rejected_with(
        lambda r: conn(r, 0).update(min_current_a=20, max_current_a=16),
        "tree.main.children[0].connectors[0].min_current_a",
        "must be <= max_current_a",
    )


def test_ac_minimum_below_6_a() -> None:
    rejected_with(
        lambda r: conn(r, 1).update(min_current_a=5),
        "tree.main.children[1].connectors[0].min_current_a",
        "IEC 61851 allows no AC current below 6 A",
    )


# --- input that is not a site file ------------------------------------------------------------------


def test_not_yaml() -> None:
    issues = issues_of("site: {id: s\ntree: [\n")
    assert len(issues) == 1
    assert issues[0].path == ""
    assert issues[0].message.startswith("not valid YAML: ")
    assert "line" in issues[0].message


@pytest.mark.parametrize("text", ["- site\n- tree\n", "", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    assert issues_of(text) == [ConfigIssue("", "top level must be a mapping")]


def test_validate_config_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(["site", "tree"])
    assert caught.value.issues == [ConfigIssue("", "top level must be a mapping")]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.site.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.issues == [ConfigIssue("", "cannot read file: No such file or directory")]


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.site.yaml"
    path.write_text(dump(base()), encoding="utf-8")
    assert load_config(path).config.site.id == "test-site"


def test_absurdly_deep_nesting_is_an_error_not_a_crash() -> None:
    levels = 3000
    text = "site: {id: s}\ntree: " + "{id: x, limit_a: 5, children: [" * levels + "]}" * levels + "\n"
    assert issues_of(text) == [ConfigIssue("", "not valid YAML: nested too deeply")]


def test_absurdly_deep_tree_through_aliases_is_an_error_not_a_crash() -> None:
    levels = 3000
    lines = ["site: {id: s}", "x0: &a0 {id: n0, limit_a: 5}"]
    lines += [f"x{i}: &a{i} {{id: n{i}, limit_a: 5, children: [*a{i - 1}]}}" for i in range(1, levels)]
    lines.append(f"tree: *a{levels - 1}")
    assert issues_of("\n".join(lines)) == [ConfigIssue("tree", "nested far too deeply; at most 5 levels allowed")]


# --- phase rotations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("L1L2L3", (0, 1, 2)),
        ("L2L3L1", (1, 2, 0)),
        ("L3L1L2", (2, 0, 1)),
        ("L1L3L2", (0, 2, 1)),
        ("L3L2L1", (2, 1, 0)),
        ("L1", (0,)),
        ("L2", (1,)),
        ("L3", (2,)),
    ],
)
def test_parse_phases_valid(text: str, expected: tuple[int, ...]) -> None:
    assert parse_phases(text) == expected


@pytest.mark.parametrize(
    "text", ["", "L4", "L0", "L1L1L2", "L1L2", "L1L2L3L1", "l1", "L1 L2 L3", " L1", "L1\n", "L1L2L3\n", "1L2L3"]
)
def test_parse_phases_invalid(text: str) -> None:
    assert parse_phases(text) is None


# --- property: random trees -------------------------------------------------------------------------

ROTATIONS = ["L1L2L3", "L2L3L1", "L3L1L2", "L1", "L2", "L3"]
LIMITS = st.floats(min_value=0.0, max_value=5000.0, exclude_min=True, allow_nan=False, allow_infinity=False)


@dataclass
class GeneratedTree:
    raw: Raw
    depth: int
    depth_of: dict[str, int] = field(default_factory=dict)
    parent_of: dict[str, str | None] = field(default_factory=dict)


@st.composite
def trees(draw: st.DrawFn, min_depth: int, max_depth: int) -> GeneratedTree:
    depth = draw(st.integers(min_depth, max_depth))
    out = GeneratedTree({}, depth)
    counter = itertools.count()

    def node(level: int, height: int, parent: str | None) -> Raw:
        node_id = f"n{next(counter)}"
        out.depth_of[node_id] = level
        out.parent_of[node_id] = parent
        result: Raw = {"id": node_id, "limit_a": draw(LIMITS)}
        if height == 1:
            result["connectors"] = [{"id": f"{node_id}-c1", "phases": draw(st.sampled_from(ROTATIONS))}]
            return result
        fan_out = draw(st.integers(1, 3))
        # The first child reaches the full depth; its siblings may stop earlier.
        heights = [height - 1] + [draw(st.integers(1, height - 1)) for _ in range(fan_out - 1)]
        result["children"] = [node(level + 1, h, node_id) for h in heights]
        return result

    out.raw = {"site": {"id": "generated"}, "tree": node(1, depth, None)}
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(1, MAX_TREE_LEVELS))
def test_random_valid_trees_load_and_walk_visits_each_node_once(tree: GeneratedTree) -> None:
    loaded = parse_config(dump(tree.raw))
    walked = list(walk_tree(loaded.config.tree))
    assert len(walked) == len(tree.depth_of)
    assert {item.node.id: item.depth for item in walked} == tree.depth_of
    assert {item.node.id: (item.parent.id if item.parent else None) for item in walked} == tree.parent_of
    assert max(item.depth for item in walked) == tree.depth
    # The walk is a pre-order: a parent is visited before its children.
    seen: set[str] = set()
    for item in walked:
        assert item.parent is None or item.parent.id in seen
        seen.add(item.node.id)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(trees(MAX_TREE_LEVELS + 1, MAX_TREE_LEVELS + 2))
def test_random_too_deep_trees_are_rejected(tree: GeneratedTree) -> None:
    issues = issues_of(dump(tree.raw))
    too_deep = {node_id for node_id, depth in tree.depth_of.items() if depth > MAX_TREE_LEVELS}
    assert too_deep
    assert len(issues) == len(too_deep)
    assert all("at most 5" in issue.message for issue in issues)
