"""Device runtime: one supervised task per field device between the protocol drivers and the scan cycle.

Each device runs on its own task, so a slow or dead device never delays another device or the cycle:
the cycle freezes whatever readings are there, and a reading that did not arrive ages into STALE on
its own. The task follows the cycle: when the cycle hands over its output the device writes what
changed at once, and reads as late as it can while still finishing before the next freeze, so the
inputs are as fresh as a PLC's input scan. A failed or timed-out read removes the device's readings at once (they
are never served stale), and the device reconnects with a back-off that doubles from ``first_s`` up
to ``cap_s``. Availability is logged once when it is lost (with the reason) and once when it returns,
never on every poll. The cycle never waits on a socket.

Protocol quirks stay inside the ``Device`` implementations (drivers/modbus, drivers/ocpp201, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.image import InputSnapshot
from controller.program import CycleOutput

log = logging.getLogger(__name__)


CONNECT_TIMEOUT_MIN_S = 2.0


class DeviceError(Exception):
    """A device-level failure (exception response, garbage, connection lost) with a clear reason."""


class Device(Protocol):
    """What a protocol driver implements for one field device."""

    name: str

    async def connect(self) -> None: ...

    async def read(self, snapshot: InputSnapshot, now: float) -> None:
        """Read the device and put its readings, stamped ``now``, into the snapshot."""

    def forget(self, snapshot: InputSnapshot) -> None:
        """Remove this device's readings from the snapshot (it failed: never serve them stale)."""

    async def write(self, output: CycleOutput, now: float) -> None:
        """Send changed setpoints and refresh watchdogs that are due."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 2.0
    cap_s: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before reconnect attempt number ``failures`` (1 = after the first failure)."""
        return float(min(self.cap_s, self.first_s * 2.0 ** max(0, failures - 1)))


@dataclass(slots=True)
class DeviceStatus:
    available: bool = False
    failures: int = 0
    last_error: str = ""
    reads: int = 0
    errors: int = 0


class DeviceRunner:
    """Owns one device: connects, polls every period, writes after each cycle, recovers from faults."""

    def __init__(
        self,
        device: Device,
        snapshot: InputSnapshot,
        *,
        period_s: float,
        timeout_s: float,
        backoff: Backoff = Backoff(),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.snapshot = snapshot
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.wall_clock = wall_clock
        self.status = DeviceStatus()
        self._pending: CycleOutput | None = None
        self._write_wanted = asyncio.Event()
        self._connected = False

    def hand_over(self, output: CycleOutput) -> None:
        """Called by the cycle: the device task writes the newest output at its next chance."""
        self._pending = output
        self._write_wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the device until ``stop``.

        As a PLC's input scan, the read is timed to finish just before the next cycle freezes the
        inputs: a hand-over at T is written at once, the read starts at T + period - ``lead_s`` (the
        request timeout plus a margin), so even a read that times out has dropped the device's values
        before the freeze at T + period. Without hand-overs (before the first cycle) it reads every period.
        """
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                if not self._connected and not await self._connect(stop):
                    continue
                handed_over = self._write_wanted.is_set()
                started = loop.time()
                await self._flush()
                if handed_over:
                    await self._sleep(stop, started + self.period_s - self.lead_s - loop.time())
                if self._connected and not stop.is_set():
                    await self._poll()
                await self._wait(stop, self.period_s)
        finally:
            self.device.forget(self.snapshot)
            await self._close()

    @property
    def lead_s(self) -> float:
        """How long before the next cycle the read starts: its timeout plus a tenth of the period."""
        return min(self.period_s, self.timeout_s + 0.1 * self.period_s)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _connect(self, stop: asyncio.Event) -> bool:
        try:
            # A connect may take several requests (SunSpec discovery) and is off the cycle's critical
            # path: the device is unavailable until it succeeds anyway.
            async with asyncio.timeout(max(CONNECT_TIMEOUT_MIN_S, 10 * self.timeout_s)):
                await self.device.connect()
        except (DeviceError, OSError, TimeoutError) as err:
            self._failed(f"connect: {_reason(err)}")
            await self._wait(stop, self.backoff.delay(self.status.failures))
            return False
        self._connected = True
        return True

    async def _poll(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.device.read(self.snapshot, self.wall_clock())
        except (DeviceError, OSError, TimeoutError) as err:
            self._failed(f"read: {_reason(err)}")
            await self._close()
            return
        self.status.reads += 1
        if not self.status.available:
            log.info("%s available%s", self.device.name, " again" if self.status.failures else "")
        self.status.available = True
        self.status.failures = 0

    async def _flush(self) -> None:
        if not self._connected or not self._write_wanted.is_set() or self._pending is None:
            return
        self._write_wanted.clear()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.device.write(self._pending, self.wall_clock())
        except (DeviceError, OSError, TimeoutError) as err:
            self._failed(f"write: {_reason(err)}")
            await self._close()

    def _failed(self, reason: str) -> None:
        self.device.forget(self.snapshot)
        self.status.errors += 1
        self.status.failures += 1
        if self.status.available or self.status.failures == 1:
            log.warning(
                "%s unavailable: %s (retrying with back-off up to %.0f s)", self.device.name, reason, self.backoff.cap_s
            )
        self.status.available = False
        self.status.last_error = reason

    async def _close(self) -> None:
        if self._connected:
            self._connected = False
            try:
                await self.device.close()
            except (DeviceError, OSError) as err:
                log.debug("%s close: %s", self.device.name, _reason(err))

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds``, or less: until stop, or (while connected) until the cycle hands over an output."""
        waiters = {asyncio.ensure_future(stop.wait())}
        if self._connected:
            waiters.add(asyncio.ensure_future(self._write_wanted.wait()))
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
