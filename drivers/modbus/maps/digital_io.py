"""Potential-free contacts read through a Modbus I/O module: the fire-panel contact and DSO relays.

Sources (register-maps.md §6): ripple-control relays K1-K4 = 100 / 60 / 30 / 0 % (EEG §9); OpenEMS
io.openems.edge.controller.ess.ripplecontrolreceiver (Config.java, EssRestrictionLevel.java) reads
three inputs (0 %, 30 %, 60 %) with priority 0 > 30 > 60; evcc templates/definition/hems/fnn-gpio.yaml
and hems/fnn/fnn.go (FNN control box: W3 = 0 %, S2 = 30 %, S1 = 60 %); I/O modules as in OpenEMS
io.openems.edge.io.wago / .kmtronic. Fire interlock wiring: SMA Storage XL, "contact closed = normal,
contact open = emergency" (https://manuals.sma.de/SMA%20Storage%20XL%20Package/en-US/16897159691.html).

The module's own document gives the coil / discrete-input numbers; the site configuration supplies
them, so these maps are built by factories rather than fixed.

DSO stage from the relays (``dso_stage_pct``): K1 (100 %) needs no input, it is what remains when no
other relay is active. The first *active* input in the order 0 %, 30 %, 60 % decides. An input reads
active when it equals ``restricted_level``, False by default: OpenEMS treats input = FALSE as
restricted ("0/1 is reversed on relays board"), which also makes a broken wire restrict. One
deliberate difference: OpenEMS takes a *missing* value as unrestricted, so losing the I/O module lifts
the restriction; here a missing input that could decide the stage gives None, and the controller
then applies the configured fail-safe stage (``DsoConfig.fail_safe_pct``).

Fire panel: a second, normally-closed contact of the panel (the panel also trips the charger
feeders directly). 1 = closed = normal; 0 (alarm or broken wire) and no reading at all are both
ALARM — ``controller.interlocks.contact_alarm`` judges the reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.registers import Behaviour, DataType, Register, RegisterMap, Table

SOURCE = (
    "register-maps.md §6: OpenEMS io.openems.edge.controller.ess.ripplecontrolreceiver (Config.java, "
    "EssRestrictionLevel.java); evcc templates/definition/hems/fnn-gpio.yaml, hems/fnn/fnn.go; "
    "OpenEMS io.openems.edge.io.wago / .kmtronic; SMA Storage XL manual (contact closed = normal)"
)

FIRE_CONTACT = "fire_contact_closed"
DSO_RELAY_0_PCT = "dso_relay_0_pct"
DSO_RELAY_30_PCT = "dso_relay_30_pct"
DSO_RELAY_60_PCT = "dso_relay_60_pct"


@dataclass(frozen=True, slots=True, kw_only=True)
class IoPoint:
    """One contact on the I/O module."""

    name: str
    address: int
    """PDU of the coil or discrete input, from the module's documentation."""
    meaning: str


def io_module_map(
    *,
    device: str,
    points: Sequence[IoPoint],
    unit_id: int,
    table: Table = Table.DISCRETE,
    port: int | None = 502,
) -> RegisterMap:
    """A read-only map of contacts on one I/O module (discrete inputs, or coils where it mirrors them)."""
    if not table.bits:
        raise ValueError(f"{device}: contacts live in COIL or DISCRETE, not {table.name}")
    return RegisterMap(
        device=device,
        source=SOURCE,
        registers=tuple(
            Register(
                name=point.name,
                pdu=point.address,
                doc_address=str(point.address),
                table=table,
                type=DataType.BIT,
                meaning=point.meaning,
            )
            for point in points
        ),
        behaviour=Behaviour(default_unit_id=unit_id, port=port),
    )


def fire_panel_map(*, address: int, unit_id: int, table: Table = Table.DISCRETE, port: int | None = 502) -> RegisterMap:
    """The fire panel's normally-closed contact."""
    point = IoPoint(
        name=FIRE_CONTACT,
        address=address,
        meaning="fire panel NC contact: 1 = closed = normal; 0, a broken wire or no reading = ALARM",
    )
    return io_module_map(device="fire panel contact", points=(point,), unit_id=unit_id, table=table, port=port)


def dso_relay_map(
    *,
    zero_pct: int,
    thirty_pct: int,
    sixty_pct: int,
    unit_id: int,
    table: Table = Table.DISCRETE,
    port: int | None = 502,
) -> RegisterMap:
    """The three DSO relay inputs (K4 = 0 %, K3 = 30 %, K2 = 60 %) at the given addresses."""
    points = (
        IoPoint(name=DSO_RELAY_0_PCT, address=zero_pct, meaning="DSO relay K4 / FNN W3: 0 % feed-in"),
        IoPoint(name=DSO_RELAY_30_PCT, address=thirty_pct, meaning="DSO relay K3 / FNN S2: 30 % feed-in"),
        IoPoint(name=DSO_RELAY_60_PCT, address=sixty_pct, meaning="DSO relay K2 / FNN S1: 60 % feed-in"),
    )
    return io_module_map(device="DSO relay inputs", points=points, unit_id=unit_id, table=table, port=port)


def dso_stage_pct(
    *,
    zero_pct: bool | None,
    thirty_pct: bool | None,
    sixty_pct: bool | None,
    restricted_level: bool = False,
) -> float | None:
    """The stage the relays command (0, 30, 60 or 100 %), or None when a missing input could decide it."""
    for reading, stage_pct in ((zero_pct, 0.0), (thirty_pct, 30.0), (sixty_pct, 60.0)):
        if reading is None:
            return None
        if reading == restricted_level:
            return stage_pct
    return 100.0
