"""Eastron SDM630-Modbus energy meter (protocol V1.7): measurements on FC04 as float32.

Source: OpenEMS/openems io.openems.edge.meter.eastron/doc/SDM630Register1-5.pdf (snapshot 0e4ea88).
Also …/sdm630/MeterEastronSdm630Impl.java and evcc templates/definition/meter/eastron-sdm72v2_630.yaml
(evcc-io/evcc snapshot b29b49e).

The document numbers input registers from 1 (30001 = PDU 0), so PDU = doc address − 30001.
"""

from __future__ import annotations

from drivers.modbus.registers import Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "Eastron SDM630-Modbus protocol V1.7: OpenEMS/openems io.openems.edge.meter.eastron/doc/SDM630Register1-5.pdf; "
    "also …/sdm630/MeterEastronSdm630Impl.java and evcc templates/definition/meter/eastron-sdm72v2_630.yaml"
)

FIRST_INPUT_REGISTER = 30001
"""The document's number for PDU 0 of the input registers."""


def _input(doc: int, name: str, unit: str, meaning: str, scale: float = 1.0) -> Register:
    return Register(
        name=name,
        pdu=doc - FIRST_INPUT_REGISTER,
        doc_address=str(doc),
        table=Table.INPUT,
        type=DataType.F32,
        unit=unit,
        scale=scale,
        meaning=meaning,
    )


MAP = RegisterMap(
    device="Eastron SDM630",
    source=SOURCE,
    registers=(
        _input(30001, "voltage_l1_v", "V", "voltage L1-N"),
        _input(30003, "voltage_l2_v", "V", "voltage L2-N"),
        _input(30005, "voltage_l3_v", "V", "voltage L3-N"),
        _input(30007, "current_l1_a", "A", "current L1"),
        _input(30009, "current_l2_a", "A", "current L2"),
        _input(30011, "current_l3_a", "A", "current L3"),
        _input(30013, "power_l1_w", "W", "active power L1, signed"),
        _input(30015, "power_l2_w", "W", "active power L2, signed"),
        _input(30017, "power_l3_w", "W", "active power L3, signed"),
        _input(30053, "power_w", "W", "total active power"),
        _input(30071, "frequency_hz", "Hz", "frequency"),
        # The meter counts kWh; Wh keeps every meter map in the controller's unit.
        _input(30073, "import_energy_wh", "Wh", "import active energy (document: kWh)", scale=1000.0),
        _input(30075, "export_energy_wh", "Wh", "export active energy (document: kWh)", scale=1000.0),
    ),
    behaviour=Behaviour(
        default_unit_id=1,
        port=None,
        # The meter rejects odd counts and more than 60 registers per request.
        max_registers_per_read=60,
        single_register_write=False,
        notes=(
            "RS485 RTU only (default node 1, 9600 baud, 8N1); Modbus TCP needs an RS485 gateway. "
            "FC04 for measurements, FC03/FC16 for configuration. Read an even number of registers, <= 60."
        ),
    ),
)
