"""Register maps and codec as specifications: vectors, round trips, documented addresses, discovery."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.maps import (
    abb_terra_ac,
    alfen_ng9xx,
    alpitronic_hyc,
    digital_io,
    eastron_sdm630,
    janitza_umg604,
    phoenix_charx,
    sma_storage,
    sunspec,
)
from drivers.modbus.registers import (
    Access,
    Behaviour,
    CodecError,
    DataType,
    ReadError,
    Register,
    RegisterMap,
    Table,
    WordOrder,
    decode,
    encode,
    read_blocks,
)


def words_of(fmt: str, value: float) -> list[int]:
    """Big-endian words of ``value`` packed with struct, independent of the codec under test."""
    data = struct.pack(">" + fmt, value)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


_BASE = Register(name="value", pdu=0, doc_address="0", table=Table.HOLDING, type=DataType.U16, meaning="test")


def register(data_type: DataType, **overrides: Any) -> Register:
    """A test register of ``data_type`` at PDU 0 with the given fields changed."""
    changes: dict[str, Any] = {"type": data_type, "count": 0, **overrides}
    return replace(_BASE, **changes)


# --- codec: known vectors ---------------------------------------------------------------------------


def test_float32_230_volts_is_0x4366_0x0000() -> None:
    voltage = eastron_sdm630.MAP.by_name("voltage_l1_v")
    assert words_of("f", 230.0) == [0x4366, 0x0000]
    assert encode(voltage, 230.0) == [0x4366, 0x0000]
    assert decode(voltage, [0x4366, 0x0000]) == 230.0


def test_janitza_little_endian_mirror_swaps_the_words() -> None:
    big = janitza_umg604.MAP.by_name("voltage_l1_v")
    little = janitza_umg604.MAP_LITTLE_ENDIAN.by_name("voltage_l1_v")
    assert little.pdu == 19000 + 32768
    assert little.word_order is WordOrder.LOW_FIRST
    high, low = words_of("f", 231.5)
    assert decode(big, [high, low]) == 231.5
    assert decode(little, [low, high]) == 231.5
    assert encode(little, 231.5) == [low, high]


@pytest.mark.parametrize(
    ("data_type", "fmt", "value"),
    [
        (DataType.U16, "H", 51234),
        (DataType.I16, "h", -1234),
        (DataType.U32, "I", 16000),
        (DataType.I32, "i", -2_000_000),
        (DataType.U64, "Q", 2**63 + 5),
        (DataType.I64, "q", -(2**40) - 3),
        (DataType.ACC32, "I", 123_456_789),
        (DataType.F64, "d", 12345.678),
    ],
)
def test_numeric_vectors_match_struct(data_type: DataType, fmt: str, value: float) -> None:
    reg = register(data_type)
    assert encode(reg, value) == words_of(fmt, value)
    assert decode(reg, words_of(fmt, value)) == value


def test_abb_setpoint_goes_as_milliamps_high_word_first() -> None:
    setpoint = abb_terra_ac.MAP.by_name("current_limit_setpoint_a")
    assert encode(setpoint, 16.0) == [0x0000, 0x3E80]
    assert encode(setpoint, 70.0) == words_of("I", 70_000)


def test_scale_turns_raw_units_into_names_units() -> None:
    abb = abb_terra_ac.MAP
    assert decode(abb.by_name("current_l1_a"), words_of("I", 15_500)) == pytest.approx(15.5)
    assert decode(abb.by_name("voltage_l2_v"), words_of("I", 2301)) == pytest.approx(230.1)
    import_wh = eastron_sdm630.MAP.by_name("import_energy_wh")
    assert decode(import_wh, words_of("f", 1.5)) == pytest.approx(1500.0)


def test_unscaled_integers_stay_integers() -> None:
    phases = alfen_ng9xx.SOCKET_MAP.by_name("phases")
    value = decode(phases, [3])
    assert value == 3
    assert isinstance(value, int)


# --- codec: round trips -----------------------------------------------------------------------------

INTEGER_RANGES: Mapping[DataType, tuple[int, int]] = {
    DataType.U16: (0, 0xFFFF),
    DataType.I16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.I32: (-(2**31), 2**31 - 1),
    DataType.U64: (0, 2**64 - 1),
    DataType.I64: (-(2**63), 2**63 - 1),
    DataType.ACC32: (0, 2**32 - 1),
}
MULTI_REGISTER = (DataType.U32, DataType.I32, DataType.U64, DataType.I64, DataType.ACC32, DataType.F32, DataType.F64)


@st.composite
def integer_cases(draw: st.DrawFn) -> tuple[Register, int]:
    data_type = draw(st.sampled_from(sorted(INTEGER_RANGES, key=lambda t: t.value)))
    orders = [WordOrder.HIGH_FIRST] + ([WordOrder.LOW_FIRST] if data_type in MULTI_REGISTER else [])
    order = draw(st.sampled_from(orders))
    low, high = INTEGER_RANGES[data_type]
    return register(data_type, word_order=order), draw(st.integers(low, high))


@given(integer_cases())
def test_integers_round_trip_in_both_word_orders(case: tuple[Register, int]) -> None:
    reg, value = case
    words = encode(reg, value)
    assert len(words) == reg.count
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(reg, words) == value


@given(st.sampled_from(list(WordOrder)), st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trips_exactly(order: WordOrder, value: float) -> None:
    reg = register(DataType.F32, word_order=order)
    assert decode(reg, encode(reg, value)) == value


@given(st.sampled_from(list(WordOrder)), st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trips_exactly(order: WordOrder, value: float) -> None:
    reg = register(DataType.F64, word_order=order)
    assert decode(reg, encode(reg, value)) == value


@given(st.integers(0, 2**32 - 1))
def test_low_first_is_the_high_first_words_reversed(value: int) -> None:
    high_first = encode(register(DataType.U32), value)
    assert encode(register(DataType.U32, word_order=WordOrder.LOW_FIRST), value) == high_first[::-1]


@given(st.integers(-(2**15), 2**15 - 1).filter(lambda raw: raw != -(2**15)), st.integers(-10, 10))
def test_sunspec_scaled_values_round_trip(raw: int, sf: int) -> None:
    power = sunspec.absolute(sunspec.INVERTER_3PH, 40069).by_name("power_w")
    value = decode(power, encode(power, raw * 10.0**sf, sf), sf)
    assert value == pytest.approx(raw * 10.0**sf)


# --- codec: SunSpec scale factors and markers --------------------------------------------------------


def test_sunspec_scale_factor_is_a_power_of_ten() -> None:
    controls = sunspec.absolute(sunspec.CONTROLS, 40100)
    limit = controls.by_name("power_limit_pct")
    assert decode(limit, [500], scale_factor=-1) == pytest.approx(50.0)
    assert encode(limit, 60.0, scale_factor=-1) == [600]
    power = sunspec.absolute(sunspec.INVERTER_3PH, 40069).by_name("power_w")
    assert decode(power, words_of("h", -1234), scale_factor=1) == pytest.approx(-12340.0)


def test_sunspec_not_implemented_markers_decode_to_none() -> None:
    inverter = sunspec.absolute(sunspec.INVERTER_1PH, 40069)
    assert decode(inverter.by_name("power_w"), [0x8000], scale_factor=0) is None
    assert decode(inverter.by_name("current_l2_a"), [0xFFFF], scale_factor=-2) is None
    assert decode(inverter.by_name("energy_wh"), [0, 0], scale_factor=0) is None
    assert decode(inverter.by_name("power_sf"), [0x8000]) is None
    # A marker needs no scale factor: the value is absent whatever the SF register says.
    assert decode(inverter.by_name("current_l3_a"), [0xFFFF]) is None
    assert decode(inverter.by_name("energy_wh"), [0, 1234], scale_factor=0) == 1234


def test_sma_nan_markers_decode_to_none() -> None:
    assert decode(sma_storage.MAP.by_name("ac_power_w"), [0x8000, 0x0000]) is None
    assert decode(sma_storage.MAP.by_name("soc_pct"), [0xFFFF, 0xFFFF]) is None
    assert decode(sma_storage.MAP.by_name("soc_pct"), [0, 87]) == 87


def test_nan_float_decodes_to_none() -> None:
    assert decode(register(DataType.F32), words_of("f", math.nan)) is None
    assert decode(register(DataType.F64), words_of("d", math.nan)) is None


def test_scale_factor_must_be_given_exactly_when_the_register_has_one() -> None:
    limit = sunspec.absolute(sunspec.CONTROLS, 40100).by_name("power_limit_pct")
    with pytest.raises(CodecError, match=r"'power_limit_pct'.*'power_limit_sf'"):
        decode(limit, [500])
    with pytest.raises(CodecError, match=r"outside -10..10"):
        decode(limit, [500], scale_factor=11)
    with pytest.raises(CodecError, match="has no scale factor"):
        decode(register(DataType.U16), [1], scale_factor=0)


def test_encoding_the_not_implemented_marker_is_refused() -> None:
    limit = sunspec.absolute(sunspec.CONTROLS, 40100).by_name("power_limit_pct")
    with pytest.raises(CodecError, match="not-implemented marker"):
        encode(limit, 0xFFFF, scale_factor=0)


# --- codec: strings and bits ------------------------------------------------------------------------


def test_alfen_mode3_state_string() -> None:
    state = alfen_ng9xx.SOCKET_MAP.by_name("mode3_state")
    assert (state.pdu, state.count) == (1201, 5)
    assert decode(state, [0x4332, 0, 0, 0, 0]) == "C2"
    assert decode(state, [0x4220, 0x2020, 0, 0, 0]) == "B"
    assert encode(state, "C2") == [0x4332, 0, 0, 0, 0]
    assert {decode(state, encode(state, letter)) for letter in alfen_ng9xx.MODE3_STATES} == set(
        alfen_ng9xx.MODE3_STATES
    )


def test_string_errors_name_the_register() -> None:
    state = alfen_ng9xx.SOCKET_MAP.by_name("mode3_state")
    with pytest.raises(CodecError, match=r"'mode3_state'.*not ASCII"):
        decode(state, [0xC332, 0, 0, 0, 0])
    with pytest.raises(CodecError, match=r"'mode3_state'.*longer than 10"):
        encode(state, "C2" * 6)
    with pytest.raises(CodecError, match="takes a string"):
        encode(state, 2)


def test_bits() -> None:
    contact = digital_io.fire_panel_map(address=4, unit_id=1).by_name(digital_io.FIRE_CONTACT)
    assert decode(contact, [1]) is True
    assert decode(contact, [False]) is False
    assert encode(contact, True) == [1]
    with pytest.raises(CodecError, match="word 2"):
        decode(contact, [2])
    with pytest.raises(CodecError, match="True/False"):
        encode(contact, 0.5)


# --- codec: errors name the register -----------------------------------------------------------------


def test_wrong_word_count_names_the_register() -> None:
    setpoint = alfen_ng9xx.SOCKET_MAP.by_name("max_current_setpoint_a")
    with pytest.raises(CodecError, match=r"'max_current_setpoint_a' \(1210, F32\): expects 2 words, got 1"):
        decode(setpoint, [0x4180])


def test_out_of_range_and_non_finite_values_are_refused() -> None:
    setpoint = abb_terra_ac.MAP.by_name("current_limit_setpoint_a")
    with pytest.raises(CodecError, match=r"'current_limit_setpoint_a' \(0x4100, U32\).*outside 0..4294967295"):
        encode(setpoint, -1.0)
    with pytest.raises(CodecError, match=r"'phases'.*outside 0..65535"):
        encode(alfen_ng9xx.SOCKET_MAP.by_name("phases"), 70_000)
    with pytest.raises(CodecError, match=r"'max_current_setpoint_a'.*non-finite"):
        encode(alfen_ng9xx.SOCKET_MAP.by_name("max_current_setpoint_a"), math.inf)
    with pytest.raises(CodecError, match="overflows F32"):
        encode(register(DataType.F32), 1e39)
    with pytest.raises(CodecError, match="word 65536"):
        decode(register(DataType.U16), [65536])


# --- registers and maps validate themselves ----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": "CurrentL1"}, "snake_case"),
        ({"type": DataType.BIT}, "BIT lives in COIL/DISCRETE"),
        ({"table": Table.DISCRETE}, "BIT lives in COIL/DISCRETE"),
        ({"count": 1}, "count 1 does not match F32"),
        ({"table": Table.INPUT, "access": Access.RW}, "INPUT is read-only"),
        ({"scale": 0.0}, "scale must be finite"),
        ({"scale_factor": "some_sf"}, "only to integer types"),
        ({"pdu": 0xFFFF}, "16-bit address space"),
        ({"type": DataType.U16, "word_order": WordOrder.LOW_FIRST}, "multi-register"),
        ({"type": DataType.U16, "not_implemented": 0x10000}, "not_implemented"),
        ({"type": DataType.STRING}, "STRING needs count"),
        ({"doc_address": ""}, "doc_address"),
    ],
)
def test_inconsistent_registers_are_refused(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        register(DataType.F32, **overrides)


def test_count_is_derived_from_the_type() -> None:
    assert [register(t).count for t in (DataType.U16, DataType.F32, DataType.I64, DataType.ACC32)] == [1, 2, 4, 2]


def test_overlapping_registers_are_named() -> None:
    regs = (register(DataType.F32, name="first", pdu=10), register(DataType.U16, name="second", pdu=11))
    with pytest.raises(ValueError, match=r"'first' \(10..11\) and 'second' \(11..11\) overlap in HOLDING"):
        RegisterMap(device="meter", source="doc", registers=regs, behaviour=Behaviour(default_unit_id=1))


def test_same_address_on_another_unit_or_table_is_no_overlap() -> None:
    regs = (
        register(DataType.F32, name="first", pdu=10),
        register(DataType.F32, name="second", pdu=10, unit_id=200),
        register(DataType.F32, name="third", pdu=10, table=Table.INPUT),
    )
    RegisterMap(device="charger", source="doc", registers=regs, behaviour=Behaviour(default_unit_id=1))


def test_explicit_default_unit_overlaps_like_none() -> None:
    regs = (register(DataType.F32, name="first", pdu=10), register(DataType.F32, name="second", pdu=10, unit_id=1))
    with pytest.raises(ValueError, match="overlap"):
        RegisterMap(device="charger", source="doc", registers=regs, behaviour=Behaviour(default_unit_id=1))


def test_duplicate_names_and_missing_scale_factors_are_refused() -> None:
    behaviour = Behaviour(default_unit_id=1)
    twice = (register(DataType.U16, pdu=0), register(DataType.U16, pdu=1))
    with pytest.raises(ValueError, match="meter: register name 'value' is used twice"):
        RegisterMap(device="meter", source="doc", registers=twice, behaviour=behaviour)
    orphan = (register(DataType.U16, scale_factor="value_sf"),)
    with pytest.raises(ValueError, match="'value_sf', not in map"):
        RegisterMap(device="meter", source="doc", registers=orphan, behaviour=behaviour)


def test_by_name_names_device_and_register() -> None:
    with pytest.raises(KeyError, match="ABB Terra AC has no register named 'current_l4_a'"):
        abb_terra_ac.MAP.by_name("current_l4_a")


def test_behaviour_refuses_zero_pause_together_with_pause_power() -> None:
    with pytest.raises(ValueError, match="pause_power_w"):
        Behaviour(default_unit_id=1, zero_pauses=True, pause_power_w=1547.0)


ALL_MAPS: Sequence[RegisterMap] = (
    eastron_sdm630.MAP,
    janitza_umg604.MAP,
    janitza_umg604.MAP_LITTLE_ENDIAN,
    alfen_ng9xx.SOCKET_MAP,
    alfen_ng9xx.socket_map(2),
    alfen_ng9xx.STATION_MAP,
    abb_terra_ac.MAP,
    *(phoenix_charx.charx_map(c) for c in (1, 2, 3)),
    *(alpitronic_hyc.alpitronic_map(c) for c in alpitronic_hyc.CONNECTORS),
    alpitronic_hyc.STATION_MAP,
    sma_storage.MAP,
    *(sunspec.absolute(model, 40002) for model in sunspec.MODELS.values()),
    digital_io.fire_panel_map(address=0, unit_id=1),
    digital_io.dso_relay_map(zero_pct=0, thirty_pct=1, sixty_pct=2, unit_id=1),
)


@pytest.mark.parametrize("register_map", ALL_MAPS, ids=lambda m: m.device)
def test_every_map_is_consistent_and_readable(register_map: RegisterMap) -> None:
    names = [r.name for r in register_map.registers]
    assert len(names) == len(set(names))
    assert register_map.source
    for reg in register_map.registers:
        assert register_map.by_name(reg.name) is reg
        assert reg.meaning
    limit = register_map.behaviour.max_registers_per_read
    readable = [r for r in register_map.registers if r.access.readable]
    blocks = read_blocks(register_map.registers, limit)
    assert sorted(r.name for b in blocks for r in b.registers) == sorted(r.name for r in readable)
    assert all(b.count <= limit for b in blocks)


# --- documented addresses (register-maps.md) ---------------------------------------------------------


def spec(reg: Register) -> tuple[int, Table, DataType, Access]:
    return reg.pdu, reg.table, reg.type, reg.access


def test_sdm630_numbers_from_one_and_measures_on_fc04() -> None:
    current = eastron_sdm630.MAP.by_name("current_l1_a")
    assert spec(current) == (6, Table.INPUT, DataType.F32, Access.R)
    assert current.doc_address == "30007"
    assert current.table.value == 4
    assert eastron_sdm630.MAP.by_name("power_w").pdu == 52
    assert eastron_sdm630.MAP.by_name("frequency_hz").pdu == 70
    assert eastron_sdm630.MAP.by_name("export_energy_wh").pdu == 74


def test_janitza_addresses_are_printed_pdus() -> None:
    janitza = janitza_umg604.MAP
    assert spec(janitza.by_name("power_w")) == (19026, Table.HOLDING, DataType.F32, Access.R)
    assert janitza.by_name("current_l3_a").pdu == 19016
    assert janitza.by_name("import_energy_wh").pdu == 19068
    assert janitza.by_name("export_energy_wh").unit == "Wh"


def test_alfen_socket_and_station_registers() -> None:
    socket = alfen_ng9xx.SOCKET_MAP
    assert spec(socket.by_name("max_current_setpoint_a")) == (1210, Table.HOLDING, DataType.F32, Access.RW)
    assert spec(socket.by_name("applied_max_current_a"))[:3] == (1206, Table.HOLDING, DataType.F32)
    assert spec(socket.by_name("validity_remaining_s"))[:3] == (1208, Table.HOLDING, DataType.U32)
    assert spec(socket.by_name("safe_current_a"))[:3] == (1212, Table.HOLDING, DataType.F32)
    assert spec(socket.by_name("setpoint_in_use"))[:3] == (1214, Table.HOLDING, DataType.U16)
    assert spec(socket.by_name("phases")) == (1215, Table.HOLDING, DataType.U16, Access.RW)
    assert spec(socket.by_name("energy_delivered_wh"))[:3] == (374, Table.HOLDING, DataType.F64)
    assert socket.behaviour.zero_pauses
    assert alfen_ng9xx.socket_map(2).unit_of(socket.by_name("phases")) == 2
    station = alfen_ng9xx.STATION_MAP
    assert [station.by_name(f"scn_max_current_l{p}_a").pdu for p in (1, 2, 3)] == [1417, 1419, 1421]
    assert {station.unit_of(r) for r in station.registers} == {200}
    assert station.by_name("active_max_current_a").pdu == 1100
    assert station.by_name("socket_count").pdu == 1105
    with pytest.raises(ValueError, match="sockets"):
        alfen_ng9xx.socket_map(3)


def test_abb_registers() -> None:
    abb = abb_terra_ac.MAP
    setpoint = abb.by_name("current_limit_setpoint_a")
    assert spec(setpoint) == (0x4100, Table.HOLDING, DataType.U32, Access.W)
    assert (setpoint.scale, setpoint.doc_address) == (0.001, "0x4100")
    assert abb.by_name("voltage_l3_v").pdu == 0x401A
    assert abb.by_name("voltage_l3_v").scale == 0.1
    assert abb.by_name("state_raw").pdu == 0x400C


@pytest.mark.parametrize(
    ("raw", "letter"),
    [
        (0x0000_0000, "A"),
        (0x0000_0100, "B1"),
        (0xFFFF_02FF, "B2"),  # only byte 2 (frame order) counts
        (0x0000_8300, "C1"),  # bit 7 of byte 2 is masked off
        (0x0000_0400, "C2"),
        (0x0000_0500, "other"),
    ],
)
def test_abb_state_is_byte_2_in_frame_order(raw: int, letter: str) -> None:
    assert abb_terra_ac.abb_state_letter(raw) == letter


def test_abb_state_reads_the_frame_like_evcc() -> None:
    frame = bytes([0x00, 0x00, 0x84, 0x00])  # b[2] = 0x84 -> 0x84 & 0x7f = 4 = C2
    raw = decode(abb_terra_ac.MAP.by_name("state_raw"), [int.from_bytes(frame[0:2]), int.from_bytes(frame[2:4])])
    assert isinstance(raw, int)
    assert abb_terra_ac.abb_state_letter(raw) == "C2"
    with pytest.raises(ValueError, match="state code 6"):
        abb_terra_ac.abb_state_letter(0x0600)


def test_phoenix_registers_are_connector_times_1000_plus_offset() -> None:
    charx = phoenix_charx.charx_map(2)
    assert spec(charx.by_name("max_current_setpoint_a")) == (2301, Table.HOLDING, DataType.U16, Access.RW)
    assert charx.by_name("max_current_setpoint_a").doc_address == "x301"
    assert spec(charx.by_name("energy_wh"))[:3] == (2250, Table.HOLDING, DataType.I64)
    assert charx.by_name("current_l1_a").scale == 0.001
    assert charx.behaviour.default_unit_id == 255
    assert phoenix_charx.charx_state_letter(ord("C") << 8) == "C"
    with pytest.raises(ValueError, match="connectors count from 1"):
        phoenix_charx.charx_map(0)


def test_alpitronic_blocks_and_pause_power() -> None:
    connector2 = alpitronic_hyc.alpitronic_map(2)
    assert spec(connector2.by_name("max_power_w")) == (200, Table.HOLDING, DataType.U32, Access.RW)
    assert spec(connector2.by_name("state_code")) == (200, Table.INPUT, DataType.U16, Access.R)
    assert spec(connector2.by_name("total_energy_wh"))[:3] == (232, Table.INPUT, DataType.I64)
    assert connector2.by_name("dc_voltage_v").scale == 0.01
    assert connector2.behaviour.pause_power_w == 1547.0
    assert not connector2.behaviour.zero_pauses
    assert alpitronic_hyc.STATES[3] == "Charging"
    assert alpitronic_hyc.STATION_MAP.by_name("max_power_va").pdu == 0
    with pytest.raises(ValueError, match="1-4"):
        alpitronic_hyc.alpitronic_map(5)


def test_sma_setpoint_pair_is_one_fc16_block() -> None:
    sma = sma_storage.MAP
    setpoint, control = sma.by_name("power_setpoint_w"), sma.by_name("external_control")
    assert spec(setpoint) == (40149, Table.HOLDING, DataType.I32, Access.W)
    assert control.pdu == setpoint.end
    assert sma.behaviour.default_unit_id == 3
    assert sma.behaviour.watchdog_s == 60.0
    assert encode(control, sma_storage.EXTERNAL_CONTROL_ACTIVE) == [0, 802]


def test_sunspec_model_offsets() -> None:
    controls = sunspec.absolute(sunspec.CONTROLS, 40_120, length=24)
    assert controls.by_name("power_limit_pct").pdu == 40_125
    assert controls.by_name("power_limit_sf").pdu == 40_143
    assert controls.by_name("power_limit_enable").pdu == 40_129
    storage = sunspec.STORAGE
    assert [storage.registers[i].pdu for i in range(3)] == [2, 5, 8]
    assert sunspec.DER_CONTROLS.registers[-1].doc_address == "WSet_SF (+55)"
    der = sunspec.absolute(sunspec.DER_CONTROLS, 0)
    assert spec(der.by_name("power_setpoint_w"))[:3] == (24, Table.HOLDING, DataType.I32)
    with pytest.raises(ValueError, match="L = 24, the device reports 26"):
        sunspec.absolute(sunspec.CONTROLS, 40_120, length=26)
    with pytest.raises(ValueError, match="no room"):
        sunspec.absolute(sunspec.DER_CONTROLS, 40_120, length=30)


# --- read planning ----------------------------------------------------------------------------------


def test_eastron_reads_even_blocks_of_at_most_60() -> None:
    blocks = read_blocks(eastron_sdm630.MAP.registers, eastron_sdm630.MAP.behaviour.max_registers_per_read)
    assert [(b.start, b.count) for b in blocks] == [(0, 18), (52, 2), (70, 6)]
    assert all(b.count % 2 == 0 and b.start % 2 == 0 and b.count <= 60 for b in blocks)
    bridged = read_blocks(eastron_sdm630.MAP.registers, 60, max_gap=60)
    assert [(b.start, b.count) for b in bridged] == [(0, 54), (70, 6)]
    assert all(b.count % 2 == 0 for b in bridged)


def test_read_blocks_split_at_the_limit_and_slice_responses() -> None:
    blocks = read_blocks(janitza_umg604.MAP.registers, 4)
    assert [(b.start, b.count) for b in blocks][:3] == [(19000, 4), (19004, 2), (19012, 4)]
    first = blocks[0]
    words = [*words_of("f", 230.0), *words_of("f", 231.0)]
    assert decode(first.registers[1], first.words_of(first.registers[1], words)) == 231.0


def test_read_blocks_leave_out_write_only_registers() -> None:
    blocks = read_blocks(abb_terra_ac.MAP.registers, 125)
    assert [(b.start, b.count) for b in blocks] == [(0x400A, 0x4020 - 0x400A)]


def test_read_blocks_group_by_table_and_unit() -> None:
    registers = (*alfen_ng9xx.SOCKET_MAP.registers, *alfen_ng9xx.STATION_MAP.registers)
    blocks = read_blocks(registers, 125)
    assert {(b.table, b.unit_id) for b in blocks} == {(Table.HOLDING, None), (Table.HOLDING, 200)}
    connector = alpitronic_hyc.alpitronic_map(1)
    assert {b.table for b in read_blocks(connector.registers, 125)} == {Table.HOLDING, Table.INPUT}
    with pytest.raises(ValueError, match="exceeds one read of 4"):
        read_blocks(registers, 4)


# --- SunSpec discovery ------------------------------------------------------------------------------

SUNS_MODELS = ((1, 66), (103, 50), (123, 24))


def fake_device(base: int, models: Sequence[tuple[int, int]], *, end_marker: bool) -> Callable[[int, int], list[int]]:
    """A register space with SunS at ``base`` and the given models; reads outside it raise ReadError."""
    space: dict[int, int] = {base: sunspec.SUNS[0], base + 1: sunspec.SUNS[1]}
    address = base + 2
    for model_id, length in models:
        space[address], space[address + 1] = model_id, length
        space.update({address + 2 + i: 0 for i in range(length)})
        address += 2 + length
    if end_marker:
        space[address], space[address + 1] = sunspec.END_MODEL_ID, 0

    def read(start: int, count: int) -> list[int]:
        if any(a not in space for a in range(start, start + count)):
            raise ReadError(f"illegal data address {start}")
        return [space[a] for a in range(start, start + count)]

    return read


def test_walk_models_follows_the_chain_to_the_end_marker() -> None:
    read = fake_device(40000, SUNS_MODELS, end_marker=True)
    assert sunspec.find_base(read) == 40000
    assert sunspec.walk_models(read, 40000) == [(1, 40002, 66), (103, 40070, 50), (123, 40122, 24)]


def test_walk_models_stops_at_a_read_error_without_end_marker() -> None:
    read = fake_device(0, SUNS_MODELS, end_marker=False)
    assert sunspec.find_base(read) == 0
    assert sunspec.walk_models(read, 0) == [(1, 2, 66), (103, 70, 50), (123, 122, 24)]


def test_discovered_models_place_their_maps() -> None:
    read = fake_device(50000, SUNS_MODELS, end_marker=True)
    base = sunspec.find_base(read)
    assert base == 50000
    placed = [
        sunspec.absolute(sunspec.MODELS[i], address, length=length)
        for i, address, length in sunspec.walk_models(read, base)
    ]
    assert placed[2].by_name("power_limit_pct").pdu == 50122 + 5
    assert placed[1].by_name("power_w").pdu == 50070 + 14


def test_no_suns_marker_anywhere() -> None:
    def refuse(start: int, count: int) -> list[int]:
        raise ReadError("illegal data address")

    assert sunspec.find_base(refuse) is None
    with pytest.raises(ValueError, match="no SunS marker at PDU 40000"):
        sunspec.walk_models(lambda start, count: [0, 0], 40000)


# --- digital I/O ------------------------------------------------------------------------------------

ACTIVE, IDLE = False, True
"""Relay input levels with the default polarity: FALSE = restricted (OpenEMS, register-maps.md §6)."""


@pytest.mark.parametrize(
    ("zero", "thirty", "sixty", "stage"),
    [
        (IDLE, IDLE, IDLE, 100.0),
        (IDLE, IDLE, ACTIVE, 60.0),
        (IDLE, ACTIVE, IDLE, 30.0),
        (IDLE, ACTIVE, ACTIVE, 30.0),  # 30 beats 60
        (ACTIVE, ACTIVE, ACTIVE, 0.0),  # 0 beats everything
        (ACTIVE, None, None, 0.0),  # an active 0 % relay decides even with the others unread
        (IDLE, ACTIVE, None, 30.0),
        (None, IDLE, IDLE, None),  # the 0 % input could be active: unknown, the controller fails safe
        (IDLE, None, ACTIVE, None),
        (IDLE, IDLE, None, None),
    ],
)
def test_dso_stage_from_relays(zero: bool | None, thirty: bool | None, sixty: bool | None, stage: float | None) -> None:
    assert digital_io.dso_stage_pct(zero_pct=zero, thirty_pct=thirty, sixty_pct=sixty) == stage


def test_dso_stage_with_closing_relays() -> None:
    assert digital_io.dso_stage_pct(zero_pct=False, thirty_pct=True, sixty_pct=True, restricted_level=True) == 30.0


def test_io_maps() -> None:
    relays = digital_io.dso_relay_map(zero_pct=8, thirty_pct=9, sixty_pct=10, unit_id=3, table=Table.COIL)
    assert [(r.name, r.pdu, r.table, r.type) for r in relays.registers] == [
        ("dso_relay_0_pct", 8, Table.COIL, DataType.BIT),
        ("dso_relay_30_pct", 9, Table.COIL, DataType.BIT),
        ("dso_relay_60_pct", 10, Table.COIL, DataType.BIT),
    ]
    assert [(b.start, b.count) for b in read_blocks(relays.registers, 125)] == [(8, 3)]
    with pytest.raises(ValueError, match="COIL or DISCRETE"):
        digital_io.io_module_map(device="module", points=(), unit_id=1, table=Table.HOLDING)
