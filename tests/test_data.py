"""Tests of hil.data: the loaders on the committed excerpts, TimeSeries behaviour and DataError cases."""

from __future__ import annotations

import csv
import gzip
import logging
import math
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from hil.data import (
    DATA_DIR,
    AcnSession,
    DataError,
    TimeSeries,
    acn_sessions_on,
    load_acn_sessions,
    load_acn_sessions_counted,
    load_prices,
    load_pv_capacity_factor,
    load_site_load_mw,
)

HOUR_S = 3600.0
QUARTER_S = 900.0


def _is_sorted(xs: tuple[float, ...]) -> bool:
    return all(a < b for a, b in pairwise(xs))


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------------------
# Committed excerpts
# --------------------------------------------------------------------------------------------------


def test_committed_files_exist() -> None:
    for name in (
        "prices_nl_2023.csv",
        "pv_nl_2019.csv.gz",
        "site_load_nl_2020.csv.gz",
        "acn_caltech_2019-05.csv.gz",
        "README.md",
    ):
        assert (DATA_DIR / name).is_file(), name


def test_prices_excerpt() -> None:
    prices = load_prices()
    assert len(prices) > 8000
    assert _is_sorted(prices.t_s)
    assert prices.start_s == _epoch("2023-01-01T00:00:00")
    assert prices.end_s == _epoch("2023-12-31T23:00:00")
    assert min(prices.values) < 0.0  # 2023 has negative hours
    assert min(prices.values) >= -1000.0
    assert max(prices.values) <= 1000.0


def test_known_price_hours_match_the_file() -> None:
    with (DATA_DIR / "prices_nl_2023.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    prices = load_prices()
    assert len(prices) == len(rows)
    for row in (rows[2], rows[len(rows) // 2], rows[-1]):
        hour_start = datetime.fromisoformat(row["utc_start"]).timestamp()
        expected = float(row["price_eur_per_mwh"])
        assert prices.step_at(hour_start) == expected
        assert prices.step_at(hour_start + 1800.0) == expected
        assert prices.step_at(hour_start + HOUR_S - 1.0) == expected
    # 2023-01-01 02:00 UTC is a negative hour in the file.
    assert rows[2]["utc_start"] == "2023-01-01T02:00:00Z"
    assert prices.step_at(_epoch("2023-01-01T02:30:00")) == float(rows[2]["price_eur_per_mwh"]) < 0.0


def test_pv_excerpt() -> None:
    pv = load_pv_capacity_factor()
    assert len(pv) == 8760
    assert _is_sorted(pv.t_s)
    assert all(0.0 <= v <= 1.0 for v in pv.values)
    assert pv.start_s == _epoch("2019-01-01T00:00:00")  # the `time` column is UTC
    assert max(pv.values) > 0.5
    # Night is dark, a June noon is not.
    assert pv.at(_epoch("2019-06-21T00:00:00")) == 0.0
    assert pv.at(_epoch("2019-06-21T11:00:00")) > 0.1


def test_site_load_excerpt() -> None:
    load = load_site_load_mw()
    assert len(load) > 10_000
    assert _is_sorted(load.t_s)
    assert all(0.0 <= v < 50.0 for v in load.values)
    assert load.start_s == _epoch("2020-10-02T09:45:00")
    steps = {b - a for a, b in pairwise(load.t_s)}
    assert min(steps) == QUARTER_S


def test_acn_excerpt() -> None:
    sessions, skipped = load_acn_sessions_counted()
    assert skipped == 0
    assert len(sessions) > 500
    assert sessions == load_acn_sessions()
    arrivals = [s.arrival for s in sessions]
    assert arrivals == sorted(arrivals)
    for s in sessions:
        assert s.arrival.tzinfo is not None
        assert s.departure > s.arrival
        assert s.requested_energy_kwh >= 0.0
        assert s.delivered_energy_kwh >= 0.0
        assert date(2019, 5, 1) <= s.arrival.date() <= date(2019, 5, 31)
        assert s.session_id
        assert s.station_id
    assert any(s.estimated_departure is not None for s in sessions)


def test_acn_sessions_on_day_matches_independent_count() -> None:
    day = date(2019, 5, 14)
    with gzip.open(DATA_DIR / "acn_caltech_2019-05.csv.gz", "rt", newline="") as f:
        expected = sum(1 for row in csv.DictReader(f) if row["arrival"].startswith("2019-05-14"))
    assert expected > 0
    selected = acn_sessions_on(load_acn_sessions(), day)
    assert len(selected) == expected
    assert all(s.arrival.date() == day for s in selected)


# --------------------------------------------------------------------------------------------------
# TimeSeries
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def series() -> TimeSeries:
    # samples: 0 -> 0, 10 -> 10, 20 -> 4, 30 -> 4
    return TimeSeries((0.0, 10.0, 20.0, 30.0), (0.0, 10.0, 4.0, 4.0))


def test_at_interpolates_and_clamps(series: TimeSeries) -> None:
    assert series.at(0.0) == 0.0
    assert series.at(5.0) == pytest.approx(5.0)
    assert series.at(10.0) == 10.0
    assert series.at(15.0) == pytest.approx(7.0)
    assert series.at(25.0) == pytest.approx(4.0)
    assert series.at(30.0) == 4.0
    assert series.at(-100.0) == 0.0
    assert series.at(1e9) == 4.0
    assert series.start_s == 0.0
    assert series.end_s == 30.0


def test_step_at_holds_last_sample(series: TimeSeries) -> None:
    assert series.step_at(0.0) == 0.0
    assert series.step_at(9.999) == 0.0
    assert series.step_at(10.0) == 10.0
    assert series.step_at(19.0) == 10.0
    assert series.step_at(20.0) == 4.0
    assert series.step_at(-5.0) == 0.0
    assert series.step_at(99.0) == 4.0


def test_max_between(series: TimeSeries) -> None:
    assert series.max_between(0.0, 30.0) == 10.0  # interior sample
    assert series.max_between(2.0, 8.0) == pytest.approx(8.0)  # end point, no interior sample
    assert series.max_between(12.0, 18.0) == pytest.approx(8.8)  # start point wins
    assert series.max_between(14.0, 14.0) == pytest.approx(7.6)
    assert series.max_between(-10.0, -5.0) == 0.0  # clamped before the range
    assert series.max_between(25.0, 100.0) == 4.0  # clamped after the range
    assert series.max_between(-10.0, 100.0) == 10.0
    with pytest.raises(ValueError, match="empty interval"):
        series.max_between(5.0, 1.0)


def test_timeseries_validation() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        TimeSeries((0.0, 0.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="values"):
        TimeSeries((0.0, 1.0), (1.0,))
    with pytest.raises(ValueError, match="no samples"):
        TimeSeries((), ())
    with pytest.raises(ValueError, match="non-finite"):
        TimeSeries((0.0, 1.0), (1.0, math.nan))


def test_single_sample_series() -> None:
    one = TimeSeries((5.0,), (2.5,))
    assert one.at(0.0) == one.at(5.0) == one.at(9.0) == 2.5
    assert one.step_at(0.0) == 2.5
    assert one.max_between(0.0, 10.0) == 2.5


# --------------------------------------------------------------------------------------------------
# DataError and file handling
# --------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_prices.csv"
    with pytest.raises(DataError, match=r"no_such_prices\.csv"):
        load_prices(missing)
    with pytest.raises(DataError, match=r"no_such_sessions\.csv\.gz"):
        load_acn_sessions(tmp_path / "no_such_sessions.csv.gz")


def test_nan_load_row(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "nan_load.csv",
        "utc_start,load\n2020-10-02T09:45:00Z,3.3\n2020-10-02T10:00:00Z,nan\n",
    )
    with pytest.raises(DataError, match=r"nan_load\.csv, line 3") as exc:
        load_site_load_mw(path)
    assert "not finite" in str(exc.value)


def test_negative_load_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "neg_load.csv", "utc_start,load\n2020-10-02T09:45:00Z,-0.5\n")
    with pytest.raises(DataError, match=r"neg_load\.csv, line 2.*negative"):
        load_site_load_mw(path)


def test_garbage_row(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "garbage_prices.csv.gz",
        "utc_start,price_eur_per_mwh\n2023-01-01T00:00:00Z,10.0\nnot-a-date,xyz\n",
    )
    with pytest.raises(DataError, match=r"garbage_prices\.csv\.gz, line 3"):
        load_prices(path)
    bad_value = _write(tmp_path / "bad_value.csv", "utc_start,price_eur_per_mwh\n2023-01-01T00:00:00Z,xyz\n")
    with pytest.raises(DataError, match=r"bad_value\.csv, line 2.*cannot parse"):
        load_prices(bad_value)


def test_missing_column_and_unsorted(tmp_path: Path) -> None:
    no_col = _write(tmp_path / "no_col.csv", "utc_start,price\n2023-01-01T00:00:00Z,1.0\n")
    with pytest.raises(DataError, match=r"no_col\.csv.*price_eur_per_mwh"):
        load_prices(no_col)
    unsorted = _write(
        tmp_path / "unsorted.csv",
        "utc_start,price_eur_per_mwh\n2023-01-01T01:00:00Z,1.0\n2023-01-01T00:00:00Z,2.0\n",
    )
    with pytest.raises(DataError, match=r"unsorted\.csv, line 3"):
        load_prices(unsorted)


def test_prices_may_be_negative_pv_may_not(tmp_path: Path) -> None:
    prices = _write(
        tmp_path / "p.csv.gz",
        "utc_start,price_eur_per_mwh\n2023-01-01T00:00:00Z,-5.0\n2023-01-01T01:00:00+00:00,7.5\n",
    )
    series = load_prices(prices)
    assert series.values == (-5.0, 7.5)
    assert series.t_s == (_epoch("2023-01-01T00:00:00"), _epoch("2023-01-01T01:00:00"))
    pv = _write(tmp_path / "pv_neg.csv", "time,local_time,electricity\n2019-01-01 00:00,2019-01-01 01:00,-0.1\n")
    with pytest.raises(DataError, match=r"pv_neg\.csv, line 2"):
        load_pv_capacity_factor(pv)
    pv_big = _write(tmp_path / "pv_big.csv", "time,local_time,electricity\n2019-01-01 00:00,2019-01-01 01:00,1.5\n")
    with pytest.raises(DataError, match=r"pv_big\.csv, line 2"):
        load_pv_capacity_factor(pv_big)


ACN_HEADER = (
    "arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,session_id,"
    "estimated_departure,claimed\n"
)


def test_acn_skips_implausible_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(
        tmp_path / "acn.csv",
        ACN_HEADER
        + "2019-05-02 08:00:00-07:00,2019-05-02 12:00:00-07:00,10.0,8.0,CA-1,b,,True\n"
        + "2019-05-01 08:00:00-07:00,2019-05-01 17:00:00-07:00,20.0,15.5,CA-2,a,"
        + "2019-05-01 16:00:00-07:00,True\n"
        + "2019-05-03 08:00:00-07:00,2019-05-03 07:00:00-07:00,10.0,8.0,CA-3,bad-times,,True\n"
        + "2019-05-03 08:00:00-07:00,2019-05-03 09:00:00-07:00,nan,8.0,CA-4,bad-request,,True\n"
        + "2019-05-03 08:00:00-07:00,2019-05-03 09:00:00-07:00,10.0,-1.0,CA-5,bad-delivered,,True\n",
    )
    with caplog.at_level(logging.WARNING, logger="hil.data"):
        sessions, skipped = load_acn_sessions_counted(path)
    assert skipped == 3
    assert "skipped 3" in caplog.text
    assert [s.session_id for s in sessions] == ["a", "b"]  # sorted by arrival
    first = sessions[0]
    assert isinstance(first, AcnSession)
    assert first.station_id == "CA-2"
    assert first.requested_energy_kwh == 20.0
    assert first.delivered_energy_kwh == 15.5
    assert first.estimated_departure == datetime.fromisoformat("2019-05-01 16:00:00-07:00")
    assert sessions[1].estimated_departure is None
    assert acn_sessions_on(sessions, date(2019, 5, 1)) == [first]
    assert acn_sessions_on(sessions, date(2019, 5, 4)) == []


def test_acn_garbage_row(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "acn_garbage.csv.gz",
        ACN_HEADER + "yesterday,2019-05-02 12:00:00-07:00,10.0,8.0,CA-1,b,,True\n",
    )
    with pytest.raises(DataError, match=r"acn_garbage\.csv\.gz, line 2.*arrival"):
        load_acn_sessions(path)
    naive = _write(
        tmp_path / "acn_naive.csv",
        ACN_HEADER + "2019-05-02 08:00:00,2019-05-02 12:00:00-07:00,10.0,8.0,CA-1,b,,True\n",
    )
    with pytest.raises(DataError, match=r"acn_naive\.csv, line 2.*offset"):
        load_acn_sessions(naive)


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "fake.csv.gz"
    path.write_text("utc_start,load\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"fake\.csv\.gz"):
        load_site_load_mw(path)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.csv", "utc_start,load\n")
    with pytest.raises(DataError, match=r"empty\.csv: no data rows"):
        load_site_load_mw(path)
