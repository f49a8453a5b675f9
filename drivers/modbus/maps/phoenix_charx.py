"""Phoenix Contact CHARX SEC-3xxx charge controller: per-connector register blocks.

Source: evcc charger/phoenix-charx.go and templates/definition/charger/phoenix-charx.yaml (evcc-io/evcc
snapshot b29b49e).

Modbus TCP, unit ID 255; FC03 read, FC16 write. Register = connector × 1000 + offset; the document
writes the offsets as "x301".
"""

from __future__ import annotations

from drivers.modbus.registers import Access, Behaviour, DataType, Register, RegisterMap, Table

SOURCE = "evcc charger/phoenix-charx.go and templates/definition/charger/phoenix-charx.yaml"

CONNECTOR_STRIDE = 1000
STATE_LETTERS = "ABCDEF"


def charx_state_letter(raw: int) -> str:
    """The IEC 61851 state letter of register x299, which carries it as ASCII in the high byte."""
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"CHARX state {raw!r} is not a 16-bit word")
    letter = chr(raw >> 8)
    if letter not in STATE_LETTERS:
        raise ValueError(f"CHARX state word 0x{raw:04X} holds no IEC 61851 state letter")
    return letter


def charx_map(connector: int) -> RegisterMap:
    """The registers of one connector (1, 2, ...)."""
    if connector < 1:
        raise ValueError(f"CHARX connectors count from 1, not {connector}")
    base = connector * CONNECTOR_STRIDE

    def reg(
        offset: int,
        name: str,
        data_type: DataType,
        meaning: str,
        *,
        unit: str = "",
        scale: float = 1.0,
        access: Access = Access.R,
    ) -> Register:
        return Register(
            name=name,
            pdu=base + offset,
            doc_address=f"x{offset}",
            table=Table.HOLDING,
            type=data_type,
            unit=unit,
            scale=scale,
            access=access,
            meaning=meaning,
        )

    return RegisterMap(
        device=f"Phoenix Contact CHARX connector {connector}",
        source=SOURCE,
        registers=(
            reg(232, "voltage_l1_v", DataType.I32, "voltage L1 (mV on the wire)", unit="V", scale=0.001),
            reg(234, "voltage_l2_v", DataType.I32, "voltage L2 (mV on the wire)", unit="V", scale=0.001),
            reg(236, "voltage_l3_v", DataType.I32, "voltage L3 (mV on the wire)", unit="V", scale=0.001),
            reg(238, "current_l1_a", DataType.I32, "current L1 (mA on the wire)", unit="A", scale=0.001),
            reg(240, "current_l2_a", DataType.I32, "current L2 (mA on the wire)", unit="A", scale=0.001),
            reg(242, "current_l3_a", DataType.I32, "current L3 (mA on the wire)", unit="A", scale=0.001),
            reg(244, "power_w", DataType.I32, "active power (mW on the wire)", unit="W", scale=0.001),
            reg(250, "energy_wh", DataType.I64, "energy meter reading", unit="Wh"),
            reg(299, "state_raw", DataType.U16, "IEC 61851 state letter, ASCII in the high byte: charx_state_letter"),
            reg(
                301,
                "max_current_setpoint_a",
                DataType.U16,
                "max current; 0 = pause, otherwise >= 6",
                unit="A",
                access=Access.RW,
            ),
        ),
        behaviour=Behaviour(
            default_unit_id=255,
            port=502,
            single_register_write=False,
            min_current_a=6.0,
            zero_pauses=True,
        ),
    )
