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
from drivers.modbus.device import Endpoint, ModbusDevice
from drivers.modbus.io import IoModuleDevice
from drivers.modbus.maps import eastron_sdm630, janitza_umg604
from drivers.modbus.meters import MeterDevice
from drivers.modbus.registers import Table

TIMEOUT_SHARE_OF_PERIOD = 0.4


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
    connectors = ctx.connectors()
    for conn in connectors:
        if conn.type != "ac":
            raise DriverConfigError("connectors", f"'{conn.id}' is DC; an Alfen NG9xx socket is AC")
    return AlfenDevice(ctx.device.id, ctx.endpoint, connectors, validity_s=validity_s)


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


DRIVERS: dict[str, Factory] = {
    "eastron_sdm630": _meter("eastron_sdm630"),
    "janitza_umg604": _meter("janitza_umg604"),
    "alfen_ng9xx": _alfen,
    "digital_io": _io,
}


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
        factory = DRIVERS.get(device.driver)
        if factory is None:
            known = ", ".join(sorted(DRIVERS))
            issues.append(ConfigIssue(f"{path}.driver", f"unknown driver '{device.driver}' (known: {known})"))
            continue
        try:
            built = factory(_context(site, device))
            issues += _check_traits(built, site, path)
            devices.append(built)
        except DriverConfigError as err:
            issues.append(ConfigIssue(f"{path}.{err.field}", err.message))
        except ValueError as err:
            issues.append(ConfigIssue(path, str(err)))
    return devices, issues


def _check_traits(device: ModbusDevice, site: SiteConfig, path: str) -> list[ConfigIssue]:
    """The connector settings the controller relies on must not contradict the charger's own behaviour."""
    by_id = {c.id: c for item in walk_tree(site.tree) for c in item.node.connectors}
    issues: list[ConfigIssue] = []
    for conn_id, traits in device.charger_traits().items():
        conn = by_id[conn_id]
        where = f"{path}.connectors ({conn_id})"
        if conn.zero_pauses and not traits.zero_pauses:
            issues.append(
                ConfigIssue(where, "this charger ends the session at 0 instead of pausing it: set zero_pauses: false")
            )
        if conn.phase_switching and not traits.phase_switching:
            issues.append(ConfigIssue(where, "this charger cannot switch phases: set phase_switching: false"))
        if traits.min_current_a is not None and conn.type == "ac" and conn.min_current_a < traits.min_current_a:
            issues.append(
                ConfigIssue(
                    where, f"min_current_a {conn.min_current_a:g} A is below the charger's {traits.min_current_a:g} A"
                )
            )
        if traits.fallback_current_a is not None and conn.fallback_current_a < traits.fallback_current_a:
            issues.append(
                ConfigIssue(
                    where,
                    f"fallback_current_a {conn.fallback_current_a:g} A is below the {traits.fallback_current_a:g} A "
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
