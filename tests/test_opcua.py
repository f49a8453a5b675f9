"""The maintenance OPC UA server with real asyncua clients over loopback (issue 6 acceptance).

One server per module (building the address space and the certificate takes a second or two); the
control program runs on a cycle table and the publish step runs after each cycle, as in ``plaza-ems
run``. Clients log in over Basic256Sha256 SignAndEncrypt with a throwaway client certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from controller.image import MeterReading
from drivers.opcua.config import OpcuaConfig, hash_password, verify_password
from drivers.opcua.server import NAMESPACE_URI
from drivers.opcua.values import TYPES
from tests.cycles import Ev
from tests.opcua_helpers import OpcuaRig, client_certificate, connected

SITE = """
site: {id: ua-test}
scan: {period_ms: 500, stale_after_ms: 2000}
control: {resume_delay_s: 1}
meters: [{id: m_grid}, {id: m_sub}, {id: m_pv}]
tree:
  id: grid
  limit_a: 100
  meter: m_grid
  children:
    - id: sub-a
      limit_a: 63
      meter: m_sub
      children:
        - id: cp1
          limit_a: 32
          connectors:
            - {id: cp1-1, max_current_a: 32}
            - {id: cp1-2, max_current_a: 32, phases: L2}
    - id: dc-board
      limit_a: 80
      connectors:
        - {id: dc1, type: dc, max_power_kw: 50, min_power_kw: 5}
batteries:
  - {id: bess, node: grid, capacity_kwh: 100, max_charge_kw: 30, max_discharge_kw: 30}
pv: [{id: roof, node: sub-a, meter: m_pv, peak_kw: 20}]
fire_panel: {id: fire}
devices:
  - {id: meter-grid, driver: eastron_sdm630, port: 15020, meter: m_grid}
  - {id: alfen-1, driver: alfen_ng9xx, port: 15031, connectors: [cp1-1, cp1-2]}
  - {id: io, driver: digital_io, port: 15040, contacts: {fire: 0}}
"""

GOOD_INPUTS: dict[str, Any] = {
    "meters": {"m_grid": (20.0, 18.0, 19.0), "m_sub": (12.0, 10.0, 11.0), "m_pv": (-5.0, -5.0, -5.0)},
    "evs": {
        "cp1-1": Ev(current_a=(10.0, 10.0, 10.0), energy_wh=2500.0, id_token="BADGE-7"),
        "cp1-2": None,
        "dc1": None,
    },
    "contacts": {"fire": True},
    "battery": {"bess": (55.0, 0.0)},
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcuaRig]:
    rig = OpcuaRig(SITE, tmp_path_factory.mktemp("opcua-state"))
    rig.inputs = dict(GOOD_INPUTS)
    rig.cycle(**GOOD_INPUTS)
    rig.start()
    rig.cycle(**GOOD_INPUTS)
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return asyncio.run(client_certificate(tmp_path_factory.mktemp("client")))


def nid(client: Client, idx: int, text: str) -> Node:
    return client.get_node(ua.NodeId(text, idx))


async def browse_all(node: Node) -> dict[str, Node]:
    """Every object below ``node`` by its string NodeId (hierarchical references, depth first)."""
    found: dict[str, Node] = {}
    for child in await node.get_children(nodeclassmask=ua.NodeClass.Object):
        found[str(child.nodeid.Identifier)] = child
        found.update(await browse_all(child))
    return found


def test_browse_finds_every_node_and_device_typed_with_units_and_live_values(
    rig: OpcuaRig, certs: tuple[Path, Path]
) -> None:
    async def run() -> None:
        async with connected(rig.url, certs, "victor") as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            site_node = await client.nodes.objects.get_child(f"{idx}:Site")
            objects = await browse_all(site_node)
            site = rig.plaza.site
            expected = (
                [f"Node.{n.id}" for n in site.nodes]
                + [f"Connector.{c.id}" for c in site.connectors]
                + ["Meter.m_grid", "Meter.m_sub", "Device.alfen-1", "Battery.bess", "Pv.roof", "SafetyIO", "Controller"]
            )
            missing = [e for e in expected if e not in objects]
            assert not missing
            # The hierarchy is the tree's: cp1 is below sub-a below grid, the connector below its charger.
            path = await objects["Connector.cp1-2"].get_path(as_string=True)
            assert [p.split(":", 1)[1] for p in path[-6:]] == ["Site", "grid", "sub-a", "cp1", "alfen-1", "cp1-2"]
            assert "Connector.dc1" in [str(c.nodeid.Identifier) for c in await objects["Node.dc-board"].get_children()]
            # Typed objects: each has its plaza-ems ObjectType, and the type lists the variables.
            for node_id, type_name in (
                ("Node.sub-a", "ElectricalNodeType"),
                ("Connector.cp1-1", "ConnectorType"),
                ("Meter.m_grid", "MeterType"),
                ("Battery.bess", "BatteryType"),
                ("Pv.roof", "PvType"),
                ("Device.alfen-1", "ChargerType"),
            ):
                type_def = await objects[node_id].read_type_definition()
                assert type_def == ua.NodeId(f"Types.{type_name}", idx)
                names = {(await v.read_browse_name()).Name for v in await objects[node_id].get_variables()}
                assert names == {v.name for v in TYPES[type_name]}
            # Units and data types.
            current = nid(client, idx, "Connector.cp1-1.CurrentL1A")
            assert await current.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
            eu = await (await current.get_child("0:EngineeringUnits")).read_value()
            assert (eu.DisplayName.Text, eu.UnitId) == ("A", 4279632)
            energy_eu = await nid(client, idx, "Connector.cp1-1.EnergyKWh.EngineeringUnits").read_value()
            assert energy_eu.DisplayName.Text == "kWh"
            soc_eu = await nid(client, idx, "Battery.bess.SocPct.EngineeringUnits").read_value()
            assert soc_eu.DisplayName.Text == "%"
            # Live values from the process image, the setpoint from the cycle output.
            assert await current.read_value() == 10.0
            assert await nid(client, idx, "Connector.cp1-1.EnergyKWh").read_value() == 2.5
            assert await nid(client, idx, "Connector.cp1-1.IdToken").read_value() == "BADGE-7"
            setpoint = next(s for s in rig.plaza.last.setpoints if s.connector == "cp1-1")  # type: ignore[union-attr]
            assert await nid(client, idx, "Connector.cp1-1.SetpointA").read_value() == pytest.approx(setpoint.current_a)
            assert await nid(client, idx, "Connector.cp1-2.Phases").read_value() == "L2"
            assert await nid(client, idx, "Meter.m_grid.CurrentL2A").read_value() == 18.0
            assert await nid(client, idx, "Battery.bess.SocPct").read_value() == 55.0
            # The limit in force and why: no DSO here, so fuses; the headroom follows the meter.
            assert await nid(client, idx, "Node.grid.LimitReason").read_value() == "fuse"
            assert await nid(client, idx, "Node.grid.HeadroomA").read_value() == pytest.approx(80.0)
            assert await nid(client, idx, "Node.sub-a.Metered").read_value() is True
            # An unmetered node shows the sum of what its devices measure.
            assert await nid(client, idx, "Node.cp1.CurrentL1A").read_value() == pytest.approx(10.0)
            assert await nid(client, idx, "Controller.FirmwareVersion").read_value() == "9.9.9"
            assert await nid(client, idx, "Controller.Mode").read_value() == "normal"
            # Source timestamps are the measurement's, not the publish time's.
            dv = await nid(client, idx, "Meter.m_grid.PowerW").read_data_value(raise_on_bad_status=False)
            meter = rig.plaza.snapshot.meters["m_grid"]
            assert dv.SourceTimestamp.timestamp() <= meter.ts
            assert dv.SourceTimestamp.timestamp() < dv.ServerTimestamp.timestamp() - 3600  # fake clock is in the past

    asyncio.run(run())


def test_a_stale_meter_shows_uncertain_and_a_missing_one_bad(rig: OpcuaRig, certs: tuple[Path, Path]) -> None:
    async def run() -> None:
        async with connected(rig.url, certs, "victor") as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            power = nid(client, idx, "Meter.m_sub.PowerW")
            assert (await power.read_data_value(raise_on_bad_status=False)).StatusCode.is_good()
            rig.plaza.silence("m_sub")
            for _ in range(6):  # 3 s at 500 ms: older than stale_after_ms
                rig.cycle()
            await asyncio.sleep(0.3)
            dv = await power.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
            assert dv.Value.Value == pytest.approx(33.0 * 230.0)
            del rig.plaza.snapshot.meters["m_sub"]
            rig.cycle()
            await asyncio.sleep(0.3)
            dv = await power.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == ua.StatusCodes.BadNoCommunication
            assert dv.Value.Value is None
            # The node's own values quote the meter too; a computed value (its rating) stays Good.
            assert (
                await nid(client, idx, "Node.sub-a.CurrentL1A").read_data_value(raise_on_bad_status=False)
            ).StatusCode.is_bad()
            assert (
                await nid(client, idx, "Node.sub-a.RatingA").read_data_value(raise_on_bad_status=False)
            ).StatusCode.is_good()
            rig.plaza.wake("m_sub")
            rig.cycle(meters={"m_sub": (12.0, 10.0, 11.0)})
            await asyncio.sleep(0.3)
            assert (await power.read_data_value(raise_on_bad_status=False)).StatusCode.is_good()

    asyncio.run(run())


class Collector:
    def __init__(self) -> None:
        self.changes: list[tuple[str, Any]] = []
        self.events: list[Any] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.changes.append((str(node.nodeid.Identifier), val))

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def test_subscription_gets_value_changes_and_alarm_events_and_reset_needs_operator_and_a_closed_input(
    rig: OpcuaRig, certs: tuple[Path, Path]
) -> None:
    async def run() -> None:
        async with (
            rig.cycling(),
            connected(rig.url, certs, "victor") as viewer,
            connected(rig.url, certs, "olga") as operator,
        ):
            idx = await viewer.get_namespace_index(NAMESPACE_URI)
            handler = Collector()
            sub = await viewer.create_subscription(50, handler)
            await sub.subscribe_data_change(nid(viewer, idx, "Connector.cp1-1.CurrentL1A"))
            await sub.subscribe_events(nid(viewer, idx, "Site"), ua.ObjectIds.AlarmConditionType)
            await wait_for(lambda: bool(handler.changes))
            rig.inputs["evs"] = {**GOOD_INPUTS["evs"], "cp1-1": Ev(current_a=(14.0, 14.0, 14.0))}
            await wait_for(lambda: ("Connector.cp1-1.CurrentL1A", 14.0) in handler.changes)

            # Fire: the alarm event arrives, charging stops, the latch holds.
            rig.inputs["contacts"] = {"fire": False}
            await wait_for(lambda: any(e.ConditionName == "FireInterlock" for e in handler.events))
            raised = next(e for e in handler.events if e.ConditionName == "FireInterlock")
            assert raised.Severity == 1000
            assert "contact open" in raised.Message.Text
            assert await nid(viewer, idx, "Alarm.FireInterlock.Active").read_value() is True
            assert await nid(viewer, idx, "Controller.Mode").read_value() == "fire"

            site_v = nid(viewer, idx, "Site")
            site_o = nid(operator, idx, "Site")
            reset = ua.NodeId("Site.ResetFireLatch", idx)
            with pytest.raises(UaStatusCodeError) as refused:
                await site_v.call_method(reset)
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
            with pytest.raises(UaStatusCodeError) as still_open:
                await site_o.call_method(reset)
            assert still_open.value.code == ua.StatusCodes.BadInvalidState
            assert rig.plaza.last is not None
            assert rig.plaza.last.latches["fire"].active

            rig.inputs["contacts"] = {"fire": True}
            await asyncio.sleep(0.2)
            assert rig.plaza.last.latches["fire"].active  # closing the input alone does not release it
            # Counted before the reset: its event may arrive before the call returns (seen under load).
            before = len([e for e in handler.events if e.ConditionName == "FireInterlock"])
            message = await site_o.call_method(reset)
            assert "reset" in message
            assert not rig.plaza.last.latches["fire"].active
            await wait_for(lambda: len([e for e in handler.events if e.ConditionName == "FireInterlock"]) > before)
            cleared = [e for e in handler.events if e.ConditionName == "FireInterlock"][before]
            assert getattr(cleared, "ActiveState/Id") is False
            assert cleared.Retain is True  # inactive but not yet acknowledged

            # Acknowledge: only operators; twice is refused; the state variable follows.
            ack = ua.NodeId("Site.AcknowledgeAlarm", idx)
            with pytest.raises(UaStatusCodeError) as viewer_ack:
                await site_v.call_method(ack, "FireInterlock", "seen")
            assert viewer_ack.value.code == ua.StatusCodes.BadUserAccessDenied
            await site_o.call_method(ack, "FireInterlock", "checked the panel")
            await wait_for(
                lambda: any(e.ConditionName == "FireInterlock" and e.Retain is False for e in handler.events)
            )
            assert await nid(viewer, idx, "Alarm.FireInterlock.AckedBy").read_value() == "olga"
            with pytest.raises(UaStatusCodeError) as twice:
                await site_o.call_method(ack, "FireInterlock", "again")
            assert twice.value.code == ua.StatusCodes.BadConditionBranchAlreadyAcked
            with pytest.raises(UaStatusCodeError) as unknown:
                await site_o.call_method(ack, "NoSuchAlarm", "")
            assert unknown.value.code == ua.StatusCodes.BadInvalidArgument

    asyncio.run(run())


def test_availability_and_maintenance_methods_hold_connectors_at_zero_and_check_arguments(
    rig: OpcuaRig, certs: tuple[Path, Path]
) -> None:
    def setpoint(connector: str) -> float:
        assert rig.plaza.last is not None
        return next(s.current_a for s in rig.plaza.last.setpoints if s.connector == connector)

    async def run() -> None:
        rig.inputs = dict(GOOD_INPUTS)
        for _ in range(40):
            rig.cycle(**rig.inputs)
        assert setpoint("cp1-1") > 0
        async with rig.cycling(), connected(rig.url, certs, "olga") as operator:
            idx = await operator.get_namespace_index(NAMESPACE_URI)
            site_o = nid(operator, idx, "Site")
            availability = ua.NodeId("Site.SetConnectorAvailability", idx)
            maintenance = ua.NodeId("Site.SetMaintenanceMode", idx)
            await site_o.call_method(availability, "cp1-1", False)
            await asyncio.sleep(0.2)
            assert setpoint("cp1-1") == 0.0
            assert await nid(operator, idx, "Connector.cp1-1.Available").read_value() is False
            await site_o.call_method(availability, "cp1-1", True)
            await wait_for(lambda: setpoint("cp1-1") > 0)

            await site_o.call_method(maintenance, "sub-a", True)
            await asyncio.sleep(0.2)
            assert setpoint("cp1-1") == 0.0
            assert await nid(operator, idx, "Node.cp1.Maintenance").read_value() is True
            assert (rig.maintenance.desk.path).read_text().count("sub-a") == 1  # kept across restarts
            await site_o.call_method(maintenance, "sub-a", False)
            await wait_for(lambda: setpoint("cp1-1") > 0)

            for args, code in (
                (("no-such-connector", False), ua.StatusCodes.BadInvalidArgument),
                (("cp1-1", "yes"), ua.StatusCodes.BadInvalidArgument),
                ((42, False), ua.StatusCodes.BadInvalidArgument),
                (("cp1-1",), ua.StatusCodes.BadArgumentsMissing),
            ):
                with pytest.raises(UaStatusCodeError) as bad:
                    await site_o.call_method(availability, *args)
                assert bad.value.code == code, args
            assert setpoint("cp1-1") > 0  # nothing changed

    asyncio.run(run())


def test_nobody_writes_values(rig: OpcuaRig, certs: tuple[Path, Path]) -> None:
    async def run() -> None:
        async with connected(rig.url, certs, "olga") as operator:
            idx = await operator.get_namespace_index(NAMESPACE_URI)
            node = nid(operator, idx, "Connector.cp1-1.SetpointA")
            with pytest.raises(UaStatusCodeError) as denied:
                await node.write_value(ua.DataValue(ua.Variant(32.0, ua.VariantType.Double)))
            assert denied.value.code == ua.StatusCodes.BadUserAccessDenied

    asyncio.run(run())


@pytest.mark.parametrize(
    ("user", "password", "mode", "code"),
    [
        (None, None, "SignAndEncrypt", ua.StatusCodes.BadIdentityTokenRejected),
        ("olga", "wrong", "SignAndEncrypt", ua.StatusCodes.BadUserAccessDenied),
        ("mallory", "x", "Sign", ua.StatusCodes.BadUserAccessDenied),
    ],
)
def test_anonymous_and_wrong_passwords_are_refused(
    rig: OpcuaRig, certs: tuple[Path, Path], user: str | None, password: str | None, mode: str, code: int
) -> None:
    async def run() -> None:
        with pytest.raises(UaStatusCodeError) as refused:
            async with connected(rig.url, certs, user, password, mode):
                pass
        assert refused.value.code == code

    asyncio.run(run())


def test_the_none_endpoint_is_off_unless_a_lab_allows_it(rig: OpcuaRig, certs: tuple[Path, Path]) -> None:
    async def run() -> None:
        client = Client(rig.url, timeout=10)
        endpoints = await client.connect_and_get_server_endpoints()
        policies = {e.SecurityPolicyUri.rsplit("#", 1)[1] for e in endpoints}
        modes = {e.SecurityMode for e in endpoints}
        assert policies == {"Basic256Sha256"}
        assert ua.MessageSecurityMode.None_ not in modes
        assert modes == {ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt}

    asyncio.run(run())


def test_passwords_are_hashed_and_the_config_refuses_plain_ones() -> None:
    stored = hash_password("s3cret", iterations=10_000)
    assert "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    with pytest.raises(ValueError, match="password_hash"):
        OpcuaConfig.model_validate({"users": [{"name": "x", "role": "operator", "password_hash": "s3cret"}]})
    with pytest.raises(ValueError, match="no users"):
        OpcuaConfig.model_validate({})


def test_a_meter_reading_with_a_later_timestamp_is_published_with_it(rig: OpcuaRig, certs: tuple[Path, Path]) -> None:
    async def run() -> None:
        async with connected(rig.url, certs, "victor") as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            rig.cycle(meters={"m_grid": (21.0, 18.0, 19.0)})
            reading: MeterReading = rig.plaza.snapshot.meters["m_grid"]
            await asyncio.sleep(0.3)
            dv = await nid(client, idx, "Meter.m_grid.CurrentL1A").read_data_value(raise_on_bad_status=False)
            assert dv.Value.Value == 21.0
            assert dv.SourceTimestamp.timestamp() == pytest.approx(reading.ts)

    asyncio.run(run())


def test_config_errors_name_the_field() -> None:
    from controller.config import ConfigError
    from drivers.opcua.config import opcua_config

    with pytest.raises(ConfigError) as err:
        opcua_config({"port": 0, "users": [{"name": "x", "role": "admin", "password_hash": "x"}]}, "site.yaml")
    text = str(err.value)
    assert "opcua.port" in text
    assert "opcua.users[0].role" in text
    with pytest.raises(ConfigError, match=r"opcua\.certificate: file not found"):
        opcua_config(
            {"allow_anonymous": True, "certificate": "/nonexistent.der", "private_key": "/nonexistent.pem"}, "s"
        )
