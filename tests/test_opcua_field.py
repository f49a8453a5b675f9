"""``plaza-ems run`` with its OPC UA server on the HIL plaza: an engineer resets the fire latch over OPC UA.

The HIL plaza (``examples/sites/hil-small.site.yaml``, Modbus TCP on 127.0.0.1:150xx) runs in this
process, the controller as its own process with an ``opcua`` section on a free loopback port. Bounded in
time; processes stopped by their PID.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import yaml
from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError

from hil.broker import free_port
from hil.scenario import load_scenario
from plaza_ems.hilrun import HilPlaza
from tests.hil_harness import start_controller, stop_process, tick_for
from tests.opcua_helpers import client_certificate, connected, users

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-small.site.yaml"
CONNECTORS = ("cp1-1", "cp1-2", "cp2-1", "cp2-2")

pytestmark = pytest.mark.slow


def write_files(tmp_path: Path, port: int) -> tuple[Path, Path]:
    site = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    site["opcua"] = {"host": "127.0.0.1", "port": port, "users": users()}
    site_path = tmp_path / "site.yaml"
    site_path.write_text(yaml.safe_dump(site), encoding="utf-8")
    document = {
        "name": "opcua-fire",
        "site": str(site_path),
        "start": "2023-03-14T05:00:00Z",
        "duration_s": 600,
        "loads": {"workshop": {"constant_kw": 3}},
        "evs": {"sessions": [{"connector": c, "arrive_s": 0, "depart_s": 600, "energy_kwh": 40} for c in CONNECTORS]},
        "events": [{"at_s": 8, "type": "fire_alarm"}, {"at_s": 10, "type": "fire_clear"}],
    }
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return site_path, scenario_path


def test_live_values_over_opcua_and_an_operator_resets_the_fire_latch(tmp_path: Path) -> None:
    port = free_port()
    site_path, scenario_path = write_files(tmp_path, port)
    url = f"opc.tcp://127.0.0.1:{port}/plaza-ems"
    seen: dict[str, object] = {}

    def charging_a(plaza: HilPlaza) -> float:
        return sum(plaza.simulation.plant.chargers[c].applied_a for c in CONNECTORS)

    async def run() -> None:
        certs = await client_certificate(tmp_path / "client")
        plaza = HilPlaza(load_scenario(scenario_path))
        await plaza.start()
        process = await start_controller(site_path, tmp_path, "controller.log", stats=True)
        try:
            await tick_for(plaza, 6.0)
            async with connected(url, certs, "olga") as client:
                idx = await client.get_namespace_index("urn:plaza-ems:ua")
                power = await client.get_node(ua.NodeId("Meter.m_grid.PowerW", idx)).read_data_value()
                seen["grid_power_good"] = power.StatusCode.is_good()
                seen["grid_power_w"] = power.Value.Value
                seen["charging_before"] = charging_a(plaza)
                await tick_for(plaza, 6.0)  # the fire alarm at 8 s, the contact closed again at 10 s
                seen["mode"] = await client.get_node(ua.NodeId("Controller.Mode", idx)).read_value()
                seen["charging_latched"] = charging_a(plaza)
                site = client.get_node(ua.NodeId("Site", idx))
                ticking = asyncio.create_task(tick_for(plaza, 8.0))
                try:
                    seen["reset"] = await site.call_method(ua.NodeId("Site.ResetFireLatch", idx))
                    await ticking
                finally:
                    ticking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticking
                seen["charging_after"] = charging_a(plaza)
                seen["mode_after"] = await client.get_node(ua.NodeId("Controller.Mode", idx)).read_value()
            with pytest.raises(UaStatusCodeError):
                async with connected(url, certs, "olga", "not-her-password"):
                    pass
        finally:
            await stop_process(process)
            await plaza.stop()

    asyncio.run(run())
    assert seen["grid_power_good"] is True
    assert isinstance(seen["grid_power_w"], float)
    assert seen["grid_power_w"] > 0
    assert isinstance(seen["charging_before"], float)
    assert seen["charging_before"] > 20.0
    assert seen["mode"] == "fire"
    assert seen["charging_latched"] == 0.0
    assert "reset" in str(seen["reset"])
    assert seen["mode_after"] == "normal"
    assert isinstance(seen["charging_after"], float)
    assert seen["charging_after"] > 0.0
    log = (tmp_path / "controller.log").read_text(encoding="utf-8")
    assert "OPC UA ResetFireLatch by olga" in log
    assert "interlock fire reset: by olga" in log
