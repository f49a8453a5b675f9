"""Allocation: share the capacity left at every node, on every phase, among the sessions that want it.

The problem: each connector c draws x_c amperes on each grid phase it uses; for every node n above it
and every phase p, the sum of x over connectors under n using p must stay within that node-phase's
remaining capacity, and where the node has a power limit, the sum of x times volts-per-ampere within
its remaining power. IEC 61851 makes x either 0 or at least the connector's minimum (6 A).

The rule, in two passes:
1. *Admission*: walk the sessions by priority class (highest first), running sessions before waiting
   ones, most urgent first; admit a session if its minimum fits everywhere on its path (a waiting one
   needs an extra start margin so it does not toggle). Those not admitted get 0 (paused).
2. *Water-filling* per priority class, highest first: raise every admitted session of the class along
   a common level L, x_c = clamp(L, min_c, demand_c) — max-min fair, so equal demands get equal shares
   and a session that wants less frees the rest for others. When a node-phase (or node power) runs
   out at level L, the sessions under it freeze there; the others keep rising. Lower classes only get
   what the higher ones leave. No round-robin, no first-come-first-served.

Constraints are keyed ``node * KEYS_PER_NODE + phase`` (POWER for the node's power). Their totals
are summed bottom-up over the tree; binding levels sit in a heap seeded with cheap lower bounds and
are computed exactly only for the constraints that reach its top, then recomputed lazily (a level can
only rise when a member freezes below its demand). docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import ctypes
import heapq
import importlib.util
import math
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.site import KEYS_PER_NODE, POWER, Site

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Demand:
    """One connector's request to the allocator for this cycle."""

    index: int
    lo_a: float
    """Minimum current when charging at all (IEC 61851: 6 A)."""
    hi_a: float
    """What the session would take, capped by charger, EV and ramp."""
    phases: tuple[int, ...]
    """Grid phases this connector loads."""
    rank: int
    """Priority class: higher is served first."""
    laxity_s: float
    """Slack before the session can no longer meet its target; smaller is more urgent."""
    running: bool
    start_margin_a: float = 0.0


def _level(members: list[tuple[int, float]], active: list[bool], lo: list[float], hi: list[float], rem: float) -> float:
    """Highest L at which sum w * (clamp(L, lo, hi) - lo) over active members stays within rem."""
    rem = max(rem, 0.0)
    events: list[tuple[float, float]] = []
    total = 0.0
    for i, w in members:
        if active[i]:
            events.append((lo[i], w))
            events.append((hi[i], -w))
            total += w * (hi[i] - lo[i])
    if total <= rem + EPS:
        return math.inf
    if len(events) == 2:
        return events[0][0] + rem / events[0][1]
    if len(events) == 4 and events[0][0] == events[2][0]:
        # Two members rising from the same minimum (two sockets on one charge point): closed form.
        base, w1, w2 = events[0][0], events[0][1], events[2][1]
        level = base + rem / (w1 + w2)
        first_full = min(events[1][0], events[3][0])
        if level <= first_full:
            return level
        w_full, w_rest = (w1, w2) if events[1][0] <= events[3][0] else (w2, w1)
        return base + (rem - w_full * (first_full - base)) / w_rest
    events.sort()
    level = events[0][0]
    used = 0.0
    slope = 0.0
    for position, delta in events:
        if position > level:
            grown = used + slope * (position - level)
            if grown >= rem:
                return level + (rem - used) / slope
            used, level = grown, position
        slope += delta
    return level


def allocate(site: Site, rem: list[float], demands: Sequence[Demand]) -> dict[int, float]:
    """Current per connector index for every demand (0 = paused); ``rem`` is consumed in place.

    Runs the compiled core when it is built (see ``_native``), else the Python reference below; both
    give the same result (tests/test_protection_property.py compares them).
    """
    order = sorted(demands, key=lambda d: (-d.rank, not d.running, d.laxity_s, d.index))
    if _NATIVE is None:
        return allocate_python(site, rem, order)
    return _allocate_native(_NATIVE, site, rem, order)


def allocate_python(site: Site, rem: list[float], demands: Sequence[Demand]) -> dict[int, float]:
    """The reference implementation; ``demands`` in admission order (as ``allocate`` sorts them).

    ``rem[n * KEYS_PER_NODE + p]`` is node n's remaining capacity on phase p (A), and
    ``rem[n * KEYS_PER_NODE + POWER]`` its remaining power (W, math.inf when unlimited), after
    uncontrolled load, margins and fixed loads.
    """
    result: dict[int, float] = {}
    admitted: list[tuple[Demand, tuple[tuple[int, float], ...]]] = []
    for d in demands:
        if d.hi_a < d.lo_a - EPS or d.lo_a <= 0.0:
            result[d.index] = 0.0
            continue
        need_a = d.lo_a + (0.0 if d.running else d.start_margin_a) - EPS
        keys = site.constraint_keys(d.index, d.phases)
        fits = True
        for k, w in keys:
            if rem[k] < need_a * w:
                fits = False
                break
        if not fits:
            result[d.index] = 0.0
            continue
        lo_a = d.lo_a
        for k, w in keys:
            rem[k] -= lo_a * w
        admitted.append((d, keys))

    classes: dict[int, list[tuple[Demand, tuple[tuple[int, float], ...]]]] = {}
    for item in admitted:
        classes.setdefault(item[0].rank, []).append(item)
    for rank in sorted(classes, reverse=True):
        _fill(site, rem, classes[rank], result)
    return result


def _fill(
    site: Site,
    rem: list[float],
    members: list[tuple[Demand, tuple[tuple[int, float], ...]]],
    result: dict[int, float],
) -> None:
    """Max-min fair water-filling of one priority class above its admitted minimums.

    Constraint totals are summed bottom-up over the tree; the members of a constraint are read from
    its node's subtree only when that constraint reaches the top of the heap.
    """
    count = len(members)
    connectors = site.connectors
    nodes = site.nodes
    voltage_v = site.voltage_v
    lo = [d.lo_a for d, _ in members]
    hi = [max(d.hi_a, d.lo_a) for d, _ in members]
    active = [hi[i] > lo[i] + EPS for i in range(count)]
    local = {d.index: i for i, (d, _) in enumerate(members)}
    phases = [d.phases for d, _ in members]
    size = len(nodes) * KEYS_PER_NODE
    totals = [0.0] * size
    """Per constraint: what its still-active members would add at full demand."""
    weights = [0.0] * size
    for i, (d, _) in enumerate(members):
        if not active[i]:
            continue
        span = hi[i] - lo[i]
        base = connectors[d.index].node * KEYS_PER_NODE
        for p in d.phases:
            totals[base + p] += span
            weights[base + p] += 1.0
        per_amp_w = voltage_v * len(d.phases)
        totals[base + POWER] += per_amp_w * span
        weights[base + POWER] += per_amp_w
    for node in reversed(nodes):
        if node.parent is not None:
            child = node.index * KEYS_PER_NODE
            parent = node.parent * KEYS_PER_NODE
            for j in range(KEYS_PER_NODE):
                totals[parent + j] += totals[child + j]
                weights[parent + j] += weights[child + j]

    built: dict[int, list[tuple[int, float]]] = {}

    def key_members(k: int) -> list[tuple[int, float]]:
        """Class members under constraint k (active or not: callers check), built once per cycle
        from the children's lists."""
        out = built.get(k)
        if out is not None:
            return out
        slot = k % KEYS_PER_NODE
        node = nodes[k // KEYS_PER_NODE]
        out = []
        if node.children:
            for child in node.children:
                out.extend(key_members(child * KEYS_PER_NODE + slot))
        else:
            for c in node.connectors:
                i = local.get(c)
                if i is None:
                    continue
                if slot == POWER:
                    out.append((i, voltage_v * len(phases[i])))
                elif slot in phases[i]:
                    out.append((i, 1.0))
        built[k] = out
        return out

    # Seed the heap with a cheap lower bound of each constraint's level (every member rising from the
    # lowest minimum); the exact level is computed only when the constraint reaches the top. Levels
    # only rise as members freeze, so a stale exact level is a lower bound as well.
    lo_min = min(lo, default=0.0)
    heap: list[tuple[float, int, bool]] = [
        (lo_min + max(rem[k], 0.0) / weights[k], k, False)
        for k in range(size)
        if weights[k] > 0.0 and totals[k] > rem[k] + EPS
    ]
    heapq.heapify(heap)
    dirty: set[int] = set()
    x = list(lo)
    while heap:
        level, k, exact = heapq.heappop(heap)
        if totals[k] <= rem[k] + EPS:
            continue  # what its active members still want now fits: it no longer binds
        if not exact or k in dirty:
            dirty.discard(k)
            heapq.heappush(heap, (_level(key_members(k), active, lo, hi, rem[k]), k, True))
            continue
        for i, _ in key_members(k):
            if not active[i]:
                continue
            value = min(max(level, lo[i]), hi[i])
            x[i] = value
            active[i] = False
            extra = value - lo[i]
            span = hi[i] - lo[i]
            for k2, w in members[i][1]:
                rem[k2] -= w * extra
                totals[k2] -= w * span
            if value < hi[i] - EPS:
                # Frozen below its demand: every other constraint it is in may now bind later.
                dirty.update(site.constraints(members[i][0].index, phases[i]).keys)
    for i in range(count):
        if active[i]:
            x[i] = hi[i]
            extra = hi[i] - lo[i]
            for k2, w in members[i][1]:
                rem[k2] -= w * extra
        result[members[i][0].index] = x[i]


def _load_native() -> ctypes.CDLL | None:
    """The compiled core (controller/_allocc.c) if it was built and not switched off."""
    if os.environ.get("PLAZA_EMS_PURE_PYTHON"):
        return None
    spec = importlib.util.find_spec("controller._allocc")
    if spec is None or spec.origin is None:
        return None
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    c_double_p = ctypes.POINTER(ctypes.c_double)
    c_int_p = ctypes.POINTER(ctypes.c_int)
    library.plaza_allocate.restype = ctypes.c_int
    library.plaza_allocate.argtypes = [
        ctypes.c_int,
        c_double_p,
        c_double_p,
        c_double_p,
        c_int_p,
        c_int_p,
        c_int_p,
        c_double_p,
        ctypes.c_int,
        c_double_p,
        c_double_p,
    ]
    return library


def _allocate_native(library: ctypes.CDLL, site: Site, rem: list[float], order: list[Demand]) -> dict[int, float]:
    count = len(order)
    lo = array("d", [d.lo_a for d in order])
    hi = array("d", [d.hi_a for d in order])
    need = array("d", [d.lo_a + (0.0 if d.running else d.start_margin_a) - EPS for d in order])
    rank = array("i", [d.rank for d in order])
    kptr = array("i", [0])
    kidx = array("i")
    kw = array("d")
    for d in order:
        constraints = site.constraints(d.index, d.phases)
        kidx.extend(constraints.keys)
        kw.extend(constraints.weights)
        kptr.append(len(kidx))
    rem_c = array("d", rem)
    x = array("d", bytes(8 * max(count, 1)))
    status = library.plaza_allocate(
        count,
        _ptr(lo, ctypes.c_double),
        _ptr(hi, ctypes.c_double),
        _ptr(need, ctypes.c_double),
        _ptr(rank, ctypes.c_int),
        _ptr(kptr, ctypes.c_int),
        _ptr(kidx, ctypes.c_int),
        _ptr(kw, ctypes.c_double),
        len(rem_c),
        _ptr(rem_c, ctypes.c_double),
        _ptr(x, ctypes.c_double),
    )
    if status != 0:
        return allocate_python(site, rem, order)
    rem[:] = rem_c.tolist()
    return {d.index: x[i] for i, d in enumerate(order)}


CType = TypeVar("CType", ctypes.c_double, ctypes.c_int)


def _ptr(values: array[Any], ctype: type[CType]) -> ctypes._Pointer[CType]:
    """A C pointer to an array's buffer (an empty array still gets a valid pointer)."""
    if len(values) == 0:
        values.append(0)
    return ctypes.cast((ctype * len(values)).from_buffer(values), ctypes.POINTER(ctype))


_NATIVE = _load_native()
