"""Janitza UMG 604 power analyser: float32 measurements over Modbus TCP.

Source: OpenEMS/openems io.openems.edge.meter.janitza/doc/janitza-mal-umg604-en.pdf (snapshot 0e4ea88).
Also …/umg604/MeterJanitzaUmg604Impl.java.

Addresses are PDU, used as printed. Reads work with FC03 and FC04 alike; the map uses FC03.
"""

from __future__ import annotations

from dataclasses import replace

from drivers.modbus.registers import Behaviour, DataType, Register, RegisterMap, Table, WordOrder

SOURCE = (
    "Janitza UMG 604: OpenEMS/openems io.openems.edge.meter.janitza/doc/janitza-mal-umg604-en.pdf; "
    "also …/umg604/MeterJanitzaUmg604Impl.java"
)

LITTLE_ENDIAN_OFFSET = 32768
"""Adding this to an address returns the same value little-endian."""


def _float(pdu: int, name: str, unit: str, meaning: str) -> Register:
    return Register(
        name=name, pdu=pdu, doc_address=str(pdu), table=Table.HOLDING, type=DataType.F32, unit=unit, meaning=meaning
    )


_BEHAVIOUR = Behaviour(
    default_unit_id=1,
    port=502,
    notes="FC03/FC04 read; FC06/FC16 write.",
)

MAP = RegisterMap(
    device="Janitza UMG 604",
    source=SOURCE,
    registers=(
        _float(19000, "voltage_l1_v", "V", "voltage L1-N"),
        _float(19002, "voltage_l2_v", "V", "voltage L2-N"),
        _float(19004, "voltage_l3_v", "V", "voltage L3-N"),
        _float(19012, "current_l1_a", "A", "current L1"),
        _float(19014, "current_l2_a", "A", "current L2"),
        _float(19016, "current_l3_a", "A", "current L3"),
        _float(19020, "power_l1_w", "W", "active power L1"),
        _float(19022, "power_l2_w", "W", "active power L2"),
        _float(19024, "power_l3_w", "W", "active power L3"),
        _float(19026, "power_w", "W", "active power, sum L1-L3"),
        _float(19050, "frequency_hz", "Hz", "frequency"),
        _float(19068, "import_energy_wh", "Wh", "active energy consumed"),
        _float(19076, "export_energy_wh", "Wh", "active energy delivered"),
    ),
    behaviour=_BEHAVIOUR,
)

# The document says only "little-endian". Modbus fixes the byte order inside a register (high byte
# first), so the variant is read here as the 32-bit value with its two words swapped (LOW_FIRST).
# Verify on the device; MAP, the documented big-endian layout, is the one to use by default.
MAP_LITTLE_ENDIAN = RegisterMap(
    device="Janitza UMG 604 (little-endian mirror)",
    source=SOURCE,
    registers=tuple(
        replace(
            register,
            pdu=register.pdu + LITTLE_ENDIAN_OFFSET,
            doc_address=f"{register.pdu}+{LITTLE_ENDIAN_OFFSET}",
            word_order=WordOrder.LOW_FIRST,
        )
        for register in MAP.registers
    ),
    behaviour=_BEHAVIOUR,
)
