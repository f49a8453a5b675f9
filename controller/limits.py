"""Step 3 of the cycle: the effective current and power limit of every node of the electrical tree now.

Effective limit = min(fuse/cable rating, DSO relay stage, DSO command, configured capacity frame for
this local time block, capacity block commanded for this absolute time). The reason names the binding
term so operators can see *why* a node is limited. Safety margins are subtracted later, by the
protection step, so reported limits stay the physical ones.

Commands from outside the site (SPEC F17, R2) arrive through the cloud link as ``RemoteLimits``. Like
every other term they enter a min, so they can only lower a limit, never raise one: a DSO command at
100 % leaves a 30 % relay stage at 30 %.
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
DSO_COMMAND = "dso_command"
CAPACITY_COMMAND = "capacity_command"


@dataclass(frozen=True, slots=True)
class NodeLimit:
    current_a: float
    """Per phase."""
    power_w: float
    """math.inf where the node has no power limit."""
    reason: str


@dataclass(frozen=True, slots=True)
class RemoteDsoLimit:
    """A DSO limit command: ``limit_pct`` of a node's rating (current, and power where it has a limit).

    Named apart from ``drivers.mqtt.messages.DsoLimitCommand``, the wire form it is made from.
    """

    node: str | None
    """None: the node the site's ``dso`` section acts on, or the root when the site has none."""
    limit_pct: float
    valid_from_ts: float | None
    """None: in force from now."""
    valid_to_ts: float
    """Exclusive: the command has no effect from this time on."""


@dataclass(frozen=True, slots=True)
class RemoteCapacityBlock:
    """A power limit on a node for one absolute time block [start_ts, end_ts), e.g. day-ahead from OpenADR.

    Named apart from ``drivers.mqtt.messages.CapacityFrame``, the wire form it is made from.
    """

    node: str
    start_ts: float
    end_ts: float
    limit_w: float


@dataclass(frozen=True, slots=True)
class RemoteLimits:
    """Every limit command the cloud link holds; each applies only inside its own time window."""

    dso: tuple[RemoteDsoLimit, ...] = ()
    capacity: tuple[RemoteCapacityBlock, ...] = ()


def dso_limit_pct(site: Site, reading: DsoReading | None) -> float:
    """The DSO stage in force: the input when good, else the configured fail-safe stage."""
    dso = site.config.dso
    if dso is None:
        return 100.0
    if reading is None or reading.quality != Quality.GOOD:
        return dso.fail_safe_pct
    return reading.limit_pct


def fuse_limits(site: Site) -> tuple[NodeLimit, ...]:
    """Every node's own rating: the effective limits whenever no DSO stage, command or frame binds.

    They never change for a site, so the program computes them once and ``effective_limits`` hands
    the same tuple back in every such cycle instead of building a record per node.
    """
    return tuple(
        NodeLimit(node.rating_a, node.power_limit_w if node.power_limit_w is not None else math.inf, FUSE)
        for node in site.nodes
    )


def effective_limits(
    site: Site,
    fuse: tuple[NodeLimit, ...],
    now: float,
    dso_reading: DsoReading | None,
    remote: RemoteLimits | None = None,
) -> tuple[NodeLimit, ...]:
    """``fuse`` is ``fuse_limits(site)``; a node's limit is replaced only where a DSO stage, command or frame binds."""
    dso = site.config.dso
    pct = dso_limit_pct(site, dso_reading)
    if pct >= 100.0 and not site.capacity_frames and (remote is None or not (remote.dso or remote.capacity)):
        return fuse
    limits = list(fuse)
    if dso is not None and pct < 100.0:
        _scale(site, limits, site.node_index[dso.node], pct, DSO)
    if remote is not None:
        _remote_dso(site, limits, now, remote.dso)
    if site.capacity_frames:
        local = datetime.fromtimestamp(now, UTC).astimezone(site.timezone)
        s_of_day = local.hour * 3600 + local.minute * 60 + local.second
        for frame in site.capacity_frames:
            own = limits[frame.node]
            if frame.active(s_of_day) and frame.limit_w < own.power_w:
                limits[frame.node] = NodeLimit(own.current_a, frame.limit_w, CAPACITY_FRAME)
    if remote is not None:
        _remote_capacity(site, limits, now, remote.capacity)
    return tuple(limits)


def _scale(site: Site, limits: list[NodeLimit], index: int, pct: float, reason: str) -> None:
    """Lower node ``index`` to ``pct`` of its rating (and of its power limit, if it has one)."""
    node = site.nodes[index]
    own = limits[index]
    current_a = node.rating_a * pct / 100.0
    power_w = node.power_limit_w * pct / 100.0 if node.power_limit_w is not None else math.inf
    if current_a < own.current_a or power_w < own.power_w:
        limits[index] = NodeLimit(min(own.current_a, current_a), min(own.power_w, power_w), reason)


def _remote_dso(site: Site, limits: list[NodeLimit], now: float, commands: tuple[RemoteDsoLimit, ...]) -> None:
    """Apply every DSO command in force now; the lowest one binds (and a relay stage below it wins).

    A command with a non-finite number is ignored rather than read as 0 %: the MQTT parser rejects
    such commands, so one can only come from a bug or a bit flip, and a limit nobody knows must not
    cut the whole site off. Percentages outside 0..100 are clamped, so a command can never scale a
    rating up. Unknown nodes are ignored for the same reason the parser rejects them.
    """
    dso = site.config.dso
    default_node = dso.node if dso is not None else site.nodes[0].id
    for command in commands:
        start_ts = now if command.valid_from_ts is None else command.valid_from_ts
        if not (math.isfinite(command.limit_pct) and math.isfinite(start_ts) and math.isfinite(command.valid_to_ts)):
            continue
        if not start_ts <= now < command.valid_to_ts:
            continue
        index = site.node_index.get(command.node if command.node is not None else default_node)
        if index is None:
            continue
        _scale(site, limits, index, min(100.0, max(0.0, command.limit_pct)), DSO_COMMAND)


def _remote_capacity(site: Site, limits: list[NodeLimit], now: float, blocks: tuple[RemoteCapacityBlock, ...]) -> None:
    """Apply every capacity block whose [start_ts, end_ts) holds now, like a configured frame.

    The allocator only checks the power of the root and of the nodes that can have one
    (``Site.power_checked``: their own limit or a configured frame). On any other node the block's
    power is also enforced as a per-phase current of limit_w / (3 × voltage): three phases at that
    current cannot exceed it, at the price of giving single-phase loads only a third of it.
    Non-finite numbers and unknown nodes are ignored, as for DSO commands; a negative limit counts as 0 W.
    """
    for block in blocks:
        if not (math.isfinite(block.start_ts) and math.isfinite(block.end_ts) and math.isfinite(block.limit_w)):
            continue
        if not block.start_ts <= now < block.end_ts:
            continue
        index = site.node_index.get(block.node)
        if index is None:
            continue
        own = limits[index]
        limit_w = max(0.0, block.limit_w)
        current_a = own.current_a
        if index not in site.power_checked:
            current_a = min(current_a, limit_w / (3 * site.voltage_v))
        if limit_w < own.power_w or current_a < own.current_a:
            limits[index] = NodeLimit(current_a, min(own.power_w, limit_w), CAPACITY_COMMAND)
