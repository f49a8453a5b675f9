"""Shared by the HIL tests: the HIL plaza served in the test process, the controller as a real process.

``with_controller`` serves a scenario's plaza (Modbus servers and simulated OCPP stations), starts
``plaza-ems run --config SITE`` as its own process and calls ``watch(plaza, t)`` every tick; the
controller is stopped by its PID (SIGTERM, SIGKILL after 10 s) whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from hil.scenario import load_scenario
from plaza_ems.hilrun import HilPlaza

Watch = Callable[[HilPlaza, float], None]


async def start_controller(
    site: Path, tmp_path: Path, log_name: str, stats: bool = False
) -> asyncio.subprocess.Process:
    """``plaza-ems run --config SITE`` as its own process, its log in ``tmp_path / log_name``."""
    args = ["run", "--config", str(site), "--state-dir", str(tmp_path / "state")]
    if stats:
        args += ["--stats-json", str(tmp_path / "stats.json")]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plaza_ems.cli",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp_path / log_name).open("wb"),
    )


async def with_controller(
    scenario_path: Path,
    seconds: float,
    watch: Watch,
    *,
    site: Path,
    tmp_path: Path,
    after: Callable[[HilPlaza, asyncio.subprocess.Process], Awaitable[None]] | None = None,
) -> HilPlaza:
    """Serve the plaza, start the controller on ``site``, call ``watch(plaza, t_rel)`` every tick."""
    plaza = HilPlaza(load_scenario(scenario_path))
    await plaza.start()
    process = await start_controller(site, tmp_path, "controller.log", stats=True)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < seconds:
            plaza.tick()
            watch(plaza, loop.time() - start)
            await asyncio.sleep(0.05)
        if after is not None:
            await after(plaza, process)
    finally:
        await stop_process(process)
        await plaza.stop()
    return plaza


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM by its PID, SIGKILL if it has not ended within 10 s; nothing if it has ended already."""
    if process.returncode is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()


async def tick_for(plaza: HilPlaza, seconds: float) -> None:
    """Keep the plaza running (ticking every 0.05 s) for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        plaza.tick()
        await asyncio.sleep(0.05)
