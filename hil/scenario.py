"""Scenario files: a site, the plant's behaviour, EV arrivals and a timeline of events, for ``plaza-ems sim``.

A scenario names its site file (or embeds it), the simulated period, where building load, PV and prices
come from (the committed real-data excerpts, replayed from a chosen date), the EVs (listed, or drawn from
a day of ACN sessions) and events such as a fire alarm, a silent meter or a load spike. The format is
documented in ``docs/scenarios.md``. Loading checks every id against the site and reports errors by path.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.config import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    SiteConfig,
    error_message,
    parse_config,
    validate_config,
    walk_tree,
)
from hil import data
from hil.plant import ChargerBehaviour, EvSpec

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveF = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileConfig(_Model):
    """A power profile: constant, or a committed dataset scaled and replayed from a date."""

    constant_kw: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    dataset: Literal["site_load", "pv"] | None = None
    peak_kw: PositiveF | None = None
    replay_from: datetime | None = None


class ChargerBehaviourConfig(_Model):
    response_delay_s: Seconds | None = None
    watchdog_s: PositiveF = 60.0
    never_below_a: Annotated[float, Field(ge=0, le=80)] = 0.0


class EvConfig(_Model):
    connector: str
    arrive_s: Seconds
    depart_s: Seconds
    energy_kwh: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    capacity_kwh: PositiveF = 60.0
    soc_pct: Annotated[float, Field(ge=0, le=100)] = 20.0
    max_current_a: PositiveF = 32.0
    phases: Literal[1, 3] = 3
    max_dc_power_kw: PositiveF = 150.0
    id_token: str | None = None
    tell_departure: bool = True


class AcnConfig(_Model):
    day: date
    connectors: list[str] | Literal["all"] = "all"
    seed: int = 1
    max_sessions: Annotated[int, Field(gt=0)] | None = None


class EvsConfig(_Model):
    sessions: list[EvConfig] = Field(default_factory=list)
    acn: AcnConfig | None = None


class _Event(_Model):
    at_s: Seconds


class FireAlarm(_Event):
    type: Literal["fire_alarm", "fire_clear", "estop", "estop_clear"]


class ResetLatch(_Event):
    type: Literal["reset_latch"]
    latch: Literal["fire", "emergency_stop"]
    operator: Annotated[str, Field(min_length=1)]


class LoadSpike(_Event):
    type: Literal["load_spike"]
    load: str
    extra_kw: Annotated[float, Field(allow_inf_nan=False)]
    duration_s: PositiveF


class MeterFault(_Event):
    type: Literal["meter_silent", "meter_nan"]
    meter: str
    duration_s: PositiveF


class IoSilent(_Event):
    type: Literal["io_silent"]
    contact: str
    duration_s: PositiveF


class ChargerSilent(_Event):
    type: Literal["charger_silent"]
    connector: str
    duration_s: PositiveF


class DeviceFault(_Event):
    """A fault of one Modbus device of the site's ``devices`` (HIL only; ``plaza-ems sim`` has no wire)."""

    type: Literal["device_fault"]
    device: str
    fault: Literal["silent", "exception", "slow", "garbage", "drop"]
    duration_s: PositiveF
    exception_code: Annotated[int, Field(ge=1, le=255)] = 4
    delay_ms: Annotated[int, Field(ge=0, le=60_000)] = 0


OcppFaultKind = Literal[
    "offline",
    "unresponsive",
    "overdraw",
    "malformed_json",
    "wrong_message_type",
    "unknown_action",
    "schema_invalid",
    "duplicate_seq_no",
    "out_of_order_seq_no",
]


class OcppFault(_Event):
    """A fault of one simulated OCPP station (HIL only; ``plaza-ems sim`` plays ``offline`` as a silent charger).

    ``offline``, ``unresponsive`` and ``overdraw`` last ``duration_s``; the frame faults happen once.
    """

    type: Literal["ocpp_fault"]
    station: str
    fault: OcppFaultKind
    duration_s: PositiveF = 1.0


class DsoStage(_Event):
    type: Literal["dso_stage"]
    pct: Annotated[float, Field(ge=0, le=100)]


Event = Annotated[
    FireAlarm | ResetLatch | LoadSpike | MeterFault | IoSilent | ChargerSilent | DeviceFault | OcppFault | DsoStage,
    Field(discriminator="type"),
]


EVENT_TYPES = frozenset(
    t
    for model in (
        FireAlarm,
        ResetLatch,
        LoadSpike,
        MeterFault,
        IoSilent,
        ChargerSilent,
        DeviceFault,
        OcppFault,
        DsoStage,
    )
    for t in get_args(model.model_fields["type"].annotation)  # the Literal's values
)


class ScenarioConfig(_Model):
    name: Annotated[str, Field(min_length=1)]
    site: str | dict[str, Any]
    start: datetime
    duration_s: PositiveF
    connection_limit_a: PositiveF | None = None
    """Override the connection (root) node's limit, e.g. to a fraction of the uncontrolled peak."""
    prices_from: datetime | None = None
    loads: dict[str, ProfileConfig] = Field(default_factory=dict)
    batteries: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(default_factory=dict)
    chargers: dict[str, ChargerBehaviourConfig] = Field(default_factory=dict)
    """Behaviour per connector id; the key ``default`` applies to all others."""
    evs: EvsConfig = EvsConfig()
    events: list[Event] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded scenario, every id checked against its site."""

    name: str
    path: Path
    config: ScenarioConfig
    site: SiteConfig
    start_s: float
    evs: tuple[EvSpec, ...]
    rejected_sessions: int
    profiles: Mapping[str, data.TimeSeries | float]
    """Per load id: power in W as a constant or a series already in W on the scenario's clock."""
    prices: data.TimeSeries
    """EUR/MWh on the scenario's clock (use step_at)."""
    behaviours: Mapping[str, ChargerBehaviour]


class ScenarioError(Exception):
    def __init__(self, issues: Sequence[ConfigIssue], source: str) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{source}: invalid scenario ({len(self.issues)} problem(s)):\n{lines}")


def _loc(loc: Sequence[int | str]) -> str:
    """``events[1].extra_kw``: pydantic's location without the event-type tag it inserts."""
    if len(loc) > 2 and loc[0] == "events" and isinstance(loc[1], int) and loc[2] in EVENT_TYPES:
        loc = [*loc[:2], *loc[3:]]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario and everything it refers to; raises ScenarioError, ConfigError or data.DataError."""
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ScenarioError([ConfigIssue("", f"cannot read file: {err.strerror or err}")], source) from err
    except UnicodeDecodeError as err:
        issue = ConfigIssue("", f"not a UTF-8 text file: {err.reason} at byte {err.start}")
        raise ScenarioError([issue], source) from err
    except yaml.YAMLError as err:
        raise ScenarioError([ConfigIssue("", f"not valid YAML: {err}")], source) from err
    if not isinstance(raw, dict):
        raise ScenarioError([ConfigIssue("", "top level must be a mapping")], source)
    try:
        config = ScenarioConfig.model_validate(raw)
    except ValidationError as err:
        issues = [ConfigIssue(_loc(e["loc"]), error_message(e)) for e in err.errors()]
        raise ScenarioError(issues, source) from None
    site = _load_site(config, path)
    if config.connection_limit_a is not None:
        tree = site.tree.model_copy(update={"limit_a": config.connection_limit_a})
        site = site.model_copy(update={"tree": tree})
    start = config.start if config.start.tzinfo is not None else config.start.replace(tzinfo=UTC)
    start_s = start.timestamp()
    _check_ids(config, site, source)
    evs, rejected = _evs(config, site, start)
    return Scenario(
        name=config.name,
        path=path,
        config=config,
        site=site,
        start_s=start_s,
        evs=evs,
        rejected_sessions=rejected,
        profiles=_profiles(config, site, start_s),
        prices=_prices(config, start_s),
        behaviours=_behaviours(config, site),
    )


def _load_site(config: ScenarioConfig, path: Path) -> SiteConfig:
    if isinstance(config.site, dict):
        loaded: LoadedConfig = validate_config(config.site, f"{path}:site")
    else:
        site_path = (path.parent / config.site).resolve()
        try:
            text = site_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text ({err.reason})"
            issue = ConfigIssue("site", f"cannot read site file {site_path}: {reason}")
            raise ConfigError([issue], str(path)) from err
        loaded = parse_config(text, str(site_path))
    return loaded.config


def _check_ids(config: ScenarioConfig, site: SiteConfig, source: str) -> None:
    connectors = {c.id for item in walk_tree(site.tree) for c in item.node.connectors}
    meters = {m.id for m in site.meters}
    loads = {x.id for x in site.building_loads} | {x.id for x in site.pv}
    batteries = {b.id for b in site.batteries}
    contacts = {c.id for c in (site.fire_panel, site.emergency_stop) if c is not None}
    issues: list[ConfigIssue] = []

    def need(ok: bool, path: str, what: str, value: str) -> None:
        if not ok:
            issues.append(ConfigIssue(path, f"unknown {what} '{value}'"))

    for key in config.loads:
        need(key in loads, f"loads.{key}", "building load or PV", key)
    for load_id, profile in config.loads.items():
        if (profile.constant_kw is None) == (profile.dataset is None):
            issues.append(ConfigIssue(f"loads.{load_id}", "give either constant_kw or dataset (with peak_kw)"))
        elif profile.dataset is not None and profile.peak_kw is None:
            issues.append(ConfigIssue(f"loads.{load_id}.peak_kw", "is required with a dataset"))
    for key in config.batteries:
        need(key in batteries, f"batteries.{key}", "battery", key)
    for key in config.chargers:
        need(key == "default" or key in connectors, f"chargers.{key}", "connector", key)
    for i, ev in enumerate(config.evs.sessions):
        need(ev.connector in connectors, f"evs.sessions[{i}].connector", "connector", ev.connector)
        if ev.depart_s <= ev.arrive_s:
            issues.append(ConfigIssue(f"evs.sessions[{i}].depart_s", "must be after arrive_s"))
    if config.evs.acn is not None and config.evs.acn.connectors != "all":
        for i, c in enumerate(config.evs.acn.connectors):
            need(c in connectors, f"evs.acn.connectors[{i}]", "connector", c)
    for i, event in enumerate(config.events):
        path = f"events[{i}]"
        if isinstance(event, LoadSpike):
            need(event.load in loads, f"{path}.load", "building load or PV", event.load)
        elif isinstance(event, MeterFault):
            need(event.meter in meters, f"{path}.meter", "meter", event.meter)
        elif isinstance(event, IoSilent):
            need(event.contact in contacts, f"{path}.contact", "contact", event.contact)
        elif isinstance(event, ChargerSilent):
            need(event.connector in connectors, f"{path}.connector", "connector", event.connector)
        elif isinstance(event, DeviceFault):
            need(event.device in {d.id for d in site.devices}, f"{path}.device", "device", event.device)
        elif isinstance(event, OcppFault):
            stations = {d.id for d in site.devices if d.driver == "ocpp201"}
            need(event.station in stations, f"{path}.station", "OCPP station", event.station)
        elif isinstance(event, DsoStage):
            need(site.dso is not None, f"{path}", "input: the site declares no", "dso")
        elif isinstance(event, FireAlarm):
            wanted = site.fire_panel if event.type.startswith("fire") else site.emergency_stop
            need(wanted is not None, path, "input: the site declares no", event.type.split("_")[0])
        if event.at_s > config.duration_s:
            issues.append(ConfigIssue(f"{path}.at_s", "is after the end of the scenario"))
    if issues:
        raise ScenarioError(issues, source)


def _shifted(series: data.TimeSeries, offset_s: float, scale: float) -> data.TimeSeries:
    return data.TimeSeries(tuple(t + offset_s for t in series.t_s), tuple(v * scale for v in series.values))


def _replay_start(start_s: float, replay_from: datetime | None, series: data.TimeSeries) -> float:
    """Dataset time that plays at the scenario's start: as given, else the same date in the data's year."""
    if replay_from is not None:
        return (replay_from if replay_from.tzinfo else replay_from.replace(tzinfo=UTC)).timestamp()
    start = datetime.fromtimestamp(start_s, UTC)
    year = datetime.fromtimestamp(series.start_s, UTC).year
    try:
        return start.replace(year=year).timestamp()
    except ValueError:  # 29 February
        return (start - timedelta(days=1)).replace(year=year).timestamp()


def _profiles(config: ScenarioConfig, site: SiteConfig, start_s: float) -> dict[str, data.TimeSeries | float]:
    profiles: dict[str, data.TimeSeries | float] = {}
    for load_id, profile in config.loads.items():
        if profile.constant_kw is not None:
            profiles[load_id] = profile.constant_kw * 1000.0
            continue
        peak_w = (profile.peak_kw or 0.0) * 1000.0
        if profile.dataset == "pv":
            series = data.load_pv_capacity_factor()
            scale = peak_w
        else:
            series = data.load_site_load_mw()
            scale = peak_w / max(series.values)
        replay_s = _replay_start(start_s, profile.replay_from, series)
        if not series.start_s <= replay_s <= series.end_s - min(config.duration_s, series.end_s - series.start_s):
            raise ScenarioError(
                [ConfigIssue(f"loads.{load_id}.replay_from", "the dataset does not cover the scenario's period")],
                str(config.name),
            )
        profiles[load_id] = _shifted(series, start_s - replay_s, scale)
    return profiles


def _prices(config: ScenarioConfig, start_s: float) -> data.TimeSeries:
    series = data.load_prices()
    replay_s = _replay_start(start_s, config.prices_from, series)
    return _shifted(series, start_s - replay_s, 1.0)


def _behaviours(config: ScenarioConfig, site: SiteConfig) -> dict[str, ChargerBehaviour]:
    default = config.chargers.get("default")
    out: dict[str, ChargerBehaviour] = {}
    for item in walk_tree(site.tree):
        for conn in item.node.connectors:
            chosen = config.chargers.get(conn.id, default)
            delay = conn.response_delay_s
            if chosen is None:
                out[conn.id] = ChargerBehaviour(response_delay_s=delay)
            else:
                out[conn.id] = ChargerBehaviour(
                    response_delay_s=chosen.response_delay_s if chosen.response_delay_s is not None else delay,
                    watchdog_s=chosen.watchdog_s,
                    never_below_a=chosen.never_below_a,
                )
    return out


def _evs(config: ScenarioConfig, site: SiteConfig, start: datetime) -> tuple[tuple[EvSpec, ...], int]:
    evs = [
        EvSpec(
            id=f"ev{i}",
            connector=ev.connector,
            arrive_s=ev.arrive_s,
            depart_s=ev.depart_s,
            energy_wh=ev.energy_kwh * 1000.0,
            capacity_wh=ev.capacity_kwh * 1000.0,
            soc0=ev.soc_pct / 100.0,
            max_current_a=ev.max_current_a,
            phases=ev.phases,
            max_dc_power_w=ev.max_dc_power_kw * 1000.0,
            id_token=ev.id_token,
            tell_departure=ev.tell_departure,
        )
        for i, ev in enumerate(config.evs.sessions)
    ]
    rejected = 0
    if config.evs.acn is not None:
        acn_evs, rejected = _acn_evs(config, config.evs.acn, site)
        evs.extend(acn_evs)
    return tuple(sorted(evs, key=lambda e: (e.arrive_s, e.id))), rejected


def _acn_evs(config: ScenarioConfig, acn: AcnConfig, site: SiteConfig) -> tuple[list[EvSpec], int]:
    """A day of real ACN sessions onto this site's AC connectors, with a reproducible EV mix.

    Clock times of day are kept; sessions are given to the next free connector; those that find the
    plaza full are counted as rejected.
    """
    ac = [c.id for item in walk_tree(site.tree) for c in item.node.connectors if c.type == "ac"]
    connectors = ac if acn.connectors == "all" else list(acn.connectors)
    available = data.load_acn_sessions()
    sessions = data.acn_sessions_on(available, acn.day)
    if not sessions:
        first, last = available[0].arrival.date(), available[-1].arrival.date()
        raise ScenarioError(
            [ConfigIssue("evs.acn.day", f"no ACN sessions on {acn.day}; the data covers {first} .. {last}")],
            config.name,
        )
    if acn.max_sessions is not None:
        sessions = sessions[: acn.max_sessions]
    free_at = dict.fromkeys(connectors, -1.0)
    evs: list[EvSpec] = []
    rejected = 0
    cursor = 0
    for session in sessions:
        midnight = session.arrival.replace(hour=0, minute=0, second=0, microsecond=0)
        arrive_s = (session.arrival - midnight).total_seconds()
        depart_s = min((session.departure - midnight).total_seconds(), config.duration_s)
        if depart_s - arrive_s < 300.0:
            continue
        chosen = None
        for k in range(len(connectors)):
            candidate = connectors[(cursor + k) % len(connectors)]
            if free_at[candidate] <= arrive_s:
                chosen = candidate
                cursor = (cursor + k + 1) % len(connectors)
                break
        if chosen is None:
            rejected += 1
            continue
        free_at[chosen] = depart_s + 60.0
        seed = int.from_bytes(hashlib.sha256(f"{acn.seed}:{session.session_id}".encode()).digest()[:8], "big")
        rng = random.Random(seed)
        three_phase = rng.random() < 0.65
        capacity_wh = rng.choice((40_000.0, 58_000.0, 64_000.0, 77_000.0, 82_000.0))
        energy_wh = min(session.requested_energy_kwh * 1000.0, 0.75 * capacity_wh)
        soc0 = max(0.05, min(0.6, 0.8 - energy_wh / capacity_wh - rng.uniform(0.0, 0.1)))
        evs.append(
            EvSpec(
                id=f"acn-{len(evs)}",
                connector=chosen,
                arrive_s=arrive_s,
                depart_s=depart_s,
                energy_wh=energy_wh,
                capacity_wh=capacity_wh,
                soc0=soc0,
                max_current_a=16.0 if three_phase else rng.choice((16.0, 32.0)),
                phases=3 if three_phase else 1,
                max_dc_power_w=0.0,
                tell_departure=True,
            )
        )
    return evs, rejected
