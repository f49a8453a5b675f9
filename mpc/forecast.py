"""Forecasts for the cloud optimiser (F14) and the day-ahead price curve on the plan's step grid (F15).

Every forecaster is a small frozen configuration object with a stateless ``fit`` that takes the
history and the *issue time* (``origin_s``, UTC epoch seconds) and returns a frozen model; only data
strictly before the issue time is ever looked at (and, for EV sessions, only what was known then: a
session's energy and departure only once it has departed). ``model.predict(start_s, n_steps)`` then
gives the forecast on a regular grid. Both are cheap (numpy only; ``fit`` a few milliseconds on the
real data, ``predict`` well under a millisecond for 96 steps), so the optimiser service simply fits
afresh at every re-plan. Default hyper-parameters were chosen on the training part of the real data
only (``plaza-ems bench forecast --split train``); ``docs/forecasts.md`` has the measured errors.

* :class:`ProfileLoadForecaster` - building load: exponentially weighted weekday / Saturday /
  Sunday-or-holiday x time-of-day profile plus a share of the recent level offset.
* :class:`RidgeLoadForecaster` - building load: ridge regression on day-type x time-of-day dummies,
  the same time one day and one week earlier, yesterday's mean, and optional weather covariates.
* :class:`ClearSkyPvForecaster` - PV capacity factor: a clear-sky envelope from solar geometry
  fitted to recent history, times a recent clearness ratio; exactly 0 while the sun is down.
* :class:`EvSessionForecaster` - EV sessions: expected arrivals per day type x 15-min slot, energy
  per arrival (by arrival hour, and per RFID / user profile where one is known), and from those the
  expected number of EVs plugged in and their average power demand per step.
* :func:`price_curve` - hourly day-ahead prices expanded to the plan's step grid, with a documented
  rule for missing hours (see its docstring and ``docs/forecasts.md``).

Baselines (persistence, same time yesterday / last week) are in :func:`lagged_baseline` and
:func:`ev_actuals`; ``mpc/forecast_eval.py`` evaluates everything on held-out real data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = [
    "DAY_S",
    "BoolArray",
    "ClearSkyPvForecaster",
    "EvForecast",
    "EvModel",
    "EvSessionForecaster",
    "EvSessionRecord",
    "FloatArray",
    "IntArray",
    "LoadModel",
    "ProfileLoadForecaster",
    "PvModel",
    "RidgeLoadForecaster",
    "RidgeLoadModel",
    "SeriesLike",
    "day_types",
    "ev_actuals",
    "lagged_baseline",
    "local_calendar",
    "nl_public_holidays",
    "price_curve",
    "series_arrays",
    "solar_elevation_sin",
    "us_federal_holidays",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DAY_S = 86400
WEEK_S = 7 * DAY_S
_EPOCH_DATE = date(1970, 1, 1)

WEEKDAY, SATURDAY, SUNDAY_OR_HOLIDAY = 0, 1, 2
"""Day types: Monday-Friday, Saturday, Sunday or a public holiday."""
N_DAY_TYPES = 3


class SeriesLike(Protocol):
    """Anything with increasing UTC epoch-second times ``t_s`` and ``values`` (e.g. ``hil.data.TimeSeries``)."""

    @property
    def t_s(self) -> Sequence[float] | FloatArray: ...

    @property
    def values(self) -> Sequence[float] | FloatArray: ...


# --------------------------------------------------------------------------------------------------
# Time and calendar helpers
# --------------------------------------------------------------------------------------------------


def _zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _check_origin(origin_s: float) -> None:
    if not math.isfinite(origin_s):
        raise ValueError(f"issue time must be finite, got {origin_s!r}")


def _check_steps(step_s: int, n_steps: int) -> None:
    if step_s <= 0 or DAY_S % step_s:
        raise ValueError(f"step_s must divide a day (86400 s), got {step_s}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")


def local_calendar(t_s: FloatArray, tz: str | tzinfo, step_s: int) -> tuple[IntArray, IntArray, IntArray]:
    """For UTC epoch times: (local slot of day ``0 .. 86400/step_s - 1``, local weekday Mon=0, local day number).

    The UTC offset is looked up once per distinct UTC hour, so this is cheap for long arrays too.
    The local day number counts days since 1970-01-01 in local wall-clock time.
    """
    zone = _zone(tz)
    t = np.asarray(t_s, dtype=np.float64)
    if t.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    hours = np.floor(t / 3600.0).astype(np.int64)
    unique_hours, inverse = np.unique(hours, return_inverse=True)
    offsets = np.empty(unique_hours.size, dtype=np.float64)
    for i, hour in enumerate(unique_hours.tolist()):
        offset = datetime.fromtimestamp(hour * 3600, zone).utcoffset()
        offsets[i] = 0.0 if offset is None else offset.total_seconds()
    local = t + offsets[inverse.reshape(-1)]
    day = np.floor(local / DAY_S).astype(np.int64)
    slot = np.floor((local - day * DAY_S) / step_s).astype(np.int64)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    return slot, weekday, day


def _day_numbers(days: Iterable[date]) -> IntArray:
    return np.array(sorted((d - _EPOCH_DATE).days for d in days), dtype=np.int64)


def day_types(weekday: IntArray, day: IntArray, holidays: frozenset[date] = frozenset()) -> IntArray:
    """Day type per sample: 0 Monday-Friday, 1 Saturday, 2 Sunday or a date in ``holidays``."""
    types = np.where(weekday < 5, WEEKDAY, np.where(weekday == 5, SATURDAY, SUNDAY_OR_HOLIDAY)).astype(np.int64)
    if holidays:
        types[np.isin(day, _day_numbers(holidays))] = SUNDAY_OR_HOLIDAY
    return types


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def nl_public_holidays(years: Iterable[int]) -> frozenset[date]:
    """Dutch public holidays (New Year, Easter Monday, King's Day, Ascension, Whit Monday, Christmas x2)."""
    out: set[date] = set()
    for year in years:
        easter = _easter(year)
        kings = date(year, 4, 27)
        if kings.weekday() == 6:  # moved to Saturday when it falls on a Sunday
            kings -= timedelta(days=1)
        out.update(
            {
                date(year, 1, 1),
                easter + timedelta(days=1),
                kings,
                easter + timedelta(days=39),
                easter + timedelta(days=50),
                date(year, 12, 25),
                date(year, 12, 26),
            }
        )
    return frozenset(out)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th (1-based; -1 = last) given weekday of a month."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def us_federal_holidays(years: Iterable[int], *, winter_closure: bool = False) -> frozenset[date]:
    """US federal holidays (actual dates, not observed ones) and, optionally, a Dec 24 - Jan 1 closure.

    ``winter_closure`` approximates the winter break of a university campus such as Caltech.
    """
    out: set[date] = set()
    for year in years:
        thanksgiving = _nth_weekday(year, 11, 3, 4)
        out.update(
            {
                date(year, 1, 1),
                _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
                _nth_weekday(year, 2, 0, 3),  # Presidents' Day
                _nth_weekday(year, 5, 0, -1),  # Memorial Day
                date(year, 7, 4),
                _nth_weekday(year, 9, 0, 1),  # Labor Day
                thanksgiving,
                thanksgiving + timedelta(days=1),
                date(year, 12, 25),
            }
        )
        if winter_closure:
            out.update(date(year, 12, d) for d in range(24, 32))
    return frozenset(out)


# --------------------------------------------------------------------------------------------------
# Series helpers
# --------------------------------------------------------------------------------------------------


def series_arrays(series: SeriesLike) -> tuple[FloatArray, FloatArray]:
    """The times and values of a series as float arrays (checked: same length, times increasing)."""
    t = np.asarray(series.t_s, dtype=np.float64)
    v = np.asarray(series.values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"series: {t.shape} times but {v.shape} values")
    if t.size > 1 and not bool(np.all(np.diff(t) > 0)):
        raise ValueError("series: times not strictly increasing")
    return t, v


def _grid_before(
    t: FloatArray, v: FloatArray, origin_s: float, step_s: int, days: int
) -> tuple[FloatArray, FloatArray]:
    """Regular grid of ``days`` days ending just before ``origin_s`` (aligned to ``step_s``), NaN where missing.

    Samples at or after the origin are never read. A sample is put on the grid step it falls in.
    """
    end = math.floor(origin_s / step_s) * step_s  # first grid time not in the history
    n = days * (DAY_S // step_s)
    start = end - n * step_s
    lo = int(np.searchsorted(t, start, side="left"))
    hi = int(np.searchsorted(t, origin_s, side="left"))  # strictly before the issue time
    grid_t = start + step_s * np.arange(n, dtype=np.float64)
    grid_v = np.full(n, np.nan)
    if hi > lo:
        idx = np.floor((t[lo:hi] - start) / step_s).astype(np.int64)
        ok = (idx >= 0) & (idx < n) & np.isfinite(v[lo:hi])
        grid_v[idx[ok]] = v[lo:hi][ok]
    return grid_t, grid_v


def _step_times(start_s: float, step_s: int, n_steps: int) -> FloatArray:
    return float(start_s) + step_s * np.arange(n_steps, dtype=np.float64)


def _weights(ages_days: FloatArray, halflife_days: float) -> FloatArray:
    if not math.isfinite(halflife_days):
        return np.ones_like(ages_days)
    result: FloatArray = np.power(0.5, ages_days / halflife_days)
    return result


def lagged_baseline(series: SeriesLike, origin_s: float, step_s: int, n_steps: int, lag_s: float | None) -> FloatArray:
    """Naive baseline forecasts from the history strictly before ``origin_s``.

    ``lag_s=None``: persistence, the last known value held. Otherwise the value ``lag_s`` earlier
    (86400 = same time yesterday, 604800 = same time last week); for steps whose lagged time is not
    yet known, further multiples of the lag back. A missing lagged value takes the last known value.
    """
    _check_origin(origin_s)
    _check_steps(step_s, n_steps)
    t, v = series_arrays(series)
    known = (t < origin_s) & np.isfinite(v)
    if not bool(np.any(known)):
        raise ValueError("lagged_baseline: no history before the issue time")
    t_known, v_known = t[known], v[known]
    last = float(v_known[-1])
    if lag_s is None:
        return np.full(n_steps, last)
    times = _step_times(origin_s, step_s, n_steps)
    k = np.maximum(1.0, np.ceil((times - origin_s + 1e-6) / lag_s))
    lagged = times - k * lag_s
    idx = np.searchsorted(t_known, lagged + 0.5, side="right") - 1
    ok = (idx >= 0) & (np.abs(t_known[np.maximum(idx, 0)] - lagged) < step_s / 2)
    out = np.where(ok, v_known[np.maximum(idx, 0)], last)
    return out.astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Building load: day-type x time-of-day profile + recent level
# --------------------------------------------------------------------------------------------------


def _profile(
    types: IntArray, slots: IntArray, y: FloatArray, w: FloatArray, slots_per_day: int
) -> tuple[FloatArray, FloatArray]:
    """Weighted mean per (day type, slot), with fallbacks; returns (profile[type, slot], weight[type, slot])."""
    ok = np.isfinite(y)
    wy = np.where(ok, w, 0.0)
    yy = np.where(ok, y, 0.0)
    num = np.zeros((N_DAY_TYPES, slots_per_day))
    den = np.zeros((N_DAY_TYPES, slots_per_day))
    np.add.at(num, (types, slots), wy * yy)
    np.add.at(den, (types, slots), wy)
    total = float(den.sum())
    if total <= 0.0:
        raise ValueError("no usable history before the issue time")
    overall = float(num.sum()) / total
    slot_num, slot_den = num.sum(axis=0), den.sum(axis=0)
    slot_mean = np.where(slot_den > 0, slot_num / np.maximum(slot_den, 1e-300), overall)
    prof = np.where(den > 0, num / np.maximum(den, 1e-300), slot_mean[None, :])
    return prof.astype(np.float64), den


@dataclass(frozen=True, slots=True, eq=False)
class LoadModel:
    """A fitted load profile: ``profile[day type, slot]`` plus ``level_offset`` (series units)."""

    origin_s: float
    step_s: int
    tz: tzinfo
    holidays: frozenset[date]
    profile: FloatArray
    level_offset: float
    floor: float | None
    recent_offset: float = 0.0
    """The last history step's residual against profile + level (0 when it is missing)."""
    recent_t_s: float = 0.0
    """Start of that step."""
    recent_decay: float = 0.0
    """Share of ``recent_offset`` carried one step further; it fades as ``recent_decay ** steps``."""

    def predict(self, start_s: float | None = None, n_steps: int = 96) -> FloatArray:
        """Forecast for the steps ``start_s + k * step_s`` (default start: the issue time)."""
        start = self.origin_s if start_s is None else start_s
        _check_steps(self.step_s, n_steps)
        times = _step_times(start, self.step_s, n_steps)
        slot, weekday, day = local_calendar(times, self.tz, self.step_s)
        out = self.profile[day_types(weekday, day, self.holidays), slot] + self.level_offset
        if self.recent_offset and self.recent_decay > 0.0:
            lag = np.maximum(1.0, np.round((times - self.recent_t_s) / self.step_s))
            out = out + self.recent_offset * self.recent_decay**lag
        return np.maximum(out, self.floor) if self.floor is not None else out


@dataclass(frozen=True, slots=True)
class ProfileLoadForecaster:
    """Weighted day-type x time-of-day mean, blended with the recent level.

    The profile is the exponentially weighted mean (half-life ``profile_halflife_days``) of the
    history per (Monday-Friday / Saturday / Sunday-or-holiday, local slot of day). The level offset
    is the exponentially weighted (half-life ``level_halflife_days``) mean residual of the history
    against that profile, of which ``level_gain`` is added to every step. With ``recent_decay`` > 0 the
    last step's own residual is added too, fading by that factor per step (an intraday correction:
    15-min residuals of a building persist for an hour or so). Forecasts are clipped at ``floor`` (0: a
    building load is not negative; None: no clipping).
    """

    step_s: int = 900
    tz: str = "Europe/Amsterdam"
    history_days: int = 56
    profile_halflife_days: float = 3.0
    level_halflife_days: float = 1.0
    level_gain: float = 1.0
    holidays: frozenset[date] = field(default_factory=frozenset)
    floor: float | None = 0.0
    recent_decay: float = 0.0

    def fit(self, history: SeriesLike, origin_s: float) -> LoadModel:
        """Fit on the samples of ``history`` strictly before ``origin_s`` (at most ``history_days`` back)."""
        _check_origin(origin_s)
        _check_steps(self.step_s, 1)
        t, v = series_arrays(history)
        grid_t, y = _grid_before(t, v, origin_s, self.step_s, self.history_days)
        zone = _zone(self.tz)
        slot, weekday, day = local_calendar(grid_t, zone, self.step_s)
        types = day_types(weekday, day, self.holidays)
        ages = (origin_s - grid_t) / DAY_S
        prof, _ = _profile(types, slot, y, _weights(ages, self.profile_halflife_days), DAY_S // self.step_s)
        ok = np.isfinite(y)
        wl = np.where(ok, _weights(ages, self.level_halflife_days), 0.0)
        resid = np.where(ok, y - prof[types, slot], 0.0)
        level = float(np.sum(wl * resid) / np.sum(wl)) if float(np.sum(wl)) > 0 else 0.0
        if not 0.0 <= self.recent_decay < 1.0:
            raise ValueError(f"recent_decay must be in [0, 1), got {self.recent_decay}")
        offset = self.level_gain * level
        recent = float(resid[-1] - offset) if ok[-1] else 0.0
        return LoadModel(
            origin_s,
            self.step_s,
            zone,
            self.holidays,
            prof,
            offset,
            self.floor,
            recent,
            float(grid_t[-1]),
            self.recent_decay,
        )


# --------------------------------------------------------------------------------------------------
# Building load: ridge regression
# --------------------------------------------------------------------------------------------------


def _lag_values(
    grid_t: FloatArray, grid_v: FloatArray, times: FloatArray, origin_s: float, lag_s: int, fill: float
) -> FloatArray:
    """Value ``k * lag_s`` before each time, with the smallest k >= 1 that lies before ``origin_s``."""
    k = np.maximum(1.0, np.ceil((times - origin_s + 1e-6) / lag_s))
    lagged = times - k * lag_s
    step = grid_t[1] - grid_t[0] if grid_t.size > 1 else 1.0
    idx = np.round((lagged - grid_t[0]) / step).astype(np.int64)
    ok = (idx >= 0) & (idx < grid_v.size)
    out = np.full(times.shape, fill)
    vals = grid_v[np.clip(idx, 0, max(grid_v.size - 1, 0))]
    good = ok & np.isfinite(vals)
    out[good] = vals[good]
    return out


def _covariate_at(series: SeriesLike, times: FloatArray) -> FloatArray:
    """Step-wise (last sample at or before) value of a covariate at ``times``; clamped at both ends."""
    t, v = series_arrays(series)
    good = np.isfinite(v)
    t, v = t[good], v[good]
    if t.size == 0:
        raise ValueError("covariate has no finite sample")
    idx = np.clip(np.searchsorted(t, times, side="right") - 1, 0, t.size - 1)
    out: FloatArray = v[idx]
    return out


@dataclass(frozen=True, slots=True, eq=False)
class RidgeLoadModel:
    """A fitted ridge load model (see :class:`RidgeLoadForecaster`)."""

    origin_s: float
    step_s: int
    tz: tzinfo
    holidays: frozenset[date]
    coef: FloatArray
    covariate_names: tuple[str, ...]
    cov_mean: FloatArray
    cov_scale: FloatArray
    grid_t: FloatArray
    grid_v: FloatArray
    fill: float
    yesterday_mean: float
    floor: float | None

    def predict(
        self,
        start_s: float | None = None,
        n_steps: int = 96,
        covariates: Mapping[str, SeriesLike] | None = None,
    ) -> FloatArray:
        """Forecast from ``start_s`` (default: the issue time); ``covariates`` must hold the forecast of each
        covariate the model was fitted with (e.g. a temperature forecast)."""
        start = self.origin_s if start_s is None else start_s
        _check_steps(self.step_s, n_steps)
        times = _step_times(start, self.step_s, n_steps)
        group, z = _ridge_features(self, times, covariates)
        n_groups = self.coef.size - z.shape[1]
        out: FloatArray = self.coef[:n_groups][group] + z @ self.coef[n_groups:]
        return np.maximum(out, self.floor) if self.floor is not None else out


def _ridge_features(
    model: RidgeLoadModel, times: FloatArray, covariates: Mapping[str, SeriesLike] | None
) -> tuple[IntArray, FloatArray]:
    """Features of forecast steps: the one-hot group index (day type x slot) and the dense columns."""
    slot, weekday, day = local_calendar(times, model.tz, model.step_s)
    group = day_types(weekday, day, model.holidays) * (DAY_S // model.step_s) + slot
    lag_day = _lag_values(model.grid_t, model.grid_v, times, model.origin_s, DAY_S, model.fill)
    lag_week = _lag_values(model.grid_t, model.grid_v, times, model.origin_s, WEEK_S, model.fill)
    cols = [lag_day[:, None], lag_week[:, None], np.full((times.size, 1), model.yesterday_mean)]
    if model.covariate_names:
        if covariates is None or any(name not in covariates for name in model.covariate_names):
            raise ValueError(f"predict needs the covariate forecasts {model.covariate_names}")
        for j, name in enumerate(model.covariate_names):
            values = _covariate_at(covariates[name], times)
            cols.append(((values - model.cov_mean[j]) / model.cov_scale[j])[:, None])
    return group, np.hstack(cols)


@dataclass(frozen=True, slots=True)
class RidgeLoadForecaster:
    """Ridge regression of the load on day-type x slot dummies and lagged levels (+ covariates).

    Features of a target step t: one-hot (Monday-Friday / Saturday / Sunday-or-holiday) x local slot;
    the load at t - 1 day and at t - 1 week (further days/weeks back where that is not yet known at
    the issue time); the mean load of the local day before t's day (for training rows) or of the
    24 h before the issue time (for the forecast); and, optionally, standardised covariates such as
    temperature or radiation, which ``predict`` then needs as forecasts. Samples are weighted with
    half-life ``halflife_days``; ``ridge`` is the L2 penalty on all coefficients.
    """

    step_s: int = 900
    tz: str = "Europe/Amsterdam"
    history_days: int = 56
    halflife_days: float = 7.0
    ridge: float = 0.001
    holidays: frozenset[date] = field(default_factory=frozenset)
    floor: float | None = 0.0

    def fit(
        self, history: SeriesLike, origin_s: float, covariates: Mapping[str, SeriesLike] | None = None
    ) -> RidgeLoadModel:
        """Fit on the samples before ``origin_s``; each covariate is read at the history's times only."""
        _check_origin(origin_s)
        _check_steps(self.step_s, 1)
        t, v = series_arrays(history)
        grid_t, y = _grid_before(t, v, origin_s, self.step_s, self.history_days)
        ok = np.isfinite(y)
        if not bool(np.any(ok)):
            raise ValueError("no usable history before the issue time")
        fill = float(np.mean(y[ok]))
        zone = _zone(self.tz)
        names = tuple(sorted(covariates)) if covariates else ()
        cov_mean = np.zeros(len(names))
        cov_scale = np.ones(len(names))
        if covariates:
            for j, name in enumerate(names):
                c = _covariate_at(covariates[name], grid_t[ok])
                cov_mean[j] = float(np.mean(c))
                cov_scale[j] = float(np.std(c)) or 1.0
        model = RidgeLoadModel(
            origin_s=origin_s,
            step_s=self.step_s,
            tz=zone,
            holidays=self.holidays,
            coef=np.zeros(0),
            covariate_names=names,
            cov_mean=cov_mean,
            cov_scale=cov_scale,
            grid_t=grid_t,
            grid_v=y,
            fill=fill,
            yesterday_mean=_window_mean(grid_t, y, origin_s - DAY_S, origin_s, fill),
            floor=self.floor,
        )
        # Training rows: every known step from the second week on, as if issued at its own local midnight.
        rows = np.arange(WEEK_S // self.step_s, grid_t.size)
        rows = rows[ok[rows]]
        if rows.size == 0:
            raise ValueError("ridge load forecaster needs more than a week of history")
        group, z = _train_features(model, rows, covariates)
        w = _weights((origin_s - grid_t[rows]) / DAY_S, self.halflife_days)
        target = y[rows]
        # Weighted normal equations, using that every row has exactly one one-hot group column.
        n_groups = N_DAY_TYPES * (DAY_S // self.step_s)
        p = z.shape[1]
        a = np.zeros((n_groups + p, n_groups + p))
        a[np.arange(n_groups), np.arange(n_groups)] = np.bincount(group, weights=w, minlength=n_groups)
        cross = np.stack([np.bincount(group, weights=w * z[:, j], minlength=n_groups) for j in range(p)], axis=1)
        a[:n_groups, n_groups:] = cross
        a[n_groups:, :n_groups] = cross.T
        a[n_groups:, n_groups:] = z.T @ (z * w[:, None])
        a += self.ridge * np.eye(n_groups + p)
        b = np.concatenate([np.bincount(group, weights=w * target, minlength=n_groups), z.T @ (w * target)])
        coef = np.linalg.solve(a, b)
        return replace(model, coef=coef.astype(np.float64))


def _window_mean(grid_t: FloatArray, y: FloatArray, a: float, b: float, fill: float) -> float:
    lo = int(np.searchsorted(grid_t, a, side="left"))
    hi = int(np.searchsorted(grid_t, b, side="left"))
    seg = y[lo:hi]
    seg = seg[np.isfinite(seg)]
    return float(np.mean(seg)) if seg.size else fill


def _train_features(
    model: RidgeLoadModel, rows: IntArray, covariates: Mapping[str, SeriesLike] | None
) -> tuple[IntArray, FloatArray]:
    """Features of training rows (as if each were issued at its own local midnight)."""
    times = model.grid_t[rows]
    slot, weekday, day = local_calendar(times, model.tz, model.step_s)
    group = day_types(weekday, day, model.holidays) * (DAY_S // model.step_s) + slot
    day_rows = rows - DAY_S // model.step_s
    week_rows = rows - WEEK_S // model.step_s
    lag_day = np.where(np.isfinite(model.grid_v[day_rows]), model.grid_v[day_rows], model.fill)
    lag_week = np.where(np.isfinite(model.grid_v[week_rows]), model.grid_v[week_rows], model.fill)
    # mean of the 24 h before the local midnight that starts each row's day
    day_start = times - slot * model.step_s
    starts, inverse = np.unique(day_start, return_inverse=True)
    means = np.array([_window_mean(model.grid_t, model.grid_v, s - DAY_S, s, model.fill) for s in starts.tolist()])
    prev_day = means[inverse.reshape(-1)]
    cols = [lag_day[:, None], lag_week[:, None], prev_day[:, None]]
    if model.covariate_names and covariates is not None:
        for j, name in enumerate(model.covariate_names):
            values = _covariate_at(covariates[name], times)
            cols.append(((values - model.cov_mean[j]) / model.cov_scale[j])[:, None])
    return group, np.hstack(cols)


# --------------------------------------------------------------------------------------------------
# PV: clear-sky envelope x clearness
# --------------------------------------------------------------------------------------------------


def solar_elevation_sin(t_s: FloatArray, latitude_deg: float, longitude_deg: float) -> FloatArray:
    """Sine of the solar elevation at UTC epoch times (low-precision almanac formulas, ~0.5 deg)."""
    d = np.asarray(t_s, dtype=np.float64) / DAY_S - 10957.5  # days since J2000.0 (2000-01-01 12:00 UTC)
    g = np.radians((357.529 + 0.98560028 * d) % 360.0)
    q = (280.459 + 0.98564736 * d) % 360.0
    ecl_lon = np.radians((q + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g)) % 360.0)
    obliquity = np.radians(23.439 - 0.00000036 * d)
    ra = np.arctan2(np.cos(obliquity) * np.sin(ecl_lon), np.cos(ecl_lon))
    dec = np.arcsin(np.sin(obliquity) * np.sin(ecl_lon))
    gmst_h = (18.697374558 + 24.06570982441908 * d) % 24.0
    hour_angle = np.radians(gmst_h * 15.0 + longitude_deg) - ra
    lat = math.radians(latitude_deg)
    out: FloatArray = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(hour_angle)
    return out


def _mean_sun(t_s: FloatArray, step_s: int, latitude_deg: float, longitude_deg: float) -> FloatArray:
    """Mean over each interval ``[t, t + step_s)`` of max(0, sin elevation), sampled every <= 10 min."""
    n_sub = max(2, math.ceil(step_s / 600))
    offsets = (np.arange(n_sub) + 0.5) * step_s / n_sub
    s = solar_elevation_sin(t_s[:, None] + offsets[None, :], latitude_deg, longitude_deg)
    out: FloatArray = np.mean(np.maximum(s, 0.0), axis=1)
    return out


def _weighted_quantile(x: FloatArray, w: FloatArray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    k = int(np.searchsorted(cw, q * cw[-1]))
    return float(x[order][min(k, x.size - 1)])


@dataclass(frozen=True, slots=True, eq=False)
class PvModel:
    """Fitted PV model: envelope ``a * s**b`` of the mean sun height s, clearness, per-slot shape."""

    origin_s: float
    step_s: int
    latitude_deg: float
    longitude_deg: float
    a: float
    b: float
    clearness: float
    shape: FloatArray
    cap: float

    def envelope(self, start_s: float, n_steps: int, step_s: int | None = None) -> FloatArray:
        """Clear-sky capacity factor over each step (0 while the sun is down)."""
        step = self.step_s if step_s is None else step_s
        _check_steps(step, n_steps)
        s = _mean_sun(_step_times(start_s, step, n_steps), step, self.latitude_deg, self.longitude_deg)
        out: FloatArray = np.where(s > 0.0, self.a * np.power(np.maximum(s, 1e-12), self.b), 0.0)
        return out

    def predict(self, start_s: float | None = None, n_steps: int = 24, step_s: int | None = None) -> FloatArray:
        """Mean capacity factor over each step ``[start_s + k*step, +step)`` (any step dividing a day)."""
        start = self.origin_s if start_s is None else start_s
        step = self.step_s if step_s is None else step_s
        env = self.envelope(start, n_steps, step)
        times = _step_times(start, step, n_steps)
        slot = np.floor((times % DAY_S) / self.step_s).astype(np.int64) % self.shape.size
        out: FloatArray = np.clip(env * self.clearness * self.shape[slot], 0.0, self.cap)
        return out


@dataclass(frozen=True, slots=True)
class ClearSkyPvForecaster:
    """Clear-sky envelope from solar geometry fitted to history, times the recent clearness.

    1. Envelope: over the last ``envelope_days`` the capacity factor is binned by the mean sun height
       s (interval mean of max(0, sin elevation) at ``latitude_deg``/``longitude_deg``); the
       ``envelope_quantile`` of each bin is fitted as ``a * s**b`` (log-log least squares).
    2. Clearness: each of the last ``clearness_days`` 24-h blocks gives the ratio of its PV to its
       envelope; the forecast uses their weighted ``clearness_quantile`` (weights halve every
       ``clearness_halflife_days``; the median is the MAE-optimal choice).
    3. Shape: per UTC slot of day, the weighted ratio of PV to envelope relative to the day's,
       shrunk by ``shape_shrink`` towards 1 (for orientation / morning-afternoon asymmetry; 0 by
       default: on the training part of the NL data it did not help).

    The defaults were chosen on the training part of the NL 2019 data (``bench forecast --split train``).

    The forecast is exactly 0 whenever the sun stays below the horizon for the whole step.
    """

    step_s: int = 3600
    latitude_deg: float = 52.1
    longitude_deg: float = 5.3
    envelope_days: int = 30
    envelope_quantile: float = 0.7
    clearness_days: int = 14
    clearness_halflife_days: float = 3.0
    clearness_quantile: float = 0.5
    shape_shrink: float = 0.0
    cap: float = 1.0

    def fit(self, history: SeriesLike, origin_s: float) -> PvModel:
        """Fit on the samples of ``history`` strictly before ``origin_s``."""
        _check_origin(origin_s)
        _check_steps(self.step_s, 1)
        t, v = series_arrays(history)
        days = max(self.envelope_days, self.clearness_days)
        grid_t, y = _grid_before(t, v, origin_s, self.step_s, days)
        if not bool(np.any(np.isfinite(y))):
            raise ValueError("no usable PV history before the issue time")
        s = _mean_sun(grid_t, self.step_s, self.latitude_deg, self.longitude_deg)
        n_env = self.envelope_days * (DAY_S // self.step_s)
        a, b = _fit_envelope(s[-n_env:], y[-n_env:], self.envelope_quantile)
        env = np.where(s > 0.0, a * np.power(np.maximum(s, 1e-12), b), 0.0)
        per_day = DAY_S // self.step_s
        n_cl = self.clearness_days * per_day
        yy = y[-n_cl:].reshape(self.clearness_days, per_day)
        ee = env[-n_cl:].reshape(self.clearness_days, per_day)
        ok = np.isfinite(yy)
        y_sum = np.where(ok, yy, 0.0).sum(axis=1)
        e_sum = np.where(ok, ee, 0.0).sum(axis=1)
        usable = e_sum > 1e-3 * per_day * a
        age = self.clearness_days - np.arange(self.clearness_days) - 0.5
        w = _weights(age.astype(np.float64), self.clearness_halflife_days)
        if bool(np.any(usable)):
            ratio = y_sum[usable] / e_sum[usable]
            clearness = _weighted_quantile(ratio, w[usable], self.clearness_quantile)
            num = (w[:, None] * np.where(ok, yy, 0.0))[usable].sum(axis=0)
            den = (w[:, None] * np.where(ok, ee, 0.0))[usable].sum(axis=0)
            overall = float(num.sum()) / max(float(den.sum()), 1e-12)
            raw = np.where(den > 1e-3 * a, num / np.maximum(den, 1e-12) / max(overall, 1e-12), 1.0)
            shape = 1.0 + self.shape_shrink * (raw - 1.0)
        else:
            clearness, shape = 0.5, np.ones(per_day)
        return PvModel(
            origin_s=origin_s,
            step_s=self.step_s,
            latitude_deg=self.latitude_deg,
            longitude_deg=self.longitude_deg,
            a=a,
            b=b,
            clearness=max(0.0, clearness),
            shape=np.maximum(shape, 0.0).astype(np.float64),
            cap=self.cap,
        )


def _fit_envelope(s: FloatArray, y: FloatArray, quantile: float) -> tuple[float, float]:
    """``a, b`` of the envelope ``a * s**b`` (b clipped to 0.5 .. 3); robust fallbacks for short winters."""
    m = (s > 0.05) & np.isfinite(y)
    if int(np.sum(m)) >= 10:
        ss, yy = s[m], y[m]
        edges = np.linspace(0.05, float(ss.max()) + 1e-9, 11)
        which = np.digitize(ss, edges)
        xs: list[float] = []
        ys: list[float] = []
        for k in np.unique(which).tolist():
            sel = which == k
            if int(np.sum(sel)) >= 5:
                qv = float(np.quantile(yy[sel], quantile))
                if qv > 0:
                    xs.append(math.log(float(np.mean(ss[sel]))))
                    ys.append(math.log(qv))
        if len(xs) >= 3:
            b, log_a = np.polyfit(np.array(xs), np.array(ys), 1)
            b = float(np.clip(b, 0.5, 3.0))
            log_a = float(np.mean(np.array(ys) - b * np.array(xs)))
            return math.exp(log_a), b
        ratio = yy / ss
        return max(float(np.quantile(ratio, quantile)), 1e-6), 1.0
    return 0.5, 1.0


# --------------------------------------------------------------------------------------------------
# EV sessions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvSessionRecord:
    """One past charging session: UTC epoch arrival/departure, energy charged, RFID / user profile if known."""

    arrival_s: float
    departure_s: float
    energy_kwh: float
    profile: str | None = None
    session_id: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class EvForecast:
    """EV forecast (or actuals) per step, from sessions that *arrive* within the horizon.

    ``arrivals`` expected arrivals in the step; ``energy_kwh`` energy those arrivals will take
    (booked at the arrival step); ``present`` expected EVs plugged in (time-averaged over the step);
    ``demand_kw`` average power if every session drew its energy evenly over its stay.
    Sessions already plugged in at the issue time are known to the controller and are not included.
    """

    start_s: float
    step_s: int
    arrivals: FloatArray
    energy_kwh: FloatArray
    present: FloatArray
    demand_kw: FloatArray


def _stay_kernels(
    offset_s: FloatArray, duration_s: FloatArray, energy_kwh: FloatArray, step_s: int, n_lags: int
) -> tuple[FloatArray, FloatArray]:
    """Per session: fraction of each step (lag 0 = arrival step) it is present, and its mean power there (kW)."""
    lo = np.arange(n_lags, dtype=np.float64)[None, :] * step_s
    start = offset_s[:, None]
    end = (offset_s + duration_s)[:, None]
    overlap = np.clip(np.minimum(end, lo + step_s) - np.maximum(start, lo), 0.0, step_s) / step_s
    rate_kw = energy_kwh / np.maximum(duration_s / 3600.0, 1e-9)
    return overlap, overlap * rate_kw[:, None]


def ev_actuals(sessions: Sequence[EvSessionRecord], start_s: float, step_s: int, n_steps: int) -> EvForecast:
    """What happened: the :class:`EvForecast` quantities of the sessions arriving in the window."""
    _check_steps(step_s, n_steps)
    end_s = start_s + n_steps * step_s
    sel = [s for s in sessions if start_s <= s.arrival_s < end_s]
    arrivals = np.zeros(n_steps)
    energy = np.zeros(n_steps)
    present = np.zeros(n_steps)
    demand = np.zeros(n_steps)
    if sel:
        arr = np.array([s.arrival_s for s in sel])
        dur = np.array([s.departure_s - s.arrival_s for s in sel])
        en = np.array([s.energy_kwh for s in sel])
        k = np.floor((arr - start_s) / step_s).astype(np.int64)
        np.add.at(arrivals, k, 1.0)
        np.add.at(energy, k, en)
        occ, dem = _stay_kernels(arr - start_s, dur, en, step_s, n_steps)
        present = occ.sum(axis=0)
        demand = dem.sum(axis=0)
    return EvForecast(start_s, step_s, arrivals, energy, present, demand)


@dataclass(frozen=True, slots=True, eq=False)
class EvModel:
    """Fitted EV session model (see :class:`EvSessionForecaster`)."""

    origin_s: float
    step_s: int
    tz: tzinfo
    holidays: frozenset[date]
    arrival_rate: FloatArray  # [day type, slot] expected arrivals per step
    level_ratio: float
    energy_by_hour: FloatArray  # [local arrival hour] expected kWh per session
    occupancy_kernel: FloatArray  # [local arrival hour, lag] expected present fraction
    demand_kernel: FloatArray  # [local arrival hour, lag] expected kW
    population_energy_kwh: float
    profile_energy_kwh: Mapping[str, float]
    profile_sessions: Mapping[str, float]
    n_sessions: int

    def expected_session_energy_kwh(self, profile: str | None = None, arrival_s: float | None = None) -> float:
        """Expected energy of one session: per profile (RFID / user) if known, else by arrival hour, else overall."""
        if profile is not None and profile in self.profile_energy_kwh:
            return self.profile_energy_kwh[profile]
        if arrival_s is not None:
            _, hour, _ = _hour_of_day(np.array([arrival_s]), self.tz)
            return float(self.energy_by_hour[int(hour[0])])
        return self.population_energy_kwh

    def predict(self, start_s: float | None = None, n_steps: int = 96) -> EvForecast:
        """Expected arrivals, energy, EVs present and demand per step from ``start_s`` (default: issue time)."""
        start = self.origin_s if start_s is None else start_s
        _check_steps(self.step_s, n_steps)
        times = _step_times(start, self.step_s, n_steps)
        slot, weekday, day = local_calendar(times, self.tz, self.step_s)
        arrivals = self.arrival_rate[day_types(weekday, day, self.holidays), slot] * self.level_ratio
        _, hour, _ = _hour_of_day(times + self.step_s / 2, self.tz)
        energy = arrivals * self.energy_by_hour[hour]
        n_lags = self.occupancy_kernel.shape[1]
        lag = np.arange(n_steps)[:, None] - np.arange(n_steps)[None, :]  # [k, j] = k - j
        valid = (lag >= 0) & (lag < n_lags)
        lag_c = np.clip(lag, 0, n_lags - 1)
        hour_j = np.broadcast_to(hour[None, :], lag.shape)
        occ = np.where(valid, self.occupancy_kernel[hour_j, lag_c], 0.0)
        dem = np.where(valid, self.demand_kernel[hour_j, lag_c], 0.0)
        return EvForecast(start, self.step_s, arrivals, energy, occ @ arrivals, dem @ arrivals)


def _hour_of_day(t_s: FloatArray, tz: tzinfo) -> tuple[IntArray, IntArray, IntArray]:
    slot, weekday, day = local_calendar(t_s, tz, 3600)
    return weekday, slot, day


@dataclass(frozen=True, slots=True)
class EvSessionForecaster:
    """Arrivals per day type x slot; energy and stay by arrival hour; energy per RFID / user profile.

    * Arrivals: exponentially weighted (half-life ``arrival_halflife_days``) mean count per
      (Monday-Friday / Saturday / Sunday-or-holiday, local slot), over the last ``history_days``,
      scaled by ``level_ratio ** level_gain``, where the ratio compares the arrivals of the last days
      (half-life ``level_halflife_days``) with what the profile expected then (adapts to regime changes).
    * Energy per arrival and stay: only sessions that have *departed* before the issue time (their
      energy is not known before). Per local arrival hour, the weighted (half-life
      ``session_halflife_days``) mean energy and the mean presence / power kernels over the next
      ``kernel_hours``; each hour is shrunk towards the population with ``prior_sessions`` pseudo-sessions.
    * Per profile: the mean energy of each profile's past sessions, shrunk likewise towards the population.
    """

    step_s: int = 900
    tz: str = "America/Los_Angeles"
    history_days: int = 28
    arrival_halflife_days: float = 7.0
    level_halflife_days: float = 1.0
    level_gain: float = 1.0
    session_halflife_days: float = 28.0
    kernel_hours: int = 24
    prior_sessions: float = 5.0
    holidays: frozenset[date] = field(default_factory=frozenset)

    def fit(self, sessions: Sequence[EvSessionRecord], origin_s: float) -> EvModel:
        """Fit on what was known at ``origin_s``: arrivals before it, energy/stay of sessions departed before it."""
        _check_origin(origin_s)
        _check_steps(self.step_s, 1)
        zone = _zone(self.tz)
        per_day = DAY_S // self.step_s
        end = math.floor(origin_s / self.step_s) * self.step_s
        n = self.history_days * per_day
        start = end - n * self.step_s
        grid_t = start + self.step_s * np.arange(n, dtype=np.float64)
        arrived = np.array([s.arrival_s for s in sessions if start <= s.arrival_s < origin_s], dtype=np.float64)
        counts = np.zeros(n)
        if arrived.size:
            np.add.at(counts, np.floor((arrived - start) / self.step_s).astype(np.int64), 1.0)
        # the step containing the issue time is only partly observed: leave it out of the profile
        observed = grid_t + self.step_s <= origin_s
        slot, weekday, day = local_calendar(grid_t, zone, self.step_s)
        types = day_types(weekday, day, self.holidays)
        ages = (origin_s - grid_t) / DAY_S
        y = np.where(observed, counts, np.nan)
        rate, _ = _profile(types, slot, y, _weights(ages, self.arrival_halflife_days), per_day)
        wl = np.where(observed, _weights(ages, self.level_halflife_days), 0.0)
        expected = float(np.sum(wl * rate[types, slot]))
        seen = float(np.sum(wl * counts))
        level_ratio = ((seen + 1.0) / (expected + 1.0)) ** self.level_gain

        done = [s for s in sessions if s.departure_s <= origin_s and s.arrival_s >= start]
        n_lags = max(1, self.kernel_hours * 3600 // self.step_s)
        if done:
            arr = np.array([s.arrival_s for s in done])
            dur = np.array([s.departure_s - s.arrival_s for s in done])
            en = np.array([s.energy_kwh for s in done])
            w = _weights((origin_s - arr) / DAY_S, self.session_halflife_days)
            arrival_slot_start = np.floor(arr / self.step_s) * self.step_s
            occ, dem = _stay_kernels(arr - arrival_slot_start, dur, en, self.step_s, n_lags)
            _, hour, _ = _hour_of_day(arr, zone)
            population = float(np.sum(w * en) / np.sum(w))
            pop_occ = (w[:, None] * occ).sum(axis=0) / np.sum(w)
            pop_dem = (w[:, None] * dem).sum(axis=0) / np.sum(w)
            wh = np.zeros(24)
            np.add.at(wh, hour, w)
            eh = np.zeros(24)
            np.add.at(eh, hour, w * en)
            oh = np.zeros((24, n_lags))
            np.add.at(oh, hour, w[:, None] * occ)
            dh = np.zeros((24, n_lags))
            np.add.at(dh, hour, w[:, None] * dem)
            m = self.prior_sessions
            energy_by_hour = (eh + m * population) / (wh + m)
            occ_k = (oh + m * pop_occ[None, :]) / (wh + m)[:, None]
            dem_k = (dh + m * pop_dem[None, :]) / (wh + m)[:, None]
            prof_w: dict[str, float] = {}
            prof_e: dict[str, float] = {}
            for s, wi in zip(done, w.tolist(), strict=True):
                if s.profile is not None:
                    prof_w[s.profile] = prof_w.get(s.profile, 0.0) + wi
                    prof_e[s.profile] = prof_e.get(s.profile, 0.0) + wi * s.energy_kwh
            profile_energy = {p: (prof_e[p] + m * population) / (prof_w[p] + m) for p in prof_w}
        else:
            population = 0.0
            energy_by_hour = np.zeros(24)
            occ_k = np.zeros((24, n_lags))
            dem_k = np.zeros((24, n_lags))
            profile_energy, prof_w = {}, {}
        return EvModel(
            origin_s=origin_s,
            step_s=self.step_s,
            tz=zone,
            holidays=self.holidays,
            arrival_rate=rate,
            level_ratio=level_ratio,
            energy_by_hour=energy_by_hour.astype(np.float64),
            occupancy_kernel=occ_k.astype(np.float64),
            demand_kernel=dem_k.astype(np.float64),
            population_energy_kwh=population,
            profile_energy_kwh=profile_energy,
            profile_sessions=prof_w,
            n_sessions=len(done),
        )


# --------------------------------------------------------------------------------------------------
# Day-ahead price on the plan's step grid
# --------------------------------------------------------------------------------------------------

PRICE_DAYS_BACK = 7
"""How many days back the missing-price rule looks for the same hour."""


def price_curve(
    prices: SeriesLike,
    start: datetime,
    step_s: int,
    n_steps: int,
    *,
    price_step_s: int = 3600,
    days_back: int = PRICE_DAYS_BACK,
) -> tuple[FloatArray, BoolArray]:
    """Day-ahead prices (EUR/MWh, one sample per ``price_step_s`` at its UTC start) as EUR/kWh per plan step.

    Step ``k`` covers ``[start + k*step_s, start + (k+1)*step_s)``; its price is the time-weighted mean
    of the price intervals it overlaps (a 15-min step inside an hour takes that hour's price).
    Returns ``(eur_per_kwh[n_steps], filled[n_steps])``; ``filled[k]`` is True when any part of step
    ``k`` used the missing-price rule:

    1. a price interval with no sample takes the price of the same interval 24 h earlier, else 48 h,
       ... up to ``days_back`` days (7) earlier (the previous available day at the same UTC hour);
    2. if none of those is known either, the mean of the known (not filled) prices in the horizon;
    3. if the horizon has no known price at all, the mean of the known prices of the ``days_back``
       days before ``start``; with none of those either, :class:`ValueError`.

    A sample counts only if it starts exactly on a ``price_step_s`` boundary and is finite.
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("price_curve: start must be timezone-aware")
    _check_steps(step_s, n_steps)
    if price_step_s <= 0 or DAY_S % price_step_s:
        raise ValueError(f"price_step_s must divide a day, got {price_step_s}")
    t, v = series_arrays(prices)
    on_grid = (np.mod(t, price_step_s) == 0) & np.isfinite(v)
    known: dict[int, float] = dict(
        zip((t[on_grid] // price_step_s).astype(np.int64).tolist(), v[on_grid].tolist(), strict=True)
    )
    start_s = start.astimezone(UTC).timestamp()
    if n_steps == 0:
        return np.zeros(0), np.zeros(0, dtype=np.bool_)
    # Sub-intervals: cut each step at price boundaries so the mean is exactly time-weighted.
    step_lo = _step_times(start_s, step_s, n_steps)
    first = math.floor(start_s / price_step_s)
    last = math.ceil((start_s + n_steps * step_s) / price_step_s)
    per_day = DAY_S // price_step_s
    intervals = list(range(first, last))
    price: dict[int, float] = {}
    filled: set[int] = set()
    for i in intervals:
        if i in known:
            price[i] = known[i]
            continue
        for back in range(1, days_back + 1):
            j = i - back * per_day
            if j in known:
                price[i] = known[j]
                break
        filled.add(i)
    in_horizon = [known[i] for i in intervals if i in known]
    if in_horizon:
        fallback = float(np.mean(in_horizon))
    else:
        before = [known[i] for i in range(first - days_back * per_day, first) if i in known]
        if not before:
            raise ValueError(
                f"price_curve: no known price in the horizon from {start.isoformat()} "
                f"nor in the {days_back} days before it"
            )
        fallback = float(np.mean(before))
    for i in intervals:
        price.setdefault(i, fallback)
    out = np.zeros(n_steps)
    flags = np.zeros(n_steps, dtype=np.bool_)
    for k, lo in enumerate(step_lo.tolist()):
        hi = lo + step_s
        total = 0.0
        i = math.floor(lo / price_step_s)
        while i * price_step_s < hi:
            a = max(lo, float(i * price_step_s))
            b = min(hi, float((i + 1) * price_step_s))
            if b > a:
                total += price[i] * (b - a)
                if i in filled:
                    flags[k] = True
            i += 1
        out[k] = total / step_s / 1000.0  # EUR/MWh -> EUR/kWh
    return out, flags
