"""ABB Terra AC wallbox (firmware >= 1.6.5, RTU or TCP): every value a UINT32, read FC03, write FC16.

Source: evcc charger/abb.go and templates/definition/charger/abb.yaml (evcc-io/evcc snapshot
b29b49e). Vendor document: ABB_Terra_AC_Charger_ModbusCommunication_v1.7.pdf.

Cautions: avoid the start/stop register 0x4105, it clears the authorisation (peufeu2/GrugBus
grugbus/devices/EVSE_ABB_Terra.md); the configurable comm-timeout stops charging if the charger is
not polled. One community client writes the mA setpoint into the *high* word; this map follows
evcc's abb.go (big-endian, high word first) — verify on your firmware.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.modbus.registers import Access, Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "evcc charger/abb.go and templates/definition/charger/abb.yaml; "
    "vendor document ABB_Terra_AC_Charger_ModbusCommunication_v1.7.pdf"
)

STATE_LETTERS: Mapping[int, str] = MappingProxyType({0: "A", 1: "B1", 2: "B2", 3: "C1", 4: "C2", 5: "other"})
"""State codes of ``state_raw``; "other" is a stopped session (evcc: EV still plugged in when
``socket_lock_state_raw`` >= 0x0101)."""


def abb_state_letter(raw: int) -> str:
    """The IEC 61851 state of the charging-state register 0x400C from its decoded UINT32.

    The rule is "byte 2 & 0x7F". evcc's abb.go reads the two registers as four bytes in frame
    order — b0 b1 from 0x400C, b2 b3 from 0x400D — and takes ``b[2] & 0x7f``: byte 2 counts from 0
    in frame order, so it is the high byte of the second register, bits 8..15 of the big-endian
    UINT32 (not bits 16..23, which "byte 2 from the least significant end" would mean).
    """
    if not 0 <= raw <= 0xFFFF_FFFF:
        raise ValueError(f"ABB Terra AC state {raw!r} is not a UINT32")
    code = (raw >> 8) & 0x7F
    try:
        return STATE_LETTERS[code]
    except KeyError:
        raise ValueError(f"ABB Terra AC state code {code} (raw 0x{raw:08X}) is not documented") from None


def _u32(
    pdu: int, name: str, meaning: str, *, unit: str = "", scale: float = 1.0, access: Access = Access.R
) -> Register:
    return Register(
        name=name,
        pdu=pdu,
        doc_address=f"0x{pdu:04X}",
        table=Table.HOLDING,
        type=DataType.U32,
        unit=unit,
        scale=scale,
        access=access,
        meaning=meaning,
    )


MAP = RegisterMap(
    device="ABB Terra AC",
    source=SOURCE,
    registers=(
        # From abb.go (the source cited above): resolves the "other" state into plugged in or not.
        _u32(0x400A, "socket_lock_state_raw", "socket lock state; >= 0x0101 means an EV is plugged in"),
        _u32(0x400C, "state_raw", "charging state: decode with abb_state_letter"),
        _u32(0x400E, "applied_current_limit_a", "current limit in force", unit="A", scale=0.001),
        _u32(0x4010, "current_l1_a", "charging current L1", unit="A", scale=0.001),
        _u32(0x4012, "current_l2_a", "charging current L2", unit="A", scale=0.001),
        _u32(0x4014, "current_l3_a", "charging current L3", unit="A", scale=0.001),
        _u32(0x4016, "voltage_l1_v", "voltage L1", unit="V", scale=0.1),
        _u32(0x4018, "voltage_l2_v", "voltage L2", unit="V", scale=0.1),
        _u32(0x401A, "voltage_l3_v", "voltage L3", unit="V", scale=0.1),
        _u32(0x401C, "power_w", "active power", unit="W"),
        _u32(0x401E, "session_energy_wh", "energy delivered in the charging session", unit="Wh"),
        _u32(
            0x4100,
            "current_limit_setpoint_a",
            "set charging current limit (mA on the wire; below 6 A pauses)",
            unit="A",
            scale=0.001,
            access=Access.W,
        ),
    ),
    behaviour=Behaviour(
        default_unit_id=1,
        port=502,
        single_register_write=False,
        min_current_a=6.0,
        zero_pauses=True,
        notes=(
            "Write-only setpoint 0x4100: do not read it. Never write 0x4105 (start/stop), it clears the "
            "authorisation. The configurable comm-timeout stops charging if the charger is not polled "
            "(evcc polls the state every 30 s as a keep-alive). Phase switching (0x4102) is not supported."
        ),
    ),
)
