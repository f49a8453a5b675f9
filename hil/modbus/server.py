"""Modbus TCP servers (pymodbus) for the simulated devices, with fault injection.

One ``EndpointServer`` listens on one host:port, as one device or one RS-485 gateway does, and answers
for one or more unit ids. Requests are served from each device's live ``RegisterImage``; writes go
through the device's own rules (``SimulatedDevice.on_write``), so a simulated Alfen refuses what the
real one refuses.

Faults, per device, from the scenario timeline: ``silent`` (no answer at all), ``exception`` (every
request answered with a Modbus exception code), ``slow`` (answers after a delay), ``garbage`` (NaN
floats and integers at their raw maximum), ``drop`` (open TCP connections are aborted, new ones too
while it lasts). A request for a unit id nobody answers to gets exception 0x0B "gateway target device
failed to respond", as a TCP/RS-485 gateway reports a device that is not on its bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData
from pymodbus.simulator import SimDevice as PymodbusSimDevice

from drivers.modbus.registers import Register, RegisterMap, Table, Value
from hil.modbus.image import RegisterImage, WriteRejected

log = logging.getLogger(__name__)

FaultKind = Literal["silent", "exception", "slow", "garbage", "drop"]

_TABLES = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT}
_TABLES |= dict.fromkeys((3, 6, 16, 22, 23), Table.HOLDING)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    until_s: float
    """Plant time at which the fault clears."""
    exception_code: int = int(ExcCodes.DEVICE_FAILURE)
    delay_s: float = 0.0


class SimulatedDevice:
    """A device on the simulated plaza: its register image, its rules, and any fault in force.

    Subclasses fill the image from the plant in ``update`` and apply writes in ``on_write``.
    """

    def __init__(self, name: str, maps: Iterable[RegisterMap], now: Callable[[], float]) -> None:
        self.name = name
        self.image = RegisterImage(maps)
        self.now = now
        self.fault: Fault | None = None

    def update(self, t: float) -> None:
        """Refresh the image from the plant at plant time ``t``."""

    def on_write(self, unit: int, name: str, value: Value | None, t: float) -> None:
        """A master wrote ``value`` to ``name`` on ``unit`` (already stored); raise WriteRejected to refuse it."""

    def active_fault(self) -> Fault | None:
        fault = self.fault
        if fault is not None and self.now() >= fault.until_s:
            self.fault = fault = None
        return fault


class _Context:
    """What pymodbus' request handler asks for: values per unit id, function code and address."""

    def __init__(self, units: dict[int, SimulatedDevice]) -> None:
        self.units = units

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def _device(self, device_id: int) -> tuple[SimulatedDevice | None, ExcCodes | None]:
        device = self.units.get(device_id)
        if device is None:
            return None, ExcCodes.GATEWAY_NO_RESPONSE
        fault = device.active_fault()
        if fault is None:
            return device, None
        if fault.kind in ("silent", "drop"):
            # The request handler answers nothing when the datastore reports an unknown device
            # (ignore_missing_devices=True): exactly what a dead device on a gateway looks like.
            raise NoSuchIdException(f"{device.name} is silent")
        if fault.kind == "exception":
            return None, ExcCodes(fault.exception_code)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        return device, None

    async def async_getValues(  # noqa: N802 - the name pymodbus calls
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        device, error = await self._device(device_id)
        if device is None:
            return error or ExcCodes.GATEWAY_NO_RESPONSE
        table = _TABLES[func_code]
        fault = device.fault
        if fault is not None and fault.kind == "garbage":
            words = device.image.garbage(device_id, table, address, count)
        else:
            words = device.image.read(device_id, table, address, count)
        if words is None:
            return ExcCodes.ILLEGAL_ADDRESS
        return [bool(w) for w in words] if table.bits else list(words)

    async def async_setValues(  # noqa: N802 - the name pymodbus calls
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        device, error = await self._device(device_id)
        if device is None:
            return error or ExcCodes.GATEWAY_NO_RESPONSE
        table = _TABLES[func_code]
        words = [int(v) for v in values]
        before = {
            r.name: device.image.words(device_id, r) for r in _registers_in(device, device_id, table, address, words)
        }
        try:
            written = device.image.write(device_id, table, address, words)
            t = device.now()
            for register, value in written:
                device.on_write(device_id, register.name, value, t)
        except WriteRejected as err:
            for name, old in before.items():
                device.image.set_words(device_id, device.image.register(name), old)
            log.info("%s refused a write at %d: %s", device.name, address, err)
            return ExcCodes.ILLEGAL_ADDRESS if err.address else ExcCodes.ILLEGAL_VALUE
        return None


def _registers_in(
    device: SimulatedDevice, unit: int, table: Table, address: int, words: Sequence[int]
) -> list[Register]:
    return [r for r in device.image.registers_at(unit, table) if r.pdu < address + len(words) and r.end > address]


class EndpointServer:
    """One listening Modbus TCP endpoint serving one or more simulated devices by unit id."""

    def __init__(self, host: str, port: int, units: dict[int, SimulatedDevice]) -> None:
        self.host = host
        self.port = port
        self.units = units
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        # pymodbus 3.16 only accepts a static SimDevice (or deprecated contexts) at construction; the
        # request handler just calls ``server.context.async_getValues/async_setValues/device_ids``,
        # so the live context replaces the placeholder before the server listens.
        placeholder = PymodbusSimDevice(0, simdata=SimData(0, datatype=SimDataType.REGISTERS))
        server = ModbusTcpServer(placeholder, address=(self.host, self.port), ignore_missing_devices=True)
        server.context = _Context(self.units)  # type: ignore[assignment]
        await server.serve_forever(background=True)
        self._server = server

    def drop_connections(self) -> int:
        """Abort every open connection (as a cable pull or a device reboot would); returns how many."""
        if self._server is None:
            return 0
        handlers = list(self._server.active_connections.values())
        for handler in handlers:
            transport = handler.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        return len(handlers)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
