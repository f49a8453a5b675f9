"""``plaza-ems run --config``: the controller driving real field devices over Modbus TCP.

Every device of the site file's ``devices`` section gets a ``DeviceRunner`` task that fills the shared
input snapshot and writes what the cycle hands over; the scan loop runs on the system clock. Before the
first cycle the controller waits (bounded) for each device's first answer, so a plaza that is merely
starting up does not trip the fire latch on "no reading yet"; a device that stays silent is treated as
the fail-safe rules say. Operator commands come from the state directory's inbox; the latches, sessions
and last setpoints are kept there too (``plaza_ems/statestore.py``), so a restart resumes them. Cycle and device
statistics go to ``--stats-json`` every 10 s and at exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.config import ConfigError, load_config
from controller.image import InputSnapshot, ProcessImage
from controller.program import ControlProgram, CycleOutput
from controller.scan import CycleStats, ScanLoop, SystemClock
from controller.site import compile_site
from drivers.modbus.registry import build_devices
from drivers.ocpp201.csms import Csms
from drivers.ocpp201.stations import compile_stations
from drivers.opcua.config import opcua_config
from drivers.opcua.values import ControllerInfo
from drivers.runtime import DeviceRunner
from plaza_ems.cloud import CloudBridge, cloud_config
from plaza_ems.inbox import CommandInbox
from plaza_ems.maintenance import Maintenance, config_hash, software_version
from plaza_ems.statestore import StateStore
from plaza_ems.status import CyclePublisher

log = logging.getLogger("plaza_ems.run")

STARTUP_WAIT_S = 3.0


class FieldLink:
    """Input source and output sink of the scan loop, backed by the device runners."""

    def __init__(
        self,
        snapshot: InputSnapshot,
        runners: list[DeviceRunner],
        inbox: CommandInbox,
        csms: Csms | None,
        cloud: CloudBridge | None = None,
        maintenance: Maintenance | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.runners = runners
        self.inbox = inbox
        self.csms = csms
        self.cloud = cloud
        self.maintenance = maintenance

    def refresh(self, now: float) -> None:
        if self.csms is not None:
            self.csms.refresh(self.snapshot, now)
        if self.cloud is not None:
            self.cloud.refresh(self.snapshot, now)
        self.snapshot.resets.extend(self.inbox.poll(now))
        if self.maintenance is not None:
            self.maintenance.refresh(self.snapshot, now)

    def write(self, output: CycleOutput) -> None:
        for runner in self.runners:
            runner.hand_over(output)
        if self.csms is not None:
            self.csms.hand_over(output)


class FieldPublisher(CyclePublisher):
    """The status line and the statistics name the devices: how many answer, and each one's record.

    After every cycle the program's state goes to the state store (which writes it when it changed).
    """

    def __init__(
        self,
        runners: list[DeviceRunner],
        csms: Csms | None,
        every_s: float,
        stats_json: Path | None,
        program: ControlProgram,
        store: StateStore,
    ) -> None:
        super().__init__(every_s, stats_json)
        self.runners = runners
        self.csms = csms
        self.program = program
        self.store = store
        self.cloud: CloudBridge | None = None
        self.maintenance: Maintenance | None = None
        self.image: Callable[[], ProcessImage | None] | None = None
        """The cycle's process image (the scan loop's), for the cloud's telemetry."""

    def publish(self, output: CycleOutput, stats: CycleStats) -> None:
        self.store.maybe_save(self.program.state, output.t)
        image = self.image() if self.image is not None else None
        if self.cloud is not None and image is not None:
            self.cloud.after_cycle(image, output)
        if self.maintenance is not None and image is not None:
            self.maintenance.after_cycle(image, output, stats, self.devices_online(), self._controller_info())
        super().publish(output, stats)

    def devices_online(self) -> dict[str, bool]:
        online = {r.device.name: r.status.available for r in self.runners}
        if self.csms is not None:
            online.update({sid: s.link is not None for sid, s in self.csms.stations.items()})
        return online

    def _controller_info(self) -> ControllerInfo | None:
        if self.maintenance is None:
            return None
        base = self.maintenance.info
        cloud = self.cloud
        if cloud is None:
            return base
        plan = cloud.plan
        return ControllerInfo(
            firmware_version=base.firmware_version,
            config_hash=base.config_hash,
            cloud_connected=cloud.link.stats.connected,
            plan_id=plan.id if plan is not None else None,
            plan_created_ts=plan.created_ts if plan is not None else None,
        )

    def log_status(self, output: CycleOutput, stats: CycleStats) -> None:
        available = sum(1 for r in self.runners if r.status.available)
        if self.csms is not None:
            available += sum(1 for s in self.csms.stations.values() if s.link is not None)
        charging = sum(1 for s in output.setpoints if not s.paused)
        log.info(
            "mode=%s charging=%d/%d devices=%d/%d dso=%.0f%% cycle p99=%.2f ms overruns=%d",
            output.mode.value,
            charging,
            len(output.setpoints),
            available,
            len(self.runners) + (len(self.csms.stations) if self.csms is not None else 0),
            output.dso_pct,
            stats.summary()["cycle_p99_ms"],
            stats.overruns,
        )

    def report(self, stats: CycleStats) -> dict[str, Any]:
        ocpp: dict[str, Any] = {}
        if self.csms is not None:
            ocpp["ocpp"] = self.csms.report()
        if self.cloud is not None:
            ocpp["cloud"] = self.cloud.report()
        if self.maintenance is not None:
            ocpp["opcua"] = self.maintenance.report()
        return {
            **stats.summary(),
            **ocpp,
            "devices": {
                r.device.name: {
                    "available": r.status.available,
                    "reads": r.status.reads,
                    "errors": r.status.errors,
                    "last_error": r.status.last_error,
                }
                for r in self.runners
            },
        }


async def run_field_async(
    *,
    config_path: str,
    duration_s: float | None,
    state_dir: Path,
    stats_json: Path | None,
    status_every_s: float,
    stop: asyncio.Event | None = None,
) -> CycleStats:
    loaded = load_config(config_path)
    site = compile_site(loaded.config)
    devices = build_devices(loaded.config, config_path)
    snapshot = InputSnapshot()
    runners = [
        DeviceRunner(device, snapshot, period_s=site.period_s, timeout_s=device.endpoint.timeout_s)
        for device in devices
    ]
    stations, station_issues = compile_stations(loaded.config)
    if station_issues:
        raise ConfigError(station_issues, config_path)
    csms = Csms(loaded.config) if stations else None
    store = StateStore(state_dir, site)
    program = ControlProgram(site, store.load())
    cloud = None
    if loaded.config.mqtt is not None:
        cloud = CloudBridge(cloud_config(loaded.config.mqtt, config_path), loaded.config, site, program, state_dir)
    maintenance = None
    if loaded.config.opcua is not None:
        info = ControllerInfo(firmware_version=software_version(), config_hash=config_hash(config_path))
        maintenance = Maintenance(opcua_config(loaded.config.opcua, config_path), site, state_dir, csms, info)
    link = FieldLink(snapshot, runners, CommandInbox(state_dir), csms, cloud, maintenance)
    publisher = FieldPublisher(runners, csms, status_every_s, stats_json, program, store)
    loop = ScanLoop(site, program, link, link, publisher, SystemClock())
    publisher.cloud = cloud
    publisher.maintenance = maintenance
    publisher.image = lambda: loop.image
    stop = stop or asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stop.set)
    log.info(
        "controller for site '%s': %d devices, %.0f ms period; reset latches with "
        "'plaza-ems reset-latch fire --operator NAME --state-dir %s'",
        site.id,
        len(devices),
        site.period_s * 1000,
        state_dir,
    )
    if csms is not None:
        await csms.start()
    if maintenance is not None:
        maintenance.start()
    tasks = [asyncio.create_task(runner.run(stop), name=runner.device.name) for runner in runners]
    if cloud is not None:
        tasks.append(asyncio.create_task(cloud.run(stop), name="cloud-link"))
    deadline = running.time() + STARTUP_WAIT_S
    # Polled rather than signalled: the runners know nothing of start-up, and this runs once.
    while running.time() < deadline and not _all_tried(runners):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    max_cycles = int(duration_s / site.period_s) if duration_s is not None else None
    try:
        await loop.run(stop, max_cycles=max_cycles)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if csms is not None:
            await csms.stop()
        if maintenance is not None:
            await asyncio.to_thread(maintenance.stop)
        publisher.write_stats(loop.stats)
    log.info("stopped after %d cycles: %s", loop.stats.cycles, json.dumps(loop.stats.summary()))
    return loop.stats


def _all_tried(runners: list[DeviceRunner]) -> bool:
    """Every device has answered or failed at least once."""
    return all(r.status.reads or r.status.errors for r in runners)


def run_field(
    *, config_path: str, duration_s: float | None, state_dir: Path, stats_json: Path | None, status_every_s: float
) -> int:
    asyncio.run(
        run_field_async(
            config_path=config_path,
            duration_s=duration_s,
            state_dir=state_dir,
            stats_json=stats_json,
            status_every_s=status_every_s,
        )
    )
    return 0
