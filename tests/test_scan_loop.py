"""The scan loop on a manual clock: cycle count, period boundaries, overruns, jitter and cycle statistics."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime

import pytest

from controller.config import parse_config
from controller.image import ConnectorReading, ContactReading, InputSnapshot, LatchReset, MeterReading
from controller.interlocks import SiteMode
from controller.program import ControlProgram, CycleOutput
from controller.scan import Clock, CycleStats, ScanLoop, percentile
from controller.site import Site, compile_site

START_S = 1_700_000_000.0
"""Epoch seconds the manual clock starts at (an integer, so whole-period steps stay exact)."""

SITE_YAML = """
site: {id: scan-test}
scan: {period_ms: 1000, stale_after_ms: 3000}
meters: [{id: m_grid}]
fire_panel: {id: fire}
tree:
  id: grid
  limit_a: 63
  meter: m_grid
  children:
    - id: cp1
      limit_a: 32
      connectors:
        - {id: cp1-1}
        - {id: cp1-2, phases: L2L3L1}
"""


class ManualClock:
    """A Clock whose time only moves when ``sleep`` or ``advance`` moves it; nothing really sleeps.

    ``sleep_lag_s`` makes every sleep overshoot by that much, like a busy operating system would, so the
    loop's jitter measurement has something to measure.
    """

    def __init__(self, start_s: float = START_S, sleep_lag_s: float = 0.0) -> None:
        self.t = start_s
        self.sleep_lag_s = sleep_lag_s
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0.0, f"the loop asked to sleep a negative time: {seconds}"
        self.sleeps.append(seconds)
        self.t += seconds + self.sleep_lag_s
        await asyncio.sleep(0)  # still yield to the event loop, as a real sleep would

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeSource:
    """Input side: fills the snapshot with fresh, healthy readings stamped with the cycle's time."""

    def __init__(self, fire_closed: bool = True) -> None:
        self.snapshot = InputSnapshot()
        self.fire_closed = fire_closed
        self.refreshed_at: list[float] = []

    def refresh(self, now: float) -> None:
        self.refreshed_at.append(now)
        snap = self.snapshot
        snap.meters["m_grid"] = MeterReading((5.0, 5.0, 5.0), 3450.0, now)
        for conn in ("cp1-1", "cp1-2"):
            snap.connectors[conn] = ConnectorReading("A1", (0.0, 0.0, 0.0), 0.0, 0.0, None, now)
        snap.contacts["fire"] = ContactReading(self.fire_closed, now)


class FakeSink:
    """Output side: records each cycle's image time; may take (simulated) time on chosen cycles."""

    def __init__(self, clock: ManualClock, slow_cycles: dict[int, float] | None = None) -> None:
        self.clock = clock
        self.slow_cycles = slow_cycles or {}
        self.outputs: list[CycleOutput] = []

    @property
    def times(self) -> list[float]:
        """Image times relative to the clock's start."""
        return [out.t - START_S for out in self.outputs]

    def write(self, output: CycleOutput) -> None:
        index = len(self.outputs)
        self.outputs.append(output)
        self.clock.advance(self.slow_cycles.get(index, 0.0))


class FakePublisher:
    """Records what it is given; optionally sets the stop event after a number of cycles."""

    def __init__(self, stop: asyncio.Event | None = None, stop_after: int | None = None) -> None:
        self.stop = stop
        self.stop_after = stop_after
        self.cycles_seen: list[int] = []
        self.modes: list[SiteMode] = []

    def publish(self, output: CycleOutput, stats: CycleStats) -> None:
        self.cycles_seen.append(stats.cycles)
        self.modes.append(output.mode)
        if self.stop is not None and self.stop_after is not None and stats.cycles >= self.stop_after:
            self.stop.set()


def small_site() -> Site:
    return compile_site(parse_config(SITE_YAML, "scan-test").config)


def make_loop(
    clock: ManualClock,
    *,
    slow_cycles: dict[int, float] | None = None,
    source: FakeSource | None = None,
    publisher: FakePublisher | None = None,
) -> tuple[ScanLoop, FakeSource, FakeSink]:
    site = small_site()
    src = source or FakeSource()
    sink = FakeSink(clock, slow_cycles)
    as_clock: Clock = clock  # the manual clock satisfies the Clock protocol (checked by mypy)
    loop = ScanLoop(site, ControlProgram(site), src, sink, publisher, as_clock)
    return loop, src, sink


def run(loop: ScanLoop, max_cycles: int | None, stop: asyncio.Event | None = None) -> None:
    async def main() -> None:
        await loop.run(stop or asyncio.Event(), max_cycles=max_cycles)

    asyncio.run(main())


# -- cycle count and schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("cycles", [1, 2, 7])
def test_run_with_max_cycles_runs_exactly_that_many(cycles: int) -> None:
    clock = ManualClock()
    publisher = FakePublisher()
    loop, source, sink = make_loop(clock, publisher=publisher)
    run(loop, cycles)
    assert len(sink.outputs) == cycles
    assert len(source.refreshed_at) == cycles
    assert loop.stats.cycles == cycles
    assert publisher.cycles_seen == list(range(1, cycles + 1))


def test_cycles_start_on_period_boundaries() -> None:
    clock = ManualClock()
    loop, source, sink = make_loop(clock)
    run(loop, 5)
    assert sink.times == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0], abs=1e-6)
    # The input side is refreshed with the same time the image carries.
    assert [t - START_S for t in source.refreshed_at] == pytest.approx(sink.times, abs=1e-6)
    # A cycle that took no time sleeps a whole period.
    assert clock.sleeps == pytest.approx([1.0] * 5)
    assert loop.stats.overruns == 0
    assert loop.stats.max_jitter_s == 0.0


def test_stop_event_set_before_run_runs_no_cycle() -> None:
    clock = ManualClock()
    loop, _, sink = make_loop(clock)
    stop = asyncio.Event()
    stop.set()
    run(loop, None, stop)
    assert sink.outputs == []
    assert loop.stats.cycles == 0


def test_stop_event_ends_an_unbounded_run() -> None:
    clock = ManualClock()
    stop = asyncio.Event()
    publisher = FakePublisher(stop, stop_after=3)
    loop, _, sink = make_loop(clock, publisher=publisher)
    run(loop, None, stop)
    assert sink.times == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)


# -- overruns -------------------------------------------------------------------------------------


def test_overrun_is_counted_and_the_next_cycle_waits_for_the_next_boundary() -> None:
    clock = ManualClock()
    # The second cycle (starts at t=1) takes 1.5 periods and ends at t=2.5: boundary 2 is missed.
    loop, _, sink = make_loop(clock, slow_cycles={1: 1.5})
    run(loop, 4)
    # Not back to back (2.5) and not catching up (2.0): the next boundary, 3.0.
    assert sink.times == pytest.approx([0.0, 1.0, 3.0, 4.0], abs=1e-6)
    assert loop.stats.overruns == 1
    assert loop.stats.cycles == 4
    # The cycle after the overrun was on time, so no jitter at all.
    assert loop.stats.max_jitter_s == 0.0
    assert clock.sleeps[1] == pytest.approx(0.5)
    summary = loop.stats.summary()
    assert summary["overruns"] == 1
    assert summary["cycle_p99_ms"] == pytest.approx(1500.0)


def test_overrun_of_several_periods_skips_every_missed_boundary() -> None:
    clock = ManualClock()
    loop, _, sink = make_loop(clock, slow_cycles={0: 2.5})
    run(loop, 3)
    # Cycle 0 ends at 2.5: boundaries 1 and 2 are gone, the next one is 3.
    assert sink.times == pytest.approx([0.0, 3.0, 4.0], abs=1e-6)
    assert loop.stats.overruns == 1


def test_cycle_of_exactly_one_period_is_not_an_overrun() -> None:
    clock = ManualClock()
    loop, _, sink = make_loop(clock, slow_cycles={0: 1.0})
    run(loop, 3)
    assert sink.times == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    assert loop.stats.overruns == 0


def test_overrun_ending_exactly_on_a_boundary_runs_on_that_boundary() -> None:
    clock = ManualClock()
    # Cycle 0 starts at 0 and ends at exactly 2.0: boundary 1 was missed, boundary 2 is now.
    loop, _, sink = make_loop(clock, slow_cycles={0: 2.0})
    run(loop, 2)
    assert sink.times == pytest.approx([0.0, 2.0], abs=1e-6)


def test_a_late_start_that_makes_a_cycle_miss_the_next_boundary_is_an_overrun() -> None:
    # Every wake-up is 0.2 s late; cycle 1 then takes 0.9 s and ends at 2.1, past boundary 2.
    clock = ManualClock(sleep_lag_s=0.2)
    loop, _, sink = make_loop(clock, slow_cycles={1: 0.9})
    run(loop, 3)
    assert sink.times[:2] == pytest.approx([0.0, 1.2], abs=1e-6)
    assert loop.stats.overruns == 1


def test_slow_inputs_count_toward_the_cycle_time() -> None:
    """The cycle time runs from the start of the cycle (before the input refresh) to after the write."""

    class SlowSource(FakeSource):
        def __init__(self, clock: ManualClock) -> None:
            super().__init__()
            self.clock = clock

        def refresh(self, now: float) -> None:
            super().refresh(now)
            self.clock.advance(0.75)

    clock = ManualClock()
    loop, _, sink = make_loop(clock, source=SlowSource(clock), slow_cycles={1: 0.5})
    run(loop, 3)
    # Cycle 0: 0.75 s; cycle 1: 1.25 s (overrun, ends at 2.25); cycle 2 at the boundary 3.
    # The image time is taken before the refresh, so it is the cycle's start time.
    assert sink.times == pytest.approx([0.0, 1.0, 3.0], abs=1e-6)
    assert loop.stats.overruns == 1


# -- jitter ---------------------------------------------------------------------------------------


def test_late_wake_ups_are_recorded_as_jitter_without_drift() -> None:
    clock = ManualClock(sleep_lag_s=0.02)
    loop, _, sink = make_loop(clock)
    run(loop, 5)
    # Every wake-up is 20 ms late, but the schedule stays on the boundaries: no accumulated drift.
    assert sink.times == pytest.approx([0.0, 1.02, 2.02, 3.02, 4.02], abs=1e-6)
    assert clock.sleeps[1:] == pytest.approx([0.98] * 4, abs=1e-6)
    assert loop.stats.max_jitter_s == pytest.approx(0.02, abs=1e-6)
    summary = loop.stats.summary()
    assert summary["jitter_max_ms"] == pytest.approx(20.0, abs=1e-3)
    assert summary["jitter_p99_ms"] == pytest.approx(20.0, abs=1e-3)
    assert loop.stats.overruns == 0


def test_run_once_records_lateness_against_its_schedule() -> None:
    clock = ManualClock()
    loop, _, _ = make_loop(clock)
    loop.run_once(scheduled=START_S - 0.25)
    loop.run_once(scheduled=START_S + 5.0)  # "early" is not negative jitter
    assert loop.stats.max_jitter_s == pytest.approx(0.25)
    assert list(loop.stats._jitter_s) == pytest.approx([0.25, 0.0])


# -- what flows through one cycle ---------------------------------------------------------------------


def test_open_fire_contact_reaches_the_sink_as_fire_mode() -> None:
    clock = ManualClock()
    publisher = FakePublisher()
    loop, _, sink = make_loop(clock, source=FakeSource(fire_closed=False), publisher=publisher)
    run(loop, 2)
    assert [out.mode for out in sink.outputs] == [SiteMode.FIRE, SiteMode.FIRE]
    assert publisher.modes == [SiteMode.FIRE, SiteMode.FIRE]
    assert all(sp.paused for out in sink.outputs for sp in out.setpoints)
    assert [e.kind for e in sink.outputs[0].events] == ["tripped"]
    assert sink.outputs[1].events == ()


def test_resets_are_handed_to_the_program_once() -> None:
    clock = ManualClock()
    source = FakeSource(fire_closed=False)
    loop, _, sink = make_loop(clock, source=source)
    loop.run_once(clock.monotonic())
    source.fire_closed = True
    source.snapshot.resets.append(LatchReset("fire", "alice", START_S))
    loop.run_once(clock.monotonic())
    loop.run_once(clock.monotonic())
    assert [out.mode for out in sink.outputs] == [SiteMode.FIRE, SiteMode.NORMAL, SiteMode.NORMAL]
    assert [e.kind for e in sink.outputs[1].events] == ["reset"]
    assert sink.outputs[2].events == ()
    assert source.snapshot.resets == []


# -- CycleStats and percentile --------------------------------------------------------------------


def test_summary_keys_and_units() -> None:
    stats = CycleStats(period_s=0.5)
    stats.record(logic_s=0.001, cycle_s=0.002, jitter_s=0.003, overran=False)
    stats.record(logic_s=0.004, cycle_s=0.6, jitter_s=0.0, overran=True)
    summary = stats.summary()
    assert set(summary) == {
        "period_ms",
        "cycles",
        "overruns",
        "logic_p50_ms",
        "logic_p99_ms",
        "cycle_p99_ms",
        "jitter_p99_ms",
        "jitter_max_ms",
    }
    assert summary["period_ms"] == 500.0
    assert summary["cycles"] == 2
    assert summary["overruns"] == 1
    assert summary["logic_p50_ms"] == pytest.approx(1.0)
    assert summary["logic_p99_ms"] == pytest.approx(4.0)
    assert summary["cycle_p99_ms"] == pytest.approx(600.0)
    assert summary["jitter_p99_ms"] == pytest.approx(3.0)
    assert summary["jitter_max_ms"] == pytest.approx(3.0)


def test_summary_of_no_cycles_is_all_zero() -> None:
    summary = CycleStats(period_s=1.0).summary()
    assert summary["period_ms"] == 1000.0
    assert all(v == 0 for k, v in summary.items() if k != "period_ms")


def test_stats_window_slides_but_counters_and_max_jitter_do_not() -> None:
    stats = CycleStats(period_s=1.0, window=3)
    for k in range(1, 7):
        stats.record(logic_s=k / 1000.0, cycle_s=0.01, jitter_s=(0.5 if k == 1 else 0.0), overran=k == 1)
    summary = stats.summary()
    assert summary["cycles"] == 6
    assert summary["overruns"] == 1
    # Percentiles cover only the last 3 cycles (logic 4, 5, 6 ms)...
    assert summary["logic_p50_ms"] == pytest.approx(5.0)
    assert summary["logic_p99_ms"] == pytest.approx(6.0)
    assert summary["jitter_p99_ms"] == 0.0
    # ...the all-time maximum jitter does not forget.
    assert summary["jitter_max_ms"] == pytest.approx(500.0)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([float(k) for k in range(1, 101)], 50, 50.0),
        ([float(k) for k in range(1, 101)], 99, 99.0),
        ([float(k) for k in range(1, 101)], 100, 100.0),
        ([float(k) for k in range(1, 101)], 1, 1.0),
        ([float(k) for k in range(1, 101)], 0, 1.0),
        ([float(k) for k in range(1, 101)], 99.5, 100.0),
        ([float(k) for k in range(100, 0, -1)], 50, 50.0),  # order of input does not matter
        ([], 50, 0.0),
        ([], 99, 0.0),
        ([7.0], 1, 7.0),
        ([7.0], 99, 7.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # nearest rank: ceil(0.5 * 4) = 2nd value, no interpolation
        ([1.0, 2.0, 3.0, 4.0], 51, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 99, 4.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected
    assert percentile(deque(values), pct) == expected
