"""Alpitronic hypercharger (DC) over its documented Modbus TCP interface.

Sources: evcc charger/alpitronic.go ("complete register map as documented by the vendor", evcc-io/evcc
snapshot b29b49e); OpenEMS io.openems.edge.evse.chargepoint.alpitronic/ (firmware >= 1.7.2,
OpenEMS/openems snapshot 0e4ea88).

Unit ID 1. Connector base = 100 × connector (1-4); block 0 is the station. Measurements are FC04
input registers at an offset from the base; the power limit is a holding register (FC03/FC16) at
base + 0, so input and holding both start at the base without overlapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.modbus.registers import Access, Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "evcc charger/alpitronic.go (complete register map as documented by the vendor); "
    "OpenEMS io.openems.edge.evse.chargepoint.alpitronic/ (firmware >= 1.7.2)"
)

BLOCK_STRIDE = 100
CONNECTORS = range(1, 5)

PAUSE_POWER_W = 1547.0
"""What evcc writes to pause: 0 W would abort the session and make the connector unavailable."""

STATES: Mapping[int, str] = MappingProxyType(
    {
        0: "Available",
        1: "waiting for authorisation",  # alpitronic.go StatusReason
        2: "Preparing-EV",
        3: "Charging",
        4: "Suspended EV",
        5: "Suspended EVSE",
        6: "disconnect required",  # alpitronic.go StatusReason
        8: "Unavailable",
        10: "Faulted",
    }
)
"""Meaning of ``state_code`` (input register base + 0)."""

_BEHAVIOUR = Behaviour(
    default_unit_id=1,
    port=502,
    single_register_write=False,
    zero_pauses=False,
    pause_power_w=PAUSE_POWER_W,
    notes=(
        "0 W aborts the session and makes the connector unavailable: pause with pause_power_w instead. "
        "The station falls back to its own limit if it is not polled (no figure documented)."
    ),
)


def _max_power(base: int, name: str, meaning: str, unit: str) -> Register:
    return Register(
        name=name,
        pdu=base,
        doc_address="base+0",
        table=Table.HOLDING,
        type=DataType.U32,
        unit=unit,
        access=Access.RW,
        meaning=meaning,
    )


def alpitronic_map(connector: int) -> RegisterMap:
    """The registers of connector 1-4."""
    if connector not in CONNECTORS:
        raise ValueError(f"Alpitronic connectors are 1-4, not {connector}")
    base = BLOCK_STRIDE * connector

    def measured(
        offset: int, name: str, data_type: DataType, meaning: str, unit: str = "", scale: float = 1.0
    ) -> Register:
        return Register(
            name=name,
            pdu=base + offset,
            doc_address=f"base+{offset}",
            table=Table.INPUT,
            type=data_type,
            unit=unit,
            scale=scale,
            meaning=meaning,
        )

    return RegisterMap(
        device=f"Alpitronic hypercharger connector {connector}",
        source=SOURCE,
        registers=(
            measured(0, "state_code", DataType.U16, "connector state, see STATES"),
            measured(1, "dc_voltage_v", DataType.U32, "DC voltage (0.01 V on the wire)", "V", 0.01),
            measured(3, "dc_current_a", DataType.U16, "DC current (0.01 A on the wire)", "A", 0.01),
            measured(4, "power_w", DataType.U32, "charging power", "W"),
            measured(8, "ev_soc_pct", DataType.U16, "EV state of charge (0.01 % on the wire)", "%", 0.01),
            measured(10, "ev_max_power_w", DataType.U32, "EV maximum power", "W"),
            measured(12, "ev_min_power_w", DataType.U32, "EV minimum power", "W"),
            measured(32, "total_energy_wh", DataType.I64, "total energy", "Wh"),
            _max_power(base, "max_power_w", "connector max power; 0 aborts the session", "W"),
        ),
        behaviour=_BEHAVIOUR,
    )


STATION_MAP = RegisterMap(
    device="Alpitronic hypercharger station",
    source=SOURCE,
    registers=(_max_power(0, "max_power_va", "station power limit", "VA"),),
    behaviour=_BEHAVIOUR,
)
