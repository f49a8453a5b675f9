"""Interlocks as tables of cycles: fire panel and emergency stop trip, latch, refuse and accept resets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from controller.image import ContactReading, InputSnapshot, LatchReset, Quality, freeze
from controller.interlocks import (
    EMERGENCY_STOP,
    FIRE,
    InterlockEvent,
    Latch,
    SiteMode,
    contact_alarm,
    evaluate_interlocks,
)

FIRE_ID = "fire-contact"
ESTOP_ID = "estop-contact"
INPUTS: Mapping[str, str | None] = {FIRE: FIRE_ID, EMERGENCY_STOP: ESTOP_ID}
T0 = 1_700_000_000.0

CLOSED = "closed"
OPEN = "open"
STALE = "stale"
BAD = "bad"
ABSENT = "absent"
"""The I/O module gave no reading at all for this contact."""


def reading(state: str, t: float) -> ContactReading | None:
    if state == CLOSED:
        return ContactReading(True, t)
    if state == OPEN:
        return ContactReading(False, t)
    if state == STALE:
        return ContactReading(True, t - 60.0, Quality.STALE)
    if state == BAD:
        return ContactReading(True, t, Quality.BAD)
    assert state == ABSENT
    return None


@dataclass(frozen=True)
class Cycle:
    """One row of a cycle table: inputs, then what must come out."""

    fire: str = CLOSED
    estop: str = CLOSED
    resets: tuple[tuple[str, str], ...] = ()
    """(latch, operator) reset requests handed to this cycle."""
    mode: SiteMode = SiteMode.NORMAL
    fire_latched: bool = False
    estop_latched: bool = False
    events: tuple[tuple[str, str], ...] = ()
    """(latch, kind) of every event of this cycle, in order."""


@dataclass
class Run:
    results: list[tuple[SiteMode, dict[str, Latch], tuple[InterlockEvent, ...]]] = field(default_factory=list)


def run_table(
    table: Sequence[Cycle],
    inputs: Mapping[str, str | None] = INPUTS,
    period_s: float = 1.0,
) -> Run:
    """Run the table through evaluate_interlocks, carrying the latches from cycle to cycle as the program does."""
    latches: dict[str, Latch] = {}
    out = Run()
    for k, row in enumerate(table):
        now = T0 + k * period_s
        contacts: dict[str, ContactReading] = {}
        for contact_id, state in ((FIRE_ID, row.fire), (ESTOP_ID, row.estop)):
            r = reading(state, now)
            if r is not None:
                contacts[contact_id] = r
        resets = tuple(LatchReset(latch, operator, now) for latch, operator in row.resets)
        result = evaluate_interlocks(now=now, contacts=contacts, inputs=inputs, latches=latches, resets=resets)
        where = f"cycle {k}: {row}"
        assert result.mode is row.mode, where
        assert result.latches[FIRE].active is row.fire_latched, where
        assert result.latches[EMERGENCY_STOP].active is row.estop_latched, where
        assert tuple((e.latch, e.kind) for e in result.events) == row.events, where
        assert all(e.ts == now for e in result.events), where
        latches = dict(result.latches)
        out.results.append((result.mode, latches, result.events))
    return out


# -- fire panel -----------------------------------------------------------------------------------


def test_fire_trips_latches_refuses_reset_while_open_and_releases_after_close() -> None:
    run = run_table(
        [
            Cycle(),
            Cycle(fire=OPEN, mode=SiteMode.FIRE, fire_latched=True, events=((FIRE, "tripped"),)),
            Cycle(fire=OPEN, mode=SiteMode.FIRE, fire_latched=True),  # trips once, not every cycle
            Cycle(fire=CLOSED, mode=SiteMode.FIRE, fire_latched=True),  # contact healthy: still latched
            Cycle(fire=CLOSED, mode=SiteMode.FIRE, fire_latched=True),
            Cycle(
                fire=OPEN,
                resets=((FIRE, "alice"),),
                mode=SiteMode.FIRE,
                fire_latched=True,
                events=((FIRE, "reset_refused"),),
            ),
            Cycle(fire=CLOSED, resets=((FIRE, "bob"),), events=((FIRE, "reset"),)),
            Cycle(),
        ]
    )
    tripped = run.results[1][2][0]
    assert tripped.detail == "contact open (alarm or wire break)"
    latch = run.results[1][1][FIRE]
    assert latch.since_ts == T0 + 1.0
    assert latch.cause == "contact open (alarm or wire break)"
    # The latch keeps its original trip time and cause while held.
    assert run.results[4][1][FIRE] == latch
    refused = run.results[5][2][0]
    assert refused.detail.startswith("by alice: ")
    assert "contact open" in refused.detail
    released = run.results[6][2][0]
    assert released.detail == "by bob"
    assert run.results[6][1][FIRE] == Latch(FIRE)


@pytest.mark.parametrize(
    ("state", "cause"),
    [
        (OPEN, "contact open (alarm or wire break)"),
        (STALE, "I/O module reading is stale"),
        (BAD, "I/O module reading is bad"),
        (ABSENT, "no reading from the I/O module"),
    ],
)
def test_fire_contact_failure_modes_all_trip(state: str, cause: str) -> None:
    run = run_table([Cycle(fire=state, mode=SiteMode.FIRE, fire_latched=True, events=((FIRE, "tripped"),))])
    _mode, latches, events = run.results[0]
    assert latches[FIRE].cause == cause
    assert events[0].detail == cause


@pytest.mark.parametrize("state", [STALE, BAD, ABSENT])
def test_reset_is_refused_while_the_fire_input_is_unhealthy(state: str) -> None:
    run_table(
        [
            Cycle(fire=OPEN, mode=SiteMode.FIRE, fire_latched=True, events=((FIRE, "tripped"),)),
            Cycle(
                fire=state,
                resets=((FIRE, "alice"),),
                mode=SiteMode.FIRE,
                fire_latched=True,
                events=((FIRE, "reset_refused"),),
            ),
            Cycle(fire=CLOSED, mode=SiteMode.FIRE, fire_latched=True),
            Cycle(fire=CLOSED, resets=((FIRE, "alice"),), events=((FIRE, "reset"),)),
        ]
    )


def test_contact_that_goes_stale_in_the_process_image_trips() -> None:
    """Through ``freeze``: a closed contact whose last reading is older than stale_after is an alarm."""
    snapshot = InputSnapshot(contacts={FIRE_ID: ContactReading(True, T0), ESTOP_ID: ContactReading(True, T0)})
    latches: dict[str, Latch] = {}
    modes = []
    for now in (T0 + 1.0, T0 + 3.0, T0 + 3.5):
        image = freeze(snapshot, now, 3.0, (), ())
        snapshot.contacts[ESTOP_ID] = ContactReading(True, now)  # the e-stop module keeps answering
        result = evaluate_interlocks(
            now=now, contacts=image.contacts, inputs=INPUTS, latches=latches, resets=image.resets
        )
        latches = dict(result.latches)
        modes.append(result.mode)
    assert modes == [SiteMode.NORMAL, SiteMode.NORMAL, SiteMode.FIRE]
    assert latches[FIRE].cause == "I/O module reading is stale"
    assert not latches[EMERGENCY_STOP].active


# -- emergency stop -------------------------------------------------------------------------------


def test_estop_trips_latches_refuses_and_releases_like_fire() -> None:
    es = SiteMode.EMERGENCY_STOP
    run_table(
        [
            Cycle(),
            Cycle(estop=OPEN, mode=es, estop_latched=True, events=((EMERGENCY_STOP, "tripped"),)),
            Cycle(estop=CLOSED, mode=es, estop_latched=True),
            Cycle(
                estop=OPEN,
                resets=((EMERGENCY_STOP, "op"),),
                mode=es,
                estop_latched=True,
                events=((EMERGENCY_STOP, "reset_refused"),),
            ),
            # A reset of the *other* latch does nothing to this one.
            Cycle(estop=CLOSED, resets=((FIRE, "op"),), mode=es, estop_latched=True),
            Cycle(estop=CLOSED, resets=((EMERGENCY_STOP, "op"),), events=((EMERGENCY_STOP, "reset"),)),
        ]
    )


@pytest.mark.parametrize("state", [OPEN, STALE, BAD, ABSENT])
def test_estop_contact_failure_modes_all_trip(state: str) -> None:
    run_table(
        [
            Cycle(
                estop=state,
                mode=SiteMode.EMERGENCY_STOP,
                estop_latched=True,
                events=((EMERGENCY_STOP, "tripped"),),
            )
        ]
    )


# -- both -----------------------------------------------------------------------------------------


def test_fire_has_precedence_over_estop() -> None:
    run_table(
        [
            Cycle(estop=OPEN, mode=SiteMode.EMERGENCY_STOP, estop_latched=True, events=((EMERGENCY_STOP, "tripped"),)),
            Cycle(
                fire=OPEN,
                estop=OPEN,
                mode=SiteMode.FIRE,
                fire_latched=True,
                estop_latched=True,
                events=((FIRE, "tripped"),),
            ),
            Cycle(
                resets=((FIRE, "op"),),
                mode=SiteMode.EMERGENCY_STOP,
                estop_latched=True,
                events=((FIRE, "reset"),),
            ),
            Cycle(resets=((EMERGENCY_STOP, "op"),), events=((EMERGENCY_STOP, "reset"),)),
        ]
    )


def test_both_trip_in_the_same_cycle_fire_first() -> None:
    run_table(
        [
            Cycle(
                fire=ABSENT,
                estop=ABSENT,
                mode=SiteMode.FIRE,
                fire_latched=True,
                estop_latched=True,
                events=((FIRE, "tripped"), (EMERGENCY_STOP, "tripped")),
            ),
            # One cycle can release both latches.
            Cycle(
                resets=((EMERGENCY_STOP, "op"), (FIRE, "op")),
                events=((FIRE, "reset"), (EMERGENCY_STOP, "reset")),
            ),
        ]
    )


# -- resets of inactive latches, duplicate resets -----------------------------------------------------


def test_reset_of_a_latch_that_is_not_active_produces_no_event() -> None:
    run_table(
        [
            Cycle(resets=((FIRE, "op"),)),
            Cycle(resets=((EMERGENCY_STOP, "op"),)),
            Cycle(resets=((FIRE, "op"), (EMERGENCY_STOP, "op"))),
        ]
    )


def test_second_reset_in_the_same_cycle_after_release_is_silent() -> None:
    run_table(
        [
            Cycle(fire=OPEN, mode=SiteMode.FIRE, fire_latched=True, events=((FIRE, "tripped"),)),
            Cycle(resets=((FIRE, "a"), (FIRE, "b")), events=((FIRE, "reset"),)),
        ]
    )


def test_refused_reset_is_reported_for_every_request() -> None:
    run_table(
        [
            Cycle(fire=OPEN, mode=SiteMode.FIRE, fire_latched=True, events=((FIRE, "tripped"),)),
            Cycle(
                fire=OPEN,
                resets=((FIRE, "a"), (FIRE, "b")),
                mode=SiteMode.FIRE,
                fire_latched=True,
                events=((FIRE, "reset_refused"), (FIRE, "reset_refused")),
            ),
        ]
    )


# -- inputs not fitted ----------------------------------------------------------------------------


def test_no_fire_panel_configured_never_trips() -> None:
    inputs: Mapping[str, str | None] = {FIRE: None, EMERGENCY_STOP: ESTOP_ID}
    run_table(
        [
            Cycle(fire=ABSENT),
            Cycle(fire=OPEN),  # a contact with that id is reported, but it is not the fire input
            Cycle(fire=BAD, resets=((FIRE, "op"),)),
        ],
        inputs=inputs,
    )


def test_no_inputs_configured_at_all_is_normal() -> None:
    run_table([Cycle(fire=ABSENT, estop=ABSENT), Cycle(fire=OPEN, estop=OPEN)], inputs={})


def test_active_latch_without_input_can_be_reset() -> None:
    """A latch restored from persisted state for an input that is no longer fitted is released by a reset."""
    latches = {FIRE: Latch(FIRE, True, T0 - 100.0, "contact open (alarm or wire break)")}
    held = evaluate_interlocks(now=T0, contacts={}, inputs={FIRE: None}, latches=latches, resets=())
    assert held.mode is SiteMode.FIRE
    assert held.events == ()
    released = evaluate_interlocks(
        now=T0 + 1, contacts={}, inputs={FIRE: None}, latches=held.latches, resets=(LatchReset(FIRE, "op", T0),)
    )
    assert released.mode is SiteMode.NORMAL
    assert [(e.latch, e.kind) for e in released.events] == [(FIRE, "reset")]


def test_evaluate_does_not_mutate_the_latches_it_was_given() -> None:
    latches: dict[str, Latch] = {}
    evaluate_interlocks(
        now=T0, contacts={FIRE_ID: ContactReading(False, T0)}, inputs=INPUTS, latches=latches, resets=()
    )
    assert latches == {}


# -- contact_alarm ------------------------------------------------------------------------------------


def test_contact_alarm_healthy_closed_contact_is_none() -> None:
    assert contact_alarm(ContactReading(True, T0)) is None
    assert contact_alarm(ContactReading(False, T0)) is not None
    assert contact_alarm(None) is not None
