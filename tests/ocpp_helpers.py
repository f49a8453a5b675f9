"""Shared by the OCPP tests: Basic-auth headers, a cycle output with given setpoints, a minimal station."""

from __future__ import annotations

import base64
import time
from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result, enums

from controller.interlocks import SiteMode
from controller.program import ConnectorSetpoint, CycleOutput


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def output(setpoints: dict[str, tuple[float, float | None]], mode: SiteMode = SiteMode.NORMAL) -> CycleOutput:
    """A cycle's output with these (current A, power W) setpoints; an empty one makes the CSMS accept boots."""
    return CycleOutput(
        t=time.time(),
        mode=mode,
        setpoints=tuple(ConnectorSetpoint(c, a, p) for c, (a, p) in setpoints.items()),
        batteries=(),
        limits=(),
        uncontrolled=None,
        dso_pct=100.0,
        latches={},
        events=(),
    )


class Station(ChargePoint):  # type: ignore[misc]  # the ocpp library is untyped
    """The least a station does: accept profiles and variables, and remember them and every frame."""

    def __init__(self, station_id: str, connection: Any) -> None:
        super().__init__(station_id, connection)
        self.profiles: list[tuple[int, str, str, float]] = []
        self.raw: list[str] = []

    async def route_message(self, raw_msg: str) -> None:
        self.raw.append(raw_msg)
        await super().route_message(raw_msg)

    @on(enums.Action.set_charging_profile)
    def on_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> call_result.SetChargingProfile:
        schedule = charging_profile["charging_schedule"][0]
        limit = schedule["charging_schedule_period"][0]["limit"]
        self.profiles.append(
            (evse_id, charging_profile["charging_profile_purpose"], schedule["charging_rate_unit"], limit)
        )
        return call_result.SetChargingProfile(status="Accepted")

    @on(enums.Action.set_variables)
    def on_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> call_result.SetVariables:
        return call_result.SetVariables(
            set_variable_result=[
                {"attribute_status": "Accepted", "component": d["component"], "variable": d["variable"]}
                for d in set_variable_data
            ]
        )
