"""The scan loop: a fixed-period cycle on an injected clock, and the seams drivers plug into.

Each cycle: freeze inputs -> ``ControlProgram.step`` (interlocks, limits, intent, protection) ->
write outputs -> publish. The loop measures how long the logic and the whole cycle take, how late each
cycle started (jitter) and how many periods were overrun; a late cycle is never made up by running
cycles back to back — the schedule skips to the next period boundary.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import deque
from datetime import UTC, datetime
from typing import Protocol

from controller.image import InputSnapshot, ProcessImage, freeze
from controller.program import ControlProgram, CycleOutput
from controller.site import Site


class Clock(Protocol):
    """Wall time for timestamps, monotonic time for scheduling; tests inject a fake one."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class InputSource(Protocol):
    """Where drivers leave their latest readings; ``refresh`` lets a driver update before the freeze."""

    snapshot: InputSnapshot

    def refresh(self, now: float) -> None: ...


class OutputSink(Protocol):
    def write(self, output: CycleOutput) -> None: ...


class Publisher(Protocol):
    def publish(self, output: CycleOutput, stats: CycleStats) -> None: ...


class CycleCollector:
    """Garbage collection in the idle time between cycles instead of at random points inside one.

    The program's per-cycle objects are acyclic and freed by reference counting; the cyclic collector
    is only needed for the rare cycle of references. Left automatic, its generation-2 passes land in
    the middle of a cycle and add tens of milliseconds to the worst case. So: freeze what exists at
    start-up, disable automatic collection, collect the young generation after every cycle and
    everything every ``full_every`` cycles, always after the outputs are written.
    """

    def __init__(self, full_every: int = 600) -> None:
        self.full_every = full_every
        self._cycles = 0
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()

    def after_cycle(self) -> None:
        self._cycles += 1
        gc.collect(2 if self._cycles % self.full_every == 0 else 0)

    def close(self) -> None:
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


class CycleStats:
    """Cycle figures over a sliding window of the most recent cycles."""

    def __init__(self, period_s: float, window: int = 1000) -> None:
        self.period_s = period_s
        self.cycles = 0
        self.overruns = 0
        self.max_jitter_s = 0.0
        self._logic_s: deque[float] = deque(maxlen=window)
        self._cycle_s: deque[float] = deque(maxlen=window)
        self._jitter_s: deque[float] = deque(maxlen=window)

    def record(self, *, logic_s: float, cycle_s: float, jitter_s: float, overran: bool) -> None:
        self.cycles += 1
        self._logic_s.append(logic_s)
        self._cycle_s.append(cycle_s)
        self._jitter_s.append(jitter_s)
        self.max_jitter_s = max(self.max_jitter_s, jitter_s)
        if overran:
            self.overruns += 1

    def summary(self) -> dict[str, float | int]:
        return {
            "period_ms": self.period_s * 1000.0,
            "cycles": self.cycles,
            "overruns": self.overruns,
            "logic_p50_ms": percentile(self._logic_s, 50) * 1000.0,
            "logic_p99_ms": percentile(self._logic_s, 99) * 1000.0,
            "cycle_p99_ms": percentile(self._cycle_s, 99) * 1000.0,
            "jitter_p99_ms": percentile(self._jitter_s, 99) * 1000.0,
            "jitter_max_ms": self.max_jitter_s * 1000.0,
        }


def percentile(values: deque[float] | list[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


class ScanLoop:
    """Runs the control program every period until stopped."""

    def __init__(
        self,
        site: Site,
        program: ControlProgram,
        source: InputSource,
        sink: OutputSink,
        publisher: Publisher | None,
        clock: Clock,
    ) -> None:
        self.site = site
        self.program = program
        self.source = source
        self.sink = sink
        self.publisher = publisher
        self.clock = clock
        self.stats = CycleStats(site.period_s)
        self._connector_ids = tuple(c.id for c in site.connectors)
        self._battery_ids = tuple(b.id for b in site.batteries)
        self.image: ProcessImage | None = None
        """The last cycle's process image (for publishers that report inputs, e.g. telemetry)."""

    def run_once(self, scheduled: float) -> CycleOutput:
        """One cycle; ``scheduled`` is the monotonic time it was due.

        An overrun is a cycle that ends after the next period boundary, whether it ran long or
        started late: either way that boundary is missed.
        """
        clock = self.clock
        started = clock.monotonic()
        now = clock.now().timestamp()
        self.source.refresh(now)
        image = freeze(self.source.snapshot, now, self.site.stale_after_s, self._connector_ids, self._battery_ids)
        self.image = image
        logic_start = time.perf_counter()
        output = self.program.step(image)
        logic_s = time.perf_counter() - logic_start
        self.sink.write(output)
        finished = clock.monotonic()
        self.stats.record(
            logic_s=logic_s,
            cycle_s=finished - started,
            jitter_s=max(0.0, started - scheduled),
            overran=finished > scheduled + self.site.period_s,
        )
        if self.publisher is not None:
            self.publisher.publish(output, self.stats)
        return output

    async def run(self, stop: asyncio.Event, max_cycles: int | None = None) -> None:
        period = self.site.period_s
        next_due = self.clock.monotonic()
        collector = CycleCollector()
        try:
            await self._loop(stop, max_cycles, collector, period, next_due)
        finally:
            collector.close()

    async def _loop(
        self, stop: asyncio.Event, max_cycles: int | None, collector: CycleCollector, period: float, next_due: float
    ) -> None:
        done = 0
        while not stop.is_set() and (max_cycles is None or done < max_cycles):
            self.run_once(next_due)
            collector.after_cycle()
            done += 1
            next_due += period
            now = self.clock.monotonic()
            if now > next_due:
                # Overran: go on at the next boundary instead of running cycles back to back.
                next_due += math.ceil((now - next_due) / period) * period
            await self.clock.sleep(next_due - self.clock.monotonic())
