"""Site configuration: the YAML schema an installer writes, its loader and its validation.

One file describes one site (or one controller's subtree of it): the electrical tree of up to five
levels with per-phase limits, optional power limits and meters; every charge point and connector with
its phase rotation; priorities; battery, PV, building loads, fire panel, emergency stop and DSO inputs;
scan period and safety margins. ``load_config`` returns a validated ``SiteConfig`` or raises
``ConfigError`` whose messages name the offending field by path, e.g.
``tree.main.children[2].limit_a: must be > 0``. The reference for installers is ``docs/config.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_TREE_LEVELS = 5
IEC_61851_MIN_CURRENT_A = 6.0

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
PositiveA = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]

_PHASE_RE = re.compile(r"(L[123])+")


class _SiteLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 numbers: ``start: 17:00`` must stay the time 17:00.

    ``yaml.safe_load`` reads ``17:00`` as the integer 1020, which pydantic takes as 1020 s = 00:17 UTC.
    Int and float resolvers here only match scalars without a colon; all other number forms are unchanged.
    """


_SiteLoader.yaml_implicit_resolvers = {
    first: [
        (
            tag,
            re.compile(r"(?=[^:]*\Z)(?:" + regex.pattern + ")", regex.flags)
            if tag.endswith(("int", "float"))
            else regex,
        )
        for tag, regex in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteInfo(_Model):
    id: Id
    name: str = ""
    timezone: str = "Europe/Amsterdam"
    nominal_voltage_v: Annotated[float, Field(gt=100, le=480)] = 230.0


class ScanConfig(_Model):
    period_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    stale_after_ms: Annotated[int, Field(ge=100, le=600_000)] = 3000


class MarginConfig(_Model):
    """Headroom kept below every limit so measurement error and one cycle of drift never trip a fuse."""

    current_a: NonNegative = 1.0
    power_kw: NonNegative = 1.0


class ControlConfig(_Model):
    ramp_up_a_per_s: PositiveA = 4.0
    resume_margin_a: NonNegative = 1.0
    resume_delay_s: NonNegative = 60.0
    draw_headroom_a: NonNegative = 2.0
    probe_interval_s: PositiveA = 600.0
    urgent_laxity_s: NonNegative = 1800.0
    target_switch_s: NonNegative = 120.0
    """When intent changes source (cloud plan <-> local fallback), falling targets glide over this long."""
    overdraw_tolerance_a: NonNegative = 3.0
    """A charger drawing more than this above its setpoint (per phase) overdraws: its excess is reserved.

    3 A: a paused Alpitronic DC still delivers its 1547 W pause power, about 2.2 A per phase at 230 V.
    """


class ConnectorConfig(_Model):
    id: Id
    type: Literal["ac", "dc"] = "ac"
    phases: str = "L1L2L3"
    min_current_a: PositiveA = IEC_61851_MIN_CURRENT_A
    max_current_a: PositiveA = 32.0
    fallback_current_a: NonNegative = IEC_61851_MIN_CURRENT_A
    response_delay_s: NonNegative = 2.0
    zero_pauses: bool = True
    phase_switching: bool = False
    min_power_kw: NonNegative = 5.0
    max_power_kw: PositiveA | None = None


class NodeConfig(_Model):
    id: Id
    limit_a: PositiveA
    power_limit_kw: PositiveA | None = None
    meter: Id | None = None
    location: Id | None = None
    children: list[NodeConfig] = Field(default_factory=list)
    connectors: list[ConnectorConfig] = Field(default_factory=list)


class MeterConfig(_Model):
    id: Id


class LocationConfig(_Model):
    id: Id
    priority: Annotated[int, Field(ge=0, le=9)] = 1


class UserProfileConfig(_Model):
    id_token: Annotated[str, Field(min_length=1, max_length=36)]
    name: str = ""
    priority: Annotated[int, Field(ge=0, le=9)] = 1
    default_departure: time | None = None
    default_energy_kwh: NonNegative | None = None
    guaranteed_energy_kwh: NonNegative | None = None
    flexible: bool = False


class PriorityConfig(_Model):
    default: Annotated[int, Field(ge=0, le=9)] = 1
    locations: list[LocationConfig] = Field(default_factory=list)
    users: list[UserProfileConfig] = Field(default_factory=list)


class BatteryConfig(_Model):
    id: Id
    node: Id
    meter: Id | None = None
    capacity_kwh: PositiveA
    max_charge_kw: PositiveA
    max_discharge_kw: PositiveA
    soc_min_pct: Percent = 10.0
    soc_max_pct: Percent = 95.0
    response_delay_s: NonNegative = 5.0


class PvConfig(_Model):
    id: Id
    node: Id
    peak_kw: PositiveA
    meter: Id | None = None


class BuildingLoadConfig(_Model):
    id: Id
    node: Id
    meter: Id | None = None
    max_current_a: PositiveA | None = None


class ContactConfig(_Model):
    """A safety input wired as a normally-closed contact: open, broken wire or silent module = alarm."""

    id: Id


class DsoConfig(_Model):
    id: Id
    node: Id
    stages_pct: list[Percent] = Field(default_factory=lambda: [100.0, 60.0, 30.0, 0.0])
    fail_safe_pct: Percent = 0.0


class CapacityFrameConfig(_Model):
    node: Id
    start: time
    end: time
    limit_kw: NonNegative


class DsoRelayConfig(_Model):
    """Where the DSO's relays (K4 = 0 %, K3 = 30 %, K2 = 60 %) are wired on an I/O module."""

    zero_pct: Annotated[int, Field(ge=0, le=65535)]
    thirty_pct: Annotated[int, Field(ge=0, le=65535)]
    sixty_pct: Annotated[int, Field(ge=0, le=65535)]
    restricted_level: bool = False
    """The input level that means "relay active" (False: an open input restricts, as OpenEMS reads it)."""


class DeviceConfig(_Model):
    """A field device the drivers talk to: its driver, where it answers and which site items it serves.

    The controller never looks at ``driver`` or ``options``: the driver registry validates them, so a
    device type is added without touching this schema.
    """

    id: Id
    driver: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] | None = None
    """None: the driver's documented default."""
    timeout_ms: Annotated[int, Field(ge=10, le=10_000)] | None = None
    """Per-request timeout; None: 40 % of the scan period, so a silent device is dropped before the next cycle."""
    meter: Id | None = None
    connectors: list[Id] = Field(default_factory=list)
    """Connectors in the device's own order (socket 1, socket 2, ...)."""
    battery: Id | None = None
    pv: Id | None = None
    contacts: dict[Id, Annotated[int, Field(ge=0, le=65535)]] = Field(default_factory=dict)
    """Safety contacts (fire panel, emergency stop) by id, each with its input address."""
    dso_relays: DsoRelayConfig | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class OcppConfig(_Model):
    """The controller's OCPP 2.0.1 CSMS endpoint; stations are ``devices`` with driver ``ocpp201``."""

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9000
    security_profile: Literal[1, 2, 3] = 1
    """1: Basic auth over ws://; 2: TLS (wss://) + Basic auth; 3: TLS with station client certificates."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    """Profile 3: the CA that signed the stations' client certificates (their CN is the station id)."""
    unknown_id_tokens: Literal["accept", "reject"] = "reject"
    heartbeat_interval_s: Annotated[int, Field(ge=10, le=86_400)] = 60
    tx_updated_interval_s: Annotated[int, Field(ge=1, le=3600)] = 10
    """Meter values while charging (SampledDataCtrlr.TxUpdatedInterval set at boot)."""
    profile_deadband_a: NonNegative = 0.5
    """An increase smaller than this is not sent (decreases always are)."""
    profile_min_interval_s: NonNegative = 5.0
    """Increases to one station at most this often (decreases at once)."""
    call_timeout_s: PositiveA = 5.0
    tx_default_current_a: NonNegative = 0.0
    """TxDefaultProfile sent at boot: what a new transaction may draw before its first TxProfile (0: wait)."""
    verify_interval_s: NonNegative = 300.0
    """GetCompositeSchedule per station this often, to check what it applies (0: never)."""


class SiteConfig(_Model):
    site: SiteInfo
    scan: ScanConfig = ScanConfig()
    margins: MarginConfig = MarginConfig()
    control: ControlConfig = ControlConfig()
    tree: NodeConfig
    meters: list[MeterConfig] = Field(default_factory=list)
    priorities: PriorityConfig = PriorityConfig()
    batteries: list[BatteryConfig] = Field(default_factory=list)
    pv: list[PvConfig] = Field(default_factory=list)
    building_loads: list[BuildingLoadConfig] = Field(default_factory=list)
    fire_panel: ContactConfig | None = None
    emergency_stop: ContactConfig | None = None
    dso: DsoConfig | None = None
    capacity_frames: list[CapacityFrameConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    ocpp: OcppConfig | None = None
    mqtt: dict[str, Any] | None = None
    """The cloud link; checked by the MQTT driver (``drivers/mqtt/config.py``), which this layer does not import."""
    opcua: dict[str, Any] | None = None
    """The maintenance OPC UA server; checked by ``drivers/opcua/config.py``, which this layer does not import."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A site configuration that cannot be used; ``issues`` names every bad field by path."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "") -> None:
        self.issues = list(issues)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{head}invalid site configuration ({len(self.issues)} problem(s)):\n{lines}")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: SiteConfig
    warnings: tuple[ConfigIssue, ...]


def parse_phases(text: str) -> tuple[int, ...] | None:
    """Phase rotation ``"L2L3L1"`` -> grid phase index (0..2) feeding charger L1, L2, L3; None if invalid."""
    if not _PHASE_RE.fullmatch(text):
        return None
    phases = tuple(int(text[i + 1]) - 1 for i in range(0, len(text), 2))
    if len(phases) not in (1, 3) or len(set(phases)) != len(phases):
        return None
    return phases


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a site file; raises ConfigError (never a bare library exception)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([ConfigIssue("", f"cannot read file: {err.strerror or err}")], source) from err
    except UnicodeDecodeError as err:
        issue = ConfigIssue("", f"not a UTF-8 text file: {err.reason} at byte {err.start}")
        raise ConfigError([issue], source) from err
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> LoadedConfig:
    try:
        raw = yaml.load(text, Loader=_SiteLoader)
    except yaml.YAMLError as err:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {err}")], source) from err
    except RecursionError:
        raise ConfigError([ConfigIssue("", "not valid YAML: nested too deeply")], source) from None
    return validate_config(raw, source)


def validate_config(raw: object, source: str = "<data>") -> LoadedConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError([ConfigIssue("", "top level must be a mapping")], source)
    try:
        cycle = _find_cycle(raw.get("tree"), "tree", ())
    except RecursionError:
        cycle = ConfigIssue("tree", f"nested far too deeply; at most {MAX_TREE_LEVELS} levels allowed")
    if cycle is not None:
        raise ConfigError([cycle], source)
    try:
        config = SiteConfig.model_validate(raw)
    except ValidationError as err:
        issues = [ConfigIssue(_render_loc(raw, e["loc"]), error_message(e)) for e in err.errors()]
        raise ConfigError(issues, source) from None
    errors, warnings = _semantic_checks(config)
    if errors:
        raise ConfigError(errors, source)
    return LoadedConfig(config, tuple(warnings))


def _find_cycle(node: object, path: str, ancestors: tuple[int, ...]) -> ConfigIssue | None:
    """A YAML alias can make a node its own descendant; pydantic would recurse forever on it."""
    if not isinstance(node, Mapping):
        return None
    if id(node) in ancestors:
        return ConfigIssue(path, f"cycle in the tree: node '{node.get('id')}' is its own ancestor")
    children = node.get("children")
    if not isinstance(children, list):
        return None
    node_id = node.get("id")
    name = f"tree.{node_id}" if isinstance(node_id, str) and node_id else path
    for index, child in enumerate(children):
        found = _find_cycle(child, f"{name}.children[{index}]", (*ancestors, id(node)))
        if found is not None:
            return found
    return None


_MESSAGES = {
    "greater_than": "must be > {gt:g}",
    "greater_than_equal": "must be >= {ge:g}",
    "less_than": "must be < {lt:g}",
    "less_than_equal": "must be <= {le:g}",
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "string_pattern_mismatch": "must start with a letter or digit and contain only letters, digits and _.:-",
    "finite_number": "must be a finite number",
}


def error_message(error: Any) -> str:
    """A pydantic error in the words of the site-file reference (``must be > 0``, ``is required``)."""
    template = _MESSAGES.get(error["type"])
    ctx = error.get("ctx") or {}
    if template is not None:
        try:
            return template.format(**ctx)
        except KeyError:
            pass
    message = str(error["msg"])
    return message[0].lower() + message[1:] if message else error["type"]


def _render_loc(raw: Mapping[str, Any], loc: Sequence[int | str]) -> str:
    """Render a pydantic location with tree nodes named as ``tree.<parent id>.children[i]``."""
    if not loc or loc[0] != "tree":
        return _plain_path(loc)
    nodes: list[tuple[int, object]] = [(1, raw.get("tree"))]
    obj: object = raw.get("tree")
    i = 1
    while i < len(loc):
        key = loc[i]
        if key == "children" and i + 1 < len(loc) and isinstance(obj, Mapping):
            children = obj.get("children")
            index = loc[i + 1]
            obj = children[index] if isinstance(children, list) and isinstance(index, int) else None
            i += 2
            nodes.append((i, obj))
            continue
        break
    # The last node holds the bad field; name the path after the nearest *named* node above it.
    prefix_end, prefix = 1, "tree"
    for end, node in nodes[:-1]:
        node_id = node.get("id") if isinstance(node, Mapping) else None
        if isinstance(node_id, str) and node_id:
            prefix_end, prefix = end, f"tree.{node_id}"
    return prefix + _plain_path(loc[prefix_end:], leading_dot=True)


def _plain_path(loc: Sequence[int | str], leading_dot: bool = False) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if (out or leading_dot) else str(part)
    return out


@dataclass(frozen=True, slots=True)
class NodeWalk:
    node: NodeConfig
    path: str
    depth: int
    parent: NodeConfig | None


def walk_tree(root: NodeConfig) -> Iterator[NodeWalk]:
    """Depth-first walk yielding each node with its display path and depth (root = 1)."""
    stack: list[NodeWalk] = [NodeWalk(root, "tree", 1, None)]
    while stack:
        item = stack.pop()
        yield item
        name = f"tree.{item.node.id}"
        for index in range(len(item.node.children) - 1, -1, -1):
            child = item.node.children[index]
            stack.append(NodeWalk(child, f"{name}.children[{index}]", item.depth + 1, item.node))


def _semantic_checks(config: SiteConfig) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    seen: dict[str, str] = {}

    def claim(identifier: str, path: str) -> None:
        if identifier in seen:
            errors.append(ConfigIssue(path, f"duplicate id '{identifier}' (first used at {seen[identifier]})"))
        else:
            seen[identifier] = path

    meter_ids = {m.id for m in config.meters}
    for index, meter in enumerate(config.meters):
        claim(meter.id, f"meters[{index}].id")
    location_ids = {loc.id for loc in config.priorities.locations}
    node_ids: set[str] = set()
    used_meters: dict[str, str] = {}

    def use_meter(meter: str | None, path: str) -> None:
        if meter is None:
            return
        if meter not in meter_ids:
            errors.append(ConfigIssue(path, f"unknown meter '{meter}' (declare it under meters)"))
        elif meter in used_meters:
            errors.append(ConfigIssue(path, f"meter '{meter}' already measures {used_meters[meter]}"))
        else:
            used_meters[meter] = path

    for item in walk_tree(config.tree):
        node, path = item.node, item.path
        node_ids.add(node.id)
        claim(node.id, f"{path}.id")
        if item.depth > MAX_TREE_LEVELS:
            errors.append(
                ConfigIssue(path, f"node '{node.id}' is at level {item.depth}; at most {MAX_TREE_LEVELS} allowed")
            )
        if item.parent is not None and node.limit_a > item.parent.limit_a:
            warnings.append(
                ConfigIssue(
                    f"{path}.limit_a",
                    f"{node.limit_a:g} A is above its parent '{item.parent.id}' ({item.parent.limit_a:g} A); "
                    "the parent's limit still applies",
                )
            )
        use_meter(node.meter, f"{path}.meter")
        if node.location is not None and node.location not in location_ids:
            errors.append(ConfigIssue(f"{path}.location", f"unknown parking location '{node.location}'"))
        if node.children and node.connectors:
            errors.append(ConfigIssue(path, "a node has either children (a board) or connectors (a charge point)"))
        for c_index, conn in enumerate(node.connectors):
            cpath = f"{path}.connectors[{c_index}]"
            claim(conn.id, f"{cpath}.id")
            phases = parse_phases(conn.phases)
            if phases is None:
                errors.append(
                    ConfigIssue(
                        f"{cpath}.phases",
                        f"unknown phases '{conn.phases}': use a rotation like L1L2L3 / L2L3L1 or one phase L1/L2/L3",
                    )
                )
            elif conn.type == "dc" and len(phases) != 3:
                errors.append(ConfigIssue(f"{cpath}.phases", "a DC charger is fed by all three phases"))
            if conn.min_current_a > conn.max_current_a:
                errors.append(ConfigIssue(f"{cpath}.min_current_a", "must be <= max_current_a"))
            if conn.type == "ac" and conn.min_current_a < IEC_61851_MIN_CURRENT_A:
                errors.append(ConfigIssue(f"{cpath}.min_current_a", "IEC 61851 allows no AC current below 6 A"))
            if conn.type == "dc" and conn.max_power_kw is None:
                errors.append(ConfigIssue(f"{cpath}.max_power_kw", "is required for a DC connector"))
            if conn.type == "dc" and conn.max_power_kw is not None and conn.min_power_kw > conn.max_power_kw:
                errors.append(ConfigIssue(f"{cpath}.min_power_kw", "must be <= max_power_kw"))
            if conn.max_current_a > node.limit_a:
                warnings.append(
                    ConfigIssue(
                        f"{cpath}.max_current_a",
                        f"{conn.max_current_a:g} A is above its charge point's limit {node.limit_a:g} A",
                    )
                )

    def check_ref(node: str, path: str) -> None:
        if node not in node_ids:
            errors.append(ConfigIssue(path, f"unknown tree node '{node}'"))

    attached: list[tuple[str, Sequence[BatteryConfig | PvConfig | BuildingLoadConfig]]] = [
        ("batteries", config.batteries),
        ("pv", config.pv),
        ("building_loads", config.building_loads),
    ]
    for section, items in attached:
        for index, device in enumerate(items):
            claim(device.id, f"{section}[{index}].id")
            check_ref(device.node, f"{section}[{index}].node")
            use_meter(device.meter, f"{section}[{index}].meter")
    for index, battery in enumerate(config.batteries):
        if battery.soc_min_pct >= battery.soc_max_pct:
            errors.append(ConfigIssue(f"batteries[{index}].soc_min_pct", "must be < soc_max_pct"))
    for name, contact in (("fire_panel", config.fire_panel), ("emergency_stop", config.emergency_stop)):
        if contact is not None:
            claim(contact.id, f"{name}.id")
    if config.dso is not None:
        claim(config.dso.id, "dso.id")
        check_ref(config.dso.node, "dso.node")
        if not config.dso.stages_pct:
            errors.append(ConfigIssue("dso.stages_pct", "needs at least one stage"))
    for index, frame in enumerate(config.capacity_frames):
        check_ref(frame.node, f"capacity_frames[{index}].node")
        if frame.start == frame.end:
            errors.append(ConfigIssue(f"capacity_frames[{index}].end", "must differ from start"))
    _check_devices(config, seen, errors)
    if (
        config.ocpp is not None
        and config.ocpp.security_profile >= 2
        and not (config.ocpp.tls_cert and config.ocpp.tls_key)
    ):
        errors.append(ConfigIssue("ocpp.tls_cert", "security profiles 2 and 3 need tls_cert and tls_key"))
    if config.ocpp is not None and config.ocpp.security_profile == 3 and not config.ocpp.tls_ca:
        errors.append(
            ConfigIssue("ocpp.tls_ca", "security profile 3 needs tls_ca to verify the stations' certificates")
        )
    tokens: dict[str, int] = {}
    for index, user in enumerate(config.priorities.users):
        if user.id_token in tokens:
            errors.append(
                ConfigIssue(
                    f"priorities.users[{index}].id_token",
                    f"duplicate id_token (first at priorities.users[{tokens[user.id_token]}])",
                )
            )
        tokens.setdefault(user.id_token, index)
    locs: set[str] = set()
    for index, loc in enumerate(config.priorities.locations):
        if loc.id in locs:
            errors.append(ConfigIssue(f"priorities.locations[{index}].id", f"duplicate location '{loc.id}'"))
        locs.add(loc.id)
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(config.site.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        errors.append(ConfigIssue("site.timezone", f"unknown time zone '{config.site.timezone}'"))
    return errors, warnings


def _check_devices(config: SiteConfig, ids: Mapping[str, str], errors: list[ConfigIssue]) -> None:
    """Every item a device serves exists, has the right kind, and is served by one device only."""
    kinds: dict[str, str] = {}
    for item in walk_tree(config.tree):
        for conn in item.node.connectors:
            kinds[conn.id] = "connector"
    kinds |= {m.id: "meter" for m in config.meters}
    kinds |= {b.id: "battery" for b in config.batteries}
    kinds |= {p.id: "pv" for p in config.pv}
    kinds |= {c.id: "contact" for c in (config.fire_panel, config.emergency_stop) if c is not None}
    if config.dso is not None:
        kinds[config.dso.id] = "dso"
    served: dict[str, str] = {}
    device_ids: set[str] = set()

    def serve(item: str, kind: str, path: str) -> None:
        if kinds.get(item) != kind:
            errors.append(ConfigIssue(path, f"unknown {kind} '{item}'"))
        elif item in served:
            errors.append(ConfigIssue(path, f"{kind} '{item}' is already served by {served[item]}"))
        else:
            served[item] = path

    for index, device in enumerate(config.devices):
        path = f"devices[{index}]"
        if device.id in ids or device.id in device_ids:
            errors.append(ConfigIssue(f"{path}.id", f"duplicate id '{device.id}'"))
        device_ids.add(device.id)
        for field, kind in (("meter", "meter"), ("battery", "battery"), ("pv", "pv")):
            item = getattr(device, field)
            if item is not None:
                serve(item, kind, f"{path}.{field}")
        for c_index, connector_id in enumerate(device.connectors):
            serve(connector_id, "connector", f"{path}.connectors[{c_index}]")
        for contact in device.contacts:
            serve(contact, "contact", f"{path}.contacts.{contact}")
        if device.dso_relays is not None:
            if config.dso is None:
                errors.append(ConfigIssue(f"{path}.dso_relays", "the site has no dso section"))
            else:
                serve(config.dso.id, "dso", f"{path}.dso_relays")
