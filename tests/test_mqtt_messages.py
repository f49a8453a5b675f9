"""The cloud link's messages without a broker: outbound builders against the schema files, inbound parsing
and its reasons, plan -> targets, and a property test that nothing thrown at the parser escapes it."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drivers.mqtt
from controller.config import parse_config
from controller.image import ProcessImage, freeze
from controller.limits import NodeLimit
from controller.program import BatteryCommand, ConnectorSetpoint
from controller.targets import Targets
from drivers.mqtt.messages import (
    INBOUND_KINDS,
    CapacityFrame,
    CapacityFrameCommand,
    Clamp,
    DepartureCommand,
    DsoLimitCommand,
    Inbound,
    Plan,
    PricesCommand,
    PriorityCommand,
    Rejected,
    SiteIds,
    Topics,
    ack_message,
    alarm_message,
    encode,
    iso,
    parse_inbound,
    plan_targets,
    session_event,
    state_message,
    telemetry_message,
)
from tests.cycles import Ev, Plaza

SCHEMAS = Path(drivers.mqtt.__file__).parent / "schemas" / "v1"
CONNECTOR_MAX_A = 1000.0
"""The plan schema's bound on a connector target (A per phase)."""

SITE_YAML = """
site: {id: s1}
scan: {period_ms: 1000, stale_after_ms: 3000}
margins: {current_a: 0, power_kw: 0}
control: {ramp_up_a_per_s: 100}
fire_panel: {id: fire}
meters: [{id: m_grid}, {id: m_sub}]
dso: {id: dso, node: grid}
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: sub
      limit_a: 40
      meter: m_sub
      children:
        - {id: cp1, limit_a: 32, connectors: [{id: c1}]}
        - {id: cp2, limit_a: 32, connectors: [{id: c2, type: dc, max_power_kw: 20}]}
    - {id: cp3, limit_a: 32, connectors: [{id: c3}]}
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 50, max_discharge_kw: 50}
"""
SITE = SiteIds.from_config(parse_config(SITE_YAML).config)
TOPICS = Topics("s1", "main")
CREATED = "2030-01-01T00:00:00Z"
P0 = 1_893_456_000.0  # 2030-01-01T00:00:00Z
STEP = 900


# -- helpers ---------------------------------------------------------------------------------------


def _schema_validator(kind: str) -> jsonschema.protocols.Validator:
    """Straight from the file, not through ``messages.validator``: the file is the contract with the cloud."""
    schema = json.loads((SCHEMAS / f"{kind.replace('/', '-')}.schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


VALIDATORS = {kind: _schema_validator(kind) for kind in ("state", "telemetry", "session", "alarm", "ack")}


def _refuse_constant(text: str) -> float:
    raise AssertionError(f"{text} in outbound JSON")


def wire(kind: str, message: dict[str, Any]) -> Any:
    """Encode as the link does, parse back strictly (NaN/Infinity fail), validate against the schema file."""
    text = encode(message).decode("utf-8")
    data = json.loads(text, parse_constant=_refuse_constant)
    VALIDATORS[kind].validate(data)
    return data


def parse(kind: str, data: dict[str, Any] | bytes, site: SiteIds = SITE) -> Inbound | Rejected:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_inbound(TOPICS.of(kind), payload, topics=TOPICS, site=site)


def rejected(result: Inbound | Rejected) -> str:
    assert isinstance(result, Rejected), result
    assert result.reason
    return result.reason


def image_of(p: Plaza) -> ProcessImage:
    """The image the last cycle ran on (the harness restamps live devices at ``p.t`` and so does this)."""
    return freeze(
        p.snapshot, p.t, p.site.stale_after_s, tuple(c.id for c in p.site.connectors),
        tuple(b.id for b in p.site.batteries),
    )  # fmt: skip


def run_site(targets: Targets | None = None, cycles: int = 5, **readings: Any) -> Plaza:
    p = Plaza.from_yaml(SITE_YAML)
    p.snapshot.targets = targets
    defaults: dict[str, Any] = {
        "meters": {"m_grid": (30.0, 31.0, 32.0), "m_sub": (20.0, 21.0, 22.0)},
        "evs": {
            "c1": Ev(current_a=(10.0, 10.0, 10.0), energy_wh=1234.5, id_token="TOKEN1"),
            "c2": Ev(current_a=(5.0, 5.0, 5.0)),
            "c3": None,
        },
        "battery": {"bess": (50.0, 1000.0)},
        "dso_pct": 60.0,
    }
    for _ in range(cycles):
        p.cycle(**(defaults | readings))
    return p


# -- outbound --------------------------------------------------------------------------------------


def test_telemetry_of_a_real_cycle_carries_what_was_measured_and_decided() -> None:
    p = run_site(Targets("plan", {"c1": 10.0}, batteries={"bess": 0.0}, reference="plan-7"))
    out = p.last
    assert out is not None
    image = image_of(p)
    msg = wire("telemetry", telemetry_message(TOPICS, p.site, image, out, targets=image.targets, price_eur_mwh=55.5))

    assert msg["schema"] == "plaza/v1/telemetry"
    assert (msg["site"], msg["controller"]) == ("s1", "main")
    assert msg["ts"] == iso(out.t) == "2026-01-01T00:00:05.000Z"
    assert msg["mode"] == "normal"
    assert msg["dso_pct"] == 60.0
    assert (msg["intent_source"], msg["intent_reference"]) == ("plan", "plan-7")
    assert msg["price_eur_mwh"] == 55.5

    nodes = msg["nodes"]
    assert set(nodes) == {"grid", "sub", "cp1", "cp2", "cp3"}
    assert nodes["grid"]["limit_a"] == pytest.approx(60.0), "the DSO's 60 % of 100 A"
    assert nodes["grid"]["limit_reason"] == "dso"
    assert nodes["grid"]["limit_w"] is None, "no power limit: infinite, shown as null"
    assert nodes["sub"]["limit_a"] == pytest.approx(40.0)
    assert nodes["grid"]["current_a"] == [30.0, 31.0, 32.0]
    assert nodes["sub"]["current_a"] == [20.0, 21.0, 22.0]
    assert nodes["cp1"]["current_a"] is None, "no meter"
    assert out.uncontrolled is not None
    for node in p.site.nodes:
        assert nodes[node.id]["limit_a"] == pytest.approx(out.limits[node.index].current_a)
        assert nodes[node.id]["uncontrolled_a"] == pytest.approx(out.uncontrolled.current_a[node.index], abs=1e-3)

    conns = msg["connectors"]
    setpoints = {s.connector: s for s in out.setpoints}
    assert conns["c1"] == {
        "state": "C2", "quality": "good", "current_a": [10.0, 10.0, 10.0], "power_w": 6900.0,
        "energy_wh": 1234.5, "setpoint_a": 10.0, "setpoint_w": None, "target_a": 10.0,
    }  # fmt: skip
    assert setpoints["c1"].current_a == pytest.approx(10.0), "the plan's target caps c1"
    assert conns["c2"]["setpoint_a"] == pytest.approx(setpoints["c2"].current_a)
    assert conns["c2"]["setpoint_w"] == pytest.approx(setpoints["c2"].power_w), "DC: the power limit too"
    assert conns["c2"]["setpoint_w"] is not None
    assert conns["c2"]["target_a"] is None
    assert conns["c3"]["state"] == "A1"
    assert conns["c3"]["setpoint_a"] == 0.0

    assert msg["batteries"]["bess"] == {
        "quality": "good", "soc_pct": 50.0, "power_w": 1000.0,
        "setpoint_w": out.batteries[0].power_w, "standby": out.batteries[0].standby,
    }  # fmt: skip
    assert msg["meters"]["m_grid"] == {"quality": "good", "current_a": [30.0, 31.0, 32.0], "power_w": 93.0 * 230}


def test_telemetry_mode_and_intent_source_follow_the_cycle() -> None:
    p = run_site(Targets("fallback", {"c3": 6.0}, reference="cheap-hour"))
    p.cycle(contacts={"fire": False})
    assert p.last is not None
    image = image_of(p)
    msg = wire("telemetry", telemetry_message(TOPICS, p.site, image, p.last, targets=image.targets))
    assert msg["mode"] == "fire"
    assert all(c["setpoint_a"] == 0.0 for c in msg["connectors"].values())
    assert (msg["intent_source"], msg["intent_reference"]) == ("fallback", "cheap-hour")
    assert msg["connectors"]["c3"]["target_a"] == 6.0
    assert msg["price_eur_mwh"] is None

    none = wire("telemetry", telemetry_message(TOPICS, p.site, image, p.last))
    assert (none["intent_source"], none["intent_reference"]) == ("none", "")
    assert all(c["target_a"] is None for c in none["connectors"].values())


def test_telemetry_of_non_finite_and_out_of_range_values_is_strict_valid_json() -> None:
    nan, inf = math.nan, math.inf
    p = run_site(
        Targets("plan", {"c1": nan, "c3": inf}, reference="x" * 300),
        meters={"m_grid": (nan, 1.0, 2.0), "m_sub": (-5.0, 2e5, 3.0)},
        evs={"c1": Ev(current_a=(inf, 0.0, 0.0)), "c2": Ev(current_a=(1.0, 1.0, 1.0), energy_wh=nan), "c3": None},
        battery={"bess": (nan, 1000.0)},
        dso_pct=nan,
    )
    out = p.last
    assert out is not None
    # And a cycle output that went wrong everywhere it holds a number.
    bad = replace(
        out,
        dso_pct=nan,
        limits=tuple(NodeLimit(nan, -inf, "r" * 100) for _ in out.limits),
        setpoints=(
            ConnectorSetpoint("c1", inf, nan),
            ConnectorSetpoint("c2", 5000.0, 2e9),
            ConnectorSetpoint("c3", nan, -1.0),
        ),
        batteries=tuple(BatteryCommand(b.battery, -inf, False) for b in out.batteries),
    )
    image = image_of(p)
    msg = wire("telemetry", telemetry_message(TOPICS, p.site, image, bad, targets=image.targets, price_eur_mwh=nan))

    assert msg["dso_pct"] == 0.0
    assert msg["price_eur_mwh"] is None
    assert len(msg["intent_reference"]) == 128
    grid, sub = msg["nodes"]["grid"], msg["nodes"]["sub"]
    assert (grid["limit_a"], grid["limit_w"], len(grid["limit_reason"])) == (0.0, None, 64)
    assert grid["current_a"] is None, "a BAD meter is not shown as a node current"
    assert sub["current_a"] == [0.0, 1000.0, 3.0], "clipped to the schema's 0-1000 A"
    assert msg["meters"]["m_grid"]["quality"] == "bad"
    assert msg["meters"]["m_sub"]["current_a"] == [-5.0, 1e5, 3.0]
    c1, c2 = msg["connectors"]["c1"], msg["connectors"]["c2"]
    assert (c1["quality"], c1["current_a"], c1["power_w"]) == ("bad", None, None)
    assert c1["target_a"] is None, "a NaN target is no target"
    assert msg["connectors"]["c3"]["target_a"] is None
    assert (c1["setpoint_a"], c1["setpoint_w"]) == (0.0, None), "not finite: 0 A (required), no power"
    assert (c2["quality"], c2["energy_wh"]) == ("bad", None)
    assert (c2["setpoint_a"], c2["setpoint_w"]) == (1000.0, 1e8), "out of range: clipped to the schema's bounds"
    assert (msg["connectors"]["c3"]["setpoint_a"], msg["connectors"]["c3"]["setpoint_w"]) == (0.0, 0.0)
    bess = msg["batteries"]["bess"]
    assert (bess["quality"], bess["soc_pct"], bess["setpoint_w"]) == ("bad", None, 0.0)


def test_telemetry_shows_a_stale_meter_as_such_and_not_as_a_node_current() -> None:
    p = run_site()
    p.silence("m_sub")
    p.cycle(dt=5.0)
    assert p.last is not None
    msg = wire("telemetry", telemetry_message(TOPICS, p.site, image_of(p), p.last))
    assert msg["meters"]["m_sub"] == {"quality": "stale", "current_a": [20.0, 21.0, 22.0], "power_w": 63.0 * 230}
    assert msg["nodes"]["sub"]["current_a"] is None, "only a GOOD meter reading is a node current"
    assert msg["nodes"]["grid"]["current_a"] == [30.0, 31.0, 32.0]


@pytest.mark.parametrize("state", ["online", "offline"])
def test_state_message(state: Any) -> None:
    msg = wire("state", state_message(TOPICS, P0 + 0.25, state, software="plaza-ems 1.2"))
    assert msg == {
        "schema": "plaza/v1/state", "site": "s1", "controller": "main", "ts": "2030-01-01T00:00:00.250Z",
        "state": state, "software": "plaza-ems 1.2",
    }  # fmt: skip
    assert "software" not in wire("state", state_message(TOPICS, P0, state))


@pytest.mark.parametrize("event", ["start", "update", "stop"])
def test_session_events(event: Any) -> None:
    msg = wire(
        "session",
        session_event(
            TOPICS, event_id="ev-1", ts=P0, event=event, session_id="sess-1", connector="c1", id_token="TOKEN1",
            energy_wh=1234.56, departure_ts=P0 + 3600, energy_target_wh=20_000.0, reason="EVDisconnected" * 20,
        ),
    )  # fmt: skip
    assert msg["schema"] == "plaza/v1/session"
    assert (msg["event_id"], msg["event"], msg["session_id"], msg["connector"]) == ("ev-1", event, "sess-1", "c1")
    assert msg["id_token"] == "TOKEN1"
    assert msg["energy_wh"] == 1234.6
    assert msg["departure"] == "2030-01-01T01:00:00.000Z"
    assert msg["energy_target_wh"] == 20_000.0
    assert len(msg["reason"]) == 128


def test_a_session_event_without_token_departure_or_target() -> None:
    msg = wire(
        "session",
        session_event(TOPICS, event_id="ev-2", ts=P0, event="start", session_id="s", connector="c2", id_token=None,
                      energy_wh=0.0),
    )  # fmt: skip
    assert (msg["id_token"], msg["departure"], msg["energy_target_wh"]) == (None, None, None)
    assert "reason" not in msg


@pytest.mark.parametrize(
    ("energy_wh", "departure_ts", "target_wh", "expected"),
    [
        (math.nan, math.nan, math.inf, (0.0, None, None)),
        (math.inf, math.inf, math.nan, (0.0, None, None)),
        (2e7, None, 5e7, (1e7, None, 1e7)),
        (-3.0, None, -1.0, (0.0, None, 0.0)),
    ],
)
def test_a_session_event_of_non_finite_or_negative_readings_is_strict_valid_json(
    energy_wh: float, departure_ts: float | None, target_wh: float, expected: tuple[Any, ...]
) -> None:
    # A BAD energy reading (NaN) must neither raise out of ``encode`` into the controller nor reach the wire.
    msg = wire(
        "session",
        session_event(TOPICS, event_id="e", ts=P0, event="update", session_id="s", connector="c1", id_token=None,
                      energy_wh=energy_wh, departure_ts=departure_ts, energy_target_wh=target_wh),
    )  # fmt: skip
    assert (msg["energy_wh"], msg["departure"], msg["energy_target_wh"]) == expected


def test_alarm_message() -> None:
    msg = wire(
        "alarm",
        alarm_message(TOPICS, event_id="al-1", ts=P0, alarm="fire", kind="trip", severity="critical",
                      detail="fire panel contact open " * 100, subject="fire"),
    )  # fmt: skip
    assert (msg["alarm"], msg["kind"], msg["severity"], msg["subject"]) == ("fire", "trip", "critical", "fire")
    assert len(msg["detail"]) == 1024
    plain = wire(
        "alarm", alarm_message(TOPICS, event_id="al-2", ts=P0, alarm="overdraw", kind="start", severity="warning",
                               detail="")
    )  # fmt: skip
    assert "subject" not in plain


def test_ack_with_clamped_targets() -> None:
    clamped = (Clamp("c1", 32.0, 20.0, "node sub at its limit"), Clamp("bess", 5000.0, 0.0, "soc max"))
    msg = wire(
        "ack",
        ack_message(TOPICS, event_id="ack-1", ts=P0, message_id="plan-7", topic=TOPICS.of("plan"), accepted=True,
                    clamped=clamped),
    )  # fmt: skip
    assert (msg["id"], msg["topic"], msg["accepted"], msg["reason"]) == ("plan-7", "plaza/v1/s1/main/plan", True, "")
    assert msg["clamped"] == [
        {"target": "c1", "requested": 32.0, "applied": 20.0, "reason": "node sub at its limit"},
        {"target": "bess", "requested": 5000.0, "applied": 0.0, "reason": "soc max"},
    ]
    refused = wire(
        "ack",
        ack_message(TOPICS, event_id="ack-2", ts=P0, message_id=None, topic="t" * 400, accepted=False,
                    reason="r" * 2000),
    )  # fmt: skip
    assert (refused["id"], refused["accepted"], refused["clamped"]) == (None, False, [])
    assert (len(refused["topic"]), len(refused["reason"])) == (256, 1024)


def test_an_ack_echoing_a_lone_surrogate_still_encodes() -> None:
    # An inbound "\ud800" escape is legal JSON and comes back in the ack's id and reason.
    result = parse("plan", b'{"schema": "plaza/v1/plan", "id": "\\ud800"}')
    reason = rejected(result)
    assert result.id == "\ud800"
    msg = wire(
        "ack",
        ack_message(TOPICS, event_id="a", ts=P0, message_id=result.id, topic=TOPICS.of("plan"), accepted=False,
                    reason=reason),
    )  # fmt: skip
    assert msg["id"] == "\ud800"


def test_encode_never_writes_nan() -> None:
    message = ack_message(TOPICS, event_id="a", ts=P0, message_id="m", topic="t", accepted=True,
                          clamped=(Clamp("c1", math.nan, 0.0, ""),))  # fmt: skip
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode(message)


# -- inbound commands ------------------------------------------------------------------------------


def departure(**fields: Any) -> dict[str, Any]:
    return {"schema": "plaza/v1/cmd/departure", "id": "d1", "created": CREATED, "connector": "c1",
            "departure": "2030-01-01T17:30:00Z", "energy_wh": 20_000} | fields  # fmt: skip


def prices(**fields: Any) -> dict[str, Any]:
    return {"schema": "plaza/v1/cmd/prices", "id": "da-1", "created": CREATED, "area": "NL",
            "start": CREATED, "step_s": 3600, "prices_eur_mwh": [80.5, 60.0, -5.0]} | fields  # fmt: skip


def priority(**fields: Any) -> dict[str, Any]:
    return {"schema": "plaza/v1/cmd/priority", "id": "p1", "created": CREATED, "connector": "c2", "priority": 7,
            "until": "2030-01-02T00:00:00+00:00"} | fields  # fmt: skip


def dso_limit(**fields: Any) -> dict[str, Any]:
    return {"schema": "plaza/v1/cmd/dso_limit", "id": "l1", "created": CREATED, "node": "sub", "limit_pct": 60,
            "valid_from": "2030-01-01T10:00:00Z", "valid_to": "2030-01-01T12:00:00Z"} | fields  # fmt: skip


def capacity_frame(**fields: Any) -> dict[str, Any]:
    frames = [
        {"node": "grid", "start": "2030-01-01T17:00:00Z", "end": "2030-01-01T18:00:00Z", "limit_w": 40_000},
        {"node": "sub", "start": "2030-01-01T18:00:00Z", "end": "2030-01-01T20:00:00.5Z", "limit_w": 12_500.5},
    ]
    return {"schema": "plaza/v1/cmd/capacity_frame", "id": "f1", "created": CREATED, "frames": frames} | fields


def without(message: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in keys}


def test_departure_per_connector() -> None:
    assert parse("cmd/departure", departure()) == DepartureCommand(
        id="d1", created_ts=P0, connector="c1", id_token=None, departure_ts=P0 + 17.5 * 3600, energy_wh=20_000
    )


def test_departure_per_id_token_without_energy() -> None:
    result = parse("cmd/departure", without(departure(id_token="04A2B3C4D5"), "connector", "energy_wh"))
    assert result == DepartureCommand("d1", P0, None, "04A2B3C4D5", P0 + 17.5 * 3600, None)


def test_priority_per_connector_and_per_id_token() -> None:
    assert parse("cmd/priority", priority()) == PriorityCommand("p1", P0, "c2", None, 7, P0 + 86_400)
    result = parse("cmd/priority", without(priority(id_token="TOKEN1", priority=0), "connector", "until"))
    assert result == PriorityCommand("p1", P0, None, "TOKEN1", 0, None)


def test_a_priority_written_as_a_float_is_an_int() -> None:
    result = parse("cmd/priority", priority(priority=5.0))
    assert isinstance(result, PriorityCommand)
    assert result.priority == 5
    assert type(result.priority) is int


def test_dso_limit_on_a_node_and_on_the_dso_node() -> None:
    assert parse("cmd/dso_limit", dso_limit()) == DsoLimitCommand("l1", P0, "sub", 60.0, P0 + 36_000, P0 + 43_200)
    result = parse("cmd/dso_limit", without(dso_limit(limit_pct=0), "node", "valid_from"))
    assert result == DsoLimitCommand("l1", P0, None, 0.0, None, P0 + 43_200)
    assert isinstance(result, DsoLimitCommand)
    assert type(result.limit_pct) is float


def test_capacity_frames() -> None:
    assert parse("cmd/capacity_frame", capacity_frame()) == CapacityFrameCommand(
        "f1",
        P0,
        (
            CapacityFrame("grid", P0 + 17 * 3600, P0 + 18 * 3600, 40_000.0),
            CapacityFrame("sub", P0 + 18 * 3600, P0 + 20 * 3600 + 0.5, 12_500.5),
        ),
    )


@pytest.mark.parametrize(
    ("kind", "message", "reason"),
    [
        ("cmd/departure", without(departure(), "departure"), "schema-invalid at (root): 'departure' is a required"),
        ("cmd/departure", without(departure(), "id"), "'id' is a required property"),
        ("cmd/departure", departure(energy_wh="lots"), "schema-invalid at energy_wh: 'lots' is not of type 'number'"),
        ("cmd/departure", departure(energy_wh=True), "schema-invalid at energy_wh: True is not of type 'number'"),
        ("cmd/departure", departure(energy_wh=-1), "energy_wh: -1 is less than the minimum of 0"),
        ("cmd/departure", departure(energy_wh=1e9), "energy_wh: 1000000000.0 is greater than the maximum"),
        ("cmd/departure", departure(connector="zz"), "unknown connector 'zz'"),
        ("cmd/departure", departure(connector=""), "schema-invalid at connector"),
        ("cmd/departure", departure(id_token="T"), "is valid under each of"),
        ("cmd/departure", without(departure(), "connector"), "is not valid under any of the given schemas"),
        ("cmd/departure", departure(departure="2030-01-01T17:30:00+01:00"), "schema-invalid at departure"),
        ("cmd/departure", departure(departure="tomorrow"), "schema-invalid at departure: 'tomorrow' does not match"),
        ("cmd/departure", departure(departure="2030-13-01T00:00:00Z"), "'2030-13-01T00:00:00Z' is not a valid date"),
        ("cmd/departure", departure(departure="2030-02-30T00:00:00Z"), "is not a valid date-time: day is out of"),
        ("cmd/departure", departure(created="2030-01-01T23:59:60Z"), "is not a valid date-time: second must be"),
        ("cmd/departure", departure(extra=1), "Additional properties are not allowed ('extra' was unexpected)"),
        ("cmd/priority", priority(priority=10), "schema-invalid at priority: 10 is greater than the maximum of 9"),
        ("cmd/priority", priority(priority=-1), "priority: -1 is less than the minimum of 0"),
        ("cmd/priority", priority(priority=2.5), "priority: 2.5 is not of type 'integer'"),
        ("cmd/priority", priority(priority="high"), "priority: 'high' is not of type 'integer'"),
        ("cmd/priority", without(priority(), "priority"), "'priority' is a required property"),
        ("cmd/priority", priority(connector="c9"), "unknown connector 'c9'"),
        ("cmd/priority", priority(until=17), "schema-invalid at until: 17 is not of type 'string'"),
        ("cmd/dso_limit", dso_limit(limit_pct=150), "limit_pct: 150 is greater than the maximum of 100"),
        ("cmd/dso_limit", dso_limit(limit_pct=None), "limit_pct: None is not of type 'number'"),
        ("cmd/dso_limit", without(dso_limit(), "valid_to"), "'valid_to' is a required property"),
        ("cmd/dso_limit", dso_limit(node="cp9"), "unknown node 'cp9'"),
        ("cmd/dso_limit", dso_limit(valid_to="2030-01-01T09:00:00Z"), "valid_to must be after valid_from"),
        ("cmd/dso_limit", dso_limit(valid_to="2030-01-01T10:00:00Z"), "valid_to must be after valid_from"),
        ("cmd/capacity_frame", capacity_frame(frames=[]), "schema-invalid at frames: [] should be non-empty"),
        ("cmd/capacity_frame", capacity_frame(frames={}), "frames: {} is not of type 'array'"),
        (
            "cmd/capacity_frame",
            capacity_frame(frames=[{"node": "grid", "start": CREATED, "end": CREATED, "limit_w": 1}]),
            "frames/0: end must be after start",
        ),
        (
            "cmd/capacity_frame",
            capacity_frame(frames=[{"node": "zz", "start": CREATED, "end": "2030-01-02T00:00:00Z", "limit_w": 1}]),
            "unknown node 'zz'",
        ),
        (
            "cmd/capacity_frame",
            capacity_frame(frames=[{"node": "grid", "start": CREATED, "end": "2030-01-02T00:00:00Z", "limit_w": -1}]),
            "schema-invalid at frames/0/limit_w: -1 is less than the minimum of 0",
        ),
        (
            "cmd/capacity_frame",
            capacity_frame(frames=[{"node": "grid", "start": CREATED, "limit_w": 1}]),
            "schema-invalid at frames/0: 'end' is a required property",
        ),
        ("cmd/priority", departure(), "wrong schema 'plaza/v1/cmd/departure' on topic 'cmd/priority'"),
        ("cmd/priority", priority(schema="plaza/v2/cmd/priority"), "unsupported schema version 'plaza/v2/cmd/prio"),
        ("cmd/priority", without(priority(), "schema"), "missing schema (expected 'plaza/v1/cmd/priority')"),
    ],
)
def test_an_invalid_command_is_rejected_with_its_reason(kind: str, message: dict[str, Any], reason: str) -> None:
    result = parse(kind, message)
    assert reason in rejected(result)
    assert isinstance(result, Rejected)
    assert result.id == message.get("id"), "the id travels with the rejection, for the ack"


def test_a_dso_limit_without_node_needs_a_dso_input() -> None:
    site = replace(SITE, dso_node=None)
    assert "no node given and the site has no DSO input" in rejected(
        parse("cmd/dso_limit", without(dso_limit(), "node"), site)
    )


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("plaza/v1/other/main/cmd/priority", b"{}", "topic 'plaza/v1/other/main/cmd/priority' is not for site 's1'"),
        ("plaza/v1/s1/backup/plan", b"{}", "is not for site 's1' controller 'main'"),
        (TOPICS.of("cmd/reboot"), b"{}", "unknown topic 'cmd/reboot'"),
        (TOPICS.of("plan/x"), b"{}", "unknown topic 'plan/x'"),
        (TOPICS.of("plan"), b"x" * 300_000, "payload too large: 300000 bytes > 262144"),
        (TOPICS.of("plan"), b"{not json", "malformed JSON"),
        (TOPICS.of("plan"), b"\xff\xfe\xfa", "malformed JSON"),
        (TOPICS.of("plan"), b'{"schema": "plaza/v1/plan", "x": NaN}', "malformed JSON: NaN is not a number JSON"),
        (TOPICS.of("plan"), b'{"schema": "plaza/v1/plan", "x": -Infinity}', "-Infinity is not a number JSON allows"),
        (TOPICS.of("plan"), b'{"schema": "plaza/v1/plan", "x": 1e400}', "malformed JSON: number 1e400 overflows"),
        (TOPICS.of("plan"), b"[1, 2]", "a JSON object expected, got list"),
        (TOPICS.of("plan"), b"null", "a JSON object expected, got NoneType"),
        (TOPICS.of("plan"), b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
    ],
)
def test_what_fails_before_the_schema_is_rejected_with_its_reason(topic: str, payload: bytes, reason: str) -> None:
    assert reason in rejected(parse_inbound(topic, payload, topics=TOPICS, site=SITE))


def test_an_id_the_ack_could_not_carry_is_not_echoed() -> None:
    assert rejected_id(departure(id="")) is None
    assert rejected_id(departure(id="x" * 129)) is None
    assert rejected_id(departure(id=17)) is None
    assert rejected_id(departure(id="x" * 128, connector="zz")) == "x" * 128


def rejected_id(message: dict[str, Any]) -> str | None:
    result = parse("cmd/departure", message)
    rejected(result)
    assert isinstance(result, Rejected)
    return result.id


# -- plans -----------------------------------------------------------------------------------------


def plan(**fields: Any) -> dict[str, Any]:
    return {
        "schema": "plaza/v1/plan",
        "id": "plan-7",
        "site": "s1",
        "created": CREATED,
        "valid_from": CREATED,
        "valid_to": "2030-01-01T01:00:00Z",
        "step_s": STEP,
        "connectors": {"c1": [16.0, 10.0, None, 6.0], "c2": [32, None, 0.0, 1000]},
        "batteries": {"bess": [1000.0, 0.0, -2000.0, None]},
        "site_import_cap_w": [50_000, None, 40_000.0, 30_000.0],
    } | fields


def parsed_plan(*drop: str, **fields: Any) -> Plan:
    result = parse("plan", without(plan(**fields), *drop))
    assert isinstance(result, Plan), result
    return result


def test_a_plan_parses_with_its_series() -> None:
    p = parsed_plan()
    assert (p.id, p.site, p.created_ts, p.valid_from_ts, p.valid_to_ts, p.step_s, p.steps) == (
        "plan-7", "s1", P0, P0, P0 + 3600, STEP, 4,
    )  # fmt: skip
    assert p.connectors == {"c1": (16.0, 10.0, None, 6.0), "c2": (32.0, None, 0.0, 1000.0)}
    assert p.batteries == {"bess": (1000.0, 0.0, -2000.0, None)}
    assert p.site_import_cap_w == (50_000.0, None, 40_000.0, 30_000.0)
    bare = parsed_plan("batteries", "site_import_cap_w", connectors={})
    assert (bare.connectors, bare.batteries, bare.site_import_cap_w) == ({}, {}, None)


@pytest.mark.parametrize(
    ("offset_s", "connectors", "batteries", "cap"),
    [
        (0.0, {"c1": 16.0, "c2": 32.0}, {"bess": 1000.0}, 50_000.0),
        (STEP - 0.001, {"c1": 16.0, "c2": 32.0}, {"bess": 1000.0}, 50_000.0),
        (STEP, {"c1": 10.0}, {"bess": 0.0}, None),
        (2 * STEP + 450, {"c2": 0.0}, {"bess": -2000.0}, 40_000.0),
        (3 * STEP, {"c1": 6.0, "c2": 1000.0}, {}, 30_000.0),
        (4 * STEP - 1, {"c1": 6.0, "c2": 1000.0}, {}, 30_000.0),
        (4 * STEP - 1e-6, {"c1": 6.0, "c2": 1000.0}, {}, 30_000.0),
    ],
)
def test_plan_targets_are_the_step_in_force(
    offset_s: float, connectors: dict[str, float], batteries: dict[str, float], cap: float | None
) -> None:
    targets = plan_targets(parsed_plan(), P0 + offset_s)
    assert targets == Targets(
        source="plan", connectors=connectors, batteries=batteries, site_import_cap_w=cap, reference="plan-7"
    )
    assert isinstance(targets, Targets)


@pytest.mark.parametrize("offset_s", [-86_400.0, -1.0, -1e-6, 4 * STEP, 4 * STEP + 1, 86_400.0, math.nan])
def test_no_plan_targets_outside_the_window(offset_s: float) -> None:
    assert plan_targets(parsed_plan(), P0 + offset_s) is None


def test_a_plan_without_batteries_or_cap_and_a_fractional_window() -> None:
    p = parsed_plan(
        "batteries", "site_import_cap_w", valid_from="2030-01-01T00:00:00.500Z",
        valid_to="2030-01-01T00:02:00.500+00:00", step_s=60, connectors={"c3": [8, None]},
    )  # fmt: skip
    assert plan_targets(p, P0 + 0.5) == Targets("plan", {"c3": 8.0}, {}, None, "plan-7")
    assert plan_targets(p, P0 + 60.5) == Targets("plan", {}, {}, None, "plan-7"), "null: no target for c3"
    assert plan_targets(p, P0 + 0.499) is None
    assert plan_targets(p, P0 + 120.5) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"site": "other"}, "plan for site 'other', this is site 's1'"),
        ({"connectors": {"zz": [1, 1, 1, 1]}}, "unknown connector 'zz'"),
        ({"batteries": {"bat9": [1, 1, 1, 1]}}, "unknown battery 'bat9'"),
        ({"connectors": {"c1": [1, 1, 1]}}, "connectors/c1: 3 steps, the window has 4"),
        ({"batteries": {"bess": [1, 1, 1, 1, 1]}}, "batteries/bess: 5 steps, the window has 4"),
        ({"site_import_cap_w": [1]}, "site_import_cap_w: 1 steps, the window has 4"),
        ({"valid_to": "2030-01-01T00:50:00Z"}, "(3000 s) is not a whole number of steps of 900 s"),
        ({"valid_to": CREATED}, "valid_to must be after valid_from"),
        ({"valid_to": "2029-12-31T23:00:00Z"}, "valid_to must be after valid_from"),
        ({"valid_to": "2030-01-09T00:00:00Z"}, "plan spans 8.0 days, at most 7"),
        ({"step_s": 30}, "schema-invalid at step_s: 30 is less than the minimum of 60"),
        ({"step_s": 900.5}, "step_s: 900.5 is not of type 'integer'"),
        ({"connectors": {"c1": [-5.0, 1, 1, 1]}}, "schema-invalid at connectors/c1/0: -5.0 is less than the minimum"),
        ({"connectors": {"c1": [1, 1, 1, 1001]}}, "connectors/c1/3: 1001 is greater than the maximum of 1000"),
        ({"connectors": {"c1": [1, "16", 1, 1]}}, "schema-invalid at connectors/c1/1"),
        ({"connectors": {"c1": []}}, "schema-invalid at connectors/c1: [] should be non-empty"),
        ({"connectors": [16, 10]}, "schema-invalid at connectors: [16, 10] is not of type 'object'"),
        ({"batteries": {"bess": [2e7, 0, 0, 0]}}, "batteries/bess/0: 20000000.0 is greater than the maximum"),
        ({"site_import_cap_w": [-1, 0, 0, 0]}, "site_import_cap_w/0: -1 is less than the minimum of 0"),
        ({"valid_from": "2030-01-01"}, "schema-invalid at valid_from: '2030-01-01' does not match"),
        ({"created": "2030-01-01T24:00:00Z"}, "is not a valid date-time: hour must be in 0..23"),
    ],
)
def test_an_invalid_plan_is_rejected_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    result = parse("plan", plan(**fields))
    assert reason in rejected(result)
    assert isinstance(result, Rejected)
    assert result.id == "plan-7"


def test_a_plan_missing_a_required_field_is_rejected() -> None:
    for key in ("id", "site", "created", "valid_from", "valid_to", "step_s", "connectors"):
        assert f"'{key}' is a required property" in rejected(parse("plan", without(plan(), key)))


# -- nothing escapes the parser --------------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "plan": plan(),
    "cmd/departure": departure(),
    "cmd/priority": priority(),
    "cmd/dso_limit": dso_limit(),
    "cmd/capacity_frame": capacity_frame(),
    "cmd/prices": prices(),
}
assert set(VALID) == set(INBOUND_KINDS)
for _kind, _message in VALID.items():
    assert not isinstance(parse(_kind, _message), Rejected), _kind

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e308, -1e308, 10**25, 1000.0000001, -0.0, 1e-320, 5e-324])
    | st.text(max_size=20)
    | st.sampled_from(["c1", "bess", "grid", "s1", CREATED, "2030-02-30T00:00:00Z", "2030-01-01T00:00:00+01:00", ""])
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
Path_ = list[str | int]


def _paths(value: Any, prefix: Path_) -> list[Path_]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, [*prefix, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, [*prefix, index])
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(VALID)))
    message: Any = copy.deepcopy(VALID[kind])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(message, [])
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "replace", "wrap", "add_key"]))
        if not path:
            if op == "replace":
                message = draw(json_value)
            continue
        parent = message
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(json_value)
        elif op == "wrap":
            parent[last] = [parent[last]] if draw(st.booleans()) else {"x": parent[last]}
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=8))] = draw(json_value)
    # allow_nan (the default) writes NaN / Infinity as text, as a sloppy producer would.
    text = json.dumps(message)
    if draw(st.booleans()):
        depth = draw(st.integers(min_value=1, max_value=5000))
        text = draw(
            st.sampled_from(["[" * depth + text + "]" * depth, '{"schema": ' + "[" * depth + "]" * depth + "}"])
        )
    return kind, text.encode()


def _check_result(result: Inbound | Rejected, topic: str) -> None:
    if isinstance(result, Rejected):
        assert isinstance(result.reason, str)
        assert result.reason.strip()
        # The link acks every rejection: that ack must be sendable and valid on the wire.
        wire("ack", ack_message(TOPICS, event_id="e", ts=P0, message_id=result.id, topic=topic, accepted=False,
                                reason=result.reason))  # fmt: skip
        return
    parsed = (Plan, DepartureCommand, PriorityCommand, DsoLimitCommand, CapacityFrameCommand, PricesCommand)
    assert isinstance(result, parsed)
    if isinstance(result, Plan):
        assert result.steps >= 1
        for step in range(result.steps):
            for now in (
                result.valid_from_ts + step * result.step_s,
                result.valid_from_ts + (step + 1) * result.step_s - 1e-3,
            ):
                targets = plan_targets(result, now)
                assert targets is not None
                assert targets.source == "plan"
                assert targets.reference == result.id
                for connector, value in targets.connectors.items():
                    assert connector in SITE.connectors
                    assert math.isfinite(value)
                    assert 0.0 <= value <= CONNECTOR_MAX_A
                for battery, power in targets.batteries.items():
                    assert battery in SITE.batteries
                    assert math.isfinite(power)
                    assert -1e7 <= power <= 1e7
                cap = targets.site_import_cap_w
                assert cap is None or (math.isfinite(cap) and 0.0 <= cap <= 1e8)
        assert plan_targets(result, result.valid_to_ts) is None
        assert plan_targets(result, result.valid_from_ts - 1e-3) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([*INBOUND_KINDS, "cmd/reboot"]), payload=st.binary(max_size=512))
def test_random_bytes_never_escape_the_parser(kind: str, payload: bytes) -> None:
    _check_result(parse_inbound(TOPICS.of(kind), payload, topics=TOPICS, site=SITE), TOPICS.of(kind))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated(), topic_kind=st.sampled_from([None, *INBOUND_KINDS]))
def test_mutated_plans_and_commands_never_escape_the_parser(case: tuple[str, bytes], topic_kind: str | None) -> None:
    kind, payload = case
    topic = TOPICS.of(topic_kind or kind)
    _check_result(parse_inbound(topic, payload, topics=TOPICS, site=SITE), topic)


def test_the_mutation_strategy_reaches_both_outcomes() -> None:
    """The property test is only worth something if mutations both pass and fail the parser."""
    outcomes: set[bool] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(case=mutated())
    def collect(case: tuple[str, bytes]) -> None:
        kind, payload = case
        outcomes.add(isinstance(parse_inbound(TOPICS.of(kind), payload, topics=TOPICS, site=SITE), Rejected))

    collect()
    assert outcomes == {True, False}


def test_day_ahead_prices_parse_into_a_price_curve() -> None:
    result = parse("cmd/prices", prices())
    assert result == PricesCommand("da-1", P0, "NL", P0, 3600, (80.5, 60.0, -5.0))
    assert isinstance(result, PricesCommand)
    curve = result.curve()
    assert curve.at(P0) == 80.5
    assert curve.at(P0 + 2 * 3600 + 1) == -5.0
    assert curve.at(P0 + 3 * 3600) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"step_s": 600}, "schema-invalid at step_s: 600 is not one of [900, 1800, 3600]"),
        ({"prices_eur_mwh": []}, "schema-invalid at prices_eur_mwh: [] should be non-empty"),
        ({"prices_eur_mwh": [1e5]}, "100000.0 is greater than the maximum of 10000"),
        ({"start": "2030-02-30T00:00:00Z"}, "is not a valid date-time"),
    ],
)
def test_bad_prices_are_rejected_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    result = parse("cmd/prices", prices(**fields))
    assert isinstance(result, Rejected)
    assert reason in result.reason
