"""The OCPP 2.0.1 CSMS over loopback WebSockets, against a minimal station written with the ocpp library.

Ports 19000-19099. Every test is bounded to a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import websockets
from ocpp.v201 import call
from websockets.exceptions import InvalidStatus

from controller.config import SiteConfig, parse_config
from controller.image import InputSnapshot
from drivers.ocpp201.csms import Csms
from drivers.ocpp201.measurands import parse_meter_values
from drivers.ocpp201.stations import compile_stations
from tests.ocpp_helpers import Station, auth, output

SITE = """
site: {{id: ocpp}}
ocpp: {{port: {port}, profile_min_interval_s: 0.2}}
tree:
  id: grid
  limit_a: 100
  children:
    - id: st1
      limit_a: 32
      connectors:
        - {{id: ac-1, fallback_current_a: 32, response_delay_s: 0.5}}
    - id: st2
      limit_a: 100
      connectors:
        - {{id: dc-1, type: dc, max_power_kw: 50, zero_pauses: false, fallback_current_a: 100}}
devices:
  - {{id: AC1, driver: ocpp201, connectors: [ac-1], options: {{password: secret-ac1}}}}
  - {{id: DC1, driver: ocpp201, connectors: [dc-1], options: {{password: secret-dc1}}}}
"""


def site(port: int, text: str = SITE) -> SiteConfig:
    return parse_config(text.format(port=port)).config


def meter(current_a: float, power_w: float, energy_wh: float) -> list[dict[str, Any]]:
    return [
        {
            "timestamp": "2026-11-22T08:00:00Z",
            "sampledValue": [
                *(
                    {"value": current_a, "measurand": "Current.Import", "phase": p, "unitOfMeasure": {"unit": "A"}}
                    for p in ("L1", "L2", "L3")
                ),
                {"value": power_w / 1000, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}},
                {"value": energy_wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
            ],
        }
    ]


async def started(station: Station, tx_id: str, seq_no: int = 0, token: str | None = "TOKEN-1") -> Any:
    return await station.call(
        call.TransactionEvent(
            event_type="Started",
            timestamp="2026-11-22T08:00:00Z",
            trigger_reason="CablePluggedIn",
            seq_no=seq_no,
            transaction_info={"transaction_id": tx_id, "charging_state": "Charging"},
            evse={"id": 1, "connector_id": 1},
            id_token={"id_token": token, "type": "ISO14443"} if token else None,
            meter_value=[
                {
                    "timestamp": "2026-11-22T08:00:00Z",
                    "sampled_value": [
                        {"value": 16.0, "measurand": "Current.Import", "phase": p, "unit_of_measure": {"unit": "A"}}
                        for p in ("L1", "L2", "L3")
                    ]
                    + [{"value": 1000, "measurand": "Energy.Active.Import.Register"}],
                }
            ],
        )
    )


def with_station(
    port: int, station_id: str, password: str, body: Callable[[Csms, Station], Awaitable[None]], text: str = SITE
) -> Csms:
    csms = Csms(site(port, text))
    csms.hand_over(output({}))  # the controller has run: boots are accepted

    async def main() -> None:
        await csms.start()
        try:
            async with (
                asyncio.timeout(10),
                websockets.connect(
                    f"ws://127.0.0.1:{port}/ocpp/{station_id}",
                    subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                    additional_headers=auth(station_id, password),
                ) as ws,
            ):
                station = Station(station_id, ws)
                task = asyncio.create_task(station.start())
                try:
                    boot = await station.call(
                        call.BootNotification(charging_station={"model": "t", "vendor_name": "t"}, reason="PowerUp")
                    )
                    assert boot.status == "Accepted"
                    await body(csms, station)
                finally:
                    task.cancel()
        finally:
            await csms.stop()

    asyncio.run(main())
    return csms


def test_measurands_in_any_unit_are_parsed_or_ignored() -> None:
    sample = parse_meter_values(
        [
            {
                "timestamp": "2026-11-22T08:00:00Z",
                "sampled_value": [
                    {"value": 16000, "measurand": "Current.Import", "phase": "L2", "unit_of_measure": {"unit": "mA"}},
                    {"value": 11, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "kW"}},
                    {"value": 12.5, "unit_of_measure": {"unit": "kWh"}},
                    {
                        "value": 1.2,
                        "measurand": "Energy.Active.Import.Register",
                        "unit_of_measure": {"unit": "Wh", "multiplier": 3},
                    },
                    {"value": 55, "measurand": "SoC"},
                    {"value": 230, "measurand": "Voltage", "phase": "L1-N"},
                    {"value": 3, "measurand": "Current.Import", "unit_of_measure": {"unit": "furlongs"}},
                    {"value": "x", "measurand": "Power.Active.Import"},
                ],
            }
        ]
    )
    assert sample.current_a == [None, 16.0, None]
    assert sample.power_w == 11_000.0
    assert sample.energy_wh == 1_200.0  # the later of the two energy samples in the list
    assert sample.soc_pct == 55.0
    assert sorted(sample.ignored) == ["Current.Import [furlongs]", "Power.Active.Import [W]", "Voltage"]


def test_station_config_problems_are_named_by_path() -> None:
    text = SITE.replace("options: {{password: secret-ac1}}", "options: {{password: secret-ac1, max_amps: 3}}")
    text = text.replace("{{id: ac-1, fallback_current_a: 32, response_delay_s: 0.5}}", "{{id: ac-1}}")
    _, issues = compile_stations(site(19000, text))
    assert [(i.path, i.message) for i in issues] == [
        ("devices[0].options.max_amps", "unknown option (known: max_current_a, password, password_sha256)")
    ]
    text = SITE.replace("{{id: ac-1, fallback_current_a: 32, response_delay_s: 0.5}}", "{{id: ac-1}}")
    _, issues = compile_stations(site(19000, text))
    assert [i.path for i in issues] == ["devices[0].connectors[0]"]
    assert "fallback_current_a 6 A is below the station's max profile 32 A" in issues[0].message


def test_boot_sends_max_profile_then_tx_profiles_in_amps_and_watts() -> None:
    async def body(csms: Csms, station: Station) -> None:
        await started(station, "tx-1")
        csms.hand_over(output({"ac-1": (10.0, None)}))
        await asyncio.sleep(0.3)
        assert station.profiles == [
            (0, "ChargingStationMaxProfile", "A", 32.0),
            (0, "TxDefaultProfile", "A", 0.0),
            (1, "TxProfile", "A", 10.0),
        ]
        # A small increase waits for the deadband; a decrease goes at once; pause is 0.
        csms.hand_over(output({"ac-1": (10.3, None)}))
        csms.hand_over(output({"ac-1": (0.0, None)}))
        await asyncio.sleep(0.3)
        assert station.profiles[-1] == (1, "TxProfile", "A", 0.0)
        snapshot = InputSnapshot()
        csms.refresh(snapshot, time.time())
        reading = snapshot.connectors["ac-1"]
        # The 16 A sample is from before the pause: capped at the new limit until a newer one comes.
        assert (reading.state, reading.current_a, reading.id_token) == ("C2", (0.0, 0.0, 0.0), "TOKEN-1")

    with_station(19010, "AC1", "secret-ac1", body)

    async def dc_body(csms: Csms, station: Station) -> None:
        await started(station, "tx-dc")
        csms.hand_over(output({"dc-1": (30.0, 20_700.0)}))
        await asyncio.sleep(0.3)
        assert station.profiles[-1] == (1, "TxProfile", "W", 20_700.0)

    with_station(19011, "DC1", "secret-dc1", dc_body)


def test_malformed_frames_get_a_call_error_and_the_connection_stays_up() -> None:
    async def body(csms: Csms, station: Station) -> None:
        await station._connection.send('[2, "m-1", "BootNotification", {broken')
        await station._connection.send("[7]")
        await station._connection.send(json.dumps([2, "m-3", "NoSuchAction", {}]))
        await station._connection.send(json.dumps([2, "m-4", "TransactionEvent", {"eventType": "Started"}]))
        await asyncio.sleep(0.3)
        heartbeat = await station.call(call.Heartbeat())
        assert heartbeat.current_time
        errors = [(e[1], e[2]) for e in (json.loads(r) for r in station.raw if r.startswith("[4"))]
        # No message id can be read from a broken frame: OCPP-J answers with "-1".
        assert errors == [
            ("-1", "FormatViolation"),
            ("-1", "MessageTypeNotSupported"),
            ("m-3", "NotImplemented"),
            ("m-4", "ProtocolError"),
        ]
        assert csms.stats.bad_frames == 2

    with_station(19020, "AC1", "secret-ac1", body)


@pytest.mark.parametrize(
    ("path", "password", "status"),
    [("AC1", "wrong-pass", 401), ("NOPE", "secret-ac1", 404), ("DC1", "secret-ac1", 401)],
)
def test_wrong_password_and_unknown_station_are_refused(path: str, password: str, status: int) -> None:
    csms = Csms(site(19030))

    async def main() -> None:
        await csms.start()
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(
                    f"ws://127.0.0.1:19030/ocpp/{path}",
                    subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                    additional_headers=auth("AC1", password),
                ):
                    pass
            assert refused.value.response.status_code == status
        finally:
            await csms.stop()

    asyncio.run(main())
    assert csms.stats.refused == 1


def test_seq_no_gaps_duplicates_and_offline_events_make_a_complete_record() -> None:
    async def body(csms: Csms, station: Station) -> None:
        await started(station, "tx-9", seq_no=0)
        for seq, offline in ((2, True), (1, True), (2, True)):
            await station.call(
                call.TransactionEvent(
                    event_type="Updated",
                    timestamp="2026-11-22T08:01:00Z",
                    trigger_reason="MeterValuePeriodic",
                    seq_no=seq,
                    transaction_info={"transaction_id": "tx-9", "charging_state": "Charging"},
                    offline=offline,
                    meter_value=meter(12.0, 8_280.0, 1_500.0),
                )
            )
        await station.call(
            call.TransactionEvent(
                event_type="Ended",
                timestamp="2026-11-22T08:30:00Z",
                trigger_reason="EVDeparted",
                seq_no=3,
                transaction_info={"transaction_id": "tx-9", "stopped_reason": "EVDisconnected"},
                meter_value=meter(0.0, 0.0, 9_000.0),
            )
        )

    csms = with_station(19040, "AC1", "secret-ac1", body)
    record = csms.transactions["tx-9"]
    assert record.complete
    assert (record.offline_events, record.events, record.energy_wh) == (3, 5, 8_000.0)
    assert record.stopped_reason == "EVDisconnected"


def test_a_sample_from_before_a_decrease_is_capped_until_a_newer_one_comes() -> None:
    async def body(csms: Csms, station: Station) -> None:
        await started(station, "tx-1")  # 16 A per phase
        csms.hand_over(output({"ac-1": (16.0, None)}))
        await asyncio.sleep(0.2)
        csms.hand_over(output({"ac-1": (10.0, None)}))
        await asyncio.sleep(0.2)
        assert station.profiles[-1] == (1, "TxProfile", "A", 10.0)
        snapshot = InputSnapshot()
        csms.refresh(snapshot, time.time())
        assert snapshot.connectors["ac-1"].current_a == (10.0, 10.0, 10.0), "the old 16 A says nothing about now"
        # Within the charger's 0.5 s response delay it may still draw up to 16 A: still capped.
        await station.call(call.MeterValues(evse_id=1, meter_value=meter(14.0, 9_660.0, 1_200.0)))
        csms.refresh(snapshot, time.time())
        assert snapshot.connectors["ac-1"].current_a == (10.0, 10.0, 10.0)
        # After it, a sample is taken as it is, also when it shows the station drawing more than told.
        await asyncio.sleep(0.5)
        await station.call(call.MeterValues(evse_id=1, meter_value=meter(14.0, 9_660.0, 1_300.0)))
        csms.refresh(snapshot, time.time())
        assert snapshot.connectors["ac-1"].current_a == (14.0, 14.0, 14.0)
        assert snapshot.connectors["ac-1"].power_w == 9_660.0
        # An overdrawing station's sample is not capped by the next decrease either.
        csms.hand_over(output({"ac-1": (8.0, None)}))
        await asyncio.sleep(0.2)
        csms.refresh(snapshot, time.time())
        assert snapshot.connectors["ac-1"].current_a == (14.0, 14.0, 14.0)

    with_station(19050, "AC1", "secret-ac1", body)
