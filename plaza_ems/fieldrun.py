"""``plaza-ems run --config``: the controller driving real field devices over Modbus TCP.

Every device of the site file's ``devices`` section gets a ``DeviceRunner`` task that fills the shared
input snapshot and writes what the cycle hands over; the scan loop runs on the system clock. Before the
first cycle the controller waits (bounded) for each device's first answer, so a plaza that is merely
starting up does not trip the fire latch on "no reading yet"; a device that stays silent is treated as
the fail-safe rules say. Operator commands come from the state directory's inbox. Cycle and device
statistics go to ``--stats-json`` every 10 s and at exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from controller.config import load_config
from controller.image import InputSnapshot
from controller.interlocks import SiteMode
from controller.program import ControlProgram, CycleOutput
from controller.scan import CycleStats, ScanLoop, SystemClock
from controller.site import compile_site
from drivers.modbus.registry import build_devices
from drivers.runtime import DeviceRunner
from plaza_ems.inbox import CommandInbox

log = logging.getLogger("plaza_ems.run")

STARTUP_WAIT_S = 3.0


class FieldLink:
    """Input source and output sink of the scan loop, backed by the device runners."""

    def __init__(self, snapshot: InputSnapshot, runners: list[DeviceRunner], inbox: CommandInbox) -> None:
        self.snapshot = snapshot
        self.runners = runners
        self.inbox = inbox

    def refresh(self, now: float) -> None:
        self.snapshot.resets.extend(self.inbox.poll(now))

    def write(self, output: CycleOutput) -> None:
        for runner in self.runners:
            runner.hand_over(output)


class FieldPublisher:
    """Logs interlock events and mode changes at once, a status line every ``every_s``, stats to a file."""

    def __init__(self, runners: list[DeviceRunner], every_s: float, stats_json: Path | None) -> None:
        self.runners = runners
        self.every_s = every_s
        self.stats_json = stats_json
        self._next_status = 0.0
        self._next_stats = 0.0
        self._mode = ""

    def publish(self, output: CycleOutput, stats: CycleStats) -> None:
        for event in output.events:
            level = logging.WARNING if event.kind == "tripped" else logging.INFO
            log.log(level, "interlock %s %s: %s", event.latch, event.kind, event.detail)
        if output.mode.value != self._mode:
            level = logging.INFO if output.mode is SiteMode.NORMAL else logging.WARNING
            log.log(level, "site mode is now %s", output.mode.value)
            self._mode = output.mode.value
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + self.every_s
            available = sum(1 for r in self.runners if r.status.available)
            charging = sum(1 for s in output.setpoints if not s.paused)
            summary = stats.summary()
            log.info(
                "mode=%s charging=%d/%d devices=%d/%d dso=%.0f%% cycle p99=%.2f ms overruns=%d",
                output.mode.value,
                charging,
                len(output.setpoints),
                available,
                len(self.runners),
                output.dso_pct,
                summary["cycle_p99_ms"],
                stats.overruns,
            )
        if self.stats_json is not None and now >= self._next_stats:
            self._next_stats = now + 10.0
            self.write_stats(stats)

    def report(self, stats: CycleStats) -> dict[str, Any]:
        return {
            **stats.summary(),
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

    def write_stats(self, stats: CycleStats) -> None:
        if self.stats_json is not None:
            self.stats_json.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.stats_json.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report(stats)) + "\n", encoding="utf-8")
            tmp.replace(self.stats_json)


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
    link = FieldLink(snapshot, runners, CommandInbox(state_dir))
    publisher = FieldPublisher(runners, status_every_s, stats_json)
    loop = ScanLoop(site, ControlProgram(site), link, link, publisher, SystemClock())
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
    tasks = [asyncio.create_task(runner.run(stop), name=runner.device.name) for runner in runners]
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
