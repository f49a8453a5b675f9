"""The Modbus TCP client side of one field device: polling, decoding, plausibility, writes and watchdogs.

``ModbusDevice`` implements the runtime's ``Device`` protocol on top of a register map; a device type is
a thin adapter that says which registers to poll, how values become process-image readings
(``publish``) and which registers the cycle's output sets (``commands``).

- Polling: "fast" registers every cycle, the rest (identity, counters, settings) every ``slow_every_s``;
  blocks are planned once from the map (``read_blocks``).
- Faults: a Modbus exception response or an undecodable or implausible value raises ``DeviceError``
  naming the device, the register and the reason; the runtime then drops the device's readings (never
  served stale) and reconnects with back-off.
- Writes: a register is written when its wanted value changes, or when its refresh interval
  (``refresh_s``, a fraction of the device's own watchdog) has passed, so the device never falls back
  while the controller is alive — and falls back on its own when it is not. After a reconnect every
  wanted value is written again (a rebooted device has lost them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from controller.image import InputSnapshot
from controller.program import CycleOutput
from drivers.modbus.registers import (
    CodecError,
    ReadBlock,
    Register,
    RegisterMap,
    Table,
    Value,
    decode,
    encode,
    read_blocks,
)
from drivers.runtime import DeviceError

log = logging.getLogger(__name__)

EXCEPTION_MEANINGS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# Physically possible magnitudes per unit: anything beyond is a wrong map, a wrong word order or garbage.
PLAUSIBLE_ABS = {"A": 5_000.0, "V": 1_000.0, "W": 5_000_000.0, "Hz": 100.0, "%": 100.0, "Wh": 1e13, "s": 1e9}


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    unit_id: int | None
    """None: each map's default unit id."""
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ChargerTraits:
    """What the controller must know about a charger's own behaviour, as its documents give it."""

    min_current_a: float | None
    """Smallest non-zero current it accepts (AC); None for DC."""
    zero_pauses: bool
    """Writing 0 pauses the session (False: 0 aborts it, see ``pause_power_w``)."""
    pause_power_w: float | None
    phase_switching: bool
    fallback_current_a: float | None
    """What it applies on its own when the controller stops refreshing it; None if the documents give none."""
    watchdog_s: float | None
    """After how long without a refresh it falls back."""


@dataclass(frozen=True, slots=True)
class _Write:
    register: Register
    unit: int
    value: Value


class ModbusDevice:
    """Base of every Modbus adapter; subclasses implement ``publish``, ``unpublish`` and ``commands``."""

    slow_every_s: float = 60.0

    def __init__(
        self, name: str, endpoint: Endpoint, maps: Iterable[RegisterMap], fast: Iterable[str] | None = None
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.values: dict[str, Value | None] = {}
        self._written: dict[str, tuple[Value, float]] = {}
        self._client: AsyncModbusTcpClient | None = None
        self.use_maps(maps, fast)

    def use_maps(self, maps: Iterable[RegisterMap], fast: Iterable[str] | None = None) -> None:
        """Poll and write these maps from now on (at construction, or once discovery found the models)."""
        self.maps = tuple(maps)
        self._unit_of: dict[str, int] = {}
        self._registers: dict[str, Register] = {}
        self._single_write: dict[str, bool] = {}
        for register_map in self.maps:
            for register in register_map.registers:
                unit = register_map.unit_of(register)
                if self.endpoint.unit_id is not None and register.unit_id is None:
                    unit = self.endpoint.unit_id
                self._unit_of[register.name] = unit
                self._registers[register.name] = register
                self._single_write[register.name] = register_map.behaviour.single_register_write
        fast_names = set(fast) if fast is not None else set(self._registers)
        self._fast = self._plan(r for n, r in self._registers.items() if n in fast_names)
        self._slow = self._plan(r for n, r in self._registers.items() if n not in fast_names)
        self._next_slow = -math.inf

    def _plan(self, registers: Iterable[Register]) -> list[tuple[int, ReadBlock]]:
        limit = min(m.behaviour.max_registers_per_read for m in self.maps)
        by_unit: dict[int, list[Register]] = {}
        for register in registers:
            by_unit.setdefault(self._unit_of[register.name], []).append(register)
        return [(unit, block) for unit, regs in sorted(by_unit.items()) for block in read_blocks(regs, limit)]

    # --- what an adapter implements ------------------------------------------------------------

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        """Turn ``self.values`` into readings in the snapshot."""
        raise NotImplementedError

    def unpublish(self, snapshot: InputSnapshot) -> None:
        """Remove every reading this device put in the snapshot."""
        raise NotImplementedError

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        """Register name -> value this cycle's output wants on the device (empty for a read-only device)."""
        return {}

    def refresh_s(self, name: str) -> float | None:
        """Rewrite register ``name`` at least this often (its watchdog); None: only on change."""
        return None

    def charger_traits(self) -> Mapping[str, ChargerTraits]:
        """Per connector id this device serves: the charger's own behaviour (empty if not a charger)."""
        return {}

    def on_connect(self) -> None:
        """Hook for adapters that must forget session bookkeeping when the link restarts."""

    # --- the runtime's Device protocol ------------------------------------------------------------

    async def connect(self) -> None:
        client = AsyncModbusTcpClient(
            self.endpoint.host,
            port=self.endpoint.port,
            timeout=self.endpoint.timeout_s,
            retries=0,
            # The device runtime owns reconnection and its back-off; pymodbus must not race it.
            reconnect_delay=0,
            name=self.name,
        )
        self._client = client
        if not await client.connect():
            client.close()
            self._client = None
            raise DeviceError(f"cannot connect to {self.endpoint.host}:{self.endpoint.port}")
        self._written.clear()
        self._next_slow = -math.inf
        self.on_connect()

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def forget(self, snapshot: InputSnapshot) -> None:
        self.unpublish(snapshot)

    async def read(self, snapshot: InputSnapshot, now: float) -> None:
        blocks = list(self._fast)
        if now >= self._next_slow:
            blocks += self._slow
        for unit, block in blocks:
            words = await self._read_block(unit, block)
            for register in block.registers:
                self.values[register.name] = self._decode(register, block.words_of(register, words))
        if now >= self._next_slow:
            self._next_slow = now + self.slow_every_s
        self.publish(snapshot, now)

    async def write(self, output: CycleOutput, now: float) -> None:
        wanted = self.commands(output)
        due: list[_Write] = []
        for name, value in wanted.items():
            last = self._written.get(name)
            refresh = self.refresh_s(name)
            if last is None or last[0] != value or (refresh is not None and now - last[1] >= refresh):
                due.append(_Write(self._registers[name], self._unit_of[name], value))
        for item in _merge_writes(due):
            await self._write_words(item)
            for write in item:
                self._written[write.register.name] = (write.value, now)

    # --- the wire -------------------------------------------------------------------------------

    def _client_or_fail(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise DeviceError("not connected")
        return self._client

    async def _read_block(self, unit: int, block: ReadBlock) -> list[int]:
        client = self._client_or_fail()
        first = block.registers[0]
        where = f"unit {unit} {block.table.name.lower()} {block.start}..{block.start + block.count - 1} ({first.name}…)"
        try:
            if block.table is Table.HOLDING:
                response = await client.read_holding_registers(block.start, count=block.count, device_id=unit)
            elif block.table is Table.INPUT:
                response = await client.read_input_registers(block.start, count=block.count, device_id=unit)
            elif block.table is Table.COIL:
                response = await client.read_coils(block.start, count=block.count, device_id=unit)
            else:
                response = await client.read_discrete_inputs(block.start, count=block.count, device_id=unit)
        except ModbusException as err:
            raise DeviceError(f"{where}: {_first_line(err)}") from None
        _raise_for_exception(response, where)
        if block.table.bits:
            return [int(bit) for bit in response.bits[: block.count]]
        if len(response.registers) != block.count:
            raise DeviceError(f"{where}: answered {len(response.registers)} registers, asked {block.count}")
        return list(response.registers)

    async def _write_words(self, writes: list[_Write]) -> None:
        client = self._client_or_fail()
        first = writes[0].register
        unit = writes[0].unit
        words: list[int] = []
        for write in writes:
            try:
                words += encode(write.register, write.value)
            except CodecError as err:
                raise DeviceError(f"cannot write {err}") from None
        where = f"write unit {unit} {first.doc_address} ({', '.join(w.register.name for w in writes)} = " + (
            ", ".join(f"{w.value!r}" for w in writes) + ")"
        )
        try:
            if first.table is Table.COIL:
                response = await client.write_coil(first.pdu, bool(words[0]), device_id=unit)
            elif len(words) == 1 and self._single_write[first.name]:
                response = await client.write_register(first.pdu, words[0], device_id=unit)
            else:
                response = await client.write_registers(first.pdu, words, device_id=unit)
        except ModbusException as err:
            raise DeviceError(f"{where}: {_first_line(err)}") from None
        _raise_for_exception(response, where)

    def _decode(self, register: Register, words: Sequence[int]) -> Value | None:
        sf = None
        if register.scale_factor is not None:
            sf_value = self.values.get(register.scale_factor)
            sf = sf_value if isinstance(sf_value, int) else None
            if sf is None:
                raise DeviceError(
                    f"{register.name} ({register.doc_address}): scale factor {register.scale_factor} unknown"
                )
        try:
            value = decode(register, words, sf)
        except CodecError as err:
            raise DeviceError(str(err)) from None
        limit = PLAUSIBLE_ABS.get(register.unit)
        if isinstance(value, float | int) and not isinstance(value, bool) and limit is not None and abs(value) > limit:
            raise DeviceError(
                f"register {register.name!r} ({register.doc_address}) reads {value:g} {register.unit}, "
                f"beyond any plausible {limit:g}: wrong register map, word order or unit id?"
            )
        return value

    # --- helpers for adapters --------------------------------------------------------------------

    def number(self, name: str) -> float:
        """A numeric value as float; NaN when missing, not implemented or not a number (judged BAD)."""
        value = self.values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return math.nan
        return float(value)


def _merge_writes(writes: list[_Write]) -> list[list[_Write]]:
    """Adjacent holding registers on one unit go out in one FC16 (some devices require it, e.g. SMA)."""
    groups: list[list[_Write]] = []
    for write in sorted(writes, key=lambda w: (w.unit, w.register.table.value, w.register.pdu)):
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and write.register.table is Table.HOLDING
            and last.register.table is Table.HOLDING
            and last.unit == write.unit
            and last.register.end == write.register.pdu
        ):
            groups[-1].append(write)
        else:
            groups.append([write])
    return groups


def _raise_for_exception(response: ModbusPDU, where: str) -> None:
    if isinstance(response, ExceptionResponse) or response.isError():
        code = getattr(response, "exception_code", 0)
        raise DeviceError(f"{where}: Modbus exception {code} ({EXCEPTION_MEANINGS.get(code, 'unknown')})")


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
