"""End to end over loopback Modbus TCP: the HIL plaza in this process, the controller as a real process.

The controller runs ``plaza-ems run --config`` on the HIL site file (its devices on 127.0.0.1:150xx);
the test watches the plant's physical currents and what the simulated devices received. Each test is
bounded (scenario seconds, a process timeout) and stops the controller by its PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from hil.modbus.battery import SimSmaStorage
from hil.modbus.devices import SimAlfen
from hil.modbus.pv import SimSunSpecPv
from hil.scenario import load_scenario
from plaza_ems.hilrun import HilPlaza
from tests.hil_harness import start_controller, tick_for, with_controller

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-small.site.yaml"
PERIOD_S = 0.5
LIMITS_A = {"grid": 100.0, "sub-a": 63.0, "cp1": 32.0, "cp2": 32.0}

pytestmark = pytest.mark.slow


def write_scenario(tmp_path: Path, events: list[dict[str, object]], site: Path = SITE) -> Path:
    scenario = {
        "name": "hil-test",
        "site": str(site),
        "start": "2023-03-14T05:00:00Z",
        "duration_s": 600,
        "loads": {"workshop": {"constant_kw": 3}},
        "evs": {
            "sessions": [
                {"connector": c, "arrive_s": 0, "depart_s": 600, "energy_kwh": 40}
                for c in ("cp1-1", "cp1-2", "cp2-1", "cp2-2")
            ]
        },
        "events": events,
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    return path


def node_peaks(plaza: HilPlaza) -> dict[str, float]:
    return {node: max(plaza.simulation.plant.node_current_a[node]) for node in LIMITS_A}


def setpoints_a(plaza: HilPlaza) -> list[float]:
    values: list[float] = []
    for name in ("alfen-1", "alfen-2"):
        device = plaza.devices[name]
        assert isinstance(device, SimAlfen)
        for socket in device.sockets:
            register = device.image.register("max_current_setpoint_a")
            words = device.image.words(socket.prefix_unit, register)
            values.append(struct.unpack(">f", struct.pack(">HH", *words))[0])
    return values


def test_load_spike_keeps_every_node_within_its_limit(tmp_path: Path) -> None:
    # 20 kW ≈ 29 A per phase more on sub-a (63 A) at 8 s, for 10 s.
    scenario = write_scenario(
        tmp_path, [{"at_s": 8, "type": "load_spike", "load": "workshop", "extra_kw": 20, "duration_s": 10}]
    )
    worst_outside_window: dict[str, float] = dict.fromkeys(LIMITS_A, 0.0)
    charging_before_spike: list[float] = []
    spike_seen: list[float] = []

    def watch(plaza: HilPlaza, t: float) -> None:
        t_rel = plaza.clock() - plaza.scenario.start_s
        peaks = node_peaks(plaza)
        if 5.0 <= t_rel < 8.0:
            charging_before_spike.append(peaks["sub-a"])
        if 8.0 <= t_rel < 18.0:
            spike_seen.append(peaks["sub-a"])
        # Reaction window after the spike starts: one period to see it, one to act, the chargers'
        # 1 s response delay, plus slack for a busy 2-core machine.
        if t_rel > 3.0 and not 8.0 <= t_rel < 8.0 + 2 * PERIOD_S + 1.0 + 1.0:
            for node, peak in peaks.items():
                worst_outside_window[node] = max(worst_outside_window[node], peak - LIMITS_A[node])

    asyncio.run(with_controller(scenario, 22.0, watch, site=SITE, tmp_path=tmp_path))
    assert max(charging_before_spike) > 50.0, "the EVs should share sub-a's 63 A before the spike"
    assert max(spike_seen) > 50.0
    for node, excess in worst_outside_window.items():
        assert excess <= 0.0, f"{node} over its limit by {excess:.2f} A outside the reaction window"


def test_fire_contact_open_pauses_every_charger_within_a_cycle(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, [{"at_s": 8, "type": "fire_alarm"}])
    opened_at: list[float] = []
    paused_at: list[float] = []

    def watch(plaza: HilPlaza, t: float) -> None:
        t_rel = plaza.clock() - plaza.scenario.start_s
        if t_rel >= 8.0 and not opened_at and not plaza.simulation.contacts["fire"]:
            opened_at.append(t_rel)
        if opened_at and not paused_at and all(a == 0.0 for a in setpoints_a(plaza)):
            paused_at.append(t_rel)

    plaza = asyncio.run(with_controller(scenario, 12.0, watch, site=SITE, tmp_path=tmp_path))
    assert opened_at, "the contact never opened"
    assert paused_at, "every socket should have been written 0 A"
    # Worst case: the contact opens just after the I/O read, seen at the next read (one period
    # later), acted on at the freeze after it and written at once; the tick granularity adds 0.1 s.
    assert paused_at[0] - opened_at[0] <= 2 * PERIOD_S + 0.2
    peaks = node_peaks(plaza)
    assert peaks["cp1"] == peaks["cp2"] == 0.0, "no charging current after the chargers' response delay"


def test_silent_io_module_pauses_every_charger_within_a_cycle(tmp_path: Path) -> None:
    scenario = write_scenario(
        tmp_path, [{"at_s": 8, "type": "device_fault", "device": "io", "fault": "silent", "duration_s": 30}]
    )
    silent_at: list[float] = []
    paused_at: list[float] = []

    def watch(plaza: HilPlaza, t: float) -> None:
        t_rel = plaza.clock() - plaza.scenario.start_s
        if not silent_at and plaza.devices["io"].fault is not None:
            silent_at.append(t_rel)
        if silent_at and not paused_at and all(a == 0.0 for a in setpoints_a(plaza)):
            paused_at.append(t_rel)

    asyncio.run(with_controller(scenario, 12.0, watch, site=SITE, tmp_path=tmp_path))
    assert silent_at
    assert paused_at
    assert paused_at[0] - silent_at[0] <= 2 * PERIOD_S + 0.2
    log = (tmp_path / "controller.log").read_text(encoding="utf-8")
    assert "io unavailable: read:" in log
    assert "timed out" in log
    assert "interlock fire tripped: no reading from the I/O module" in log


def test_dso_relay_stages_limit_the_connection(tmp_path: Path) -> None:
    # 30 % of 100 A at the grid node from 8 s, back to 100 % at 16 s.
    scenario = write_scenario(
        tmp_path, [{"at_s": 8, "type": "dso_stage", "pct": 30}, {"at_s": 16, "type": "dso_stage", "pct": 100}]
    )
    during: list[float] = []
    after: list[float] = []

    def watch(plaza: HilPlaza, t: float) -> None:
        t_rel = plaza.clock() - plaza.scenario.start_s
        grid = max(plaza.simulation.plant.node_current_a["grid"])
        if 8.0 + 2 * PERIOD_S + 1.5 <= t_rel < 16.0:
            during.append(grid)
        if t_rel >= 21.0:
            after.append(grid)

    asyncio.run(with_controller(scenario, 24.0, watch, site=SITE, tmp_path=tmp_path))
    assert during
    assert max(during) <= 30.0, f"grid drew {max(during):.1f} A under the 30 % stage"
    assert after
    assert max(after) > 45.0, "charging should resume after the stage is lifted"


def test_alfen_left_alone_falls_back_to_its_safe_current_and_is_reported(tmp_path: Path) -> None:
    """The controller dies, the Alfen falls back; a restarted controller reports it, then takes over."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE.read_text(encoding="utf-8").replace("validity_s: 30", "validity_s: 3"), encoding="utf-8")
    scenario = write_scenario(tmp_path, [], site=site)
    left_alone_a: list[float] = []
    taken_over_a: list[float] = []

    async def kill_wait_restart(plaza: HilPlaza, process: asyncio.subprocess.Process) -> None:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        await tick_for(plaza, 4.0)
        left_alone_a.append(plaza.simulation.plant.chargers["cp2-1"].applied_a)
        restarted = await start_controller(site, tmp_path, "restarted.log")
        try:
            await tick_for(plaza, 5.0)
            taken_over_a.append(plaza.simulation.plant.chargers["cp2-1"].applied_a)
        finally:
            os.kill(restarted.pid, signal.SIGTERM)
            await asyncio.wait_for(restarted.wait(), 10)

    plaza = asyncio.run(
        with_controller(scenario, 6.0, lambda p, t: None, site=site, tmp_path=tmp_path, after=kill_wait_restart)
    )
    device = plaza.devices["alfen-2"]
    assert isinstance(device, SimAlfen)
    assert left_alone_a == [device.safe_current_a]
    assert taken_over_a
    assert taken_over_a[0] > device.safe_current_a
    log = (tmp_path / "restarted.log").read_text(encoding="utf-8")
    assert "alfen-2 socket 1 (cp2-1) is not using the EMS setpoint: it applies its safe current 6.0 A" in log
    assert "alfen-2 socket 1 (cp2-1) follows the EMS setpoint again" in log


def test_killed_controller_leaves_every_device_at_its_fallback(tmp_path: Path) -> None:
    """kill -9 the controller: each Alfen socket reaches its safe current within its validity time."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE.read_text(encoding="utf-8").replace("validity_s: 30", "validity_s: 3"), encoding="utf-8")
    scenario = write_scenario(tmp_path, [], site=site)
    reached: dict[str, float] = {}

    async def kill_and_watch(plaza: HilPlaza, process: asyncio.subprocess.Process) -> None:
        # Under load the EVs share 63 A: every socket is below its 32 A, none at the 6 A safe current yet.
        assert all(plaza.simulation.plant.chargers[c].applied_a > 6.0 for c in ("cp1-1", "cp1-2", "cp2-1", "cp2-2"))
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while loop.time() - killed < 3.0 + 1.5:
            plaza.tick()
            for conn, charger in plaza.simulation.plant.chargers.items():
                if conn not in reached and charger.applied_a == 6.0:
                    reached[conn] = loop.time() - killed
            await asyncio.sleep(0.05)

    asyncio.run(with_controller(scenario, 8.0, lambda p, t: None, site=site, tmp_path=tmp_path, after=kill_and_watch))
    assert set(reached) == {"cp1-1", "cp1-2", "cp2-1", "cp2-2"}
    # Within the 3 s validity after the last refresh (refreshed every 1 s), plus the tick.
    assert max(reached.values()) <= 3.0 + 0.2


def test_raw_registers_match_the_documents(tmp_path: Path) -> None:
    """Read raw words from the HIL servers with a bare client and decode them with struct alone."""
    scenario = write_scenario(tmp_path, [])

    async def main() -> None:
        plaza = HilPlaza(load_scenario(scenario))
        await plaza.start()
        plant = plaza.simulation.plant
        try:
            for _ in range(30):  # 3 s of plant time: the EVs charge at the chargers' fallback current
                plaza.tick()
                await asyncio.sleep(0.1)
            client = AsyncModbusTcpClient("127.0.0.1", port=15020, timeout=1, retries=0)
            await client.connect()
            # Eastron SDM630: 30007 "Phase 1 current", float32, input register, PDU = 30007 - 30001.
            r = await client.read_input_registers(6, count=2, device_id=1)
            l1 = struct.unpack(">f", struct.pack(">HH", *r.registers))[0]
            assert l1 == pytest.approx(abs(plant.node_current_a["grid"][0]), abs=0.01)
            client.close()
            client = AsyncModbusTcpClient("127.0.0.1", port=15021, timeout=1, retries=0)
            await client.connect()
            # Janitza UMG 604: 19000-series float32 holding registers; 19012 = current L1.
            r = await client.read_holding_registers(19012, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">HH", *r.registers))[0] == pytest.approx(
                abs(plant.node_current_a["sub-a"][0]), abs=0.01
            )
            client.close()
            client = AsyncModbusTcpClient("127.0.0.1", port=15031, timeout=1, retries=0)
            await client.connect()
            # Alfen NG9xx socket 1 (unit 1): 1201 Mode 3 state, 5 registers ASCII; 1212 safe current float32.
            r = await client.read_holding_registers(1201, count=5, device_id=1)
            state = b"".join(w.to_bytes(2, "big") for w in r.registers).rstrip(b"\x00").decode()
            assert state in ("B2", "C2")
            r = await client.read_holding_registers(1212, count=2, device_id=1)
            assert struct.unpack(">f", struct.pack(">HH", *r.registers))[0] == 6.0
            # Station registers on unit 200: 1105 number of sockets.
            r = await client.read_holding_registers(1105, count=1, device_id=200)
            assert r.registers == [2]
            # A unit id nobody answers to: gateway exception 0x0B.
            r = await client.read_holding_registers(1105, count=1, device_id=7)
            assert r.isError()
            assert r.exception_code == 0x0B
            client.close()
            client = AsyncModbusTcpClient("127.0.0.1", port=15040, timeout=1, retries=0)
            await client.connect()
            r = await client.read_discrete_inputs(0, count=4, device_id=1)
            assert r.bits[:4] == [True, True, True, True]  # fire contact closed, no DSO relay active
            client.close()
        finally:
            await plaza.stop()

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 30


PLAZA_40 = ROOT / "examples" / "sites" / "hil-plaza-40.site.yaml"


def short_timers_site(tmp_path: Path) -> Path:
    """The 40-charger plaza with every device's own fallback time cut to 3 s (tests must be short)."""
    text = PLAZA_40.read_text(encoding="utf-8")
    text = text.replace("options: {validity_s: 60}", "options: {validity_s: 3}")
    text = text.replace("driver: abb_terra_ac, port:", "options: {comm_timeout_s: 3}, driver: abb_terra_ac, port:")
    text = text.replace("options: {fallback_power_kw: 50}", "options: {fallback_power_kw: 50, fallback_after_s: 3}")
    text = text.replace("battery: bess}", "battery: bess, options: {watchdog_s: 3}}")
    text = text.replace("pv: pv-roof}", "pv: pv-roof, options: {revert_s: 3}}")
    site = tmp_path / "plaza-40.site.yaml"
    site.write_text(text, encoding="utf-8")
    return site


def test_killed_controller_leaves_the_40_charger_plaza_at_every_devices_fallback(tmp_path: Path) -> None:
    """kill -9 the controller of the 40-charger plaza: each device applies its own fallback within its time.

    Alfen sockets their safe current (6 A), ABB wallboxes stop (0 A), Alpitronic connectors their own
    power limit (50 kW), the SMA battery leaves external control, the PV inverter lifts its curtailment.
    """
    site = short_timers_site(tmp_path)
    scenario = tmp_path / "plaza-40.scenario.yaml"
    raw = yaml.safe_load((ROOT / "examples" / "hil" / "plaza-40.scenario.yaml").read_text(encoding="utf-8"))
    raw["site"] = str(site)
    for session in raw["evs"]["sessions"]:
        session["arrive_s"] = 0
    raw["loads"]["pv-roof"] = {"constant_kw": 60}
    raw["events"] = [{"at_s": 1, "type": "dso_stage", "pct": 60}]
    scenario.write_text(yaml.safe_dump(raw), encoding="utf-8")
    timer_s = 3.0
    reached: dict[str, float] = {}
    before: dict[str, object] = {}

    async def kill_and_watch(plaza: HilPlaza, process: asyncio.subprocess.Process) -> None:
        plant = plaza.simulation.plant
        sma, inverter = plaza.devices["sma"], plaza.devices["inverter"]
        assert isinstance(sma, SimSmaStorage)
        assert isinstance(inverter, SimSunSpecPv)
        before["sma_external"] = sma.external
        before["pv_cap_w"] = plant.loads["pv-roof"].cap_w
        before["abb_applied_a"] = plant.chargers["abb01-1"].applied_a
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while loop.time() - killed < timer_s + 1.5:
            plaza.tick()
            elapsed = loop.time() - killed
            for conn, charger in plant.chargers.items():
                fallback_a = 6.0 if conn.startswith("cp") else 0.0 if conn.startswith("abb") else None
                if conn.startswith("hyc"):
                    fallback_a = 50_000.0 / (3 * 230.0)
                if fallback_a is not None and conn not in reached and charger.applied_a == pytest.approx(fallback_a):
                    reached[conn] = elapsed
            if "sma" not in reached and not sma.external:
                reached["sma"] = elapsed
            if "inverter" not in reached and inverter.reverts >= 1:
                reached["inverter"] = elapsed
            await asyncio.sleep(0.05)

    asyncio.run(with_controller(scenario, 10.0, lambda p, t: None, site=site, tmp_path=tmp_path, after=kill_and_watch))
    assert before["sma_external"] is True, "the battery was under external control"
    assert before["pv_cap_w"] is not None, "the PV inverter was curtailed to the DSO stage"
    assert before["abb_applied_a"] != 0.0, "the ABB wallbox was charging"
    expected = {c for c in ("sma", "inverter")} | {
        c
        for c in yaml.safe_load(site.read_text(encoding="utf-8"))["devices"]
        for c in c.get("connectors", [])
        if not c.startswith("charx")  # the CHARX documents no fallback: its last limit holds
    }
    assert set(reached) == expected
    # Refreshed every third of the timer, so it runs out at most the timer after the kill (+ tick).
    assert max(reached.values()) <= timer_s + 0.3


def test_plaza_ems_hil_serves_until_sigterm(tmp_path: Path) -> None:
    """The ``plaza-ems hil`` command itself: ready file, real answers on the site's ports, clean stop."""
    ready = tmp_path / "ready"
    scenario = ROOT / "examples" / "hil" / "spike.scenario.yaml"

    async def main() -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "plaza_ems.cli",
            "hil",
            str(scenario),
            "--ready-file",
            str(ready),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(20):
                while not ready.exists():  # noqa: ASYNC110 - another process writes it
                    await asyncio.sleep(0.05)
            client = AsyncModbusTcpClient("127.0.0.1", port=15040, timeout=1, retries=0)
            await client.connect()
            response = await client.read_discrete_inputs(0, count=1, device_id=1)
            client.close()
            assert response.bits[0] is True, "the fire contact is closed"
        finally:
            os.kill(process.pid, signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 10)
        return code

    assert asyncio.run(main()) == 0
