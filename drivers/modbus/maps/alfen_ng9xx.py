"""Alfen NG9xx charger as a Modbus TCP slave ("Active load balancing"): socket and station maps.

Source: Alfen, Implementation of Modbus Slave TCP/IP for Alfen NG9xx platform v2.3, 2020-10-30
(https://scribd.com/document/671435764/Implementation-of-Modbus-Slave-TCPIP-for-Alfen-NG9xx-Platform).
Cross-checked with evcc charger/alfen.go and templates/definition/charger/alfen.yaml (evcc-io/evcc
snapshot b29b49e).

Setup on the charger: the "Active load balancing" licence; in the Service Installer Data source =
Energy Management System; under "TCP/IP EMS" Mode = Socket or SCN and the Validity time; the safe
current configured first. Socket registers answer on unit 1 / 2 (socket 1 / 2), station registers on
unit 200. Addresses are PDU; FC03 read, FC06/FC16 write.
"""

from __future__ import annotations

from dataclasses import replace

from drivers.modbus.registers import Access, Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "Alfen, Implementation of Modbus Slave TCP/IP for Alfen NG9xx platform v2.3, 2020-10-30 "
    "(https://scribd.com/document/671435764/Implementation-of-Modbus-Slave-TCPIP-for-Alfen-NG9xx-Platform); "
    "cross-checked with evcc charger/alfen.go and templates/definition/charger/alfen.yaml"
)

STATION_UNIT_ID = 200
SOCKET_UNIT_IDS = (1, 2)

MODE3_STATES = ("A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")
"""Values of ``mode3_state`` (IEC 61851-1 control-pilot states)."""


def _reg(
    pdu: int,
    name: str,
    data_type: DataType,
    meaning: str,
    *,
    unit: str = "",
    access: Access = Access.R,
    count: int = 0,
    unit_id: int | None = None,
) -> Register:
    return Register(
        name=name,
        pdu=pdu,
        doc_address=str(pdu),
        table=Table.HOLDING,
        type=data_type,
        count=count,
        unit=unit,
        access=access,
        unit_id=unit_id,
        meaning=meaning,
    )


_F32 = DataType.F32

SOCKET_BEHAVIOUR = Behaviour(
    default_unit_id=SOCKET_UNIT_IDS[0],
    port=502,
    # IEC 61851-1's lowest PWM current; the Alfen document gives no minimum of its own.
    min_current_a=6.0,
    zero_pauses=True,
    phase_switching=True,
    # The factory Validity time; it is configurable (evcc suggests 300 s), so use the site's value.
    watchdog_s=60.0,
    notes=(
        "Rewrite 1210 more often than the validity time, otherwise the socket falls back to the safe current; "
        "the setpoint is also lost on reboot. Writing 0 A pauses charging. Multi-register values must be "
        "written in one FC16 request. At most 2 masters; idle connections drop after 60 s."
    ),
)

SOCKET_MAP = RegisterMap(
    device="Alfen NG9xx socket",
    source=SOURCE,
    registers=(
        _reg(306, "voltage_l1_v", _F32, "voltage L1", unit="V"),
        _reg(308, "voltage_l2_v", _F32, "voltage L2", unit="V"),
        _reg(310, "voltage_l3_v", _F32, "voltage L3", unit="V"),
        _reg(320, "current_l1_a", _F32, "current L1", unit="A"),
        _reg(322, "current_l2_a", _F32, "current L2", unit="A"),
        _reg(324, "current_l3_a", _F32, "current L3", unit="A"),
        _reg(338, "power_l1_w", _F32, "active power L1", unit="W"),
        _reg(340, "power_l2_w", _F32, "active power L2", unit="W"),
        _reg(342, "power_l3_w", _F32, "active power L3", unit="W"),
        _reg(344, "power_w", _F32, "active power sum", unit="W"),
        _reg(374, "energy_delivered_wh", DataType.F64, "energy delivered", unit="Wh"),
        _reg(1200, "availability", DataType.U16, "1 = operative, 0 = inoperative"),
        _reg(1201, "mode3_state", DataType.STRING, "Mode 3 state: A, B1, B2, C1, C2, D1, D2, E, F", count=5),
        _reg(1206, "applied_max_current_a", _F32, "max current applied to the socket", unit="A"),
        _reg(1208, "validity_remaining_s", DataType.U32, "remaining validity time of the setpoint", unit="s"),
        _reg(1210, "max_current_setpoint_a", _F32, "max-current setpoint (0 pauses)", unit="A", access=Access.RW),
        _reg(1212, "safe_current_a", _F32, "safe current, applied when the setpoint expires", unit="A"),
        _reg(1214, "setpoint_in_use", DataType.U16, "1 = the setpoint is in use, 0 = not"),
        _reg(1215, "phases", DataType.U16, "charging phases, 1 or 3", access=Access.RW),
    ),
    behaviour=SOCKET_BEHAVIOUR,
)


def socket_map(socket: int) -> RegisterMap:
    """The map of socket 1 or 2: the same registers, addressed with the socket's unit id."""
    if socket not in SOCKET_UNIT_IDS:
        raise ValueError(f"Alfen NG9xx has sockets {SOCKET_UNIT_IDS}, not {socket}")
    return replace(
        SOCKET_MAP,
        device=f"Alfen NG9xx socket {socket}",
        behaviour=replace(SOCKET_BEHAVIOUR, default_unit_id=socket),
    )


STATION_MAP = RegisterMap(
    device="Alfen NG9xx station",
    source=SOURCE,
    registers=(
        _reg(1100, "active_max_current_a", _F32, "station active max current", unit="A", unit_id=STATION_UNIT_ID),
        _reg(1105, "socket_count", DataType.U16, "number of sockets", unit_id=STATION_UNIT_ID),
        *(
            _reg(
                pdu,
                f"scn_max_current_l{phase}_a",
                _F32,
                f"SCN max current L{phase}",
                unit="A",
                access=Access.RW,
                unit_id=STATION_UNIT_ID,
            )
            for phase, pdu in ((1, 1417), (2, 1419), (3, 1421))
        ),
    ),
    behaviour=Behaviour(
        default_unit_id=STATION_UNIT_ID,
        port=502,
        notes="Station-wide values on unit 200; the SCN per-phase limits apply in SCN mode.",
    ),
)
