"""``plaza-ems run``: the scan loop in real time, driving the simulated plaza of a scenario.

The clock is the system clock shifted so that the run starts at the scenario's start time (so data
profiles, prices and departure times line up); the plant advances by the real time that passed between
cycles. Operator commands are read from the state directory's inbox each cycle. The plant is wired
in-process through the same snapshot the drivers fill. When the scenario's site file has an ``mqtt``
section the cloud link runs next to it, exactly as with ``--config`` (``plaza_ems/cloud.py``): plans,
commands and snapshots then follow the scenario clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.image import ProcessImage
from controller.program import CycleOutput
from controller.scan import CycleStats, ScanLoop, SystemClock
from hil.scenario import load_scenario
from plaza_ems.cloud import CloudBridge, cloud_config
from plaza_ems.inbox import CommandInbox
from plaza_ems.simulate import Simulation
from plaza_ems.status import CyclePublisher

log = logging.getLogger("plaza_ems.run")


class ScenarioClock(SystemClock):
    """System time moved to the scenario's start; monotonic time untouched."""

    def __init__(self, start_s: float) -> None:
        self._offset = timedelta(seconds=start_s - time.time())

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


class PlantLink:
    """Input source and output sink backed by the in-process plant."""

    def __init__(self, simulation: Simulation, inbox: CommandInbox, cloud: CloudBridge | None = None) -> None:
        self.simulation = simulation
        self.snapshot = simulation.snapshot
        self.inbox = inbox
        self.cloud = cloud
        self._last_t: float | None = None

    def refresh(self, now: float) -> None:
        sim = self.simulation
        if self._last_t is not None and now > self._last_t:
            sim.plant.step(self._last_t, now - self._last_t)
        self._last_t = now
        if sim.inputs(now - sim.scenario.start_s, now):
            log.warning("scenario: fire alarm contact opens")
        if self.cloud is not None:
            self.cloud.refresh(self.snapshot, now)
        self.snapshot.resets.extend(self.inbox.poll(now))

    def write(self, output: CycleOutput) -> None:
        self.simulation.apply_outputs(output, output.t - self.simulation.scenario.start_s, output.t)


class StatusPublisher(CyclePublisher):
    """The status line shows the plant's connection currents and import, which only a simulation knows."""

    def __init__(
        self, simulation: Simulation, every_s: float, stats_json: Path | None, cloud: CloudBridge | None = None
    ) -> None:
        super().__init__(every_s, stats_json)
        self.simulation = simulation
        self.cloud = cloud
        self.image: Callable[[], ProcessImage | None] = lambda: None
        """The cycle's process image (the scan loop's), for the cloud's telemetry and snapshots."""

    def publish(self, output: CycleOutput, stats: CycleStats) -> None:
        image = self.image()
        if self.cloud is not None and image is not None:
            self.cloud.after_cycle(image, output)
        super().publish(output, stats)

    def report(self, stats: CycleStats) -> dict[str, Any]:
        report = super().report(stats)
        if self.cloud is not None:
            report["cloud"] = self.cloud.report()
        return report

    def log_status(self, output: CycleOutput, stats: CycleStats) -> None:
        plant = self.simulation.plant
        root = self.simulation.site.nodes[0].id
        charging = sum(1 for s in output.setpoints if not s.paused)
        currents = ", ".join(f"{a:.1f}" for a in plant.node_current_a[root])
        log.info(
            "mode=%s charging=%d/%d %s=[%s] A import=%.1f kW dso=%.0f%% cycle p99=%.2f ms overruns=%d",
            output.mode.value,
            charging,
            len(output.setpoints),
            root,
            currents,
            plant.node_power_w[root] / 1000.0,
            output.dso_pct,
            stats.summary()["logic_p99_ms"],
            stats.overruns,
        )


def run_realtime(
    *, scenario_path: str, duration_s: float | None, state_dir: Path, stats_json: Path | None, status_every_s: float
) -> int:
    scenario = load_scenario(scenario_path)
    simulation = Simulation(scenario)
    clock = ScenarioClock(scenario.start_s)
    cloud = None
    if scenario.site.mqtt is not None:
        config = cloud_config(scenario.site.mqtt, scenario_path)
        cloud = CloudBridge(config, scenario.site, simulation.site, simulation.program, state_dir)
    link = PlantLink(simulation, CommandInbox(state_dir), cloud)
    publisher = StatusPublisher(simulation, status_every_s, stats_json, cloud)
    loop = ScanLoop(simulation.site, simulation.program, link, link, publisher, clock)
    publisher.image = lambda: loop.image
    log.info(
        "controller for site '%s' running scenario '%s' at %.0f ms period; reset latches with "
        "'plaza-ems reset-latch fire --operator NAME --state-dir %s'",
        simulation.site.id,
        scenario.name,
        simulation.site.period_s * 1000,
        state_dir,
    )

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        max_cycles = int(duration_s / simulation.site.period_s) if duration_s is not None else None
        tasks = [asyncio.create_task(cloud.run(stop), name="cloud-link")] if cloud is not None else []
        try:
            await loop.run(stop, max_cycles=max_cycles)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    publisher.write_stats(loop.stats)
    log.info("stopped after %d cycles: %s", loop.stats.cycles, json.dumps(loop.stats.summary()))
    return 0
