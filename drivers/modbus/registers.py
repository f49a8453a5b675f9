"""Register maps as data and a pure codec between 16-bit Modbus words and engineering values.

A ``Register`` says where a value lives (table, unit id, PDU address), how it is encoded (type, word
order, scale or SunSpec scale factor) and what it means; a ``RegisterMap`` is one device's table of
them plus the device behaviour the controller must respect (unit id, pause semantics, watchdog).
``decode``/``encode`` turn words into values and back, ``read_blocks`` plans the read requests.
Nothing here touches a network or pymodbus: the client driver and the HIL server share this layer.

Conventions (``/work/shared/register-maps.md``): "PDU" is the 0-based address sent in the frame;
multi-register values are big-endian, high word first, unless a register says ``LOW_FIRST``.
"""

from __future__ import annotations

import math
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise

Value = bool | int | float | str
"""What ``decode`` returns for an implemented value (bool for BIT, str for STRING)."""

MAX_ADDRESS = 0xFFFF
MAX_REGISTERS_PER_READ = 125
"""The Modbus protocol's limit for FC03/FC04."""


class Table(Enum):
    """Modbus data table, valued by its read function code."""

    COIL = 1
    """Read FC01, write FC05/FC15."""
    DISCRETE = 2
    """Discrete inputs: read FC02, read-only."""
    HOLDING = 3
    """Read FC03, write FC06/FC16."""
    INPUT = 4
    """Input registers: read FC04, read-only."""

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)

    @property
    def bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class DataType(Enum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    STRING = "string"
    """ASCII, two characters per register, high byte first."""
    ACC32 = "acc32"
    """SunSpec accumulator: unsigned 32 bit, 0 = not implemented."""
    BIT = "bit"
    """One coil or discrete input."""


class WordOrder(Enum):
    HIGH_FIRST = "high_first"
    LOW_FIRST = "low_first"


class Access(Enum):
    R = "R"
    W = "W"
    RW = "RW"

    @property
    def readable(self) -> bool:
        return self is not Access.W

    @property
    def writable(self) -> bool:
        return self is not Access.R


# struct format (big-endian), registers, and whether the type is an integer.
_FORMATS: dict[DataType, tuple[str, int, bool]] = {
    DataType.U16: ("H", 1, True),
    DataType.I16: ("h", 1, True),
    DataType.U32: ("I", 2, True),
    DataType.I32: ("i", 2, True),
    DataType.U64: ("Q", 4, True),
    DataType.I64: ("q", 4, True),
    DataType.F32: ("f", 2, False),
    DataType.F64: ("d", 4, False),
    DataType.ACC32: ("I", 2, True),
}
_SIGNED = frozenset({DataType.I16, DataType.I32, DataType.I64})
_WIDTHS = {data_type: width for data_type, (_, width, _) in _FORMATS.items()} | {DataType.BIT: 1}
_SF_RANGE = range(-10, 11)
"""SunSpec scale factors are int16 but only -10..10 are valid."""


_SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """One value of a device: where it lives, how it is encoded and what it means."""

    name: str
    """snake_case with the unit where there is one: ``current_l1_a``, ``power_w``, ``energy_wh``."""
    pdu: int
    """0-based address sent in the frame (pymodbus ``address=``)."""
    doc_address: str
    """The address as printed in the vendor document: "30007", "0x4010", "1210", "WMaxLimPct (+5)"."""
    table: Table
    type: DataType
    meaning: str
    word_order: WordOrder = WordOrder.HIGH_FIRST
    count: int = 0
    """Registers (or bits) the value occupies; 0 derives it from the type, STRING must give it."""
    scale: float = 1.0
    """real = raw × scale, e.g. 0.001 for mA → A, 0.1 for 0.1 V."""
    scale_factor: str | None = None
    """Name of a SunSpec scale-factor register in the same map: real = raw × scale × 10^SF."""
    unit: str = ""
    access: Access = Access.R
    unit_id: int | None = None
    """The unit id when it differs from the map's default (Alfen station 200 vs socket 1/2)."""
    not_implemented: int | None = None
    """Raw bit pattern, as an unsigned number of the register's width, that means "no value"
    (SunSpec: 0x8000 int16, 0xFFFF uint16, 0 acc32; SMA: 0x80000000 S32)."""

    def __post_init__(self) -> None:
        if self.count == 0 and self.type is not DataType.STRING:
            object.__setattr__(self, "count", _WIDTHS[self.type])
        problem = self._problem()
        if problem:
            raise ValueError(f"register {self.name!r} ({self.doc_address}): {problem}")

    def _problem(self) -> str:
        """What is wrong with this register, or "" (one flat list of independent checks)."""
        if not _SNAKE_CASE.fullmatch(self.name):
            return "name must be snake_case"
        if not self.doc_address:
            return "doc_address is empty: cite the vendor document's address"
        if self.type is DataType.STRING and self.count < 1:
            return "a STRING needs count >= 1 (registers, two characters each)"
        if self.type is not DataType.STRING and self.count != _WIDTHS[self.type]:
            return f"count {self.count} does not match {self.type.name} ({_WIDTHS[self.type]} registers)"
        if not 0 <= self.pdu <= MAX_ADDRESS - self.count + 1:
            return f"PDU {self.pdu} with {self.count} registers leaves the 16-bit address space"
        if (self.type is DataType.BIT) != self.table.bits:
            return "BIT lives in COIL/DISCRETE, and COIL/DISCRETE hold only BIT"
        if self.access.writable and not self.table.writable:
            return f"{self.table.name} is read-only, access cannot be {self.access.name}"
        if self.word_order is WordOrder.LOW_FIRST and (self.count == 1 or self.type is DataType.STRING):
            return "word order applies only to multi-register numbers"
        if not math.isfinite(self.scale) or self.scale == 0:
            return "scale must be finite and non-zero"
        integer = self.type in _FORMATS and _FORMATS[self.type][2]
        if self.scale_factor is not None and not integer:
            return "a SunSpec scale factor applies only to integer types"
        if self.type in (DataType.STRING, DataType.BIT) and self.scale != 1.0:
            return f"{self.type.name} cannot be scaled"
        if self.not_implemented is not None and not (integer and 0 <= self.not_implemented < 1 << (16 * self.count)):
            return "not_implemented must be an unsigned raw pattern of an integer register's width"
        if self.unit_id is not None and not 0 <= self.unit_id <= 255:
            return f"unit id {self.unit_id} outside 0..255"
        return ""

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.pdu + self.count


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """What the controller must know about a device beyond its registers."""

    default_unit_id: int
    port: int | None = 502
    """None: serial (RTU) only, reached through an RS485 gateway with its own port."""
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    single_register_write: bool = True
    """False where the device documents FC16 only, so even one-register values go as FC16."""
    min_current_a: float | None = None
    """Smallest non-zero current setpoint the charger accepts."""
    zero_pauses: bool = False
    """Writing 0 to the setpoint pauses charging without ending the session."""
    pause_power_w: float | None = None
    """Where 0 does not pause (it aborts), the setpoint that holds a session paused."""
    phase_switching: bool = False
    watchdog_s: float | None = None
    """Rewrite setpoints at least this often, or the device falls back (validity time, external
    control timeout); None where the documents give no figure (see ``notes``)."""
    notes: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.default_unit_id <= 255:
            raise ValueError(f"unit id {self.default_unit_id} outside 0..255")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} outside 1..65535")
        if not 1 <= self.max_registers_per_read <= MAX_REGISTERS_PER_READ:
            raise ValueError(f"max_registers_per_read {self.max_registers_per_read} outside 1..125")
        if self.pause_power_w is not None and self.zero_pauses:
            raise ValueError("pause_power_w is for devices where writing zero does not pause")
        if self.watchdog_s is not None and self.watchdog_s <= 0:
            raise ValueError(f"watchdog_s must be positive, got {self.watchdog_s}")


def check_registers(device: str, registers: Sequence[Register], default_unit_id: int | None = None) -> None:
    """Raise ValueError unless names are unique, nothing overlaps and every scale factor resolves.

    Registers without a unit id count as ``default_unit_id``; overlap is judged per table and unit.
    """
    by_name: dict[str, Register] = {}
    for register in registers:
        if register.name in by_name:
            raise ValueError(f"{device}: register name {register.name!r} is used twice")
        by_name[register.name] = register
    spans: dict[tuple[Table, int | None], list[Register]] = defaultdict(list)
    for register in registers:
        unit = register.unit_id if register.unit_id is not None else default_unit_id
        spans[(register.table, unit)].append(register)
    for (table, unit), group in spans.items():
        group.sort(key=lambda r: r.pdu)
        for before, after in pairwise(group):
            if after.pdu < before.end:
                raise ValueError(
                    f"{device}: {before.name!r} ({before.pdu}..{before.end - 1}) and {after.name!r} "
                    f"({after.pdu}..{after.end - 1}) overlap in {table.name} on unit {unit}"
                )
    for register in registers:
        if register.scale_factor is None:
            continue
        sf = by_name.get(register.scale_factor)
        if sf is None:
            raise ValueError(f"{device}: {register.name!r} names scale factor {register.scale_factor!r}, not in map")
        if sf.type is not DataType.I16 or (sf.table, sf.unit_id) != (register.table, register.unit_id):
            raise ValueError(f"{device}: scale factor {sf.name!r} must be I16 beside {register.name!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterMap:
    """One device's registers and behaviour, citing the vendor document."""

    device: str
    source: str
    """The vendor document and repository paths, as register-maps.md cites them."""
    registers: tuple[Register, ...]
    behaviour: Behaviour

    def __post_init__(self) -> None:
        if not self.device or not self.source:
            raise ValueError("a register map needs a device name and its source document")
        if not self.registers:
            raise ValueError(f"{self.device}: no registers")
        check_registers(self.device, self.registers, self.behaviour.default_unit_id)
        limit = self.behaviour.max_registers_per_read
        for register in self.registers:
            if register.access.readable and not register.table.bits and register.count > limit:
                raise ValueError(f"{self.device}: {register.name!r} is longer than one read ({limit})")

    def by_name(self, name: str) -> Register:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(f"{self.device} has no register named {name!r}")

    def unit_of(self, register: Register) -> int:
        """The unit id to address ``register`` with."""
        return register.unit_id if register.unit_id is not None else self.behaviour.default_unit_id


# --- codec ------------------------------------------------------------------------------------------


class CodecError(ValueError):
    """Words do not fit a register, or a value cannot be encoded into it."""

    def __init__(self, register: Register, problem: str) -> None:
        super().__init__(f"register {register.name!r} ({register.doc_address}, {register.type.name}): {problem}")
        self.register = register


class ReadError(Exception):
    """The device refused a read (a Modbus exception response such as "illegal data address").

    Drivers raise it from the read callables they hand to this layer; discovery code treats it as
    "nothing there". Connection failures should stay other exceptions so they abort a discovery
    instead of silently truncating it.
    """


def _check_words(register: Register, words: Sequence[int]) -> None:
    if len(words) != register.count:
        raise CodecError(register, f"expects {register.count} words, got {len(words)}")
    limit = 1 if register.type is DataType.BIT else 0xFFFF
    for word in words:
        if not 0 <= word <= limit:
            raise CodecError(register, f"word {word!r} outside 0..{limit}")


def _scale_factor(register: Register, scale_factor: int | None) -> int:
    if register.scale_factor is None:
        if scale_factor is not None:
            raise CodecError(register, "has no scale factor register, but one was given")
        return 0
    if scale_factor is None:
        raise CodecError(register, f"needs the value of its scale factor {register.scale_factor!r}")
    if scale_factor not in _SF_RANGE:
        raise CodecError(register, f"scale factor {scale_factor} outside -10..10")
    return scale_factor


def _times_ten_to(value: float, exponent: int) -> float:
    # Dividing by an exact power of ten keeps 2301 × 10^-1 at 230.1 instead of 230.10000000000002.
    return value / 10.0**-exponent if exponent < 0 else value * 10.0**exponent


def decode(register: Register, words: Sequence[int], scale_factor: int | None = None) -> Value | None:
    """The value of ``register`` from its words; None for a not-implemented marker or a NaN float.

    ``scale_factor`` is the decoded value of the register's SunSpec SF register (required then).
    """
    _check_words(register, words)
    if register.type is DataType.BIT:
        return bool(words[0])
    ordered = reversed(words) if register.word_order is WordOrder.LOW_FIRST else words
    data = b"".join(word.to_bytes(2, "big") for word in ordered)
    if register.type is DataType.STRING:
        try:
            return data.decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            raise CodecError(register, f"not ASCII: {data!r}") from None
    if register.not_implemented is not None and int.from_bytes(data, "big") == register.not_implemented:
        return None
    sf = _scale_factor(register, scale_factor)
    fmt, _, integer = _FORMATS[register.type]
    raw: int | float = struct.unpack(">" + fmt, data)[0]
    if not integer and math.isnan(raw):
        return None
    if integer and register.scale == 1.0 and register.scale_factor is None:
        return raw
    return _times_ten_to(raw * register.scale, sf)


def encode(register: Register, value: Value, scale_factor: int | None = None) -> list[int]:
    """The words to write for ``value`` (engineering units), the inverse of ``decode``."""
    if register.type is DataType.BIT:
        if not (isinstance(value, int) and value in (0, 1)):
            raise CodecError(register, f"a bit takes True/False or 1/0, not {value!r}")
        return [int(value)]
    if register.type is DataType.STRING:
        return _encode_string(register, value)
    if isinstance(value, str):
        raise CodecError(register, f"takes a number, not {value!r}")
    if not math.isfinite(value):
        raise CodecError(register, f"cannot encode the non-finite value {value!r}")
    sf = _scale_factor(register, scale_factor)
    # An unscaled int goes through untouched: a float would round 64-bit values above 2^53.
    if isinstance(value, int) and register.scale == 1.0 and sf == 0:
        data = _pack(register, value, value)
    else:
        data = _pack(register, value, _times_ten_to(value / register.scale, -sf))
    if register.not_implemented is not None and int.from_bytes(data, "big") == register.not_implemented:
        raise CodecError(register, f"value {value!r} would encode the not-implemented marker")
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if register.word_order is WordOrder.LOW_FIRST else words


def _pack(register: Register, value: float, raw: float) -> bytes:
    """``raw`` (value in register units) as the register's bytes, big-endian."""
    fmt, width, integer = _FORMATS[register.type]
    if integer:
        number = round(raw)
        low, high = _integer_range(register.type, width)
        if not low <= number <= high:
            raise CodecError(register, f"value {value!r} (raw {number}) outside {low}..{high}")
        return struct.pack(">" + fmt, number)
    if not math.isfinite(raw):
        raise CodecError(register, f"value {value!r} overflows {register.type.name}")
    try:
        return struct.pack(">" + fmt, raw)
    except OverflowError:  # beyond float32's range
        raise CodecError(register, f"value {value!r} overflows {register.type.name}") from None


def _integer_range(data_type: DataType, width: int) -> tuple[int, int]:
    bits = 16 * width
    if data_type in _SIGNED:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _encode_string(register: Register, value: Value) -> list[int]:
    if not isinstance(value, str):
        raise CodecError(register, f"takes a string, not {value!r}")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise CodecError(register, f"{value!r} is not ASCII") from None
    if len(data) > 2 * register.count:
        raise CodecError(register, f"{value!r} is longer than {2 * register.count} characters")
    data = data.ljust(2 * register.count, b"\x00")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# --- read planning ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) from ``start`` covering ``registers``."""

    table: Table
    unit_id: int | None
    """None: the map's default unit id."""
    start: int
    count: int
    registers: tuple[Register, ...]

    def words_of(self, register: Register, words: Sequence[int]) -> Sequence[int]:
        """The slice of this block's response that belongs to ``register``."""
        return words[register.pdu - self.start : register.end - self.start]


def _group_order(table: Table, unit_id: int | None) -> tuple[int, int]:
    return table.value, -1 if unit_id is None else unit_id


def read_blocks(registers: Iterable[Register], max_count: int, *, max_gap: int = 0) -> list[ReadBlock]:
    """Group readable registers per table and unit into as few requests of <= ``max_count`` as possible.

    Blocks are contiguous unless ``max_gap`` allows reading across that many unmapped registers; the
    default 0 never reads an address the map does not name, since many devices answer such reads
    with an exception. Write-only registers are left out: reading them fails (ABB Terra AC 0x4100).
    Whole registers only, so on a map of 2-register values at even addresses (Eastron) every
    block starts even and has an even count.
    """
    if max_count < 1 or max_gap < 0:
        raise ValueError(f"max_count must be >= 1 and max_gap >= 0, got {max_count} and {max_gap}")
    groups: dict[tuple[Table, int | None], list[Register]] = defaultdict(list)
    for register in registers:
        if register.access.readable:
            if register.count > max_count:
                raise ValueError(f"register {register.name!r} ({register.count}) exceeds one read of {max_count}")
            groups[(register.table, register.unit_id)].append(register)
    blocks: list[ReadBlock] = []
    for (table, unit_id), group in sorted(groups.items(), key=lambda item: _group_order(*item[0])):
        group.sort(key=lambda r: r.pdu)
        start, end, members = group[0].pdu, group[0].end, [group[0]]
        for register in group[1:]:
            if register.pdu - end <= max_gap and max(end, register.end) - start <= max_count:
                end = max(end, register.end)
                members.append(register)
                continue
            blocks.append(ReadBlock(table, unit_id, start, end - start, tuple(members)))
            start, end, members = register.pdu, register.end, [register]
        blocks.append(ReadBlock(table, unit_id, start, end - start, tuple(members)))
    return blocks
