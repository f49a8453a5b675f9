"""The plan in force kept across a controller restart (the cloud bridge's file in the state directory)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drivers.mqtt.messages import Plan, PricesCommand, plan_targets
from plaza_ems.cloud import PLAN_FILE, PRICES_FILE, load_plan, load_prices, save_plan, save_prices

PLAN = Plan(
    id="p7",
    site="s1",
    created_ts=1000.0,
    valid_from_ts=1000.0,
    valid_to_ts=1000.0 + 4 * 900,
    step_s=900,
    connectors={"c1": (16.0, None, 6.0, 32.0)},
    batteries={"bat": (1000.0, 0.0, -2000.0, 0.0)},
    site_import_cap_w=(50_000.0, None, None, 40_000.0),
)


def test_the_plan_in_force_is_kept_for_a_restart(tmp_path: Path) -> None:
    save_plan(tmp_path / PLAN_FILE, PLAN)
    kept = load_plan(tmp_path / PLAN_FILE, "s1")
    assert kept == PLAN
    assert plan_targets(kept, 1000.0 + 900 * 3 + 1) == plan_targets(PLAN, 1000.0 + 900 * 3 + 1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"site": "s2"}', "for site 's2'"),
        ("{broken", "Expecting"),
        ('{"site": "s1"}', "not used: 'site_import_cap_w'"),
    ],
)
def test_a_kept_plan_that_cannot_be_used_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    (tmp_path / PLAN_FILE).write_text(content, encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert load_plan(tmp_path / PLAN_FILE, "s1") is None
    assert reason in caplog.text
    assert load_plan(tmp_path / "none.json", "s1") is None


def test_the_last_day_ahead_prices_are_kept_for_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prices = PricesCommand("da-1", 0.0, "NL", 3600.0, 3600, (80.0, 20.0, 55.0))
    save_prices(tmp_path / PRICES_FILE, prices)
    kept = load_prices(tmp_path / PRICES_FILE)
    assert kept is not None
    assert (kept.at(3600.0), kept.at(7200.0), kept.at(3 * 3600.0 + 3599)) == (80.0, 20.0, 55.0)
    (tmp_path / PRICES_FILE).write_text('{"start_ts": 0, "step_s": 3600, "prices": ["NaN"]}', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert load_prices(tmp_path / PRICES_FILE) is None
    assert "no usable prices" in caplog.text
