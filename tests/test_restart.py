"""A controller killed with SIGKILL and restarted: the fire latch and the sessions come back; devices stayed safe.

The HIL plaza (``examples/sites/hil-small.site.yaml``, Modbus TCP on 127.0.0.1:150xx) runs in this
process, the controller as its own process on a state directory the restart shares. Bounded in time;
processes stopped by their PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import yaml

from hil.modbus.devices import SimAlfen
from plaza_ems.hilrun import HilPlaza
from plaza_ems.inbox import post_reset
from tests.hil_harness import start_controller, tick_for, with_controller

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "sites" / "hil-small.site.yaml"
CONNECTORS = ("cp1-1", "cp1-2", "cp2-1", "cp2-2")

pytestmark = pytest.mark.slow


def scenario(tmp_path: Path) -> Path:
    document = {
        "name": "restart",
        "site": str(SITE),
        "start": "2023-03-14T05:00:00Z",
        "duration_s": 600,
        "loads": {"workshop": {"constant_kw": 3}},
        "evs": {"sessions": [{"connector": c, "arrive_s": 0, "depart_s": 600, "energy_kwh": 40} for c in CONNECTORS]},
        "events": [{"at_s": 4, "type": "fire_alarm"}, {"at_s": 6, "type": "fire_clear"}],
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def charging_a(plaza: HilPlaza) -> float:
    return sum(plaza.simulation.plant.chargers[c].applied_a for c in CONNECTORS)


def test_fire_latch_and_sessions_survive_a_kill_and_only_a_reset_releases_them(tmp_path: Path) -> None:
    seen: dict[str, float] = {}

    async def kill_and_restart(plaza: HilPlaza, process: asyncio.subprocess.Process) -> None:
        seen["latched_before_kill"] = charging_a(plaza)
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        await tick_for(plaza, 2.0)
        restarted = await start_controller(SITE, tmp_path, "restarted.log")
        try:
            await tick_for(plaza, 6.0)  # the contact is healthy now: a new controller would charge again
            seen["after_restart"] = charging_a(plaza)
            post_reset(tmp_path / "state", "fire", "j.jansen")  # what `plaza-ems reset-latch` posts
            await tick_for(plaza, 6.0)
            seen["after_reset"] = charging_a(plaza)
        finally:
            os.kill(restarted.pid, signal.SIGTERM)
            await asyncio.wait_for(restarted.wait(), 10)

    plaza = asyncio.run(
        with_controller(
            scenario(tmp_path), 9.0, lambda p, t: None, site=SITE, tmp_path=tmp_path, after=kill_and_restart
        )
    )
    assert seen["latched_before_kill"] == 0.0, "the fire alarm latched, and the contact closing did not release it"
    assert seen["after_restart"] == 0.0, "the restarted controller kept the latch"
    assert seen["after_reset"] > 20.0, "an operator's reset releases it"
    log = (tmp_path / "restarted.log").read_text(encoding="utf-8")
    assert "latches active: fire; 4 open session(s)" in log
    assert "interlock fire reset: by j.jansen" in log
    alfen = plaza.devices["alfen-1"]
    assert isinstance(alfen, SimAlfen)
    assert all(s.last_write_s > 0 for s in alfen.sockets), "the restarted controller writes the Alfen again"
