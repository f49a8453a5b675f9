"""Real data replayed by the simulated plaza: prices, PV, building load and EV sessions.

The hardware-in-the-loop scenarios, the optimiser benchmarks and the forecasting evaluation replay
real measurements and market data instead of made-up curves. This module loads them into small,
immutable, validated structures:

* :func:`load_prices` - Dutch day-ahead price (EUR/MWh, hourly; read it with :meth:`TimeSeries.step_at`),
* :func:`load_pv_capacity_factor` - PV output as a fraction of installed peak (hourly, 0..1),
* :func:`load_site_load_mw` - a real Dutch grid load (MW, 15 min), used scaled as the building load,
* :func:`load_acn_sessions` - EV charging sessions of the Caltech ACN garage.

By default every loader reads the small excerpts committed in ``hil/data`` (see its ``README.md`` for
sources and licences; they are rebuilt by ``scripts/make_data_excerpts.py``), so a fresh clone works
without the shared data folder. Any other path may be given; ``.gz`` files are decompressed
transparently. Problems with a file (missing, unparseable row, NaN/inf, impossible negative value)
raise :class:`DataError` naming the file and, where relevant, the line.

Stdlib only: no numpy/pandas on the controller side.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

__all__ = [
    "DATA_DIR",
    "AcnSession",
    "DataError",
    "TimeSeries",
    "acn_sessions_on",
    "load_acn_sessions",
    "load_acn_sessions_counted",
    "load_prices",
    "load_pv_capacity_factor",
    "load_site_load_mw",
]

_log = logging.getLogger(__name__)

DATA_DIR: Path = Path(__file__).with_name("data")
"""Folder of the committed data excerpts (``hil/data``)."""

PRICES_FILE = "prices_nl_2023.csv"
PV_FILE = "pv_nl_2019.csv.gz"
SITE_LOAD_FILE = "site_load_nl_2020.csv.gz"
ACN_FILE = "acn_caltech_2019-05.csv.gz"

# Values an ACN ``estimated_departure`` field takes when the driver gave none.
_MISSING_TEXT = frozenset({"", "nan", "none", "null", "nat"})


class DataError(Exception):
    """A data file is missing, malformed or holds an impossible value (message names file and line)."""


# --------------------------------------------------------------------------------------------------
# Time series
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeSeries:
    """Samples ``values[i]`` at strictly increasing UTC epoch seconds ``t_s[i]``.

    Outside ``[start_s, end_s]`` every accessor clamps to the first/last value.
    """

    t_s: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.t_s) != len(self.values):
            raise ValueError(f"TimeSeries: {len(self.t_s)} times but {len(self.values)} values")
        if not self.t_s:
            raise ValueError("TimeSeries: no samples")
        for i, (t, v) in enumerate(zip(self.t_s, self.values, strict=True)):
            if not (math.isfinite(t) and math.isfinite(v)):
                raise ValueError(f"TimeSeries: non-finite sample {i}: t={t!r}, value={v!r}")
            if i and t <= self.t_s[i - 1]:
                raise ValueError(f"TimeSeries: times not strictly increasing at sample {i}: {self.t_s[i - 1]} >= {t}")

    @property
    def start_s(self) -> float:
        """Time of the first sample (UTC epoch seconds)."""
        return self.t_s[0]

    @property
    def end_s(self) -> float:
        """Time of the last sample (UTC epoch seconds)."""
        return self.t_s[-1]

    def __len__(self) -> int:
        return len(self.t_s)

    def at(self, t_s: float) -> float:
        """Linearly interpolated value at ``t_s``; first/last value outside the range. O(log n)."""
        _check_time(t_s)
        i = bisect_right(self.t_s, t_s)
        if i == 0:
            return self.values[0]
        if i == len(self.t_s):
            return self.values[-1]
        t0, t1 = self.t_s[i - 1], self.t_s[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (t_s - t0) / (t1 - t0)

    def step_at(self, t_s: float) -> float:
        """Value of the interval containing ``t_s``: the last sample at or before it (clamped). O(log n)."""
        _check_time(t_s)
        i = bisect_right(self.t_s, t_s) - 1
        return self.values[max(i, 0)]

    def max_between(self, a_s: float, b_s: float) -> float:
        """Maximum of the interpolated curve (:meth:`at`) over ``[a_s, b_s]``.

        That is the largest of the two end-point values and of the samples strictly inside.
        """
        _check_time(a_s)
        _check_time(b_s)
        if b_s < a_s:
            raise ValueError(f"max_between: empty interval [{a_s}, {b_s}]")
        best = max(self.at(a_s), self.at(b_s))
        lo = bisect_right(self.t_s, a_s)
        hi = bisect_left(self.t_s, b_s)
        if lo < hi:
            best = max(best, max(self.values[lo:hi]))
        return best


def _check_time(t_s: float) -> None:
    if math.isnan(t_s):
        raise ValueError("time is NaN")


# --------------------------------------------------------------------------------------------------
# File reading helpers
# --------------------------------------------------------------------------------------------------


@contextmanager
def _open_csv(path: Path, required: tuple[str, ...]) -> Iterator[csv.DictReader[str]]:
    """Open ``path`` (gzip if its suffix is ``.gz``) as a CSV dict reader with the ``required`` columns."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read data file: {exc}") from exc
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    stream: TextIO = io.StringIO(text, newline="")
    reader = csv.DictReader(stream)
    fields = reader.fieldnames or []
    missing = [c for c in required if c not in fields]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; header is {fields}")
    try:
        yield reader
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from exc


def _default(path: Path | None, name: str) -> Path:
    return DATA_DIR / name if path is None else path


def _where(path: Path, reader: csv.DictReader[str]) -> str:
    return f"{path}, line {reader.line_num}"


def _field(row: dict[str, str | None], column: str, where: str) -> str:
    value = row.get(column)
    if value is None:
        raise DataError(f"{where}: row too short, no {column!r} field")
    return value.strip()


def _parse_float(text: str, column: str, where: str, *, allow_negative: bool) -> float:
    if not text:
        raise DataError(f"{where}: empty {column!r}")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: cannot parse {column!r} = {text!r} as a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {column!r} is not finite ({text!r})")
    if value < 0.0 and not allow_negative:
        raise DataError(f"{where}: {column!r} = {value} is negative, which is impossible here")
    return value


def _parse_datetime(text: str, column: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"{where}: cannot parse {column!r} = {text!r} as an ISO-8601 date-time") from None


def _parse_utc_epoch(text: str, column: str, where: str) -> float:
    """Epoch seconds of an ISO-8601 time; a time without offset is taken as UTC."""
    stamp = _parse_datetime(text, column, where)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _load_series(
    path: Path,
    time_column: str,
    value_column: str,
    *,
    allow_negative: bool,
    max_value: float | None = None,
) -> TimeSeries:
    times: list[float] = []
    values: list[float] = []
    with _open_csv(path, (time_column, value_column)) as reader:
        for row in reader:
            where = _where(path, reader)
            t = _parse_utc_epoch(_field(row, time_column, where), time_column, where)
            v = _parse_float(_field(row, value_column, where), value_column, where, allow_negative=allow_negative)
            if max_value is not None and v > max_value:
                raise DataError(f"{where}: {value_column!r} = {v} exceeds its maximum {max_value}")
            if times and t <= times[-1]:
                raise DataError(f"{where}: {time_column!r} not strictly increasing ({t} after {times[-1]})")
            times.append(t)
            values.append(v)
    if not times:
        raise DataError(f"{path}: no data rows")
    return TimeSeries(tuple(times), tuple(values))


# --------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------


def load_prices(path: Path | None = None) -> TimeSeries:
    """Day-ahead price in EUR/MWh at the start of each hour (``utc_start``); read it with ``step_at``.

    Prices may be negative. Default: the committed NL 2023 excerpt.
    """
    return _load_series(_default(path, PRICES_FILE), "utc_start", "price_eur_per_mwh", allow_negative=True)


def load_pv_capacity_factor(path: Path | None = None) -> TimeSeries:
    """Hourly PV output as a fraction (0..1) of installed peak; the ``time`` column is UTC.

    Default: the committed NL 2019 Renewables.ninja year.
    """
    return _load_series(_default(path, PV_FILE), "time", "electricity", allow_negative=False, max_value=1.0)


def load_site_load_mw(path: Path | None = None) -> TimeSeries:
    """Building/grid load in MW at 15 min (``utc_start``, ``load``); negative or NaN load is an error.

    Default: the committed OpenSTEF excerpt (Oct 2020 - Jan 2021). Scale it to the plaza's building.
    """
    return _load_series(_default(path, SITE_LOAD_FILE), "utc_start", "load", allow_negative=False)


@dataclass(frozen=True, slots=True)
class AcnSession:
    """One EV charging session of the ACN data set (times tz-aware, in the file's own UTC offset)."""

    session_id: str
    station_id: str
    arrival: datetime
    departure: datetime
    requested_energy_kwh: float
    delivered_energy_kwh: float
    estimated_departure: datetime | None


_ACN_COLUMNS = (
    "arrival",
    "departure",
    "requested_energy (kWh)",
    "delivered_energy (kWh)",
    "station_id",
    "session_id",
    "estimated_departure",
)


def _parse_aware(text: str, column: str, where: str) -> datetime:
    stamp = _parse_datetime(text, column, where)
    if stamp.tzinfo is None:
        raise DataError(f"{where}: {column!r} = {text!r} has no UTC offset")
    return stamp


def _parse_energy(text: str, column: str, where: str) -> float | None:
    """Energy in kWh, or None if it is non-finite or negative (the session is then skipped)."""
    if not text:
        raise DataError(f"{where}: empty {column!r}")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: cannot parse {column!r} = {text!r} as a number") from None
    return value if math.isfinite(value) and value >= 0.0 else None


def load_acn_sessions_counted(path: Path | None = None) -> tuple[list[AcnSession], int]:
    """Like :func:`load_acn_sessions`, also returning how many rows were skipped as implausible."""
    path = _default(path, ACN_FILE)
    sessions: list[AcnSession] = []
    skipped = 0
    with _open_csv(path, _ACN_COLUMNS) as reader:
        for row in reader:
            where = _where(path, reader)
            arrival = _parse_aware(_field(row, "arrival", where), "arrival", where)
            departure = _parse_aware(_field(row, "departure", where), "departure", where)
            est_text = _field(row, "estimated_departure", where)
            estimated = (
                None if est_text.lower() in _MISSING_TEXT else _parse_aware(est_text, "estimated_departure", where)
            )
            requested = _parse_energy(_field(row, "requested_energy (kWh)", where), "requested_energy (kWh)", where)
            delivered = _parse_energy(_field(row, "delivered_energy (kWh)", where), "delivered_energy (kWh)", where)
            if requested is None or delivered is None or departure <= arrival:
                skipped += 1
                continue
            sessions.append(
                AcnSession(
                    session_id=_field(row, "session_id", where),
                    station_id=_field(row, "station_id", where),
                    arrival=arrival,
                    departure=departure,
                    requested_energy_kwh=requested,
                    delivered_energy_kwh=delivered,
                    estimated_departure=estimated,
                )
            )
    if skipped:
        _log.warning("%s: skipped %d implausible session row(s) (departure <= arrival or bad energy)", path, skipped)
    sessions.sort(key=lambda s: s.arrival)
    return sessions, skipped


def load_acn_sessions(path: Path | None = None) -> list[AcnSession]:
    """ACN charging sessions sorted by arrival. Default: the committed Caltech May 2019 excerpt.

    Rows with ``departure <= arrival`` or a non-finite/negative energy are skipped (their number is
    logged; :func:`load_acn_sessions_counted` returns it). Unparseable rows raise :class:`DataError`.
    """
    return load_acn_sessions_counted(path)[0]


def acn_sessions_on(sessions: list[AcnSession], day: date) -> list[AcnSession]:
    """Sessions whose arrival falls on ``day`` in local time (the file's own UTC offset), in input order."""
    return [s for s in sessions if s.arrival.date() == day]
