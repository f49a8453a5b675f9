"""Step 3 of the cycle: the effective current and power limit of every node of the electrical tree now.

Effective limit = min(fuse/cable rating, DSO command, capacity frame for this time block). The reason
names the binding term so operators can see *why* a node is limited. Safety margins are subtracted
later, by the protection step, so reported limits stay the physical ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.image import DsoReading, Quality
from controller.site import Site

FUSE = "fuse"
DSO = "dso"
CAPACITY_FRAME = "capacity_frame"


@dataclass(frozen=True, slots=True)
class NodeLimit:
    current_a: float
    """Per phase."""
    power_w: float
    """math.inf where the node has no power limit."""
    reason: str


def dso_limit_pct(site: Site, reading: DsoReading | None) -> float:
    """The DSO stage in force: the input when good, else the configured fail-safe stage."""
    dso = site.config.dso
    if dso is None:
        return 100.0
    if reading is None or reading.quality != Quality.GOOD:
        return dso.fail_safe_pct
    return reading.limit_pct


def fuse_limits(site: Site) -> tuple[NodeLimit, ...]:
    """Every node's own rating: the effective limits whenever no DSO command or capacity frame binds.

    They never change for a site, so the program computes them once and ``effective_limits`` hands
    the same tuple back in every such cycle instead of building a record per node.
    """
    return tuple(
        NodeLimit(node.rating_a, node.power_limit_w if node.power_limit_w is not None else math.inf, FUSE)
        for node in site.nodes
    )


def effective_limits(
    site: Site, fuse: tuple[NodeLimit, ...], now: float, dso_reading: DsoReading | None
) -> tuple[NodeLimit, ...]:
    """``fuse`` is ``fuse_limits(site)``; a node's limit is replaced only where a DSO stage or frame binds."""
    dso = site.config.dso
    pct = dso_limit_pct(site, dso_reading)
    if pct >= 100.0 and not site.capacity_frames:
        return fuse
    limits = list(fuse)
    if dso is not None and pct < 100.0:
        index = site.node_index[dso.node]
        node = site.nodes[index]
        own = limits[index]
        power_w = (node.power_limit_w * pct / 100.0) if node.power_limit_w is not None else math.inf
        limits[index] = NodeLimit(min(own.current_a, node.rating_a * pct / 100.0), min(own.power_w, power_w), DSO)
    if site.capacity_frames:
        local = datetime.fromtimestamp(now, UTC).astimezone(site.timezone)
        s_of_day = local.hour * 3600 + local.minute * 60 + local.second
        for frame in site.capacity_frames:
            own = limits[frame.node]
            if frame.active(s_of_day) and frame.limit_w < own.power_w:
                limits[frame.node] = NodeLimit(own.current_a, frame.limit_w, CAPACITY_FRAME)
    return tuple(limits)
