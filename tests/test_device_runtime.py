"""Device runtime: per-device tasks, timeouts, back-off, readings invalidated, logged once per change."""

from __future__ import annotations

import asyncio
import logging

import pytest

from controller.image import InputSnapshot, MeterReading
from controller.interlocks import SiteMode
from controller.program import CycleOutput
from drivers.runtime import Backoff, DeviceError, DeviceRunner

PERIOD_S = 0.02
FAST = Backoff(first_s=0.02, cap_s=0.08)


class FakeMeter:
    """A device whose behaviour the test switches: healthy, failing, or slow."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.reads = 0
        self.connects = 0
        self.writes: list[float] = []

    async def connect(self) -> None:
        self.connects += 1
        if self.mode == "refuse":
            raise ConnectionRefusedError("connection refused")

    async def read(self, snapshot: InputSnapshot, now: float) -> None:
        if self.mode == "fail":
            raise DeviceError("exception response 0x02 (illegal data address) at register 6")
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        self.reads += 1
        snapshot.meters[self.name] = MeterReading((1.0, 2.0, 3.0), 1380.0, now)

    def forget(self, snapshot: InputSnapshot) -> None:
        snapshot.meters.pop(self.name, None)

    async def write(self, output: CycleOutput, now: float) -> None:
        self.writes.append(output.t)

    async def close(self) -> None:
        return None


def output_at(t: float) -> CycleOutput:
    return CycleOutput(
        t=t,
        mode=SiteMode.NORMAL,
        setpoints=(),
        batteries=(),
        limits=(),
        uncontrolled=None,
        dso_pct=100.0,
        latches={},
        events=(),
    )


async def run_for(seconds: float, *runners: DeviceRunner) -> None:
    stop = asyncio.Event()
    async with asyncio.timeout(seconds + 2.0):
        async with asyncio.TaskGroup() as group:
            for runner in runners:
                group.create_task(runner.run(stop))
            await asyncio.sleep(seconds)
            stop.set()


def runner_for(device: FakeMeter, snapshot: InputSnapshot, timeout_s: float = 0.05) -> DeviceRunner:
    return DeviceRunner(device, snapshot, period_s=PERIOD_S, timeout_s=timeout_s, backoff=FAST)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_healthy_device_polls_every_period_and_fills_the_snapshot() -> None:
    snapshot = InputSnapshot()
    meter = FakeMeter("m1")
    runner = runner_for(meter, snapshot)
    asyncio.run(run_for(0.3, runner))
    assert 8 <= meter.reads <= 16  # 0.3 s at 20 ms, with slack for a busy machine
    assert runner.status.available
    assert "m1" not in snapshot.meters  # a stopped runner takes its readings with it


def test_failed_read_removes_the_readings_at_once_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    snapshot = InputSnapshot()
    meter = FakeMeter("m1")
    runner = runner_for(meter, snapshot)
    seen: list[bool] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(runner.run(stop))
            await asyncio.sleep(0.1)
            seen.append("m1" in snapshot.meters)
            meter.mode = "fail"
            await asyncio.sleep(0.3)
            seen.append("m1" in snapshot.meters)
            meter.mode = "ok"
            await asyncio.sleep(0.3)
            seen.append("m1" in snapshot.meters)
            stop.set()

    with caplog.at_level(logging.INFO, logger="drivers.runtime"):
        asyncio.run(scenario())
    assert seen == [True, False, True]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("m1 unavailable" in m for m in messages) == 1, messages
    assert any("illegal data address" in m for m in messages)
    assert sum("m1 available again" in m for m in messages) == 1
    assert runner.status.errors >= 2  # it kept failing while down, and said so only once
    assert meter.connects >= 2


def test_slow_device_times_out_without_delaying_another_device() -> None:
    snapshot = InputSnapshot()
    slow = FakeMeter("slow")
    slow.mode = "slow"
    fast = FakeMeter("fast")
    slow_runner = runner_for(slow, snapshot)
    fast_runner = runner_for(fast, snapshot)
    asyncio.run(run_for(0.3, slow_runner, fast_runner))
    assert slow.reads == 0
    assert not slow_runner.status.available
    assert slow_runner.status.last_error == "read: timed out"
    assert fast.reads >= 8


def test_refused_connection_backs_off_instead_of_hammering() -> None:
    snapshot = InputSnapshot()
    meter = FakeMeter("m1")
    meter.mode = "refuse"
    runner = runner_for(meter, snapshot)
    asyncio.run(run_for(0.4, runner))
    # Delays 20, 40, 80, 80, ... ms: about 6 attempts in 0.4 s, not 20.
    assert 3 <= meter.connects <= 8
    assert runner.status.last_error == "connect: connection refused"


def test_handed_over_outputs_are_written_soon_and_only_the_newest() -> None:
    snapshot = InputSnapshot()
    meter = FakeMeter("m1")
    runner = DeviceRunner(meter, snapshot, period_s=0.2, timeout_s=0.05, backoff=FAST)

    async def scenario() -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(runner.run(stop))
            await asyncio.sleep(0.05)
            runner.hand_over(output_at(1.0))
            runner.hand_over(output_at(2.0))
            await asyncio.sleep(0.05)  # well before the next poll at 0.2 s
            stop.set()

    asyncio.run(scenario())
    assert meter.writes == [2.0]
