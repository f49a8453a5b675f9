"""The OCPP stations of a site file: ``devices`` entries with ``driver: ocpp201``, checked and compiled.

A station entry names its connectors in EVSE order (EVSE 1, 2, ...) and its Basic-auth password, as
``options.password_sha256`` (hex digest, recommended) or ``options.password`` (plain, for labs and the
HIL); under security profile 3 (client certificates) it may be left out. ``options.max_current_a`` is
the ChargingStationMaxProfile the CSMS sends at boot — the station's own ceiling if the controller goes
away — by default the limit of the node the station hangs from.
Every connector's ``fallback_current_a`` must cover it, since a disconnected station is assumed to draw
up to it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from controller.config import ConfigIssue, ConnectorConfig, DeviceConfig, SiteConfig, walk_tree

DRIVER = "ocpp201"
OPTIONS = frozenset({"password", "password_sha256", "max_current_a"})


@dataclass(frozen=True, slots=True)
class EvseSpec:
    evse_id: int
    connector: ConnectorConfig


@dataclass(frozen=True, slots=True)
class StationSpec:
    id: str
    password_sha256: str
    evses: tuple[EvseSpec, ...]
    max_current_a: float

    def password_ok(self, password: str) -> bool:
        if not self.password_sha256:
            return False
        digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
        return hmac.compare_digest(digest, self.password_sha256)


def _compile(site: SiteConfig, device: DeviceConfig, path: str) -> tuple[StationSpec | None, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    connectors: dict[str, ConnectorConfig] = {}
    node_of: dict[str, float] = {}
    for item in walk_tree(site.tree):
        for conn in item.node.connectors:
            connectors[conn.id] = conn
            node_of[conn.id] = item.node.limit_a
    unknown = sorted(set(device.options) - OPTIONS)
    if unknown:
        issues.append(
            ConfigIssue(f"{path}.options.{unknown[0]}", f"unknown option (known: {', '.join(sorted(OPTIONS))})")
        )
    if not device.connectors:
        issues.append(ConfigIssue(f"{path}.connectors", "an OCPP station needs its connectors in EVSE order"))
    for other in ("meter", "battery", "pv"):
        if getattr(device, other) is not None:
            issues.append(ConfigIssue(f"{path}.{other}", "an OCPP station serves connectors only"))
    plain = device.options.get("password")
    hashed = device.options.get("password_sha256")
    certificates = site.ocpp is not None and site.ocpp.security_profile == 3
    if plain is not None and hashed is not None:
        issues.append(ConfigIssue(f"{path}.options", "give exactly one of password_sha256 (recommended) or password"))
    elif plain is None and hashed is None and not certificates:
        # Profile 3 identifies a station by its client certificate; 1 and 2 by its password.
        issues.append(ConfigIssue(f"{path}.options", "give exactly one of password_sha256 (recommended) or password"))
    elif plain is not None and (not isinstance(plain, str) or not 8 <= len(plain) <= 40):
        # OCPP 2.0.1 BasicAuthPassword: 16..40 characters is the spec's advice; labs use shorter ones.
        issues.append(ConfigIssue(f"{path}.options.password", "must be a string of 8 to 40 characters"))
    elif hashed is not None and (not isinstance(hashed, str) or len(hashed) != 64):
        issues.append(ConfigIssue(f"{path}.options.password_sha256", "must be a 64-character hex SHA-256 digest"))
    if issues:
        return None, issues
    evses = tuple(EvseSpec(i + 1, connectors[c]) for i, c in enumerate(device.connectors))
    max_current = device.options.get("max_current_a", node_of[device.connectors[0]])
    if isinstance(max_current, bool) or not isinstance(max_current, int | float) or not 0 < max_current <= 1000:
        return None, [ConfigIssue(f"{path}.options.max_current_a", "must be a number in 0..1000")]
    for index, evse in enumerate(evses):
        if evse.connector.fallback_current_a < max_current:
            issues.append(
                ConfigIssue(
                    f"{path}.connectors[{index}]",
                    f"'{evse.connector.id}': fallback_current_a {evse.connector.fallback_current_a:g} A is below the "
                    f"station's max profile {max_current:g} A, which a disconnected station may draw",
                )
            )
    if isinstance(hashed, str):
        digest = hashed
    elif plain is not None:
        digest = hashlib.sha256(str(plain).encode("utf-8")).hexdigest()
    else:
        digest = ""  # profile 3 without a password: no Basic-auth password ever matches
    return StationSpec(device.id, digest.lower(), evses, float(max_current)), issues


def compile_stations(site: SiteConfig) -> tuple[dict[str, StationSpec], list[ConfigIssue]]:
    """Every OCPP station of the site by id, and the problems found (paths like ``devices[4].options``)."""
    stations: dict[str, StationSpec] = {}
    issues: list[ConfigIssue] = []
    for index, device in enumerate(site.devices):
        if device.driver != DRIVER:
            continue
        spec, found = _compile(site, device, f"devices[{index}]")
        issues += found
        if spec is not None:
            stations[spec.id] = spec
    if stations and site.ocpp is None:
        issues.append(ConfigIssue("ocpp", "OCPP stations are configured but the site has no ocpp section"))
    return stations, issues
