"""The ABB Terra AC, Phoenix CHARX and Alpitronic adapters against their simulators over loopback Modbus TCP.

Each test starts an ``EndpointServer`` on 127.0.0.1:16xxx in its own event loop, serves the simulator of
a small site's device bound to a ``Plant``, and drives the adapter built by the driver registry directly
(connect, read, write). The plant's clock is a plain variable the test moves, so fallbacks are checked
without waiting. Raw-register checks read the words with a bare pymodbus client at the vendor's documented
address and decode them with ``struct`` alone, so a map wrong on both sides cannot pass.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Awaitable, Callable, Mapping
from string import Template

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.config import SiteConfig, parse_config
from controller.image import InputSnapshot
from controller.interlocks import SiteMode
from controller.program import ConnectorSetpoint, CycleOutput
from drivers.modbus.chargers import AbbTerraAcDevice, AlpitronicDevice, CharxDevice
from drivers.modbus.device import ModbusDevice
from drivers.modbus.registry import build_devices, check_devices
from drivers.runtime import DeviceError
from hil.modbus.chargers import SimAbbTerraAc, SimAlpitronic, SimCharx
from hil.modbus.context import SimContext
from hil.modbus.devices import SIM_DEVICES
from hil.modbus.server import EndpointServer, Fault, SimulatedDevice
from hil.plant import Ev, EvSpec, Plant

VOLTAGE_V = 230.0
THREE_V = 3 * VOLTAGE_V
TEST_TIMEOUT_S = 5.0

SITE = Template("""
site: {id: chargers, name: charger adapters}
scan: {period_ms: 500, stale_after_ms: 2000}
tree:
  id: grid
  limit_a: 400
  children:
    - id: cp-abb
      limit_a: 32
      connectors:
        - {id: abb-1, max_current_a: 32, response_delay_s: 1 $abb_extra}
    - id: cp-charx
      limit_a: 63
      connectors:
        - {id: charx-1, max_current_a: 32, response_delay_s: 1}
        - {id: charx-2, max_current_a: 32, response_delay_s: 1}
    - id: cp-hyc
      limit_a: 400
      connectors:
        - {id: hyc-1, type: dc, max_power_kw: 150, response_delay_s: 1, zero_pauses: false, $hyc_extra}
        - {id: hyc-2, type: dc, max_power_kw: 150, response_delay_s: 1, zero_pauses: false, fallback_current_a: 80}
devices:
  - {id: abb, driver: abb_terra_ac, port: $port, connectors: [abb-1]}
  - {id: charx, driver: phoenix_charx, port: $port, connectors: [charx-1, charx-2]}
  - {id: hyc, driver: alpitronic_hyc, port: $port, connectors: [hyc-1, hyc-2], options: {fallback_power_kw: 50}}
""")
DEFAULTS = {"abb_extra": "", "hyc_extra": "fallback_current_a: 80"}


class Clock:
    """The plant's time, moved by the test."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _State:
    def __init__(self) -> None:
        self.contacts: dict[str, bool] = {}
        self.dso_pct = 100.0


def site(port: int = 16000, edits: Mapping[str, str] | None = None) -> SiteConfig:
    """The test site with its devices on ``port``; ``edits`` fill the template's per-connector extras."""
    return parse_config(SITE.substitute({**DEFAULTS, **(edits or {})}, port=port)).config


def simulator(config: SiteConfig, device_id: str, plant: Plant, clock: Clock) -> SimulatedDevice:
    device = next(d for d in config.devices if d.id == device_id)
    return SIM_DEVICES[device.driver](SimContext(config, device, plant, _State(), clock))


def adapter(config: SiteConfig, device_id: str) -> ModbusDevice:
    return next(d for d in build_devices(config) if d.name == device_id)


def plug(plant: Plant, connector: str, *, soc: float = 0.5) -> None:
    spec = EvSpec(
        id=f"ev-{connector}",
        connector=connector,
        arrive_s=0.0,
        depart_s=1e9,
        energy_wh=40_000.0,
        capacity_wh=80_000.0,
        soc0=soc,
        max_current_a=32.0,
        phases=3,
        max_dc_power_w=150_000.0,
    )
    plant.chargers[connector].plug_in(Ev(spec, soc))


def output(
    setpoints: dict[str, float], dc: frozenset[str] = frozenset(), mode: SiteMode = SiteMode.NORMAL
) -> CycleOutput:
    """Setpoints in per-phase amperes; DC connectors get their power as the controller computes it."""
    return CycleOutput(
        t=0.0,
        mode=mode,
        setpoints=tuple(ConnectorSetpoint(c, a, a * THREE_V if c in dc else None) for c, a in setpoints.items()),
        batteries=(),
        limits=(),
        uncontrolled=None,
        dso_pct=100.0,
        latches={},
        events=(),
    )


def serve(port: int, units: dict[int, SimulatedDevice], body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        server = EndpointServer("127.0.0.1", port, units)
        await server.start()
        try:
            async with asyncio.timeout(TEST_TIMEOUT_S):
                await body()
        finally:
            await server.stop()

    asyncio.run(main())


async def raw_client(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


def words_to_bytes(words: list[int]) -> bytes:
    return b"".join(struct.pack(">H", w) for w in words)


# --- ABB Terra AC ------------------------------------------------------------------------------------


def test_abb_readings_arrive_decoded_in_the_snapshot() -> None:
    port = 16100
    config, clock = site(port), Clock(100.0)
    plant = Plant(config)
    sim = simulator(config, "abb", plant, clock)
    assert isinstance(sim, SimAbbTerraAc)
    plug(plant, "abb-1")
    plant.chargers["abb-1"].write_limit(100.0, 16.0)
    plant.step(100.0, 2.0)
    clock.t = 102.0
    sim.update(clock.t)
    device = adapter(config, "abb")
    assert isinstance(device, AbbTerraAcDevice)
    snapshot = InputSnapshot()

    async def body() -> None:
        await device.connect()
        await device.read(snapshot, 102.0)
        await device.close()

    serve(port, {1: sim}, body)
    reading = snapshot.connectors["abb-1"]
    assert reading.state == "C2"
    assert reading.current_a == pytest.approx((16.0, 16.0, 16.0), abs=1e-3)
    assert reading.power_w == pytest.approx(16.0 * THREE_V, abs=1.0)
    assert reading.energy_wh == pytest.approx(plant.chargers["abb-1"].session_wh, abs=1.0)
    assert reading.ts == 102.0


def test_abb_setpoint_reaches_the_plant_and_the_raw_registers_match_the_document() -> None:
    port = 16110
    config, clock = site(port), Clock(50.0)
    plant = Plant(config)
    sim = simulator(config, "abb", plant, clock)
    plug(plant, "abb-1")
    device = adapter(config, "abb")
    raw: dict[str, list[int]] = {}
    setpoint = sim.image.register("current_limit_setpoint_a")

    async def body() -> None:
        await device.connect()
        await device.write(output({"abb-1": 10.07}), 50.0)  # 0.1 A steps, rounded down
        raw["written"] = sim.image.words(1, setpoint)
        plant.step(50.0, 2.0)
        clock.t = 52.0
        sim.update(clock.t)
        client = await raw_client(port)
        try:
            currents = await client.read_holding_registers(0x4010, count=6, device_id=1)
            state = await client.read_holding_registers(0x400C, count=2, device_id=1)
            write_only = await client.read_holding_registers(0x4100, count=2, device_id=1)
        finally:
            client.close()
        raw["currents"] = list(currents.registers)
        raw["state"] = list(state.registers)
        assert write_only.isError(), "0x4100 is write-only: the charger refuses to read it"
        await device.write(output({"abb-1": 0.0}), 53.0)
        raw["paused"] = sim.image.words(1, setpoint)
        await device.close()

    serve(port, {1: sim}, body)
    # 0x4100: UINT32 mA, high word first, one FC16.
    assert struct.unpack(">I", words_to_bytes(raw["written"]))[0] == 10_000
    assert struct.unpack(">I", words_to_bytes(raw["paused"]))[0] == 0
    charger = plant.chargers["abb-1"]
    assert charger.applied_a == 10.0
    assert charger.pending[-1][1] == 0.0, "the pause is on its way after the response delay"
    # 0x4010..0x4015: three UINT32 mA; 0x400C: the state code in byte 2 of the frame & 0x7F (4 = C2).
    assert struct.unpack(">III", words_to_bytes(raw["currents"])) == (10_000, 10_000, 10_000)
    assert words_to_bytes(raw["state"])[2] & 0x7F == 4


def test_abb_refuses_an_impossible_setpoint_naming_the_register() -> None:
    port = 16120
    config = site(port)
    sim = simulator(config, "abb", Plant(config), Clock())
    device = adapter(config, "abb")

    async def body() -> None:
        await device.connect()
        with pytest.raises(
            DeviceError,
            match=r"write unit 1 0x4100 \(current_limit_setpoint_a = 40\.0\): "
            r"Modbus exception 3 \(illegal data value\)",
        ):
            await device.write(output({"abb-1": 40.0}), 0.0)
        await device.close()

    serve(port, {1: sim}, body)


def test_abb_stops_charging_when_not_polled_for_its_comm_timeout() -> None:
    port = 16130
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "abb", plant, clock)
    assert isinstance(sim, SimAbbTerraAc)
    plug(plant, "abb-1")
    device = adapter(config, "abb")
    assert device.charger_traits()["abb-1"].fallback_current_a == 0.0
    charger = plant.chargers["abb-1"]

    async def body() -> None:
        await device.connect()
        await device.write(output({"abb-1": 16.0}), 0.0)
        for t in range(0, 50, 10):  # polled every 10 s: keeps charging well past the 60 s timeout
            clock.t = float(t)
            sim.update(clock.t)
            await device.read(InputSnapshot(), clock.t)
            plant.step(clock.t, 10.0)
        assert charger.applied_a == 16.0
        await device.close()

    serve(port, {1: sim}, body)
    assert plant.chargers["abb-1"].power_w > 0
    # Nobody asks any more: past the comm timeout after the last poll (40 s) the charger stops.
    plant.step(50.0, 60.0)
    assert charger.applied_a == 0.0
    assert charger.power_w == 0.0


# --- Phoenix CHARX -----------------------------------------------------------------------------------


def test_charx_two_connectors_readings_setpoints_and_session_energy() -> None:
    port = 16200
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "charx", plant, clock)
    assert isinstance(sim, SimCharx)
    sim.energy_wh["charx-1"] = 1_000_000.0  # a lifetime counter that has seen many sessions
    sim.update(0.0)
    device = adapter(config, "charx")
    assert isinstance(device, CharxDevice)
    before, after = InputSnapshot(), InputSnapshot()
    setpoints: list[list[int]] = []

    async def body() -> None:
        await device.connect()
        await device.read(before, 0.0)
        plug(plant, "charx-1")
        await device.write(output({"charx-1": 16.7, "charx-2": 0.0}), 0.0)
        for name in ("c1_max_current_setpoint_a", "c2_max_current_setpoint_a"):
            setpoints.append(sim.image.words(255, sim.image.register(name)))
        plant.step(0.0, 10.0)
        clock.t = 10.0
        sim.update(10.0)
        await device.read(after, 10.0)
        await device.close()

    serve(port, {255: sim}, body)
    assert before.connectors["charx-1"].state == "A"
    assert before.connectors["charx-1"].energy_wh == 0.0
    assert setpoints == [[16], [0]], "whole amperes, rounded down; 0 pauses"
    assert plant.chargers["charx-1"].applied_a == 16.0
    one, two = after.connectors["charx-1"], after.connectors["charx-2"]
    assert one.state == "C"
    assert one.current_a == pytest.approx((16.0, 16.0, 16.0), abs=1e-3)
    assert one.power_w == pytest.approx(16.0 * THREE_V, abs=1e-3)
    # Lifetime counter minus its value when the session began (10 s at 11 040 W ≈ 31 Wh).
    assert one.energy_wh == pytest.approx(16.0 * THREE_V * 10.0 / 3600.0, abs=1.0)
    assert two.state == "A"
    assert two.current_a == (0.0, 0.0, 0.0)


def test_charx_raw_registers_match_the_document() -> None:
    port = 16210
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "charx", plant, clock)
    assert isinstance(sim, SimCharx)
    sim.energy_wh["charx-1"] = 123_456.0
    plug(plant, "charx-1")
    plant.chargers["charx-1"].write_limit(0.0, 20.0)
    plant.step(0.0, 2.0)
    sim.update(0.0)
    device = adapter(config, "charx")
    raw: dict[str, list[int]] = {}

    async def body() -> None:
        await device.connect()
        await device.write(output({"charx-1": 20.0, "charx-2": 6.0}), 0.0)
        client = await raw_client(port)
        try:
            for name, address, count in (
                ("currents", 1238, 6),
                ("power", 1244, 2),
                ("energy", 1250, 4),
                ("state1", 1299, 1),
                ("state2", 2299, 1),
                ("setpoint2", 2301, 1),
            ):
                response = await client.read_holding_registers(address, count=count, device_id=255)
                raw[name] = list(response.registers)
        finally:
            client.close()
        await device.close()

    serve(port, {255: sim}, body)
    # Connector × 1000 + offset: x238 INT32 mA ×3, x244 INT32 mW, x250 INT64 Wh, x299 ASCII letter, x301 U16 A.
    assert struct.unpack(">iii", words_to_bytes(raw["currents"])) == (20_000, 20_000, 20_000)
    assert struct.unpack(">i", words_to_bytes(raw["power"]))[0] == round(20.0 * THREE_V * 1000)
    assert struct.unpack(">q", words_to_bytes(raw["energy"]))[0] == 123_456
    assert chr(words_to_bytes(raw["state1"])[0]) == "C"
    assert chr(words_to_bytes(raw["state2"])[0]) == "A"
    assert struct.unpack(">H", words_to_bytes(raw["setpoint2"]))[0] == 6


def test_charx_refuses_an_impossible_setpoint_and_never_writes_below_six() -> None:
    port = 16220
    config = site(port)
    sim = simulator(config, "charx", Plant(config), Clock())
    device = adapter(config, "charx")
    below_min: list[int] = []

    async def body() -> None:
        await device.connect()
        await device.write(output({"charx-2": 5.9}), 0.0)
        below_min.extend(sim.image.words(255, sim.image.register("c2_max_current_setpoint_a")))
        with pytest.raises(
            DeviceError,
            match=r"write unit 255 x301 \(c1_max_current_setpoint_a = 100\): Modbus exception 3 \(illegal data value\)",
        ):
            await device.write(output({"charx-1": 100.0}), 0.0)
        await device.close()

    serve(port, {255: sim}, body)
    assert below_min == [0], "a setpoint below 6 A pauses instead of being raised"


# --- Alpitronic hypercharger -------------------------------------------------------------------------

HYC = frozenset({"hyc-1", "hyc-2"})


def test_alpitronic_power_limit_reaches_the_plant_and_readings_are_ac_equivalent() -> None:
    port = 16300
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    assert isinstance(sim, SimAlpitronic)
    plug(plant, "hyc-1")
    device = adapter(config, "hyc")
    assert isinstance(device, AlpitronicDevice)
    snapshot = InputSnapshot()
    setpoint_a = 50_000.0 / THREE_V

    async def body() -> None:
        await device.connect()
        await device.write(output({"hyc-1": setpoint_a, "hyc-2": 0.0}, HYC), 0.0)
        plant.step(0.0, 2.0)
        clock.t = 2.0
        sim.update(2.0)
        await device.read(snapshot, 2.0)
        await device.close()

    serve(port, {1: sim}, body)
    charger = plant.chargers["hyc-1"]
    assert charger.applied_a == pytest.approx(50_000.0 / THREE_V, abs=1e-3)
    assert charger.power_w == pytest.approx(50_000.0, abs=1.0)
    reading = snapshot.connectors["hyc-1"]
    assert reading.state == "C2"
    assert reading.power_w == pytest.approx(50_000.0, abs=1.0)
    # The per-phase AC current the plaza's feed carries, not the 125 A DC current.
    assert reading.current_a == pytest.approx((setpoint_a,) * 3, abs=1e-2)
    assert snapshot.connectors["hyc-2"].state == "A"


def test_alpitronic_pause_writes_the_pause_power_never_zero() -> None:
    port = 16310
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    plug(plant, "hyc-1")
    device = adapter(config, "hyc")
    written: list[tuple[str, int]] = []
    original = sim.on_write

    def record(unit: int, name: str, value: object, t: float) -> None:
        assert isinstance(value, int)
        written.append((name, value))
        original(unit, name, value, t)

    sim.on_write = record  # type: ignore[method-assign]
    raw: list[int] = []

    async def body() -> None:
        await device.connect()
        await device.write(output({"hyc-1": 40_000.0 / THREE_V, "hyc-2": 0.0}, HYC), 0.0)
        await device.write(output({"hyc-1": 0.0, "hyc-2": 0.0}, HYC), 1.0)  # paused
        await device.write(output({"hyc-1": 1000.0 / THREE_V, "hyc-2": 0.0}, HYC), 2.0)  # below the pause power
        client = await raw_client(port)
        try:
            response = await client.read_holding_registers(100, count=2, device_id=1)
        finally:
            client.close()
        raw.extend(response.registers)
        await device.close()

    serve(port, {1: sim}, body)
    assert written == [
        ("c1_max_power_w", 40_000),
        ("c2_max_power_w", 1547),
        ("c1_max_power_w", 1547),
    ], "the last setpoint (1000 W) is raised to the pause power, which is already written"
    assert all(value != 0 for _, value in written)
    # base+0 of connector 1: UINT32 W, high word first.
    assert struct.unpack(">I", words_to_bytes(raw))[0] == 1547
    # A paused Alpitronic still offers the pause power: the EV may draw it.
    plant.step(1.0, 3.0)
    assert plant.chargers["hyc-1"].power_w == pytest.approx(1547.0, abs=1.0)


def test_alpitronic_under_a_fire_interlock_writes_zero_watts() -> None:
    """The one case where ending the session is right: a paused Alpitronic would still deliver 1.5 kW."""
    port = 16315
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    plug(plant, "hyc-1")
    device = adapter(config, "hyc")

    async def body() -> None:
        await device.connect()
        await device.write(output({"hyc-1": 40_000.0 / THREE_V, "hyc-2": 0.0}, HYC), 0.0)
        await device.write(output({"hyc-1": 0.0, "hyc-2": 0.0}, HYC, SiteMode.FIRE), 1.0)
        await device.close()

    serve(port, {1: sim}, body)
    assert sim.image.get("c1_max_power_w") == 0
    plant.step(1.0, 3.0)
    assert plant.chargers["hyc-1"].power_w == 0.0


def test_alpitronic_zero_watts_aborts_the_session_which_the_adapter_reports_unavailable() -> None:
    """Why the adapter never writes 0 W: the simulated station does what the vendor warns of."""
    port = 16320
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    plug(plant, "hyc-1")
    device = adapter(config, "hyc")
    snapshot = InputSnapshot()

    async def body() -> None:
        client = await raw_client(port)
        try:
            response = await client.write_registers(100, [0, 0], device_id=1)
            assert not response.isError()
        finally:
            client.close()
        plant.step(0.0, 2.0)
        sim.update(2.0)
        await device.connect()
        await device.write(output({"hyc-1": 50_000.0 / THREE_V}, HYC), 2.0)
        plant.step(2.0, 2.0)
        sim.update(4.0)
        await device.read(snapshot, 4.0)
        await device.close()

    serve(port, {1: sim}, body)
    assert snapshot.connectors["hyc-1"].state == "F"
    assert plant.chargers["hyc-1"].power_w == 0.0


def test_alpitronic_raw_input_registers_match_the_document() -> None:
    port = 16330
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    assert isinstance(sim, SimAlpitronic)
    sim.energy_wh["hyc-1"] = 9_876_543.0
    plug(plant, "hyc-1")
    plant.chargers["hyc-1"].write_limit(0.0, 50_000.0 / THREE_V)
    plant.step(0.0, 2.0)
    sim.update(0.0)
    raw: dict[str, list[int]] = {}

    async def body() -> None:
        client = await raw_client(port)
        try:
            measured = await client.read_input_registers(100, count=6, device_id=1)
            energy = await client.read_input_registers(132, count=4, device_id=1)
        finally:
            client.close()
        raw["measured"], raw["energy"] = list(measured.registers), list(energy.registers)

    serve(port, {1: sim}, body)
    # Input registers of connector 1 at base 100: state U16, DC voltage U32 0.01 V, DC current U16 0.01 A,
    # power U32 W; base+32 total energy INT64 Wh.
    state, voltage, current, power = struct.unpack(">HIHI", words_to_bytes(raw["measured"]))
    assert (state, voltage, current, power) == (3, 40_000, 12_500, 50_000)
    assert struct.unpack(">q", words_to_bytes(raw["energy"]))[0] == 9_876_543


def test_alpitronic_refuses_more_than_the_connector_power_naming_the_register() -> None:
    port = 16340
    config = site(port)
    sim = simulator(config, "hyc", Plant(config), Clock())
    device = adapter(config, "hyc")

    async def body() -> None:
        await device.connect()
        with pytest.raises(
            DeviceError,
            match=r"write unit 1 base\+0 \(c2_max_power_w = 200000\): Modbus exception 3 \(illegal data value\)",
        ):
            await device.write(output({"hyc-2": 200_000.0 / THREE_V}, HYC), 0.0)
        await device.close()

    serve(port, {1: sim}, body)


def test_alpitronic_falls_back_to_its_own_limit_when_not_polled() -> None:
    port = 16350
    config, clock = site(port), Clock(0.0)
    plant = Plant(config)
    sim = simulator(config, "hyc", plant, clock)
    plug(plant, "hyc-1")
    device = adapter(config, "hyc")
    fallback_a = 50_000.0 / THREE_V  # options.fallback_power_kw: 50
    assert device.charger_traits()["hyc-1"].fallback_current_a == pytest.approx(fallback_a)
    assert device.charger_traits()["hyc-1"].pause_power_w == 1547.0

    async def body() -> None:
        await device.connect()
        await device.write(output({"hyc-1": 20_000.0 / THREE_V}, HYC), 0.0)
        await device.read(InputSnapshot(), 0.0)
        await device.close()

    serve(port, {1: sim}, body)
    charger = plant.chargers["hyc-1"]
    plant.step(0.0, 30.0)
    assert charger.power_w == pytest.approx(20_000.0, abs=1.0)
    plant.step(30.0, 40.0)  # 70 s since the last request: past the 60 s the station waits
    assert charger.applied_a == pytest.approx(fallback_a)
    assert charger.power_w == pytest.approx(50_000.0, abs=1.0)


def test_exception_response_on_read_names_the_register() -> None:
    port = 16360
    config = site(port)
    sim = simulator(config, "hyc", Plant(config), Clock())
    sim.fault = Fault("exception", math.inf, exception_code=2)
    device = adapter(config, "hyc")

    async def body() -> None:
        await device.connect()
        with pytest.raises(
            DeviceError,
            match=r"unit 1 input 100\.\.105 \(c1_state_code…\): Modbus exception 2 \(illegal data address\)",
        ):
            await device.read(InputSnapshot(), 0.0)
        await device.close()

    serve(port, {1: sim}, body)


# --- the registry ------------------------------------------------------------------------------------


def test_registry_builds_the_three_adapters() -> None:
    devices = build_devices(site())
    assert [type(d).__name__ for d in devices] == ["AbbTerraAcDevice", "CharxDevice", "AlpitronicDevice"]


@pytest.mark.parametrize(
    ("yaml_edit", "path", "message"),
    [
        (
            {"hyc_extra": "fallback_current_a: 80, zero_pauses: true"},
            "devices[2].connectors[0]",
            "'hyc-1': the charger aborts the session at 0 instead of pausing it; set zero_pauses: false",
        ),
        (
            {"hyc_extra": "fallback_current_a: 80, min_power_kw: 1"},
            "devices[2].connectors",
            "min_power_kw 1 kW is below the 1.547 kW",
        ),
        (
            {"hyc_extra": "fallback_current_a: 6"},
            "devices[2].connectors[0]",
            "'hyc-1': fallback_current_a 6 A is below the 72.4638 A the charger applies on its own",
        ),
        ({"abb_extra": ", phase_switching: true"}, "devices[0].connectors[0]", "set phase_switching: false"),
    ],
)
def test_connector_settings_that_contradict_the_device_are_refused(
    yaml_edit: dict[str, str], path: str, message: str
) -> None:
    issues = check_devices(site(edits=yaml_edit))
    assert [i.path for i in issues] == [path]
    assert message in issues[0].message


def test_connector_type_and_count_are_checked() -> None:
    text = SITE.substitute(DEFAULTS, port=16000)
    swapped = text.replace("connectors: [charx-1, charx-2]}", "connectors: [charx-1, hyc-2]}").replace(
        "connectors: [hyc-1, hyc-2]", "connectors: [hyc-1, charx-2]"
    )
    issues = check_devices(parse_config(swapped).config)
    assert [(i.path, i.message) for i in issues] == [
        ("devices[1].connectors", "'hyc-2' is DC; a Phoenix CHARX is AC"),
        ("devices[2].connectors", "'charx-2' is AC; an Alpitronic hypercharger is DC"),
    ]
    two_on_abb = text.replace("connectors: [abb-1]", "connectors: [abb-1, charx-2]").replace(
        "connectors: [charx-1, charx-2]", "connectors: [charx-1]"
    )
    issues = check_devices(parse_config(two_on_abb).config)
    assert [i.path for i in issues] == ["devices[0].connectors"]
    assert "exactly one connector" in issues[0].message
