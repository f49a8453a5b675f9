"""Evaluate the forecasters of :mod:`mpc.forecast` on held-out real data against naive baselines.

Method (the same for every series): the series is split chronologically; the last ``hold_out_days``
days are held out. Over the hold-out a forecast is issued every day at local midnight (rolling
origin), each fitted afresh on the data strictly before its issue time (which includes the hold-out
days already past, as in operation) and covering the next 24 h. Hyper-parameters were chosen on the
training part only (``--split train`` gives the same figures on origins there). Errors are the mean
absolute error over all steps of all issued forecasts, in the units of the series; a step whose
actual value is missing is skipped for every method alike.

Exposed as ``plaza-ems bench forecast [--data-dir DIR] [--json]``: :func:`add_arguments` and
:func:`main`. :func:`evaluate_forecasts` returns the figures as a JSON-able dict.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from hil.data import (
    ACN_FILE,
    DATA_DIR,
    PRICES_FILE,
    SITE_LOAD_FILE,
    DataError,
    TimeSeries,
    load_acn_sessions,
    load_prices,
    load_pv_capacity_factor,
    load_site_load_mw,
)
from mpc.forecast import (
    DAY_S,
    ClearSkyPvForecaster,
    EvForecast,
    EvSessionForecaster,
    EvSessionRecord,
    FloatArray,
    ProfileLoadForecaster,
    RidgeLoadForecaster,
    SeriesLike,
    ev_actuals,
    lagged_baseline,
    nl_public_holidays,
    price_curve,
    series_arrays,
    us_federal_holidays,
)

__all__ = [
    "HOLD_OUT_DAYS",
    "add_arguments",
    "default_data_dir",
    "evaluate_ev",
    "evaluate_forecasts",
    "evaluate_load",
    "evaluate_pv",
    "format_table",
    "load_site_load_with_weather",
    "main",
    "read_acn_records",
]

Split = Literal["hold_out", "train"]

HOLD_OUT_DAYS: dict[str, int] = {"load": 28, "pv": 182, "pv_last_28d": 28, "ev": 28, "ev_excerpt": 14}
"""Days held out per evaluation. PV holds out the whole second half of 2019: the last four weeks alone
(December) have almost no sun, so they are reported separately as ``pv_last_28d``. The committed ACN
excerpt is one month, so two weeks are held out there."""

TRAIN_MIN_DAYS = 14
"""With ``split="train"``, forecasts are issued from this many days after the start of the series."""

NL_TZ = "Europe/Amsterdam"
CALTECH_TZ = "America/Los_Angeles"
LOAD_SHARED = Path("site_load/openstef_pid_287_15min.csv.gz")
PV_SHARED = Path("pv/pv_netherlands_2019_hourly_capacity_factor.csv")
PRICES_SHARED = Path("prices")
ACN_SHARED = Path("acn_sessions")
PV_EXCERPT = "pv_nl_2019.csv.gz"

_REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path | None:
    """``../shared/data`` next to the repository if it exists, else None (the committed excerpts)."""
    candidate = (_REPO.parent / "shared" / "data").resolve()
    return candidate if candidate.is_dir() else None


# --------------------------------------------------------------------------------------------------
# Reading the data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Arrays:
    """A plain series of numpy arrays (satisfies :class:`mpc.forecast.SeriesLike`)."""

    t_s: FloatArray
    values: FloatArray


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _float_or_nan(text: str | None) -> float:
    if text is None or not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_site_load_with_weather(path: Path | None = None) -> tuple[SeriesLike, dict[str, SeriesLike]]:
    """Load (MW) and the weather columns ``temp`` and ``radiation`` of the OpenSTEF site-load data.

    ``path=None`` reads the committed excerpt (load through :func:`hil.data.load_site_load_mw`);
    otherwise the full shared file (column ``index`` or ``utc_start`` as time), whose rows without a
    load are skipped; its few negative loads (reverse flow at midday in October) are kept as measured.
    """
    file = DATA_DIR / SITE_LOAD_FILE if path is None else path
    rows = _read_csv_rows(file)
    time_col = "index" if rows and "index" in rows[0] else "utc_start"
    t: list[float] = []
    cols: dict[str, list[float]] = {"load": [], "temp": [], "radiation": []}
    for n, row in enumerate(rows, start=2):
        text = row.get(time_col)
        if not text:
            raise DataError(f"{file}, line {n}: no {time_col!r}")
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise DataError(f"{file}, line {n}: cannot parse time {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        t.append(stamp.timestamp())
        for name in cols:
            cols[name].append(_float_or_nan(row.get(name)))
    times = np.array(t)
    weather: dict[str, SeriesLike] = {}
    for name in ("temp", "radiation"):
        v = np.array(cols[name])
        ok = np.isfinite(v)
        weather[name] = _Arrays(times[ok], v[ok])
    if path is None:
        return load_site_load_mw(), weather
    v = np.array(cols["load"])
    ok = np.isfinite(v)
    if not bool(np.any(ok)):
        raise DataError(f"{file}: no load values")
    return _Arrays(times[ok], v[ok]), weather


def read_acn_records(path: Path | None = None) -> tuple[list[EvSessionRecord], dict[str, float]]:
    """ACN sessions as :class:`EvSessionRecord` (energy = delivered) and the drivers' requests.

    The data have no user id; the ``claimed`` column says whether a driver claimed the session in the
    app (and so entered a request) - it is used as the profile (``"claimed"`` / ``"unclaimed"``).
    The request of an unclaimed session is the delivered energy filled in afterwards, so only claimed
    sessions' requests are returned (by session id).
    """
    file = DATA_DIR / ACN_FILE if path is None else path
    sessions = load_acn_sessions(file)
    claimed = {
        row.get("session_id", ""): (row.get("claimed") or "").strip().lower() == "true" for row in _read_csv_rows(file)
    }
    records: list[EvSessionRecord] = []
    requests: dict[str, float] = {}
    for s in sessions:
        is_claimed = claimed.get(s.session_id)
        profile = None if is_claimed is None else ("claimed" if is_claimed else "unclaimed")
        records.append(
            EvSessionRecord(
                s.arrival.timestamp(), s.departure.timestamp(), s.delivered_energy_kwh, profile, s.session_id
            )
        )
        if is_claimed:
            requests[s.session_id] = s.requested_energy_kwh
    return records, requests


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class _Score:
    """Accumulated absolute (and squared) errors of several methods on the same steps."""

    sums: dict[str, float] = field(default_factory=dict)
    squares: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, actual: FloatArray, predictions: dict[str, FloatArray]) -> None:
        ok = np.isfinite(actual)
        for name, p in predictions.items():
            if p.shape != actual.shape:
                raise ValueError(f"{name}: forecast shape {p.shape} != actual {actual.shape}")
            err = p[ok] - actual[ok]
            self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(np.abs(err)))
            self.squares[name] = self.squares.get(name, 0.0) + float(np.sum(err * err))
        self.count += int(np.sum(ok))

    def report(self, models: Sequence[str], baselines: Sequence[str], digits: int = 4) -> dict[str, Any]:
        if self.count == 0:
            raise ValueError("no forecast step with a known actual value")
        mae = {k: round(v / self.count, digits) for k, v in self.sums.items()}
        rmse = {k: round(math.sqrt(v / self.count), digits) for k, v in self.squares.items()}
        best = min(baselines, key=lambda b: mae[b])
        relative = {m: {b: round(mae[m] / mae[b], 3) if mae[b] > 0 else None for b in baselines} for m in models}
        return {
            "mae": mae,
            "rmse": rmse,
            "best_baseline": best,
            "mae_relative_to_baseline": relative,
            "steps": self.count,
        }


@dataclass
class _Timer:
    fit_ms: list[float] = field(default_factory=list)
    predict_ms: list[float] = field(default_factory=list)

    def report(self) -> dict[str, float]:
        if not self.fit_ms:
            return {}
        return {
            "fit_ms_median": round(statistics.median(self.fit_ms), 2),
            "fit_ms_max": round(max(self.fit_ms), 2),
            "predict_ms_median": round(statistics.median(self.predict_ms), 3),
            "predict_ms_max": round(max(self.predict_ms), 3),
        }


class _Clock:
    """Times one fit and one predict: ``clock.fitted()`` after the fit, ``clock.predicted()`` after predict."""

    def __init__(self, timer: _Timer) -> None:
        self.timer = timer
        self.t0 = time.perf_counter()
        self.t1 = self.t0

    def fitted(self) -> None:
        self.t1 = time.perf_counter()
        self.timer.fit_ms.append((self.t1 - self.t0) * 1e3)

    def predicted(self) -> None:
        self.timer.predict_ms.append((time.perf_counter() - self.t1) * 1e3)


def _origins(t_first: float, t_last: float, tz: str, hold_out_days: int, split: Split) -> list[float]:
    """Local midnights whose 24 h horizon lies within the data: the last ``hold_out_days`` of them, or
    (``split="train"``) those from ``TRAIN_MIN_DAYS`` after the start up to the hold-out."""
    zone = ZoneInfo(tz)
    first = datetime.fromtimestamp(t_first, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    day = first + timedelta(days=1)
    all_days: list[float] = []
    while True:
        origin = day.timestamp()
        if origin + DAY_S > t_last + 1:
            break
        all_days.append(origin)
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)  # robust across DST
    hold = all_days[-hold_out_days:]
    if split == "hold_out":
        return hold
    return [o for o in all_days if o >= t_first + TRAIN_MIN_DAYS * DAY_S and o < hold[0]] if hold else []


def _iso(t_s: float, tz: str) -> str:
    return datetime.fromtimestamp(t_s, ZoneInfo(tz)).isoformat()


def _period(origins: Sequence[float], tz: str, t_first: float) -> dict[str, Any]:
    if not origins:
        raise ValueError("no forecast origin in the requested split")
    return {
        "train_from": _iso(t_first, tz),
        "from": _iso(origins[0], tz),
        "to": _iso(origins[-1] + DAY_S, tz),
        "forecasts": len(origins),
    }


def _actual(t: FloatArray, v: FloatArray, origin: float, step_s: int, n: int) -> FloatArray:
    """Actual values on the forecast grid (NaN where the series has no sample)."""
    grid = origin + step_s * np.arange(n)
    idx = np.searchsorted(t, grid)
    idx_c = np.clip(idx, 0, t.size - 1)
    hit = (idx < t.size) & (np.abs(t[idx_c] - grid) < 1.0)
    return np.where(hit, v[idx_c], np.nan)


# --------------------------------------------------------------------------------------------------
# Per series
# --------------------------------------------------------------------------------------------------


def evaluate_load(
    load: SeriesLike,
    weather: dict[str, SeriesLike] | None,
    *,
    hold_out_days: int = 28,
    split: Split = "hold_out",
    profile: ProfileLoadForecaster | None = None,
    ridge: RidgeLoadForecaster | None = None,
) -> dict[str, Any]:
    """Building load (MW, 15 min), issued daily at 00:00 Europe/Amsterdam for 24 h (96 steps).

    Default forecasters: the defaults of their classes with the Dutch public holidays.
    """
    t, v = series_arrays(load)
    step, n = 900, 96
    years = range(datetime.fromtimestamp(t[0], UTC).year, datetime.fromtimestamp(t[-1], UTC).year + 1)
    holidays = nl_public_holidays(years)
    profile = profile or ProfileLoadForecaster(step_s=step, tz=NL_TZ, holidays=holidays)
    ridge = ridge or RidgeLoadForecaster(step_s=step, tz=NL_TZ, holidays=holidays)
    origins = _origins(float(t[0]), float(t[-1]), NL_TZ, hold_out_days, split)
    score = _Score()
    timers = {"profile": _Timer(), "ridge": _Timer()}
    for origin in origins:
        clock = _Clock(timers["profile"])
        profile_model = profile.fit(load, origin)
        clock.fitted()
        profile_pred = profile_model.predict(None, n)
        clock.predicted()
        clock = _Clock(timers["ridge"])
        ridge_model = ridge.fit(load, origin)
        clock.fitted()
        ridge_pred = ridge_model.predict(None, n)
        clock.predicted()
        preds: dict[str, FloatArray] = {
            "profile": profile_pred,
            "ridge": ridge_pred,
            "persistence": lagged_baseline(load, origin, step, n, None),
            "same_time_yesterday": lagged_baseline(load, origin, step, n, DAY_S),
            "same_time_last_week": lagged_baseline(load, origin, step, n, 7 * DAY_S),
        }
        if weather:
            # observed weather stands in for a weather forecast: an optimistic upper bound
            model = ridge.fit(load, origin, weather)
            preds["ridge_observed_weather"] = model.predict(None, n, weather)
        score.add(_actual(t, v, origin, step, n), preds)
    models = ["profile", "ridge"] + (["ridge_observed_weather"] if weather else [])
    out: dict[str, Any] = {
        "unit": "MW",
        "step_s": step,
        "horizon_steps": n,
        "issued": f"daily 00:00 {NL_TZ}",
        "period": _period(origins, NL_TZ, float(t[0])),
        "models": models,
        "baselines": ["persistence", "same_time_yesterday", "same_time_last_week"],
        "mean_actual": round(float(np.nanmean(v[t >= origins[0]])), 3),
        "timing": {k: tm.report() for k, tm in timers.items()},
    }
    out.update(score.report(models, out["baselines"]))
    return out


def evaluate_pv(
    pv: SeriesLike,
    *,
    hold_out_days: int = 182,
    split: Split = "hold_out",
    forecaster: ClearSkyPvForecaster | None = None,
) -> dict[str, Any]:
    """PV capacity factor (hourly), issued daily at 00:00 Europe/Amsterdam for 24 h (24 steps)."""
    t, v = series_arrays(pv)
    step, n = 3600, 24
    forecaster = forecaster or ClearSkyPvForecaster(step_s=step)
    origins = _origins(float(t[0]), float(t[-1]), NL_TZ, hold_out_days, split)
    score = _Score()
    timer = _Timer()
    night_max = 0.0
    for origin in origins:
        clock = _Clock(timer)
        model = forecaster.fit(pv, origin)
        clock.fitted()
        model_pred = model.predict(None, n)
        clock.predicted()
        env = model.envelope(origin, n)
        night_max = max(night_max, float(np.max(np.where(env == 0.0, model_pred, 0.0))))
        preds = {
            "clear_sky": model_pred,
            "same_hour_yesterday": lagged_baseline(pv, origin, step, n, DAY_S),
            "same_time_last_week": lagged_baseline(pv, origin, step, n, 7 * DAY_S),
        }
        score.add(_actual(t, v, origin, step, n), preds)
    out: dict[str, Any] = {
        "unit": "capacity factor (fraction of peak)",
        "step_s": step,
        "horizon_steps": n,
        "issued": f"daily 00:00 {NL_TZ}",
        "period": _period(origins, NL_TZ, float(t[0])),
        "models": ["clear_sky"],
        "baselines": ["same_hour_yesterday", "same_time_last_week"],
        "mean_actual": round(float(np.mean(v[t >= origins[0]])), 4),
        "forecast_max_at_night": night_max,
        "timing": {"clear_sky": timer.report()},
    }
    out.update(score.report(["clear_sky"], out["baselines"], digits=5))
    return out


_EV_METRICS = ("arrivals", "energy_kwh", "present", "demand_kw")
_EV_UNITS = {
    "arrivals": "arrivals per 15-min slot",
    "energy_kwh": "kWh arriving per 15-min slot",
    "energy_kwh_per_day": "kWh arriving per day",
    "arrivals_per_day": "arrivals per day",
    "present": "EVs plugged in (of those arriving in the horizon), per slot",
    "demand_kw": "kW (energy spread evenly over each stay), per slot",
}


def evaluate_ev(
    records: Sequence[EvSessionRecord],
    requests: dict[str, float],
    *,
    hold_out_days: int = 28,
    split: Split = "hold_out",
    forecaster: EvSessionForecaster | None = None,
) -> dict[str, Any]:
    """EV sessions (15 min), issued daily at 00:00 America/Los_Angeles for 24 h (96 steps).

    Default forecaster: the class defaults with US federal holidays and a Dec 24 - 31 campus closure.
    """
    if not records:
        raise ValueError("no sessions")
    step, n = 900, 96
    t_first = min(r.arrival_s for r in records)
    t_last = max(r.arrival_s for r in records)
    years = range(datetime.fromtimestamp(t_first, UTC).year - 1, datetime.fromtimestamp(t_last, UTC).year + 1)
    forecaster = forecaster or EvSessionForecaster(
        step_s=step, tz=CALTECH_TZ, holidays=us_federal_holidays(years, winter_closure=True)
    )
    # the data end at the last arrival's local day: include that day
    last_day_end = (
        datetime.fromtimestamp(t_last, ZoneInfo(CALTECH_TZ)).replace(hour=0, minute=0, second=0, microsecond=0)
        + timedelta(days=1, hours=1)
    ).replace(hour=0)
    origins = _origins(t_first, last_day_end.timestamp(), CALTECH_TZ, hold_out_days, split)
    scores = {m: _Score() for m in (*_EV_METRICS, "energy_kwh_per_day", "arrivals_per_day")}
    session_score = _Score()
    timer = _Timer()
    for origin in origins:
        clock = _Clock(timer)
        model = forecaster.fit(records, origin)
        clock.fitted()
        fc = model.predict(None, n)
        clock.predicted()
        actual = ev_actuals(records, origin, step, n)
        yesterday = ev_actuals(records, origin - DAY_S, step, n)
        last_week = ev_actuals(records, origin - 7 * DAY_S, step, n)
        methods: dict[str, EvForecast] = {"profile": fc, "yesterday": yesterday, "same_weekday_last_week": last_week}
        for metric in _EV_METRICS:
            scores[metric].add(
                np.asarray(getattr(actual, metric)), {k: np.asarray(getattr(f, metric)) for k, f in methods.items()}
            )
        scores["energy_kwh_per_day"].add(
            np.array([actual.energy_kwh.sum()]), {k: np.array([f.energy_kwh.sum()]) for k, f in methods.items()}
        )
        scores["arrivals_per_day"].add(
            np.array([actual.arrivals.sum()]), {k: np.array([f.arrivals.sum()]) for k, f in methods.items()}
        )
        # energy of each session arriving in the day, predicted at the issue time
        day = [r for r in records if origin <= r.arrival_s < origin + DAY_S]
        if day:
            energy = np.array([r.energy_kwh for r in day])
            by_profile = np.array([model.expected_session_energy_kwh(r.profile, r.arrival_s) for r in day])
            request = np.array([requests.get(r.session_id, float(b)) for r, b in zip(day, by_profile, strict=True)])
            session_score.add(
                energy,
                {
                    "population_mean": np.full(len(day), model.population_energy_kwh),
                    "by_arrival_hour": np.array([model.expected_session_energy_kwh(None, r.arrival_s) for r in day]),
                    "by_profile": by_profile,
                    "driver_request": request,
                },
            )
    baselines = ["yesterday", "same_weekday_last_week"]
    metrics = {m: {"unit": _EV_UNITS[m], **scores[m].report(["profile"], baselines)} for m in scores}
    n_sessions = sum(1 for r in records if origins[0] <= r.arrival_s < origins[-1] + DAY_S)
    out: dict[str, Any] = {
        "step_s": step,
        "horizon_steps": n,
        "issued": f"daily 00:00 {CALTECH_TZ}",
        "period": _period(origins, CALTECH_TZ, t_first),
        "sessions_in_period": n_sessions,
        "metrics": metrics,
        "session_energy_kwh": {
            "unit": "kWh per session",
            "note": "profile = the ACN 'claimed' flag (no user id in the data); driver_request = the "
            "request of claimed sessions, by_profile for unclaimed ones",
            **session_score.report(["by_arrival_hour", "by_profile", "driver_request"], ["population_mean"]),
        },
        "timing": {"profile": timer.report()},
    }
    return out


def _price_check(prices: TimeSeries, source: str) -> dict[str, Any]:
    """How many quarter-hours of a price file the missing-price rule fills, over the file's whole span."""
    t = np.asarray(prices.t_s)
    zone = ZoneInfo(NL_TZ)
    start = datetime.fromtimestamp(float(t[0]), zone).replace(hour=0, minute=0, second=0, microsecond=0)
    if start.timestamp() < float(t[0]):
        start = (start + timedelta(days=1, hours=3)).replace(hour=0)
    n = int((float(t[-1]) + 3600 - start.timestamp()) // 900)
    _, flags = price_curve(prices, start, 900, n)
    filled = np.flatnonzero(flags)
    hours = sorted(
        {datetime.fromtimestamp(start.timestamp() + 900 * int(k), UTC).strftime("%Y-%m-%dT%H:00Z") for k in filled}
    )
    return {
        "file": source,
        "from": start.isoformat(),
        "quarter_hours": n,
        "quarter_hours_filled": int(filled.size),
        "hours_filled": hours,
    }


# --------------------------------------------------------------------------------------------------
# All series
# --------------------------------------------------------------------------------------------------


def evaluate_forecasts(data_dir: Path | None = None, *, split: Split = "hold_out") -> dict[str, Any]:
    """Evaluate every forecaster; ``data_dir`` is the shared data folder, or None for the committed excerpts.

    A file missing from ``data_dir`` is replaced by its committed excerpt (its ``source`` says so).
    """
    result: dict[str, Any] = {
        "data_dir": None if data_dir is None else str(data_dir),
        "split": split,
        "method": "chronological split; rolling origin: a forecast issued every day at local midnight "
        "over the hold-out, fitted only on data strictly before its issue time; MAE over all steps",
        "hold_out_days": HOLD_OUT_DAYS,
    }
    # building load
    load_file = None if data_dir is None else data_dir / LOAD_SHARED
    if load_file is not None and not load_file.is_file():
        load_file = None
    load, weather = load_site_load_with_weather(load_file)
    result["load"] = {
        "source": str(load_file) if load_file else f"committed excerpt hil/data/{SITE_LOAD_FILE}",
        **evaluate_load(load, weather, hold_out_days=HOLD_OUT_DAYS["load"], split=split),
    }
    # PV
    pv_file = DATA_DIR / PV_EXCERPT if data_dir is None else data_dir / PV_SHARED
    if not pv_file.is_file():
        pv_file = DATA_DIR / PV_EXCERPT
    pv = load_pv_capacity_factor(pv_file)
    result["pv"] = {"source": str(pv_file), **evaluate_pv(pv, hold_out_days=HOLD_OUT_DAYS["pv"], split=split)}
    result["pv_last_28d"] = {
        "source": str(pv_file),
        **evaluate_pv(pv, hold_out_days=HOLD_OUT_DAYS["pv_last_28d"], split=split),
    }
    # EV sessions: each shared 4-month window separately, else the committed month
    acn_files = sorted((data_dir / ACN_SHARED).glob("caltech_*.csv.gz")) if data_dir is not None else []
    ev: list[dict[str, Any]] = []
    if acn_files:
        for f in acn_files:
            records, requests = read_acn_records(f)
            ev.append(
                {"source": str(f), **evaluate_ev(records, requests, hold_out_days=HOLD_OUT_DAYS["ev"], split=split)}
            )
    else:
        records, requests = read_acn_records(None)
        ev.append(
            {
                "source": f"committed excerpt hil/data/{ACN_FILE}",
                **evaluate_ev(records, requests, hold_out_days=HOLD_OUT_DAYS["ev_excerpt"], split=split),
            }
        )
    result["ev"] = ev
    # prices: no forecast (the day-ahead price is known), but how often the missing-price rule fires
    price_files = sorted((data_dir / PRICES_SHARED).glob("nl_dayahead_*.csv")) if data_dir is not None else []
    if not price_files:
        price_files = [DATA_DIR / PRICES_FILE]
    result["prices"] = [_price_check(load_prices(f), str(f)) for f in price_files]
    return result


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _rows(title: str, block: dict[str, Any], names: Sequence[str], baselines: Sequence[str]) -> list[str]:
    mae = block["mae"]
    best = block["best_baseline"]
    lines = [f"  {title}  ({block['unit']})"] if title else []
    for name in names:
        rel = mae[name] / mae[best] if mae[best] else math.nan
        tag = "  (best baseline)" if name == best else ("" if name in baselines else f"  x{rel:.3f} of best baseline")
        lines.append(f"    {name:24s} MAE {_fmt(mae[name]):>10s}{tag}")
    return lines


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_forecasts`' result."""
    out = [f"forecast evaluation ({result['split']}), data: {result['data_dir'] or 'committed excerpts'}"]
    for key in ("load", "pv", "pv_last_28d"):
        block = result[key]
        p = block["period"]
        out.append(f"{key} ({block['unit']}): {block['source']}  {p['from']} .. {p['to']}, {p['forecasts']} forecasts")
        out += _rows("", block, [*block["models"], *block["baselines"]], block["baselines"])
    for block in result["ev"]:
        p = block["period"]
        out.append(
            f"ev: {block['source']}  {p['from']} .. {p['to']}, {p['forecasts']} forecasts, "
            f"{block['sessions_in_period']} sessions"
        )
        for metric, m in block["metrics"].items():
            out += _rows(
                metric, m, ["profile", "yesterday", "same_weekday_last_week"], ["yesterday", "same_weekday_last_week"]
            )
        s = block["session_energy_kwh"]
        out += _rows(
            "session energy",
            s,
            ["population_mean", "by_arrival_hour", "by_profile", "driver_request"],
            ["population_mean"],
        )
    for p in result["prices"]:
        out.append(
            f"prices: {p['file']}: {p['quarter_hours']} quarter-hours, {p['quarter_hours_filled']} filled by the "
            f"missing-price rule ({', '.join(p['hours_filled']) or 'none'})"
        )
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``plaza-ems bench forecast``."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="the shared data folder (default: ../shared/data next to the repository if it exists, "
        "else the committed excerpts in hil/data)",
    )
    parser.add_argument("--excerpt", action="store_true", help="use the committed excerpts even if shared data exist")
    parser.add_argument(
        "--split",
        choices=("hold_out", "train"),
        default="hold_out",
        help="'train': the same figures on origins in the training part (used to choose hyper-parameters)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 on success, 3 if data are missing or unreadable."""
    if args.excerpt:
        data_dir: Path | None = None
    elif args.data_dir is not None:
        data_dir = Path(args.data_dir)
        if not data_dir.is_dir():
            print(f"error: bench forecast: no data folder {data_dir}", file=sys.stderr)
            return 3
    else:
        data_dir = default_data_dir()
    try:
        result = evaluate_forecasts(data_dir, split=args.split)
    except (DataError, ValueError) as err:
        print(f"error: bench forecast: {err}", file=sys.stderr)
        return 3
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - convenience: python -m mpc.forecast_eval
    _parser = argparse.ArgumentParser(prog="python -m mpc.forecast_eval")
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
