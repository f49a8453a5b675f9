"""``plaza-ems bench scan``: time steps 2-5 of the scan cycle on a generated site of N connectors.

The site is a full tree of the requested depth whose fuses are tight enough that every level binds
somewhere, with rotated three-phase and single-phase connectors, busy meters and EVs that draw less
than offered; each cycle the uncontrolled loads and EV draws change so the allocator cannot coast.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from controller.config import validate_config
from controller.image import ConnectorReading, ContactReading, InputSnapshot, MeterReading, freeze
from controller.program import ControlProgram
from controller.scan import CycleCollector, percentile
from controller.site import Site, compile_site

ROTATIONS = ("L1L2L3", "L2L3L1", "L3L1L2", "L1", "L2", "L3")


def bench_site_config(connectors: int, levels: int, seed: int = 7) -> dict[str, Any]:
    """A site file (as data) with ``connectors`` connectors on a tree of ``levels`` levels."""
    rng = random.Random(seed)
    # Boards fill depth-first, so spread the charge points evenly over (levels - 1) levels of fan-out.
    fan_out = max(2, math.ceil((connectors / 2) ** (1 / max(1, levels - 1))))
    meters: list[dict[str, str]] = [{"id": "m-root"}]
    counter = {"cp": 0, "conn": 0, "node": 0}

    def charge_point(cp_limit: float) -> dict[str, Any]:
        counter["cp"] += 1
        conns = []
        for _ in range(2):
            if counter["conn"] >= connectors:
                break
            counter["conn"] += 1
            conns.append({"id": f"c{counter['conn']}", "phases": rng.choice(ROTATIONS), "max_current_a": 32.0})
        return {"id": f"cp{counter['cp']}", "limit_a": cp_limit, "connectors": conns}

    def board(depth: int) -> dict[str, Any]:
        counter["node"] += 1
        node_id = f"n{counter['node']}"
        remaining_levels = levels - depth
        node: dict[str, Any] = {"id": node_id, "limit_a": 1.0, "children": []}
        if counter["node"] % 3 == 0:
            meters.append({"id": f"m-{node_id}"})
            node["meter"] = f"m-{node_id}"
        if remaining_levels == 1:
            while counter["conn"] < connectors and len(node["children"]) < fan_out:
                node["children"].append(charge_point(32.0))
        else:
            while counter["conn"] < connectors and len(node["children"]) < fan_out:
                node["children"].append(board(depth + 1))
        # Tight: about 55 % of what the connectors below could draw, so fuses bind at every level.
        below = _count_connectors(node)
        node["limit_a"] = max(16.0, round(below * 32.0 * 0.55 / 3 + rng.uniform(0, 10), 1))
        return node

    root = board(1) if levels > 1 else charge_point(float(connectors) * 32.0)
    root["id"] = "grid"
    root["meter"] = "m-root"
    if levels > 1:
        root["power_limit_kw"] = round(root["limit_a"] * 3 * 230 / 1000 * 0.9, 1)
    return {
        "site": {"id": "bench"},
        "scan": {"period_ms": 1000},
        "meters": meters,
        "fire_panel": {"id": "fire"},
        "tree": root,
    }


def _count_connectors(node: dict[str, Any]) -> int:
    return len(node.get("connectors", [])) + sum(_count_connectors(c) for c in node.get("children", []))


def bench_scan(connectors: int, levels: int, cycles: int, seed: int = 7) -> dict[str, Any]:
    site: Site = compile_site(validate_config(bench_site_config(connectors, levels, seed), "bench").config)
    program = ControlProgram(site)
    rng = random.Random(seed)
    snapshot = InputSnapshot()
    connector_ids = tuple(c.id for c in site.connectors)
    ev_max = {c.id: rng.choice((10.0, 16.0, 32.0)) for c in site.connectors}
    setpoints = dict.fromkeys(connector_ids, 0.0)
    times: list[float] = []
    t = 1.7e9
    collector = CycleCollector()
    for _ in range(cycles):
        t += site.period_s
        for meter in site.config.meters:
            load = rng.uniform(0.0, 20.0)
            snapshot.meters[meter.id] = MeterReading((load, load * 0.8, load * 1.1), load * 690.0, t)
        for conn in site.connectors:
            draw = min(setpoints[conn.id], ev_max[conn.id]) if setpoints[conn.id] >= 6.0 else 0.0
            phase_a = (draw, draw if len(conn.rotation) == 3 else 0.0, draw if len(conn.rotation) == 3 else 0.0)
            state = "C2" if draw > 0 else "B2"
            snapshot.connectors[conn.id] = ConnectorReading(state, phase_a, draw * 230.0, 0.0, None, t)
        snapshot.contacts["fire"] = ContactReading(True, t)
        image = freeze(snapshot, t, site.stale_after_s, connector_ids, ())
        started = time.perf_counter()
        output = program.step(image)
        times.append(time.perf_counter() - started)
        for sp in output.setpoints:
            setpoints[sp.connector] = sp.current_a
        collector.after_cycle()
    collector.close()
    return {
        "connectors": len(site.connectors),
        "levels": site.max_level,
        "nodes": len(site.nodes),
        "cycles": cycles,
        "logic_p50_ms": round(percentile(times, 50) * 1000.0, 3),
        "logic_p99_ms": round(percentile(times, 99) * 1000.0, 3),
        "logic_max_ms": round(max(times) * 1000.0, 3),
    }
