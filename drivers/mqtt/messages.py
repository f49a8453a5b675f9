"""The cloud link's messages: topics, inbound parsing and validation, outbound builders, plan → targets.

Pure functions, no I/O. Inbound bytes (a plan or a command) become a typed frozen dataclass or a
``Rejected`` with a clear reason, checked in this order: size (before anything is parsed), topic (this
site and controller, a known kind), JSON (strict: NaN, Infinity and numbers that overflow to infinity are
refused), the ``schema`` field (kind and version), the JSON Schema in ``schemas/v1`` (types, ranges,
lengths), then what needs the site: its id, known connectors, batteries and nodes, a consistent time
window. Clamping to local limits is not done here: a plan is only intent and the controller caps it
(SPEC R1). Outbound builders produce the dicts the schemas describe. The interface is in docs/mqtt.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema

from controller.config import SiteConfig, walk_tree
from controller.image import ProcessImage, Quality
from controller.limits import RemoteLimits
from controller.program import CycleOutput
from controller.site import Site
from controller.targets import PriceCurve, Targets

VERSION = "v1"
PREFIX = "plaza/" + VERSION
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
COMMANDS = ("departure", "priority", "dso_limit", "capacity_frame", "prices")
INBOUND_KINDS = ("plan", *(f"cmd/{name}" for name in COMMANDS))
OUTBOUND_KINDS = ("state", "telemetry", "session", "alarm", "ack", "snapshot")
MAX_PLAN_DURATION_S = 7 * 86_400


# -- topics ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one controller: ``plaza/v1/{site}/{controller}/…``."""

    site: str
    controller: str

    @property
    def base(self) -> str:
        return f"{PREFIX}/{self.site}/{self.controller}"

    def of(self, kind: str) -> str:
        """``state``, ``telemetry``, ``sessions``, ``alarms``, ``ack``, ``plan``, ``cmd/{name}``."""
        return f"{self.base}/{kind}"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return (self.of("plan"), self.of("cmd/+"))


# -- inbound ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    id: str | None = None
    """The message's id when it could be read, so the cloud can match the ack."""


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    site: str
    created_ts: float
    valid_from_ts: float
    valid_to_ts: float
    step_s: int
    connectors: Mapping[str, tuple[float | None, ...]]
    """Connector id -> per-phase current target per step (A; DC as its AC-side equivalent); None: no target."""
    batteries: Mapping[str, tuple[float | None, ...]]
    """Battery id -> power per step (W, + charging)."""
    site_import_cap_w: tuple[float | None, ...] | None
    snapshot_id: str | None = None
    """The site snapshot the optimiser made this plan from (for the cloud's bookkeeping; not used here)."""

    @property
    def steps(self) -> int:
        return round((self.valid_to_ts - self.valid_from_ts) / self.step_s)


@dataclass(frozen=True, slots=True)
class DepartureCommand:
    id: str
    created_ts: float
    connector: str | None
    id_token: str | None
    departure_ts: float
    energy_wh: float | None


@dataclass(frozen=True, slots=True)
class PriorityCommand:
    id: str
    created_ts: float
    connector: str | None
    id_token: str | None
    priority: int
    until_ts: float | None


@dataclass(frozen=True, slots=True)
class DsoLimitCommand:
    id: str
    created_ts: float
    node: str | None
    """None: the node the site's DSO input acts on."""
    limit_pct: float
    valid_from_ts: float | None
    valid_to_ts: float


@dataclass(frozen=True, slots=True)
class CapacityFrame:
    node: str
    start_ts: float
    end_ts: float
    limit_w: float


@dataclass(frozen=True, slots=True)
class CapacityFrameCommand:
    id: str
    created_ts: float
    frames: tuple[CapacityFrame, ...]


@dataclass(frozen=True, slots=True)
class PricesCommand:
    """Day-ahead prices (EUR/MWh) in steps of ``step_s`` from ``start_ts``: for the local fallback schedule."""

    id: str
    created_ts: float
    area: str | None
    start_ts: float
    step_s: int
    prices_eur_mwh: tuple[float, ...]

    def curve(self) -> PriceCurve:
        starts = tuple(self.start_ts + i * self.step_s for i in range(len(self.prices_eur_mwh)))
        return PriceCurve(starts, self.prices_eur_mwh, float(self.step_s))


Command = DepartureCommand | PriorityCommand | DsoLimitCommand | CapacityFrameCommand | PricesCommand
Inbound = Plan | Command


@dataclass(frozen=True, slots=True)
class SiteIds:
    """What the semantic checks need to know of the site: its id and the ids of what a message may name."""

    site: str
    connectors: frozenset[str]
    batteries: frozenset[str]
    nodes: frozenset[str]
    dso_node: str | None

    @classmethod
    def from_config(cls, config: SiteConfig) -> SiteIds:
        walks = list(walk_tree(config.tree))
        return cls(
            site=config.site.id,
            connectors=frozenset(c.id for w in walks for c in w.node.connectors),
            batteries=frozenset(b.id for b in config.batteries),
            nodes=frozenset(w.node.id for w in walks),
            dso_node=config.dso.node if config.dso is not None else None,
        )


class _SemanticError(Exception):
    """A semantic check failed; the message says which."""


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """The JSON Schema validator of one message kind (``plan``, ``cmd/departure``, ``telemetry``, …)."""
    name = kind.replace("/", "-") + ".schema.json"
    text = resources.files("drivers.mqtt").joinpath("schemas", VERSION, name).read_text(encoding="utf-8")
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


def loads_strict(payload: bytes) -> Any:
    """JSON without NaN/Infinity and without numbers that only fit as infinity."""
    return json.loads(payload, parse_float=_finite_float, parse_constant=_no_constant)


def json_object(payload: bytes) -> dict[str, Any] | str:
    """The payload as a JSON object, or why it is not one (strict: no NaN/Infinity, no overflow)."""
    try:
        data = loads_strict(payload)
    except (UnicodeDecodeError, ValueError) as err:
        return f"malformed JSON: {err}"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    if not isinstance(data, dict):
        return f"malformed message: a JSON object expected, got {type(data).__name__}"
    return data


def message_id(data: Mapping[str, Any]) -> str | None:
    """The message's ``id`` if it is one to echo (the ack's schema wants 1-128 characters), else None."""
    raw_id = data.get("id")
    return raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None


def parse_inbound(
    topic: str,
    payload: bytes,
    *,
    topics: Topics,
    site: SiteIds,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Inbound | Rejected:
    """One message from the cloud, checked from the cheapest to the dearest test."""
    if len(payload) > max_payload_bytes:
        return Rejected(f"payload too large: {len(payload)} bytes > {max_payload_bytes}")
    prefix = topics.base + "/"
    if not topic.startswith(prefix):
        return Rejected(f"topic {topic!r} is not for site {topics.site!r} controller {topics.controller!r}")
    kind = topic[len(prefix) :]
    if kind not in INBOUND_KINDS:
        return Rejected(f"unknown topic {kind!r} (expected plan or cmd/{{{','.join(COMMANDS)}}})")
    data = json_object(payload)
    if isinstance(data, str):
        return Rejected(data)
    msg_id = message_id(data)
    schema = data.get("schema")
    expected = f"{PREFIX}/{kind}"
    if not isinstance(schema, str):
        return Rejected(f"missing schema (expected {expected!r})", msg_id)
    if schema != expected:
        parts = schema.split("/")
        if len(parts) >= 2 and parts[0] == "plaza" and parts[1] != VERSION:
            return Rejected(f"unsupported schema version {schema!r} (this controller speaks {PREFIX})", msg_id)
        return Rejected(f"wrong schema {schema!r} on topic {kind!r} (expected {expected!r})", msg_id)
    error = jsonschema.exceptions.best_match(validator(kind).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return Rejected(f"schema-invalid at {where}: {error.message[:300]}", msg_id)
    try:
        return _build(kind, data, site)
    except _SemanticError as err:
        return Rejected(str(err), msg_id)


def parse_ts(text: str) -> float:
    """An ISO 8601 UTC time (the schemas allow only ``Z`` or ``+00:00``) as epoch seconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:  # the schema's pattern lets through e.g. month 13 or second 60
        raise _SemanticError(f"time {text!r} is not a valid date-time: {err}") from None
    if moment.utcoffset() is None or moment.utcoffset() != UTC.utcoffset(None):
        raise _SemanticError(f"time {text!r} is not UTC")
    return moment.timestamp()


def _opt_ts(text: str | None) -> float | None:
    return None if text is None else parse_ts(text)


def _known(kind: str, value: str | None, known: frozenset[str]) -> None:
    if value is not None and value not in known:
        raise _SemanticError(f"unknown {kind} {value!r}")


def _build(kind: str, data: dict[str, Any], site: SiteIds) -> Inbound:
    created = parse_ts(data["created"])
    if kind == "plan":
        return _plan(data, created, site)
    if kind == "cmd/departure":
        _known("connector", data.get("connector"), site.connectors)
        return DepartureCommand(
            id=data["id"],
            created_ts=created,
            connector=data.get("connector"),
            id_token=data.get("id_token"),
            departure_ts=parse_ts(data["departure"]),
            energy_wh=data.get("energy_wh"),
        )
    if kind == "cmd/priority":
        _known("connector", data.get("connector"), site.connectors)
        return PriorityCommand(
            id=data["id"],
            created_ts=created,
            connector=data.get("connector"),
            id_token=data.get("id_token"),
            priority=int(data["priority"]),  # the schema's "integer" also admits 5.0
            until_ts=_opt_ts(data.get("until")),
        )
    if kind == "cmd/dso_limit":
        node = data.get("node")
        _known("node", node, site.nodes)
        if node is None and site.dso_node is None:
            raise _SemanticError("no node given and the site has no DSO input to take it from")
        valid_from, valid_to = _opt_ts(data.get("valid_from")), parse_ts(data["valid_to"])
        if valid_from is not None and valid_to <= valid_from:
            raise _SemanticError("valid_to must be after valid_from")
        return DsoLimitCommand(data["id"], created, node, float(data["limit_pct"]), valid_from, valid_to)
    if kind == "cmd/prices":
        return PricesCommand(
            data["id"],
            created,
            data.get("area"),
            parse_ts(data["start"]),
            int(data["step_s"]),
            tuple(float(p) for p in data["prices_eur_mwh"]),
        )
    frames = []
    for i, raw in enumerate(data["frames"]):
        _known("node", raw["node"], site.nodes)
        start, end = parse_ts(raw["start"]), parse_ts(raw["end"])
        if end <= start:
            raise _SemanticError(f"frames/{i}: end must be after start")
        frames.append(CapacityFrame(raw["node"], start, end, float(raw["limit_w"])))
    return CapacityFrameCommand(data["id"], created, tuple(frames))


def _plan(data: dict[str, Any], created: float, site: SiteIds) -> Plan:
    if data["site"] != site.site:
        raise _SemanticError(f"plan for site {data['site']!r}, this is site {site.site!r}")
    valid_from, valid_to, step_s = parse_ts(data["valid_from"]), parse_ts(data["valid_to"]), int(data["step_s"])
    duration = valid_to - valid_from
    if duration <= 0:
        raise _SemanticError("valid_to must be after valid_from")
    if duration > MAX_PLAN_DURATION_S:
        raise _SemanticError(f"plan spans {duration / 86_400:.1f} days, at most {MAX_PLAN_DURATION_S // 86_400}")
    steps = duration / step_s
    if abs(steps - round(steps)) > 1e-6:
        raise _SemanticError(f"valid_to - valid_from ({duration:g} s) is not a whole number of steps of {step_s} s")
    n = round(steps)

    def series(path: str, values: Sequence[float | None]) -> tuple[float | None, ...]:
        if len(values) != n:
            raise _SemanticError(f"{path}: {len(values)} steps, the window has {n}")
        return tuple(None if v is None else float(v) for v in values)

    for connector in data["connectors"]:
        _known("connector", connector, site.connectors)
    batteries = data.get("batteries", {})
    for battery in batteries:
        _known("battery", battery, site.batteries)
    cap = data.get("site_import_cap_w")
    return Plan(
        id=data["id"],
        site=data["site"],
        created_ts=created,
        valid_from_ts=valid_from,
        valid_to_ts=valid_to,
        step_s=step_s,
        connectors={c: series(f"connectors/{c}", v) for c, v in data["connectors"].items()},
        batteries={b: series(f"batteries/{b}", v) for b, v in batteries.items()},
        site_import_cap_w=None if cap is None else series("site_import_cap_w", cap),
        snapshot_id=data.get("snapshot_id"),
    )


def plan_targets(plan: Plan, now_ts: float) -> Targets | None:
    """The targets of the step in force at ``now_ts``; None outside [valid_from, valid_to)."""
    if not plan.valid_from_ts <= now_ts < plan.valid_to_ts:
        return None
    step = min(plan.steps - 1, int((now_ts - plan.valid_from_ts) // plan.step_s))
    cap = plan.site_import_cap_w[step] if plan.site_import_cap_w is not None else None
    return Targets(
        source="plan",
        connectors={c: v[step] for c, v in plan.connectors.items() if v[step] is not None},  # type: ignore[misc]
        batteries={b: v[step] for b, v in plan.batteries.items() if v[step] is not None},  # type: ignore[misc]
        site_import_cap_w=cap,
        reference=plan.id,
    )


# -- outbound --------------------------------------------------------------------------------------


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; a non-finite number is a bug in the builder and raises ValueError."""
    text = json.dumps(message, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (an inbound "\\ud800" echoed in an ack): keep it escaped
        return json.dumps(message, allow_nan=False, separators=(",", ":")).encode()


def _header(kind: str, topics: Topics, ts: float) -> dict[str, Any]:
    return {"schema": f"{PREFIX}/{kind}", "site": topics.site, "controller": topics.controller, "ts": iso(ts)}


def state_message(topics: Topics, ts: float, state: Literal["online", "offline"], software: str = "") -> dict[str, Any]:
    message = _header("state", topics, ts) | {"state": state}
    if software:
        message["software"] = software
    return message


def _num(value: float, lo: float, hi: float) -> float | None:
    """A reading as telemetry shows it: None when not finite, clipped to the schema's range otherwise."""
    return min(hi, max(lo, round(value, 3))) if math.isfinite(value) else None


def _triple(values: Sequence[float], lo: float = 0.0, hi: float = 1000.0) -> list[float] | None:
    out = [_num(v, lo, hi) for v in values]
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


_QUALITY = {Quality.GOOD: "good", Quality.STALE: "stale", Quality.BAD: "bad"}


def telemetry_message(
    topics: Topics,
    site: Site,
    image: ProcessImage,
    output: CycleOutput,
    *,
    targets: Targets | None = None,
    price_eur_mwh: float | None = None,
) -> dict[str, Any]:
    """One cycle as the cloud sees it: per node, connector, battery and meter what was measured and decided."""
    nodes: dict[str, Any] = {}
    for node in site.nodes:
        limit = output.limits[node.index]
        meter = image.meters.get(node.meter) if node.meter is not None else None
        uncontrolled = output.uncontrolled.current_a[node.index] if output.uncontrolled is not None else None
        nodes[node.id] = {
            "limit_a": _num(limit.current_a, 0, 1000) or 0.0,
            "limit_w": _num(limit.power_w, 0, 1e8),
            "limit_reason": limit.reason[:64],
            "current_a": _triple(meter.current_a) if meter is not None and meter.quality == Quality.GOOD else None,
            "uncontrolled_a": None if uncontrolled is None else _triple(uncontrolled),
        }
    connectors: dict[str, Any] = {}
    for i, connector in enumerate(site.connectors):
        reading = image.connectors[i]
        setpoint = output.setpoints[i]
        target = targets.connectors.get(connector.id) if targets is not None else None
        connectors[connector.id] = {
            "state": reading.state[:4] if reading is not None else None,
            "quality": _QUALITY[reading.quality] if reading is not None else "absent",
            "current_a": _triple(reading.current_a) if reading is not None else None,
            "power_w": _num(reading.power_w, 0, 1e8) if reading is not None else None,
            "energy_wh": _num(reading.energy_wh, 0, 1e7) if reading is not None else None,
            "setpoint_a": _num(setpoint.current_a, 0, 1000) or 0.0,
            "setpoint_w": None if setpoint.power_w is None else _num(setpoint.power_w, 0, 1e8),
            "target_a": None if target is None else _num(target, 0, 1000),
        }
    batteries: dict[str, Any] = {}
    for i, battery in enumerate(site.batteries):
        b_reading = image.batteries[i]
        command = output.batteries[i]
        batteries[battery.id] = {
            "quality": _QUALITY[b_reading.quality] if b_reading is not None else "absent",
            "soc_pct": _num(b_reading.soc_pct, 0, 100) if b_reading is not None else None,
            "power_w": _num(b_reading.power_w, -1e7, 1e7) if b_reading is not None else None,
            "setpoint_w": _num(command.power_w, -1e7, 1e7) or 0.0,
            "standby": command.standby,
        }
    meters = {
        meter_id: {
            "quality": _QUALITY[reading.quality],
            "current_a": [_num(v, -1e5, 1e5) or 0.0 for v in reading.current_a],
            "power_w": _num(reading.power_w, -1e8, 1e8) or 0.0,
        }
        for meter_id, reading in image.meters.items()
    }
    return _header("telemetry", topics, output.t) | {
        "mode": output.mode.value,
        "dso_pct": _num(output.dso_pct, 0, 100) or 0.0,
        "intent_source": targets.source if targets is not None else "none",
        "intent_reference": targets.reference[:128] if targets is not None else "",
        "price_eur_mwh": None if price_eur_mwh is None else _num(price_eur_mwh, -1e4, 1e4),
        "nodes": nodes,
        "connectors": connectors,
        "batteries": batteries,
        "meters": meters,
    }


SessionEventKind = Literal["start", "update", "stop"]


def session_event(
    topics: Topics,
    *,
    event_id: str,
    ts: float,
    event: SessionEventKind,
    session_id: str,
    connector: str,
    id_token: str | None,
    energy_wh: float,
    departure_ts: float | None = None,
    energy_target_wh: float | None = None,
    reason: str = "",
) -> dict[str, Any]:
    message = _header("session", topics, ts) | {
        "event_id": event_id,
        "event": event,
        "session_id": session_id,
        "connector": connector,
        "id_token": id_token,
        "energy_wh": round(_num(energy_wh, 0, 1e7) or 0.0, 1),
        "departure": None if departure_ts is None or not math.isfinite(departure_ts) else iso(departure_ts),
        "energy_target_wh": None if energy_target_wh is None else _num(energy_target_wh, 0, 1e7),
    }
    if reason:
        message["reason"] = reason[:128]
    return message


def alarm_message(
    topics: Topics,
    *,
    event_id: str,
    ts: float,
    alarm: str,
    kind: str,
    severity: Literal["info", "warning", "critical"],
    detail: str,
    subject: str = "",
) -> dict[str, Any]:
    message = _header("alarm", topics, ts) | {
        "event_id": event_id,
        "alarm": alarm,
        "kind": kind,
        "severity": severity,
        "detail": detail[:1024],
    }
    if subject:
        message["subject"] = subject
    return message


@dataclass(frozen=True, slots=True)
class Clamp:
    """One target the controller could not follow as asked (e.g. a connector's plan above its node's room)."""

    target: str
    requested: float
    applied: float
    reason: str


def ack_message(
    topics: Topics,
    *,
    event_id: str,
    ts: float,
    message_id: str | None,
    topic: str,
    accepted: bool,
    reason: str = "",
    clamped: Sequence[Clamp] = (),
) -> dict[str, Any]:
    return _header("ack", topics, ts) | {
        "event_id": event_id,
        "id": message_id,
        "topic": topic[:256],
        "accepted": accepted,
        "reason": reason[:1024],
        "clamped": [
            {"target": c.target, "requested": c.requested, "applied": c.applied, "reason": c.reason} for c in clamped
        ],
    }


# -- the site snapshot, for the optimiser -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotSession:
    """An open session as the snapshot reports it."""

    started_ts: float
    energy_wh: float
    """Delivered so far in this session."""
    energy_target_wh: float | None
    departure_ts: float | None
    min_energy_wh: float = 0.0
    priority: int
    max_power_w: float | None = None
    """The EV's own power limit when known."""


def site_structure(site: Site) -> dict[str, Any]:
    """What the optimiser plans for, as the snapshot's ``structure`` block.

    Limits are net of the site's margins (``margins.current_a``, ``margins.power_kw``): the controller
    keeps those below every limit, so a plan that used them could not be followed. A node is
    ``metered`` when uncontrolled load or PV is attached to it (the root when none is), which is where
    the optimiser applies the uncontrolled load it is told of.
    """
    margin_a = site.config.margins.current_a
    margin_w = site.config.margins.power_kw * 1000.0
    loaded = {load.node for load in site.loads} or {0}
    nodes = [
        {
            "id": node.id,
            "parent": site.nodes[node.parent].id if node.parent is not None else None,
            "limit_a": round(max(node.rating_a - margin_a, 1e-3), 3),
            "power_limit_w": None if node.power_limit_w is None else round(max(node.power_limit_w - margin_w, 0.0), 1),
            "power_limited": node.index in site.power_limited,
            "metered": node.index in loaded,
        }
        for node in site.nodes
    ]
    connectors = [
        {
            "id": c.id,
            "node": site.nodes[c.node].id,
            "dc": c.dc,
            "rotation": list(c.rotation),
            "min_current_a": c.min_current_a,
            "max_current_a": c.max_current_a,
            "min_power_w": round(c.min_power_w, 1),
            "max_power_w": round(c.max_power_w, 1),
            "voltage_v": site.voltage_v,
        }
        for c in site.connectors
    ]
    batteries = [
        {
            "id": b.id,
            "node": site.nodes[b.node].id,
            "capacity_wh": b.capacity_wh,
            "max_charge_w": b.max_charge_w,
            "max_discharge_w": b.max_discharge_w,
            "soc_min_pct": b.soc_min_pct,
            "soc_max_pct": b.soc_max_pct,
            "charge_efficiency": None,
            "discharge_efficiency": None,
        }
        for b in site.batteries
    ]
    frames = [
        {
            "node": site.nodes[f.node].id,
            "start_s_of_day": f.start_s_of_day,
            "end_s_of_day": f.end_s_of_day,
            "limit_w": round(max(f.limit_w - margin_w, 0.0), 1),
        }
        for f in site.capacity_frames
    ]
    dso = site.config.dso
    return {
        "timezone": str(site.timezone),
        "voltage_v": site.voltage_v,
        "dso_node": dso.node if dso is not None else None,
        "nodes": nodes,
        "connectors": connectors,
        "batteries": batteries,
        "capacity_frames": frames,
    }


def structure_hash(site_id: str, structure: Mapping[str, Any]) -> str:
    """A stable name of one site's structure: the optimiser keeps one problem per hash.

    The site id is part of it, so two sites of the same shape keep separate problems (and warm starts).
    """
    canonical = json.dumps([site_id, structure], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def snapshot_message(
    topics: Topics,
    *,
    snapshot_id: str,
    ts: float,
    reason: str,
    structure: Mapping[str, Any],
    structure_id: str,
    sessions: Mapping[str, SnapshotSession | None],
    battery_soc_pct: Mapping[str, float | None],
    uncontrolled_w: Mapping[str, float | None],
    peak_import_w: float | None,
    dso_pct: float,
    remote_limits: RemoteLimits | None,
    prices: PriceCurve | None,
) -> dict[str, Any]:
    """The site as the optimiser needs it: structure (with its hash) and the state to plan from now."""

    def session(s: SnapshotSession | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {
            "started": iso(s.started_ts),
            "energy_wh": round(_num(s.energy_wh, 0, 1e7) or 0.0, 1),
            "energy_target_wh": None if s.energy_target_wh is None else _num(s.energy_target_wh, 0, 1e7),
            "departure": None if s.departure_ts is None or not math.isfinite(s.departure_ts) else iso(s.departure_ts),
            "min_energy_wh": _num(s.min_energy_wh, 0, 1e7) or 0.0,
            "priority": min(9, max(0, s.priority)),
            "max_power_w": None if s.max_power_w is None else _num(s.max_power_w, 0, 1e8),
        }

    limits = remote_limits or RemoteLimits()
    state: dict[str, Any] = {
        "connectors": {c: session(s) for c, s in sessions.items()},
        "batteries": {b: {"soc_pct": None if v is None else _num(v, 0, 100)} for b, v in battery_soc_pct.items()},
        "nodes": {n: {"uncontrolled_w": None if v is None else _num(v, 0, 1e8)} for n, v in uncontrolled_w.items()},
        "peak_import_w": None if peak_import_w is None else _num(peak_import_w, 0, 1e8),
        "dso_pct": _num(dso_pct, 0, 100) or 0.0,
        "remote_limits": {
            "dso": [
                {
                    "node": d.node,
                    "limit_pct": d.limit_pct,
                    "valid_from": None if d.valid_from_ts is None else iso(d.valid_from_ts),
                    "valid_to": iso(d.valid_to_ts),
                }
                for d in limits.dso
            ],
            "capacity": [
                {"node": b.node, "start": iso(b.start_ts), "end": iso(b.end_ts), "limit_w": b.limit_w}
                for b in limits.capacity
            ],
        },
        "prices": None,
    }
    if prices is not None and prices.starts_ts:
        values = list(prices.prices_eur_mwh)[:MAX_SNAPSHOT_PRICES]
        state["prices"] = {
            "start": iso(prices.starts_ts[0]),
            "step_s": round(prices.step_s),
            "prices_eur_mwh": [_num(v, -1e4, 1e4) or 0.0 for v in values],
        }
    return {
        "schema": f"{PREFIX}/snapshot",
        "id": snapshot_id,
        "site": topics.site,
        "controller": topics.controller,
        "created": iso(ts),
        "reason": reason,
        "structure_hash": structure_id,
        "structure": dict(structure),
        "state": state,
    }


MAX_SNAPSHOT_PRICES = 672
"""At most a week of quarter-hour prices, as ``cmd/prices`` carries."""
