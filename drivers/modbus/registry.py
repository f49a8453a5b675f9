"""The Modbus driver registry: driver name in the site file -> adapter, with per-driver validation.

A device type is added here (a map in ``maps/``, an adapter, one ``Driver`` entry); the controller
and its config schema do not change. ``check_devices`` reports every problem as a ``ConfigIssue``
with its path (``devices[2].connectors: ...``) for ``plaza-ems check-config``; ``build_devices``
turns a valid site file into ready-to-run devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.config import ConfigError, ConfigIssue, ConnectorConfig, DeviceConfig, SiteConfig, walk_tree
from drivers.modbus.alfen import AlfenDevice
from drivers.modbus.battery import SMA_WATCHDOG_S, BatterySpec, SmaBatteryDevice, SunSpecBatteryDevice
from drivers.modbus.chargers import CHARX_MAX_CONNECTORS, AbbTerraAcDevice, AlpitronicDevice, CharxDevice
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.io import IoModuleDevice
from drivers.modbus.maps import alpitronic_hyc, eastron_sdm630, janitza_umg604
from drivers.modbus.meters import MeterDevice
from drivers.modbus.pv import SunSpecPvDevice
from drivers.modbus.registers import Table

TIMEOUT_SHARE_OF_PERIOD = 0.4
OTHER_PROTOCOLS = frozenset({"ocpp201"})
"""Devices that connect to the controller rather than being polled: checked and run by their own driver."""


class DriverConfigError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class BuildContext:
    site: SiteConfig
    device: DeviceConfig
    endpoint: Endpoint

    def connectors(self) -> list[ConnectorConfig]:
        by_id = {c.id: c for item in walk_tree(self.site.tree) for c in item.node.connectors}
        return [by_id[c] for c in self.device.connectors]

    def option(self, name: str, default: float, low: float, high: float) -> float:
        value = self.device.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise DriverConfigError(f"options.{name}", f"must be a number in {low:g}..{high:g}")
        return float(value)

    def require(self, field: str, present: bool, what: str) -> None:
        if not present:
            raise DriverConfigError(field, f"driver '{self.device.driver}' needs {what}")

    def only(self, *fields: str) -> None:
        """Refuse site items this driver cannot serve (a meter id on a charger, say)."""
        served = {
            "meter": self.device.meter is not None,
            "connectors": bool(self.device.connectors),
            "battery": self.device.battery is not None,
            "pv": self.device.pv is not None,
            "contacts": bool(self.device.contacts),
            "dso_relays": self.device.dso_relays is not None,
        }
        for field, used in served.items():
            if used and field not in fields:
                raise DriverConfigError(field, f"driver '{self.device.driver}' does not serve {field}")


Factory = Callable[[BuildContext], ModbusDevice]


def _meter(register_map_name: str) -> Factory:
    maps = {"eastron_sdm630": eastron_sdm630.MAP, "janitza_umg604": janitza_umg604.MAP}

    def build(ctx: BuildContext) -> ModbusDevice:
        ctx.only("meter")
        ctx.require("meter", ctx.device.meter is not None, "the meter id it measures")
        assert ctx.device.meter is not None
        return MeterDevice(ctx.device.id, ctx.endpoint, maps[register_map_name], ctx.device.meter)

    return build


def _alfen(ctx: BuildContext) -> ModbusDevice:
    ctx.only("connectors")
    ctx.require("connectors", 1 <= len(ctx.device.connectors) <= 2, "one or two connectors (socket 1, socket 2)")
    validity_s = ctx.option("validity_s", 60.0, 1.0, 3600.0)
    safe_current_a = ctx.option("safe_current_a", 6.0, 0.0, 80.0) if "safe_current_a" in ctx.device.options else None
    connectors = _charger_connectors(ctx, "an Alfen NG9xx socket", "ac")
    return AlfenDevice(ctx.device.id, ctx.endpoint, connectors, validity_s=validity_s, safe_current_a=safe_current_a)


def _charger_connectors(ctx: BuildContext, device: str, kind: str) -> list[ConnectorConfig]:
    """The device's connectors, of the kind (AC/DC) it is; ``_check_traits`` checks the rest of their settings."""
    connectors = ctx.connectors()
    for conn in connectors:
        if conn.type != kind:
            raise DriverConfigError("connectors", f"'{conn.id}' is {conn.type.upper()}; {device} is {kind.upper()}")
    return connectors


def _abb(ctx: BuildContext) -> ModbusDevice:
    ctx.only("connectors")
    ctx.require("connectors", len(ctx.device.connectors) == 1, "exactly one connector (the wallbox has one outlet)")
    (conn,) = _charger_connectors(ctx, "an ABB Terra AC", "ac")
    return AbbTerraAcDevice(ctx.device.id, ctx.endpoint, conn)


def _charx(ctx: BuildContext) -> ModbusDevice:
    ctx.only("connectors")
    ctx.require(
        "connectors",
        1 <= len(ctx.device.connectors) <= CHARX_MAX_CONNECTORS,
        f"1..{CHARX_MAX_CONNECTORS} connectors (charging points 1, 2, ... of the CHARX group, in order)",
    )
    connectors = _charger_connectors(ctx, "a Phoenix CHARX", "ac")
    return CharxDevice(ctx.device.id, ctx.endpoint, connectors)


def _alpitronic(ctx: BuildContext) -> ModbusDevice:
    ctx.only("connectors")
    count = len(alpitronic_hyc.CONNECTORS)
    ctx.require("connectors", 1 <= len(ctx.device.connectors) <= count, f"1..{count} connectors (in station order)")
    connectors = _charger_connectors(ctx, "an Alpitronic hypercharger", "dc")
    pause_kw = alpitronic_hyc.PAUSE_POWER_W / 1000.0
    for conn in connectors:
        if conn.min_power_kw < pause_kw:
            # The station holds a paused session at the pause power: a smaller running setpoint cannot be kept.
            raise DriverConfigError(
                "connectors",
                f"'{conn.id}': min_power_kw {conn.min_power_kw:g} kW is below the {pause_kw:g} kW an Alpitronic "
                "needs to hold a session (0 W aborts it)",
            )
    fallback_power_w = None
    if "fallback_power_kw" in ctx.device.options:
        fallback_power_w = ctx.option("fallback_power_kw", 0.0, 0.0, 1000.0) * 1000.0
    return AlpitronicDevice(
        ctx.device.id,
        ctx.endpoint,
        connectors,
        voltage_v=ctx.site.site.nominal_voltage_v,
        fallback_power_w=fallback_power_w,
    )


def _io(ctx: BuildContext) -> ModbusDevice:
    ctx.only("contacts", "dso_relays")
    ctx.require("contacts", bool(ctx.device.contacts) or ctx.device.dso_relays is not None, "contacts or dso_relays")
    table_name = ctx.device.options.get("table", "discrete")
    tables = {"discrete": Table.DISCRETE, "coil": Table.COIL}
    if table_name not in tables:
        raise DriverConfigError("options.table", "must be 'discrete' or 'coil'")
    return IoModuleDevice(
        ctx.device.id, ctx.endpoint, contacts=ctx.device.contacts, dso=ctx.device.dso_relays, table=tables[table_name]
    )


def _fallback_time_s(ctx: BuildContext, name: str, default_s: float) -> float:
    """A device's own fallback time: the driver rewrites every third of it, after a cycle's output.

    It must span at least three scan periods, or the device would fall back between two cycles; the
    registers hold whole seconds (SunSpec RvrtTms is uint16).
    """
    period_s = ctx.site.scan.period_ms / 1000.0
    return ctx.option(name, default_s, max(3.0, 3.0 * period_s), 3600.0)


def _own_meter(ctx: BuildContext, item: str, item_meter: str | None) -> str | None:
    """The device may publish a meter only as the meter the site file gives the item it serves."""
    meter = ctx.device.meter
    if meter is not None and item_meter is None:
        raise DriverConfigError("meter", f"'{item}' has no meter in the site file; give it meter: {meter}")
    if meter is not None and meter != item_meter:
        raise DriverConfigError(
            "meter", f"'{item}' is measured by meter '{item_meter}' in the site file, not '{meter}'; name that one"
        )
    return meter


def _sunspec_pv(ctx: BuildContext) -> ModbusDevice:
    ctx.only("pv", "meter")
    ctx.require("pv", ctx.device.pv is not None, "the pv id of the inverter")
    pv = next((p for p in ctx.site.pv if p.id == ctx.device.pv), None)
    if pv is None:
        raise DriverConfigError("pv", f"no pv '{ctx.device.pv}' in the site file")
    revert_s = _fallback_time_s(ctx, "revert_s", 60.0)
    curtail = ctx.device.options.get("curtail", True)
    if not isinstance(curtail, bool):
        raise DriverConfigError("options.curtail", "must be true or false")
    meter = _own_meter(ctx, pv.id, pv.meter)
    return SunSpecPvDevice(ctx.device.id, ctx.endpoint, pv_id=pv.id, meter_id=meter, revert_s=revert_s, curtail=curtail)


def _sma_storage(ctx: BuildContext) -> ModbusDevice:
    ctx.only("battery")
    ctx.require("battery", ctx.device.battery is not None, "the battery id it controls")
    assert ctx.device.battery is not None
    watchdog_s = _fallback_time_s(ctx, "watchdog_s", SMA_WATCHDOG_S)
    return SmaBatteryDevice(ctx.device.id, ctx.endpoint, battery_id=ctx.device.battery, watchdog_s=watchdog_s)


def _sunspec_storage(ctx: BuildContext) -> ModbusDevice:
    ctx.only("battery", "meter")
    ctx.require("battery", ctx.device.battery is not None, "the battery id it controls")
    battery = next((b for b in ctx.site.batteries if b.id == ctx.device.battery), None)
    if battery is None:
        raise DriverConfigError("battery", f"no battery '{ctx.device.battery}' in the site file")
    revert_s = _fallback_time_s(ctx, "revert_s", 60.0)
    meter = _own_meter(ctx, battery.id, battery.meter)
    spec = BatterySpec(battery.id, battery.meter, battery.max_charge_kw * 1000.0)
    return SunSpecBatteryDevice(ctx.device.id, ctx.endpoint, battery=spec, meter_id=meter, revert_s=revert_s)


DRIVERS: dict[str, Factory] = {
    "eastron_sdm630": _meter("eastron_sdm630"),
    "janitza_umg604": _meter("janitza_umg604"),
    "alfen_ng9xx": _alfen,
    "digital_io": _io,
    "abb_terra_ac": _abb,
    "phoenix_charx": _charx,
    "alpitronic_hyc": _alpitronic,
    "sunspec_pv": _sunspec_pv,
    "sma_storage": _sma_storage,
    "sunspec_storage": _sunspec_storage,
}

OPTIONS: dict[str, frozenset[str]] = {
    "alfen_ng9xx": frozenset({"validity_s", "safe_current_a"}),
    "digital_io": frozenset({"table"}),
    "abb_terra_ac": frozenset({"comm_timeout_s"}),
    "alpitronic_hyc": frozenset({"fallback_power_kw", "fallback_after_s"}),
    # base_address and controls_model describe the inverter for the simulator; the driver discovers them.
    "sunspec_pv": frozenset({"revert_s", "curtail", "base_address", "controls_model"}),
    "sma_storage": frozenset({"watchdog_s"}),
    "sunspec_storage": frozenset({"revert_s"}),
}
"""Options each driver knows, including settings made on the device itself that the simulator models
(Alfen safe current, ABB communication timeout, Alpitronic fallback); a misspelt option is an error."""


def _context(site: SiteConfig, device: DeviceConfig) -> BuildContext:
    if device.timeout_ms is not None:
        timeout_s = device.timeout_ms / 1000.0
    else:
        timeout_s = site.scan.period_ms / 1000.0 * TIMEOUT_SHARE_OF_PERIOD
    return BuildContext(site, device, Endpoint(device.host, device.port, device.unit_id, timeout_s))


def _build_all(site: SiteConfig) -> tuple[list[ModbusDevice], list[ConfigIssue]]:
    devices: list[ModbusDevice] = []
    issues: list[ConfigIssue] = []
    for index, device in enumerate(site.devices):
        path = f"devices[{index}]"
        if device.driver in OTHER_PROTOCOLS:
            continue
        factory = DRIVERS.get(device.driver)
        if factory is None:
            known = ", ".join(sorted(DRIVERS.keys() | OTHER_PROTOCOLS))
            issues.append(ConfigIssue(f"{path}.driver", f"unknown driver '{device.driver}' (known: {known})"))
            continue
        unknown = sorted(set(device.options) - OPTIONS.get(device.driver, frozenset()))
        if unknown:
            known = ", ".join(sorted(OPTIONS.get(device.driver, ()))) or "none"
            issues.append(ConfigIssue(f"{path}.options.{unknown[0]}", f"unknown option (known: {known})"))
            continue
        try:
            built = factory(_context(site, device))
            issues += _check_traits(built, site, device, path)
            devices.append(built)
        except DriverConfigError as err:
            issues.append(ConfigIssue(f"{path}.{err.field}", err.message))
        except ValueError as err:
            issues.append(ConfigIssue(path, str(err)))
    return devices, issues


def _check_traits(device: ModbusDevice, site: SiteConfig, config: DeviceConfig, path: str) -> list[ConfigIssue]:
    """The connector settings the controller relies on must not contradict the charger's own behaviour."""
    by_id = {c.id: c for item in walk_tree(site.tree) for c in item.node.connectors}
    issues: list[ConfigIssue] = []
    for conn_id, traits in device.charger_traits().items():
        conn = by_id[conn_id]
        where = f"{path}.connectors[{config.connectors.index(conn_id)}]"
        if conn.zero_pauses and not traits.zero_pauses:
            issues.append(
                ConfigIssue(
                    where,
                    f"'{conn_id}': the charger aborts the session at 0 instead of pausing it; set zero_pauses: false",
                )
            )
        if conn.phase_switching and not traits.phase_switching:
            issues.append(
                ConfigIssue(where, f"'{conn_id}': the charger cannot switch phases; set phase_switching: false")
            )
        if traits.min_current_a is not None and conn.type == "ac" and conn.min_current_a < traits.min_current_a:
            issues.append(
                ConfigIssue(
                    where,
                    f"'{conn_id}': min_current_a {conn.min_current_a:g} A is below the charger's "
                    f"{traits.min_current_a:g} A",
                )
            )
        if traits.fallback_current_a is not None and conn.fallback_current_a < traits.fallback_current_a:
            issues.append(
                ConfigIssue(
                    where,
                    f"'{conn_id}': fallback_current_a {conn.fallback_current_a:g} A is below the "
                    f"{traits.fallback_current_a:g} A "
                    "the charger applies on its own; a silent charger would be underestimated",
                )
            )
    return issues


def check_devices(site: SiteConfig) -> list[ConfigIssue]:
    return _build_all(site)[1]


def build_devices(site: SiteConfig, source: str = "<site>") -> list[ModbusDevice]:
    devices, issues = _build_all(site)
    if issues:
        raise ConfigError(issues, source)
    return devices
