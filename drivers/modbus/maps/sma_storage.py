"""SMA Sunny Island / Sunny Boy Storage battery inverters over "SMA Modbus" (not SunSpec).

Sources: OpenEMS/openems io.openems.edge.sma/doc/SMA_Modbus-TI-en-15.pdf and SMA_Modbus-TI-en-28.xlsx
(snapshot 0e4ea88); OpenEMS …/sma/ess/sunnyisland/EssSmaSunnyIslandImpl.java; evcc
templates/definition/meter/sma-sbs-modbus.yaml (evcc-io/evcc snapshot b29b49e).

Chosen over the Victron GX section of register-maps.md because only this one documents how the
device behaves when the EMS stops: the setpoint pair must be written together and refreshed, with a
60 s watchdog in evcc. Unit ID 3 (configurable 3-123); FC03/FC04 read (the map uses FC03, as
OpenEMS does), FC16 write. Addresses are PDU. NaN markers: S32 0x80000000, U32 0xFFFFFFFF.
The types of 40236/40795/40799 (U32) come from the evcc template.
"""

from __future__ import annotations

from drivers.modbus.registers import Access, Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "SMA Modbus: OpenEMS io.openems.edge.sma/doc/SMA_Modbus-TI-en-15.pdf and SMA_Modbus-TI-en-28.xlsx; "
    "OpenEMS …/sma/ess/sunnyisland/EssSmaSunnyIslandImpl.java; evcc templates/definition/meter/sma-sbs-modbus.yaml"
)

EXTERNAL_CONTROL_ACTIVE = 802
EXTERNAL_CONTROL_INACTIVE = 803
BMS_MODE_CHARGE = 2289
BMS_MODE_DISCHARGE = 2290
BMS_MODE_DEFAULT = 2424

_NAN = {DataType.I32: 0x8000_0000, DataType.U32: 0xFFFF_FFFF}


def _reg(
    pdu: int, name: str, data_type: DataType, meaning: str, *, unit: str = "", access: Access = Access.R
) -> Register:
    return Register(
        name=name,
        pdu=pdu,
        doc_address=str(pdu),
        table=Table.HOLDING,
        type=data_type,
        unit=unit,
        access=access,
        not_implemented=_NAN[data_type],
        meaning=meaning,
    )


MAP = RegisterMap(
    device="SMA Sunny Island / Sunny Boy Storage",
    source=SOURCE,
    registers=(
        _reg(30775, "ac_power_w", DataType.I32, "AC active power", unit="W"),
        _reg(30845, "soc_pct", DataType.U32, "battery state of charge", unit="%"),
        _reg(
            40149, "power_setpoint_w", DataType.I32, "active power setpoint, + = discharge", unit="W", access=Access.W
        ),
        _reg(40151, "external_control", DataType.U32, "802 = active, 803 = inactive", access=Access.W),
        _reg(40236, "bms_mode", DataType.U32, "2289 charge, 2290 discharge, 2424 default", access=Access.W),
        _reg(40795, "max_charge_power_w", DataType.U32, "max battery charge power", unit="W", access=Access.W),
        _reg(40799, "max_discharge_power_w", DataType.U32, "max battery discharge power", unit="W", access=Access.W),
    ),
    behaviour=Behaviour(
        default_unit_id=3,
        port=502,
        single_register_write=False,
        # evcc's watchdog period; SMA's own fallback time is not given in the cited documents.
        watchdog_s=60.0,
        notes=(
            "Write power_setpoint_w (40149) and external_control (40151) together in one FC16 request "
            "(4 registers from 40149) and refresh them periodically."
        ),
    ),
)
