"""The CSMS with the simulated OCPP 2.0.1 stations of the HIL, in one process over loopback WebSockets.

A small rig plays the controller's part (refresh before the cycle, hand-over after it, with fixed
setpoints) and the plant's (EVs plugged into the plant chargers the stations drive). It checks a whole
session frame by frame against the official OCPP 2.0.1 JSON schemas the ``ocpp`` library ships, and
what the CSMS does with the faults a station can inject. Ports 19100-19149; every test is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import ocpp.v201
import pytest

from controller.config import SiteConfig, parse_config
from controller.image import InputSnapshot
from drivers.ocpp201.csms import Csms
from hil.ocpp201.station import SimStation
from hil.plant import Ev, EvSpec, Plant
from tests.ocpp_helpers import output

SCHEMAS = Path(ocpp.v201.__file__).parent / "schemas"
CALL, CALL_RESULT, CALL_ERROR = 2, 3, 4
RPC_ERRORS = frozenset(
    {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
)

SITE = """
site: {{id: ocpp-sim}}
scan: {{period_ms: 500}}
priorities:
  users:
    - {{id_token: FLEET-0001, priority: 5}}
ocpp: {{port: {port}, tx_updated_interval_s: 1, profile_min_interval_s: 0.2, call_timeout_s: 1, verify_interval_s: 1}}
tree:
  id: grid
  limit_a: 200
  children:
    - id: ac1
      limit_a: 32
      connectors:
        - {{id: ac1-1, fallback_current_a: 32, response_delay_s: 0.2}}
        - {{id: ac1-2, fallback_current_a: 32, response_delay_s: 0.2}}
    - id: dc1
      limit_a: 100
      connectors:
        - {{id: dc1-1, type: dc, max_power_kw: 50, zero_pauses: false, fallback_current_a: 100, response_delay_s: 0.2}}
devices:
  - {{id: AC1, driver: ocpp201, connectors: [ac1-1, ac1-2], options: {{password: ac1-secret-pw}}}}
  - {{id: DC1, driver: ocpp201, connectors: [dc1-1], options: {{password: dc1-secret-pw}}}}
"""


@dataclass
class Rig:
    """The CSMS, the plant and the simulated stations, stepped every 0.1 s; setpoints per connector."""

    site: SiteConfig
    csms: Csms
    plant: Plant
    stations: dict[str, SimStation]
    setpoints: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    snapshot: InputSnapshot = field(default_factory=InputSnapshot)

    def plug(self, connector: str, seconds: float, token: str | None = None, dc: bool = False) -> None:
        now = time.time()
        spec = EvSpec(
            id=f"ev-{connector}",
            connector=connector,
            arrive_s=now,
            depart_s=now + seconds,
            energy_wh=30_000.0,
            capacity_wh=60_000.0,
            soc0=0.3,
            max_current_a=32.0,
            phases=3,
            max_dc_power_w=50_000.0,
            id_token=token,
            tell_departure=dc,
        )
        self.plant.chargers[connector].plug_in(Ev(spec, soc=spec.soc0))

    async def run_for(self, seconds: float) -> None:
        end = time.time() + seconds
        last = time.time()
        while time.time() < end:
            await asyncio.sleep(0.1)
            now = time.time()
            self.plant.step(last, now - last)
            last = now
            for station in self.stations.values():
                station.update(now)
            self.csms.refresh(self.snapshot, now)
            self.csms.hand_over(output(self.setpoints))

    async def until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        end = time.time() + timeout_s
        while not condition():
            assert time.time() < end, "condition not met in time"
            await self.run_for(0.1)


def with_rig(port: int, body: Callable[[Rig], Awaitable[None]]) -> Rig:
    site = parse_config(SITE.format(port=port)).config
    plant = Plant(site)
    rig = Rig(site, Csms(site), plant, {d.id: SimStation(site, d, plant) for d in site.devices})

    async def main() -> None:
        rig.csms.hand_over(output(rig.setpoints))
        await rig.csms.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in rig.stations.values()]
        try:
            async with asyncio.timeout(40):
                await rig.until(lambda: all(s.online for s in rig.stations.values()))
                await body(rig)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await rig.csms.stop()

    asyncio.run(main())
    return rig


def status(result: Any | None) -> str | None:
    """The status of a call's result; None when the call got no result."""
    return None if result is None else str(result.status)


def schema(name: str) -> Any:
    return json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))


def validate_frames(frames: list[str]) -> Counter[str]:
    """Every frame against its schema; returns the count of each Call and CallResult checked."""
    actions: dict[str, str] = {}
    seen: Counter[str] = Counter()
    decoded = [json.loads(f) for f in frames]
    for frame in decoded:
        if frame[0] == CALL:
            actions[frame[1]] = frame[2]
    for frame in decoded:
        kind = frame[0]
        if kind == CALL:
            name = f"{frame[2]}Request"
            payload = frame[3]
        elif kind == CALL_RESULT:
            name = f"{actions[frame[1]]}Response"
            payload = frame[2]
        else:
            assert kind == CALL_ERROR, frame
            assert len(frame) == 5, frame
            assert frame[2] in RPC_ERRORS, frame
            continue
        document = schema(name)
        validator = jsonschema.validators.validator_for(document)(document)
        errors = sorted(validator.iter_errors(payload), key=str)
        assert not errors, f"{name} {payload}: {errors[0].message}"
        seen[name] += 1
    return seen


def test_a_whole_session_validates_against_the_ocpp_201_schemas() -> None:
    async def body(rig: Rig) -> None:
        csms = rig.csms
        rig.setpoints = {"ac1-1": (16.0, None), "ac1-2": (10.0, None), "dc1-1": (40.0, 27_600.0)}
        rig.plug("ac1-1", 30, token="FLEET-0001")
        rig.plug("dc1-1", 30, dc=True)
        await rig.until(lambda: rig.stations["AC1"].evses[0].profile_limits != [] and rig.csms.transactions != {})
        await rig.run_for(2.5)  # meter values, the composite-schedule check
        request = rig.snapshot.requests["dc1-1"]  # ISO 15118 NotifyEVChargingNeeds -> the session's intent
        assert request.energy_wh == 30_000.0
        assert request.departure_ts is not None
        assert abs(request.departure_ts - (time.time() + 27.5)) < 2.0
        rig.setpoints["ac1-1"] = (8.0, None)
        await rig.run_for(0.5)
        values = await csms.get_variables("AC1", [("SampledDataCtrlr", "TxUpdatedInterval"), ("Nope", "Nothing")])
        assert values == {"SampledDataCtrlr.TxUpdatedInterval": "1", "Nope.Nothing": None}
        assert status(await csms.trigger_message("AC1", "StatusNotification", 1)) == "Accepted"
        assert status(await csms.change_availability("AC1", 2, operative=False)) == "Accepted"
        assert status(await csms.change_availability("AC1", 2, operative=True)) == "Accepted"
        assert status(await csms.request_start("AC1", 2, "FLEET-0001", remote_start_id=7)) == "Accepted"
        rig.plug("ac1-2", 2)  # the remote start's token is used when the EV plugs in
        await rig.until(lambda: rig.stations["AC1"].evses[1].transaction_id is not None)
        tx = rig.stations["AC1"].evses[1].transaction_id
        assert tx is not None
        await rig.run_for(0.5)
        assert status(await csms.request_stop("AC1", tx)) == "Accepted"
        assert status(await csms.clear_tx_profile("DC1", 1)) == "Accepted"
        assert status(await csms.composite_schedule("DC1", 1)) == "Accepted"
        await rig.run_for(1.0)
        assert status(await csms.reset("DC1")) == "Accepted"
        await rig.until(lambda: rig.stations["DC1"].boots == 2)
        rig.plant.chargers["ac1-1"].ev = None  # unplugged: the transaction ends
        await rig.until(lambda: rig.stations["AC1"].evses[0].transaction_id is None)
        await rig.run_for(0.5)

    rig = with_rig(19100, body)
    frames = [f for s in rig.stations.values() for f in (*s.sent, *s.received)]
    seen = validate_frames(frames)
    expected = {
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "TransactionEvent",
        "NotifyEVChargingNeeds",
        "SetVariables",
        "GetVariables",
        "SetChargingProfile",
        "ClearChargingProfile",
        "GetCompositeSchedule",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "ChangeAvailability",
        "TriggerMessage",
        "Reset",
    }
    for action in expected:
        assert seen[f"{action}Request"] > 0, f"no {action} in the session"
        assert seen[f"{action}Response"] > 0, f"no answer to {action}"
    events = Counter(json.loads(f)[3]["eventType"] for f in rig.stations["AC1"].sent if '"TransactionEvent"' in f)
    assert events["Started"] == 2
    assert events["Ended"] == 2
    assert events["Updated"] >= 3
    records = [r for r in rig.csms.transactions.values() if r.station == "AC1"]
    assert all(r.complete for r in records), [(r.transaction_id, r.seq_nos) for r in records]
    assert {r.id_token for r in records} == {"FLEET-0001"}
    assert {r.stopped_reason for r in records} == {"EVDisconnected", "Remote"}


def test_bad_frames_get_the_ocpp_call_error_and_the_connection_stays_up() -> None:
    async def body(rig: Rig) -> None:
        station = rig.stations["AC1"]
        for fault in ("malformed_json", "wrong_message_type", "unknown_action", "schema_invalid"):
            station.inject(fault, 0.0)
        await rig.until(lambda: len(station.bad_frame_answers) == 4)
        rig.plug("ac1-1", 30, token="FLEET-0001")
        await rig.until(lambda: station.evses[0].transaction_id is not None and rig.csms.transactions != {})

    rig = with_rig(19110, body)
    station = rig.stations["AC1"]
    answers = {(a[1], a[2]) for a in station.bad_frame_answers}
    assert answers == {
        ("-1", "FormatViolation"),
        ("bad-type", "MessageTypeNotSupported"),
        ("bad-action", "NotImplemented"),
        ("bad-schema", "TypeConstraintViolation"),
    }
    assert all(a[0] == CALL_ERROR for a in station.bad_frame_answers)
    assert station.connects == 1, "the connection stayed up"
    assert rig.csms.stats.bad_frames == 2
    assert rig.csms.stats.unknown_actions == 1


def test_duplicate_and_out_of_order_seq_nos_still_make_a_complete_record() -> None:
    async def body(rig: Rig) -> None:
        station = rig.stations["AC1"]
        rig.setpoints = {"ac1-1": (16.0, None)}
        rig.plug("ac1-1", 4.0, token="FLEET-0001")
        await rig.until(lambda: station.evses[0].transaction_id is not None)
        station.inject("duplicate_seq_no", 0.0)
        await rig.run_for(1.5)
        station.inject("out_of_order_seq_no", 0.0)
        await rig.until(lambda: station.evses[0].transaction_id is None, timeout_s=8.0)
        await rig.run_for(0.5)

    rig = with_rig(19120, body)
    (record,) = rig.csms.transactions.values()
    assert record.complete
    assert len(record.seq_nos) == len(set(record.seq_nos)) + 1, "one seqNo came twice"
    assert record.seq_nos != sorted(record.seq_nos), "two came out of order"


def test_a_station_that_never_answers_is_timed_out_and_counted_not_waited_for() -> None:
    async def body(rig: Rig) -> None:
        station = rig.stations["AC1"]
        rig.setpoints = {"ac1-1": (16.0, None)}
        rig.plug("ac1-1", 30, token="FLEET-0001")
        await rig.until(lambda: station.evses[0].profile_limits != [])
        station.inject("unresponsive", 3.0)
        rig.setpoints["ac1-1"] = (8.0, None)
        await rig.until(lambda: rig.csms.stations["AC1"].timeouts >= 1)
        # Meanwhile the other station is served as usual.
        rig.setpoints["dc1-1"] = (20.0, 13_800.0)
        rig.plug("dc1-1", 30)
        await rig.until(lambda: rig.stations["DC1"].evses[0].profile_limits != [])
        # Once the station answers again, the decrease goes out.
        await rig.until(lambda: station.evses[0].profile_limits[-1][1] == 8.0, timeout_s=6.0)

    rig = with_rig(19130, body)
    assert rig.csms.stations["AC1"].timeouts >= 1
    assert rig.csms.stations["DC1"].timeouts == 0


@pytest.mark.parametrize("unit", ["A", "W"])
def test_the_composite_schedule_check_resends_a_profile_the_station_does_not_apply(unit: str) -> None:
    connector, station_id, setpoint = (
        ("ac1-1", "AC1", (10.0, None)) if unit == "A" else ("dc1-1", "DC1", (20.0, 13_800.0))
    )

    async def body(rig: Rig) -> None:
        station = rig.stations[station_id]
        rig.setpoints = {connector: setpoint}
        rig.plug(connector, 30, token="FLEET-0001")
        await rig.until(lambda: station.evses[0].profile_limits != [])
        sent = len(station.evses[0].profile_limits)
        station.clear_profiles(None, {})  # it forgets them all (a restart) and charges at its rating
        await rig.until(lambda: rig.csms.stations[station_id].mismatches >= 1, timeout_s=4.0)
        await rig.until(lambda: len(station.evses[0].profile_limits) > sent)

    rig = with_rig(19140, body)
    limits = rig.stations[station_id].evses[0].profile_limits
    assert limits[-1][1] == limits[0][1], "the same TxProfile sent again"


def test_an_unknown_badge_is_refused_per_policy_and_starts_nothing() -> None:
    async def body(rig: Rig) -> None:
        station = rig.stations["AC1"]
        rig.setpoints = {"ac1-1": (16.0, None), "ac1-2": (16.0, None)}
        rig.plug("ac1-1", 30, token="NOBODY-42")
        rig.plug("ac1-2", 30, token="FLEET-0001")
        await rig.until(lambda: station.evses[1].transaction_id is not None and station.evses[0].refused)
        await rig.run_for(1.0)

    rig = with_rig(19145, body)
    station = rig.stations["AC1"]
    assert station.evses[0].transaction_id is None, "unknown_id_tokens: reject"
    assert rig.plant.chargers["ac1-1"].power_w == 0.0
    assert rig.plant.chargers["ac1-2"].power_w > 0.0
    assert [r.id_token for r in rig.csms.transactions.values()] == ["FLEET-0001"]
