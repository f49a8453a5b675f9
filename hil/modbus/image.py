"""A simulated device's register image, built from the same register maps the drivers read.

Each (unit id, table) holds its words over the span the map covers; addresses between mapped
registers read as 0 (so block reads across small gaps work as on the real devices), addresses outside
the span answer "illegal data address". Values go in and out in engineering units through the shared
codec, so the simulator and the driver can only agree if the map is right — the raw-register tests
decode the same words independently to catch a map that is wrong on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.registers import CodecError, Register, RegisterMap, Table, Value, decode, encode


class WriteRejected(ValueError):  # noqa: N818 - "the device rejected the write" reads as the event it is
    """A write the device refuses: ``address`` problems (no such register, read-only, partial) or a bad value."""

    def __init__(self, message: str, *, address: bool) -> None:
        super().__init__(message)
        self.address = address


@dataclass(slots=True)
class _Span:
    start: int
    words: list[int]
    registers: dict[int, Register] = field(default_factory=dict)
    """Registers by their first address."""

    @property
    def end(self) -> int:
        return self.start + len(self.words)


class RegisterImage:
    """Words of one simulated device (all its unit ids and tables), addressed like the real one."""

    def __init__(self, maps: Iterable[RegisterMap]) -> None:
        self._by_name: dict[str, tuple[int, Register]] = {}
        grouped: dict[tuple[int, Table], list[Register]] = {}
        for register_map in maps:
            for register in register_map.registers:
                unit = register_map.unit_of(register)
                self._by_name[register.name] = (unit, register)
                grouped.setdefault((unit, register.table), []).append(register)
        self._spans: dict[tuple[int, Table], _Span] = {}
        for key, registers in grouped.items():
            start = min(r.pdu for r in registers)
            end = max(r.end for r in registers)
            span = _Span(start, [0] * (end - start))
            for register in registers:
                span.registers[register.pdu] = register
            self._spans[key] = span

    @property
    def unit_ids(self) -> frozenset[int]:
        return frozenset(unit for unit, _ in self._spans)

    def registers_at(self, unit: int, table: Table) -> list[Register]:
        span = self._spans.get((unit, table))
        return list(span.registers.values()) if span is not None else []

    def register(self, name: str) -> Register:
        return self._by_name[name][1]

    def set(self, name: str, value: Value) -> None:
        """Store ``value`` (engineering units) in the named register (set its scale factor first)."""
        unit, register = self._by_name[name]
        self.set_words(unit, register, encode(register, value, self._scale_factor_of(register)))

    def set_words(self, unit: int, register: Register, words: Sequence[int]) -> None:
        span = self._spans[(unit, register.table)]
        offset = register.pdu - span.start
        span.words[offset : offset + len(words)] = list(words)

    def get(self, name: str) -> Value | None:
        unit, register = self._by_name[name]
        return decode(register, self.words(unit, register), self._scale_factor_of(register))

    def _scale_factor_of(self, register: Register) -> int | None:
        if register.scale_factor is None:
            return None
        value = self.get(register.scale_factor)
        return value if isinstance(value, int) else 0

    def words(self, unit: int, register: Register) -> list[int]:
        span = self._spans[(unit, register.table)]
        offset = register.pdu - span.start
        return span.words[offset : offset + register.count]

    def read(self, unit: int, table: Table, address: int, count: int) -> list[int] | None:
        """Words (bits as 0/1) at address..address+count-1, or None if any lies outside the device's span."""
        span = self._spans.get((unit, table))
        if span is None or address < span.start or address + count > span.end:
            return None
        return span.words[address - span.start : address - span.start + count]

    def write(self, unit: int, table: Table, address: int, words: Sequence[int]) -> list[tuple[Register, Value | None]]:
        """Apply a write of whole registers; returns what was written, decoded. Raises WriteRejected."""
        span = self._spans.get((unit, table))
        if span is None or address < span.start or address + len(words) > span.end:
            raise WriteRejected(f"address {address}..{address + len(words) - 1} is not on unit {unit}", address=True)
        written: list[tuple[Register, Value | None]] = []
        position = address
        while position < address + len(words):
            register = span.registers.get(position)
            if register is None:
                raise WriteRejected(f"address {position} is not the start of a register", address=True)
            if not register.access.writable:
                raise WriteRejected(f"{register.name} ({register.doc_address}) is read-only", address=True)
            chunk = words[position - address : position - address + register.count]
            if len(chunk) != register.count:
                raise WriteRejected(f"{register.name} needs all {register.count} registers in one write", address=True)
            try:
                written.append((register, decode(register, chunk, self._scale_factor_of(register))))
            except CodecError as err:
                raise WriteRejected(str(err), address=False) from None
            position += register.count
        for register, _ in written:
            self.set_words(unit, register, words[register.pdu - address : register.end - address])
        return written

    def garbage(self, unit: int, table: Table, address: int, count: int) -> list[int] | None:
        """Like ``read`` but every register holds nonsense: NaN floats, integers at their raw maximum."""
        words = self.read(unit, table, address, count)
        span = self._spans.get((unit, table))
        if words is None or span is None:
            return None
        words = list(words)
        for start, register in span.registers.items():
            for i in range(register.count):
                position = start + i - address
                if 0 <= position < count:
                    words[position] = _nonsense(register, i)
        return words


def _nonsense(register: Register, index: int) -> int:
    """Word ``index`` of a value the driver must reject: a quiet NaN for floats, 0x7FFF.. for integers."""
    if register.table.bits:
        return 1
    kind = register.type.value
    if kind in ("f32", "f64"):
        high = 0x7FF8 if kind == "f64" else 0x7FC0
        first = index == (register.count - 1 if register.word_order.value == "low_first" else 0)
        return high if first else 0
    if kind == "string":
        return 0xFFFF
    return 0x7FFF if index == 0 else 0xFFFF
