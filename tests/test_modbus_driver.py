"""The Modbus client driver against simulated devices over loopback TCP: decoding, bad input, faults.

Each test starts ``EndpointServer``s on 127.0.0.1:153xx in its own event loop and drives the adapters
(or the device runtime) directly; every test is bounded to a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from controller.config import SiteConfig, load_config, parse_config
from controller.image import InputSnapshot
from controller.interlocks import SiteMode
from controller.program import ConnectorSetpoint, CycleOutput
from drivers.modbus.alfen import AlfenDevice
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.io import IoModuleDevice
from drivers.modbus.maps import eastron_sdm630, janitza_umg604
from drivers.modbus.meters import MeterDevice
from drivers.modbus.registry import build_devices, check_devices
from drivers.runtime import Backoff, DeviceError, DeviceRunner
from hil.modbus.context import SimContext
from hil.modbus.devices import SimAlfen, SimIoModule, SimMeter
from hil.modbus.server import EndpointServer, Fault, SimulatedDevice
from hil.plant import Plant

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-small.site.yaml"
PORT = 15300


class _State:
    def __init__(self) -> None:
        self.contacts = {"fire": True}
        self.dso_pct = 100.0


def site() -> SiteConfig:
    return load_config(SITE).config


def sim_context(config: SiteConfig, device_id: str, plant: Plant, state: _State) -> SimContext:
    device = next(d for d in config.devices if d.id == device_id)
    return SimContext(config, device, plant, state, time.time)


def output(setpoints: dict[str, float], dso_pct: float = 100.0) -> CycleOutput:
    return CycleOutput(
        t=time.time(),
        mode=SiteMode.NORMAL,
        setpoints=tuple(ConnectorSetpoint(c, a, None) for c, a in setpoints.items()),
        batteries=(),
        limits=(),
        uncontrolled=None,
        dso_pct=dso_pct,
        latches={},
        events=(),
    )


def serve(units: dict[int, SimulatedDevice], body: Callable[[], Awaitable[None]], port: int = PORT) -> None:
    async def main() -> None:
        server = EndpointServer("127.0.0.1", port, units)
        await server.start()
        try:
            async with asyncio.timeout(15):
                await body()
        finally:
            await server.stop()

    asyncio.run(main())


def endpoint(port: int = PORT, unit_id: int | None = 1, timeout_s: float = 0.3) -> Endpoint:
    return Endpoint("127.0.0.1", port, unit_id, timeout_s)


def test_meter_readings_arrive_decoded_in_the_snapshot() -> None:
    config = site()
    plant = Plant(config)
    plant.loads["workshop"].profile_w = lambda _t: 23_000.0
    plant.step(0.0, 1.0)
    sim = SimMeter(sim_context(config, "umg-sub", plant, _State()), janitza_umg604.MAP)
    sim.update(1.0)
    driver = MeterDevice("umg-sub", endpoint(), janitza_umg604.MAP, "m_sub")
    snapshot = InputSnapshot()

    async def body() -> None:
        await driver.connect()
        await driver.read(snapshot, 1000.0)
        await driver.close()

    serve({1: sim}, body)
    reading = snapshot.meters["m_sub"]
    assert reading.current_a == pytest.approx((23_000 / 690,) * 3, abs=1e-3)
    assert reading.power_w == pytest.approx(23_000.0, rel=1e-6)
    assert reading.ts == 1000.0


def test_exception_response_names_device_register_and_code() -> None:
    config = site()
    sim = SimMeter(sim_context(config, "gw-grid", Plant(config), _State()), eastron_sdm630.MAP)
    sim.fault = Fault("exception", math.inf, exception_code=2)
    driver = MeterDevice("gw-grid", endpoint(), eastron_sdm630.MAP, "m_grid")

    async def body() -> None:
        await driver.connect()
        with pytest.raises(
            DeviceError, match=r"unit 1 input 6\.\.11 \(current_l1_a…\): Modbus exception 2 \(illegal data address\)"
        ):
            await driver.read(InputSnapshot(), 0.0)
        await driver.close()

    serve({1: sim}, body)


def test_wrong_unit_id_is_a_clear_gateway_error() -> None:
    config = site()
    sim = SimMeter(sim_context(config, "gw-grid", Plant(config), _State()), eastron_sdm630.MAP)
    driver = MeterDevice("gw-grid", endpoint(unit_id=9), eastron_sdm630.MAP, "m_grid")

    async def body() -> None:
        await driver.connect()
        with pytest.raises(DeviceError, match=r"unit 9 .*exception 11 \(gateway target device failed to respond\)"):
            await driver.read(InputSnapshot(), 0.0)
        await driver.close()

    serve({1: sim}, body)


def test_wrong_register_map_is_refused_not_misread() -> None:
    """A Janitza map pointed at an Eastron: its holding registers do not exist there."""
    config = site()
    sim = SimMeter(sim_context(config, "gw-grid", Plant(config), _State()), eastron_sdm630.MAP)
    driver = MeterDevice("gw-grid", endpoint(), janitza_umg604.MAP, "m_grid")

    async def body() -> None:
        await driver.connect()
        with pytest.raises(DeviceError, match=r"holding 19012\.\..*illegal data address"):
            await driver.read(InputSnapshot(), 0.0)
        await driver.close()

    serve({1: sim}, body)


def test_garbage_values_are_bad_never_served() -> None:
    """NaN floats reach the image as NaN (judged BAD); undecodable words are refused naming the register."""
    config = site()
    plant = Plant(config)
    meter = SimMeter(sim_context(config, "gw-grid", plant, _State()), eastron_sdm630.MAP)
    meter.fault = Fault("garbage", math.inf)
    alfen = SimAlfen(sim_context(config, "alfen-1", plant, _State()))
    alfen.update(0.0)
    alfen.fault = Fault("garbage", math.inf)
    meter_driver = MeterDevice("gw-grid", endpoint(), eastron_sdm630.MAP, "m_grid")
    connectors = [c for node in config.tree.children[0].children for c in node.connectors][:2]
    alfen_driver = AlfenDevice("alfen-1", endpoint(port=PORT + 1, unit_id=None), connectors, validity_s=30)
    snapshot = InputSnapshot()

    async def body() -> None:
        server = EndpointServer("127.0.0.1", PORT + 1, {1: alfen, 2: alfen, 200: alfen})
        await server.start()
        try:
            await meter_driver.connect()
            await meter_driver.read(snapshot, 0.0)
            await alfen_driver.connect()
            with pytest.raises(DeviceError, match=r"'s1_mode3_state' \(1201, STRING\): not ASCII"):
                await alfen_driver.read(snapshot, 0.0)
        finally:
            await meter_driver.close()
            await alfen_driver.close()
            await server.stop()

    serve({1: meter}, body)
    assert all(math.isnan(a) for a in snapshot.meters["m_grid"].current_a)
    assert "cp1-1" not in snapshot.connectors


def test_alfen_setpoint_written_once_then_refreshed_inside_the_validity() -> None:
    config = site()
    plant = Plant(config)
    sim = SimAlfen(sim_context(config, "alfen-1", plant, _State()))
    sim.update(0.0)
    connectors = [c for node in config.tree.children[0].children for c in node.connectors][:2]
    driver = AlfenDevice("alfen-1", endpoint(unit_id=None), connectors, validity_s=30)
    writes: list[tuple[str, float]] = []
    original = sim.on_write

    def record(unit: int, name: str, value: object, t: float) -> None:
        writes.append((f"{unit}:{name}", float(value)))  # type: ignore[arg-type]
        original(unit, name, value, t)  # type: ignore[arg-type]

    sim.on_write = record  # type: ignore[method-assign]

    async def body() -> None:
        await driver.connect()
        await driver.write(output({"cp1-1": 16.0, "cp1-2": 0.0}), 100.0)
        await driver.write(output({"cp1-1": 16.0, "cp1-2": 0.0}), 105.0)  # unchanged, not due
        await driver.write(output({"cp1-1": 16.0, "cp1-2": 0.0}), 110.0)  # validity/3 passed: refresh
        await driver.write(output({"cp1-1": 10.0, "cp1-2": 0.0}), 111.0)  # changed
        await driver.close()

    serve({1: sim, 2: sim, 200: sim}, body)
    assert writes == [
        ("1:max_current_setpoint_a", 16.0),
        ("2:max_current_setpoint_a", 0.0),
        ("1:max_current_setpoint_a", 16.0),
        ("2:max_current_setpoint_a", 0.0),
        ("1:max_current_setpoint_a", 10.0),
    ]
    assert plant.chargers["cp1-1"].pending[-1][1] == 10.0


def test_alfen_refuses_an_impossible_setpoint() -> None:
    config = site()
    sim = SimAlfen(sim_context(config, "alfen-1", Plant(config), _State()))
    connectors = [c for node in config.tree.children[0].children for c in node.connectors][:2]
    driver = AlfenDevice("alfen-1", endpoint(unit_id=None), connectors, validity_s=30)

    async def body() -> None:
        await driver.connect()
        with pytest.raises(DeviceError, match=r"write unit 1 1210 .*exception 3 \(illegal data value\)"):
            await driver.write(output({"cp1-1": 120.0}), 0.0)
        await driver.close()

    serve({1: sim, 2: sim, 200: sim}, body)


def test_io_module_contacts_and_dso_stage() -> None:
    config = site()
    state = _State()
    sim = SimIoModule(sim_context(config, "io", Plant(config), state))
    device_config = next(d for d in config.devices if d.id == "io")
    driver = IoModuleDevice("io", endpoint(), contacts=device_config.contacts, dso=device_config.dso_relays)
    seen: list[tuple[bool, float | None]] = []

    async def body() -> None:
        await driver.connect()
        for closed, stage in ((True, 100.0), (True, 60.0), (False, 30.0), (True, 0.0)):
            state.contacts["fire"] = closed
            state.dso_pct = stage
            sim.update(0.0)
            snapshot = InputSnapshot()
            await driver.read(snapshot, 0.0)
            seen.append((snapshot.contacts["fire"].closed, snapshot.dso.limit_pct if snapshot.dso else None))
        await driver.close()

    serve({1: sim}, body)
    assert seen == [(True, 100.0), (True, 60.0), (False, 30.0), (True, 0.0)]


def test_slow_device_never_delays_the_others_and_failures_log_once(caplog: pytest.LogCaptureFixture) -> None:
    config = site()
    plant = Plant(config)
    fast = SimMeter(sim_context(config, "gw-grid", plant, _State()), eastron_sdm630.MAP)
    slow = SimMeter(sim_context(config, "umg-sub", plant, _State()), janitza_umg604.MAP)
    slow.fault = Fault("slow", math.inf, delay_s=1.0)
    snapshot = InputSnapshot()
    fast_driver = MeterDevice("gw-grid", endpoint(timeout_s=0.2), eastron_sdm630.MAP, "m_grid")
    slow_driver = MeterDevice("umg-sub", endpoint(port=PORT + 1, timeout_s=0.2), janitza_umg604.MAP, "m_sub")
    runners = [
        DeviceRunner(d, snapshot, period_s=0.1, timeout_s=0.2, backoff=Backoff(0.2, 0.4))
        for d in (fast_driver, slow_driver)
    ]

    async def body() -> None:
        server = EndpointServer("127.0.0.1", PORT + 1, {1: slow})
        await server.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(r.run(stop)) for r in runners]
        try:
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="drivers.runtime"):
        serve({1: fast}, body)
    assert runners[0].status.reads >= 8, "the healthy meter keeps its pace"
    assert runners[1].status.reads == 0
    assert runners[1].status.errors >= 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("umg-sub unavailable")]
    assert len(lines) == 1, "one line when the device becomes unavailable, not one per failed poll"
    assert "timed out" in lines[0]


def test_dropped_connection_is_reconnected() -> None:
    config = site()
    sim = SimMeter(sim_context(config, "gw-grid", Plant(config), _State()), eastron_sdm630.MAP)
    driver = MeterDevice("gw-grid", endpoint(port=PORT + 2), eastron_sdm630.MAP, "m_grid")
    snapshot = InputSnapshot()
    runner = DeviceRunner(driver, snapshot, period_s=0.05, timeout_s=0.3, backoff=Backoff(0.1, 0.2))

    async def body() -> None:
        server = EndpointServer("127.0.0.1", PORT + 2, {1: sim})
        await server.start()
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            await asyncio.sleep(0.4)
            reads_before = runner.status.reads
            assert server.drop_connections() == 1
            await asyncio.sleep(0.8)
            assert runner.status.errors >= 1
            assert runner.status.reads > reads_before
            assert runner.status.available
        finally:
            stop.set()
            await task
            await server.stop()

    asyncio.run(body())


def test_registry_builds_every_device_of_the_hil_site() -> None:
    devices = build_devices(site())
    assert [type(d).__name__ for d in devices] == [
        "MeterDevice",
        "MeterDevice",
        "AlfenDevice",
        "AlfenDevice",
        "IoModuleDevice",
    ]
    assert all(isinstance(d, ModbusDevice) for d in devices)
    # 40 % of the 500 ms period unless the site file sets timeout_ms.
    assert devices[0].endpoint.timeout_s == pytest.approx(0.2)


def test_implausible_value_is_refused_with_its_register() -> None:
    """A current of 30 kA is a wrong map, word order or unit id — never a reading."""
    config = site()
    sim = SimMeter(sim_context(config, "gw-grid", Plant(config), _State()), eastron_sdm630.MAP)
    sim.image.set("current_l2_a", 30_000.0)
    driver = MeterDevice("gw-grid", endpoint(), eastron_sdm630.MAP, "m_grid")

    async def body() -> None:
        await driver.connect()
        with pytest.raises(DeviceError, match=r"'current_l2_a' \(30009\) reads 30000 A, beyond any plausible 5000"):
            await driver.read(InputSnapshot(), 0.0)
        await driver.close()

    serve({1: sim}, body)


def test_a_misspelt_or_contradicting_option_is_a_config_error() -> None:
    text = SITE.read_text(encoding="utf-8")
    misspelt = text.replace("options: {validity_s: 30}}\n  - id: io", "options: {validty_s: 30}}\n  - id: io")
    issues = check_devices(parse_config(misspelt).config)
    assert [(i.path, i.message) for i in issues] == [
        ("devices[3].options.validty_s", "unknown option (known: safe_current_a, validity_s)")
    ]
    # The charger's own safe current above what the controller assumes for a silent charger.
    higher = text.replace(
        "options: {validity_s: 30}}\n  - id: io", "options: {validity_s: 30, safe_current_a: 10}}\n  - id: io"
    )
    issues = check_devices(parse_config(higher).config)
    assert [i.path for i in issues] == ["devices[3].connectors[0]", "devices[3].connectors[1]"]
    assert "fallback_current_a 6 A is below the 10 A the charger applies on its own" in issues[0].message
