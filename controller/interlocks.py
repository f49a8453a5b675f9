"""Step 2 of the cycle: safety interlocks (fire panel, emergency stop) and the resulting site mode.

Both inputs are normally-closed contacts: an open contact, a broken wire and a silent or absent I/O
module read the same, as an alarm. An alarm latches; the latch is released only by an explicit reset
naming an operator, and only while the contact is healthy again. Resets and refusals are reported as
events so the caller can log them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from controller.image import ContactReading, LatchReset, Quality


class SiteMode(Enum):
    NORMAL = "normal"
    FIRE = "fire"
    EMERGENCY_STOP = "emergency_stop"


FIRE = "fire"
EMERGENCY_STOP = "emergency_stop"
LATCHES = (FIRE, EMERGENCY_STOP)


@dataclass(frozen=True, slots=True)
class Latch:
    name: str
    active: bool = False
    since_ts: float | None = None
    cause: str = ""


@dataclass(frozen=True, slots=True)
class InterlockEvent:
    """Something the operator should see in the log, from the interlocks or the control program.

    Interlock events name a latch; the control program's connector events ('overdraw',
    'overdraw_ended', see ``controller.program``) name the connector in ``latch``.
    """

    ts: float
    latch: str
    """The latch, or for a connector event the connector id."""
    kind: str
    """'tripped', 'reset', 'reset_refused'; 'overdraw', 'overdraw_ended'."""
    detail: str
    excess_a: float | None = None
    """'overdraw': how much more than its setpoint the charger draws (A, on its most loaded phase)."""


@dataclass(frozen=True, slots=True)
class InterlockResult:
    mode: SiteMode
    latches: Mapping[str, Latch]
    events: tuple[InterlockEvent, ...]


def contact_alarm(reading: ContactReading | None) -> str | None:
    """Why a normally-closed contact counts as an alarm now, or None if it is healthy."""
    if reading is None:
        return "no reading from the I/O module"
    if reading.quality != Quality.GOOD:
        return f"I/O module reading is {reading.quality.name.lower()}"
    if not reading.closed:
        return "contact open (alarm or wire break)"
    return None


def evaluate_interlocks(
    *,
    now: float,
    contacts: Mapping[str, ContactReading],
    inputs: Mapping[str, str | None],
    latches: Mapping[str, Latch],
    resets: tuple[LatchReset, ...],
) -> InterlockResult:
    """Trip, hold or release the latches; ``inputs`` maps latch name to its contact id (None = not fitted)."""
    events: list[InterlockEvent] = []
    new: dict[str, Latch] = {}
    for name in LATCHES:
        latch = latches.get(name, Latch(name))
        contact_id = inputs.get(name)
        alarm = contact_alarm(contacts.get(contact_id)) if contact_id is not None else None
        for reset in resets:
            if reset.latch != name or not latch.active:
                continue
            if alarm is not None:
                events.append(InterlockEvent(now, name, "reset_refused", f"by {reset.operator}: {alarm}"))
            else:
                events.append(InterlockEvent(now, name, "reset", f"by {reset.operator}"))
                latch = Latch(name)
        if alarm is not None and not latch.active:
            latch = Latch(name, True, now, alarm)
            events.append(InterlockEvent(now, name, "tripped", alarm))
        new[name] = latch
    if new[FIRE].active:
        mode = SiteMode.FIRE
    elif new[EMERGENCY_STOP].active:
        mode = SiteMode.EMERGENCY_STOP
    else:
        mode = SiteMode.NORMAL
    return InterlockResult(mode, new, tuple(events))
