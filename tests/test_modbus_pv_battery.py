"""PV inverter and battery drivers against their simulators over loopback Modbus TCP.

Each test builds a small site (PV, two batteries) with the driver registry and ``SIM_DEVICES``, serves
the simulators on 127.0.0.1:17xxx and drives the adapters directly (connect, read, write). The
simulators run on a virtual clock (wall time plus an offset the test advances), so revert timers and
watchdogs of several seconds expire at once; every test is bounded by a 10 s timeout.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from controller.config import SiteConfig, parse_config
from controller.image import InputSnapshot
from controller.interlocks import SiteMode
from controller.program import BatteryCommand, CycleOutput
from drivers.modbus.battery import SmaBatteryDevice, SunSpecBatteryDevice
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.maps import sma_storage
from drivers.modbus.pv import SunSpecPvDevice
from drivers.modbus.registry import build_devices, check_devices
from drivers.runtime import DeviceError
from hil.modbus.battery import SimSmaStorage, SimSunSpecStorage
from hil.modbus.context import SimContext
from hil.modbus.devices import SIM_DEVICES
from hil.modbus.pv import SimSunSpecPv
from hil.modbus.server import EndpointServer, SimulatedDevice
from hil.plant import Plant

PV_PEAK_W = 20_000.0
PV_NOW_W = 15_000.0
VOLTAGE_V = 230.0
FALLBACK_S = 6.0
"""revert_s / watchdog_s of every device: the drivers refresh every 2 s."""


def site_yaml(port: int, pv_options: dict[str, Any] | None = None) -> str:
    site = {
        "site": {"id": "pv-battery", "nominal_voltage_v": VOLTAGE_V},
        "scan": {"period_ms": 500, "stale_after_ms": 2000},
        "meters": [{"id": "m_grid"}, {"id": "m_pv"}, {"id": "m_bat2"}],
        "tree": {"id": "grid", "limit_a": 100, "meter": "m_grid"},
        "pv": [{"id": "pv1", "node": "grid", "peak_kw": PV_PEAK_W / 1000.0, "meter": "m_pv"}],
        "batteries": [
            {"id": "bat1", "node": "grid", "capacity_kwh": 20, "max_charge_kw": 10, "max_discharge_kw": 10},
            {"id": "bat2", "node": "grid", "capacity_kwh": 20, "max_charge_kw": 10, "max_discharge_kw": 10},
        ],
        "devices": [
            {
                "id": "inverter",
                "driver": "sunspec_pv",
                "port": port,
                "pv": "pv1",
                "meter": "m_pv",
                "options": {"revert_s": FALLBACK_S, **(pv_options or {})},
            },
            {"id": "sma", "driver": "sma_storage", "port": port + 1, "battery": "bat1", "options": {"watchdog_s": 6}},
            {
                "id": "storage",
                "driver": "sunspec_storage",
                "port": port + 2,
                "battery": "bat2",
                "meter": "m_bat2",
                "options": {"revert_s": FALLBACK_S},
            },
        ],
    }
    batteries: list[dict[str, Any]] = site["batteries"]  # type: ignore[assignment]
    for battery in batteries:
        battery["response_delay_s"] = 0
    batteries[1]["meter"] = "m_bat2"
    return yaml.safe_dump(site)


class VirtualClock:
    """Wall time plus an offset: distinct instants per request, and timers a test can run out at once."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


class _State:
    def __init__(self) -> None:
        self.contacts: dict[str, bool] = {}
        self.dso_pct = 100.0


@dataclass
class Bench:
    """The site's plant, its simulated devices (served) and its drivers (built by the registry)."""

    config: SiteConfig
    plant: Plant
    clock: VirtualClock
    sims: dict[str, SimulatedDevice]
    drivers: dict[str, ModbusDevice]
    snapshot: InputSnapshot = field(default_factory=InputSnapshot)
    last_t: float = 0.0

    def advance(self, seconds: float = 0.0) -> float:
        """Move the virtual clock, step the plant up to it and refresh every simulator's registers."""
        self.clock.offset_s += seconds
        t = self.clock()
        self.plant.step(self.last_t, max(0.0, t - self.last_t))
        self.last_t = t
        for sim in self.sims.values():
            sim.update(t)
        return t


def bench(port: int, pv_options: dict[str, Any] | None = None) -> Bench:
    config = parse_config(site_yaml(port, pv_options)).config
    plant = Plant(config)
    plant.loads["pv1"].profile_w = lambda _t: PV_NOW_W
    plant.batteries["bat2"].soc = 0.5
    clock = VirtualClock()
    sims = {d.id: SIM_DEVICES[d.driver](SimContext(config, d, plant, _State(), clock)) for d in config.devices}
    drivers = {d.name: d for d in build_devices(config)}
    result = Bench(config, plant, clock, sims, drivers, last_t=clock())
    result.advance()
    return result


def serve(b: Bench, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        servers = [
            EndpointServer("127.0.0.1", d.port, {unit: b.sims[d.id] for unit in b.sims[d.id].image.unit_ids})
            for d in b.config.devices
        ]
        for server in servers:
            await server.start()
        try:
            async with asyncio.timeout(10):
                await body()
        finally:
            for driver in b.drivers.values():
                await driver.close()
            for server in servers:
                await server.stop()

    asyncio.run(main())


def output(dso_pct: float = 100.0, batteries: Sequence[BatteryCommand] = ()) -> CycleOutput:
    return CycleOutput(
        t=time.time(),
        mode=SiteMode.NORMAL,
        setpoints=(),
        batteries=tuple(batteries),
        limits=(),
        uncontrolled=None,
        dso_pct=dso_pct,
        latches={},
        events=(),
    )


def pv_driver(b: Bench) -> SunSpecPvDevice:
    driver = b.drivers["inverter"]
    assert isinstance(driver, SunSpecPvDevice)
    return driver


def pv_sim(b: Bench) -> SimSunSpecPv:
    sim = b.sims["inverter"]
    assert isinstance(sim, SimSunSpecPv)
    return sim


# --- SunSpec discovery ----------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "port"), [(40000, 17100), (0, 17110), (50000, 17120)])
def test_discovery_finds_the_model_chain_at_each_base_address(base: int, port: int) -> None:
    b = bench(port, {"base_address": base})
    driver = pv_driver(b)

    async def body() -> None:
        await driver.connect()
        await driver.read(b.snapshot, b.clock())

    serve(b, body)
    assert driver.layout is not None
    assert driver.layout.base == base
    assert [m[0] for m in driver.layout.models] == [1, 103, 123]
    assert driver.values["manufacturer"] == "plaza-ems HIL"
    assert driver.values["serial_number"] == "inverter"


def test_readings_apply_each_scale_factor() -> None:
    b = bench(17130)
    driver = pv_driver(b)

    async def body() -> None:
        await driver.connect()
        await driver.read(b.snapshot, 1234.0)
        # A reconnect keeps the layout and its scale factors: only the marker is checked again.
        layout = driver.layout
        await driver.close()
        await driver.connect()
        assert driver.layout is layout
        await driver.read(InputSnapshot(), 1235.0)
        assert driver.values["power_w"] == PV_NOW_W

    serve(b, body)
    reading = b.snapshot.meters["m_pv"]
    # W_SF = 1: 15 000 W is stored as 1500; A_SF = -2: 21.739 A as 2174; V_SF = -1; Hz_SF = -2.
    assert reading.power_w == 15_000.0
    assert reading.current_a == pytest.approx((21.74, 21.74, 21.74), abs=1e-9)
    assert reading.ts == 1234.0
    assert driver.values["voltage_l1_v"] == pytest.approx(230.0)
    assert driver.values["frequency_hz"] == pytest.approx(50.0)
    assert driver.values["operating_state"] == 4  # MPPT


def test_no_suns_marker_is_a_clear_device_error() -> None:
    # The SMA battery (unit 3) speaks SMA Modbus, not SunSpec: 40000 reads zeros, 0 and 50000 are not mapped.
    b = bench(17140)
    stray = SunSpecPvDevice("stray", Endpoint("127.0.0.1", 17141, 3, 0.5), pv_id="pv1", meter_id=None, revert_s=6.0)

    async def body() -> None:
        with pytest.raises(DeviceError) as caught:
            await stray.connect()
        message = str(caught.value)
        assert "no 'SunS' marker at PDU 40000, 0 or 50000" in message
        assert "40000: 0x0000 0x0000" in message
        assert "0: exception 2 (illegal data address)" in message
        await stray.close()

    serve(b, body)


def test_missing_controls_model_fails_only_when_curtailment_is_wanted() -> None:
    b = bench(17150, {"controls_model": 0})
    driver = pv_driver(b)
    reader = SunSpecPvDevice(
        "reader", Endpoint("127.0.0.1", 17150, None, 0.5), pv_id="pv1", meter_id="m_pv", revert_s=6.0, curtail=False
    )

    async def body() -> None:
        with pytest.raises(DeviceError, match=r"no model 123 \(immediate controls\) or 704"):
            await driver.connect()
        await reader.connect()
        await reader.read(b.snapshot, b.clock())
        assert reader.commands(output(30.0)) == {}
        await reader.close()

    serve(b, body)
    assert b.snapshot.meters["m_pv"].power_w == PV_NOW_W


# --- curtailment ----------------------------------------------------------------------------------


def test_curtailment_follows_the_dso_stage_is_refreshed_and_reverts_without_refresh() -> None:
    b = bench(17160)
    driver, sim = pv_driver(b), pv_sim(b)
    pv = b.plant.loads["pv1"]

    async def body() -> None:
        await driver.connect()
        await driver.read(b.snapshot, b.clock())
        await driver.write(output(60.0), b.clock())
        assert sim.image.get("power_limit_pct") == pytest.approx(60.0)
        assert sim.image.get("power_limit_revert_s") == FALLBACK_S
        assert sim.image.get("power_limit_enable") == 1
        b.advance(0.5)
        assert pv.power_w == pytest.approx(0.6 * PV_PEAK_W)
        await driver.read(b.snapshot, b.clock())
        assert b.snapshot.meters["m_pv"].power_w == pytest.approx(12_000.0)
        assert sim.image.get("operating_state") == 5  # THROTTLED

        # Unchanged output: rewritten once a third of the revert time has passed, not before.
        written_s = sim.last_limit_write_s
        b.advance(1.0)
        await driver.write(output(60.0), b.clock())
        assert sim.last_limit_write_s == written_s
        b.advance(1.1)
        await driver.write(output(60.0), b.clock())
        assert sim.last_limit_write_s > written_s
        b.advance(FALLBACK_S - 1.0)
        assert sim.image.get("power_limit_enable") == 1, "refreshed within the revert time: still limited"

        # The controller stops writing: the inverter lifts the limit on its own.
        b.advance(1.5)
        assert sim.reverts == 1
        assert sim.image.get("power_limit_enable") == 0
        b.advance(0.5)
        assert pv.power_w == PV_NOW_W

        # A new stage, then back to 100 %: the enable goes to 0.
        await driver.write(output(30.0), b.clock())
        b.advance(0.5)
        assert pv.power_w == pytest.approx(0.3 * PV_PEAK_W)
        await driver.write(output(100.0), b.clock())
        assert sim.image.get("power_limit_enable") == 0
        b.advance(0.5)
        assert pv.power_w == PV_NOW_W
        # At 100 % nothing can revert: the enable 0 is not rewritten.
        released_s = sim.last_limit_write_s
        b.advance(FALLBACK_S)
        await driver.write(output(100.0), b.clock())
        assert sim.last_limit_write_s == released_s

    serve(b, body)


def test_curtailment_through_der_controls_model_704() -> None:
    b = bench(17170, {"controls_model": 704})
    driver, sim = pv_driver(b), pv_sim(b)

    async def body() -> None:
        # Written before any poll: the limit's scale factor (+54) was read on connect.
        await driver.connect()
        await driver.write(output(0.0), b.clock())

    serve(b, body)
    assert driver.layout is not None
    assert [m[0] for m in driver.layout.models] == [1, 103, 704]
    assert sim.image.get("power_limit_pct") == 0.0
    assert sim.image.get("power_limit_revert_s") == FALLBACK_S
    assert sim.image.get("power_limit_enable") == 1
    b.advance(0.5)
    assert b.plant.loads["pv1"].power_w == 0.0


# --- SMA battery ----------------------------------------------------------------------------------


def sma(b: Bench) -> tuple[SmaBatteryDevice, SimSmaStorage]:
    driver, sim = b.drivers["sma"], b.sims["sma"]
    assert isinstance(driver, SmaBatteryDevice)
    assert isinstance(sim, SimSmaStorage)
    return driver, sim


def test_sma_setpoint_and_external_control_go_in_one_request_with_sma_sign() -> None:
    b = bench(17200)
    driver, sim = sma(b)
    battery = b.plant.batteries["bat1"]

    async def body() -> None:
        await driver.connect()
        await driver.write(output(batteries=[BatteryCommand("bat1", 3000.0, standby=False)]), b.clock())
        assert sim.setpoint_w == -3000, "SMA counts discharge positive: charging 3 kW is -3000"
        assert sim.external
        b.advance(0.5)
        assert battery.power_w == 3000.0
        await driver.read(b.snapshot, b.clock())
        reading = b.snapshot.batteries["bat1"]
        assert reading.power_w == 3000.0
        assert reading.soc_pct == round(battery.soc * 100.0)

        # Only the setpoint changes; 802 must still travel with it in the same request.
        await driver.write(output(batteries=[BatteryCommand("bat1", -2000.0, standby=False)]), b.clock())
        assert sim.setpoint_w == 2000
        await driver.write(output(batteries=[BatteryCommand("bat1", 5000.0, standby=True)]), b.clock())
        assert sim.setpoint_w == 0, "standby holds 0 W under external control"
        assert sim.external
        b.advance(0.5)
        assert battery.power_w == 0.0

    serve(b, body)
    assert sim.lone_setpoints == 0


def test_sma_watchdog_drops_external_control_without_refresh() -> None:
    b = bench(17210)
    driver, sim = sma(b)
    battery = b.plant.batteries["bat1"]
    charge = output(batteries=[BatteryCommand("bat1", 4000.0, standby=False)])

    async def body() -> None:
        await driver.connect()
        await driver.write(charge, b.clock())
        first_s = sim.last_control_s
        b.advance(2.1)
        await driver.write(charge, b.clock())
        assert sim.last_control_s > first_s, "rewritten every third of the watchdog although unchanged"
        b.advance(5.0)
        assert sim.external
        assert battery.power_w == 4000.0
        b.advance(1.5)  # 6.5 s since the last write

    serve(b, body)
    assert not sim.external
    assert sim.fallbacks == 1
    assert sim.image.get("external_control") == sma_storage.EXTERNAL_CONTROL_INACTIVE
    b.advance(0.5)
    assert battery.power_w == 0.0


# --- SunSpec battery (model 124) ------------------------------------------------------------------


def test_sunspec_storage_bounds_readings_and_revert() -> None:
    b = bench(17220)
    driver, sim = b.drivers["storage"], b.sims["storage"]
    assert isinstance(driver, SunSpecBatteryDevice)
    assert isinstance(sim, SimSunSpecStorage)
    battery = b.plant.batteries["bat2"]

    async def body() -> None:
        await driver.connect()
        await driver.read(b.snapshot, b.clock())
        assert b.snapshot.batteries["bat2"].soc_pct == pytest.approx(50.0)
        await driver.write(output(batteries=[BatteryCommand("bat2", 5000.0, standby=False)]), b.clock())
        # WChaMax 10 kW: 5 kW is InWRte 50 % (raw 5000 at SF -2), OutWRte 0.
        assert sim.image.get("storage_control_mode") == 3
        assert sim.image.get("charge_rate_pct") == pytest.approx(50.0)
        assert sim.image.get("discharge_rate_pct") == 0.0
        assert sim.image.get("rate_revert_s") == FALLBACK_S
        b.advance(0.5)
        assert battery.power_w == 5000.0
        await driver.read(b.snapshot, b.clock())
        reading = b.snapshot.batteries["bat2"]
        assert reading.power_w == 5000.0, "the inverter's W (-5000, feeding the grid negative) flipped"
        meter = b.snapshot.meters["m_bat2"]
        assert meter.power_w == 5000.0
        assert meter.current_a == pytest.approx((7.25, 7.25, 7.25), abs=0.01)

        await driver.write(output(batteries=[BatteryCommand("bat2", -2500.0, standby=False)]), b.clock())
        assert sim.image.get("discharge_rate_pct") == pytest.approx(25.0)
        assert sim.image.get("charge_rate_pct") == 0.0
        b.advance(0.5)
        assert battery.power_w == -2500.0
        b.advance(FALLBACK_S + 0.5)  # no refresh

    serve(b, body)
    assert sim.reverts == 1
    assert sim.image.get("storage_control_mode") == 0
    b.advance(0.5)
    assert battery.power_w == 0.0


# --- raw registers, decoded independently of the project's codec -----------------------------------


def test_raw_registers_at_documented_addresses() -> None:
    b = bench(17230)
    b.plant.batteries["bat1"].command(b.clock(), -4200.0)
    b.advance(0.5)

    async def read(port: int, address: int, count: int, unit: int) -> bytes:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        assert await client.connect()
        try:
            response = await client.read_holding_registers(address, count=count, device_id=unit)
        finally:
            client.close()
        assert not response.isError()
        return struct.pack(f">{count}H", *response.registers)

    async def body() -> None:
        assert await read(17230, 40000, 2, 1) == b"SunS"
        model_id, length = struct.unpack(">HH", await read(17230, 40002, 2, 1))
        assert (model_id, length) == (1, 66)
        inverter = 40002 + 2 + length
        assert struct.unpack(">HH", await read(17230, inverter, 2, 1)) == (103, 50)
        w_raw, w_sf = struct.unpack(">hh", await read(17230, inverter + 14, 2, 1))
        assert w_raw * 10.0**w_sf == PV_NOW_W
        # SMA 30775 AC power (S32, feeding the grid positive) and 30845 SoC (U32 %), unit 3.
        (ac_power_w,) = struct.unpack(">i", await read(17231, 30775, 2, 3))
        assert ac_power_w == 4200
        (soc_pct,) = struct.unpack(">I", await read(17231, 30845, 2, 3))
        assert soc_pct == round(b.plant.batteries["bat1"].soc * 100.0)

        driver, _ = sma(b)
        await driver.connect()
        await driver.write(output(batteries=[BatteryCommand("bat1", 1500.0, standby=False)]), b.clock())
        setpoint_w, control = struct.unpack(">iI", await read(17231, 40149, 4, 3))
        assert (setpoint_w, control) == (-1500, sma_storage.EXTERNAL_CONTROL_ACTIVE)

    serve(b, body)


# --- registry ---------------------------------------------------------------------------------------


def test_registry_builds_the_drivers_and_checks_their_options() -> None:
    b = bench(17240)
    assert {name: type(d).__name__ for name, d in b.drivers.items()} == {
        "inverter": "SunSpecPvDevice",
        "sma": "SmaBatteryDevice",
        "storage": "SunSpecBatteryDevice",
    }
    assert pv_driver(b).revert_s == FALLBACK_S

    raw = yaml.safe_load(site_yaml(17240, {"revert_s": 1}))
    raw["devices"][1]["options"] = {"watchdog_s": 100_000}
    raw["devices"][2]["meter"] = "m_grid"
    issues = {issue.path: issue.message for issue in check_devices(parse_config(yaml.safe_dump(raw)).config)}
    assert issues == {
        "devices[0].options.revert_s": "must be a number in 3..3600",
        "devices[1].options.watchdog_s": "must be a number in 3..3600",
        "devices[2].meter": "'bat2' is measured by meter 'm_bat2' in the site file, not 'm_grid'; name that one",
    }
