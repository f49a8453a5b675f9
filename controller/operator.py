"""Operator commands from a maintenance interface (OPC UA methods) and their results, as plain records.

A command names the user who gave it; the result carries an OPC UA-style status name ("Good",
"BadInvalidArgument", ...) and a message for the log and the caller. The commands are carried out by
the scan cycle's side (``plaza_ems.operator``); the interface only waits for the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CommandKind = Literal["reset_latch", "acknowledge", "availability", "maintenance"]


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    kind: CommandKind
    user: str
    target: str
    """The latch, alarm, connector or tree node the command is about."""
    enabled: bool = False
    """availability: True makes the connector available; maintenance: True starts maintenance mode."""
    comment: str = ""


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: str
    """"Good" or the name of an OPC UA Bad status code."""
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "Good"
