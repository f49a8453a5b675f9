"""SunSpec: discovery of a device's model chain and the models the EMS uses, as relative tables.

Sources: sunspec/models json/model_{1,103,123,704}.json and json/model_124.json (snapshot 7abdf89).
Discovery logic: sunspec/pysunspec2 sunspec2/modbus/client.py and OpenEMS
…/bridge/modbus/sunspec/AbstractOpenemsSunSpecComponent.java.

Discovery (register-maps.md §4): with FC03 read 2 registers at PDU 40000 (documented as "40001"),
then 0, then 50000; they must read 0x5375 0x6E53 ("SunS"). From base + 2 read [ID, L]; the next
model starts at address + 2 + L. Stop at ID 0xFFFF, or on a read error (some SMA devices have no end
marker). A model's register offsets count from its ID register; ``absolute`` places a model at the
address discovery found.

Values: real = raw × 10^SF; "not implemented" markers are int16 0x8000, uint16 0xFFFF, acc32 0
(int32 0x80000000 and uint32 0xFFFFFFFF by the same SunSpec rule).

PV curtailment (model 123): write WMaxLimPct and its WMaxLimPct_RvrtTms (as a watchdog), then
WMaxLim_Ena = 1, and refresh before the timeout. Holding a battery (model 124, as evcc's
templates/definition/meter/sunspec-inverter-control.yaml does): StorCtl_Mod = 2, OutWRte = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from drivers.modbus.registers import (
    Access,
    Behaviour,
    DataType,
    ReadError,
    Register,
    RegisterMap,
    Table,
    check_registers,
)

SOURCE = (
    "sunspec/models json/model_{1,103,123,704}.json and json/model_124.json; discovery: sunspec/pysunspec2 "
    "sunspec2/modbus/client.py and OpenEMS …/bridge/modbus/sunspec/AbstractOpenemsSunSpecComponent.java"
)

SUNS = (0x5375, 0x6E53)
"""The "SunS" marker at the base address."""
BASE_ADDRESSES = (40000, 0, 50000)
"""Candidate base addresses (PDU), in the order to try them."""
END_MODEL_ID = 0xFFFF
HEADER_LENGTH = 2
"""ID and L precede every model's L registers."""

ReadRegisters = Callable[[int, int], Sequence[int]]
"""read(address, count) -> words with FC03; raises ReadError when the device refuses the read."""

# SunSpec point type -> (codec type, not-implemented marker).
_TYPES: Mapping[str, tuple[DataType, int | None]] = {
    "int16": (DataType.I16, 0x8000),
    "sunssf": (DataType.I16, 0x8000),
    "uint16": (DataType.U16, 0xFFFF),
    "enum16": (DataType.U16, 0xFFFF),
    "bitfield16": (DataType.U16, 0xFFFF),
    "int32": (DataType.I32, 0x8000_0000),
    "uint32": (DataType.U32, 0xFFFF_FFFF),
    "acc32": (DataType.ACC32, 0),
    "string": (DataType.STRING, None),
}


def _point(
    offset: int,
    point: str,
    sunspec_type: str,
    name: str,
    meaning: str,
    *,
    unit: str = "",
    sf: str | None = None,
    access: Access = Access.R,
    count: int = 0,
) -> Register:
    data_type, marker = _TYPES[sunspec_type]
    return Register(
        name=name,
        pdu=offset,
        doc_address=f"{point} (+{offset})",
        table=Table.HOLDING,
        type=data_type,
        count=count,
        scale_factor=sf,
        unit=unit,
        access=access,
        not_implemented=marker,
        meaning=f"{point}: {meaning}",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SunSpecModel:
    """A SunSpec model's registers, addressed relative to its ID register."""

    id: int
    name: str
    length: int | None
    """L, when every revision and device agree on it; None where they differ."""
    registers: tuple[Register, ...]
    notes: str = ""

    def __post_init__(self) -> None:
        device = f"SunSpec model {self.id} {self.name}"
        check_registers(device, self.registers)
        for register in self.registers:
            if register.pdu < HEADER_LENGTH:
                raise ValueError(f"{device}: {register.name!r} overlaps the ID/L header")
            if self.length is not None and register.end > HEADER_LENGTH + self.length:
                raise ValueError(f"{device}: {register.name!r} lies past L = {self.length}")


COMMON = SunSpecModel(
    id=1,
    name="common",
    # L is 65 on older devices and 66 where the Pad register is present.
    length=None,
    registers=(
        _point(2, "Mn", "string", "manufacturer", "manufacturer", count=16),
        _point(18, "Md", "string", "model", "model", count=16),
        _point(50, "SN", "string", "serial_number", "serial number", count=16),
    ),
)

INVERTER_STATES: Mapping[int, str] = MappingProxyType(
    {1: "OFF", 2: "SLEEPING", 3: "STARTING", 4: "MPPT", 5: "THROTTLED", 6: "SHUTTING_DOWN", 7: "FAULT", 8: "STANDBY"}
)
"""Values of ``operating_state`` (St) in models 101-103."""

_INVERTER_POINTS = (
    _point(3, "AphA", "uint16", "current_l1_a", "phase A current", unit="A", sf="current_sf"),
    _point(4, "AphB", "uint16", "current_l2_a", "phase B current", unit="A", sf="current_sf"),
    _point(5, "AphC", "uint16", "current_l3_a", "phase C current", unit="A", sf="current_sf"),
    _point(6, "A_SF", "sunssf", "current_sf", "current scale factor"),
    _point(10, "PhVphA", "uint16", "voltage_l1_v", "phase voltage AN", unit="V", sf="voltage_sf"),
    _point(11, "PhVphB", "uint16", "voltage_l2_v", "phase voltage BN", unit="V", sf="voltage_sf"),
    _point(12, "PhVphC", "uint16", "voltage_l3_v", "phase voltage CN", unit="V", sf="voltage_sf"),
    _point(13, "V_SF", "sunssf", "voltage_sf", "voltage scale factor"),
    _point(14, "W", "int16", "power_w", "AC power", unit="W", sf="power_sf"),
    _point(15, "W_SF", "sunssf", "power_sf", "AC power scale factor"),
    _point(16, "Hz", "uint16", "frequency_hz", "line frequency", unit="Hz", sf="frequency_sf"),
    _point(17, "Hz_SF", "sunssf", "frequency_sf", "frequency scale factor"),
    _point(24, "WH", "acc32", "energy_wh", "AC lifetime energy", unit="Wh", sf="energy_sf"),
    _point(26, "WH_SF", "sunssf", "energy_sf", "energy scale factor"),
    _point(38, "St", "enum16", "operating_state", "operating state, see INVERTER_STATES"),
)

INVERTER_1PH = SunSpecModel(id=101, name="inverter (single phase)", length=50, registers=_INVERTER_POINTS)
INVERTER_3PH = SunSpecModel(id=103, name="inverter (three phase)", length=50, registers=_INVERTER_POINTS)

CONTROLS = SunSpecModel(
    id=123,
    name="immediate controls",
    length=24,
    registers=(
        _point(4, "Conn", "enum16", "connect", "0 = disconnect, 1 = connect", access=Access.RW),
        _point(
            5, "WMaxLimPct", "uint16", "power_limit_pct", "% of WMax", unit="%", sf="power_limit_sf", access=Access.RW
        ),
        _point(7, "WMaxLimPct_RvrtTms", "uint16", "power_limit_revert_s", "limit timeout", unit="s", access=Access.RW),
        _point(9, "WMaxLim_Ena", "enum16", "power_limit_enable", "0 = disabled, 1 = enabled", access=Access.RW),
        _point(
            10, "OutPFSet", "int16", "power_factor_setpoint", "power factor", sf="power_factor_sf", access=Access.RW
        ),
        _point(23, "WMaxLimPct_SF", "sunssf", "power_limit_sf", "scale factor of WMaxLimPct"),
        # register-maps.md lists OutPFSet without its scale factor; model_123.json puts it here.
        _point(24, "OutPFSet_SF", "sunssf", "power_factor_sf", "scale factor of OutPFSet"),
    ),
    notes=(
        "Curtailment: write WMaxLimPct and WMaxLimPct_RvrtTms (the watchdog), then WMaxLim_Ena = 1; "
        "refresh before the timeout."
    ),
)

STORCTL_ENFORCE_CHARGE = 0b01
"""StorCtl_Mod bit 0: enforce InWRte."""
STORCTL_ENFORCE_DISCHARGE = 0b10
"""StorCtl_Mod bit 1: enforce OutWRte."""

STORAGE = SunSpecModel(
    id=124,
    name="storage",
    length=24,
    registers=(
        _point(
            2, "WChaMax", "uint16", "charge_max_w", "max charge power", unit="W", sf="charge_max_sf", access=Access.RW
        ),
        _point(
            5,
            "StorCtl_Mod",
            "bitfield16",
            "storage_control_mode",
            "bit0 = enforce InWRte, bit1 = enforce OutWRte",
            access=Access.RW,
        ),
        _point(8, "ChaState", "uint16", "soc_pct", "state of charge", unit="%", sf="soc_sf"),
        _point(11, "ChaSt", "enum16", "charge_status", "3 DISCHARGING, 4 CHARGING, 6 HOLDING"),
        _point(
            12, "OutWRte", "int16", "discharge_rate_pct", "% of max discharge", unit="%", sf="rate_sf", access=Access.RW
        ),
        _point(13, "InWRte", "int16", "charge_rate_pct", "% of max charge", unit="%", sf="rate_sf", access=Access.RW),
        _point(15, "InOutWRte_RvrtTms", "uint16", "rate_revert_s", "rate timeout", unit="s", access=Access.RW),
        _point(17, "ChaGriSet", "enum16", "grid_charging", "1 = charging from the grid allowed", access=Access.RW),
        _point(18, "WChaMax_SF", "sunssf", "charge_max_sf", "scale factor of WChaMax"),
        _point(22, "ChaState_SF", "sunssf", "soc_sf", "scale factor of ChaState"),
        _point(25, "InOutWRte_SF", "sunssf", "rate_sf", "scale factor of OutWRte and InWRte"),
    ),
    notes="Hold the battery: StorCtl_Mod = 2, OutWRte = 0; refresh before InOutWRte_RvrtTms runs out.",
)

DER_CONTROLS = SunSpecModel(
    id=704,
    name="DER AC controls",
    # The layout moved between revisions: later model_704.json files insert RGra, RGraRef and
    # VarRmp before the scale factors (moving them from +54/+55 to +58/+59) and number WSetMod
    # 1 = % / 2 = W. The offsets here follow register-maps.md; check L and WSetMod on the device.
    length=None,
    registers=(
        _point(14, "WMaxLimPctEna", "enum16", "power_limit_enable", "0 = disabled, 1 = enabled", access=Access.RW),
        _point(
            15, "WMaxLimPct", "uint16", "power_limit_pct", "% of WMax", unit="%", sf="power_limit_sf", access=Access.RW
        ),
        _point(18, "WMaxLimPctRvrtTms", "uint32", "power_limit_revert_s", "limit timeout", unit="s", access=Access.RW),
        _point(22, "WSetEna", "enum16", "power_setpoint_enable", "0 = disabled, 1 = enabled", access=Access.RW),
        _point(23, "WSetMod", "enum16", "power_setpoint_mode", "0 = % of WMax, 1 = W (verify)", access=Access.RW),
        _point(
            24,
            "WSet",
            "int32",
            "power_setpoint_w",
            "active power setpoint",
            unit="W",
            sf="power_setpoint_sf",
            access=Access.RW,
        ),
        _point(54, "WMaxLim_SF", "sunssf", "power_limit_sf", "scale factor of WMaxLimPct"),
        _point(55, "WSet_SF", "sunssf", "power_setpoint_sf", "scale factor of WSet"),
    ),
    notes="Curtailment: WMaxLimPct with WMaxLimPctRvrtTms as the watchdog, then WMaxLimPctEna = 1.",
)

MODELS: Mapping[int, SunSpecModel] = MappingProxyType(
    {model.id: model for model in (COMMON, INVERTER_1PH, INVERTER_3PH, CONTROLS, STORAGE, DER_CONTROLS)}
)


def find_base(read: ReadRegisters) -> int | None:
    """The first candidate base address that holds the SunS marker, or None."""
    for base in BASE_ADDRESSES:
        try:
            if tuple(read(base, 2)) == SUNS:
                return base
        except ReadError:
            continue
    return None


def walk_models(read: ReadRegisters, base: int) -> list[tuple[int, int, int]]:
    """(model id, address of its ID register, L) of every model after the SunS marker at ``base``.

    Stops at the end marker, at a read the device refuses (no end marker) or at the end of the
    address space. A ReadError on the marker itself propagates: there is nothing to walk.
    """
    if tuple(read(base, 2)) != SUNS:
        raise ValueError(f"no SunS marker at PDU {base}")
    models: list[tuple[int, int, int]] = []
    address = base + 2
    while address + HEADER_LENGTH <= 0x10000:
        try:
            header = read(address, HEADER_LENGTH)
        except ReadError:
            break
        if len(header) != HEADER_LENGTH:
            raise ValueError(f"read of the model header at PDU {address} returned {len(header)} words")
        model_id, length = header
        if model_id == END_MODEL_ID:
            break
        models.append((model_id, address, length))
        address += HEADER_LENGTH + length
    return models


def absolute(model: SunSpecModel, address: int, *, length: int | None = None, unit_id: int = 1) -> RegisterMap:
    """``model``'s registers placed at ``address`` (its ID register, as ``walk_models`` found it).

    ``length`` is the L the device reported; it must match a model of fixed length, and every
    register must lie inside it.
    """
    if length is not None:
        if model.length is not None and length != model.length:
            raise ValueError(f"SunSpec model {model.id} has L = {model.length}, the device reports {length}")
        beyond = [r.name for r in model.registers if r.end > HEADER_LENGTH + length]
        if beyond:
            raise ValueError(f"SunSpec model {model.id} with L = {length} has no room for {beyond}")
    return RegisterMap(
        device=f"SunSpec model {model.id} {model.name} at {address}",
        source=SOURCE,
        registers=tuple(replace(register, pdu=address + register.pdu) for register in model.registers),
        behaviour=Behaviour(default_unit_id=unit_id, port=502, notes=model.notes),
    )
